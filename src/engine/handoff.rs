//! Results finished on other threads, handed to the queue worker: a list under a lock plus an
//! eventfd the worker polls beside its vring's kick.
//!
//! The eventfd is written only when the list goes from empty to non-empty: the worker always
//! takes the whole list, so one signal per batch of results is enough. The thread pool's
//! threads and librbd's callback threads hand over their results this way.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use super::drain_eventfd;

pub(super) struct Handoff<T> {
    done: Mutex<Vec<T>>,
    eventfd: EventFd,
}

impl<T> Handoff<T> {
    /// A hand-off signalling `eventfd` (which may be shared with the engine that owns it).
    pub fn new(eventfd: EventFd) -> Self {
        Handoff {
            done: Mutex::new(Vec::new()),
            eventfd,
        }
    }

    /// Hands `item` over, from any thread.
    pub fn push(&self, item: T) {
        let first = {
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            done.push(item);
            done.len() == 1
        };
        if first {
            // A failed write to an eventfd can only mean its counter would overflow, in which
            // case it is readable anyway.
            let _ = self.eventfd.write(1);
        }
    }

    /// Moves everything handed over so far to `out`, leaving the eventfd alone.
    pub fn take(&self, out: &mut Vec<T>) {
        out.append(&mut self.done.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Resets the eventfd; call before [`Handoff::take`], so that an item handed over after
    /// the take signals again.
    pub fn reset(&self) -> io::Result<()> {
        drain_eventfd(&self.eventfd)
    }

    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }
}
