//! vblkd as an ATA-over-Ethernet initiator against a real target: vblade serving a file in one
//! network namespace, vblkd in another, joined by a veth pair the test creates (traffic never
//! leaves them). Data is verified through the daemon and in the file vblade serves.
//!
//! Needs root, iproute2 and vblade (scripts/setup installs them); without them the tests fail
//! with a message saying so.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aoe::frame::{self, AtaArg, Header, ATA_HEADER_LEN, ATA_READ_EXT, CMD_ATA, FLAG_RESPONSE};
use aoe::socket::RawSocket;
use blkio::ReqFlags;
use support::frontend::{Guest, Setup};
use support::limits;
use support::workload::{random_io, BUFFER_BYTES};
use support::{first_difference, pattern_byte, Client, Daemon, Rng};
use vblkd::queue::Counter;
use vblkd::service::status::Stats;

pub(crate) const DISK_BYTES: usize = 64 << 20;
const SHELF: &str = "3";
const SLOT: &str = "7";

/// What serves the disk on the target's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Vblade,
    /// `vblkd aoe-export` with these extra arguments.
    Vblkd(Vec<String>),
}

/// The target that runs now.
enum RunningTarget {
    Vblade(Child),
    Vblkd(Daemon),
}

/// Two namespaces, a veth pair between them, a target (vblade, or vblkd's own) on one end. A
/// lossy rig puts a relay namespace in the middle instead (see [`Relay`]).
pub(crate) struct Rig {
    pub(crate) ns_target: String,
    pub(crate) ns_initiator: String,
    ns_relay: Option<String>,
    if_target: String,
    if_initiator: String,
    pub(crate) file: PathBuf,
    dir: PathBuf,
    kind: TargetKind,
    target: Option<RunningTarget>,
    pub(crate) relay: Option<Relay>,
}

/// Runs a network or vblade command; these tests need root.
fn run(cmd: &[&str]) {
    support::run_tool(
        cmd,
        "these tests need root, iproute2 and vblade, which scripts/setup installs",
    );
}

fn veth(ns_a: &str, dev_a: &str, ns_b: &str, dev_b: &str, mtu: u32) {
    run(&[
        "ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns",
        ns_b,
    ]);
    for (ns, dev) in [(ns_a, dev_a), (ns_b, dev_b)] {
        run(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            dev,
            "mtu",
            &mtu.to_string(),
            "up",
        ]);
    }
}

impl Rig {
    fn new(dir: &Path, mtu: u32) -> Rig {
        Self::build(dir, mtu, false, TargetKind::Vblade)
    }

    /// A rig whose path drops, duplicates and reorders frames.
    fn lossy(dir: &Path, mtu: u32) -> Rig {
        Self::build(dir, mtu, true, TargetKind::Vblade)
    }

