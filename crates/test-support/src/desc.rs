//! Descriptor flags as a split-ring descriptor holds them (16 bits; the bindings say u32), for
//! tests that write descriptors by hand: the daemon's in-process tests and the integration
//! suite.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const INDIRECT: u16 = 4;

const _: () = assert!(NEXT as u32 == VRING_DESC_F_NEXT);
const _: () = assert!(WRITE as u32 == VRING_DESC_F_WRITE);
const _: () = assert!(INDIRECT as u32 == VRING_DESC_F_INDIRECT);
