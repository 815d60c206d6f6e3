//! Page-aligned buffers for guest data that cannot go to the disk as it is.
//!
//! O_DIRECT needs buffer addresses and lengths aligned to the device; a guest may hand us
//! anything. Rather than fail such a request, its data is staged through one of these.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;

const ALIGN: usize = 4096;

pub struct BounceBuffer {
    iov: libc::iovec,
    layout: Layout,
}

// SAFETY: the buffer is uniquely owned heap memory.
unsafe impl Send for BounceBuffer {}

impl BounceBuffer {
    /// A zeroed buffer of `len` bytes (rounded up to the alignment) whose iovec covers `len`.
    pub fn new(len: usize) -> io::Result<Self> {
        let size = len.max(1).div_ceil(ALIGN) * ALIGN;
        let layout = Layout::from_size_align(size, ALIGN)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        Ok(BounceBuffer {
            iov: libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            },
            layout,
        })
    }

    /// The iovec describing the buffer; stable for the buffer's life.
    pub fn iovec(&self) -> &libc::iovec {
        &self.iov
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `iov` describes `iov_len` initialised bytes we own.
        unsafe { std::slice::from_raw_parts(self.iov.iov_base.cast(), self.iov.iov_len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.iov.iov_base.cast(), self.iov.iov_len) }
    }
}

impl Drop for BounceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.iov.iov_base.cast(), self.layout) };
    }
}
