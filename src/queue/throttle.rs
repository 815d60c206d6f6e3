//! I/O limits with QEMU's names and meaning (`-drive throttling.*`, `block_set_io_throttle`),
//! shared by every queue of the disk.
//!
//! A limit is a rate (`iops-total=2000`, `bps-write=50M`) with an optional burst: `-max` is
//! the rate allowed for up to `-max-length` seconds. As in QEMU, each limit is a leaky bucket
//! that admits a request while its level is below the bucket's size — `max × max-length`
//! with a burst, a tenth of a second's worth without — and drains at the average rate; a
//! burst of more than a second also has a second bucket, a tenth of a second of `max`, that
//! drains at `max` and keeps the burst itself at that rate. Reads count against `*-total`
//! and `*-read`, writes and write-zeroes against `*-total` and `*-write`; with `iops-size`,
//! a request larger than it counts as that many operations. Flushes, discards and GET_ID are
//! not limited (QEMU does not limit them either).
//!
//! The queues share the buckets without a lock: each bucket is its "theoretical arrival
//! time" (the generic cell rate algorithm) in one atomic, which a request moves forward by
//! its cost. A check of every bucket a request touches and then a charge of each is not one
//! atomic step, so two queues can both pass a bucket at once and overshoot it by one request;
//! the debt is paid by the next ones, so the rate over time is still the limit. Without
//! limits, a queue pays one atomic load per request.
//!
//! A request over a limit is not refused: the queue holds it, stops taking requests from
//! its ring, and sleeps on its timer until the bucket has room (see [`crate::queue`]). New
//! limits replace the old ones whole and start with empty buckets, as QEMU's do.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use diskio::{Direction, IoOp};
use serde::{Deserialize, Serialize};

/// QEMU's largest accepted limit (`THROTTLE_VALUE_MAX`).
const VALUE_MAX: u64 = 1_000_000_000_000_000;
/// QEMU's longest burst, in seconds.
const MAX_LENGTH_MAX: u64 = 86_400;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::EnumIter)]
enum Resource {
    Iops,
    Bps,
}

/// Which requests it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::EnumIter)]
enum Scope {
    Total,
    Read,
    Write,
}

/// One setting of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    /// The average rate: `iops-total`.
    Avg,
    /// The burst rate: `iops-total-max`.
    Max,
    /// How long a burst may last, in seconds: `iops-total-max-length`.
    MaxLength,
}

/// One of QEMU's option names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Limit(Resource, Scope, Field),
    /// `iops-size`: requests larger than this count as several operations.
    IopsSize,
}

impl Key {
    fn name(self) -> String {
        let Key::Limit(resource, scope, field) = self else {
            return "iops-size".into();
        };
        let resource = match resource {
            Resource::Iops => "iops",
            Resource::Bps => "bps",
        };
        let scope = match scope {
            Scope::Total => "total",
            Scope::Read => "read",
            Scope::Write => "write",
        };
        let field = match field {
            Field::Avg => "",
            Field::Max => "-max",
            Field::MaxLength => "-max-length",
        };
        format!("{resource}-{scope}{field}")
    }

    fn all() -> impl Iterator<Item = Key> {
        use strum::IntoEnumIterator;
        Resource::iter()
            .flat_map(|r| Scope::iter().map(move |s| (r, s)))
            .flat_map(|(r, s)| {
                [Field::Avg, Field::Max, Field::MaxLength].map(|f| Key::Limit(r, s, f))
            })
            .chain([Key::IopsSize])
    }

    fn parse(name: &str) -> Result<Key, ThrottleError> {
        Key::all()
            .find(|k| k.name() == name)
            .ok_or_else(|| ThrottleError::UnknownKey(name.to_owned()))
    }
}

/// Why limits are not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    #[error(
        "unknown limit '{0}'; limits are iops-total, iops-read, iops-write, bps-total, \
         bps-read, bps-write (each also with -max and -max-length) and iops-size"
    )]
    UnknownKey(String),
    #[error("'{0}' is not KEY=VALUE (e.g. iops-total=2000,bps-total=50M)")]
    NotKeyValue(String),
    #[error("{key}: '{value}' is not a number{hint}")]
    NotANumber {
        key: String,
        value: String,
        hint: &'static str,
    },
    #[error("{0} is given twice")]
    Repeated(String),
    #[error("{key}={value} is out of range: limits are from 1 to {VALUE_MAX}")]
    OutOfRange { key: String, value: u64 },
    #[error("{total} and {part} cannot be used at the same time (as in QEMU)")]
    TotalAndPart { total: String, part: String },
    #[error("{max} needs {avg} as well: a burst is above an average rate")]
    MaxWithoutAvg { max: String, avg: String },
    #[error("{max} ({max_value}) must not be below {avg} ({avg_value})")]
    MaxBelowAvg {
        max: String,
        max_value: u64,
        avg: String,
        avg_value: u64,
    },
    #[error("{length} must be from 1 to {MAX_LENGTH_MAX} seconds, and above 1 only with {max}")]
    BadLength { length: String, max: String },
}

