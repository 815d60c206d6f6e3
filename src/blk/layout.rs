//! The virtio-blk structures that cross the guest boundary (virtio 1.2, section 5.2), as typed
//! little-endian layouts: the configuration space, the request header and the discard /
//! write-zeroes segment. Reading or writing one is a `ByteValued` copy; no field is located by
//! a hand-counted offset.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use vm_memory::{ByteValued, Le16, Le32, Le64};

/// The status byte that ends every request (virtio 1.2, 5.2.6). The bindings' constants are
/// `u32`; these are the byte the device writes.
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

const _: () = assert!(status::OK as u32 == VIRTIO_BLK_S_OK);
const _: () = assert!(status::IOERR as u32 == VIRTIO_BLK_S_IOERR);
const _: () = assert!(status::UNSUPP as u32 == VIRTIO_BLK_S_UNSUPP);

/// `struct virtio_blk_config` up to and including the write-zeroes fields. `packed(4)`
/// because the structure is 60 bytes: `repr(C)` alone would pad it to 64 for `capacity`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed(4))]
pub struct ConfigSpace {
    /// In 512-byte sectors, whatever the logical block size.
    pub capacity: Le64,
    pub size_max: Le32,
    pub seg_max: Le32,
    /// cylinders (le16), heads, sectors: not offered.
    pub geometry: [u8; 4],
    pub blk_size: Le32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    /// In logical blocks.
    pub min_io_size: Le16,
    pub opt_io_size: Le32,
    /// The write-cache (WCE) byte, the one field a driver may write.
    pub writeback: u8,
    pub unused0: u8,
    pub num_queues: Le16,
    pub max_discard_sectors: Le32,
    pub max_discard_seg: Le32,
    pub discard_sector_alignment: Le32,
    pub max_write_zeroes_sectors: Le32,
    pub max_write_zeroes_seg: Le32,
    pub write_zeroes_may_unmap: u8,
    pub unused1: [u8; 3],
}

// SAFETY: integers and byte arrays only, no padding (checked below), any bit pattern valid.
unsafe impl ByteValued for ConfigSpace {}

/// `struct virtio_blk_outhdr`: the first 16 device-readable bytes of every request.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct RequestHeader {
    pub request_type: Le32,
    pub ioprio: Le32,
    /// In 512-byte sectors.
    pub sector: Le64,
}

// SAFETY: as for `ConfigSpace`.
unsafe impl ByteValued for RequestHeader {}

/// `struct virtio_blk_discard_write_zeroes`: the payload of DISCARD and WRITE_ZEROES.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct DiscardSegment {
    pub sector: Le64,
    pub num_sectors: Le32,
    pub flags: Le32,
}

// SAFETY: as for `ConfigSpace`.
unsafe impl ByteValued for DiscardSegment {}

// The sizes and the one offset the protocol fixes, checked at compile time.
const _: () = assert!(size_of::<ConfigSpace>() == 60);
const _: () = assert!(offset_of!(ConfigSpace, num_queues) == 34);
const _: () = assert!(offset_of!(ConfigSpace, write_zeroes_may_unmap) == 56);
const _: () = assert!(size_of::<RequestHeader>() == 16);
const _: () = assert!(size_of::<DiscardSegment>() == 16);
