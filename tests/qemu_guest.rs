//! A real QEMU guest (Debian kernel, busybox initramfs, TCG) uses a vblkd disk through
//! `vhost-user-blk-pci`: it writes a known pattern with O_DIRECT at both ends of the disk and
//! in single sectors, reads it back, and switches the write cache off through the WCE config
//! byte. The host then checks that its file holds the same bytes. Once per aio mode.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use common::Daemon;

const DISK_BYTES: usize = 64 << 20;
const PATTERN_BYTES: usize = 4 << 20;
/// A guest that has not powered off by then is hung (it normally takes about 10 s).
const HANG_LIMIT: Duration = Duration::from_secs(600);

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("qemu-scripts")
}

fn guest_cache() -> PathBuf {
    std::env::var_os("VBLKD_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| scripts().join(".cache"))
}

/// Builds the guest once per test run (the tests below run in parallel).
fn build_guest() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(scripts().join("build-guest.sh"))
            .status()
            .expect("run build-guest.sh");
        assert!(
            status.success(),
            "qemu-scripts/build-guest.sh failed; see its message above"
        );
    });
}

/// Boots the guest against `socket` and returns its "VBLKD key value" report lines.
fn boot(socket: &std::path::Path) -> HashMap<String, String> {
    let mut qemu = Command::new(scripts().join("boot-guest.sh"))
        .arg(socket)
        .arg("2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let stdout = qemu.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut report = HashMap::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            eprintln!("[guest] {line}");
            // The firmware's terminal escapes may share a line with the first report.
            if let Some(rest) = line.find("VBLKD ").map(|at| line[at + 6..].trim()) {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                report.insert(k.to_owned(), v.to_owned());
            }
        }
        let _ = tx.send(report);
    });
    let report = match rx.recv_timeout(HANG_LIMIT) {
        Ok(report) => report,
        Err(_) => {
            let _ = qemu.kill();
            panic!("the guest did not power off within {HANG_LIMIT:?}");
        }
    };
    let status = qemu.wait().unwrap();
    assert!(status.success(), "qemu exited with {status}");
    report
}

fn guest_test(aio: &str) {
    build_guest();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--disk",
            disk.to_str().unwrap(),
            "--size",
            "64M",
            "--num-queues",
            "2",
            "--aio",
            aio,
        ],
    );
    let report = boot(&daemon.socket);
    let get = |k: &str| {
        report
            .get(k)
            .unwrap_or_else(|| panic!("guest did not report {k}: {report:?}"))
            .as_str()
    };

    let errors: Vec<_> = report.keys().filter(|k| k.starts_with("error")).collect();
    assert!(errors.is_empty(), "guest reported errors: {report:?}");
    assert_eq!(get("done"), "");
    assert_eq!(get("size_bytes"), DISK_BYTES.to_string());
    assert_eq!(get("queues"), "2", "the guest should use both queues");
    assert_eq!(
        get("cache_type"),
        "write back",
        "cache=none has a write cache"
    );
    assert_eq!(get("readback_start"), get("pattern"));
    assert_eq!(get("readback_end"), get("pattern"));
    assert_eq!(get("readback_small"), get("pattern_small"));
    assert_eq!(get("cache_type_after"), "write through");
    assert!(daemon.log().contains("guest turned the write cache off"));
    assert!(daemon.stop().success(), "vblkd did not exit cleanly");

    let pattern = std::fs::read(guest_cache().join("pattern.bin")).unwrap();
    let file = std::fs::read(&disk).unwrap();
    assert_eq!(file.len(), DISK_BYTES);
    assert!(
        file[..PATTERN_BYTES] == pattern[..],
        "start of the host file differs from the guest's writes"
    );
    assert!(
        file[DISK_BYTES - PATTERN_BYTES..] == pattern[..],
        "end of the host file differs"
    );
    assert!(
        file[8 << 20..(8 << 20) + (128 << 10)] == pattern[..128 << 10],
        "single-sector writes differ"
    );
}

#[test]
fn qemu_guest_io_uring() {
    guest_test("io_uring");
}

#[test]
fn qemu_guest_native() {
    guest_test("native");
}

#[test]
fn qemu_guest_threads() {
    guest_test("threads");
}
