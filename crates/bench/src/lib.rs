//! `vblkd bench`: measure a vhost-user-blk daemon — vblkd or any other — against the same
//! work done directly on the disk, as ratios in one run.
//!
//! A run drives a fixed queue depth of requests per queue, one thread per queue, through a
//! [`LoadQueue`]: either a vhost-user client (the `blkio` crate's driver, so any daemon can be
//! measured exactly as a VM's I/O would reach it) or io_uring with O_DIRECT straight on the
//! file (the reference no daemon can beat). While the client measures throughput and latency,
//! the daemon's own CPU time and context switches are sampled from /proc, and so is the growth
//! of the host's page cache — the cost that `cache=none` exists to avoid.
//!
//! [`matrix`] runs the whole grid against vblkd and qemu-storage-daemon and writes the report.

mod chart;
mod client;
mod direct;
pub mod matrix;
mod procstat;
mod report;
mod results;
pub mod rng;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use procstat::{page_cache_bytes, CpuTicks, ProcessSample};
use rng::Rng;
pub use vblkd::util::histogram::Histogram;

/// Access pattern, named as fio names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    Read,
    Write,
    Randread,
    Randwrite,
    Randrw,
}

impl Rw {
    fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }

    pub fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Randrw => "randrw",
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workload {
    pub rw: Rw,
    pub bs: usize,
    pub iodepth: usize,
    pub queues: usize,
    pub seconds: f64,
    pub ramp: f64,
    /// Requests per second per queue, if paced.
    #[serde(default)]
    pub rate: Option<f64>,
}

impl Workload {
    pub fn label(&self) -> String {
        let mut label = format!(
            "{} bs={} qd={} queues={}",
            self.rw.name(),
            vblkd::util::size::label(self.bs as u64),
            self.iodepth,
            self.queues
        );
        if let Some(rate) = self.rate {
            label += &format!(" rate={rate}/s");
        }
        label
    }
}

/// The largest `--bs`: what one ring entry or one blkio request can carry, with room to spare.
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;

/// Fills `bytes` with data that is neither zeroes nor a short repeat, both of which some
/// storage compresses or deduplicates away: the top byte of each index's Fibonacci hash,
/// never zero.
pub fn fill_with_data(bytes: &mut [u8]) {
    for (i, b) in (0u64..).zip(bytes) {
        *b = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes()[0] | 1;
    }
}

/// Where the I/O goes.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A vhost-user-blk socket.
    Socket(PathBuf),
    /// A file or block device, driven directly with io_uring and O_DIRECT: the reference no
    /// daemon can beat.
    Direct(PathBuf),
}

/// What a run measured. Latencies are in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub workload: Workload,
    pub ios: u64,
    pub errors: u64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
    /// Daemon CPU time per I/O, when its PID was given.
    pub daemon_cpu_us_per_io: Option<f64>,
    pub daemon_ctx_switches_per_io: Option<f64>,
    /// CPU time per I/O of the process behind the daemon (e.g. vblade behind an AoE disk),
    /// when given.
    #[serde(default, alias = "target_cpu_us_per_io")]
    pub backend_cpu_us_per_io: Option<f64>,
    /// Growth of Cached + Buffers over the measured window.
    pub page_cache_growth_mib: f64,
    /// Completions the load threads collected per wait, over the whole run: near the queue
    /// depth means the daemon and the client move in lock-step (the whole window submitted,
    /// completed and resubmitted together), which leaves the disk idle between windows.
    #[serde(default)]
    pub completions_per_wait: f64,
    /// The share of the machine's CPU time its hypervisor took over the measured window, in
    /// percent: a run with much of it measured the neighbours as much as the daemon.
    #[serde(default)]
    pub steal_percent: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot connect to {path}: {message}")]
    Connect { path: PathBuf, message: String },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{0} is smaller than one block of the workload")]
    TooSmall(PathBuf),
    #[error("I/O setup failed: {0}")]
    Setup(String),
    #[error("cannot read /proc for process {pid}: {source}; is it running?")]
    Proc { pid: u32, source: io::Error },
    #[error("load thread failed: {0}")]
    Thread(String),
}

/// One request slot's I/O as the load loop sees it: queue it, then collect completions.
pub(crate) trait LoadQueue: Send {
    /// Queues a request of `len` bytes at `offset` from/to `buf`, tagged with `slot`.
    fn queue(&mut self, slot: usize, write: bool, offset: u64, buf: *mut u8, len: usize);
    /// Submits what was queued, waits for at least one completion, appends `(slot, ok)`.
    fn complete(&mut self, out: &mut Vec<(usize, bool)>) -> Result<(), BenchError>;
}

/// An endpoint ready to run: one load queue per thread, the disk's size, the I/O buffers.
pub(crate) struct Prepared {
    queues: Vec<Box<dyn LoadQueue>>,
    capacity: u64,
    buffers: SharedBuffers,
}

