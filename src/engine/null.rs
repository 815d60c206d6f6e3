//! The null engine: every operation succeeds at once and touches nothing (reads leave the
//! guest's buffers as they were, like qemu-storage-daemon's `null-co`). With it, a benchmark
//! measures the daemon's own cost per request: virtqueue handling, parsing, notification.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

use super::{Completion, Engine, IoOp};

pub struct NullEngine {
    done: Vec<Completion>,
    /// Never signalled: completions are ready by the reap that follows each submit.
    eventfd: EventFd,
}

impl NullEngine {
    pub fn new(capacity: u16) -> io::Result<Self> {
        Ok(NullEngine {
            done: Vec::with_capacity(usize::from(capacity)),
            eventfd: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }
}

impl Engine for NullEngine {
    fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    unsafe fn push(&mut self, token: u64, op: IoOp) {
        let bytes = match op {
            IoOp::Read { iov, iovcnt, .. } | IoOp::Write { iov, iovcnt, .. } => {
                // SAFETY: the push contract guarantees `iovcnt` valid iovecs at `iov`.
                unsafe { std::slice::from_raw_parts(iov, iovcnt) }
                    .iter()
                    .map(|v| v.iov_len)
                    .sum()
            }
            IoOp::Flush | IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => 0,
        };
        self.done.push(Completion {
            token,
            result: Ok(bytes),
        });
    }

    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        out.append(&mut self.done);
        Ok(())
    }
}
