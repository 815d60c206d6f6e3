//! The buffers a read or write goes to the engine with: the guest's own memory (zero copy), or
//! a bounce buffer where the guest's cannot be used as they are — O_DIRECT needs addresses and
//! lengths aligned to the device, and one system call takes at most `IOV_MAX` segments.
//!
//! This is the one place where guest iovecs become [`DataBuffers`], the one `unsafe` step of
//! the data path: the parser checked every iovec against the guest's regions, and the
//! operation keeps the mapping alive from here on.

use std::sync::Arc;

use crate::engine::{AlignedBuffer, DataBuffers, Direction};
use crate::GuestMemory;
use diskio::iov;

/// The most iovecs one system call accepts (`IOV_MAX`); longer lists go through a bounce
/// buffer.
const IOV_MAX: usize = 1024;

/// The buffers for a transfer of `len` bytes in `direction` to or from the guest buffers `iov`
/// (which the parser built from `mem`'s regions), for a disk that needs `alignment`. Zero
/// copy takes the iovecs (leaving `iov` empty); a bounce buffer is filled from them for a
/// write and leaves them in `iov` for the copy back of a read. Returns the buffers and
/// whether they bounce.
pub(super) fn prepare(
    iov: &mut Vec<libc::iovec>,
    direction: Direction,
    len: usize,
    mem: &Arc<GuestMemory>,
    alignment: usize,
) -> std::io::Result<(DataBuffers, bool)> {
    let misaligned = alignment > 1
        && iov
            .iter()
            .any(|v| (v.iov_base as usize) % alignment != 0 || v.iov_len % alignment != 0);
    if !misaligned && iov.len() <= IOV_MAX {
        let iovecs = std::mem::take(iov);
        // SAFETY: the parser built these iovecs from regions of `mem`, which the buffers keep
        // mapped.
        let data = unsafe { DataBuffers::borrowing(mem.clone(), iovecs) };
        return Ok((data, false));
    }
    let mut bounce = AlignedBuffer::new(len)?;
    if direction.is_write() {
        // SAFETY: the parser built these iovecs from mapped guest memory, which the caller
        // holds.
        unsafe { iov::copy_from(iov, bounce.as_mut_slice()) };
    }
    Ok((DataBuffers::aligned(bounce), true))
}

/// A bounced read finished: copies what it read into the guest buffers `iov`.
pub(super) fn copy_back(iov: &[libc::iovec], data: DataBuffers) {
    if let Some(bounce) = data.into_aligned() {
        // SAFETY: the iovecs are guest memory that the request's slot still holds mapped.
        unsafe { iov::copy_to(iov, 0, bounce.as_slice()) };
    }
}