/// When each phase of a run starts and ends.
#[derive(Clone, Copy)]
struct Timing {
    measure_start: Instant,
    measure_end: Instant,
}

#[derive(Default)]
struct ThreadStats {
    latency: Histogram,
    ios: u64,
    bytes: u64,
    errors: u64,
    /// Waits that returned completions, and the completions they returned.
    waits: u64,
    completions: u64,
}

/// Keeps `iodepth` requests in flight on `queue` until the measured window ends.
fn drive(
    queue: &mut dyn LoadQueue,
    w: &Workload,
    thread: usize,
    capacity: u64,
    buffers: *mut u8,
    timing: Timing,
) -> Result<ThreadStats, BenchError> {
    let bs = w.bs as u64;
    let blocks = capacity / bs;
    let mut rng =
        Rng::new(0x9e37_79b9_7f4a_7c15 ^ (thread as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let mut cursor = (blocks / w.queues as u64) * thread as u64;
    let mut next_request = |rng: &mut Rng| {
        let block = if w.rw.random() {
            rng.next_u64() % blocks
        } else {
            cursor = (cursor + 1) % blocks;
            cursor
        };
        let write = match w.rw {
            Rw::Read | Rw::Randread => false,
            Rw::Write | Rw::Randwrite => true,
            Rw::Randrw => rng.next_u64() & 1 == 0,
        };
        (write, block * bs)
    };

    // Pacing: each request waits for its turn on a fixed schedule.
    let interval = w.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut next_turn = Instant::now();
    let mut wait_turn = || {
        if let Some(interval) = interval {
            sleep_until(next_turn);
            next_turn += interval;
        }
    };

    let mut stats = ThreadStats::default();
    let mut started = vec![Instant::now(); w.iodepth];
    let mut done = Vec::with_capacity(w.iodepth);
    for (slot, start) in started.iter_mut().enumerate() {
        let (write, offset) = next_request(&mut rng);
        // SAFETY: each slot owns `bs` bytes of the buffer area, which holds iodepth slots.
        let buf = unsafe { buffers.add(slot * w.bs) };
        wait_turn();
        *start = Instant::now();
        queue.queue(slot, write, offset, buf, w.bs);
    }
    let mut outstanding = w.iodepth;
    while outstanding > 0 {
        queue.complete(&mut done)?;
        let now = Instant::now();
        stats.waits += 1;
        stats.completions += done.len() as u64;
        for (slot, ok) in done.drain(..) {
            outstanding -= 1;
            if !ok {
                stats.errors += 1;
            }
            if now >= timing.measure_start && now < timing.measure_end {
                stats
                    .latency
                    .record(u64::try_from((now - started[slot]).as_nanos()).unwrap_or(u64::MAX));
                stats.ios += 1;
                stats.bytes += bs;
            }
            if now < timing.measure_end {
                let (write, offset) = next_request(&mut rng);
                // SAFETY: as above.
                let buf = unsafe { buffers.add(slot * w.bs) };
                wait_turn();
                started[slot] = if interval.is_some() {
                    Instant::now()
                } else {
                    now
                };
                queue.queue(slot, write, offset, buf, w.bs);
                outstanding += 1;
            }
        }
    }
    Ok(stats)
}

/// Pins the calling thread to `cpus` (no-op for an empty list).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Processes whose CPU cost a run measures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watched {
    /// The daemon serving the socket.
    pub daemon: Option<u32>,
    /// What the daemon talks to, e.g. vblade behind an AoE disk.
    pub backend: Option<u32>,
}

/// Runs `w` against `endpoint`, measuring the CPU cost of the `watched` processes; with `cpus`,
/// the load threads are pinned there.
pub fn run(
    endpoint: &Endpoint,
    w: &Workload,
    watched: Watched,
    cpus: &[usize],
) -> Result<RunResult, BenchError> {
    let Prepared {
        queues,
        capacity,
        buffers,
    } = match endpoint {
        Endpoint::Socket(path) => client::connect(path, w)?,
        Endpoint::Direct(path) => direct::open(path, w)?,
    };
    if capacity < w.bs as u64 {
        let path = match endpoint {
            Endpoint::Socket(p) | Endpoint::Direct(p) => p.clone(),
        };
        return Err(BenchError::TooSmall(path));
    }

    let start = Instant::now() + Duration::from_millis(20);
    let measure_start = start + Duration::from_secs_f64(w.ramp);
    let timing = Timing {
        measure_start,
        measure_end: measure_start + Duration::from_secs_f64(w.seconds),
    };
    let barrier = Arc::new(Barrier::new(queues.len() + 1));
    let handles: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, mut q)| {
            let (w, barrier, cpus, area) = (
                w.clone(),
                barrier.clone(),
                cpus.to_vec(),
                buffers.slot_area(i, w),
            );
            std::thread::spawn(move || {
                let _ = pin_current_thread(&cpus);
                barrier.wait();
                drive(&mut *q, &w, i, capacity, area.ptr(), timing)
            })
        })
        .collect();
    barrier.wait();

    let sample =
        |pid: u32| ProcessSample::read(pid).map_err(|source| BenchError::Proc { pid, source });
    sleep_until(timing.measure_start);
    let before = watched.daemon.map(sample).transpose()?;
    let backend_before = watched.backend.map(sample).transpose()?;
    let cache_before = page_cache_bytes().unwrap_or(0);
    let ticks_before = CpuTicks::read().unwrap_or_default();
    sleep_until(timing.measure_end);
    let ticks_after = CpuTicks::read().unwrap_or_default();
    let after = watched.daemon.map(sample).transpose()?;
    let backend_after = watched.backend.map(sample).transpose()?;
    let cache_after = page_cache_bytes().unwrap_or(0);

    let mut total = ThreadStats::default();
    for h in handles {
        let stats = h
            .join()
            .map_err(|_| BenchError::Thread("panicked".into()))??;
        total.latency.merge(&stats.latency);
        total.ios += stats.ios;
        total.bytes += stats.bytes;
        total.errors += stats.errors;
        total.waits += stats.waits;
        total.completions += stats.completions;
    }
    drop(buffers);

    let cost = before.zip(after).map(|(b, a)| a.since(&b));
    let backend_cost = backend_before.zip(backend_after).map(|(b, a)| a.since(&b));
    let per_io = |v: u64| {
        if total.ios == 0 {
            0.0
        } else {
            v as f64 / total.ios as f64
        }
    };
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(RunResult {
        workload: w.clone(),
        ios: total.ios,
        errors: total.errors,
        iops: total.ios as f64 / w.seconds,
        mib_per_s: total.bytes as f64 / w.seconds / (1 << 20) as f64,
        lat_mean_us: total.latency.mean() / 1000.0,
        lat_p50_us: us(total.latency.percentile(50.0)),
        lat_p99_us: us(total.latency.percentile(99.0)),
        lat_p999_us: us(total.latency.percentile(99.9)),
        lat_max_us: us(total.latency.max()),
        daemon_cpu_us_per_io: cost.map(|c| per_io(c.cpu_ns) / 1000.0),
        daemon_ctx_switches_per_io: cost.map(|c| per_io(c.context_switches)),
        backend_cpu_us_per_io: backend_cost.map(|c| per_io(c.cpu_ns) / 1000.0),
        page_cache_growth_mib: (cache_after as f64 - cache_before as f64) / (1 << 20) as f64,
        completions_per_wait: total.completions as f64 / total.waits.max(1) as f64,
        steal_percent: ticks_after.steal_percent_since(&ticks_before),
    })
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// The I/O buffers of a run: `queues × iodepth` slots of `bs` bytes, owned by whichever side
/// allocated them (the client's shared memory region, or an aligned heap allocation).
pub(crate) struct SharedBuffers {
    base: *mut u8,
    /// Keeps the memory alive for the run.
    _owner: Box<dyn std::any::Any>,
}

