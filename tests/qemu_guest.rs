//! A real QEMU guest (Debian kernel, busybox initramfs, TCG) uses a vblkd disk through
//! `vhost-user-blk-pci`: it writes a known pattern with O_DIRECT at both ends of the disk and
//! in single sectors, reads it back, and switches the write cache off through the WCE config
//! byte. The host then checks that its file holds the same bytes. Once per aio mode.

mod common;

use common::guest::check_guest;
use common::Daemon;

fn guest_test(aio: &str) {
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
    // GET_ID returns the file name by default.
    check_guest(daemon, || std::fs::read(&disk).unwrap(), Some("disk.img"));
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
