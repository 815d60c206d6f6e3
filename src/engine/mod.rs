//! I/O engines: *how* a guest request becomes I/O on the backing disk.
//!
//! The queue worker ([`crate::worker`]) decides *what* the guest asked for and turns each
//! virtio-blk request into one [`IoOp`] whose buffers point straight into guest memory. An
//! engine only moves bytes. This split is the seam of the daemon: io_uring, Linux AIO and the
//! thread pool sit behind the same trait, so the worker's batching and completion logic is
//! written once.
//!
//! The contract, shaped by what makes each mechanism fast:
//! - [`Engine::push`] only records an operation, which owns its buffers ([`DataBuffers`]);
//!   they come back with its [`Completion`]. Nothing reaches the kernel until
//!   [`Engine::submit`], which hands the whole batch over with as few system calls as the
//!   mechanism allows (one `io_uring_enter`, one `io_submit`, one condition-variable wake-up).
//! - [`Engine::completion_fd`] is an eventfd that becomes readable when [`Engine::reap`] has
//!   something to hand back. The worker waits on it in the same epoll set as the vring's kick,
//!   so completions never take an extra thread hop (the lesson of vblade's AIO patch: poll the
//!   completion events together with the request source, no signals).
//! - [`Engine::reap`] never blocks. The worker reaps once after every submit, so completions
//!   that are ready when `submit` returns need not be announced on the eventfd.
//!
//! Every engine instance belongs to exactly one queue worker: no lock or ring is shared between
//! queues.

use std::io;
use std::os::fd::RawFd;

mod aio;
mod aoe;
mod blocking;
mod buffers;
mod handoff;
mod null;
mod pending;
mod rbd;
mod threads;
mod uring;

pub use aio::AioEngine;
pub use aoe::{AoeCounters, AoeEngine, AoeTarget};
pub use buffers::DataBuffers;
pub use null::NullEngine;
pub use rbd::RbdEngine;
pub use threads::ThreadPool;
pub use uring::{probe_io_uring, UringEngine};

/// One operation on the disk. Offsets and lengths are in bytes.
///
/// Offsets and lengths stay within the disk's capacity, which the worker checks every request
/// against; a file's capacity fits `off_t`, so the engines' conversions to it cannot fail for
/// an operation the worker built ([`file_offset`]).
#[derive(Debug)]
pub enum IoOp {
    Read {
        offset: u64,
        data: DataBuffers,
    },
    Write {
        offset: u64,
        data: DataBuffers,
        /// Make this write durable before completing it (`RWF_DSYNC`): how a disabled write
        /// cache (the guest's WCE bit off) is honoured.
        dsync: bool,
    },
    /// `fdatasync`.
    Flush,
    /// Deallocate a range; reads of it return zeroes afterwards (punch hole).
    Discard {
        offset: u64,
        len: u64,
    },
    /// Make a range read as zeroes; `unmap` allows deallocating it.
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
}

impl IoOp {
    /// The buffers of a read or write, taken out of it.
    pub fn into_data(self) -> Option<DataBuffers> {
        match self {
            IoOp::Read { data, .. } | IoOp::Write { data, .. } => Some(data),
            IoOp::Flush | IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => None,
        }
    }
}

/// A finished operation: the token given to [`Engine::push`], the number of bytes moved or
/// the error, and the buffers of a read or write, handed back.
pub struct Completion {
    pub token: u64,
    pub result: io::Result<usize>,
    pub data: Option<DataBuffers>,
}

impl Completion {
    /// Builds a completion from a kernel-style result: bytes when non-negative, `-errno` when
    /// negative.
    pub fn from_raw(token: u64, res: i64, data: Option<DataBuffers>) -> Self {
        let result = usize::try_from(res).map_err(|_| {
            let errno = res.checked_neg().and_then(|e| i32::try_from(e).ok());
            io::Error::from_raw_os_error(errno.unwrap_or(libc::EIO))
        });
        Completion {
            token,
            result,
            data,
        }
    }

    /// `op`, failed with `err` before it reached the disk.
    pub fn failed(token: u64, op: IoOp, err: io::Error) -> Self {
        Completion {
            token,
            result: Err(err),
            data: op.into_data(),
        }
    }
}

/// An I/O engine owned by one queue worker. See the module documentation for the contract.
pub trait Engine: Send {
    /// An eventfd that is readable whenever [`Engine::reap`] may return completions.
    fn completion_fd(&self) -> RawFd;

    /// Records `op` for the next [`Engine::submit`]; its buffers come back with its
    /// completion. The engine never holds more operations than the capacity it was created
    /// with; the worker guarantees that bound.
    fn push(&mut self, token: u64, op: IoOp);

    /// Hands every pushed operation to the kernel (or the pool). Per-operation failures are
    /// reported as completions, not here; an error here means the engine itself is broken.
    fn submit(&mut self) -> io::Result<()>;

    /// Appends every finished operation to `out`, without blocking.
    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()>;

    /// Whether the completion fd is certain to fire again soon even if no I/O finishes (the
    /// AoE engine while it gathers replies on a timer). The worker then leaves guest kicks
    /// off and looks at the avail ring when it fires: one wake-up instead of two.
    fn calls_back_soon(&self) -> bool {
        false
    }

    /// The guest memory the worker's requests point into, before every batch. An engine that
    /// can prepare for it (io_uring registers it as fixed buffers) compares it with what it
    /// has and keeps a reference to what it uses; the default ignores it.
    fn use_guest_memory(&mut self, _mem: &std::sync::Arc<crate::GuestMemory>) {}

    /// Like [`Engine::reap`], for a busy-polling worker: avoids system calls where the
    /// mechanism allows and leaves the eventfd alone (it may stay readable; the next `reap`
    /// resets it).
    fn poll(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.reap(out)
    }
}

/// Waits until `engine`'s completion fd is readable or `timeout_ms` passes. Used where the
/// worker's epoll loop cannot run: draining in-flight I/O when a queue stops.
pub fn wait_for_completions(engine: &dyn Engine, timeout_ms: i32) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: engine.completion_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid, initialised pollfd and we pass a count of exactly one.
    let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// `offset` as the file system calls take it. An offset beyond `off_t` is beyond every file, and
/// becomes the largest `off_t`, which the kernel refuses or reads nothing at: the request fails
/// (a transfer that moves nothing is an I/O error), nothing else does.
fn file_offset(offset: u64) -> libc::off_t {
    libc::off_t::try_from(offset).unwrap_or(libc::off_t::MAX)
}

/// Reads an eventfd to reset it; a counter of zero (`EAGAIN`) is not an error.
fn drain_eventfd(fd: &vmm_sys_util::eventfd::EventFd) -> io::Result<()> {
    match fd.read() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod conformance;