    /// A rig with `kind` as its target, on a lossy path if `lossy`.
    pub(crate) fn build(dir: &Path, mtu: u32, lossy: bool, kind: TargetKind) -> Rig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = format!(
            "{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut rig = Rig {
            ns_target: format!("vblkd-t{n}"),
            ns_initiator: format!("vblkd-i{n}"),
            ns_relay: lossy.then(|| format!("vblkd-r{n}")),
            if_target: "aoe-t".into(),
            if_initiator: "aoe-i".into(),
            file: dir.join("vblade.img"),
            dir: dir.to_owned(),
            kind,
            target: None,
            relay: None,
        };
        run(&["ip", "netns", "add", &rig.ns_target]);
        // For a target's metrics endpoint on 127.0.0.1.
        run(&["ip", "-n", &rig.ns_target, "link", "set", "lo", "up"]);
        run(&["ip", "netns", "add", &rig.ns_initiator]);
        match &rig.ns_relay {
            None => veth(
                &rig.ns_target,
                &rig.if_target,
                &rig.ns_initiator,
                &rig.if_initiator,
                mtu,
            ),
            Some(relay) => {
                run(&["ip", "netns", "add", relay]);
                veth(&rig.ns_target, &rig.if_target, relay, "r-t", mtu);
                veth(&rig.ns_initiator, &rig.if_initiator, relay, "r-i", mtu);
                rig.relay = Some(Relay::start(relay.clone()));
            }
        }
        let data: Vec<u8> = (0..DISK_BYTES).map(|i| pattern_byte(i, 7)).collect();
        std::fs::write(&rig.file, data).unwrap();
        rig.start_target();
        rig
    }

    /// Starts the rig's target; vblkd's is ready (READY=1) when this returns.
    pub(crate) fn start_target(&mut self) {
        let TargetKind::Vblkd(extra) = &self.kind else {
            self.start_vblade();
            return;
        };
        let export = format!("e{SHELF}.{SLOT}={}", self.file.display());
        let mut args = vec!["--interface", &self.if_target, &export];
        args.extend(extra.iter().map(String::as_str));
        let wrapper = ["ip", "netns", "exec", &self.ns_target];
        self.target = Some(RunningTarget::Vblkd(Daemon::export_with(
            &wrapper, &self.dir, &args,
        )));
    }

    /// The running vblkd target.
    pub(crate) fn exporter(&self) -> &Daemon {
        match &self.target {
            Some(RunningTarget::Vblkd(daemon)) => daemon,
            _ => panic!("the rig's target is not vblkd"),
        }
    }

    /// Stops the target (vblkd's with SIGTERM, checked to exit cleanly) and makes `kind` the
    /// one [`Rig::start_target`] starts.
    pub(crate) fn switch_target(&mut self, kind: TargetKind) {
        match self.target.take() {
            Some(RunningTarget::Vblkd(daemon)) => assert!(daemon.stop().success()),
            Some(RunningTarget::Vblade(child)) => {
                self.target = Some(RunningTarget::Vblade(child));
                self.kill_vblade();
            }
            None => {}
        }
        self.kind = kind;
    }

    fn start_vblade(&mut self) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_target,
                "vblade",
                SHELF,
                SLOT,
                &self.if_target,
            ])
            .arg(&self.file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vblade starts (apt-get install vblade)");
        self.target = Some(RunningTarget::Vblade(child));
    }

    fn kill_vblade(&mut self) {
        if let Some(RunningTarget::Vblade(mut v)) = self.target.take() {
            let _ = v.kill();
            let _ = v.wait();
        }
    }

    fn address(&self) -> String {
        format!("aoe://{}/e{SHELF}.{SLOT}", self.if_initiator)
    }

    /// vblkd in the initiator namespace, serving the target.
    pub(crate) fn daemon(&self, dir: &Path, extra: &[&str]) -> Daemon {
        let address = self.address();
        let mut args = vec!["--disk", &address, "--num-queues", "2"];
        args.extend_from_slice(extra);
        Daemon::start_with(&["ip", "netns", "exec", &self.ns_initiator], dir, &args)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.kill_vblade();
        drop(self.target.take());
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
        for ns in [
            Some(&self.ns_target),
            Some(&self.ns_initiator),
            self.ns_relay.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A lossy path, as netem would make it (this kernel has no netem): a thread in the relay
/// namespace forwards AoE frames between its two links, dropping 5 %, duplicating 2 % and
/// holding 25 % back behind the next frame in the same direction.
pub(crate) struct Relay {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<RelayStats>,
}

#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    forwarded: usize,
    pub(crate) dropped: usize,
    pub(crate) duplicated: usize,
    pub(crate) reordered: usize,
}

impl Relay {
    fn start(ns: String) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            // Requests travel r-i -> r-t, replies r-t -> r-i. Each socket also sees the frames
            // we send out of it; the response bit tells them apart.
            let links = [
                RawSocket::open("r-i").unwrap(),
                RawSocket::open("r-t").unwrap(),
            ];
            let mut held: [Option<Vec<u8>>; 2] = [None, None];
            let mut rng = Rng::new(0x1055);
            let mut stats = RelayStats::default();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                let mut idle = true;
                for from in 0..2 {
                    while let Some(n) = links[from].recv(&mut buf).unwrap() {
                        let is_reply = n > 14 && buf[14] & (FLAG_RESPONSE) != 0;
                        if is_reply != (from == 1) {
                            continue; // our own forwarded frame, seen going out
                        }
                        idle = false;
                        let out = &links[1 - from];
                        let send = |f: &[u8]| {
                            let _ = out.send(&[std::io::IoSlice::new(f)]);
                        };
                        match rng.below(100) {
                            0..=4 => stats.dropped += 1,
                            5..=6 => {
                                send(&buf[..n]);
                                send(&buf[..n]);
                                stats.duplicated += 1;
                            }
                            7..=31 if held[from].is_none() => {
                                held[from] = Some(buf[..n].to_vec());
                                stats.reordered += 1;
                            }
                            _ => {
                                send(&buf[..n]);
                                stats.forwarded += 1;
                            }
                        }
                        if !(7..=31).contains(&rng.below(100)) {
                            if let Some(f) = held[from].take() {
                                send(&f);
                            }
                        }
                    }
                }
                if idle {
                    for (from, slot) in held.iter_mut().enumerate() {
                        if let Some(f) = slot.take() {
                            let _ = links[1 - from].send(&[std::io::IoSlice::new(&f)]);
                        }
                    }
                    let _ = links[0].wait(Duration::from_millis(1));
                }
            }
            stats
        });
        Relay { stop, thread }
    }

    pub(crate) fn stop(self) -> RelayStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Random I/O through vblkd; then the disk read back through vblkd and the file vblade serves
