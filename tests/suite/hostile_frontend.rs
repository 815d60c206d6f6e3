//! A frontend (or a guest) that lies, races or crashes, against the real daemon. Each test
//! here once found a way to wedge, crash or exhaust vblkd (issue 9); each now checks that the
//! daemon answers, keeps serving the next frontend, and loses no request.
//!
//! Races with I/O in flight use a slow disk: a loop device throttled to a few dozen
//! operations per second by a blkio cgroup the daemon is put in (see `support::blockdev`).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use support::blockdev::SlowDisk;
use support::desc::WRITE as W;
use support::frontend::{
    assert_slot_blocks, chain, code, disk_with_pattern, memfd, slot_block, vring_state, Guest,
    RawFrontend, Setup, DATA, DISK_BYTES, MEM_SIZE, STATUS,
};
use support::limits;
use support::{eventually, usize_of, Daemon};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vmm_sys_util::eventfd::EventFd;

use vblkd::queue::Counter;

const OK: u8 = vblkd::blk::layout::status::OK;

/// After whatever the test did: a fresh, well-behaved frontend is served correctly.
fn still_serves(daemon: &mut Daemon, data: &[u8]) {
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
    let mut guest = Guest::attach(&daemon.socket);
    let (status, got) = guest.read(2, 4096);
    assert_eq!(status, OK);
    assert_eq!(got, data[1024..1024 + 4096]);
}

/// Waits until the daemon has marked a ring broken.
fn wait_for_broken_ring(daemon: &Daemon) {
    daemon.wait_for_stats("the ring marked broken", |s| {
        s.total.count(Counter::BrokenRings) >= 1
    });
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn an_avail_index_more_than_a_queue_ahead_breaks_only_that_ring() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    {
        let mut guest = Guest::attach(&daemon.socket);
        assert_eq!(guest.read(0, 512).0, OK);
        let next = guest.avail_idx();
        guest.set_avail_idx(next.wrapping_add(guest.queue_size + 1));
        guest.kick.write(1).unwrap();
        guest.kick.write(1).unwrap();
        wait_for_broken_ring(&daemon);
        // The ring is stopped and restarted, as QEMU does on a guest reset; the daemon
        // answers, and serves the restarted ring.
        let base = guest.frontend.get_vring_base(0).unwrap();
        assert_eq!(
            base,
            u32::from(next),
            "nothing was taken from the broken ring"
        );
        guest.set_avail_idx(next);
        guest.start_ring(next);
        assert_eq!(guest.read(2, 4096).1, data[1024..1024 + 4096]);
    }
    still_serves(&mut daemon, &data);
    let log = daemon.stop_with_log().1;
    assert_eq!(count(&log, "not serving it"), 1, "said once:\n{log}");
    assert!(log.len() < 64 << 10, "the log grew to {} bytes", log.len());
}

#[test]
fn a_vring_base_past_the_ring_breaks_only_that_ring() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    {
        let guest = Guest::attach_with(
            &daemon.socket,
            Setup {
                base: 1000,
                ..Setup::default()
            },
        );
        guest.kick.write(1).unwrap();
        wait_for_broken_ring(&daemon);
        assert_eq!(guest.frontend.get_vring_base(0).unwrap(), 1000);
    }
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

/// Ring addresses that lie: inside guest memory where they start, past its end where they
/// end (the avail index of a ring in the last two bytes). The daemon cannot read the ring, so
/// it breaks only that ring.
#[test]
fn ring_addresses_that_run_off_guest_memory_break_only_that_ring() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    {
        let mut guest = Guest::attach(&daemon.socket);
        assert_eq!(guest.frontend.get_vring_base(0).unwrap(), 0);
        let mut lying = guest.ring_config();
        lying.avail_ring_addr = guest.host_base + MEM_SIZE - 2;
        guest.frontend.set_vring_addr(0, &lying).unwrap();
        guest.frontend.set_vring_call(0, &guest.call).unwrap();
        guest.frontend.set_vring_kick(0, &guest.kick).unwrap();
        guest.kick.write(1).unwrap();
        wait_for_broken_ring(&daemon);
        assert_eq!(guest.frontend.get_vring_base(0).unwrap(), 0);
        // Restarted with honest addresses, the ring is served again.
        guest.start_ring(0);
        assert_eq!(guest.read(2, 4096).1, data[1024..1024 + 4096]);
    }
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

