//! What the operator sets for the whole disk, across its queues and frontend connections: the
//! I/O limits ([`throttle`](super::throttle)) and what a failed request does (`--werror`,
//! `--rerror`), and the pause that a failure under a `stop` policy puts the disk in.
//!
//! QEMU's error actions: `report` completes the request with an error; `stop` pauses the VM
//! on any error; `enospc` (QEMU's default for writes) pauses only when the disk is full and
//! reports every other error. vblkd cannot stop the VM; it does what matters for the guest
//! instead: the failed request is held, neither completed nor lost; every queue stops taking
//! new requests while what is in flight finishes (and requests that fail meanwhile are held
//! too); the operator fixes the cause and resumes, and the held requests are done again. The
//! guest sees a slow disk. Held requests stay in the in-flight tracking buffer, so a daemon
//! killed while paused resubmits them when it starts again.
//!
//! Each queue has a [`Timer`] in its thread's epoll set: it sleeps on it while over a limit,
//! and other threads fire it to wake the queue when the limits change or the disk resumes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::throttle::{Throttle, ThrottleConfig};
use crate::util::timer::Timer;

/// What a failed request does, as QEMU's `werror=`/`rerror=`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::VariantNames,
    strum::Display,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Complete it with an I/O error.
    Report,
    /// Hold it and pause the disk.
    Stop,
    /// Hold it and pause the disk if the disk is full (ENOSPC); report anything else.
    Enospc,
}

/// The error actions for reads (`--rerror`) and for everything else (`--werror`: writes,
/// write-zeroes, discards and flushes, as QEMU's virtio-blk does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPolicy {
    pub read: OnError,
    pub write: OnError,
}

impl Default for ErrorPolicy {
    /// QEMU's defaults: `rerror=report`, `werror=enospc`.
    fn default() -> Self {
        ErrorPolicy {
            read: OnError::Report,
            write: OnError::Enospc,
        }
    }
}

impl ErrorPolicy {
    /// Whether a request that failed with `errno` is held rather than completed.
    pub fn holds(&self, read: bool, errno: i32) -> bool {
        match if read { self.read } else { self.write } {
            OnError::Report => false,
            OnError::Stop => true,
            OnError::Enospc => errno == libc::ENOSPC,
        }
    }
}

/// Why the disk is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseCause {
    /// The queue whose request failed first.
    pub queue: u16,
    /// `read`, `write`, `write-zeroes`, `discard` or `flush`.
    pub operation: String,
    /// Where on the disk, for operations that have a place.
    pub offset: Option<u64>,
    pub errno: i32,
    /// The error, in words.
    pub error: String,
    /// Since when, in seconds since the Unix epoch.
    pub since: u64,
}

impl std::fmt::Display for PauseCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a {}", self.operation)?;
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset}")?;
        }
        write!(f, " on queue {} failed: {}", self.queue, self.error)
    }
}

/// A hook the service layer installs to hear of pauses and resumes (systemd's `STATUS=`).
type PauseHook = Box<dyn Fn(Option<&PauseCause>) + Send + Sync>;

/// The operator's settings for the disk and the pause state: shared by every queue and the
/// control socket, for the life of the daemon.
pub struct Controls {
    pub throttle: Throttle,
    pub policy: ErrorPolicy,
    paused: AtomicBool,
    cause: Mutex<Option<PauseCause>>,
    /// One per queue.
    timers: Vec<Timer>,
    hook: OnceLock<PauseHook>,
}

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controls")
            .field("limits", &self.throttle.config())
            .field("policy", &self.policy)
            .field("paused", &self.cause())
            .finish_non_exhaustive()
    }
}

