//! A disk that fills up (`--werror`) or fails reads (`--rerror`): under a `stop` policy the
//! failed request is held, the disk pauses, and `vblkd ctl resume` does it again once the
//! cause is gone; under `report` the guest gets the error. The disk is an image on a tmpfs the
//! test mounts, small enough to fill, and grown (`mount -o remount,size=`) to recover.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use crate::control::{sample, scrape};
use support::frontend::{assert_slot_blocks, slot_block, Guest, Setup};
use support::guest::{assert_fill_read_back, guest_cache, RunningGuest};
use support::{eventually, limits, Client, Daemon};
use vblkd::queue::Counter;
use vblkd::service::status::Command;

/// A tmpfs of its own, unmounted when dropped.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        let path = dir.join("fs");
        std::fs::create_dir(&path).unwrap();
        let options = format!("size={size}");
        let status = Process::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallFs { path }
    }

    fn grow(&self, size: &str) {
        let options = format!("remount,size={size}");
        let status = Process::new("mount")
            .args(["-o", &options])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn image(&self) -> PathBuf {
        self.path.join("disk.img")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Process::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn image_arg(fs: &SmallFs) -> String {
    fs.image().to_str().unwrap().to_owned()
}

/// A QEMU guest writes 16 MiB to a 64 MiB image on an 8 MiB file system. The disk fills, the
/// daemon pauses (saying why), the guest waits; the file system grows, `ctl resume`, and the
/// guest's writes complete without an error and read back as written.
#[test]
#[ignore = "needs root (a small tmpfs), QEMU and the test guest"]
fn a_guest_that_fills_the_disk_waits_and_carries_on_after_resume() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fs = SmallFs::mount(dir.path(), "8M");
    let image = image_arg(&fs);
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", &image, "--size", "64M", "--num-queues", "2"],
    );
    let guest = RunningGuest::start(&daemon.socket, "fill");
    let mut seen = Vec::new();
    loop {
        let line = guest.next(limits::GUEST_BOOT, "the guest boots");
        seen.push(line.clone());
        if line == "fill_start" {
            break;
        }
    }
    let deadline = limits::GUEST_BOOT;
    eventually("the daemon pausing the disk", deadline, || {
        daemon.info().paused.is_some()
    });
    let cause = daemon.info().paused.unwrap();
    eprintln!("paused: {cause}");
    assert_eq!(
        (cause.errno, cause.operation.as_str()),
        (libc::ENOSPC, "write")
    );
    assert!(cause.error.contains("No space left"), "{cause:?}");
    let stats = daemon.stats();
    assert!(stats.total.count(Counter::HeldOnError) > 0);
    assert_eq!(stats.total.count(Counter::IoErrors), 0);
    assert_eq!(stats.paused, Some(cause.clone()));

    fs.grow("128M");
    let reply = daemon.ctl(&Command::Resume);
    assert_eq!(reply["was_paused"]["errno"], libc::ENOSPC);
    let waiting_for = "the guest writes and reads back";
    let (report, rest) = guest.report_until_done(limits::GUEST_RUN, waiting_for);
    seen.extend(rest);
    guest.wait_exit();
    eprintln!("what the guest saw: {seen:?}");
    assert_fill_read_back(&report);
    let log = daemon.log();
    assert_eq!(log.matches("disk paused").count(), 1, "{log}");
    assert!(daemon.info().paused.is_none());
    assert!(daemon.stop().success());
    let pattern = std::fs::read(guest_cache().join("pattern.bin")).unwrap();
    let file = std::fs::read(fs.image()).unwrap();
    for i in 0..4 {
        let at = i * pattern.len();
        assert!(
            file[at..at + pattern.len()] == pattern[..],
            "copy {i} on disk"
        );
    }
}

/// With `--werror report`, what QEMU's exports do: writes past the free space fail with
/// VIRTIO_BLK_S_IOERR, and the disk does not pause.
#[test]
#[ignore = "needs root (a small tmpfs)"]
fn with_werror_report_writes_to_a_full_disk_fail() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fs = SmallFs::mount(dir.path(), "4M");
    let image = image_arg(&fs);
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", &image, "--size", "16M", "--werror", "report"],
    );
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    let chunk = vec![0x5a; 1 << 20];
    let results: Vec<i32> = (0..16)
        .map(|i| client.write_sync(0, i << 20, &chunk))
        .collect();
    eprintln!("results of 16 writes of 1 MiB: {results:?}");
    assert_eq!(results[0], 0, "the first fits");
    assert!(
        results.iter().any(|&r| r != 0),
        "some must fail: {results:?}"
    );
    let stats = daemon.stats();
    assert!(stats.total.count(Counter::IoErrors) > 0);
    assert_eq!(stats.total.count(Counter::HeldOnError), 0);
    assert!(daemon.info().paused.is_none());
    drop(client);
    assert!(daemon.stop().success());
}

const WRITES: u16 = 32;