/// Starts a daemon on a slow disk (its I/O limited to `iops`) and a guest with a queue of 128.
fn slow_setup(dir: &Path, aio: &str, iops: u32) -> (SlowDisk, Daemon) {
    let disk = SlowDisk::new(dir, DISK_BYTES, iops);
    let daemon = Daemon::start(
        dir,
        &["--disk", disk.path(), "--aio", aio, "--queue-size", "128"],
    );
    disk.throttle.add(daemon.pid());
    (disk, daemon)
}

const IN_FLIGHT: u16 = 32;

/// Every request of [`start_requests`] completed with status OK.
fn assert_all_ok(guest: &Guest) {
    for slot in 0..IN_FLIGHT {
        assert_eq!(guest.slot_status(slot), OK, "request {slot}");
    }
}

/// The disk holds every block the writes of [`start_requests`] wrote.
fn assert_blocks_written(disk: &SlowDisk) {
    assert_slot_blocks(&std::fs::read(&disk.file).unwrap(), IN_FLIGHT);
}

/// Places `IN_FLIGHT` 4 KiB writes (or reads) to consecutive blocks, kicks, and returns once
/// the first completed (so the daemon has taken them all), checking that most are still in
/// flight.
fn start_requests(guest: &mut Guest, write: bool) -> Vec<(u32, u32)> {
    let heads: Vec<u16> = (0..IN_FLIGHT)
        .map(|slot| {
            let data = slot_block(slot);
            guest.place_request(slot, u64::from(slot) * 8, write.then_some(&data[..]))
        })
        .collect();
    guest.make_available(&heads);
    guest.kick.write(1).unwrap();
    let first = guest.wait_used(1);
    assert!(
        first.len() < usize::from(IN_FLIGHT),
        "all {IN_FLIGHT} requests completed at once: the disk is not slow (throttling broken?)"
    );
    first
}

