//! Flow control for AoE frames, after the Linux aoe driver: a congestion window of outstanding
//! frames (slow start, then additive increase; halved threshold and a window of one after a
//! loss) bounded by the target's buffer count, and a Jacobson/Karels round-trip estimate for
//! the retransmission timeout. Samples from retransmitted frames are ignored (Karn), since a
//! reply cannot be matched to one transmission.

use std::time::Duration;

/// Before the first sample (the Linux driver's initial estimate).
const INITIAL_RTO: Duration = Duration::from_millis(250);
const MIN_RTO: Duration = Duration::from_millis(5);
pub const MAX_RTO: Duration = Duration::from_secs(1);

/// Replies are gathered only while at least this many frames are outstanding: then more
/// replies are due, so no request waits for company that never comes.
const GATHER_MIN_OUTSTANDING: usize = 8;
const GATHER_MIN: Duration = Duration::from_micros(10);
const GATHER_MAX: Duration = Duration::from_micros(250);

#[derive(Debug, Clone)]
pub struct FlowControl {
    cwnd: f64,
    ssthresh: f64,
    max: f64,
    /// Smoothed RTT and its mean deviation, in seconds.
    srtt: Option<f64>,
    rttvar: f64,
}

impl FlowControl {
    /// A window that may grow to `max` outstanding frames (the target's buffer count).
    pub fn new(max: u16) -> Self {
        let max = f64::from(max.max(1));
        FlowControl {
            cwnd: 1.0,
            ssthresh: max,
            max,
            srtt: None,
            rttvar: 0.0,
        }
    }

    /// Frames that may be outstanding now.
    pub fn window(&self) -> usize {
        self.cwnd.floor().max(1.0) as usize
    }

    /// A frame was answered; `rtt` is None if it had been retransmitted.
    pub fn on_reply(&mut self, rtt: Option<Duration>) {
        if self.cwnd < self.ssthresh {
            self.cwnd += 1.0;
        } else {
            self.cwnd += 1.0 / self.cwnd;
        }
        self.cwnd = self.cwnd.min(self.max);
        if let Some(rtt) = rtt {
            let r = rtt.as_secs_f64();
            match self.srtt {
                None => {
                    self.srtt = Some(r);
                    self.rttvar = r / 2.0;
                }
                Some(srtt) => {
                    self.rttvar = 0.75 * self.rttvar + 0.25 * (srtt - r).abs();
                    self.srtt = Some(0.875 * srtt + 0.125 * r);
                }
            }
        }
    }

    /// A frame timed out: multiplicative decrease.
    pub fn on_timeout(&mut self) {
        self.ssthresh = (self.cwnd / 2.0).max(1.0);
        self.cwnd = 1.0;
    }

    /// How long to let replies gather before handling them, with `outstanding` frames in
    /// flight and `waiting` more held back by the window, or None to handle each as it
    /// arrives.
    ///
    /// Every wake-up costs the initiator more than a reply does (on these VMs a sleep and a
    /// wake are 15–30 µs of CPU time), and a busy target answers frames one after another, so
    /// waking per reply makes the initiator as expensive as the target. Like a NIC's interrupt
    /// moderation, the engine instead waits half a round trip — about half the outstanding
    /// frames come back meanwhile — and takes them in one go. The target still has the other
    /// half queued, so it never idles (a whole round trip did starve it: throughput halved).
    ///
    /// Only while the window is the bottleneck, though (frames are waiting for room in it):
    /// then a later completion costs nothing, the guest has already given us more work than
    /// the target can take. Otherwise the guest's queue depth is the limit and a late
    /// completion is a late next request: at 4 KiB QD8, gathering cost a third of the IOPS.
    pub fn gather_delay(&self, outstanding: usize, waiting: usize) -> Option<Duration> {
        if outstanding < GATHER_MIN_OUTSTANDING || waiting == 0 {
            return None;
        }
        let srtt = Duration::from_secs_f64(self.srtt?);
        Some((srtt / 2).clamp(GATHER_MIN, GATHER_MAX))
    }

    /// Retransmission timeout for a frame sent `retries` times before.
    pub fn rto(&self, retries: u32) -> Duration {
        let base = match self.srtt {
            None => INITIAL_RTO,
            Some(srtt) => Duration::from_secs_f64(srtt + 4.0 * self.rttvar).clamp(MIN_RTO, MAX_RTO),
        };
        base.saturating_mul(1 << retries.min(16)).min(MAX_RTO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_then_linear_growth_capped_by_buffer_count() {
        let mut f = FlowControl::new(16);
        assert_eq!(f.window(), 1);
        for _ in 0..3 {
            f.on_reply(None);
        }
        assert_eq!(f.window(), 4);
        for _ in 0..100 {
            f.on_reply(None);
        }
        assert_eq!(f.window(), 16, "never more than the target's buffers");
    }

    #[test]
    fn timeout_halves_the_threshold_and_restarts_at_one() {
        let mut f = FlowControl::new(64);
        for _ in 0..15 {
            f.on_reply(None);
        }
        assert_eq!(f.window(), 16);
        f.on_timeout();
        assert_eq!(f.window(), 1);
        for _ in 0..7 {
            f.on_reply(None);
        }
        assert_eq!(f.window(), 8, "slow start up to the halved threshold");
        f.on_reply(None);
        assert_eq!(f.window(), 8, "then about one frame per window of replies");
    }

    #[test]
    fn rto_follows_the_rtt_estimate_and_backs_off() {
        let mut f = FlowControl::new(8);
        assert_eq!(f.rto(0), INITIAL_RTO);
        for _ in 0..50 {
            f.on_reply(Some(Duration::from_millis(20)));
        }
        let rto = f.rto(0);
        assert!(
            rto >= Duration::from_millis(20) && rto < Duration::from_millis(30),
            "{rto:?}"
        );
        assert_eq!(f.rto(1), rto * 2);
        assert_eq!(f.rto(10), MAX_RTO);
        let mut fast = FlowControl::new(8);
        fast.on_reply(Some(Duration::from_micros(30)));
        assert_eq!(fast.rto(0), MIN_RTO);
    }

    #[test]
    fn replies_gather_only_while_many_frames_are_out() {
        let mut f = FlowControl::new(16);
        assert_eq!(f.gather_delay(16, 16), None, "no estimate yet");
        f.on_reply(Some(Duration::from_micros(200)));
        let few = GATHER_MIN_OUTSTANDING - 1;
        assert_eq!(f.gather_delay(few, 100), None, "too few frames out");
        assert_eq!(
            f.gather_delay(16, 0),
            None,
            "the guest's queue depth is the limit"
        );
        assert_eq!(f.gather_delay(16, 1), Some(Duration::from_micros(100)));
        let mut slow = FlowControl::new(16);
        slow.on_reply(Some(Duration::from_millis(20)));
        assert_eq!(slow.gather_delay(16, 16), Some(GATHER_MAX));
        let mut quick = FlowControl::new(16);
        quick.on_reply(Some(Duration::from_micros(15)));
        assert_eq!(quick.gather_delay(16, 16), Some(GATHER_MIN));
    }
}
