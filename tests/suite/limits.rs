//! I/O limits (`--throttle`, `vblkd ctl set-limits`) measured from a real client: the blkio
//! driver keeps requests in flight, and the rate it gets over a few seconds is compared with
//! the setting. Each measurement starts after a warm-up that empties the bucket's initial
//! allowance (a tenth of a second's worth, or the burst).

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkioq, ReqFlags};
use support::{limits, Client, Daemon};
use vblkd::queue::throttle::ThrottleConfig;
use vblkd::queue::Counter;
use vblkd::service::status::Command;

const BUFFER_BYTES: usize = 8 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mix {
    Read,
    Write,
    /// Reads and writes in turn.
    Both,
}

/// What a run got: requests and bytes per second during its measured window.
#[derive(Debug, Clone, Copy)]
struct Rate {
    iops: f64,
    bps: f64,
}

/// Something to do at a time during a run.
type Event<'a> = Option<(Duration, &'a dyn Fn())>;

/// Keeps `depth` requests of `bs` bytes in flight on `queue` (buffers from `buffers` on),
/// over a disk of `capacity` bytes, for `warm_up` and then `window`, doing `event` on the
/// way; returns the rate during `window`.
fn run(
    queue: &mut Blkioq,
    (buffers, capacity): (usize, u64),
    (mix, bs, depth): (Mix, usize, usize),
    (warm_up, window): (Duration, Duration),
    mut event: Event,
) -> Rate {
    let blocks = capacity / bs as u64;
    let mut next = 0u64;
    let mut submit = |queue: &mut Blkioq, slot: usize| {
        let offset = (next.wrapping_mul(7919) % blocks) * bs as u64;
        let write = match mix {
            Mix::Read => false,
            Mix::Write => true,
            Mix::Both => next % 2 == 1,
        };
        next += 1;
        let buf = (buffers + slot * bs) as *mut u8;
        if write {
            queue.write(offset, buf, bs, slot, ReqFlags::empty());
        } else {
            queue.read(offset, buf, bs, slot, ReqFlags::empty());
        }
    };
    for slot in 0..depth {
        submit(queue, slot);
    }
    let start = Instant::now();
    let (from, to) = (start + warm_up, start + warm_up + window);
    let mut counted = 0u64;
    let mut in_flight = depth;
    let mut completions: Vec<MaybeUninit<blkio::Completion>> =
        (0..depth).map(|_| MaybeUninit::uninit()).collect();
    while in_flight > 0 {
        let mut timeout = limits::REPLY;
        let got = queue
            .do_io(&mut completions, 1, Some(&mut timeout), None)
            .expect("do_io");
        assert!(got > 0, "no completion within {:?}", limits::REPLY);
        let now = Instant::now();
        if let Some((_, what)) = event.filter(|(at, _)| now >= start + *at) {
            what();
            event = None;
        }
        for c in &completions[..got] {
            // SAFETY: do_io initialised the first `got` entries.
            let c = unsafe { c.assume_init_ref() };
            assert_eq!(c.ret, 0, "a request failed");
            in_flight -= 1;
            if now >= from && now < to {
                counted += 1;
            }
            if now < to {
                submit(queue, c.user_data);
                in_flight += 1;
            }
        }
    }
    let secs = window.as_secs_f64();
    Rate {
        iops: counted as f64 / secs,
        bps: (counted * bs as u64) as f64 / secs,
    }
}

fn connect(daemon: &Daemon, queues: i32) -> Client {
    Client::connect(&daemon.socket, queues, false, BUFFER_BYTES).unwrap()
}

/// Where a client's requests go: its buffers and the disk's capacity.
fn target(client: &Client) -> (usize, u64) {
    (client.buffer_ptr(0) as usize, client.capacity())
}

/// The rate of `load` on queue 0 over three seconds after `warm_up`.
fn measure(client: &mut Client, load: (Mix, usize, usize), warm_up: Duration) -> Rate {
    let target = target(client);
    let times = (warm_up, Duration::from_secs(3));
    run(&mut client.queues[0], target, load, times, None)
}