/// A set of limits, as QEMU names them: `iops-total=2000,bps-total=50M`. On the control
/// protocol, the same keys with numbers: `{"iops-total": 2000}`. Empty: no limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, u64>", into = "BTreeMap<String, u64>")]
pub struct ThrottleConfig {
    values: BTreeMap<Key, u64>,
}

impl ThrottleConfig {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn get(&self, key: Key) -> Option<u64> {
        self.values.get(&key).copied()
    }

    /// Each setting with its QEMU name.
    pub fn settings(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.values.iter().map(|(k, v)| (k.name(), *v))
    }

    /// The rate, burst and burst length of one limit, if it is set.
    fn rate(&self, resource: Resource, scope: Scope) -> Option<Rate> {
        let avg = self.get(Key::Limit(resource, scope, Field::Avg))?;
        Some(Rate {
            avg,
            max: self.get(Key::Limit(resource, scope, Field::Max)),
            max_length: self
                .get(Key::Limit(resource, scope, Field::MaxLength))
                .unwrap_or(1),
        })
    }

    /// Checks the settings as QEMU's `throttle_is_valid` does.
    fn validate(&self) -> Result<(), ThrottleError> {
        use strum::IntoEnumIterator;
        for (&key, &value) in &self.values {
            if value == 0 || value > VALUE_MAX {
                return Err(ThrottleError::OutOfRange {
                    key: key.name(),
                    value,
                });
            }
        }
        for resource in Resource::iter() {
            for field in [Field::Avg, Field::Max] {
                let total = Key::Limit(resource, Scope::Total, field);
                for part in [Scope::Read, Scope::Write].map(|s| Key::Limit(resource, s, field)) {
                    if self.get(total).is_some() && self.get(part).is_some() {
                        return Err(ThrottleError::TotalAndPart {
                            total: total.name(),
                            part: part.name(),
                        });
                    }
                }
            }
            for scope in Scope::iter() {
                let key = |field| Key::Limit(resource, scope, field);
                let (avg, max, length) = (key(Field::Avg), key(Field::Max), key(Field::MaxLength));
                match (self.get(avg), self.get(max)) {
                    (None, Some(_)) => {
                        return Err(ThrottleError::MaxWithoutAvg {
                            max: max.name(),
                            avg: avg.name(),
                        })
                    }
                    (Some(avg_value), Some(max_value)) if max_value < avg_value => {
                        return Err(ThrottleError::MaxBelowAvg {
                            max: max.name(),
                            max_value,
                            avg: avg.name(),
                            avg_value,
                        })
                    }
                    _ => {}
                }
                let bad_length = match self.get(length) {
                    Some(n) => n > MAX_LENGTH_MAX || (n > 1 && self.get(max).is_none()),
                    None => false,
                };
                if bad_length {
                    return Err(ThrottleError::BadLength {
                        length: length.name(),
                        max: max.name(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for ThrottleConfig {
    type Err = ThrottleError;

    /// `KEY=VALUE[,KEY=VALUE...]`; byte rates and `iops-size` take K, M, G, T (powers of
    /// 1024). An empty string is no limits.
    fn from_str(s: &str) -> Result<Self, ThrottleError> {
        let mut values = BTreeMap::new();
        for item in s.split(',').filter(|item| !item.trim().is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| ThrottleError::NotKeyValue(item.to_owned()))?;
            let key = Key::parse(name.trim())?;
            let bytes = matches!(
                key,
                Key::IopsSize | Key::Limit(Resource::Bps, _, Field::Avg | Field::Max)
            );
            let value = value.trim();
            let parsed = if bytes {
                crate::util::size::parse(value).ok()
            } else {
                value.parse().ok()
            };
            let value = parsed.ok_or_else(|| ThrottleError::NotANumber {
                key: key.name(),
                value: value.to_owned(),
                hint: if bytes {
                    " of bytes (suffixes K, M, G, T)"
                } else {
                    ""
                },
            })?;
            if values.insert(key, value).is_some() {
                return Err(ThrottleError::Repeated(key.name()));
            }
        }
        let config = ThrottleConfig { values };
        config.validate()?;
        Ok(config)
    }
}

impl fmt::Display for ThrottleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: Vec<String> = self.settings().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&settings.join(","))
    }
}

impl TryFrom<BTreeMap<String, u64>> for ThrottleConfig {
    type Error = ThrottleError;

    fn try_from(map: BTreeMap<String, u64>) -> Result<Self, ThrottleError> {
        let values = map
            .into_iter()
            .map(|(name, value)| Ok((Key::parse(&name)?, value)))
            .collect::<Result<_, ThrottleError>>()?;
        let config = ThrottleConfig { values };
        config.validate()?;
        Ok(config)
    }
}

impl From<ThrottleConfig> for BTreeMap<String, u64> {
    fn from(config: ThrottleConfig) -> Self {
        config.settings().collect()
    }
}

/// One limit's settings.
#[derive(Debug, Clone, Copy)]
struct Rate {
    avg: u64,
    max: Option<u64>,
    max_length: u64,
}

/// A leaky bucket as a theoretical arrival time: the level is how far `tat` is ahead of now,
/// in time at the bucket's rate.
#[derive(Debug)]
struct Bucket {
    /// What one unit (an operation, a byte) costs, in ns.
    ns_per_unit: f64,
    /// The bucket's size, in ns at its rate: a request is admitted while the level is at most
    /// this.
    size_ns: u64,
    /// When the bucket will have drained, in ns since [`Limits::base`].
    tat: AtomicU64,
}

impl Bucket {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a size in ns of at most 1e15 units at 1 unit/s is below u64::MAX"
    )]
    fn new(rate: u64, size_units: f64) -> Bucket {
        let ns_per_unit = 1e9 / rate as f64;
        Bucket {
            ns_per_unit,
            size_ns: (size_units * ns_per_unit) as u64,
            tat: AtomicU64::new(0),
        }
    }

    /// How long a request must wait before this bucket admits it, at `now`.
    fn wait(&self, now: u64) -> u64 {
        self.tat
            .load(Ordering::Relaxed)
            .saturating_sub(now)
            .saturating_sub(self.size_ns)
    }

    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a cost is positive, and saturates as a float-to-int cast does"
    )]
    fn charge(&self, now: u64, units: f64) {
        let cost = (units * self.ns_per_unit) as u64;
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }
}

