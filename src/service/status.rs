//! The daemon's status as data: what the control socket answers and the metrics endpoint
//! exports, both from the same snapshots.
//!
//! [`Served`] is what a running daemon serves, from which [`Info`] and [`Stats`] snapshots are
//! taken; [`Command`] and [`Reply`] are the control protocol's messages. All are serde types,
//! so the protocol is what these types say, on both ends: the daemon and `vblkd ctl`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::blk::request::Rejection;
use crate::disk::{Disk, Resized};
use crate::frontend::DeviceState;
use crate::queue::controls::{Controls, ErrorPolicy, PauseCause};
use crate::queue::throttle::ThrottleConfig;
use crate::queue::{Counter, QueueStats};
use crate::util::histogram::Histogram;

/// The control protocol's version, in the greeting.
pub const PROTOCOL: u64 = 1;

/// What a running daemon serves: the disk, how, and the queues' counters.
pub struct Served {
    pub disk: Arc<dyn Disk>,
    /// What `--disk` named.
    pub disk_name: String,
    pub num_queues: u16,
    pub queue_size: u16,
    /// The queues' counters, the write cache, the way to the frontend.
    pub device: Arc<DeviceState>,
    /// Whether a frontend is connected now.
    pub connected: AtomicBool,
    /// Frontends that connected so far.
    pub connections: AtomicU64,
}

impl Served {
    /// What a daemon serving `disk` (named `disk_name`) with `num_queues` queues of
    /// `queue_size` entries, under `controls`, reports.
    pub fn new(
        disk: Arc<dyn Disk>,
        disk_name: String,
        num_queues: u16,
        queue_size: u16,
        controls: Arc<Controls>,
    ) -> Self {
        let write_cache = disk.info().write_cache;
        Served {
            disk,
            disk_name,
            num_queues,
            queue_size,
            device: Arc::new(DeviceState::new(num_queues, write_cache, controls)),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
        }
    }

    /// A frontend connected: its device starts as a reset one, with the default write cache.
    pub fn frontend_connected(&self) {
        self.device
            .write_cache
            .store(self.disk.info().write_cache, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    /// The frontend hung up.
    pub fn frontend_disconnected(&self) {
        self.connected.store(false, Ordering::Relaxed);
        self.device.channel.disconnected();
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("disk", &self.disk_name)
            .finish_non_exhaustive()
    }
}

/// The greeting line a control connection starts with.
#[derive(Debug, Serialize, Deserialize)]
pub struct Greeting {
    pub vblkd: Version,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    pub protocol: u64,
}

impl Greeting {
    pub fn ours() -> Self {
        Greeting {
            vblkd: Version {
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL,
            },
        }
    }
}

/// A control request: `{"execute": "stats"}`, `{"execute": "resize", "arguments": {"size":
/// N}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "execute", content = "arguments", rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Command {
    /// What is served.
    Info,
    /// What the queues have done.
    Stats,
    /// Grow the disk to `size` bytes (or take its new size from the backend) and tell the
    /// frontend.
    Resize {
        #[serde(default)]
        size: Option<u64>,
    },
    /// Replace the I/O limits with these (QEMU's names: `{"iops-total": 2000}`; none for no
    /// limits).
    SetLimits(ThrottleConfig),
    /// Do the requests held after a failure again, and take new ones: the disk is no longer
    /// paused.
    Resume,
}

/// What answers the control socket's commands: the vhost-user daemon ([`Served`]) or the AoE
/// target (`crate::export::Exporting`). Each says what it does not do.
pub trait Controlled: Send + Sync {
    fn execute(&self, command: &Command) -> Result<serde_json::Value, Failure>;
}

/// A reply as JSON. Replies are plain data with string keys, which always convert.
pub fn to_value(reply: impl Serialize) -> serde_json::Value {
    serde_json::to_value(reply).unwrap_or_else(|e| {
        log::error!("cannot encode a control reply: {e}");
        serde_json::Value::Null
    })
}

impl Controlled for Served {
    fn execute(&self, command: &Command) -> Result<serde_json::Value, Failure> {
        match command {
            Command::Info => Ok(to_value(self.info())),
            Command::Stats => Ok(to_value(self.stats())),
            Command::Resize { size } => self
                .resize(*size)
                .map(to_value)
                .map_err(|desc| Failure::new(FailureClass::ResizeFailed, desc)),
            Command::SetLimits(limits) => Ok(to_value(self.set_limits(limits.clone()))),
            Command::Resume => self
                .resume()
                .map(to_value)
                .map_err(|desc| Failure::new(FailureClass::NotPaused, desc)),
        }
    }
}

/// A reply: `{"return": ...}` or `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply<T> {
    Return(T),
    Error(Failure),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{class:?}: {desc}")]
pub struct Failure {
    pub class: FailureClass,
    pub desc: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureClass {
    /// The line is not JSON.
    ParseError,
    /// JSON, but not a request this protocol has.
    InvalidRequest,
    CommandNotFound,
    ResizeFailed,
    /// `resume` on a disk that is not paused.
    NotPaused,
    /// A command that does not apply to what is running (I/O limits on an AoE target).
    Unsupported,
    /// The line is longer than the protocol allows; the connection is closed.
    LineTooLong,
    /// Too many control connections; this one is closed.
    TooManyClients,
}

impl Failure {
    pub fn new(class: FailureClass, desc: impl Into<String>) -> Self {
        Failure {
            class,
            desc: desc.into(),
        }
    }
}

/// What `info` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    pub disk: String,
    pub capacity: u64,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    pub read_only: bool,
    pub serial: String,
    pub discard: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    /// The guest's write cache now (or when its frontend left).
    pub write_cache: bool,
    pub frontend: Frontend,
    /// What the backend found out about the disk (an AoE target's frame size).
    pub details: BTreeMap<String, u64>,
    /// The image's locks (`held`; `released` before an incoming migration's device starts
    /// and after an outgoing one's switch-over; `off`), for files and block devices.
    pub image_lock: Option<String>,
    /// The I/O limits (QEMU's names; empty: none).
    pub limits: ThrottleConfig,
    /// What failed requests do.
    pub error_policy: ErrorPolicy,
    /// Why and since when the disk is paused, if it is.
    pub paused: Option<PauseCause>,
}

/// The frontends served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    pub connected: bool,
    /// How many connected so far.
    pub connections: u64,
}

