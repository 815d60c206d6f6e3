//! Live migration: dirty-page logging as the frontend sees it in its log, image locking
//! against vblkd, qemu-storage-daemon and QEMU's rules, and whole migrations of a QEMU guest
//! between two vblkd daemons on one image.

use std::path::Path;
use std::process::{Command, Stdio};

use support::frontend::{
    chain, disk_with_pattern, take_dirty_pages, Guest, Setup, DATA, HDR, STATUS,
};
use support::{run_vblkd, Daemon};
use vblkd::blk::layout::status;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

use support::desc::WRITE as W;
use vhost::VhostBackend;

/// The guest pages the test frontend's rings and buffers sit on.
const USED_PAGE: u64 = 0x2000 / 4096;
const DATA_PAGE: u64 = DATA / 4096;
const STATUS_PAGE: u64 = STATUS / 4096;

#[test]
fn while_logging_every_page_the_daemon_writes_is_marked_and_only_then() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    for aio in ["io_uring", "native", "threads"] {
        let daemon = Daemon::start(
            dir.path(),
            &[
                "--disk",
                disk.to_str().unwrap(),
                "--aio",
                aio,
                "--locking",
                "off",
            ],
        );
        let mut guest = Guest::attach_with(
            &daemon.socket,
            Setup {
                dirty_log: true,
                ..Setup::default()
            },
        );
        // The daemon may write the used ring's flags as logging starts (it serves the ring's
        // first event): start from a clean log.
        let log = guest.start_dirty_log();
        take_dirty_pages(&log);

        // A read: the kernel writes the data page, the daemon the status byte and the used
        // ring; the header page it only reads.
        let (st, got) = guest.read(2, 4096);
        assert_eq!(
            (st, &got[..]),
            (status::OK, &data[1024..1024 + 4096]),
            "{aio}"
        );
        assert_eq!(
            take_dirty_pages(&log),
            [USED_PAGE, DATA_PAGE, STATUS_PAGE],
            "{aio}: a read"
        );

        // A write, a flush: status and used ring only (the data was read from the guest).
        guest.header(VIRTIO_BLK_T_OUT, 1000);
        let used = guest.submit(
            &chain(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]),
            &[0],
            1,
        );
        assert_eq!(used, vec![(0, 1)], "{aio}");
        assert_eq!(
            take_dirty_pages(&log),
            [USED_PAGE, STATUS_PAGE],
            "{aio}: a write"
        );
        guest.header(VIRTIO_BLK_T_FLUSH, 0);
        guest.submit(&chain(&[(HDR, 16, 0), (STATUS, 1, W)]), &[0], 1);
        assert_eq!(guest.status(), status::OK);
        assert_eq!(
            take_dirty_pages(&log),
            [USED_PAGE, STATUS_PAGE],
            "{aio}: a flush"
        );

        // GET_ID: the daemon copies the serial itself.
        guest.header(VIRTIO_BLK_T_GET_ID, 0);
        guest.submit(
            &chain(&[(HDR, 16, 0), (DATA, 20, W), (STATUS, 1, W)]),
            &[0],
            1,
        );
        assert_eq!(guest.status(), status::OK);
        assert_eq!(
            take_dirty_pages(&log),
            [USED_PAGE, DATA_PAGE, STATUS_PAGE],
            "{aio}: GET_ID"
        );

        // Logging off (a migration that ended or was cancelled): nothing more is marked. (The
        // used ring's flags may still be written as the last request's round ends, while the
        // log was on; the data and status pages are written by this read alone.)
        guest.stop_dirty_log();
        assert_eq!(guest.read(4, 4096).0, status::OK);
        let dirty = take_dirty_pages(&log);
        assert!(
            !dirty.contains(&DATA_PAGE) && !dirty.contains(&STATUS_PAGE),
            "{aio}: logging off, yet {dirty:?}"
        );
        drop(guest);
        assert!(daemon.stop().success());
    }
}

/// Waits until /proc/locks lists no lock on `path`'s inode: the kernel closes an exited
/// process's io_uring files (and so drops their locks) a moment after it exits.
fn wait_unlocked(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ino = format!(":{} ", std::fs::metadata(path).unwrap().ino());
    support::eventually("the image's locks going", support::limits::REPLY, || {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        !locks.lines().any(|l| l.contains(&ino))
    });
}

/// Starts `vblkd serve` on `disk` with `extra` and returns its exit code and stderr, for one
/// that must refuse to start.
fn refused(dir: &Path, disk: &Path, extra: &[&str]) -> String {
    let socket = dir.join("refused.sock");
    let mut args = vec![
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--disk",
        disk.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, stderr) = run_vblkd(&args);
    assert_eq!(code, 2, "vblkd {extra:?} started: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

/// qemu-storage-daemon exporting `disk` (writable), or why it did not start.
fn qsd(dir: &Path, disk: &Path) -> std::process::Child {
    let socket = dir.join("qsd.sock");
    Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={},cache.direct=on",
            disk.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
            socket.display()
        ))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-storage-daemon runs (apt-get install qemu-system-x86)")
}

