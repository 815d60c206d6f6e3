//! `vblkd-bench` on its own, without a daemon: the direct reference runs and reports, and a bad
//! command line gets one line saying what is wrong, with exit status 2. (Runs against daemons
//! are in the daemon's tests/bench_smoke.rs, through `vblkd bench`.)

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vblkd-bench"))
        .args(args)
        .output()
        .expect("vblkd-bench runs")
}

fn failure(args: &[&str]) -> String {
    let out = bench(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    stderr
}

#[test]
fn the_direct_reference_runs_without_a_daemon() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0x5au8; 16 << 20]).unwrap();
    let out = bench(&[
        "run",
        "--direct",
        disk.to_str().unwrap(),
        "--rw",
        "randread",
        "--iodepth",
        "4",
        "--seconds",
        "0.5",
        "--ramp",
        "0.1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["ios"].as_u64().unwrap() > 0, "{r}");
    assert!(r["daemon_cpu_us_per_io"].is_null(), "{r}");
    assert_eq!(r["workload"]["iodepth"], 4, "{r}");
}

#[test]
fn bad_command_lines_are_explained() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk = disk.to_str().unwrap();

    let e = failure(&["run", "--direct", disk, "--bs", "1000"]);
    assert!(e.contains("not a multiple of 512"), "{e}");
    let e = failure(&["run", "--direct", disk, "--bs", "4x"]);
    assert!(e.contains("unknown suffix"), "{e}");
    let e = failure(&["run", "--rw", "randread"]);
    assert!(e.contains("--socket") && e.contains("--direct"), "{e}");
    let e = failure(&["run", "--direct", disk, "--socket", "/nonexistent.sock"]);
    assert!(e.contains("cannot be used with"), "{e}");
    let missing = dir.path().join("missing.sock");
    let e = failure(&["run", "--socket", missing.to_str().unwrap()]);
    assert!(
        e.contains("cannot connect") && e.contains("missing.sock"),
        "{e}"
    );
}
