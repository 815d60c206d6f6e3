//! A VM that reboots, or a frontend that reconnects in a loop, must not exhaust the daemon.
//! Once every connection leaked one eventfd per queue, and after ~1000/num-queues reconnects
//! the daemon exited ("Too many open files"). Here hundreds of frontends connect, do I/O (half
//! of them with an in-flight buffer) and hang up, and the daemon's open fds and resident
//! memory must stay where they were after the first few.

mod common;

use common::frontend::{Guest, Setup};
use common::Daemon;

const WARM_UP: usize = 20;
const CYCLES: usize = 400;
/// Resident memory may move a little with the allocator's bookkeeping; a leak of even one
/// page per connection would exceed this.
const RSS_SLACK_KIB: u64 = 1024;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn reconnecting_frontends_leak_no_fds_and_no_memory() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--disk",
            disk.to_str().unwrap(),
            "--size",
            "1M",
            "--num-queues",
            "4",
        ],
    );
    let pid = daemon.pid();
    let cycle = |i: usize| {
        {
            let setup = Setup {
                inflight: (i % 2 == 0).then_some(None),
                ..Setup::default()
            };
            let mut guest = Guest::attach_with(&daemon.socket, setup);
            assert_eq!(guest.read(8, 4096).0, 0, "read in connection {i}");
        }
        // The daemon is between connections (and has built the next device) once it says so.
        daemon.wait_for_log("frontend disconnected", i + 1);
    };
    for i in 0..WARM_UP {
        cycle(i);
    }
    let (fds, rss) = (open_fds(pid), rss_kib(pid));
    for i in WARM_UP..WARM_UP + CYCLES {
        cycle(i);
    }
    let (fds_after, rss_after) = (open_fds(pid), rss_kib(pid));
    eprintln!(
        "after {WARM_UP} connections: {fds} fds, {rss} KiB resident; after {} more: {fds_after} \
         fds, {rss_after} KiB",
        CYCLES
    );
    assert_eq!(fds_after, fds, "open fds grew over {CYCLES} connections");
    assert!(
        rss_after <= rss + RSS_SLACK_KIB,
        "resident memory grew from {rss} to {rss_after} KiB over {CYCLES} connections"
    );
    assert!(daemon.stop().success());
}