fn set_limits(daemon: &Daemon, limits: &str) {
    let limits: ThrottleConfig = limits.parse().unwrap();
    let reply = daemon.ctl(&Command::SetLimits(limits.clone()));
    assert_eq!(
        reply,
        serde_json::to_value(limits).unwrap(),
        "the limits in force"
    );
}

fn assert_near(what: &str, got: f64, want: f64) {
    let error = (got - want) / want;
    eprintln!(
        "{what}: {got:.0} against {want:.0} ({:+.1} %)",
        error * 100.0
    );
    assert!(
        error.abs() <= 0.05,
        "{what}: {got:.0}, not within 5 % of {want:.0}"
    );
}

/// Each kind of limit, set while the client is connected, holds the client to its rate:
/// operations and bytes; reads, writes, both.
#[test]
fn each_limit_holds_the_client_within_five_percent_of_its_setting() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (daemon, _disk) = Daemon::on_new_file(dir.path(), "64M", &[]);
    let mut client = connect(&daemon, 1);
    let second = Duration::from_secs(1);
    let cases = [
        ("iops-read=400", Mix::Read, 4096),
        ("iops-write=400", Mix::Write, 4096),
        ("iops-total=400", Mix::Both, 4096),
        ("bps-read=8M", Mix::Read, 64 << 10),
        ("bps-write=8M", Mix::Write, 64 << 10),
        ("bps-total=8M", Mix::Both, 64 << 10),
    ];
    for (limits, mix, bs) in cases {
        set_limits(&daemon, limits);
        let rate = measure(&mut client, (mix, bs, 16), second);
        let (_, value) = limits.split_once('=').unwrap();
        let want: u64 = vblkd::util::size::parse(value).unwrap();
        let got = if limits.starts_with("iops") {
            rate.iops
        } else {
            rate.bps
        };
        assert_near(&format!("{limits} with {mix:?} of {bs}"), got, want as f64);
    }
    let stats = daemon.stats();
    assert_eq!(stats.limits.to_string(), "bps-total=8388608");
    assert!(stats.total.count(Counter::Throttled) > 0);
    assert!(
        stats.total.count(Counter::ThrottledMicroseconds) > 1_000_000,
        "{stats:?}"
    );
    assert_eq!(daemon.info().limits.to_string(), "bps-total=8388608");
    drop(client);
    assert!(daemon.stop().success());
}

/// A burst: `iops-total-max=2000` with an average of 200 lets 2000 requests through at once,
/// and then the rate is the average.
#[test]
fn a_burst_is_allowed_and_then_the_rate_settles() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (daemon, _disk) = Daemon::on_new_file(
        dir.path(),
        "64M",
        &["--throttle", "iops-total=200,iops-total-max=2000"],
    );
    let mut client = connect(&daemon, 1);
    let load = (Mix::Read, 4096, 16);
    // The burst: more in half a second than the average allows in five.
    let target = target(&client);
    let half = (Duration::ZERO, Duration::from_millis(500));
    let burst = run(&mut client.queues[0], target, load, half, None);
    assert!(burst.iops * 0.5 >= 1900.0, "the burst: {burst:?}");
    // Then the average.
    let rate = measure(&mut client, load, Duration::from_millis(200));
    assert_near("after the burst", rate.iops, 200.0);
    drop(client);
    assert!(daemon.stop().success());
}

/// New limits apply within a second, up and down, while requests are held.
#[test]
fn a_live_change_of_the_limits_takes_effect_within_a_second() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (daemon, _disk) = Daemon::on_new_file(dir.path(), "64M", &["--throttle", "iops-total=100"]);
    let mut client = connect(&daemon, 1);
    let load = (Mix::Read, 4096, 16);
    let second = Duration::from_secs(1);
    assert_near("at first", measure(&mut client, load, second).iops, 100.0);
    for (limits, want) in [("iops-total=1000", 1000.0), ("iops-total=50", 50.0)] {
        // The client keeps its requests in flight across the change (held in the daemon,
        // over the old limit); from a second after it, the new rate holds.
        let target = target(&client);
        let change = || set_limits(&daemon, limits);
        let event: Event = Some((Duration::from_millis(500), &change));
        let times = (Duration::from_millis(1500), Duration::from_secs(3));
        let rate = run(&mut client.queues[0], target, load, times, event);
        assert_near(&format!("a second after {limits}"), rate.iops, want);
    }
    drop(client);
    assert!(daemon.stop().success());
}

