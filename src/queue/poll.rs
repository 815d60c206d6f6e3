//! Busy polling: how a queue thread polls the queues it serves, and how long before it sleeps —
//! windows that adapt to the load.
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
//!
//! A thread that serves several queues ([`poll_together`]) polls them in turn, in one loop
//! with one pair of windows: its CPU goes round the rings instead of switching between
//! threads that each spin on one (two queues' pollers on one CPU took turns only when one
//! yielded). Each queue's worker is locked for its part of a round only, so that the control
//! thread can stop one ring while the thread goes on with the others.

use std::ops::DerefMut;
use std::time::{Duration, Instant};

use super::{Avail, QueueWorker};
use crate::Vring;

/// How often an idle polling thread reads the clock to see whether its window has passed, and
/// yields its CPU: an idle round is well under a microsecond, so the window overshoots by less
/// than that, and another thread on the same CPU waits no longer than that for its turn.
const IDLE_ROUNDS_PER_CHECK: u32 = 8;

/// Polls `queues` queues in turn until all of them have been idle for the polling window, or
/// one is held (over its I/O limits, or the disk is paused: only the event loop hears its
/// timer). `worker(k)` locks the k-th queue's worker for one round, with its vring; `None`
/// for a queue that is not started (it is not served, and has no kicks to re-arm).
pub fn poll_together<'a, W>(
    windows: &mut PollWindows,
    queues: usize,
    mut worker: impl FnMut(usize) -> Option<(W, &'a Vring)>,
) where
    W: DerefMut<Target = QueueWorker>,
{
    // When the queues ran out of work and the idle rounds since (`None` while there is work).
    // The clock is read once as work runs out and then every few idle rounds: reading it
    // every round was an eighth of a busy poller's time (perf, null disk, QD32).
    let mut idle: Option<(Instant, u32)> = None;
    let mut awaiting = Awaiting::Kick;
    loop {
        let (mut took, mut completed, mut in_flight) = (false, false, false);
        let (mut held, mut usable) = (false, false);
        for k in 0..queues {
            let Some((mut worker, vring)) = worker(k) else {
                continue;
            };
            let round = worker.poll_round(vring, queues > 1);
            match round.avail {
                Avail::Took => took = true,
                Avail::Held => held = true,
                Avail::Unusable => continue,
                Avail::Empty => {}
            }
            usable = true;
            completed |= round.completed;
            in_flight |= round.in_flight;
        }
        if held || !usable {
            // Going to sleep; a held queue's kicks stay off (the engine reports completions,
            // the timer when to go on), the others' are re-armed.
            if !stop_polling(queues, &mut worker, true) {
                return;
            }
            idle = None;
            continue;
        }
        // The last work decides what comes next: completions hand the guest its turn,
        // submissions the disk.
        if completed || !in_flight {
            awaiting = Awaiting::Kick;
        } else if took {
            awaiting = Awaiting::Completion;
        }
        if completed || took {
            idle = None;
            continue;
        }
        let (since, rounds) = idle.get_or_insert_with(|| (Instant::now(), 0));
        *rounds = rounds.wrapping_add(1);
        let (since, rounds) = (*since, *rounds);
        let window = windows.current(awaiting);
        if !window.is_zero() {
            if rounds % IDLE_ROUNDS_PER_CHECK != 0 {
                std::hint::spin_loop();
                continue;
            }
            if since.elapsed() < window {
                // Let whatever else wants this CPU run (another queue thread, the VMM, the
                // control thread); no lock is held here.
                std::thread::yield_now();
                continue;
            }
        }
        if !stop_polling(queues, &mut worker, false) {
            windows.sleep(since, awaiting);
            return;
        }
        // A request slipped in as kicks were re-armed: keep polling.
        idle = None;
    }
}

/// Ends polling on every started queue (kicks stay off on held ones if `held_stay_off`);
/// returns whether a request slipped in meanwhile, so that polling must go on.
fn stop_polling<'a, W>(
    queues: usize,
    worker: &mut impl FnMut(usize) -> Option<(W, &'a Vring)>,
    held_stay_off: bool,
) -> bool
where
    W: DerefMut<Target = QueueWorker>,
{
    let mut slipped_in = false;
    for k in 0..queues {
        if let Some((mut worker, vring)) = worker(k) {
            let stay_off = held_stay_off && worker.holding();
            slipped_in |= worker.stop_polling(vring, stay_off);
        }
    }
    slipped_in
}

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
