//! Operations a kernel interface holds (an io_uring, an AIO context), found again by the index
//! their completion's user data carries: the kernel hands back 64 bits, the worker wants its
//! token and the operation's buffers.

use super::{Completion, DataBuffers};

struct Entry {
    token: u64,
    data: Option<DataBuffers>,
}

pub(super) struct Pending {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

impl Pending {
    pub fn new(capacity: usize) -> Self {
        Pending {
            entries: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
        }
    }

    /// Keeps `token`'s buffers until [`Pending::complete`]; the user data to give the kernel,
    /// or the buffers back when every entry is taken.
    pub fn insert(
        &mut self,
        token: u64,
        data: Option<DataBuffers>,
    ) -> Result<u64, Option<DataBuffers>> {
        let Some(index) = self.free.pop() else {
            return Err(data);
        };
        self.entries[index] = Some(Entry { token, data });
        Ok(index as u64)
    }

    /// How many operations are kept now (in flight).
    pub fn in_use(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// The buffers kept for `user_data`.
    pub fn data(&self, user_data: u64) -> Option<&DataBuffers> {
        let entry = self
            .entries
            .get(usize::try_from(user_data).ok()?)?
            .as_ref()?;
        entry.data.as_ref()
    }

    /// The completion of the operation whose user data is `user_data`, finished with the
    /// kernel-style result `res`; None for user data we never gave out.
    pub fn complete(&mut self, user_data: u64, res: i64) -> Option<Completion> {
        let index = usize::try_from(user_data).ok()?;
        let entry = self.entries.get_mut(index)?.take()?;
        self.free.push(index);
        Some(Completion::from_raw(entry.token, res, entry.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_user_data_and_reused() {
        let mut pending = Pending::new(2);
        let a = pending.insert(10, None).unwrap();
        let b = pending.insert(20, None).unwrap();
        assert!(pending.insert(30, None).is_err(), "only two entries");
        let done = pending.complete(b, 512).unwrap();
        assert_eq!((done.token, done.result.unwrap()), (20, 512));
        assert!(pending.complete(b, 0).is_none(), "completed twice");
        assert!(pending.complete(99, 0).is_none(), "never given out");
        let c = pending.insert(30, None).unwrap();
        assert_eq!(c, b, "the freed entry is reused");
        assert_eq!(pending.in_use(), 2);
        let failed = pending.complete(a, -i64::from(libc::EIO)).unwrap();
        assert_eq!(failed.token, 10);
        assert_eq!(failed.result.unwrap_err().raw_os_error(), Some(libc::EIO));
    }
}
