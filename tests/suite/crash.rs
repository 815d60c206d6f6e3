//! A crash or an upgrade loses no request: a real QEMU guest (TCG) keeps stamped O_DIRECT
//! writes, flushes and reads in flight on a vblkd disk (qemu-scripts/guest-workload) while the
//! host SIGKILLs the daemon again and again (and sometimes stops it with SIGTERM, as an
//! upgrade would) and starts a new one on the same socket and disk.
//! QEMU reconnects (`reconnect=1`) and hands the new daemon the in-flight buffer, which
//! resubmits what its predecessor had taken but not completed. At the end the guest reads
//! everything back. Pass: no I/O error in the guest, no hang, every acknowledged write on disk.
//!
//! The disk is a loop device throttled to a few hundred operations per second, so the guest's
//! 16 threads always have requests queued and in flight when a kill comes, and reads, writes
//! and flushes complete out of order.
//!
//! The same test runs on a Ceph RBD image (a single-node cluster the test starts), where
//! requests stay in flight because every one is a network round trip to the OSD.
//!
//! `VBLKD_CRASH_PEER=qsd` runs the file test against qemu-storage-daemon, which has no
//! in-flight tracking; docs/reliability.md records what happens.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::blockdev::SlowDisk;
use support::ceph::Cluster;
use support::guest::RunningGuest;
use support::{limits, Daemon};
use vblkd::queue::Counter;

/// How many times the daemon is killed (SIGKILL)...
const KILLS: usize = 15;
/// ... and, between those, how many times it is upgraded (SIGTERM: it finishes what is in
/// flight and exits; the next one takes over).
const UPGRADES: usize = 5;
/// Acknowledged writes each daemon must serve before it is killed: proof that the guest's I/O
/// resumed, and enough that many requests are in flight.
const WRITES_PER_LIFE: u64 = 60;
const IOPS: u32 = 300;

/// The daemon under test, restartable.
enum Peer {
    Vblkd(Daemon),
    Qsd(Child),
}

/// What the daemons serve.
enum Backing {
    /// A throttled loop device.
    Slow(SlowDisk),
    /// An RBD image (`--disk` spec), and the cluster it lives on, kept running.
    Rbd { spec: String, _cluster: Cluster },
}

