//! `aio=io_uring`: one ring per queue worker.
//!
//! Reads, writes and flushes go through the ring: a whole batch is queued as submission
//! entries and handed over with one `io_uring_enter`. The ring's completions are announced on
//! an eventfd registered with the ring, so the worker sleeps in epoll on the vring kick and the
//! ring at once. The disk's fd is registered with the ring (fixed file), which spares the kernel
//! a file-table lookup per request.
//!
//! Discard and write-zeroes go to a one-thread helper pool signalling the same eventfd: they
//! are rare, and `fallocate` modes vary by file system in ways that need a synchronous fallback
//! (writing zeroes by hand) that a ring entry cannot express.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use super::{drain_eventfd, Completion, Engine, IoOp, ThreadPool};
use crate::ratelimit::limited;

/// The io_uring engine of one queue.
pub struct UringEngine {
    ring: IoUring,
    eventfd: EventFd,
    helper: ThreadPool,
    /// Entries pushed but not yet submitted.
    unsubmitted: usize,
}

/// Checks that the kernel lets this process create an io_uring (it may be compiled out, or
/// disabled by `kernel.io_uring_disabled` or a seccomp policy).
pub fn probe_io_uring() -> io::Result<()> {
    IoUring::new(2).map(|_| ())
}

const FIXED_DISK: types::Fixed = types::Fixed(0);

impl UringEngine {
    /// A ring with room for `capacity` operations on `fd` (which must outlive the engine).
    pub fn new(fd: RawFd, capacity: u16) -> io::Result<Self> {
        let entries = u32::from(capacity.max(2)).next_power_of_two();
        let ring = IoUring::builder()
            // Completions are posted by task work on the worker thread. A sleeping worker is
            // woken for it anyway; a running (polling) one need not be interrupted by an IPI:
            // the TASKRUN flag tells it to enter the kernel instead.
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)?;
        ring.submitter().register_files(&[fd])?;
        let eventfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let helper = ThreadPool::new(fd, 1, eventfd.try_clone()?)?;
        Ok(UringEngine {
            ring,
            eventfd,
            helper,
            unsubmitted: 0,
        })
    }

    /// Takes every completion queue entry and the helper's finished jobs.
    fn collect(&mut self, out: &mut Vec<Completion>) {
        out.extend(
            self.ring
                .completion()
                .map(|cqe| Completion::from_raw(cqe.user_data(), i64::from(cqe.result()))),
        );
        self.helper.collect(out);
    }

    fn push_entry(&mut self, entry: squeue::Entry) {
        // SAFETY (of the push): the entry's buffers are valid until completion per the
        // `Engine::push` contract, checked by our caller.
        loop {
            // SAFETY: see above; the entry refers only to memory the caller keeps valid.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.unsubmitted += 1;
                return;
            }
            // The submission queue is sized to the engine's capacity, so it can only be full
            // if the kernel has not consumed earlier entries yet; hand them over and retry.
            if let Err(e) = self.ring.submit() {
                limited!(log::Level::Error, "io_uring submit failed: {e}");
            }
            self.unsubmitted = 0;
        }
    }
}

impl Engine for UringEngine {
    fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    unsafe fn push(&mut self, token: u64, op: IoOp) {
        let entry = match op {
            IoOp::Read {
                offset,
                iov,
                iovcnt,
            } => opcode::Readv::new(FIXED_DISK, iov, iovcnt as u32)
                .offset(offset)
                .build(),
            IoOp::Write {
                offset,
                iov,
                iovcnt,
                dsync,
            } => opcode::Writev::new(FIXED_DISK, iov, iovcnt as u32)
                .offset(offset)
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
            IoOp::Flush => opcode::Fsync::new(FIXED_DISK)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => {
                // SAFETY: forwarded under the same contract our caller accepted.
                unsafe { self.helper.push(token, op) };
                return;
            }
        };
        self.push_entry(entry.user_data(token));
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted > 0 {
            self.ring.submit()?;
            self.unsubmitted = 0;
        }
        self.helper.submit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        // Reset the eventfd before looking at the sources, so a completion that lands after
        // the look re-arms it and is not missed.
        drain_eventfd(&self.eventfd)?;
        self.collect(out);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.ring.completion().is_empty() && self.ring.submission().taskrun() {
            // Completions wait in task work; any system call runs it.
            self.ring.submit()?;
        }
        self.collect(out);
        Ok(())
    }
}
