//! A misbehaving guest, below any well-behaved client library: a hand-driven vhost-user
//! frontend ([`support::frontend`]) whose virtqueue lives in a memfd shared with the daemon, so
//! the test can place any descriptor chain it likes and read back the used ring and status
//! bytes. Every malformed chain must be answered with an error status or returned unanswered,
//! and the daemon must keep serving afterwards.

use std::os::fd::AsRawFd;

use support::desc::{INDIRECT, NEXT, WRITE as W};
use support::frontend::{
    chain, disk_with_pattern, memfd, Guest, DATA, DISK_BYTES, HDR, MEM_SIZE, STATUS, UNTOUCHED,
};
use support::Daemon;
use vblkd::blk::layout::status;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostUserMemoryRegionInfo;
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

#[test]
fn malformed_chains_get_errors_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    let mut guest = Guest::attach(&daemon.socket);
    let ioerr = status::IOERR;

    let (status, got) = guest.read(8, 4096);
    assert_eq!(status, status::OK);
    assert_eq!(got, data[4096..8192]);

    // Past the end of the disk.
    guest.header(VIRTIO_BLK_T_IN, DISK_BYTES / 512 - 1);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 1024, W), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 1)], ioerr));

    // Not aligned to the block size.
    guest.header(VIRTIO_BLK_T_IN, 0);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 100, W), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 1)], ioerr));

    // A data buffer outside guest memory, and one straddling its end.
    for addr in [MEM_SIZE, MEM_SIZE - 512, u64::MAX - 100] {
        let used = guest.submit(
            &chain(&[(HDR, 16, 0), (addr, 1024, W), (STATUS, 1, W)]),
            &[0],
            1,
        );
        assert_eq!(
            (used, guest.status()),
            (vec![(0, 1)], ioerr),
            "buffer at {addr:#x}"
        );
    }

    // Data in the wrong direction.
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 1)], ioerr));

    // Too short: no header at all.
    let used = guest.submit(&chain(&[(STATUS, 1, W)]), &[0], 1);
    assert_eq!((used, guest.status()), (vec![(0, 1)], ioerr));

    // Unknown request type.
    guest.header(0x77, 0);
    let used = guest.submit(&chain(&[(HDR, 16, 0), (STATUS, 1, W)]), &[0], 1);
    assert_eq!((used, guest.status()), (vec![(0, 1)], status::UNSUPP));

    // No writable status byte: returned unanswered, status untouched.
    guest.header(VIRTIO_BLK_T_IN, 0);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, 0)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 0)], UNTOUCHED));

    // A loop: 0 -> 1 -> 0.
    let looping = [
        RawDescriptor::from(Descriptor::new(HDR, 16, NEXT, 1)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, W | NEXT, 0)),
    ];
    let used = guest.submit(&looping, &[0], 1);
    assert_eq!((used, guest.status()), (vec![(0, 0)], UNTOUCHED));

    // An indirect table that loops on itself.
    let table = GuestAddress(0x40_000);
    guest
        .mem
        .write_obj(Descriptor::new(HDR, 16, NEXT, 1), table)
        .unwrap();
    guest
        .mem
        .write_obj(
            Descriptor::new(STATUS, 1, NEXT | W, 0),
            GuestAddress(table.0 + 16),
        )
        .unwrap();
    let indirect = [RawDescriptor::from(Descriptor::new(
        table.0, 32, INDIRECT, 0,
    ))];
    let used = guest.submit(&indirect, &[0], 1);
    assert_eq!((used, guest.status()), (vec![(0, 0)], UNTOUCHED));

    // A head index outside the queue is ignored; the valid chain after it is served.
    guest.header(VIRTIO_BLK_T_IN, 0);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]),
        &[200, 0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 513)], status::OK));

    // GET_ID: the serial (the file name by default), NUL-padded to the 20 bytes asked for.
    guest.header(VIRTIO_BLK_T_GET_ID, 0);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 20, W), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 21)], status::OK));
    let mut id = [0xffu8; 20];
    guest.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"disk.img\0\0\0\0\0\0\0\0\0\0\0\0");

    // Still alive, still correct.
    let (status, got) = guest.read(0, 8192);
    assert_eq!(status, status::OK);
    assert_eq!(got, data[..8192]);
    assert!(daemon.is_running());
    drop(guest);
    assert!(daemon.stop().success());
}

