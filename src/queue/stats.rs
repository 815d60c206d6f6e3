//! What each queue has done, for the control socket and the metrics.
//!
//! Every counter of a queue is written by that queue's thread alone — or, while the queue is
//! drained on GET_VRING_BASE or at shutdown, by the thread that drains it, holding the
//! worker's mutex, which the queue's thread then waits for: one writer at a time. So counting
//! is a plain load and store (no locked read-modify-write) on the I/O path; the control socket
//! reads them at any time without stopping the queue (a reading may be one request behind).
//! Counters live as long as the daemon, across frontend connections.
//!
//! [`Counter`] is the one table of the counters' names: the control protocol's keys and the
//! metrics' names are these, and their help text is the variant's message.

use std::sync::atomic::{AtomicU64, Ordering};

use strum::{EnumCount, EnumMessage, IntoEnumIterator};

use crate::blk::request::{Rejection, RequestError, RequestKind};
use crate::util::bump;
use crate::util::histogram::{Histogram, SharedHistogram};

/// A counter of a queue.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    strum::EnumIter,
    strum::EnumCount,
    strum::EnumMessage,
    strum::IntoStaticStr,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    #[strum(message = "Read requests")]
    Reads,
    #[strum(message = "Write requests")]
    Writes,
    #[strum(message = "Flush requests")]
    Flushes,
    #[strum(message = "Discard requests")]
    Discards,
    #[strum(message = "Write-zeroes requests")]
    WriteZeroes,
    #[strum(message = "GET_ID requests")]
    GetIds,
    #[strum(message = "Bytes read for the guest")]
    BytesRead,
    #[strum(message = "Bytes written for the guest")]
    BytesWritten,
    /// Requests the disk failed (completed with VIRTIO_BLK_S_IOERR after reaching it).
    #[strum(message = "Requests the disk failed (VIRTIO_BLK_S_IOERR)")]
    IoErrors,
    #[strum(message = "Requests staged through a bounce buffer")]
    Bounced,
    /// Batches handed to the engine (a submission that hands nothing over is not one).
    #[strum(message = "Batches of requests handed to the I/O engine")]
    Submissions,
    #[strum(message = "Interrupts signalled to the guest")]
    Notifications,
    /// Requests found in flight in the in-flight buffer when the ring started, and done again.
    #[strum(message = "Requests resubmitted after a restart of the daemon")]
    Resubmitted,
    /// Times the guest broke the ring (it is served again after a reset).
    #[strum(message = "Times the guest broke the ring")]
    BrokenRings,
    /// Requests in flight when the frontend stopped the ring (GET_VRING_BASE: a migration's
    /// switch-over, a guest reset), each completed before the frontend was answered.
    #[strum(message = "Requests in flight when the frontend stopped the ring")]
    InFlightAtStop,
    /// Requests the queue held back because they were over the I/O limits (`--throttle`).
    #[strum(message = "Requests held back by the I/O limits")]
    Throttled,
    /// The time the queue was held back by the I/O limits, taking nothing from its ring.
    #[strum(message = "Microseconds the queue was held back by the I/O limits")]
    ThrottledMicroseconds,
    /// Requests that failed and were held by the error policy (`--werror`, `--rerror`)
    /// rather than completed with an error.
    #[strum(message = "Failed requests held by the error policy")]
    HeldOnError,
}

impl Counter {
    /// The counter of requests of `kind`.
    pub fn of(kind: RequestKind) -> Counter {
        match kind {
            RequestKind::Read { .. } => Counter::Reads,
            RequestKind::Write { .. } => Counter::Writes,
            RequestKind::Flush => Counter::Flushes,
            RequestKind::Discard { .. } => Counter::Discards,
            RequestKind::WriteZeroes { .. } => Counter::WriteZeroes,
            RequestKind::GetId => Counter::GetIds,
        }
    }

    /// The counter's name, as the control protocol and the metrics spell it.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// What it counts, in a few words (the metrics' help).
    pub fn help(self) -> &'static str {
        self.get_message().unwrap_or_default()
    }
}

/// One queue's counters.
pub struct QueueStats {
    counters: [AtomicU64; Counter::COUNT],
    /// Requests refused by the parser, by why.
    rejected: [AtomicU64; Rejection::COUNT],
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

impl QueueStats {
    /// Counts `n` more of `counter`. Only the queue's writer may call this.
    pub fn add(&self, counter: Counter, n: u64) {
        bump(&self.counters[counter as usize], n);
    }

    /// Counts a request the parser refused. Only the queue's writer may call this.
    pub fn rejected(&self, error: RequestError) {
        bump(&self.rejected[Rejection::from(error) as usize], 1);
    }

    /// Sets the number of requests now in flight.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Ordering::Relaxed)
    }

    /// Every counter with its value.
    pub fn counters(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::iter().map(|c| (c, self.get(c)))
    }

    /// Refused requests, by why, with their counts.
    pub fn rejections(&self) -> impl Iterator<Item = (Rejection, u64)> + '_ {
        Rejection::iter().map(|r| (r, self.rejected[r as usize].load(Ordering::Relaxed)))
    }

    /// Records a finished request's latency. Only the queue's writer may call this.
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
        assert_eq!(
            rejected,
            [(Rejection::PastEnd, 1), (Rejection::Unsupported, 1)]
        );
    }

    #[test]
    fn every_counter_has_a_name_and_help() {
        let names: Vec<&str> = Counter::iter().map(Counter::name).collect();
        assert_eq!(names[0], "reads");
        assert!(names.contains(&"write_zeroes") && names.contains(&"bytes_written"));
        assert!(Counter::iter().all(|c| !c.help().is_empty()));
        let reasons: Vec<&str> = Rejection::iter().map(<&str>::from).collect();
        assert_eq!(reasons[0], "broken_chain");
        assert!(reasons.contains(&"past_end"));
    }
}
