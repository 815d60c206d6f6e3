//! vblkd driven by a real, independently written vhost-user-blk client: the `blkio` crate's
//! `virtio-blk-vhost-user` driver. Every byte written is read back and compared, through the
//! daemon and in the host file.

use std::path::Path;
use std::time::Duration;

use blkio::ReqFlags;
use support::workload::{past_end_requests, random_io, submit_one, zeroing_requests, BUFFER_BYTES};
use support::{first_difference, usize_of, Client, Daemon, Rng};

const DISK_BYTES: u64 = 64 << 20;
const QUEUES: usize = 2;

fn assert_file_matches(path: &Path, model: &[u8]) {
    let file = std::fs::read(path).unwrap();
    assert_eq!(file.len(), model.len());
    if let Some(at) = first_difference(&file, model) {
        panic!("host file differs from what the guest wrote at byte {at}");
    }
}

fn io_suite(aio: &str, cache: &str) {
    io_suite_with(aio, cache, &[]);
}

fn io_suite_with(aio: &str, cache: &str, extra: &[&str]) {
    io_suite_run(aio, cache, extra, None);
}

/// The suite; with `expect = Some((counted, never))`, the engine counter `counted` of every
/// queue must count at least once while the client is connected, and `never` (if given) not
/// at all.
fn io_suite_run(aio: &str, cache: &str, extra: &[&str], expect: Option<(&str, Option<&str>)>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    let mut args = vec![
        "--disk",
        disk.to_str().unwrap(),
        "--size",
        "64M",
        "--num-queues",
        "2",
        "--aio",
        aio,
        "--cache",
        cache,
    ];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(dir.path(), &args);
    let mut rng = Rng::new(0x5eed ^ aio.len() as u64 ^ ((cache.len() as u64) << 8));
    let mut model = vec![0u8; usize_of(DISK_BYTES)];
    {
        let mut client = Client::connect(
            &daemon.socket,
            i32::try_from(QUEUES).unwrap(),
            false,
            BUFFER_BYTES,
        )
        .unwrap();
        assert_eq!(client.capacity(), DISK_BYTES);
        // A new thread takes its name once it first runs, which a loaded machine may delay.
        let threads = expected_queue_threads(extra);
        support::eventually(
            &format!("{threads} vring threads with {extra:?}"),
            Duration::from_secs(10),
            || vring_threads(daemon.pid()) == threads,
        );
        random_io(&mut client, &mut model, &mut rng, QUEUES);
        if let Some((counted, never)) = expect {
            let stats = daemon.wait_for_stats(&format!("{counted} on every queue"), |s| {
                s.queues.iter().all(|q| q.engine_count(counted) >= 1)
            });
            if let Some(never) = never {
                let none = stats.queues.iter().all(|q| q.engine_count(never) == 0);
                assert!(none, "{stats:?}");
            }
        }
        zeroing_requests(&mut client, &mut model);
        past_end_requests(&mut client);
        assert_eq!(
            submit_one(&mut client, 0, "flush", |q| q.flush(0, ReqFlags::empty())),
            0
        );
        let all = client.read_all(1, 4 << 20);
        if let Some(at) = first_difference(&all, &model) {
            panic!("disk read back through the daemon differs at byte {at}");
        }
    }
    // The flush above made the data durable; the host file must hold exactly the model.
    assert_file_matches(&disk, &model);

    // A second frontend (or the same VM reconnecting) sees the same data.
    let mut client = Client::connect(&daemon.socket, 1, false, 8 << 20).unwrap();
    let all = client.read_all(0, 8 << 20);
    assert!(
        first_difference(&all, &model).is_none(),
        "data changed across reconnect"
    );
    drop(client);

    let status = daemon.stop();
    assert!(status.success(), "vblkd exited with {status} after SIGTERM");
}

/// The vring threads (the library names them) of the daemon `pid`.
fn vring_threads(pid: u32) -> usize {
    let names = crate::sandbox::identities(pid).into_iter().map(|t| t.0);
    names.filter(|name| name == "vring_worker").count()
}

/// The queue threads a daemon started with `extra` has for [`QUEUES`] queues: `--queue-threads`,
/// or one per queue but no more than this machine's CPUs.
fn expected_queue_threads(extra: &[&str]) -> usize {
    match extra.iter().position(|&arg| arg == "--queue-threads") {
        Some(at) => extra[at + 1].parse().unwrap(),
        None => QUEUES.min(std::thread::available_parallelism().unwrap().get()),
    }
}