/// must both equal the model.
pub(crate) fn verify_random_io(rig: &Rig, daemon: &Daemon) {
    let mut model = std::fs::read(&rig.file).unwrap();
    let mut client = Client::connect(&daemon.socket, 2, false, BUFFER_BYTES).unwrap();
    assert_eq!(client.capacity(), DISK_BYTES as u64);
    random_io(&mut client, &mut model, &mut Rng::new(0xa0e), 2);
    client.queues[0].flush(0, ReqFlags::empty());
    assert_eq!(client.wait(0, 1)[0].1, 0, "flush");
    let all = client.read_all(1, 4 << 20);
    if let Some(at) = first_difference(&all, &model) {
        panic!("disk read back through vblkd differs at byte {at}");
    }
    drop(client);
    let file = std::fs::read(&rig.file).unwrap();
    if let Some(at) = first_difference(&file, &model) {
        panic!("the file the target serves differs from what was written at byte {at}");
    }
}

/// Random I/O through vblkd at `mtu`, after checking the frame size it chose
/// (`sectors_per_frame`); returns what its queues counted.
fn random_io_at_mtu(mtu: u32, sectors_per_frame: u64) -> Stats {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rig = Rig::new(dir.path(), mtu);
    let daemon = rig.daemon(dir.path(), &[]);
    let info = daemon.info();
    assert_eq!(
        info.details["aoe_sectors_per_frame"], sectors_per_frame,
        "{info:?}"
    );
    verify_random_io(&rig, &daemon);
    let stats = daemon.stats();
    assert!(daemon.stop().success());
    stats
}

#[test]
#[ignore = "needs root and vblade"]
fn aoe_random_io_at_mtu_1500() {
    let stats = random_io_at_mtu(1500, 2);
    // Requests of up to 1 MiB at 2 sectors per frame keep far more than 16 frames queued, so
    // the engine must have gathered replies rather than woken for each.
    let periods = stats.total.engine_count("aoe_gathering_periods");
    assert!(periods > 0, "{stats:?}");
}

#[test]
#[ignore = "needs root and vblade"]
fn aoe_random_io_at_mtu_9000() {
    random_io_at_mtu(9000, 17);
}

#[test]
#[ignore = "needs root and vblade"]
fn aoe_survives_loss_reordering_and_duplicates() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::lossy(dir.path(), 9000);
    let daemon = rig.daemon(dir.path(), &[]);
    verify_random_io(&rig, &daemon);
    let live = daemon.stats();
    assert!(daemon.stop().success());
    let stats = rig.relay.take().unwrap().stop();
    eprintln!("relay: {stats:?}");
    assert!(
        stats.dropped > 10 && stats.duplicated > 5 && stats.reordered > 10,
        "the path was not lossy: {stats:?}"
    );
    // Every dropped frame (request or reply) is sent again once its timer runs out, and each
    // queue counts its own.
    let total = &live.total;
    let (frames, retransmitted) = (
        total.engine_count("aoe_frames"),
        total.engine_count("aoe_retransmitted"),
    );
    assert!(retransmitted > 0 && retransmitted < frames, "{live:?}");
    let per_queue: u64 = live
        .queues
        .iter()
        .map(|q| q.engine_count("aoe_frames"))
        .sum();
    assert_eq!(per_queue, frames, "{live:?}");
}

