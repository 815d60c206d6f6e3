//! Page-aligned buffers, for I/O that O_DIRECT must be able to do.
//!
//! O_DIRECT needs buffer addresses and lengths aligned to the device; a guest may hand us
//! anything. Rather than fail such a request, the worker stages its data through one of these
//! (a bounce buffer). The engines' own scratch I/O and the benchmark's direct reference use
//! them too: this is the one place the daemon allocates aligned memory.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::Arc;

const ALIGN: usize = 4096;

pub struct AlignedBuffer {
    iov: libc::iovec,
    storage: Storage,
}

enum Storage {
    /// An allocation of its own, freed with the buffer.
    Own(Layout),
    /// A piece of a slab, freed with the last buffer cut from it.
    Slab { _slab: Arc<Slab> },
}

/// One allocation that [`AlignedBuffer::slab`] cut into buffers.
struct Slab {
    base: *mut u8,
    layout: Layout,
}

// SAFETY: heap memory, only reached through the buffers cut from it (each uniquely owned).
unsafe impl Send for Slab {}
// SAFETY: as above; the slab itself reads and writes nothing.
unsafe impl Sync for Slab {}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: allocated in `AlignedBuffer::slab` with this layout, freed once, when no
        // buffer cut from it is left.
        unsafe { dealloc(self.base, self.layout) };
    }
}

/// The whole of a slab's memory, and what keeps it allocated.
pub struct SlabExtent {
    pub iovec: libc::iovec,
    pub keeper: Arc<dyn Send + Sync>,
}

// SAFETY: the buffer is uniquely owned heap memory (or a piece of a slab nobody else uses).
unsafe impl Send for AlignedBuffer {}
// SAFETY: a shared reference only reads the buffer (writing needs `&mut self`).
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    /// A zeroed buffer of `len` bytes (rounded up to the alignment) whose iovec covers `len`.
    pub fn new(len: usize) -> io::Result<Self> {
        let (ptr, layout) = allocate(len, 1)?;
        Ok(AlignedBuffer {
            iov: libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            },
            storage: Storage::Own(layout),
        })
    }

    /// `count` zeroed buffers as [`Self::new`] makes them, cut from one allocation, and its
    /// extent: memory to register with an engine at once (io_uring's fixed buffers).
    pub fn slab(len: usize, count: usize) -> io::Result<(Vec<Self>, SlabExtent)> {
        let (base, layout) = allocate(len, count)?;
        let slab = Arc::new(Slab { base, layout });
        let stride = rounded(len);
        let buffers = (0..count)
            .map(|i| AlignedBuffer {
                iov: libc::iovec {
                    // Pointer arithmetic only: piece `i` lies inside the allocation.
                    iov_base: base.wrapping_add(i * stride).cast(),
                    iov_len: len,
                },
                storage: Storage::Slab {
                    _slab: slab.clone(),
                },
            })
            .collect();
        let extent = SlabExtent {
            iovec: libc::iovec {
                iov_base: base.cast(),
                iov_len: layout.size(),
            },
            keeper: slab,
        };
        Ok((buffers, extent))
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
        if let Storage::Own(layout) = self.storage {
            // SAFETY: allocated in `new` with this layout, freed once.
            unsafe { dealloc(self.iov.iov_base.cast(), layout) };
        }
    }
}

/// `len` rounded up to the alignment (at least one page).
fn rounded(len: usize) -> usize {
    len.max(1).div_ceil(ALIGN) * ALIGN
}

/// Zeroed, aligned memory for `count` (at least one) pieces of `len` bytes, each starting on
/// the alignment.
fn allocate(len: usize, count: usize) -> io::Result<(*mut u8, Layout)> {
    let too_much = || io::Error::from(io::ErrorKind::OutOfMemory);
    let size = rounded(len)
        .checked_mul(count.max(1))
        .ok_or_else(too_much)?;
    let layout = Layout::from_size_align(size, ALIGN).map_err(|_| too_much())?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(too_much());
    }
    Ok((ptr, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slab_is_aligned_pieces_of_one_extent() {
        let (buffers, extent) = AlignedBuffer::slab(8704, 3).unwrap();
        let base = extent.iovec.iov_base as usize;
        assert_eq!(extent.iovec.iov_len, 3 * 12288);
        for (i, b) in buffers.iter().enumerate() {
            let at = b.iovec().iov_base as usize;
            assert_eq!((at - base, b.iovec().iov_len), (i * 12288, 8704));
            assert_eq!(at % ALIGN, 0);
        }
        // The memory outlives the keeper until the last buffer goes.
        drop(extent);
        let mut buffers = buffers;
        buffers[2].as_mut_slice().fill(7);
        assert!(buffers[2].as_slice().iter().all(|&b| b == 7));
    }
}
