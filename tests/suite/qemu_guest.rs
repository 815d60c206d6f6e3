//! A real QEMU guest (Debian kernel, busybox initramfs, TCG) uses a vblkd disk through
//! `vhost-user-blk-pci`: it writes a known pattern with O_DIRECT at both ends of the disk and
//! in single sectors, reads it back, and switches the write cache off through the WCE config
//! byte. The host then checks that its file holds the same bytes. Once per aio mode.

use support::guest::{check_guest, RunningGuest};
use support::{limits, run_vblkd, Daemon};

fn guest_test(aio: &str) {
    guest_test_with(&["--aio", aio]);
}

fn guest_test_with(extra: &[&str]) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut args = vec!["--num-queues", "2"];
    args.extend_from_slice(extra);
    let (daemon, disk) = Daemon::on_new_file(dir.path(), "64M", &args);
    // GET_ID returns the file name by default.
    check_guest(daemon, || std::fs::read(&disk).unwrap(), Some("disk.img"));
}

#[test]
#[ignore = "needs QEMU and the test guest"]
fn qemu_guest_io_uring() {
    guest_test("io_uring");
}

#[test]
#[ignore = "needs QEMU and the test guest"]
fn qemu_guest_native() {
    guest_test("native");
}

#[test]
#[ignore = "needs QEMU and the test guest"]
fn qemu_guest_threads() {
    guest_test("threads");
}

/// The guest's two queues (one per vCPU) on one polling thread.
#[test]
#[ignore = "needs QEMU and the test guest"]
fn qemu_guest_two_queues_on_one_thread() {
    guest_test_with(&["--queue-threads", "1"]);
}

/// Online resize: while the guest runs, `vblkd ctl resize` grows the disk; the guest sees the
/// new size at once (the config-change message) and writes and reads past the old end. A
/// shrink is refused.
#[test]
#[ignore = "needs QEMU and the test guest"]
fn qemu_guest_sees_an_online_resize() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let control = dir.path().join("control.sock");
    let (daemon, disk) = Daemon::on_new_file(
        dir.path(),
        "64M",
        &["--num-queues", "2", "--control", control.to_str().unwrap()],
    );
    let guest = RunningGuest::start(&daemon.socket, "resize");
    let limit = limits::GUEST_BOOT;
    let line = loop {
        let line = guest.next(limit, "the guest boots");
        assert!(!line.starts_with("error"), "{line}");
        if line.starts_with("resize_ready") {
            break line;
        }
    };
    assert_eq!(line, format!("resize_ready {}", (64 << 20) / 512));

    let control = control.to_str().unwrap();
    let (code, stderr) = run_vblkd(&["ctl", "--control", control, "resize", "32M"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("refusing to shrink"), "{stderr}");
    let (code, stderr) = run_vblkd(&["ctl", "--control", control, "resize", "96M"]);
    assert_eq!(code, 0, "{stderr}");

    let resized = guest.next(limit, "the guest sees the new size");
    assert_eq!(resized, format!("resized {}", (96 << 20) / 512));
    let mut report = std::collections::HashMap::new();
    while report.len() < 2 {
        let line = guest.next(limit, "the guest writes past the old end");
        assert!(!line.starts_with("error"), "{line}");
        if let Some((k, v)) = line.split_once(' ') {
            report.insert(k.to_owned(), v.to_owned());
        }
    }
    assert_eq!(report["readback_beyond"], report["pattern"]);
    guest.wait_exit();
    assert!(daemon.stop().success());
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 96 << 20);
    let pattern = std::fs::read(support::guest::guest_cache().join("pattern.bin")).unwrap();
    let file = std::fs::read(&disk).unwrap();
    assert!(
        file[64 << 20..(64 << 20) + pattern.len()] == pattern[..],
        "the file past the old end differs from what the guest wrote"
    );
}