impl Controls {
    /// The controls of a disk with `num_queues` queues.
    pub fn new(
        num_queues: u16,
        limits: ThrottleConfig,
        policy: ErrorPolicy,
    ) -> std::io::Result<Self> {
        let throttle = Throttle::default();
        throttle.set(limits);
        Ok(Controls {
            throttle,
            policy,
            paused: AtomicBool::new(false),
            cause: Mutex::new(None),
            timers: (0..num_queues)
                .map(|_| Timer::new())
                .collect::<std::io::Result<_>>()?,
            hook: OnceLock::new(),
        })
    }

    /// Queue `queue`'s timer.
    pub fn timer(&self, queue: u16) -> &Timer {
        &self.timers[usize::from(queue)]
    }

    /// Sets what hears of pauses and resumes (once).
    pub fn on_pause(&self, hook: PauseHook) {
        let _ = self.hook.set(hook);
    }

    /// New limits, in effect at once on every queue.
    pub fn set_limits(&self, limits: ThrottleConfig) {
        log::info!(
            "I/O limits {}",
            if limits.is_empty() {
                "removed".to_owned()
            } else {
                format!("set to {limits}")
            }
        );
        self.throttle.set(limits);
        self.wake_all();
    }

    /// Whether the disk is paused: queues take no new requests.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn cause(&self) -> Option<PauseCause> {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A request failed under a `stop` policy: pause the disk, unless it is paused already
    /// (the first cause is the one reported).
    pub fn pause(&self, queue: u16, operation: &str, offset: Option<u64>, error: &std::io::Error) {
        let mut cause = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        if cause.is_some() {
            return;
        }
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let new = PauseCause {
            queue,
            operation: operation.to_owned(),
            offset,
            errno: error.raw_os_error().unwrap_or(libc::EIO),
            error: error.to_string(),
            since,
        };
        log::error!(
            "disk paused: {new}; the request is held, and every queue waits. Fix the cause \
             (free space, bring the disk back), then run `vblkd ctl resume`"
        );
        if let Some(hook) = self.hook.get() {
            hook(Some(&new));
        }
        *cause = Some(new);
        self.paused.store(true, Ordering::Release);
    }

    /// Resumes a paused disk: the held requests are done again, and the queues take new ones.
    /// Returns why it was paused, or `None` if it was not.
    pub fn resume(&self) -> Option<PauseCause> {
        let cause = self
            .cause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        self.paused.store(false, Ordering::Release);
        log::info!(
            "disk resumed (it was paused since {}: {cause})",
            cause.since
        );
        if let Some(hook) = self.hook.get() {
            hook(None);
        }
        self.wake_all();
        Some(cause)
    }

    fn wake_all(&self) {
        for timer in &self.timers {
            if let Err(e) = timer.fire_in(Duration::ZERO) {
                log::error!("cannot wake a queue: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policies_hold_what_qemu_would_stop_for() {
        let default = ErrorPolicy::default();
        assert!(default.holds(false, libc::ENOSPC));
        assert!(!default.holds(false, libc::EIO));
        assert!(!default.holds(true, libc::ENOSPC));
        let stop = ErrorPolicy {
            read: OnError::Stop,
            write: OnError::Report,
        };
        assert!(stop.holds(true, libc::EIO));
        assert!(!stop.holds(false, libc::ENOSPC));
    }

    #[test]
    fn a_pause_keeps_its_first_cause_until_resumed() {
        let controls = Controls::new(2, ThrottleConfig::default(), ErrorPolicy::default()).unwrap();
        assert!(!controls.paused());
        assert_eq!(controls.resume(), None);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        controls.pause(1, "write", Some(4096), &full);
        controls.pause(
            0,
            "flush",
            None,
            &std::io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(controls.paused());
        let cause = controls.cause().unwrap();
        assert_eq!(
            (cause.queue, cause.errno, cause.offset),
            (1, libc::ENOSPC, Some(4096))
        );
        assert!(cause
            .to_string()
            .starts_with("a write at offset 4096 on queue 1 failed"));
        assert_eq!(controls.resume().unwrap().operation, "write");
        assert!(!controls.paused());
        assert_eq!(controls.cause(), None);
    }
}