#[test]
fn io_uring_cache_none() {
    io_suite("io_uring", "none");
}

#[test]
fn io_uring_cache_writeback() {
    io_suite("io_uring", "writeback");
}

#[test]
fn native_cache_none() {
    io_suite("native", "none");
}

#[test]
fn native_cache_directsync() {
    io_suite("native", "directsync");
}

#[test]
fn threads_cache_none() {
    io_suite("threads", "none");
}

#[test]
fn threads_cache_writeback() {
    io_suite("threads", "writeback");
}

#[test]
fn io_uring_cache_writethrough() {
    io_suite("io_uring", "writethrough");
}

#[test]
fn threads_cache_unsafe() {
    io_suite("threads", "unsafe");
}

/// Guest memory registered with each ring: the random I/O above goes through READ_FIXED,
/// READV_FIXED and their write twins, one- and many-segment requests alike.
#[test]
fn io_uring_cache_none_fixed_buffers() {
    io_suite_run(
        "io_uring",
        "none",
        &["--fixed-buffers", "1G"],
        Some((
            "io_uring_fixed_registrations",
            Some("io_uring_fixed_refusals"),
        )),
    );
}

/// The frontend decides how much memory there is to pin; beyond the operator's bound vblkd
/// does not register it (the kernel's memory-lock limit does not bind root) and serves as
/// usual.
#[test]
fn guest_memory_beyond_the_fixed_buffers_bound_is_not_registered() {
    io_suite_run(
        "io_uring",
        "none",
        &["--fixed-buffers", "1M"],
        // The client's first, small memory map (its rings) may be registered before it maps
        // its buffers.
        Some(("io_uring_fixed_refusals", None)),
    );
}

/// Busy-polling replaces the kick and the engine eventfd with a spin; the data must not care.
#[test]
fn io_uring_cache_none_polling() {
    io_suite_with("io_uring", "none", &["--poll-us", "100"]);
}

#[test]
fn native_cache_none_polling() {
    io_suite_with("native", "none", &["--poll-us", "100"]);
}

#[test]
fn threads_cache_writeback_polling() {
    io_suite_with("threads", "writeback", &["--poll-us", "100"]);
}

/// One thread serving both queues polls them together ([`vblkd::queue::poll_together`]); the
/// data must not care, with polling or without.
#[test]
fn two_queues_on_one_polling_thread() {
    io_suite_with(
        "io_uring",
        "none",
        &["--queue-threads", "1", "--poll-us", "100"],
    );
}

#[test]
fn two_queues_on_one_thread_without_polling() {
    io_suite_with(
        "threads",
        "writeback",
        &["--queue-threads", "1", "--poll-us", "0"],
    );
}

#[test]
fn read_only_disk_is_offered_read_only() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&disk, &data).unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", disk.to_str().unwrap(), "--read-only"],
    );

    // The device offers VIRTIO_BLK_F_RO, so a read-write client is turned away...
    let err = Client::connect(&daemon.socket, 1, false, 1 << 20)
        .err()
        .expect("read-write attach must fail");
    assert_eq!(err.errno(), blkio::Errno::ROFS, "{}", err.message());
    // ...and a read-only one reads the data. (Writes that get past a client are refused by
    // the daemon itself: see hostile_guest.rs.)
    let mut client = Client::connect(&daemon.socket, 1, true, 1 << 20).unwrap();
    assert_eq!(client.read_all(0, 256 << 10), data);
    drop(client);
    assert!(daemon.stop().success());
}

/// SIGTERM while a frontend is connected with requests in flight: the daemon finishes them,
/// hangs up and exits 0 — it neither hangs nor crashes.
#[test]
fn sigterm_with_io_in_flight_exits_cleanly() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (daemon, _disk) = Daemon::on_new_file(dir.path(), "64M", &["--aio", "threads"]);
    let mut client = Client::connect(&daemon.socket, 1, false, 32 << 20).unwrap();
    for i in 0..32 {
        let buf = client.buffer_ptr(i << 20);
        client.queues[0].write((i as u64) << 20, buf, 1 << 20, i, ReqFlags::empty());
    }
    // Submit without waiting: do_io with min_completions 0 only kicks the daemon.
    let mut none: [std::mem::MaybeUninit<blkio::Completion>; 0] = [];
    client.queues[0].do_io(&mut none, 0, None, None).unwrap();
    let status = daemon.stop();
    assert!(status.success(), "vblkd exited with {status}");
}
