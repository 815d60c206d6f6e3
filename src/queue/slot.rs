//! A request's life between the avail ring and the used ring.
//!
//! Requests in flight live in a slot table indexed by descriptor head: a head is unique among
//! the chains the guest has made available, so the table never needs more than queue-size
//! entries and the steady state allocates nothing. A slot is filled when its request is
//! handed to the engine ([`Slot::start`]) and consumed when an operation of it completes
//! ([`Slot::complete`]), which says whether to push the rest of a short transfer or to answer
//! the guest — decided by [`next_step`], a pure function of the bytes expected, the bytes
//! done and the result.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestAddress;

use super::controls::ErrorPolicy;
use super::{bounce, dirty_log};
use crate::blk::layout::status;
use crate::engine::{DataBuffers, Direction, IoOp};
use crate::GuestMemory;

/// A read or write: which way, and where on the disk it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Transfer {
    pub direction: Direction,
    pub offset: u64,
}

impl Transfer {
    /// The operation for the bytes after the first `done`, in `data`.
    pub fn op(self, done: usize, data: DataBuffers) -> IoOp {
        IoOp::Transfer {
            direction: self.direction,
            offset: self.offset + done as u64,
            data,
        }
    }
}

/// What a request does on the disk: enough to do it (again, if it is held after a failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Job {
    Transfer(Transfer),
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

impl Job {
    /// The operation that does the job from its `done`th byte on, a transfer's with the
    /// buffers `data` (none without them).
    pub fn op(self, done: usize, data: Option<DataBuffers>) -> Option<IoOp> {
        Some(match self {
            Job::Transfer(transfer) => transfer.op(done, data?),
            Job::Flush => IoOp::Flush,
            Job::Discard { offset, len } => IoOp::Discard { offset, len },
            Job::WriteZeroes { offset, len, unmap } => IoOp::WriteZeroes { offset, len, unmap },
        })
    }

    fn transfer(self) -> Option<Transfer> {
        match self {
            Job::Transfer(transfer) => Some(transfer),
            _ => None,
        }
    }

    /// Whether it reads (`--rerror` applies) rather than writes (`--werror`).
    pub fn reads(self) -> bool {
        self.transfer()
            .is_some_and(|t| t.direction == Direction::Read)
    }

    /// What it is called in reports.
    pub fn name(self) -> &'static str {
        match self {
            Job::Transfer(t) if t.direction == Direction::Read => "read",
            Job::Transfer(_) => "write",
            Job::Flush => "flush",
            Job::Discard { .. } => "discard",
            Job::WriteZeroes { .. } => "write-zeroes",
        }
    }

    /// Where on the disk it starts, if it has a place.
    pub fn offset(self) -> Option<u64> {
        match self {
            Job::Transfer(Transfer { offset, .. })
            | Job::Discard { offset, .. }
            | Job::WriteZeroes { offset, .. } => Some(offset),
            Job::Flush => None,
        }
    }
}

/// A request between submission and completion.
#[derive(Default)]
pub(super) struct Slot {
    pub busy: bool,
    status: GuestAddress,
    /// Bytes the engine must report for success.
    expected: usize,
    /// The used ring's length on success: bytes written into guest buffers, status included.
    used_len: u32,
    /// The guest's data buffers as the parser found them. While the request is in flight they
    /// belong to its operation and come back with the completion; a bounced request's stay
    /// here, for the copy back.
    pub iov: Vec<libc::iovec>,
    /// Whether the operation's buffers are a bounce buffer rather than the guest's.
    bounced: bool,
    /// What is being done, and the bytes of it that earlier short transfers moved.
    job: Option<Job>,
    done: usize,
    /// The guest memory the status byte (and a bounced request's iovecs) point into.
    mem: Option<Arc<GuestMemory>>,
    /// When the request was taken from the avail ring.
    taken_at: Option<Instant>,
}

// SAFETY: the iovecs point into guest memory that `mem` keeps mapped; a slot is only ever
// used by the worker that owns it.
unsafe impl Send for Slot {}

