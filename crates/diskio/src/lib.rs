//! What one disk I/O is, for whoever carries it out: the operation ([`IoOp`]), the buffers it
//! owns ([`DataBuffers`]) and what comes back ([`Completion`]).
//!
//! vblkd's queue workers turn virtio-blk requests into these, and its engines (io_uring,
//! Linux AIO, a thread pool, librbd) and the AoE initiator (the `aoe` crate) carry them out.
//! They are a crate of their own so that a protocol crate can take the same operations as
//! the daemon's engines without depending on the daemon. An operation owns its buffers and
//! gets them back with its completion, so nothing that holds an operation can outlive the
//! memory it points at.
//!
//! [`AlignedBuffer`] is the one place aligned memory is allocated (O_DIRECT's bounce buffers,
//! scratch I/O, the benchmark's direct reference), and [`iov`] the one place that walks byte
//! ranges of iovec lists.

use std::io;

pub mod aligned;
mod buffers;
pub mod iov;

pub use aligned::{AlignedBuffer, SlabExtent};
pub use buffers::DataBuffers;

/// Which way a transfer moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the disk into the buffers.
    Read,
    /// From the buffers to the disk. `dsync`: make the write durable before completing it
    /// (`RWF_DSYNC`), which is how a disabled write cache (virtio's WCE off) is honoured.
    Write { dsync: bool },
}

impl Direction {
    pub fn is_write(self) -> bool {
        matches!(self, Direction::Write { .. })
    }
}

/// One operation on a disk. Offsets and lengths are in bytes.
#[derive(Debug)]
pub enum IoOp {
    /// Move the bytes of `data` between it and the disk at `offset`.
    Transfer {
        direction: Direction,
        offset: u64,
        data: DataBuffers,
    },
    /// Make every completed write durable (`fdatasync`).
    Flush,
    /// Deallocate a range; reads of it return zeroes afterwards (punch hole).
    Discard { offset: u64, len: u64 },
    /// Make a range read as zeroes; `unmap` allows deallocating it.
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

impl IoOp {
    /// The buffers of a transfer, taken out of it.
    pub fn into_data(self) -> Option<DataBuffers> {
        match self {
            IoOp::Transfer { data, .. } => Some(data),
            IoOp::Flush | IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => None,
        }
    }

    /// The direction of a transfer; none for other operations.
    pub fn direction(&self) -> Option<Direction> {
        match self {
            IoOp::Transfer { direction, .. } => Some(*direction),
            _ => None,
        }
    }
}

/// A finished operation: the token it was handed over with, the number of bytes moved or the
/// error, and the buffers of a transfer, handed back.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub result: io::Result<usize>,
    pub data: Option<DataBuffers>,
}

impl Completion {
    /// `op`, finished with a kernel-style result: bytes when non-negative, `-errno` when
    /// negative.
    pub fn from_raw(token: u64, res: i64, op: IoOp) -> Self {
        let result = usize::try_from(res).map_err(|_| {
            let errno = res.checked_neg().and_then(|e| i32::try_from(e).ok());
            io::Error::from_raw_os_error(errno.unwrap_or(libc::EIO))
        });
        Completion {
            token,
            result,
            data: op.into_data(),
        }
    }

    /// `op`, finished with `result`.
    pub fn new(token: u64, op: IoOp, result: io::Result<usize>) -> Self {
        Completion {
            token,
            result,
            data: op.into_data(),
        }
    }
}
