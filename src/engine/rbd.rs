//! The Ceph RBD engine: requests go to librbd asynchronously, straight between guest memory
//! and the cluster.
//!
//! librbd reports a finished request by calling back from one of its own threads. The
//! callback puts `(index, result)` on this engine's list and writes its eventfd when the list
//! was empty — the same hand-off as the thread pool's, so the queue worker waits on one fd
//! and reaps a batch at a time. Each queue has its own list and eventfd: queues share the one
//! image handle (librbd is thread-safe; a second handle would fight for the exclusive lock)
//! but no lock of ours.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::handoff::Handoff;
use super::pending::Pending;
use super::{reap_or_wait, Completion, Direction, Engine, IoOp};
use crate::util::ratelimit::limited;

pub struct RbdEngine {
    image: Arc<rbd::Image>,
    /// `(entry, result)` of each finished request, from librbd's callbacks.
    finished: Arc<Handoff<(usize, isize)>>,
    /// One callback per entry of `pending`; librbd is given the address of the one for the
    /// request's entry, so they must not move while a request is in flight (a boxed slice
    /// never reallocates).
    callbacks: Box<[rbd::OnDone]>,
    pending: Pending,
    /// Entries pushed and not yet handed to librbd.
    unstarted: Vec<u64>,
    /// Where `reap` takes finished requests, kept for its allocation.
    finished_batch: Vec<(usize, isize)>,
}

impl RbdEngine {
    /// An engine for `image` with room for `capacity` requests in flight.
    pub fn new(image: Arc<rbd::Image>, capacity: u16) -> io::Result<Self> {
        let capacity = usize::from(capacity.max(1));
        let eventfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let pending = Pending::new(capacity, eventfd.try_clone()?);
        let finished = Arc::new(Handoff::new(eventfd));
        let callbacks = (0..capacity)
            .map(|index| {
                let finished = finished.clone();
                Box::new(move |result: isize| finished.push((index, result))) as rbd::OnDone
            })
            .collect();
        Ok(RbdEngine {
            image,
            finished,
            callbacks,
            pending,
            unstarted: Vec::with_capacity(capacity),
            finished_batch: Vec::with_capacity(capacity),
        })
    }

    /// Hands the operation at `user_data` to librbd.
    fn start(&mut self, user_data: u64) {
        let (Some(op), Ok(entry)) = (self.pending.get(user_data), usize::try_from(user_data))
        else {
            return;
        };
        let (image, on_done) = (&*self.image, &self.callbacks[entry]);
        // SAFETY: the buffers are the operation's own, held in `pending` (their iovec list
        // does not move) until the callback has run and the completion is reaped; the
        // callback lives in `callbacks`, and Drop waits for every request in flight.
        let started = unsafe {
            match *op {
                IoOp::Transfer {
                    direction: Direction::Read,
                    offset,
                    ref data,
                } => image.read(offset, data.iovecs(), on_done),
                // librbd without its cache acknowledges a write once it is durable, so a
                // write the guest wants synchronous needs nothing more.
                IoOp::Transfer {
                    direction: Direction::Write { .. },
                    offset,
                    ref data,
                } => image.write(offset, data.iovecs(), on_done),
                IoOp::Flush => image.flush(on_done),
                IoOp::Discard { offset, len } => image.discard(offset, len, on_done),
                IoOp::WriteZeroes { offset, len, unmap } => {
                    image.write_zeroes(offset, len, unmap, on_done)
                }
            }
        };
        if let Err(e) = started {
            self.pending.refuse(user_data, e);
        }
    }
}

impl Engine for RbdEngine {
    fn completion_fd(&self) -> RawFd {
        self.finished.fd()
    }

    fn push(&mut self, token: u64, op: IoOp) {
        if let Some(user_data) = self.pending.insert(token, op) {
            self.unstarted.push(user_data);
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        // librbd has no batch submission: each request is its own call, made here rather than
        // in push so that the contract holds (nothing starts before submit).
        for user_data in std::mem::take(&mut self.unstarted) {
            self.start(user_data);
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.pending.take_refused(out);
        self.finished.take(&mut self.finished_batch);
        for (index, result) in self.finished_batch.drain(..) {
            let user_data = index as u64;
            let written = self
                .pending
                .get(user_data)
                .and_then(IoOp::direction)
                .is_some_and(Direction::is_write);
            let result = i64::try_from(result).unwrap_or(-i64::from(libc::EIO));
            if let Some(mut c) = self.pending.complete(user_data, result) {
                // librbd reports a completed write as 0; the worker expects the bytes moved.
                if let (true, Ok(0), Some(data)) = (written, &c.result, &c.data) {
                    c.result = Ok(data.len());
                }
                out.push(c);
            }
        }
        Ok(())
    }

    fn arm(&mut self) -> io::Result<()> {
        self.finished.reset()
    }
}

impl Drop for RbdEngine {
    /// librbd still holds the buffers and the callbacks of requests in flight: wait for them
    /// (the worker drains before it drops an engine, so normally there are none). If the
    /// cluster never answers, leak what they refer to rather than free it under librbd.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut done = Vec::new();
        while self.pending.in_use() > 0 && Instant::now() < deadline {
            if reap_or_wait(self, &mut done, 1000).is_err() {
                break;
            }
            done.clear();
        }
        if self.pending.in_use() > 0 {
            limited!(
                log::Level::Error,
                "RBD: {} requests still in flight at shutdown; leaving their buffers to librbd",
                self.pending.in_use()
            );
            self.pending.leak();
            std::mem::forget(std::mem::take(&mut self.callbacks));
        }
    }
}