/// What the next step of a request is, after one of its operations completed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Every byte is done (or the operation moves none): the request succeeded.
    Done,
    /// A short transfer: `done` bytes are done now; push the rest.
    Rest { done: usize },
    /// The request failed.
    Failed(Failure),
}

/// Why a request failed.
#[derive(Debug)]
pub(super) enum Failure {
    Io(io::Error),
    /// A transfer stopped moving bytes after `done` of `expected`.
    NoProgress {
        done: usize,
        expected: usize,
    },
}

impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Failure::Io(a), Failure::Io(b)) => a.raw_os_error() == b.raw_os_error(),
            (
                Failure::NoProgress { done, expected },
                Failure::NoProgress {
                    done: d,
                    expected: e,
                },
            ) => done == d && expected == e,
            _ => false,
        }
    }
}

impl Eq for Failure {}

/// The next step of a request that expects `expected` bytes and has `done` of them, when an
/// operation for the rest completed with `result`. A short transfer (a signal, a file that
/// changed under us, a device splitting the request) moved part of it: do the rest rather
/// than fail the whole request, as QEMU does — unless it moved nothing, which would loop.
pub(super) fn next_step(expected: usize, done: usize, result: io::Result<usize>) -> Step {
    match result {
        Ok(n) if done + n == expected => Step::Done,
        Ok(n) if n > 0 && done + n < expected => Step::Rest { done: done + n },
        Ok(n) => Step::Failed(Failure::NoProgress {
            done: done + n,
            expected,
        }),
        Err(e) => Step::Failed(Failure::Io(e)),
    }
}

/// What a completion means for the guest.
pub(super) enum Outcome {
    /// Push this operation for the rest of a short transfer.
    Resubmit(IoOp),
    /// The request failed, and the error policy holds it: nothing is written for the guest,
    /// and `op` does (the rest of) it again when the disk resumes.
    Held {
        op: IoOp,
        job: Job,
        error: io::Error,
    },
    /// The request is over: its status byte is written; put `used_len` in the used ring.
    Finished {
        used_len: u32,
        failure: Option<Failure>,
        /// The bytes a successful read or write moved.
        moved: Option<(Direction, usize)>,
        taken_at: Option<Instant>,
    },
}

impl Slot {
    /// The request whose status byte is at `status` (in `mem`), taken from the avail ring at
    /// `taken_at`, goes to the engine to do `job`, expecting `expected` bytes, and answering
    /// `used_len` on success.
    pub fn start(
        &mut self,
        status: GuestAddress,
        job: Job,
        expected: usize,
        used_len: u32,
        mem: &Arc<GuestMemory>,
        taken_at: Instant,
    ) {
        self.busy = true;
        self.status = status;
        self.job = Some(job);
        self.expected = expected;
        self.used_len = used_len;
        self.done = 0;
        self.mem = Some(mem.clone());
        self.taken_at = Some(taken_at);
    }

    /// Records that the operation's buffers are a bounce buffer (the guest's iovecs stay in
    /// the slot for the copy back).
    pub fn set_bounced(&mut self, bounced: bool) {
        self.bounced = bounced;
    }