#[test]
#[ignore = "needs root and vblade"]
fn aoe_requests_fail_after_the_deadline_and_resume_when_the_target_returns() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::new(dir.path(), 1500);
    let mut daemon = rig.daemon(dir.path(), &["--aoe-deadline", "2"]);
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    assert_eq!(client.read_sync(0, 0, 4096), 0);

    // Target gone for longer than the deadline: the request fails, the daemon stays up.
    rig.kill_vblade();
    assert_ne!(
        client.read_sync(0, 8192, 4096),
        0,
        "a read with no target must fail"
    );
    assert!(daemon.is_running());

    // Target back: the same client reads correct data again.
    rig.start_vblade();
    assert_eq!(client.read_sync(0, 4096, 4096), 0);
    let expected: Vec<u8> = (4096..8192).map(|i| pattern_byte(i, 7)).collect();
    assert_eq!(&client.buffers()[..4096], &expected[..]);
    drop(client);
    assert!(daemon.stop().success());
}

/// `--user nobody` on an AoE disk keeps one capability, CAP_NET_RAW, for the raw sockets
/// each new frontend's engines open; I/O works across a reconnection.
#[test]
#[ignore = "needs root and vblade"]
fn aoe_as_another_user_keeps_only_cap_net_raw() {
    let dir = support::tempdir_for_another_user();
    let rig = Rig::new(dir.path(), 1500);
    let daemon = rig.daemon(dir.path(), &["--user", "nobody"]);
    for _ in 0..2 {
        // Each connection builds its engines, raw sockets included, after the user change.
        let mut client = Client::connect(&daemon.socket, 2, false, 1 << 20).unwrap();
        assert_eq!(client.read_sync(1, 4096, 4096), 0);
        let expected: Vec<u8> = (4096..8192).map(|i| pattern_byte(i, 7)).collect();
        assert_eq!(&client.buffers()[..4096], &expected[..]);
        drop(client);
        support::wait_for_disconnect(&daemon, daemon.info().frontend.connections);
    }
    for (name, uid, eff, prm) in crate::sandbox::identities(daemon.pid()) {
        assert_eq!(uid, "65534 65534 65534 65534", "{name}");
        assert_eq!(eff, "0000000000002000", "{name}: effective capabilities");
        assert_eq!(prm, "0000000000002000", "{name}: permitted capabilities");
    }
    assert!(daemon.stop().success());
}

/// With `--rerror stop`, a read the target does not answer by the deadline is held and the
/// disk paused, not failed; once the target is back, `ctl resume` reads it again and the
/// client gets the data.
#[test]
#[ignore = "needs root and vblade"]
fn aoe_with_rerror_stop_a_read_past_the_deadline_is_held_until_resumed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::new(dir.path(), 1500);
    let daemon = rig.daemon(dir.path(), &["--aoe-deadline", "1", "--rerror", "stop"]);
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    assert_eq!(client.read_sync(0, 0, 4096), 0);

    rig.kill_vblade();
    let buf = client.buffer_ptr(0);
    client.queues[0].read(8192, buf, 4096, 3, ReqFlags::empty());
    client.submit(0);
    let info = daemon.wait_for_info("the disk pausing", |i| i.paused.is_some());
    let cause = info.paused.unwrap();
    eprintln!("paused: {cause}");
    assert_eq!(
        (cause.operation.as_str(), cause.offset),
        ("read", Some(8192))
    );
    assert_eq!(daemon.stats().total.count(Counter::IoErrors), 0);

    rig.start_vblade();
    daemon.ctl(&vblkd::service::status::Command::Resume);
    assert_eq!(client.wait(0, 1), [(3, 0)], "the held read completes");
    let expected: Vec<u8> = (8192..12288).map(|i| pattern_byte(i, 7)).collect();
    assert_eq!(&client.buffers()[..4096], &expected[..]);
    assert!(daemon.info().paused.is_none());
    drop(client);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root and vblade"]
fn aoe_recovers_when_the_target_restarts_during_io() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::new(dir.path(), 1500);
    let daemon = rig.daemon(dir.path(), &[]);
    let mut client = Client::connect(&daemon.socket, 1, false, 4 << 20).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i| pattern_byte(i, 1) ^ 0x5a).collect();
    client.buffers()[..data.len()].copy_from_slice(&data);
    // A 1 MiB write in flight while vblade goes away for a while and comes back.
    rig.kill_vblade();
    let buf = client.buffer_ptr(0);
    client.queues[0].write(16 << 20, buf, data.len(), 0, ReqFlags::empty());
    let outage = std::thread::spawn(move || {
        // The outage itself: the point of the test, not a synchronisation.
        std::thread::sleep(Duration::from_millis(1500));
        rig.start_vblade();
        rig
    });
    assert_eq!(
        client.wait(0, 1)[0].1,
        0,
        "the write must complete after retransmission"
    );
    let rig = outage.join().unwrap();
    assert_eq!(client.read_sync(0, 16 << 20, data.len()), 0);
    assert!(
        client.buffers()[..data.len()] == data[..],
        "data read back differs"
    );
    drop(client);
    let file = std::fs::read(&rig.file).unwrap();
    assert!(
        file[16 << 20..(16 << 20) + data.len()] == data[..],
        "vblade's file differs"
    );
    assert!(daemon.stop().success());
}