#[test]
fn read_only_disk_rejects_writes_from_the_guest() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", disk.to_str().unwrap(), "--read-only"],
    );
    let mut guest = Guest::attach(&daemon.socket);
    let ioerr = status::IOERR;

    guest
        .mem
        .write_slice(&[0x55; 4096], GuestAddress(DATA))
        .unwrap();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 4096, 0), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 1)], ioerr));

    guest.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    guest.mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
    guest
        .mem
        .write_obj(8u32.to_le(), GuestAddress(DATA + 8))
        .unwrap();
    guest.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 1)], ioerr));

    let (status, got) = guest.read(0, 4096);
    assert_eq!((status, &got[..]), (status::OK, &data[..4096]));
    drop(guest);
    assert!(daemon.stop().success());
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        data,
        "read-only disk was modified"
    );
}

#[test]
fn guest_can_switch_the_write_cache() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, _) = disk_with_pattern(dir.path());
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", disk.to_str().unwrap(), "--cache", "writeback"],
    );
    let mut guest = Guest::attach(&daemon.socket);

    let config = guest.config();
    assert_eq!(
        u64::from_le_bytes(config[0..8].try_into().unwrap()),
        DISK_BYTES / 512
    );
    assert_eq!(config[32], 1, "cache=writeback must report its write cache");

    guest
        .frontend
        .set_config(32, VhostUserConfigFlags::WRITABLE, &[0])
        .unwrap();
    assert_eq!(guest.config()[32], 0);
    // Only the writeback byte is writable; other writes are ignored.
    guest
        .frontend
        .set_config(0, VhostUserConfigFlags::WRITABLE, &[0; 8])
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(guest.config()[0..8].try_into().unwrap()),
        DISK_BYTES / 512
    );
    drop(guest);
    daemon.wait_for_info("the daemon seeing the write cache turned off", |i| {
        !i.write_cache
    });
    assert!(daemon.stop().success());

    // Write-through modes start with the cache off.
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", disk.to_str().unwrap(), "--cache", "directsync"],
    );
    let mut guest = Guest::attach(&daemon.socket);
    assert_eq!(guest.config()[32], 0);
    drop(guest);
    assert!(daemon.stop().success());
}

/// A frontend may add guest memory while the queue runs (libblkio maps its buffers after
/// start). A busy-polling queue thread must see the new region: it once kept the memory map
/// it started polling with and failed such requests.
#[test]
fn memory_added_while_polling_is_used() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", disk.to_str().unwrap(), "--poll-us", "1000000"],
    );
    let mut guest = Guest::attach(&daemon.socket);
    // Get the queue thread polling (it keeps polling for 1 s after this).
    assert_eq!(guest.read(0, 512).0, status::OK);

    const EXTRA_GPA: u64 = 0x1000_0000;
    let file = memfd(1 << 20);
    let extra = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(EXTRA_GPA),
        1 << 20,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    guest
        .frontend
        .add_mem_region(&VhostUserMemoryRegionInfo {
            guest_phys_addr: EXTRA_GPA,
            memory_size: 1 << 20,
            userspace_addr: extra.get_host_address(GuestAddress(EXTRA_GPA)).unwrap() as u64,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        })
        .unwrap();

    guest.header(VIRTIO_BLK_T_IN, 2);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (EXTRA_GPA, 4096, W), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!((used, guest.status()), (vec![(0, 4097)], status::OK));
    let mut got = vec![0u8; 4096];
    extra.read_slice(&mut got, GuestAddress(EXTRA_GPA)).unwrap();
    assert_eq!(got, data[1024..1024 + 4096]);
    drop(guest);
    assert!(daemon.stop().success());
}