/// Fills the file system holding the image, so that no write to a new part of it fits.
fn fill(fs: &SmallFs) -> PathBuf {
    use std::io::Write;
    let filler = fs.path.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![1u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    filler
}

/// A daemon killed while paused, and started again, does the held requests: they are in the
/// in-flight tracking buffer the frontend keeps, as a crash's requests are.
#[test]
#[ignore = "needs root (a small tmpfs)"]
fn a_daemon_killed_while_paused_does_the_held_requests_when_it_starts_again() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fs = SmallFs::mount(dir.path(), "4M");
    let image = image_arg(&fs);
    let args = ["--disk", &image, "--size", "16M", "--queue-size", "128"];
    std::fs::File::create(fs.image()).unwrap();
    let filler = fill(&fs);
    let daemon = Daemon::start(dir.path(), &args);
    let mut guest = Guest::attach_with(
        &daemon.socket,
        Setup {
            queue_size: 128,
            inflight: Some(None),
            ..Setup::default()
        },
    );
    let heads: Vec<u16> = (0..WRITES)
        .map(|slot| guest.place_request(slot, u64::from(slot) * 8, Some(&slot_block(slot))))
        .collect();
    guest.make_available(&heads);
    guest.kick.write(1).unwrap();
    // The first failure pauses the disk: what the daemon took fails and is held, the rest
    // stays in the ring.
    daemon.wait_for_info("the disk pausing", |i| i.paused.is_some());
    let stats = daemon.wait_for_stats("every request taken held", |s| {
        s.total.in_flight == s.total.count(Counter::HeldOnError)
    });
    let held = stats.total.count(Counter::HeldOnError);
    assert!(held > 0);
    assert_eq!(guest.used_idx(), 0, "nothing completed");
    let log = daemon.kill();
    assert!(!log.contains("panicked"), "{log}");
    let memory = guest.mem_file.try_clone().unwrap();
    let inflight = guest.inflight.take();
    drop(guest);

    std::fs::remove_file(filler).unwrap();
    let daemon = Daemon::start(dir.path(), &args);
    let mut guest = Guest::attach_with(
        &daemon.socket,
        Setup {
            queue_size: 128,
            inflight: Some(inflight),
            memory: Some(memory),
            base: 0,
            ..Setup::default()
        },
    );
    let done = guest.wait_used(usize::from(WRITES));
    assert_eq!(done.len(), usize::from(WRITES));
    for slot in 0..WRITES {
        assert_eq!(guest.slot_status(slot), 0, "write {slot}");
    }
    drop(guest);
    let stats = daemon.stats();
    assert_eq!(stats.total.count(Counter::Resubmitted), held);
    assert!(daemon.stop().success());
    assert_slot_blocks(&std::fs::read(fs.image()).unwrap(), WRITES);
}

/// What `ctl resume` says when there is nothing to resume, and how a resume that fails again
/// pauses again.
#[test]
#[ignore = "needs root (a small tmpfs)"]
fn a_resume_that_fails_again_pauses_again() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fs = SmallFs::mount(dir.path(), "4M");
    let image = image_arg(&fs);
    std::fs::File::create(fs.image()).unwrap();
    let filler = fill(&fs);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", &image, "--size", "16M", "--metrics", &metrics],
    );
    let control = daemon.control.to_str().unwrap().to_owned();
    let (code, stderr) = support::run_vblkd(&["ctl", "--control", &control, "resume"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not paused"), "{stderr}");
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    let buf = client.buffer_ptr(0);
    client.buffers()[..4096].fill(0x33);
    client.queues[0].write(0, buf, 4096, 7, blkio::ReqFlags::empty());
    client.submit(0);
    daemon.wait_for_info("a pause", |i| i.paused.is_some());
    assert!(daemon.wait_for_notify(
        "STATUS=paused: a write at offset 0 on queue 0 failed: No space left on device (os \
         error 28); see vblkd ctl info"
    ));
    assert_eq!(sample(&scrape(&metrics), "vblkd_paused"), 1);
    // Resumed without freeing space: it fails again, and pauses again.
    let (code, stdout) = support::run_vblkd(&["ctl", "--control", &control, "resume"]);
    assert_eq!(code, 0, "{stdout}");
    daemon.wait_for_stats("the write held twice", |s| {
        s.total.count(Counter::HeldOnError) == 2
    });
    assert!(daemon.info().paused.is_some());
    std::fs::remove_file(filler).unwrap();
    daemon.ctl(&Command::Resume);
    assert_eq!(client.wait(0, 1), [(7, 0)]);
    assert!(daemon.info().paused.is_none());
    assert!(daemon.wait_for_notify("STATUS=serving (resumed)"));
    assert_eq!(sample(&scrape(&metrics), "vblkd_paused"), 0);
    drop(client);
    assert!(daemon.stop().success());
    assert_eq!(std::fs::read(fs.image()).unwrap()[..4096], [0x33; 4096]);
}