#[derive(Clone, Copy)]
struct SlotArea(*mut u8);

// SAFETY: each load thread gets a disjoint slice of the buffer area, which outlives the threads
// (they are joined before `SharedBuffers` is dropped).
unsafe impl Send for SlotArea {}

impl SlotArea {
    /// A method, not a field access, so closures capture the whole (Send) `SlotArea`.
    fn ptr(self) -> *mut u8 {
        self.0
    }
}

impl SharedBuffers {
    fn slot_area(&self, queue: usize, w: &Workload) -> SlotArea {
        // SAFETY: the area holds queues × iodepth × bs bytes.
        SlotArea(unsafe { self.base.add(queue * w.iodepth * w.bs) })
    }
}

/// Human-readable summary of one run.
pub fn format_result(r: &RunResult) -> String {
    let mut s = format!(
        "{}: {:.0} IOPS, {:.1} MiB/s, {} errors\n  latency (µs): mean {:.1}  p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
        r.workload.label(),
        r.iops,
        r.mib_per_s,
        r.errors,
        r.lat_mean_us,
        r.lat_p50_us,
        r.lat_p99_us,
        r.lat_p999_us,
        r.lat_max_us
    );
    if let (Some(cpu), Some(ctx)) = (r.daemon_cpu_us_per_io, r.daemon_ctx_switches_per_io) {
        s += &format!("  daemon: {cpu:.2} µs CPU per I/O, {ctx:.2} context switches per I/O\n");
    }
    if let Some(cpu) = r.backend_cpu_us_per_io {
        s += &format!("  backend: {cpu:.2} µs CPU per I/O\n");
    }
    s += &format!(
        "  client: {:.1} completions per wait\n  page cache growth: {:.1} MiB\n  steal: {:.1} % \
         of the machine's CPU time taken by its hypervisor\n",
        r.completions_per_wait, r.page_cache_growth_mib, r.steal_percent
    );
    s
}