/// One limit: its bucket, and the burst bucket of a burst longer than a second.
#[derive(Debug)]
struct Limit {
    main: Bucket,
    burst: Option<Bucket>,
}

impl Limit {
    fn new(rate: Rate) -> Limit {
        match rate.max {
            None => Limit {
                main: Bucket::new(rate.avg, rate.avg as f64 / 10.0),
                burst: None,
            },
            Some(max) => Limit {
                main: Bucket::new(rate.avg, max as f64 * rate.max_length as f64),
                burst: (rate.max_length > 1).then(|| Bucket::new(max, max as f64 / 10.0)),
            },
        }
    }

    fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        std::iter::once(&self.main).chain(&self.burst)
    }
}

/// The buckets of one set of limits.
#[derive(Debug)]
struct Limits {
    config: ThrottleConfig,
    /// Time zero of the buckets' clocks.
    base: Instant,
    /// Indexed by [`Resource`] then [`Scope`].
    limits: [[Option<Limit>; 3]; 2],
    iops_size: Option<u64>,
}

/// What a request costs: whether it writes, and the bytes it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cost {
    write: bool,
    bytes: u64,
}

impl Cost {
    /// What `op` costs; nothing for what is not limited (flushes, discards).
    fn of(op: &IoOp) -> Option<Cost> {
        match op {
            IoOp::Transfer {
                direction, data, ..
            } => Some(Cost {
                write: *direction != Direction::Read,
                bytes: data.len() as u64,
            }),
            IoOp::WriteZeroes { len, .. } => Some(Cost {
                write: true,
                bytes: *len,
            }),
            IoOp::Flush | IoOp::Discard { .. } => None,
        }
    }
}