/// What `resume` answers: why the disk was paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeReply {
    pub was_paused: PauseCause,
}

/// What `resize` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeReply {
    #[serde(flatten)]
    pub resized: Resized,
    /// Whether a connected frontend was told (and so the guest).
    pub frontend_told: bool,
}

/// A latency summary, in µs (to 0.1 µs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    /// Of a histogram in ns.
    fn of(h: &Histogram) -> Self {
        let us = |ns: f64| (ns / 100.0).round() / 10.0;
        let at = |p| us(h.percentile(p) as f64);
        Latency {
            count: h.count(),
            mean: us(h.mean()),
            p50: at(50.0),
            p99: at(99.0),
            p99_9: at(99.9),
            max: us(h.max() as f64),
        }
    }
}

/// One queue's figures, or all queues' added up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    #[serde(flatten)]
    pub counters: BTreeMap<Counter, u64>,
    /// Requests between the avail ring and the used ring now.
    pub in_flight: u64,
    /// Requests the parser refused, by why.
    pub rejected: BTreeMap<Rejection, u64>,
    pub latency_us: Latency,
    /// The engines' own counters (AoE frames, retransmissions, ...), if they keep any.
    pub engine: BTreeMap<String, u64>,
    /// The latencies themselves, in ns, for the metrics' buckets.
    #[serde(skip)]
    pub histogram: Histogram,
}

impl Figures {
    /// The value of `counter`.
    pub fn count(&self, counter: Counter) -> u64 {
        self.counters.get(&counter).copied().unwrap_or(0)
    }

    /// The value of the engine's counter `name` (0 if it keeps none of that name).
    pub fn engine_count(&self, name: &str) -> u64 {
        self.engine.get(name).copied().unwrap_or(0)
    }

    fn of(queue: &QueueStats, engine: Vec<(&'static str, u64)>) -> Self {
        let histogram = queue.latencies();
        Figures {
            counters: queue.counters().collect(),
            in_flight: queue.in_flight(),
            rejected: queue.rejections().collect(),
            latency_us: Latency::of(&histogram),
            engine: engine.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            histogram,
        }
    }

    /// Adds `other` to these.
    fn add(&mut self, other: &Figures) {
        let sum = |into: &mut u64, n: u64| *into = into.saturating_add(n);
        for (&counter, &n) in &other.counters {
            sum(self.counters.entry(counter).or_default(), n);
        }
        for (&why, &n) in &other.rejected {
            sum(self.rejected.entry(why).or_default(), n);
        }
        for (name, &n) in &other.engine {
            sum(self.engine.entry(name.clone()).or_default(), n);
        }
        sum(&mut self.in_flight, other.in_flight);
        self.histogram.merge(&other.histogram);
        self.latency_us = Latency::of(&self.histogram);
    }
}

/// What `stats` answers: every queue's figures and their sum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub total: Figures,
    pub queues: Vec<Figures>,
    /// Pages of guest memory that vanished while in use (the frontend shrank its memory
    /// file) and were replaced with zeroes, since the daemon started.
    pub guest_pages_lost: u64,
    /// The I/O limits now (what `throttled` and `throttled_microseconds` were held back by).
    pub limits: ThrottleConfig,
    /// Why and since when the disk is paused, if it is.
    pub paused: Option<PauseCause>,
}

