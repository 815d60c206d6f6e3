//! A VM that reboots, or a frontend that reconnects in a loop, must not exhaust the daemon.
//! Once every connection leaked one eventfd per queue, and after ~1000/num-queues reconnects
//! the daemon exited ("Too many open files"). Here hundreds of frontends connect, do I/O (half
//! of them with an in-flight buffer) and hang up, and the daemon's open fds and resident
//! memory must stay where they were after the first few.

use support::frontend::{Guest, Setup};
use support::{open_fds, rss_kib, Daemon};

const WARM_UP: usize = 20;
const CYCLES: usize = 400;
use support::RSS_SLACK_KIB;

#[test]
fn reconnecting_frontends_leak_no_fds_and_no_memory() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (daemon, _disk) = Daemon::on_new_file(dir.path(), "1M", &["--num-queues", "4"]);
    let pid = daemon.pid();
    // One connection: attach, read, and (while still attached, when the previous connection
    // is entirely gone and this one entirely built) count the daemon's fds and memory.
    let cycle = |i: usize| {
        let usage = {
            let setup = Setup {
                inflight: (i % 2 == 0).then_some(None),
                ..Setup::default()
            };
            let mut guest = Guest::attach_with(&daemon.socket, setup);
            assert_eq!(guest.read(8, 4096).0, 0, "read in connection {i}");
            (open_fds(pid), rss_kib(pid))
        };
        support::wait_for_disconnect(&daemon, u64::try_from(i + 1).unwrap());
        usage
    };
    for i in 0..WARM_UP - 1 {
        cycle(i);
    }
    let (fds, rss) = cycle(WARM_UP - 1);
    for i in WARM_UP..WARM_UP + CYCLES - 1 {
        cycle(i);
    }
    // Same parity as the warm-up's last connection: both without an in-flight buffer.
    let (fds_after, rss_after) = cycle(WARM_UP + CYCLES - 1);
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