/// Two queues driven at once share the disk's one limit.
#[test]
fn two_queues_share_one_limit() {
    two_queues_share_one_limit_with(&[]);
}

/// Also when one polling thread serves both: neither queue's wait for room stalls the other.
#[test]
fn two_queues_on_one_polling_thread_share_one_limit() {
    two_queues_share_one_limit_with(&["--queue-threads", "1", "--poll-us", "100"]);
}

fn two_queues_share_one_limit_with(extra: &[&str]) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut args = vec!["--num-queues", "2", "--throttle", "iops-total=400"];
    args.extend_from_slice(extra);
    let (daemon, _disk) = Daemon::on_new_file(dir.path(), "64M", &args);
    let mut client = connect(&daemon, 2);
    let (buffers, capacity) = target(&client);
    let load = (Mix::Both, 4096, 16);
    let times = (Duration::from_secs(1), Duration::from_secs(3));
    let [q0, q1] = &mut client.queues[..] else {
        panic!("two queues")
    };
    let (a, b) = std::thread::scope(|s| {
        let other = buffers + (BUFFER_BYTES / 2);
        let a = s.spawn(|| run(q0, (buffers, capacity), load, times, None));
        let b = s.spawn(move || run(q1, (other, capacity), load, times, None));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_near("both queues together", a.iops + b.iops, 400.0);
    // Neither starves the other.
    assert!(a.iops > 100.0 && b.iops > 100.0, "{a:?} {b:?}");
    let stats = daemon.stats();
    assert!(stats.queues.iter().all(|q| q.count(Counter::Throttled) > 0));
    drop(client);
    assert!(daemon.stop().success());
}

/// What a limit does not cover goes at full speed: with writes limited, reads are not
/// held back at all, and nothing is when the limits are removed.
#[test]
fn what_no_limit_covers_is_not_held_back() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (daemon, _disk) = Daemon::on_new_file(
        dir.path(),
        "64M",
        &["--cache", "writeback", "--throttle", "iops-write=100"],
    );
    let mut client = connect(&daemon, 1);
    let rate = measure(&mut client, (Mix::Read, 4096, 16), Duration::ZERO);
    assert!(rate.iops > 2000.0, "reads under a write limit: {rate:?}");
    assert_eq!(daemon.stats().total.count(Counter::Throttled), 0);
    set_limits(&daemon, "");
    let rate = measure(&mut client, (Mix::Write, 4096, 16), Duration::ZERO);
    assert!(rate.iops > 2000.0, "writes without limits: {rate:?}");
    assert_eq!(daemon.stats().total.count(Counter::Throttled), 0);
    assert!(daemon.info().limits.is_empty());
    drop(client);
    assert!(daemon.stop().success());
}

/// A QEMU guest under limits writes 16 MiB and reads it back: slowly, without an error.
#[test]
#[ignore = "needs QEMU and the test guest"]
fn a_guest_under_limits_completes_its_workload() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (daemon, _disk) = Daemon::on_new_file(
        dir.path(),
        "64M",
        &[
            "--num-queues",
            "2",
            "--throttle",
            "bps-total=4M,iops-total=200",
        ],
    );
    let guest = support::guest::RunningGuest::start(&daemon.socket, "fill");
    let waiting_for = "the guest writes and reads back";
    let (report, _) = guest.report_until_done(limits::GUEST_RUN, waiting_for);
    guest.wait_exit();
    support::guest::assert_fill_read_back(&report);
    let stats = daemon.stats();
    assert!(stats.total.count(Counter::Throttled) > 0, "{stats:?}");
    assert!(stats.total.count(Counter::BytesWritten) >= 16 << 20);
    assert!(daemon.stop().success());
}
