//! The matrix report: report.md (targets, then one table per workload with each row's ratio
//! to the direct reference and to qemu-storage-daemon in the same mode) and its SVG charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::chart;
use super::results::{same_shape, workload, Peer, Results, Row};
use super::{RunResult, Rw, Workload};
use vblkd::util::size;

/// How the matrix was run, for the report's header.
#[derive(Debug, Clone)]
pub struct Context {
    pub disk: PathBuf,
    pub disk_bytes: u64,
    pub seconds: f64,
    pub ramp: f64,
    pub daemon_cpus: Vec<usize>,
    pub load_cpus: Vec<usize>,
    pub vblkd_args: Vec<String>,
    pub poll_us: u32,
    pub max_steal: f64,
    pub retries: u32,
}

/// One speed target and how this run measured against it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// None when the rows it needs are missing or failed.
    pub met: Option<bool>,
}

fn check(
    target: String,
    value: Option<f64>,
    fmt: impl Fn(f64) -> String,
    ok: impl Fn(f64) -> bool,
) -> TargetCheck {
    TargetCheck {
        target,
        measured: value.map(&fmt).unwrap_or_else(|| "not measured".into()),
        met: value.map(ok),
    }
}

/// The speed targets (issue 10), evaluated on `rows`: for vblkd as it runs by default, and
/// the latency target again for a polling vblkd where the matrix has one.
pub fn targets(rows: &[Row]) -> Vec<TargetCheck> {
    let r = Results::new(rows);
    let ratio = |a: Option<&RunResult>, b: Option<&RunResult>, f: fn(&RunResult) -> Option<f64>| {
        a.zip(b).and_then(|(a, b)| Some(f(a)? / f(b)?))
    };
    let iops = |r: &RunResult| Some(r.iops);
    let cpu = |r: &RunResult| r.daemon_cpu_us_per_io;
    let times = |x: f64| format!("{x:.2}×");
    let mut out = Vec::new();
    for aio in ["io_uring", "native"] {
        let mode = format!("{aio}/none");
        for rw in [Rw::Randread, Rw::Randwrite] {
            let w = workload(rw, 4096, 32, 1);
            let v = r.get(Peer::Vblkd, &mode, &w);
            out.push(check(
                format!(
                    "aio={aio} 4k {} QD32: IOPS ≥ 1× qemu-storage-daemon's",
                    rw.name()
                ),
                ratio(v, r.get(Peer::Qsd, &mode, &w), iops),
                times,
                |x| x >= 1.0,
            ));
            out.push(check(
                format!("aio={aio} 4k {} QD32: IOPS ≥ 0.95× direct", rw.name()),
                ratio(v, r.direct(&w), iops),
                times,
                |x| x >= 0.95,
            ));
        }
    }
    let w64k = workload(Rw::Randread, 64 << 10, 8, 1);
    out.push(check(
        "aio=io_uring 64k randread QD8: IOPS ≥ 1× qemu-storage-daemon's".into(),
        ratio(
            r.get(Peer::Vblkd, "io_uring/none", &w64k),
            r.get(Peer::Qsd, "io_uring/none", &w64k),
            iops,
        ),
        times,
        |x| x >= 1.0,
    ));
    let qd32 = workload(Rw::Randread, 4096, 32, 1);
    for aio in ["io_uring", "native", "threads"] {
        let mode = format!("{aio}/none");
        out.push(check(
            format!("aio={aio} 4k randread QD32: daemon CPU per I/O ≤ 0.6× qemu-storage-daemon's"),
            ratio(
                r.get(Peer::Vblkd, &mode, &qd32),
                r.get(Peer::Qsd, &mode, &qd32),
                cpu,
            ),
            times,
            |x| x <= 0.6,
        ));
    }
    let qd1 = workload(Rw::Randread, 4096, 1, 1);
    for aio in ["io_uring", "native"] {
        let mode = format!("{aio}/none");
        let extra = |variant: &str, reference: Option<&RunResult>| {
            r.get(Peer::Vblkd, &format!("{mode}{variant}"), &qd1)
                .zip(reference)
                .map(|(v, n)| v.lat_mean_us - n.lat_mean_us)
        };
        out.push(check(
            format!("aio={aio} QD1 mean latency ≤ qemu-storage-daemon's"),
            extra("", r.get(Peer::Qsd, &mode, &qd1)),
            |x| format!("QSD {x:+.1} µs"),
            |x| x <= 0.0,
        ));
        if rows.iter().any(|r| r.config.poll_us.is_some_and(|p| p > 0)) {
            out.push(check(
                format!("aio={aio} with --poll-us: QD1 mean latency ≤ direct + 10 µs"),
                extra("+poll", r.direct(&qd1)),
                |x| format!("direct {x:+.1} µs"),
                |x| x <= 10.0,
            ));
        }
    }
    let null_v = r.get(Peer::Vblkd, "null", &qd32);
    out.push(check(
        "null disk 4k randread QD32: IOPS ≥ 1.5× qemu-storage-daemon null-co's".into(),
        ratio(null_v, r.get(Peer::Qsd, "null", &qd32), iops),
        times,
        |x| x >= 1.5,
    ));
    out.push(check(
        "null disk 4k randread QD32: ≤ 0.5 µs daemon CPU per I/O".into(),
        null_v.and_then(|v| v.daemon_cpu_us_per_io),
        |x| format!("{x:.2} µs"),
        |x| x <= 0.5,
    ));
    out.push(check(
        "null disk 4k randread QD32: two queues ≥ 1.8× one queue's IOPS".into(),
        ratio(
            r.get(Peer::Vblkd, "null", &workload(Rw::Randread, 4096, 32, 2)),
            null_v,
            iops,
        ),
        times,
        |x| x >= 1.8,
    ));
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

/// The markdown report for `rows`.
pub fn render(rows: &[Row], ctx: &Context, charts: &[(String, String)]) -> String {
    let r = Results::new(rows);
    let mut md = String::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(md, "# vblkd benchmark report\n");
    let _ = writeln!(
        md,
        "Generated by `vblkd bench matrix` on {}, {cpus} CPUs, Linux {}. Disk: `{}` ({}).",
        utc_now(),
        kernel.trim(),
        ctx.disk.display(),
        size::label(ctx.disk_bytes)
    );
    let _ = writeln!(
        md,
        "Each run: {} s warm-up, then {} s measured. {}",
        ctx.ramp,
        ctx.seconds,
        if ctx.daemon_cpus.is_empty() {
            "Nothing pinned.".to_string()
        } else {
            format!(
                "Every daemon pinned to CPU {:?}, the load threads to CPU {:?}.",
                ctx.daemon_cpus, ctx.load_cpus
            )
        }
    );
    let _ = if ctx.poll_us > 0 {
        writeln!(
            md,
            "Rows marked \"+poll\" are vblkd with `--poll-us {}` (busy-polling; its CPU time counts).",
            ctx.poll_us
        )
    } else {
        writeln!(
            md,
            "Rows marked \"+nopoll\" are vblkd with `--poll-us 0`, busy polling off; the other vblkd rows poll with the daemon's default window."
        )
    };
    if !ctx.vblkd_args.is_empty() {
        let _ = writeln!(md, "vblkd ran with `{}`.", ctx.vblkd_args.join(" "));
    }
    let _ = writeln!(
        md,
        "\nAbsolute numbers on shared virtual machines are noisy; the ratios between rows of this \
         one run are what count. \"× direct\" compares with io_uring + O_DIRECT straight on the \
         file; \"× QSD\" with qemu-storage-daemon in the same aio and cache mode. CPU and context \
         switches are the daemon's (all threads), per I/O; compl/wait is how many completions the \
         client collected per wait (near the queue depth: lock-step, see docs/benchmarks.md); \
         page cache is the growth of the host's Cached + Buffers over the measured window; steal \
         is the share of the machine's CPU time its hypervisor took meanwhile (a run with more \
         than {:.0} % was repeated, up to {} times, and the quietest kept).\n",
        ctx.max_steal, ctx.retries
    );

    let _ = writeln!(
        md,
        "## Speed targets\n\n| target | measured | met |\n|---|---|---|"
    );
    for t in targets(rows) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(md, "| {} | {} | {met} |", t.target, t.measured);
    }

    if !charts.is_empty() {
        let _ = writeln!(md, "\n## Charts\n");
        for (file, title) in charts {
            let _ = writeln!(md, "![{title}]({file})\n");
        }
    }

    let mut workloads: Vec<&Workload> = Vec::new();
    for row in rows {
        if !workloads.iter().any(|w| same_shape(w, &row.workload)) {
            workloads.push(&row.workload);
        }
    }
    for w in workloads {
        let _ = writeln!(
            md,
            "\n## {}\n\n| daemon | mode | IOPS | MiB/s | mean µs | p50 µs | p99 µs | p99.9 µs | CPU µs/IO | ctx sw/IO | compl/wait | page cache Δ MiB | steal % | × direct | × QSD |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            w.label()
        );
        for row in rows.iter().filter(|row| same_shape(&row.workload, w)) {
            let c = &row.config;
            match &row.result {
                Err(e) => {
                    let _ = writeln!(
                        md,
                        "| {} | {} | **FAILED**: {} | | | | | | | | | | | | |",
                        c.peer.name(),
                        c.mode(),
                        e.replace('|', "/").replace('\n', " ")
                    );
                }
                Ok(res) => {
                    let vs_direct = r.direct(w).map(|n| res.iops / n.iops);
                    let vs_qsd = r.qsd_peer(c, w).map(|q| res.iops / q.iops);
                    let _ = writeln!(
                        md,
                        "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                        c.peer.name(),
                        c.mode(),
                        res.iops,
                        res.mib_per_s,
                        res.lat_mean_us,
                        res.lat_p50_us,
                        res.lat_p99_us,
                        res.lat_p999_us,
                        opt(res.daemon_cpu_us_per_io, 2),
                        opt(res.daemon_ctx_switches_per_io, 2),
                        res.completions_per_wait,
                        res.page_cache_growth_mib,
                        res.steal_percent,
                        opt(vs_direct, 2),
                        opt(vs_qsd, 2),
                    );
                }
            }
        }
    }
    md
}

