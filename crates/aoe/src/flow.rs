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
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "cwnd stays between 1 and max, and a float-to-integer `as` saturates"
    )]
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
}