    /// An operation of this request completed with `result`, handing back `data`. With
    /// `logging`, the guest pages a read filled are marked in the frontend's dirty log before
    /// the status byte is written (and so before the used-ring entry). A failure that
    /// `policy` holds is held.
    pub fn complete(
        &mut self,
        result: io::Result<usize>,
        data: Option<DataBuffers>,
        logging: bool,
        policy: &ErrorPolicy,
    ) -> Outcome {
        let read = self.job.is_some_and(Job::reads);
        if let (true, true, false, Some(data), Some(mem)) =
            (logging, read, self.bounced, &data, &self.mem)
        {
            // What this transfer covered (the rest after a short one; a failed read may have
            // written part of it too): the kernel wrote it, past the library's bitmap.
            dirty_log::mark(mem, data.iovecs());
        }
        let step = next_step(self.expected, self.done, result);
        let mut data = data;
        let (ok, failure) = match step {
            Step::Rest { done } => match (self.job.and_then(Job::transfer), data.take()) {
                (Some(transfer), Some(mut rest)) => {
                    rest.advance(done - self.done);
                    self.done = done;
                    return Outcome::Resubmit(transfer.op(done, rest));
                }
                // Nothing to resubmit with: a transfer without its buffers is an engine bug.
                (_, back) => {
                    data = back;
                    (false, None)
                }
            },
            Step::Done => (true, None),
            Step::Failed(failure) => match self.hold(failure, &mut data, policy) {
                Ok(held) => return held,
                Err(failure) => (false, Some(failure)),
            },
        };
        let mem = self.mem.take().expect("busy slot holds its memory");
        match data {
            Some(data) if self.bounced && ok && read => {
                bounce::copy_back(&self.iov, data);
                if logging {
                    dirty_log::mark(&mem, &self.iov);
                }
            }
            // A bounce buffer is dropped; the guest's iovecs stayed in the slot.
            Some(_) if self.bounced => {}
            // The guest's iovec list, emptied: the next request's, without allocating.
            Some(data) => self.iov = data.recycle(),
            None => {}
        }
        super::write_status(
            &mem,
            self.status,
            if ok { status::OK } else { status::IOERR },
        );
        self.busy = false;
        Outcome::Finished {
            used_len: if ok { self.used_len } else { 1 },
            failure: failure
                .or_else(|| (!ok).then(|| Failure::Io(io::Error::from_raw_os_error(libc::EIO)))),
            moved: self
                .job
                .and_then(Job::transfer)
                .filter(|_| ok)
                .map(|t| (t.direction, self.expected)),
            taken_at: self.taken_at.take(),
        }
    }

    /// The held request of a failure `policy` holds (taking the buffers from `data`), or the
    /// failure back.
    #[cold]
    fn hold(
        &mut self,
        failure: Failure,
        data: &mut Option<DataBuffers>,
        policy: &ErrorPolicy,
    ) -> Result<Outcome, Failure> {
        let Some(job) = self.job else {
            return Err(failure);
        };
        let errno = match &failure {
            Failure::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Failure::NoProgress { .. } => libc::EIO,
        };
        if !policy.holds(job.reads(), errno) {
            return Err(failure);
        }
        // A transfer without its buffers is an engine bug: report it rather than hold.
        let Some(op) = job.op(self.done, data.take()) else {
            return Err(failure);
        };
        let error = match failure {
            Failure::Io(e) => e,
            Failure::NoProgress { .. } => io::Error::from_raw_os_error(libc::EIO),
        };
        Ok(Outcome::Held { op, job, error })
    }

    /// A held request that will not be done here: with `answer`, it is completed with an
    /// I/O error (the caller puts it in the used ring, length 1); without, it is only
    /// forgotten, left to the in-flight tracking buffer for whoever serves the ring next.
    pub fn give_up(&mut self, answer: bool) {
        if let (true, Some(mem)) = (answer, &self.mem) {
            super::write_status(mem, self.status, status::IOERR);
        }
        self.mem = None;
        self.taken_at = None;
        self.busy = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_decides_the_next_step_by_the_bytes_alone() {
        let err = || io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(next_step(4096, 0, Ok(4096)), Step::Done);
        assert_eq!(next_step(0, 0, Ok(0)), Step::Done, "a flush moves nothing");
        assert_eq!(next_step(4096, 0, Ok(1000)), Step::Rest { done: 1000 });
        assert_eq!(next_step(4096, 1000, Ok(3096)), Step::Done);
        assert_eq!(
            next_step(4096, 1000, Ok(0)),
            Step::Failed(Failure::NoProgress {
                done: 1000,
                expected: 4096
            })
        );
        assert_eq!(
            next_step(4096, 1000, Ok(5000)),
            Step::Failed(Failure::NoProgress {
                done: 6000,
                expected: 4096
            }),
            "more than asked is not success"
        );
        assert_eq!(
            next_step(4096, 0, Err(err())),
            Step::Failed(Failure::Io(err()))
        );
    }
}
