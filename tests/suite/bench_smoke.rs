//! `vblkd bench run` for a second against vblkd on a file and on the null disk: it completes I/O, reports no errors, and measures the daemon when given its PID.
//! (No timing thresholds: the speed targets live in the benchmark report.) `vblkd bench` is
//! the vblkd-bench program beside vblkd, which `cargo test --workspace` builds.

use std::process::Command;

use serde_json::Value;
use support::{vblkd_bin, Daemon};

fn bench(args: &[&str]) -> Value {
    let beside = vblkd_bin().with_file_name("vblkd-bench");
    assert!(
        beside.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        beside.display()
    );
    let out = Command::new(vblkd_bin())
        .args(["bench", "run", "--seconds", "1", "--ramp", "0.2", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench run {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn assert_clean_run(r: &Value, with_daemon: bool) {
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["ios"].as_u64().unwrap() > 0, "{r}");
    assert!(r["iops"].as_f64().unwrap() > 0.0, "{r}");
    assert!(
        r["lat_p99_us"].as_f64().unwrap() >= r["lat_p50_us"].as_f64().unwrap(),
        "{r}"
    );
    assert_eq!(r["daemon_cpu_us_per_io"].is_f64(), with_daemon, "{r}");
    let steal = r["steal_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&steal), "{r}");
}

#[test]
fn bench_runs_against_a_file_backed_daemon() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0x5au8; 64 << 20]).unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", disk.to_str().unwrap(), "--num-queues", "2"],
    );
    let pid = daemon.pid().to_string();
    let socket = daemon.socket.to_str().unwrap().to_owned();
    for (rw, bs, queues) in [("randrw", "4k", "2"), ("write", "1M", "1")] {
        let r = bench(&[
            "--socket",
            &socket,
            "--pid",
            &pid,
            "--rw",
            rw,
            "--bs",
            bs,
            "--queues",
            queues,
            "--iodepth",
            "8",
        ]);
        assert_clean_run(&r, true);
        assert_eq!(r["workload"]["rw"], rw);
    }
    assert!(daemon.stop().success());
}

#[test]
fn bench_runs_against_the_null_disk() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for poll in ["0", "20"] {
        let daemon = Daemon::start(
            dir.path(),
            &["--disk", "null:1G", "--num-queues", "2", "--poll-us", poll],
        );
        let pid = daemon.pid().to_string();
        let r = bench(&[
            "--socket",
            daemon.socket.to_str().unwrap(),
            "--pid",
            &pid,
            "--queues",
            "2",
        ]);
        assert_clean_run(&r, true);
        assert!(daemon.stop().success());
    }
}
