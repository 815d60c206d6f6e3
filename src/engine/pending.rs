//! Operations an asynchronous mechanism holds (an io_uring, an AIO context, librbd), found
//! again by the index their completion's user data carries: the kernel hands back 64 bits,
//! the worker wants its token and the operation's buffers.
//!
//! It is also where an operation that never reached the mechanism waits to be reported: one
//! refused because every entry is taken (`EBUSY`, which the worker's bound on operations in
//! flight rules out, but an engine must not trust that) or one the mechanism turned down at
//! submission. Such refusals come out at the next [`Pending::take_refused`], so every engine
//! reports them the same way, through its ordinary reap, and the engine's eventfd is written
//! when the first one waits, so that the worker comes to reap it.

use vmm_sys_util::eventfd::EventFd;

use super::{Completion, IoOp};

struct Entry {
    token: u64,
    op: IoOp,
}

pub(super) struct Pending {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    refused: Vec<Completion>,
    /// The engine's completion eventfd.
    signal: EventFd,
}

impl Pending {
    /// Room for `capacity` operations; `signal` is the engine's completion eventfd.
    pub fn new(capacity: usize, signal: EventFd) -> Self {
        Pending {
            entries: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
            refused: Vec::new(),
            signal,
        }
    }

    fn push_refused(&mut self, refused: Completion) {
        self.refused.push(refused);
        if self.refused.len() == 1 {
            // Fails only if the counter would overflow, when it is readable anyway.
            let _ = self.signal.write(1);
        }
    }

    /// Keeps `op` until [`Pending::complete`] and returns the user data to give the kernel;
    /// `None` when every entry is taken, in which case `op` is refused with `EBUSY`.
    pub fn insert(&mut self, token: u64, op: IoOp) -> Option<u64> {
        let Some(index) = self.free.pop() else {
            let busy = std::io::Error::from_raw_os_error(libc::EBUSY);
            self.push_refused(Completion::new(token, op, Err(busy)));
            return None;
        };
        self.entries[index] = Some(Entry { token, op });
        Some(index as u64)
    }

    /// How many operations are kept now (in flight).
    pub fn in_use(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// The operation kept for `user_data`.
    pub fn get(&self, user_data: u64) -> Option<&IoOp> {
        let entry = self
            .entries
            .get(usize::try_from(user_data).ok()?)?
            .as_ref()?;
        Some(&entry.op)
    }

    /// Takes the operation kept for `user_data` out again: `(token, op)`.
    fn take(&mut self, user_data: u64) -> Option<(u64, IoOp)> {
        let index = usize::try_from(user_data).ok()?;
        let entry = self.entries.get_mut(index)?.take()?;
        self.free.push(index);
        Some((entry.token, entry.op))
    }

    /// The completion of the operation whose user data is `user_data`, finished with the
    /// kernel-style result `res`; None for user data we never gave out.
    pub fn complete(&mut self, user_data: u64, res: i64) -> Option<Completion> {
        let (token, op) = self.take(user_data)?;
        Some(Completion::from_raw(token, res, op))
    }

    /// The operation at `user_data` did not reach the mechanism: it is reported as failed
    /// with `err` at the next [`Pending::take_refused`].
    pub fn refuse(&mut self, user_data: u64, err: std::io::Error) {
        if let Some((token, op)) = self.take(user_data) {
            self.push_refused(Completion::new(token, op, Err(err)));
        }
    }

    /// Takes the operation at `user_data` back, unstarted, to be done another way.
    pub fn withdraw(&mut self, user_data: u64) -> Option<(u64, IoOp)> {
        self.take(user_data)
    }

    /// Forgets every operation still kept, without dropping its buffers: for when the
    /// mechanism may still write into them but can no longer be waited for.
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.entries));
        self.free.clear();
    }

    /// Moves the refused operations' completions to `out`.
    pub fn take_refused(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.refused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn entries_are_found_by_user_data_and_reused() {
        let mut pending = Pending::new(2, eventfd());
        let a = pending.insert(10, IoOp::Flush).unwrap();
        let b = pending.insert(20, IoOp::Flush).unwrap();
        assert!(
            pending.insert(30, IoOp::Flush).is_none(),
            "only two entries"
        );
        let done = pending.complete(b, 512).unwrap();
        assert_eq!((done.token, done.result.unwrap()), (20, 512));
        assert!(pending.complete(b, 0).is_none(), "completed twice");
        assert!(pending.complete(99, 0).is_none(), "never given out");
        let c = pending.insert(40, IoOp::Flush).unwrap();
        assert_eq!(c, b, "the freed entry is reused");
        assert_eq!(pending.in_use(), 2);
        let failed = pending.complete(a, -i64::from(libc::EIO)).unwrap();
        assert_eq!(failed.token, 10);
        assert_eq!(failed.result.unwrap_err().raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn refusals_are_reported_once_each_and_signalled() {
        let signal = eventfd();
        let mut pending = Pending::new(1, signal.try_clone().unwrap());
        let a = pending.insert(1, IoOp::Flush).unwrap();
        assert!(pending.insert(2, IoOp::Flush).is_none());
        assert_eq!(
            signal.read().unwrap(),
            1,
            "the first refusal wakes the worker"
        );
        pending.refuse(a, std::io::Error::from_raw_os_error(libc::EAGAIN));
        assert!(signal.read().is_err(), "one signal for what waits");
        assert_eq!(pending.in_use(), 0);
        let mut out = Vec::new();
        pending.take_refused(&mut out);
        let refused: Vec<_> = out
            .iter()
            .map(|c| (c.token, c.result.as_ref().unwrap_err().raw_os_error()))
            .collect();
        assert_eq!(refused, [(2, Some(libc::EBUSY)), (1, Some(libc::EAGAIN))]);
        pending.take_refused(&mut out);
        assert_eq!(out.len(), 2);
    }
}