fn start_peer(qsd: bool, dir: &Path, backing: &Backing) -> Peer {
    let disk = match backing {
        Backing::Slow(disk) => disk,
        Backing::Rbd { spec, .. } => {
            return Peer::Vblkd(Daemon::start(dir, &["--disk", spec, "--num-queues", "2"]));
        }
    };
    let peer = if qsd {
        let socket = dir.join("vblkd.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=host_device,node-name=disk,filename={},cache.direct=on,aio=io_uring",
                disk.path()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=disk,addr.type=unix,addr.path={},\
                 writable=on,num-queues=2",
                socket.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon runs (apt-get install qemu-system-x86)");
        // It says nothing when it is ready; its socket appearing is the sign.
        support::eventually("qsd's socket appearing", limits::REPLY, || socket.exists());
        Peer::Qsd(child)
    } else {
        Peer::Vblkd(Daemon::start(
            dir,
            &["--disk", disk.path(), "--num-queues", "2"],
        ))
    };
    let pid = match &peer {
        Peer::Vblkd(d) => d.pid(),
        Peer::Qsd(c) => c.id(),
    };
    disk.throttle.add(pid);
    peer
}

/// What a stopped daemon leaves behind: its log, and how many of its queues found requests
/// in flight when their rings started (vblkd only).
struct Life {
    log: String,
    queues_resubmitting: usize,
}

/// SIGKILL, or SIGTERM for a `graceful` stop (which must then exit 0).
fn kill_peer(peer: Peer, graceful: bool) -> Life {
    let resubmitting = |d: &Daemon| {
        let stats = d.stats();
        let queues = stats.queues.iter();
        queues.filter(|q| q.count(Counter::Resubmitted) > 0).count()
    };
    match peer {
        Peer::Vblkd(d) if graceful => {
            let queues_resubmitting = resubmitting(&d);
            let (status, log) = d.stop_with_log();
            assert!(
                status.success(),
                "vblkd exited with {status} on SIGTERM:\n{log}"
            );
            Life {
                log,
                queues_resubmitting,
            }
        }
        Peer::Vblkd(d) => {
            let queues_resubmitting = resubmitting(&d);
            Life {
                log: d.kill(),
                queues_resubmitting,
            }
        }
        Peer::Qsd(mut c) => {
            let signal = if graceful {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            // SAFETY: signalling our own child.
            unsafe { libc::kill(i32::try_from(c.id()).unwrap(), signal) };
            c.wait().unwrap();
            Life {
                log: String::new(),
                queues_resubmitting: 0,
            }
        }
    }
}

/// The number after `key=` in a report line. Kernel messages on the same console may run into
/// the line right after the number.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.split(|c: char| !c.is_ascii_digit()).next().unwrap_or(""))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// What the guest reported so far.
struct Progress {
    writes: u64,
    errors: Vec<String>,
}

impl Progress {
    /// Reads report lines until the guest has had [`WRITES_PER_LIFE`] more writes
    /// acknowledged; fails if that takes longer than [`limits::STALL`].
    fn serve(&mut self, guest: &RunningGuest, what: &str) {
        let target = self.writes + WRITES_PER_LIFE;
        let deadline = std::time::Instant::now() + limits::STALL;
        while self.writes < target {
            assert!(
                std::time::Instant::now() < deadline,
                "the guest's writes stalled at {} for {:?} while {what}; errors: \
                 {:#?}",
                self.writes,
                limits::STALL,
                self.errors
            );
            let line = guest.next(limits::STALL, what);
            if line.starts_with("progress") {
                self.writes = field(&line, "writes");
            } else if line.starts_with("error") {
                self.errors.push(line);
            } else {
                assert_ne!(line, "done", "the guest gave up while {what}");
            }
        }
    }
}

#[test]
#[ignore = "needs root and QEMU"]
fn a_qemu_guest_survives_repeated_daemon_crashes() {
    let qsd = std::env::var("VBLKD_CRASH_PEER").is_ok_and(|p| p == "qsd");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let backing = Backing::Slow(SlowDisk::new(dir.path(), 64 << 20, IOPS));
    crash_test(qsd, dir.path(), &backing);
}

#[test]
#[ignore = "needs root, QEMU and Ceph"]
fn a_qemu_guest_on_an_rbd_disk_survives_repeated_daemon_crashes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = Cluster::start(dir.path());
    // Without exclusive-lock: with it, a crashed daemon's lock is only broken once its watch
    // on the image expires (30 s), and every restart would wait for that.
    let image = format!("{}/crash", support::ceph::POOL);
    cluster.rbd(&[
        "create",
        "--size",
        "64M",
        "--image-feature",
        "layering",
        &image,
    ]);
    let spec = cluster.disk("crash");
    let backing = Backing::Rbd {
        spec,
        _cluster: cluster,
    };
    crash_test(false, dir.path(), &backing);
}

fn crash_test(qsd: bool, dir: &Path, backing: &Backing) {
    let mut peer = start_peer(qsd, dir, backing);
    let mut guest = RunningGuest::start(&dir.join("vblkd.sock"), "crash");

    let mut run = Progress {
        writes: 0,
        errors: Vec::new(),
    };
    loop {
        let line = guest.next(limits::GUEST_BOOT, "the guest boots");
        assert!(!line.starts_with("error"), "{line}");
        if line == "crash_started" {
            break;
        }
    }
    let (mut logs, mut resubmissions) = (String::new(), 0);
    let mut ended = |life: Life| {
        logs += &life.log;
        resubmissions += life.queues_resubmitting;
    };
    // Every fourth restart is an upgrade, the others crashes.
    for life in 1..=KILLS + UPGRADES {
        run.serve(&guest, &format!("I/O resumes before restart {life}"));
        ended(kill_peer(peer, life % 4 == 0));
        peer = start_peer(qsd, dir, backing);
    }
    run.serve(&guest, "I/O resumes after the last kill");
    guest.send("stop");
    let mut result = None;
    while result.is_none() {
        let line = guest.next(limits::STALL, "the guest verifies its writes");
        if line.starts_with("crash_result") {
            result = Some(line);
        } else if line.starts_with("error") {
            run.errors.push(line);
        }
    }
    let result = result.unwrap();
    let rest = guest.wait_exit();
    let mut errors = run.errors;
    errors.extend(rest.into_iter().filter(|l| l.starts_with("error")));
    ended(kill_peer(peer, true));

    eprintln!(
        "crash test: {KILLS} kills, {UPGRADES} upgrades; guest: {result}; {resubmissions} queue \
         restarts resubmitted requests"
    );
    assert!(errors.is_empty(), "the guest saw errors: {errors:#?}");
    assert_eq!(field(&result, "errors"), 0, "{result}");
    assert!(field(&result, "verified") > 0, "{result}");
    assert!(field(&result, "flushes") > 0, "{result}");
    if !qsd {
        assert!(!logs.contains("panicked"), "{logs}");
        // The kills came with requests in flight, not between them.
        assert!(
            resubmissions >= KILLS / 2,
            "only {resubmissions} queue restarts found requests in flight after {KILLS} kills: \
             the kills did not come mid-I/O"
        );
    }
}
