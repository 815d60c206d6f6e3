//! Page-aligned buffers, for I/O that O_DIRECT must be able to do.
//!
//! O_DIRECT needs buffer addresses and lengths aligned to the device; a guest may hand us
//! anything. Rather than fail such a request, the worker stages its data through one of these
//! (a bounce buffer). The engines' own scratch I/O and the benchmark's direct reference use
//! them too: this is the one place the daemon allocates aligned memory.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;

const ALIGN: usize = 4096;

pub struct AlignedBuffer {
    iov: libc::iovec,
    layout: Layout,
}

// SAFETY: the buffer is uniquely owned heap memory.
unsafe impl Send for AlignedBuffer {}
// SAFETY: a shared reference only reads the buffer (writing needs `&mut self`).
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
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
        Ok(AlignedBuffer {
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

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.iov.iov_base.cast(), self.layout) };
    }
}