/// The disk's limits, which every queue checks its requests against.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Whether there are limits: without, a request costs this one relaxed load (an
    /// `ArcSwap` load takes and gives back a slot in a thread-local debt list).
    limited: AtomicBool,
    limits: ArcSwapOption<Limits>,
}

impl Throttle {
    /// Replaces the limits (none if `config` is empty), with empty buckets.
    pub fn set(&self, config: ThrottleConfig) {
        let limited = !config.is_empty();
        self.limits
            .store(limited.then(|| Arc::new(Limits::new(config))));
        // A queue that still sees the old flag for a moment charges the old buckets or none.
        self.limited.store(limited, Ordering::Release);
    }

    /// The limits now.
    pub fn config(&self) -> ThrottleConfig {
        self.limits
            .load()
            .as_ref()
            .map(|l| l.config.clone())
            .unwrap_or_default()
    }

    /// Admits `op` and charges the buckets it counts against; or says how long to wait until
    /// it may be admitted (and charges nothing).
    #[inline]
    pub fn admit(&self, op: &IoOp) -> Result<(), Duration> {
        if !self.limited.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.admit_limited(op)
    }

    /// [`Throttle::admit`] with limits, out of line so that the path without stays small.
    #[inline(never)]
    fn admit_limited(&self, op: &IoOp) -> Result<(), Duration> {
        let guard = self.limits.load();
        let (Some(limits), Some(cost)) = (guard.as_ref(), Cost::of(op)) else {
            return Ok(());
        };
        let now = u64::try_from(limits.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        limits.admit(cost, now).map_err(Duration::from_nanos)
    }
}

impl Limits {
    fn new(config: ThrottleConfig) -> Limits {
        use strum::IntoEnumIterator;
        let mut table: [[Option<Limit>; 3]; 2] = Default::default();
        for (row, resource) in table.iter_mut().zip(Resource::iter()) {
            for (cell, scope) in row.iter_mut().zip(Scope::iter()) {
                *cell = config.rate(resource, scope).map(Limit::new);
            }
        }
        Limits {
            iops_size: config.get(Key::IopsSize),
            config,
            base: Instant::now(),
            limits: table,
        }
    }

