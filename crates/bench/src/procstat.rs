//! What a run costs outside the client: the daemon's CPU time and context switches (summed
//! over all its threads, from /proc/PID/task/*/{schedstat,status}) and the growth of the
//! host's page cache (Cached + Buffers in /proc/meminfo); and what the machine's hypervisor
//! took meanwhile (steal, from /proc/stat), without which a run on a shared VM cannot be
//! judged: on the machines here it went from 0 to 35 % between runs a minute apart, and a
//! daemon's IOPS with it.
//!
//! schedstat gives nanoseconds, where /proc/PID/stat's utime+stime would give 10 ms ticks.

use std::fs;
use std::io;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_ns: u64,
    pub context_switches: u64,
}

impl ProcessSample {
    pub fn read(pid: u32) -> io::Result<Self> {
        let mut sample = ProcessSample::default();
        for task in fs::read_dir(format!("/proc/{pid}/task"))? {
            let dir = task?.path();
            // A thread may exit between listing and reading; its counts are simply lost.
            let (Ok(schedstat), Ok(status)) = (
                fs::read_to_string(dir.join("schedstat")),
                fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            sample.cpu_ns += parse_schedstat(&schedstat);
            sample.context_switches += parse_context_switches(&status);
        }
        Ok(sample)
    }

    pub fn since(&self, earlier: &ProcessSample) -> ProcessSample {
        ProcessSample {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
        }
    }
}

/// First field of /proc/PID/task/TID/schedstat: time spent on the CPU, in ns.
fn parse_schedstat(s: &str) -> u64 {
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn parse_context_switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The machine's CPU time so far, in ticks: (all of it, the part the hypervisor took).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTicks {
    pub total: u64,
    pub steal: u64,
}

impl CpuTicks {
    pub fn read() -> io::Result<Self> {
        Ok(parse_cpu_ticks(&fs::read_to_string("/proc/stat")?))
    }

    /// The share of the CPU time since `earlier` that the hypervisor took, in percent.
    pub fn steal_percent_since(&self, earlier: &CpuTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        let steal = self.steal.saturating_sub(earlier.steal);
        100.0 * steal as f64 / total.max(1) as f64
    }
}

/// The first line of /proc/stat: `cpu user nice system idle iowait irq softirq steal guest
/// guest_nice`; guest time is already counted in user time.
fn parse_cpu_ticks(stat: &str) -> CpuTicks {
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    CpuTicks {
        total: fields.iter().sum(),
        steal: fields.get(7).copied().unwrap_or(0),
    }
}

/// Bytes of page cache and buffers on the host right now.
pub fn page_cache_bytes() -> io::Result<u64> {
    Ok(parse_page_cache(&fs::read_to_string("/proc/meminfo")?))
}

fn parse_page_cache(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .filter(|l| l.starts_with("Cached:") || l.starts_with("Buffers:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        assert_eq!(parse_schedstat("123456 789 10\n"), 123456);
        let status = "Name:\tvblkd\nvoluntary_ctxt_switches:\t15\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_context_switches(status), 18);
        let meminfo = "MemTotal: 100 kB\nBuffers:  2 kB\nCached:  10 kB\nSwapCached: 5 kB\n";
        assert_eq!(parse_page_cache(meminfo), 12 * 1024);
        let stat = "cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n";
        let ticks = parse_cpu_ticks(stat);
        assert_eq!(
            ticks,
            CpuTicks {
                total: 1000,
                steal: 35
            }
        );
        let later = CpuTicks {
            total: 1200,
            steal: 85,
        };
        assert_eq!(later.steal_percent_since(&ticks), 25.0);
    }

    #[test]
    fn samples_a_busy_process() {
        // A separate single-threaded process: summing the threads of this test process is not
        // monotonic (other tests' threads exit between samples and take their time with them).
        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let a = ProcessSample::read(busy.id()).unwrap();
        // Its schedstat advances at ticks and switches; poll until it has, within a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut b = a;
        while b.since(&a).cpu_ns == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            b = ProcessSample::read(busy.id()).unwrap();
        }
        busy.kill().unwrap();
        busy.wait().unwrap();
        assert!(b.since(&a).cpu_ns > 0, "{a:?} -> {b:?}");
        assert!(page_cache_bytes().unwrap() > 0);
    }
}
