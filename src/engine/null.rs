//! The null engine: every operation succeeds at once and touches nothing (reads leave the
//! guest's buffers as they were, like qemu-storage-daemon's `null-co`). With it, a benchmark
//! measures the daemon's own cost per request: virtqueue handling, parsing, notification.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

use super::{Completion, DataBuffers, Engine, IoOp};

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

    fn push(&mut self, token: u64, op: IoOp) {
        let data = op.into_data();
        self.done.push(Completion {
            token,
            result: Ok(data.as_ref().map_or(0, DataBuffers::len)),
            data,
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