/// In-flight tracking covers the AoE engine too: 32 writes left unanswered (vblade is gone),
/// vblkd SIGKILLed, vblade back, a new vblkd handed the frontend's in-flight buffer: every
/// write completes and lands in vblade's file.
#[test]
#[ignore = "needs root and vblade"]
fn aoe_requests_in_flight_at_a_crash_are_resubmitted() {
    const WRITES: u16 = 32;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::new(dir.path(), 9000);
    let daemon = rig.daemon(dir.path(), &["--queue-size", "128"]);
    let setup = |inflight, memory| Setup {
        queue_size: 128,
        inflight: Some(inflight),
        memory,
        ..Setup::default()
    };
    let mut guest = Guest::attach_with(&daemon.socket, setup(None, None));
    let block = |slot: u16| -> Vec<u8> {
        (0..4096)
            .map(|i| pattern_byte(i + usize::from(slot) * 31, 1))
            .collect()
    };
    rig.kill_vblade();
    let heads: Vec<u16> = (0..WRITES)
        .map(|slot| guest.place_request(slot, 64 + u64::from(slot) * 8, Some(&block(slot))))
        .collect();
    guest.make_available(&heads);
    guest.kick.write(1).unwrap();
    // The daemon marks each request before its first frame goes out.
    support::eventually("the daemon taking the requests", limits::REPLY, || {
        guest.heads_in_flight() >= usize::from(WRITES)
    });
    daemon.kill();
    assert_eq!(
        guest.used_idx(),
        0,
        "nothing can have completed without a target"
    );
    let (memory, inflight) = (guest.mem_file.try_clone().unwrap(), guest.inflight.take());
    drop(guest);

    rig.start_vblade();
    let daemon = rig.daemon(dir.path(), &["--queue-size", "128"]);
    let mut guest = Guest::attach_with(&daemon.socket, setup(inflight, Some(memory)));
    assert_eq!(
        guest.wait_used(usize::from(WRITES)).len(),
        usize::from(WRITES)
    );
    for slot in 0..WRITES {
        assert_eq!(guest.slot_status(slot), 0, "write {slot}");
    }
    drop(guest);
    assert_eq!(daemon.stats().total.count(Counter::Resubmitted), 32);
    assert!(daemon.stop().success());
    let file = std::fs::read(&rig.file).unwrap();
    for slot in 0..WRITES {
        let at = (64 + usize::from(slot) * 8) * 512;
        assert!(
            file[at..at + 4096] == block(slot)[..],
            "block {slot} in vblade's file"
        );
    }
}

/// Enters network namespace `ns` on the calling thread only.
pub(crate) fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: setns with a namespace fd we own; affects only this thread.
    let ret = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns");
}

