//! The memory an operation reads into or writes from, owned by the operation.
//!
//! An engine keeps an operation's buffers until its completion hands them back, so nothing an
//! engine holds can outlive the memory it points at, and [`Engine::push`](super::Engine::push)
//! is safe. The worker gets the buffers back with the completion and reuses their iovec list
//! for its next request: no allocation per request.

use std::sync::Arc;

use crate::aligned::AlignedBuffer;
use crate::GuestMemory;

/// An iovec list and what keeps the memory it describes alive.
pub struct DataBuffers {
    iovecs: Vec<libc::iovec>,
    owner: Owner,
}

enum Owner {
    /// Guest memory, mapped for as long as this mapping is referenced.
    Guest { _mapping: Arc<GuestMemory> },
    /// A buffer of our own (a bounce buffer; a test's data).
    Aligned(AlignedBuffer),
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
// reference-counted guest memory mapping, or a heap buffer this value owns.
unsafe impl Send for DataBuffers {}

impl DataBuffers {
    /// Buffers in guest memory.
    ///
    /// # Safety
    /// Every iovec must lie within one mapped region of `mem`.
    pub unsafe fn in_guest(mem: Arc<GuestMemory>, iovecs: Vec<libc::iovec>) -> Self {
        DataBuffers {
            iovecs,
            owner: Owner::Guest { _mapping: mem },
        }
    }

    /// All of `buffer`.
    pub fn aligned(buffer: AlignedBuffer) -> Self {
        DataBuffers {
            iovecs: vec![*buffer.iovec()],
            owner: Owner::Aligned(buffer),
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

    /// The buffer of our own these were made from, if any.
    pub fn into_aligned(self) -> Option<AlignedBuffer> {
        match self.owner {
            Owner::Aligned(buffer) => Some(buffer),
            Owner::Guest { .. } => None,
        }
    }

    /// The iovec list, emptied, for the next request's buffers (its allocation is kept).
    pub fn recycle(mut self) -> Vec<libc::iovec> {
        self.iovecs.clear();
        self.iovecs
    }
}
