//! Rate-limited logging for messages a guest or a frontend can trigger at will.
//!
//! A guest that publishes garbage in a loop must not be able to fill the host's disk with our
//! log: every log line whose cause is outside vblkd's control goes through [`limited!`], which
//! lets each call site print a burst of lines per window and then stays quiet, saying how many
//! lines it held back when the next window opens.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may print per window.
const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);

/// The state of one call site.
pub struct LogLimiter {
    window: Mutex<Window>,
}

struct Window {
    start: Option<Instant>,
    printed: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new() -> Self {
        LogLimiter {
            window: Mutex::new(Window {
                start: None,
                printed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be printed now: `Some(n)` if so, where `n` lines were held back
    /// since the last one printed; `None` if this one must be held back too.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        match w.start {
            Some(start) if now.duration_since(start) < WINDOW => {}
            _ => {
                w.start = Some(now);
                w.printed = 0;
            }
        }
        if w.printed < BURST {
            w.printed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::log!` with a per-call-site rate limit (see the module documentation).
macro_rules! limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::util::ratelimit::LogLimiter = $crate::util::ratelimit::LogLimiter::new();
        if log::log_enabled!($level) {
            if let Some(held_back) = LIMITER.admit() {
                if held_back > 0 {
                    log::log!($level, "({held_back} similar messages were not logged)");
                }
                log::log!($level, $($arg)+);
            }
        }
    }};
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_a_count() {
        let limiter = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limiter.admit_at(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(limiter.admit_at(t0 + Duration::from_secs(1)), None);
        }
        // The next window reports what was held back, once.
        assert_eq!(limiter.admit_at(t0 + WINDOW), Some(5));
        assert_eq!(limiter.admit_at(t0 + WINDOW), Some(0));
    }
}