fn get_vring_base_waits_for_writes_in_flight(aio: &str) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, mut daemon) = slow_setup(dir.path(), aio, 25);
    let mut guest = Guest::attach_with(
        &daemon.socket,
        Setup {
            queue_size: 128,
            ..Setup::default()
        },
    );
    let mut used = start_requests(&mut guest, true);
    let base = guest
        .frontend
        .get_vring_base(0)
        .expect("GET_VRING_BASE answered");
    assert_eq!(base, u32::from(IN_FLIGHT));
    used.extend(guest.take_used());
    assert_eq!(
        used.len(),
        usize::from(IN_FLIGHT),
        "every write completed first"
    );
    assert_all_ok(&guest);
    drop(guest);
    assert!(daemon.is_running());
    assert!(daemon.stop().success());
    assert_blocks_written(&disk);
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn get_vring_base_waits_for_writes_in_flight_io_uring() {
    get_vring_base_waits_for_writes_in_flight("io_uring");
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn get_vring_base_waits_for_writes_in_flight_native() {
    get_vring_base_waits_for_writes_in_flight("native");
}

/// GET_VRING_BASE right behind a kick, many times over: whichever of the two the daemon sees
/// first, it must answer, complete everything it took, and leave the rest in the avail ring.
/// Once the queue thread looped forever on a ring marked not ready, and the reply never came.
fn kick_then_get_vring_base(extra: &[&str]) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut args = vec!["--disk", disk.to_str().unwrap(), "--queue-size", "128"];
    args.extend_from_slice(extra);
    let mut daemon = Daemon::start(dir.path(), &args);
    let mut guest = Guest::attach_with(
        &daemon.socket,
        Setup {
            queue_size: 128,
            ..Setup::default()
        },
    );
    let mut next = 0u16;
    for round in 0..50u16 {
        let heads: Vec<u16> = (0..8)
            .map(|slot| guest.place_request(slot, 2, None))
            .collect();
        guest.make_available(&heads);
        guest.kick.write(1).unwrap();
        let base = guest
            .frontend
            .get_vring_base(0)
            .expect("GET_VRING_BASE answered");
        let base = u16::try_from(base).unwrap();
        let taken = base.wrapping_sub(next);
        assert!(taken <= 8, "round {round}: {taken} taken");
        assert_eq!(guest.take_used().len(), usize::from(taken), "round {round}");
        // Restart where the daemon stopped; what it did not take is taken now.
        guest.start_ring(base);
        guest.kick.write(1).unwrap();
        let rest = guest.wait_used(usize::from(8 - taken));
        assert_eq!(rest.len(), usize::from(8 - taken));
        for slot in 0..8 {
            assert_eq!(
                guest.slot_data(slot),
                data[1024..1024 + 4096],
                "round {round}"
            );
        }
        next = base.wrapping_add(8 - taken);
    }
    drop(guest);
    assert!(daemon.is_running());
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn get_vring_base_right_after_a_kick() {
    kick_then_get_vring_base(&[]);
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn get_vring_base_right_after_a_kick_polling() {
    kick_then_get_vring_base(&["--poll-us", "1000"]);
}

fn memory_table_sent_again_while_reads_are_in_flight(aio: &str) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, daemon) = slow_setup(dir.path(), aio, 25);
    let mut content = vec![0u8; usize_of(DISK_BYTES)];
    for slot in 0..IN_FLIGHT {
        let at = usize::from(slot) * 4096;
        content[at..at + 4096].copy_from_slice(&slot_block(slot));
    }
    std::fs::write(&disk.file, &content).unwrap();
    let mut guest = Guest::attach_with(
        &daemon.socket,
        Setup {
            queue_size: 128,
            ..Setup::default()
        },
    );
    let mut used = start_requests(&mut guest, false);
    // What QEMU does on memory hotplug: the whole table again, plus a new region.
    let extra = memfd(1 << 20);
    let regions = [
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: guest.host_base,
            mmap_offset: 0,
            mmap_handle: guest.mem_file.as_raw_fd(),
        },
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 1 << 30,
            memory_size: 1 << 20,
            userspace_addr: 0x7000_0000_0000,
            mmap_offset: 0,
            mmap_handle: extra.as_raw_fd(),
        },
    ];
    guest.frontend.set_mem_table(&regions).unwrap();
    while used.len() < usize::from(IN_FLIGHT) {
        used.extend(guest.wait_used(1));
    }
    for slot in 0..IN_FLIGHT {
        assert_eq!(guest.slot_status(slot), OK, "read {slot}");
        assert!(
            guest.slot_data(slot) == slot_block(slot),
            "data of read {slot}"
        );
    }
    assert_eq!(
        guest.frontend.get_vring_base(0).unwrap(),
        u32::from(IN_FLIGHT)
    );
    drop(guest);
    assert!(daemon.stop().success());
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn memory_table_sent_again_while_reads_are_in_flight_io_uring() {
    memory_table_sent_again_while_reads_are_in_flight("io_uring");
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn memory_table_sent_again_while_reads_are_in_flight_native() {
    memory_table_sent_again_while_reads_are_in_flight("native");
}

/// Connects a frontend that has negotiated what SET_MEM_TABLE and ADD_MEM_REG need.
fn bare_frontend(socket: &Path) -> Frontend {
    let mut frontend = support::frontend::connect(socket);
    frontend.set_owner().unwrap();
    frontend.get_features().unwrap();
    frontend
        .set_features(vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
        .unwrap();
    frontend.get_protocol_features().unwrap();
    frontend
        .set_protocol_features(
            VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        )
        .unwrap();
    frontend.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
    frontend
}

fn region(fd: &impl AsRawFd, size: u64, offset: u64) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: 0x7000_0000_0000,
        mmap_offset: offset,
        mmap_handle: fd.as_raw_fd(),
    }
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns; we own them after.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are fresh and owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

#[test]
fn memory_regions_that_do_not_fit_their_files_are_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    let small = memfd(64 << 10);
    let (pipe_r, _pipe_w) = pipe();
    let cases: [(&str, VhostUserMemoryRegionInfo); 4] = [
        ("larger than its file", region(&small, 1 << 20, 0)),
        ("offset past the end", region(&small, 4096, 1 << 20)),
        ("offset + size wraps", region(&small, 4096, u64::MAX - 100)),
        ("not a regular file", region(&pipe_r, 4096, 0)),
    ];
    for (what, bad) in &cases {
        let frontend = bare_frontend(&daemon.socket);
        assert!(
            frontend.set_mem_table(std::slice::from_ref(bad)).is_err(),
            "SET_MEM_TABLE with a region {what} was accepted"
        );
        let mut frontend = bare_frontend(&daemon.socket);
        assert!(
            frontend.add_mem_region(bad).is_err(),
            "ADD_MEM_REG with a region {what} was accepted"
        );
        assert!(daemon.is_running(), "region {what}: {}", daemon.log());
    }
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

/// A frontend may shrink its memory file after the daemon mapped it (nothing stops it unless
/// the file is sealed); the daemon's next access to that memory used to kill it with SIGBUS.
#[test]
fn a_memory_file_shrunk_under_the_daemon_does_not_crash_it() {
    const EXTRA_GPA: u64 = 0x1000_0000;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    {
        let mut guest = Guest::attach(&daemon.socket);
        let extra = memfd(1 << 20);
        let mut r = region(&extra, 1 << 20, 0);
        r.guest_phys_addr = EXTRA_GPA;
        guest.frontend.add_mem_region(&r).unwrap();
        // The request header lives in the extra region, which then shrinks to nothing.
        extra.set_len(0).unwrap();
        let used = guest.submit(
            &chain(&[(EXTRA_GPA, 16, 0), (DATA, 512, W), (STATUS, 1, W)]),
            &[0],
            1,
        );
        // The header read as zeroes: a read of sector 0.
        assert_eq!(used, vec![(0, 513)]);
        assert!(daemon.is_running());
    }
    daemon.wait_for_stats("the vanished pages counted", |s| s.guest_pages_lost > 0);
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

#[test]
fn memory_slots_beyond_the_advertised_count_are_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    {
        let mut frontend = bare_frontend(&daemon.socket);
        let slots = frontend.get_max_mem_slots().unwrap();
        let file = memfd(4096 * (slots + 1));
        for slot in 0..slots {
            let mut r = region(&file, 4096, 4096 * slot);
            r.guest_phys_addr = 4096 * slot;
            r.userspace_addr += 4096 * slot;
            frontend
                .add_mem_region(&r)
                .unwrap_or_else(|e| panic!("slot {slot} of {slots}: {e}"));
        }
        let mut r = region(&file, 4096, 4096 * slots);
        r.guest_phys_addr = 4096 * slots;
        r.userspace_addr += 4096 * slots;
        assert!(
            frontend.add_mem_region(&r).is_err(),
            "slot {slots} accepted"
        );
    }
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

#[test]
fn kick_and_call_fds_must_be_eventfds() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    // A kick pipe holding a partial value, and a call pipe that is full: reading or writing
    // either used to stall the queue thread for good.
    let (kick_r, mut kick_w) = pipe();
    kick_w.write_all(&[1, 2, 3]).unwrap();
    let (_call_r, call_w) = pipe();
    // SAFETY: F_SETFL on our own fd; filling the pipe needs it non-blocking.
    unsafe { libc::fcntl(call_w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    while (&call_w).write(&[0u8; 4096]).is_ok() {}
    for (what, fd) in [("kick", kick_r), ("call", call_w)] {
        let guest = Guest::attach(&daemon.socket);
        // SAFETY: the EventFd only lends `fd` (a pipe, which is the point) to the frontend,
        // and is forgotten, not dropped, so that `fd` keeps its single owner.
        let fake = unsafe { EventFd::from_raw_fd(fd.as_raw_fd()) };
        let refused = match what {
            "kick" => guest.frontend.set_vring_kick(0, &fake).is_err(),
            _ => guest.frontend.set_vring_call(0, &fake).is_err(),
        };
        std::mem::forget(fake);
        drop(fd);
        assert!(refused, "a pipe was accepted as the {what} fd");
    }
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

#[test]
fn a_saturated_call_eventfd_does_not_stall_the_queue() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    {
        let mut guest = Guest::attach(&daemon.socket);
        // A blocking eventfd one short of its maximum: the next write of 1 would block.
        let call = EventFd::new(0).unwrap();
        call.write(u64::MAX - 1).unwrap();
        guest.frontend.set_vring_call(0, &call).unwrap();
        let head = guest.place_request(0, 2, None);
        guest.make_available(&[head]);
        guest.kick.write(1).unwrap();
        eventually(
            "the read completing into the used ring",
            limits::REPLY,
            || !guest.take_used().is_empty(),
        );
        assert_eq!(guest.slot_status(0), OK);
        assert_eq!(guest.slot_data(0), data[1024..1024 + 4096]);
        assert_eq!(guest.frontend.get_vring_base(0).unwrap(), 1);
    }
    support::wait_for_disconnect(&daemon, 1);
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

#[test]
fn a_kick_fd_replaced_on_a_running_ring_is_no_longer_watched() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    {
        let mut guest = Guest::attach(&daemon.socket);
        assert_eq!(guest.read(0, 512).0, OK);
        let old = std::mem::replace(&mut guest.kick, EventFd::new(0).unwrap());
        guest.frontend.set_vring_kick(0, &guest.kick).unwrap();
        // Kicks on the old eventfd: once a stale epoll registration made the queue thread
        // read the new (then blocking) one, and it never came back.
        old.write(1).unwrap();
        old.write(1).unwrap();
        assert_eq!(guest.read(2, 4096).1, data[1024..1024 + 4096]);
        assert_eq!(guest.frontend.get_vring_base(0).unwrap(), 2);
    }
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

#[test]
fn vring_sizes_and_bases_out_of_range_are_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    for (what, msg, value) in [
        (
            "a size that is not a power of two",
            code::SET_VRING_NUM,
            100,
        ),
        ("a size above the maximum", code::SET_VRING_NUM, 512),
        ("a base above 16 bits", code::SET_VRING_BASE, 0x1_0000),
    ] {
        let mut raw = RawFrontend::connect(&daemon.socket);
        raw.handshake();
        raw.send(msg, &vring_state(0, value), true, &[]);
        assert_ne!(raw.reply_u64(), Some(0), "{what} was acked");
    }
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

#[test]
fn a_message_body_may_arrive_in_pieces() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    let mut raw = RawFrontend::connect(&daemon.socket);
    raw.handshake();
    raw.send_split(code::SET_VRING_NUM, &vring_state(0, 64), 3, true);
    assert_eq!(raw.reply_u64(), Some(0), "SET_VRING_NUM in two writes");
    raw.send_split(code::GET_VRING_BASE, &vring_state(0, 0), 5, false);
    assert_eq!(
        raw.reply_vring_state(),
        Some((0, 0)),
        "GET_VRING_BASE answered"
    );
    drop(raw);
    still_serves(&mut daemon, &data);
    assert!(daemon.stop().success());
}

/// The heart of in-flight tracking, without QEMU: 32 writes in flight, SIGKILL, a new daemon,
/// the same frontend state (its memory and the in-flight buffer) and the ring restarted at the
/// used index, as QEMU restarts it. Every write must complete, and reach the disk. Once per
/// engine (the AoE engine's test is in tests/aoe.rs).
fn requests_in_flight_at_a_crash_are_resubmitted(aio: &str) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, daemon) = slow_setup(dir.path(), aio, 25);
    let mut guest = Guest::attach_with(
        &daemon.socket,
        Setup {
            queue_size: 128,
            inflight: Some(None),
            ..Setup::default()
        },
    );
    let done_before = start_requests(&mut guest, true).len();
    // The daemon takes the ring in growing batches; kill it once it has taken every request
    // (each is marked in the in-flight buffer before its I/O starts, and cleared only after
    // its used entry is written). Killed earlier, a request not yet taken comes back as a
    // fresh one, not a resubmission, and the count below is one short.
    support::eventually("the daemon taking every request", limits::REPLY, || {
        guest.heads_taken() >= usize::from(IN_FLIGHT)
    });
    let log = daemon.kill();
    assert!(!log.contains("panicked"), "{log}");
    let used = guest.used_idx();
    let memory = guest.mem_file.try_clone().unwrap();
    let inflight = guest.inflight.take();
    drop(guest);

    let daemon = Daemon::start(
        dir.path(),
        &["--disk", disk.path(), "--aio", aio, "--queue-size", "128"],
    );
    disk.throttle.add(daemon.pid());
    let mut guest = Guest::attach_with(
        &daemon.socket,
        Setup {
            queue_size: 128,
            inflight: Some(inflight),
            memory: Some(memory),
            base: used,
            ..Setup::default()
        },
    );
    let lost = usize::from(IN_FLIGHT - used);
    assert!(lost > 0 && done_before <= usize::from(used));
    let rest = guest.wait_used(lost);
    assert_eq!(rest.len(), lost);
    assert_all_ok(&guest);
    drop(guest);
    let resubmitted = daemon.stats().total.count(Counter::Resubmitted);
    assert_eq!(
        resubmitted,
        u64::try_from(lost).unwrap(),
        "requests resubmitted"
    );
    assert!(daemon.stop().success());
    assert_blocks_written(&disk);
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn requests_in_flight_at_a_crash_are_resubmitted_io_uring() {
    requests_in_flight_at_a_crash_are_resubmitted("io_uring");
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn requests_in_flight_at_a_crash_are_resubmitted_native() {
    requests_in_flight_at_a_crash_are_resubmitted("native");
}

#[test]
#[ignore = "needs root (a loop device throttled by a blkio cgroup)"]
fn requests_in_flight_at_a_crash_are_resubmitted_threads() {
    requests_in_flight_at_a_crash_are_resubmitted("threads");
}