impl Served {
    pub fn info(&self) -> Info {
        let d = self.disk.info();
        Info {
            version: env!("CARGO_PKG_VERSION").into(),
            disk: self.disk_name.clone(),
            capacity: d.capacity.bytes(),
            logical_block_size: d.logical_block_size,
            physical_block_size: d.physical_block_size,
            read_only: d.read_only,
            serial: String::from_utf8_lossy(&d.serial).into_owned(),
            discard: d.discard,
            num_queues: self.num_queues,
            queue_size: self.queue_size,
            write_cache: self.device.write_cache.load(Ordering::Relaxed),
            frontend: Frontend {
                connected: self.connected.load(Ordering::Relaxed),
                connections: self.connections.load(Ordering::Relaxed),
            },
            details: self
                .disk
                .details()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            image_lock: self.disk.image_lock().map(str::to_owned),
            limits: self.device.controls.throttle.config(),
            error_policy: self.device.controls.policy,
            paused: self.device.controls.cause(),
        }
    }

    pub fn stats(&self) -> Stats {
        let queues: Vec<Figures> = (0..self.num_queues)
            .zip(&self.device.queues)
            .map(|(q, stats)| Figures::of(stats, self.disk.engine_counters(q)))
            .collect();
        let mut total = Figures::default();
        for q in &queues {
            total.add(q);
        }
        Stats {
            total,
            queues,
            guest_pages_lost: crate::util::sigbus::pages_replaced(),
            limits: self.device.controls.throttle.config(),
            paused: self.device.controls.cause(),
        }
    }

    /// Replaces the I/O limits.
    pub fn set_limits(&self, limits: ThrottleConfig) -> ThrottleConfig {
        self.device.controls.set_limits(limits);
        self.device.controls.throttle.config()
    }

    /// Resumes the paused disk.
    pub fn resume(&self) -> Result<ResumeReply, String> {
        self.device
            .controls
            .resume()
            .map(|was_paused| ResumeReply { was_paused })
            .ok_or_else(|| "the disk is not paused".to_owned())
    }

    /// Resizes the disk (see [`crate::disk::resize`]) and tells the frontend.
    pub fn resize(&self, size: Option<u64>) -> Result<ResizeReply, String> {
        let resized = crate::disk::resize(&*self.disk, size).map_err(|e| e.to_string())?;
        log::info!(
            "disk resized from {} to {} bytes",
            resized.previous,
            resized.capacity
        );
        let frontend_told = self
            .device
            .channel
            .config_changed()
            .map_err(|e| format!("the size changed, but telling the frontend failed: {e}"))?;
        Ok(ResizeReply {
            resized,
            frontend_told,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_as_the_protocol_writes_them() {
        let parse = |s: &str| serde_json::from_str::<Command>(s).map_err(|e| e.to_string());
        assert_eq!(parse(r#"{"execute":"stats"}"#), Ok(Command::Stats));
        assert_eq!(
            parse(r#"{"execute":"resize","arguments":{"size":4096}}"#),
            Ok(Command::Resize { size: Some(4096) })
        );
        assert_eq!(
            parse(r#"{"execute":"resize","arguments":{}}"#),
            Ok(Command::Resize { size: None })
        );
        assert!(parse(r#"{"execute":"resize","arguments":{"size":"big"}}"#).is_err());
        assert!(parse(r#"{"execute":"format"}"#).is_err());
        let limits = parse(r#"{"execute":"set-limits","arguments":{"iops-total":5}}"#).unwrap();
        assert_eq!(limits, Command::SetLimits("iops-total=5".parse().unwrap()));
        assert_eq!(
            parse(r#"{"execute":"set-limits","arguments":{}}"#),
            Ok(Command::SetLimits(ThrottleConfig::default()))
        );
        assert!(parse(r#"{"execute":"set-limits","arguments":{"iops":5}}"#).is_err());
        assert_eq!(parse(r#"{"execute":"resume"}"#), Ok(Command::Resume));
        let line = serde_json::to_string(&Command::Resize { size: Some(1) }).unwrap();
        assert_eq!(line, r#"{"execute":"resize","arguments":{"size":1}}"#);
    }

    #[test]
    fn figures_are_flat_counters_beside_the_rest() {
        let queue = QueueStats::default();
        queue.add(Counter::Reads, 3);
        let figures = Figures::of(&queue, vec![("aoe_frames", 7)]);
        let json = serde_json::to_value(&figures).unwrap();
        assert_eq!(json["reads"], 3);
        assert_eq!(json["writes"], 0);
        assert_eq!(json["rejected"]["past_end"], 0);
        assert_eq!(json["engine"]["aoe_frames"], 7);
        let back: Figures = serde_json::from_value(json).unwrap();
        assert_eq!(back.counters[&Counter::Reads], 3);
    }
}
