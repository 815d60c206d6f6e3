//! The memory an operation reads into or writes from, owned by the operation.
//!
//! Whoever carries out an operation keeps its buffers until its completion hands them back, so
//! nothing it holds can outlive the memory it points at, and handing an operation over is
//! safe. vblkd's queue worker gets the buffers back with the completion and reuses their iovec
//! list for its next request: no allocation per request.

use std::sync::Arc;

use crate::aligned::AlignedBuffer;

/// An iovec list and what keeps the memory it describes alive.
pub struct DataBuffers {
    iovecs: Vec<libc::iovec>,
    owner: Owner,
}

enum Owner {
    /// Memory someone else mapped (a guest's), kept mapped for as long as this is referenced.
    Borrowed { _keeper: Arc<dyn Send + Sync> },
    /// A buffer of our own (a bounce buffer; a test's data).
    Aligned(AlignedBuffer),
    /// Buffers of our own, one after another (an AoE target's neighbouring commands).
    AlignedParts(Vec<AlignedBuffer>),
}

impl std::fmt::Debug for DataBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataBuffers")
            .field("iovecs", &self.iovecs.len())
            .field("bytes", &self.len())
            .finish()
    }
}

// SAFETY: the iovecs point into memory `owner` keeps alive wherever the value goes: a
// reference-counted mapping that is Send + Sync, or a heap buffer this value owns.
unsafe impl Send for DataBuffers {}

impl DataBuffers {
    /// Buffers in memory that `keeper` keeps mapped (a guest's memory mapping).
    ///
    /// # Safety
    /// Every iovec must lie within memory that stays mapped, readable and writable, for as
    /// long as `keeper` lives.
    pub unsafe fn borrowing(keeper: Arc<dyn Send + Sync>, iovecs: Vec<libc::iovec>) -> Self {
        DataBuffers {
            iovecs,
            owner: Owner::Borrowed { _keeper: keeper },
        }
    }

    /// All of `buffer`.
    pub fn aligned(buffer: AlignedBuffer) -> Self {
        DataBuffers {
            iovecs: vec![*buffer.iovec()],
            owner: Owner::Aligned(buffer),
        }
    }

    /// The first `len` bytes of `buffer`; [`Self::into_aligned`] gives back all of it.
    ///
    /// # Panics
    /// If `len` is more than the buffer holds.
    pub fn aligned_prefix(buffer: AlignedBuffer, len: usize) -> Self {
        DataBuffers {
            iovecs: vec![prefix(&buffer, len)],
            owner: Owner::Aligned(buffer),
        }
    }

    /// The first `len` bytes of each buffer, in order, as one transfer;
    /// [`Self::take_aligned`] gives them back whole.
    ///
    /// # Panics
    /// If a length is more than its buffer holds.
    pub fn aligned_parts(parts: impl IntoIterator<Item = (AlignedBuffer, usize)>) -> Self {
        let (iovecs, buffers) = parts
            .into_iter()
            .map(|(buffer, len)| (prefix(&buffer, len), buffer))
            .unzip();
        DataBuffers {
            iovecs,
            owner: Owner::AlignedParts(buffers),
        }
    }

    /// The buffers, valid while `self` lives.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iovecs
    }

    /// The bytes the iovecs describe.
    pub fn len(&self) -> usize {
        self.iovecs.iter().map(|v| v.iov_len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes from the iovecs: what is left of a transfer after a short one.
    pub fn advance(&mut self, n: usize) {
        let mut rest = Vec::with_capacity(self.iovecs.len());
        crate::iov::subrange(&self.iovecs, n, self.len().saturating_sub(n), &mut rest);
        self.iovecs = rest;
    }

    /// The buffer of our own these were made from, if there is exactly one.
    pub fn into_aligned(self) -> Option<AlignedBuffer> {
        match self.owner {
            Owner::Aligned(buffer) => Some(buffer),
            Owner::AlignedParts(_) | Owner::Borrowed { .. } => None,
        }
    }

    /// Appends the buffers of our own these were made from, in order, to `out`.
    pub fn take_aligned(self, out: &mut Vec<AlignedBuffer>) {
        match self.owner {
            Owner::Aligned(buffer) => out.push(buffer),
            Owner::AlignedParts(buffers) => out.extend(buffers),
            Owner::Borrowed { .. } => {}
        }
    }

    /// The iovec list, emptied, for the next request's buffers (its allocation is kept).
    pub fn recycle(mut self) -> Vec<libc::iovec> {
        self.iovecs.clear();
        self.iovecs
    }
}

/// The first `len` bytes of `buffer`.
///
/// # Panics
/// If `len` is more than the buffer holds.
fn prefix(buffer: &AlignedBuffer, len: usize) -> libc::iovec {
    let whole = *buffer.iovec();
    assert!(
        len <= whole.iov_len,
        "{len} bytes from a buffer of {}",
        whole.iov_len
    );
    libc::iovec {
        iov_base: whole.iov_base,
        iov_len: len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_one_transfer_and_come_back_whole_in_order() {
        let a = AlignedBuffer::new(4096).unwrap();
        let b = AlignedBuffer::new(8192).unwrap();
        let (a_base, b_base) = (a.iovec().iov_base, b.iovec().iov_base);
        let data = DataBuffers::aligned_parts([(a, 1024), (b, 8192)]);
        let iovs: Vec<_> = data
            .iovecs()
            .iter()
            .map(|v| (v.iov_base, v.iov_len))
            .collect();
        assert_eq!(iovs, [(a_base, 1024), (b_base, 8192)]);
        assert_eq!(data.len(), 9216);
        let mut back = Vec::new();
        data.take_aligned(&mut back);
        let whole: Vec<_> = back
            .iter()
            .map(|b| (b.iovec().iov_base, b.iovec().iov_len))
            .collect();
        assert_eq!(whole, [(a_base, 4096), (b_base, 8192)]);
    }

    #[test]
    fn only_a_single_buffer_comes_back_as_one() {
        let one = DataBuffers::aligned(AlignedBuffer::new(512).unwrap());
        assert!(one.into_aligned().is_some());
        let parts = DataBuffers::aligned_parts([(AlignedBuffer::new(512).unwrap(), 512)]);
        assert!(parts.into_aligned().is_none());
    }
}
