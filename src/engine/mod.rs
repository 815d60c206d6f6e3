//! I/O engines: *how* a guest request becomes I/O on the backing disk.
//!
//! The queue worker ([`crate::queue`]) decides *what* the guest asked for and turns each
//! virtio-blk request into one [`IoOp`] whose buffers point straight into guest memory. An
//! engine only moves bytes. This split is the seam of the daemon: io_uring, Linux AIO, the
//! thread pool, librbd and the AoE initiator sit behind the same trait, so the worker's
//! batching and completion logic is written once. The operation, its buffers and its
//! completion are the `diskio` crate's, which the AoE protocol crate speaks too.
//!
//! The contract, shaped by what makes each mechanism fast:
//! - [`Engine::push`] only records an operation, which owns its buffers ([`DataBuffers`]);
//!   they come back with its [`Completion`]. Nothing starts until [`Engine::submit`], which
//!   hands the whole batch over with as few system calls as the mechanism allows (one
//!   `io_uring_enter`, one `io_submit`, one condition-variable wake-up).
//! - [`Engine::completion_fd`] becomes readable when [`Engine::reap`] has something to hand
//!   back. The worker waits on it in the same epoll set as the vring's kick, so completions
//!   never take an extra thread hop (the lesson of vblade's AIO patch: poll the completion
//!   events together with the request source, no signals).
//! - [`Engine::reap`] never blocks and, where the mechanism allows, makes no system call, so
//!   a busy-polling worker can call it in a loop. It leaves the completion fd as it is; the
//!   worker calls [`Engine::arm`] before it sleeps on it, and reaps once more.
//! - What only some engines need is asked for, not branched on: how the engine wakes the
//!   worker ([`Engine::wakeup`]) and what it does with the memory the I/O points into
//!   ([`Engine::set_io_memory`]: the guest's memory map, an AoE target's receive ring and
//!   buffers).
//!
//! Every engine instance belongs to exactly one queue worker: no lock or ring is shared between
//! queues. Engines hold an `Arc` of the file they do I/O on, so it outlives them whatever the
//! order things are dropped in.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::GuestMemory;

mod aio;
mod aoe;
mod blocking;
mod handoff;
mod null;
mod pending;
mod rbd;
mod threads;
mod uring;

pub use aio::AioEngine;
pub use aoe::AoeEngine;
pub use diskio::{AlignedBuffer, Completion, DataBuffers, Direction, IoOp};
pub use null::NullEngine;
pub use rbd::RbdEngine;
pub use threads::ThreadPool;
pub use uring::{probe_io_uring, FixedBufferCounters, UringEngine};

/// Memory that a worker's I/O points into, which an engine may prepare for: a guest's memory
/// map, an AoE target's receive ring and buffers.
pub struct IoMemory {
    /// What it is, for the log.
    pub what: &'static str,
    regions: Vec<libc::iovec>,
    keeper: Arc<dyn Send + Sync>,
}

impl IoMemory {
    /// The regions of a guest's memory map.
    pub fn guest(mem: &Arc<GuestMemory>) -> Self {
        use vm_memory::GuestMemoryBackend as _;
        let regions = mem
            .iter()
            .map(|region| libc::iovec {
                iov_base: region.as_ptr().cast(),
                iov_len: region.size(),
            })
            .collect();
        IoMemory {
            what: "guest memory",
            regions,
            keeper: mem.clone(),
        }
    }

    /// Memory of `regions`, which `keeper` keeps mapped.
    ///
    /// # Safety
    /// Every region must stay mapped, readable and writable, for as long as `keeper` lives.
    pub unsafe fn new(
        what: &'static str,
        regions: Vec<libc::iovec>,
        keeper: Arc<dyn Send + Sync>,
    ) -> Self {
        IoMemory {
            what,
            regions,
            keeper,
        }
    }

    pub fn regions(&self) -> &[libc::iovec] {
        &self.regions
    }

    /// What keeps the regions mapped.
    pub fn keeper(&self) -> &Arc<dyn Send + Sync> {
        &self.keeper
    }
}

/// How an engine's completion fd wakes the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// When an operation finishes (the usual case).
    OnCompletion,
    /// On a timer that is running now, whether or not anything finishes: the AoE engine
    /// while it lets replies gather. The worker then leaves guest kicks off and looks at the
    /// avail ring when the timer fires — one wake-up instead of two.
    OnTimer,
}

/// An I/O engine owned by one queue worker. See the module documentation for the contract.
pub trait Engine: Send {
    /// A descriptor that is readable whenever [`Engine::reap`] may return completions (after
    /// [`Engine::arm`]).
    fn completion_fd(&self) -> RawFd;

    /// Records `op` for the next [`Engine::submit`]; its buffers come back with its
    /// completion. The engine never holds more operations than the capacity it was created
    /// with; the worker guarantees that bound.
    fn push(&mut self, token: u64, op: IoOp);

    /// Starts every pushed operation. Per-operation failures are reported as completions, not
    /// here; an error here means the engine itself is broken.
    fn submit(&mut self) -> io::Result<()>;

    /// Appends every finished operation to `out`, without blocking.
    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()>;

    /// The worker is about to sleep on [`Engine::completion_fd`]: make it readable for every
    /// completion `reap` has not returned, and not for those it has (an eventfd is reset
    /// here). The worker reaps once more afterwards, so a completion that raced with this is
    /// not lost.
    fn arm(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// How the completion fd wakes the worker now.
    fn wakeup(&self) -> Wakeup {
        Wakeup::OnCompletion
    }

    /// The memory the worker's requests point into: the guest's, whenever the frontend
    /// changes the memory table (and once at the start); an AoE target's receive ring and
    /// buffers. An engine that can prepare for it — io_uring registers it as fixed buffers —
    /// does so; the default ignores it.
    fn set_io_memory(&mut self, _memory: &IoMemory) {}
}

/// Reaps what `engine` has finished into `out`, or, if nothing has, waits until its completion
/// fd is readable or `timeout_ms` passes. For where the worker's epoll loop cannot run:
/// draining in-flight I/O when a queue stops, an engine waiting for its own operations.
pub fn reap_or_wait(
    engine: &mut dyn Engine,
    out: &mut Vec<Completion>,
    timeout_ms: i32,
) -> io::Result<()> {
    let before = out.len();
    engine.arm()?;
    engine.reap(out)?;
    if out.len() > before {
        return Ok(());
    }
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
