//! Small things the layers above share and that depend on none of them: rate-limited logging
//! for what a guest can provoke, size arguments ("4k", "1G"), a latency histogram, the
//! SIGBUS guard for memory another process can take away, a timerfd, and the single-writer
//! counter increment.

use std::sync::atomic::{AtomicU64, Ordering};

pub mod histogram;
pub mod ratelimit;
pub mod sigbus;
pub mod size;
pub mod timer;

/// Adds `n` to a counter only one thread writes at a time: a load and a store, no locked
/// read-modify-write on the I/O path. Readers on other threads see it a moment later. It
/// saturates, which a count of requests or nanoseconds reaches only after centuries.
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_add(n),
        Ordering::Relaxed,
    );
}
