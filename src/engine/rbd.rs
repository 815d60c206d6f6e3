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
use super::{wait_for_completions, Completion, DataBuffers, Engine, IoOp};
use crate::ratelimit::limited;

pub struct RbdEngine {
    image: Arc<rbd::Image>,
    /// `(entry, result)` of each finished request, from librbd's callbacks.
    finished: Arc<Handoff<(usize, isize)>>,
    /// One callback per entry of `pending`; librbd is given the address of the one for the
    /// request's entry, so they must not move while a request is in flight (a boxed slice
    /// never reallocates).
    callbacks: Box<[rbd::OnDone]>,
    pending: Pending,
    /// Whether the request at each entry is a write: librbd reports a written request as 0,
    /// where the worker expects the bytes moved.
    writes: Box<[bool]>,
    /// Operations librbd refused to start, reported at the next reap.
    rejected: Vec<Completion>,
    /// Where `collect` takes finished requests, kept for its allocation.
    finished_batch: Vec<(usize, isize)>,
}

impl RbdEngine {
    /// An engine for `image` with room for `capacity` requests in flight.
    pub fn new(image: Arc<rbd::Image>, capacity: u16) -> io::Result<Self> {
        let capacity = usize::from(capacity.max(1));
        let eventfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
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
            pending: Pending::new(capacity),
            writes: vec![false; capacity].into_boxed_slice(),
            rejected: Vec::new(),
            finished_batch: Vec::with_capacity(capacity),
        })
    }

    fn collect(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.rejected);
        self.finished.take(&mut self.finished_batch);
        for (index, result) in self.finished_batch.drain(..) {
            let result = i64::try_from(result).unwrap_or(-i64::from(libc::EIO));
            if let Some(mut c) = self.pending.complete(index as u64, result) {
                if let (Ok(0), Some(data), true) = (&c.result, &c.data, self.writes[index]) {
                    c.result = Ok(data.len());
                }
                out.push(c);
            }
        }
    }
}

/// An operation without its buffers: what to ask librbd once the buffers are in `pending`.
#[derive(Clone, Copy)]
enum Shape {
    Read(u64),
    Write(u64),
    Flush,
    Discard(u64, u64),
    WriteZeroes(u64, u64, bool),
}

impl Shape {
    fn of(op: &IoOp) -> Shape {
        match *op {
            IoOp::Read { offset, .. } => Shape::Read(offset),
            // librbd without its cache acknowledges a write once it is durable, so a write
            // the guest wants synchronous needs nothing more.
            IoOp::Write { offset, .. } => Shape::Write(offset),
            IoOp::Flush => Shape::Flush,
            IoOp::Discard { offset, len } => Shape::Discard(offset, len),
            IoOp::WriteZeroes { offset, len, unmap } => Shape::WriteZeroes(offset, len, unmap),
        }
    }

    /// Starts this operation on `image` with `iovecs`, reporting to `on_done`.
    ///
    /// # Safety
    /// As [`rbd::Image::read`]: the buffers and `on_done` stay valid until it is called.
    unsafe fn start(
        self,
        image: &rbd::Image,
        iovecs: &[libc::iovec],
        on_done: &rbd::OnDone,
    ) -> io::Result<()> {
        // SAFETY: the caller's contract is each call's.
        unsafe {
            match self {
                Shape::Read(offset) => image.read(offset, iovecs, on_done),
                Shape::Write(offset) => image.write(offset, iovecs, on_done),
                Shape::Flush => image.flush(on_done),
                Shape::Discard(offset, len) => image.discard(offset, len, on_done),
                Shape::WriteZeroes(offset, len, unmap) => {
                    image.write_zeroes(offset, len, unmap, on_done)
                }
            }
        }
    }
}

impl Engine for RbdEngine {
    fn completion_fd(&self) -> RawFd {
        self.finished.fd()
    }

    fn push(&mut self, token: u64, op: IoOp) {
        let shape = Shape::of(&op);
        let index = match self.pending.insert(token, op.into_data()) {
            Ok(index) => index,
            Err(data) => {
                // The worker never has more requests in flight than our capacity.
                self.rejected.push(Completion {
                    token,
                    result: Err(io::Error::from_raw_os_error(libc::EBUSY)),
                    data,
                });
                return;
            }
        };
        let iovecs = self
            .pending
            .data(index)
            .map_or(&[][..], DataBuffers::iovecs);
        let entry = usize::try_from(index).expect("an index into our own tables");
        self.writes[entry] = matches!(shape, Shape::Write(_));
        let callback = &self.callbacks[entry];
        // SAFETY: the buffers are the operation's own, held in `pending` (their iovec list
        // does not move) until the callback has run and the completion is reaped; the
        // callback lives in `callbacks`, and Drop waits for every request in flight.
        if let Err(e) = unsafe { shape.start(&self.image, iovecs, callback) } {
            if let Some(refused) = self.pending.complete(index, 0) {
                self.rejected.push(Completion {
                    result: Err(e),
                    ..refused
                });
            }
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.finished.reset()?;
        self.collect(out);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.collect(out);
        Ok(())
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
            if wait_for_completions(self, 1000).is_err() {
                break;
            }
            let _ = self.reap(&mut done);
            done.clear();
        }
        if self.pending.in_use() > 0 {
            limited!(
                log::Level::Error,
                "RBD: {} requests still in flight at shutdown; leaving their buffers to librbd",
                self.pending.in_use()
            );
            std::mem::forget(std::mem::replace(&mut self.pending, Pending::new(0)));
            std::mem::forget(std::mem::take(&mut self.callbacks));
        }
    }
}
