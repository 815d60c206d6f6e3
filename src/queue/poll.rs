//! How long a queue worker busy-polls before it sleeps: windows that adapt to the load.
//!
//! Polling pays when the next event comes soon after the worker ran out of work: it saves a
//! sleep and a wake-up, which on a virtual machine costs tens of microseconds (a halted vCPU
//! must be woken by the host). It wastes a CPU when the next event is far off. So, like
//! QEMU's `poll-max-ns` / `poll-grow` / `poll-shrink`, a window is measured against the wait
//! that actually followed each idle moment: a wait longer than the window but within the
//! maximum means polling a little longer would have caught it (double the window); a wait
//! beyond the maximum means polling cannot help (close it, as QEMU does with its default
//! `poll-shrink`); a wait the window covered means it is right. An idle disk therefore stops
//! polling at its first wake-up. (Halving instead kept windows half open at a paced 1000 IOPS,
//! whose waits are all beyond the maximum but for the odd one: 3 % more CPU than no polling,
//! against none when closing; docs/benchmarks.md.)
//!
//! Unlike QEMU's single window, there is one per thing the worker waits for, because the two
//! waits differ by an order of magnitude and alternate: after completing requests it waits for
//! the guest's next kick (the guest's turnaround, tens of microseconds), after submitting it
//! waits for the disk (its latency, often longer than the maximum). One window fed both would
//! be doubled and halved in turn and never cover either.

use std::time::{Duration, Instant};

/// Where a window that grows from zero starts.
const START: Duration = Duration::from_micros(4);

/// What an idle worker is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// The guest's next requests: the worker last completed requests (or has nothing in
    /// flight).
    Kick,
    /// The disk: the worker last submitted requests.
    Completion,
}

#[derive(Debug)]
pub struct PollWindows {
    max: Duration,
    kick: Duration,
    completion: Duration,
    /// When the worker last ran out of work and went to sleep, and what it waited for.
    slept: Option<(Instant, Awaiting)>,
}

impl PollWindows {
    /// Windows of at most `max`, starting closed.
    pub fn new(max: Duration) -> Self {
        PollWindows {
            max,
            kick: Duration::ZERO,
            completion: Duration::ZERO,
            slept: None,
        }
    }

    /// How long to poll for `awaiting` after the last work before sleeping.
    pub fn current(&self, awaiting: Awaiting) -> Duration {
        match awaiting {
            Awaiting::Kick => self.kick,
            Awaiting::Completion => self.completion,
        }
    }

    /// The worker stops polling and sleeps; its work ran out at `idle_since`.
    pub fn sleep(&mut self, idle_since: Instant, awaiting: Awaiting) {
        self.slept = Some((idle_since, awaiting));
    }

    /// The worker woke up for an event: sizes the window it slept on by how long the event
    /// took to come.
    pub fn woke(&mut self) {
        if let Some((idle_since, awaiting)) = self.slept.take() {
            self.adjust(awaiting, idle_since.elapsed());
        }
    }

    fn adjust(&mut self, awaiting: Awaiting, waited: Duration) {
        let max = self.max;
        let window = match awaiting {
            Awaiting::Kick => &mut self.kick,
            Awaiting::Completion => &mut self.completion,
        };
        if waited <= *window {
            // Reachable only when the event raced with going to sleep: the window is right.
        } else if waited > max {
            *window = Duration::ZERO;
        } else {
            *window = (*window * 2).max(START).min(max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    fn steps(w: &mut PollWindows, awaiting: Awaiting, waited: Duration, n: usize) -> Vec<u128> {
        (0..n)
            .map(|_| {
                w.adjust(awaiting, waited);
                w.current(awaiting).as_micros()
            })
            .collect()
    }

    #[test]
    fn a_window_grows_while_events_come_soon_and_closes_when_they_stop() {
        let mut w = PollWindows::new(50 * US);
        assert_eq!(
            steps(&mut w, Awaiting::Kick, 40 * US, 6),
            [4, 8, 16, 32, 50, 50]
        );
        // Covered by the window: no change.
        assert_eq!(steps(&mut w, Awaiting::Kick, 30 * US, 1), [50]);
        // An idle disk: every wait is beyond the maximum.
        assert_eq!(steps(&mut w, Awaiting::Kick, 10_000 * US, 2), [0, 0]);
    }

    #[test]
    fn a_slow_disk_does_not_close_the_window_for_a_quick_guest() {
        let mut w = PollWindows::new(50 * US);
        for _ in 0..8 {
            w.adjust(Awaiting::Kick, 20 * US);
            w.adjust(Awaiting::Completion, 110 * US);
        }
        assert_eq!(w.current(Awaiting::Kick), 32 * US);
        assert_eq!(w.current(Awaiting::Completion), Duration::ZERO);
    }
}