/// A frontend that reconnects in a loop to an AoE disk: every connection builds new engines
/// (a raw socket, its receive ring and two timers each), and none of it may stay behind —
/// nor the engines' counters, which live per queue, not per connection.
#[test]
#[ignore = "needs root and vblade"]
fn aoe_reconnects_keep_memory_and_counters_flat() {
    const WARM_UP: u64 = 10;
    const CYCLES: u64 = 150;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rig = Rig::new(dir.path(), 1500);
    let daemon = rig.daemon(dir.path(), &[]);
    let pid = daemon.pid();
    let cycle = |i: u64| {
        let usage = {
            let mut guest = Guest::attach(&daemon.socket);
            let (status, data) = guest.read(8, 4096);
            assert_eq!(status, 0, "read in connection {i}");
            assert!(data
                .iter()
                .enumerate()
                .all(|(at, &b)| b == pattern_byte(8 * 512 + at, 7)));
            (support::open_fds(pid), support::rss_kib(pid))
        };
        support::wait_for_disconnect(&daemon, i + 1);
        usage
    };
    for i in 0..WARM_UP - 1 {
        cycle(i);
    }
    let (fds, rss) = cycle(WARM_UP - 1);
    for i in WARM_UP..WARM_UP + CYCLES {
        cycle(i);
    }
    let (fds_after, rss_after) = cycle(WARM_UP + CYCLES);
    eprintln!("{fds} fds, {rss} KiB resident; after {CYCLES} more: {fds_after}, {rss_after} KiB");
    assert_eq!(fds_after, fds, "open fds grew over {CYCLES} connections");
    assert!(
        rss_after <= rss + support::RSS_SLACK_KIB,
        "resident memory grew from {rss} to {rss_after} KiB over {CYCLES} connections"
    );
    // One set of counters per queue, counting every connection's frames: at 2 sectors per
    // frame each 4 KiB read is at least 4.
    let stats = daemon.stats();
    assert_eq!(stats.queues.len(), 2);
    let reads = WARM_UP + CYCLES + 1;
    assert_eq!(stats.queues[0].count(Counter::Reads), reads);
    assert!(
        stats.queues[0].engine_count("aoe_frames") >= 4 * reads,
        "{stats:?}"
    );
    assert_eq!(stats.queues[1].engine_count("aoe_frames"), 0, "{stats:?}");
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root and vblade"]
fn aoe_ignores_spoofed_replies() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rig = Rig::new(dir.path(), 1500);
    let daemon = rig.daemon(dir.path(), &[]);
    let target_mac = {
        let ns = rig.ns_target.clone();
        let dev = rig.if_target.clone();
        std::thread::spawn(move || {
            enter_netns(&ns);
            RawSocket::open(&dev).unwrap().mac
        })
        .join()
        .unwrap()
    };

    // From the target's side of the link, flood the initiator with read replies full of 0xEE
    // for every tag its engines will use: from the wrong MAC, for the wrong shelf or slot,
    // and with tags no engine uses.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let spoofer = {
        let (ns, dev, stop, sent) = (
            rig.ns_target.clone(),
            rig.if_target.clone(),
            stop.clone(),
            sent.clone(),
        );
        std::thread::spawn(move || {
            enter_netns(&ns);
            let socket = RawSocket::open(&dev).unwrap();
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                seq = seq % 4000 + 1;
                for (variant, engine) in (0..4).flat_map(|v| [(v, 0u32), (v, 1u32)]) {
                    let mut h = Header {
                        dst: frame::BROADCAST,
                        src: target_mac,
                        flags: FLAG_RESPONSE,
                        error: 0,
                        shelf: 3,
                        slot: 7,
                        command: CMD_ATA,
                        tag: (engine << 24) | seq,
                    };
                    match variant {
                        0 => h.src = [2, 0xde, 0xad, 0, 0, 1],
                        1 => h.shelf = 4,
                        2 => h.slot = 8,
                        _ => h.tag = 0x5500_0000 | seq,
                    }
                    let arg = AtaArg {
                        aflags: 0x40,
                        sector_count: 2,
                        cmd_status: ATA_READ_EXT,
                        ..AtaArg::default()
                    };
                    let mut head = [0u8; ATA_HEADER_LEN];
                    frame::encode_ata(&mut head, &h, &arg);
                    let junk = [0xEEu8; 1024];
                    let _ =
                        socket.send(&[std::io::IoSlice::new(&head), std::io::IoSlice::new(&junk)]);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let expected = std::fs::read(&rig.file).unwrap();
    let mut client = Client::connect(&daemon.socket, 2, false, 8 << 20).unwrap();
    for round in 0..4 {
        let all = client.read_all(round % 2, 1 << 20);
        if let Some(at) = first_difference(&all, &expected) {
            panic!("a spoofed reply got into the data at byte {at} (round {round})");
        }
    }
    stop.store(true, Ordering::Relaxed);
    spoofer.join().unwrap();
    assert!(
        sent.load(Ordering::Relaxed) > 1000,
        "the spoofer hardly sent anything"
    );
    drop(client);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root, vblade and QEMU"]
fn qemu_guest_on_an_aoe_disk() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rig = Rig::new(dir.path(), 9000);
    let daemon = rig.daemon(dir.path(), &[]);
    support::guest::check_guest(daemon, || std::fs::read(&rig.file).unwrap(), None);
}