    /// [`Throttle::admit`] at `now` (ns since `base`); the wait in ns.
    fn admit(&self, cost: Cost, now: u64) -> Result<(), u64> {
        let scope = if cost.write {
            Scope::Write
        } else {
            Scope::Read
        };
        let ops = match self.iops_size {
            Some(size) if cost.bytes > size => cost.bytes as f64 / size as f64,
            _ => 1.0,
        };
        let charges = [(Resource::Iops, ops), (Resource::Bps, cost.bytes as f64)];
        let touched = || {
            charges.iter().flat_map(move |&(resource, units)| {
                [Scope::Total, scope]
                    .into_iter()
                    .filter_map(move |s| self.limits[resource as usize][s as usize].as_ref())
                    .map(move |limit| (limit, units))
            })
        };
        let wait = touched()
            .flat_map(|(limit, _)| limit.buckets())
            .map(|bucket| bucket.wait(now))
            .max()
            .unwrap_or(0);
        if wait > 0 {
            return Err(wait);
        }
        for (limit, units) in touched() {
            for bucket in limit.buckets() {
                bucket.charge(now, units);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ThrottleConfig, String> {
        s.parse::<ThrottleConfig>().map_err(|e| e.to_string())
    }

    #[test]
    fn limits_are_read_as_qemu_names_them() {
        let config = parse("iops-total=2000, bps-total=50M,bps-total-max=100M").unwrap();
        assert_eq!(
            config.settings().collect::<Vec<_>>(),
            [
                ("iops-total".to_owned(), 2000),
                ("bps-total".to_owned(), 50 << 20),
                ("bps-total-max".to_owned(), 100 << 20),
            ]
        );
        assert_eq!(parse(&config.to_string()), Ok(config.clone()));
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            json,
            r#"{"bps-total":52428800,"bps-total-max":104857600,"iops-total":2000}"#
        );
        assert_eq!(
            serde_json::from_str::<ThrottleConfig>(&json).unwrap(),
            config
        );
        assert_eq!(parse(""), Ok(ThrottleConfig::default()));
        assert!(parse("iops-size=4k").is_ok());
    }

    #[test]
    fn bad_limits_are_explained() {
        let error = |s: &str| parse(s).unwrap_err();
        assert!(error("iops=5").contains("unknown limit 'iops'"));
        assert!(error("iops-total").contains("not KEY=VALUE"));
        assert!(error("iops-total=1k").contains("not a number"));
        assert!(error("bps-read=fast").contains("of bytes"));
        assert!(error("iops-total=1,iops-total=2").contains("given twice"));
        assert!(error("iops-total=0").contains("out of range"));
        assert!(error("iops-total=5,iops-read=5").contains("cannot be used at the same time"));
        assert!(error("iops-read-max=5").contains("needs iops-read"));
        assert!(error("iops-read=10,iops-read-max=5").contains("must not be below"));
        assert!(error("bps-write=1M,bps-write-max-length=5").contains("only with bps-write-max"));
        assert!(error("iops-read=1,iops-read-max=2,iops-read-max-length=100000").contains("86400"));
        let from_json = serde_json::from_str::<ThrottleConfig>(r#"{"iops-total":1,"iops-read":1}"#);
        assert!(from_json
            .unwrap_err()
            .to_string()
            .contains("at the same time"));
    }

    fn limits(s: &str) -> Limits {
        Limits::new(s.parse().unwrap())
    }

    const READ: Cost = Cost {
        write: false,
        bytes: 4096,
    };
    const WRITE: Cost = Cost {
        write: true,
        bytes: 4096,
    };

    /// How many `cost`s are admitted at once, without time passing (the bucket's size).
    fn burst(limits: &Limits, cost: Cost) -> usize {
        (0..1_000_000)
            .take_while(|_| limits.admit(cost, 0).is_ok())
            .count()
    }

    #[test]
    fn a_bucket_admits_a_tenth_of_a_second_at_once_and_then_says_how_long_to_wait() {
        let limits = limits("iops-total=1000");
        // Admitted while the level is at most 100 ops: 101 of them, the last taking it to
        // 101 ms, a millisecond over.
        assert_eq!(burst(&limits, READ), 101);
        assert_eq!(limits.admit(WRITE, 0), Err(1_000_000));
        assert_eq!(limits.admit(WRITE, 400_000), Err(600_000), "it drains");
        assert_eq!(limits.admit(WRITE, 1_000_000), Ok(()));
        let unlimited = Throttle::default();
        assert!((0..1000).all(|_| unlimited.admit(&IoOp::Flush).is_ok()));
        let limited = Throttle::default();
        limited.set("iops-total=1".parse().unwrap());
        assert!(
            (0..1000).all(|_| limited.admit(&IoOp::Flush).is_ok()),
            "flushes are free"
        );
        let discard = IoOp::Discard {
            offset: 0,
            len: 1 << 30,
        };
        assert!(
            (0..1000).all(|_| limited.admit(&discard).is_ok()),
            "so are discards"
        );
    }

    #[test]
    fn reads_and_writes_count_against_their_own_limits_and_the_total() {
        let limits = self::limits("iops-read=100,bps-write=40960");
        assert_eq!(burst(&limits, READ), 11);
        // 4 KiB writes against a 4 KiB tenth of a second.
        assert_eq!(burst(&limits, WRITE), 2);
        let limits = self::limits("bps-total=409600,iops-size=8k");
        assert_eq!(burst(&limits, READ), 11);
        assert!(limits.admit(WRITE, 0).is_err());
    }

    #[test]
    fn a_burst_allows_max_for_max_length_seconds() {
        // A burst of 500 ops/s for 2 s over an average of 100: the main bucket holds 1000
        // ops, but the burst bucket lets only a tenth of a second of 500 through at once.
        let limits = limits("iops-total=100,iops-total-max=500,iops-total-max-length=2");
        assert_eq!(burst(&limits, READ), 51);
        // A tenth of a second later, another tenth of a second of the burst.
        assert_eq!(
            (0..1000)
                .take_while(|_| limits.admit(READ, 100_000_000).is_ok())
                .count(),
            50
        );
        // Without a burst length, max is how much may come at once.
        let limits = self::limits("iops-total=100,iops-total-max=500");
        assert_eq!(burst(&limits, READ), 501);
    }

    #[test]
    fn iops_size_makes_large_requests_count_as_several() {
        let limits = limits("iops-total=100,iops-size=4k");
        let large = Cost {
            write: false,
            bytes: 40960,
        };
        // Ten operations each: admitted at levels 0 and 10.
        assert_eq!(burst(&limits, large), 2);
    }
}
