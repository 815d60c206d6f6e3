//! What each queue has done, for the control socket and the metrics.
//!
//! Every counter of a queue is written by that queue's thread alone, so counting is a plain
//! load and store (no locked read-modify-write) on the I/O path; the control socket reads
//! them at any time without stopping the queue (a reading may be one request behind).
//! Counters live as long as the daemon, across frontend connections.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::blk::request::RequestError;
use crate::histogram::{Histogram, SharedHistogram};

/// A counter of a queue. The names are the control protocol's and the metrics' labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Reads,
    Writes,
    Flushes,
    Discards,
    WriteZeroes,
    GetIds,
    BytesRead,
    BytesWritten,
    /// Requests the disk failed (completed with VIRTIO_BLK_S_IOERR after reaching it).
    IoErrors,
    /// Requests staged through a bounce buffer.
    Bounced,
    /// Batches handed to the engine.
    Submissions,
    /// Interrupts signalled to the guest.
    Notifications,
}

impl Counter {
    pub const ALL: [Counter; 12] = [
        Counter::Reads,
        Counter::Writes,
        Counter::Flushes,
        Counter::Discards,
        Counter::WriteZeroes,
        Counter::GetIds,
        Counter::BytesRead,
        Counter::BytesWritten,
        Counter::IoErrors,
        Counter::Bounced,
        Counter::Submissions,
        Counter::Notifications,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Reads => "reads",
            Counter::Writes => "writes",
            Counter::Flushes => "flushes",
            Counter::Discards => "discards",
            Counter::WriteZeroes => "write_zeroes",
            Counter::GetIds => "get_ids",
            Counter::BytesRead => "bytes_read",
            Counter::BytesWritten => "bytes_written",
            Counter::IoErrors => "io_errors",
            Counter::Bounced => "bounced",
            Counter::Submissions => "submissions",
            Counter::Notifications => "notifications",
        }
    }
}

/// One queue's counters.
pub struct QueueStats {
    counters: [AtomicU64; Counter::ALL.len()],
    /// Requests refused by the parser, by [`RequestError::kind`].
    rejected: [AtomicU64; RequestError::KINDS.len()],
    in_flight: AtomicU64,
    /// From taking a request off the avail ring to putting it in the used ring, in ns.
    latency: SharedHistogram,
}

impl Default for QueueStats {
    fn default() -> Self {
        QueueStats {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            in_flight: AtomicU64::new(0),
            latency: SharedHistogram::default(),
        }
    }
}

/// Adds `n` to a counter only one thread writes: a load and a store, no locked
/// read-modify-write on the I/O path. Readers on other threads see it a moment later. It
/// saturates, which a count of requests or nanoseconds reaches only after centuries.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_add(n),
        Ordering::Relaxed,
    );
}

impl QueueStats {
    /// Counts `n` more of `counter`. Only the queue's own thread may call this.
    pub fn add(&self, counter: Counter, n: u64) {
        bump(&self.counters[counter as usize], n);
    }

    /// Counts a request the parser refused. Only the queue's own thread may call this.
    pub fn rejected(&self, error: RequestError) {
        bump(&self.rejected[error.kind() as usize], 1);
    }

    /// Sets the number of requests now in flight.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Ordering::Relaxed)
    }

    /// Refused requests, by reason name, with their counts.
    pub fn rejections(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RequestError::KINDS
            .iter()
            .zip(&self.rejected)
            .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
    }

    /// Records a finished request's latency. Only the queue's own thread may call this.
    pub fn latency(&self, elapsed: std::time::Duration) {
        self.latency
            .record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The latencies recorded so far, in ns.
    pub fn latencies(&self) -> Histogram {
        self.latency.snapshot()
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_rejections_count_what_they_are_told() {
        let stats = QueueStats::default();
        stats.add(Counter::Reads, 2);
        stats.add(Counter::BytesRead, 8192);
        stats.rejected(RequestError::PastEnd);
        stats.rejected(RequestError::Unsupported(99));
        stats.set_in_flight(3);
        assert_eq!(stats.get(Counter::Reads), 2);
        assert_eq!(stats.get(Counter::BytesRead), 8192);
        assert_eq!(stats.get(Counter::Writes), 0);
        assert_eq!(stats.in_flight(), 3);
        let rejected: Vec<_> = stats.rejections().filter(|(_, n)| *n > 0).collect();
        assert_eq!(rejected, [("past_end", 1), ("unsupported", 1)]);
    }
}