/// Writes report.md and the charts into `dir`; returns the report's path.
pub fn write(dir: &Path, rows: &[Row], ctx: &Context) -> Result<PathBuf, String> {
    let charts = chart::write_all(dir, rows)?;
    let path = dir.join("report.md");
    std::fs::write(&path, render(rows, ctx, &charts))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The current time as "YYYY-MM-DD HH:MM UTC" (civil-from-days, no time-zone database needed).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Config;

    fn result(w: &Workload, iops: f64, cpu: Option<f64>, lat: f64) -> RunResult {
        RunResult {
            workload: w.clone(),
            ios: 1_000,
            errors: 0,
            iops,
            mib_per_s: iops * w.bs as f64 / 1048576.0,
            lat_mean_us: lat,
            lat_p50_us: lat,
            lat_p99_us: lat * 2.0,
            lat_p999_us: lat * 3.0,
            lat_max_us: lat * 4.0,
            daemon_cpu_us_per_io: cpu,
            daemon_ctx_switches_per_io: cpu.map(|_| 0.1),
            backend_cpu_us_per_io: None,
            page_cache_growth_mib: 0.0,
            completions_per_wait: 1.0,
            steal_percent: 0.0,
        }
    }

    fn row(peer: Peer, aio: Option<&str>, w: Workload, r: Result<RunResult, String>) -> Row {
        Row {
            config: Config {
                peer,
                aio: aio.map(str::to_owned),
                cache: "none".into(),
                poll_us: None,
            },
            workload: w,
            result: r,
        }
    }

    fn sample_rows() -> Vec<Row> {
        let qd32 = workload(Rw::Randread, 4096, 32, 1);
        let qd1 = workload(Rw::Randread, 4096, 1, 1);
        vec![
            row(
                Peer::Direct,
                Some("io_uring"),
                qd32.clone(),
                Ok(result(&qd32, 50_000.0, None, 600.0)),
            ),
            row(
                Peer::Direct,
                Some("io_uring"),
                qd1.clone(),
                Ok(result(&qd1, 8_000.0, None, 120.0)),
            ),
            row(
                Peer::Vblkd,
                Some("io_uring"),
                qd32.clone(),
                Ok(result(&qd32, 48_000.0, Some(4.0), 640.0)),
            ),
            row(
                Peer::Vblkd,
                Some("io_uring"),
                qd1.clone(),
                Ok(result(&qd1, 7_000.0, Some(20.0), 135.0)),
            ),
            row(
                Peer::Qsd,
                Some("io_uring"),
                qd32.clone(),
                Ok(result(&qd32, 40_000.0, Some(10.0), 800.0)),
            ),
            row(
                Peer::Qsd,
                Some("io_uring"),
                qd1.clone(),
                Ok(result(&qd1, 7_500.0, Some(25.0), 120.0)),
            ),
            row(
                Peer::Vblkd,
                Some("native"),
                qd32.clone(),
                Err("daemon exited".into()),
            ),
        ]
    }

    #[test]
    fn targets_are_evaluated_from_the_rows() {
        let t = targets(&sample_rows());
        let find = |prefix: &str| {
            t.iter()
                .find(|t| t.target.starts_with(prefix))
                .unwrap()
                .clone()
        };
        let uring = find("aio=io_uring 4k randread QD32: IOPS ≥ 0.95× direct");
        assert_eq!((uring.measured.as_str(), uring.met), ("0.96×", Some(true)));
        let vs_qsd = find("aio=io_uring 4k randread QD32: IOPS ≥ 1× qemu");
        assert_eq!(
            (vs_qsd.measured.as_str(), vs_qsd.met),
            ("1.20×", Some(true))
        );
        let cpu = find("aio=io_uring 4k randread QD32: daemon CPU");
        assert_eq!((cpu.measured.as_str(), cpu.met), ("0.40×", Some(true)));
        let qd1 = find("aio=io_uring QD1 mean latency ≤ qemu");
        assert_eq!(
            (qd1.measured.as_str(), qd1.met),
            ("QSD +15.0 µs", Some(false))
        );
        // A failed row is "not measured", never a pass.
        let native = find("aio=native 4k randread QD32: IOPS ≥ 0.95× direct");
        assert_eq!(
            (native.measured.as_str(), native.met),
            ("not measured", None)
        );
    }

    #[test]
    fn report_has_every_row_with_ratios_and_failures() {
        let ctx = Context {
            disk: "/tmp/disk.img".into(),
            disk_bytes: 1 << 30,
            seconds: 2.0,
            ramp: 0.5,
            daemon_cpus: vec![1],
            load_cpus: vec![0],
            vblkd_args: vec![],
            poll_us: 0,
            max_steal: 5.0,
            retries: 2,
        };
        let md = render(&sample_rows(), &ctx, &[("iops.svg".into(), "IOPS".into())]);
        assert!(md.contains("## randread bs=4k qd=32 queues=1"));
        assert!(
            md.contains("| vblkd | io_uring/none | 48000 | 187.5 | 640.0 |"),
            "{md}"
        );
        // vblkd io_uring vs direct 0.96, vs QSD 1.20
        assert!(md.contains("| 0.96 | 1.20 |"), "{md}");
        assert!(md.contains("| vblkd | native/none | **FAILED**: daemon exited |"));
        assert!(md.contains("![IOPS](iops.svg)"));
        assert!(md.contains("(1024M)"), "{md}");
    }

    #[test]
    fn civil_date_is_plausible() {
        let s = utc_now();
        assert_eq!(s.len(), "2026-11-22 03:40 UTC".len(), "{s}");
        assert!(s.starts_with("20"));
    }
}
