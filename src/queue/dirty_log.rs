//! Marking guest pages dirty that were written past the vhost-user library's bitmap.
//!
//! While the frontend migrates the VM it logs which guest pages change, and a backend must
//! mark every page it writes before the used-ring entry that makes the write visible: the
//! frontend copies a page again only if its bit is set. What goes through guest memory with
//! vm-memory's `Bytes` (status bytes, used-ring entries, the avail event) is marked by the
//! regions' bitmaps as it is written. What does not — data the kernel reads into guest pages
//! for io_uring, Linux AIO or a pool thread, librbd's callbacks, the AoE initiator's copies,
//! a bounce buffer copied back, a GET_ID string — is written through host pointers, and is
//! marked here, by the host addresses the iovecs hold.

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::GuestMemory;

/// Marks the guest pages behind `iovecs` (host addresses in `mem`'s regions; the parser never
/// lets one cross a region) as dirty in the frontend's log.
pub(super) fn mark(mem: &GuestMemory, iovecs: &[libc::iovec]) {
    for v in iovecs {
        let addr = v.iov_base as usize;
        let region = mem.iter().find(|r| {
            let base = r.as_ptr() as usize;
            addr >= base && addr - base < r.size()
        });
        if let Some(region) = region {
            region
                .bitmap()
                .mark_dirty(addr - region.as_ptr() as usize, v.iov_len);
        }
    }
}