#[test]
#[ignore = "needs qemu-storage-daemon (Debian's qemu-system-x86)"]
fn a_writer_excludes_every_other_writer_and_readers_share() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, _) = disk_with_pattern(dir.path());
    let disk_s = disk.to_str().unwrap();

    // vblkd first: a second vblkd, a read-only one and qemu-storage-daemon are refused.
    let daemon = Daemon::start(dir.path(), &["--disk", disk_s]);
    let e = refused(dir.path(), &disk, &[]);
    assert!(
        e.contains(&format!("process ({}, vblkd)", daemon.pid())),
        "{e}"
    );
    assert!(
        e.contains("keeps \"write\" for itself") && e.contains("--locking off"),
        "{e}"
    );
    let e = refused(dir.path(), &disk, &["--read-only"]);
    assert!(
        e.contains("holds \"write\", which this vblkd does not share"),
        "{e}"
    );
    let out = qsd(dir.path(), &disk).wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "qemu-storage-daemon started beside vblkd"
    );
    let qsd_says = String::from_utf8_lossy(&out.stderr);
    assert!(
        qsd_says.contains("Failed to get \"write\" lock"),
        "{qsd_says}"
    );
    assert_eq!(daemon.info().image_lock.as_deref(), Some("held"));
    assert!(daemon.stop().success());
    wait_unlocked(&disk);

    // qemu-storage-daemon first: vblkd is refused, saying who holds the image.
    let mut peer = qsd(dir.path(), &disk);
    support::eventually("qsd's socket appearing", support::limits::REPLY, || {
        dir.path().join("qsd.sock").exists()
    });
    let e = refused(dir.path(), &disk, &[]);
    assert!(
        e.contains("qemu-storage-da") && e.contains("holds \"write\""),
        "{e}"
    );
    // ... unless told that the image is shared on purpose.
    let unlocked = Daemon::start(dir.path(), &["--disk", disk_s, "--locking", "off"]);
    assert_eq!(unlocked.info().image_lock.as_deref(), Some("off"));
    assert!(unlocked.stop().success());
    peer.kill().unwrap();
    peer.wait().unwrap();
    wait_unlocked(&disk);

    // Read-only users share, and keep writers out.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let first = Daemon::start(&a, &["--disk", disk_s, "--read-only"]);
    let second = Daemon::start(&b, &["--disk", disk_s, "--read-only"]);
    let e = refused(dir.path(), &disk, &[]);
    assert!(e.contains("keeps \"write\" for itself"), "{e}");
    assert!(second.stop().success() && first.stop().success());
    wait_unlocked(&disk);

    // Nothing holds it now.
    let last = Daemon::start(dir.path(), &["--disk", disk_s]);
    assert!(last.stop().success());
}

#[test]
fn an_incoming_daemon_takes_the_image_only_when_its_frontend_starts() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let disk_s = disk.to_str().unwrap();
    let source_dir = dir.path().join("source");
    std::fs::create_dir(&source_dir).unwrap();
    let source = Daemon::start(&source_dir, &["--disk", disk_s]);
    // The destination of a migration starts beside the source, without the locks.
    let destination = Daemon::start(dir.path(), &["--disk", disk_s, "--incoming"]);
    assert_eq!(destination.info().image_lock.as_deref(), Some("released"));

    // The source's frontend logs, then stops its ring: the switch-over gives the image up.
    let mut guest = Guest::attach_with(
        &source.socket,
        Setup {
            dirty_log: true,
            ..Setup::default()
        },
    );
    let _log = guest.start_dirty_log();
    assert_eq!(guest.read(2, 4096).1, data[1024..1024 + 4096]);
    guest.frontend.get_vring_base(0).unwrap();
    assert_eq!(source.info().image_lock.as_deref(), Some("released"));

    // The destination's frontend starts the device: it takes the image and serves it.
    let mut moved = Guest::attach(&destination.socket);
    assert_eq!(moved.read(2, 4096).1, data[1024..1024 + 4096]);
    assert_eq!(destination.info().image_lock.as_deref(), Some("held"));

    // A cancelled migration would restart the source's ring: with the image taken, the
    // source refuses to serve, failing the guest's requests rather than writing beside it.
    guest.stop_dirty_log();
    guest.start_ring(guest.avail_idx());
    guest.header(VIRTIO_BLK_T_IN, 2);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 4096, W), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 1)], status::IOERR));
    assert_eq!(source.info().image_lock.as_deref(), Some("released"));
    drop(moved);
    assert!(destination.stop().success());
    wait_unlocked(&disk);
    // Once the destination is gone, a restart of the source's ring takes it back.
    guest.frontend.get_vring_base(0).unwrap();
    guest.start_ring(guest.avail_idx());
    assert_eq!(
        guest.read(2, 4096),
        (status::OK, data[1024..1024 + 4096].to_vec())
    );
    assert_eq!(source.info().image_lock.as_deref(), Some("held"));
    drop(guest);
    assert!(source.stop().success());
}
