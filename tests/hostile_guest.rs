//! A misbehaving guest, below any well-behaved client library: a hand-driven vhost-user
//! frontend (the `vhost` crate's) whose virtqueue lives in a memfd shared with the daemon, so
//! the test can place any descriptor chain it likes and read back the used ring and status
//! bytes. Every malformed chain must be answered with an error status or returned unanswered,
//! and the daemon must keep serving afterwards.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use common::Daemon;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: u64 = 1 << 20;
const QUEUE_SIZE: u16 = 16;
const HDR: u64 = 0x10_000;
const DATA: u64 = 0x20_000;
const STATUS: u64 = 0x30_000;
const UNTOUCHED: u8 = 0xEE;
const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const DISK_BYTES: u64 = 1 << 20;

struct Guest {
    frontend: Frontend,
    mem: GuestMemoryMmap,
    kick: EventFd,
    call: EventFd,
    used_seen: u16,
    /// Guest addresses of the descriptor table and rings.
    desc_table: u64,
    avail: u64,
    used: u64,
}

fn memfd(size: u64) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; we own the returned fd.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    file
}

impl Guest {
    /// Connects to the daemon and sets up queue 0 the way QEMU would.
    fn attach(socket: &Path) -> Guest {
        let file = memfd(MEM_SIZE);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE as usize,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let host_base = mem.get_host_address(GuestAddress(0)).unwrap() as u64;

        let mut frontend = Frontend::connect(socket, 1).unwrap();
        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        let wanted = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_CONFIG_WCE)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_eq!(offered & wanted, wanted, "daemon offers {offered:#x}");
        let protocol = frontend.get_protocol_features().unwrap();
        assert!(protocol.contains(
            VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        ));
        frontend
            .set_protocol_features(
                VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            )
            .unwrap();
        // Have every message acknowledged, as QEMU does with REPLY_ACK, so that a call returns
        // only once the daemon has applied it.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        frontend.set_features(wanted).unwrap();
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: MEM_SIZE,
                userspace_addr: host_base,
                mmap_offset: 0,
                mmap_handle: file.as_raw_fd(),
            }])
            .unwrap();

        // The rings sit in fresh (zeroed) memory, each on its own page.
        let (desc_table, avail, used) = (0x0, 0x1000, 0x2000);
        frontend.set_vring_num(0, QUEUE_SIZE).unwrap();
        frontend.set_vring_base(0, 0).unwrap();
        frontend
            .set_vring_addr(
                0,
                &VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: QUEUE_SIZE,
                    flags: 0,
                    desc_table_addr: host_base + desc_table,
                    used_ring_addr: host_base + used,
                    avail_ring_addr: host_base + avail,
                    log_addr: None,
                },
            )
            .unwrap();
        let kick = EventFd::new(0).unwrap();
        let call = EventFd::new(0).unwrap();
        frontend.set_vring_call(0, &call).unwrap();
        frontend.set_vring_kick(0, &kick).unwrap();
        frontend.set_vring_enable(0, true).unwrap();
        Guest {
            frontend,
            mem,
            kick,
            call,
            used_seen: 0,
            desc_table,
            avail,
            used,
        }
    }

    fn load_u16(&self, addr: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(addr)).unwrap())
    }

    fn header(&self, ty: u32, sector: u64) {
        self.mem.write_obj(ty.to_le(), GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
    }

    /// Makes `descs` (stored from table index 0, next pointers as given) available, kicks, and
    /// waits for the used ring to grow by `expect_used` entries. Returns them.
    fn submit(
        &mut self,
        descs: &[RawDescriptor],
        heads: &[u16],
        expect_used: u16,
    ) -> Vec<(u32, u32)> {
        self.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        for (i, d) in descs.iter().enumerate() {
            self.mem
                .write_obj(*d, GuestAddress(self.desc_table + 16 * i as u64))
                .unwrap();
        }
        let avail_idx = self.load_u16(self.avail + 2);
        for (n, head) in heads.iter().enumerate() {
            let slot = (avail_idx as u64 + n as u64) % u64::from(QUEUE_SIZE);
            self.mem
                .write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
                .unwrap();
        }
        let new_idx = avail_idx.wrapping_add(heads.len() as u16);
        self.mem
            .write_obj(new_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
        self.kick.write(1).unwrap();

        let mut used = Vec::new();
        while used.len() < expect_used as usize {
            wait_for_call(&self.call);
            let idx = self.load_u16(self.used + 2);
            while self.used_seen != idx {
                let elem = self.used + 4 + 8 * (u64::from(self.used_seen) % u64::from(QUEUE_SIZE));
                let id = u32::from_le(self.mem.read_obj(GuestAddress(elem)).unwrap());
                let len = u32::from_le(self.mem.read_obj(GuestAddress(elem + 4)).unwrap());
                used.push((id, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
        }
        used
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// A well-formed read of `len` bytes at `sector`; returns the status and the data.
    fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
        self.header(VIRTIO_BLK_T_IN, sector);
        let used = self.submit(
            &chain(&[(HDR, 16, 0), (DATA, len, W), (STATUS, 1, W)]),
            &[0],
            1,
        );
        assert_eq!(used, vec![(0, len + 1)]);
        let mut data = vec![0u8; len as usize];
        self.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        (self.status(), data)
    }

    fn config(&mut self) -> Vec<u8> {
        let (_, payload) = self
            .frontend
            .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .unwrap();
        payload
    }
}

fn wait_for_call(call: &EventFd) {
    let mut pfd = libc::pollfd {
        fd: call.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 20_000) };
    assert_eq!(ready, 1, "the daemon did not answer within 20 s");
    call.read().unwrap();
}

/// A chain stored from index 0 with consecutive next pointers.
fn chain(parts: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
    parts
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == parts.len();
            let flags = if last { flags } else { flags | NEXT };
            RawDescriptor::from(Descriptor::new(addr, len, flags, i as u16 + 1))
        })
        .collect()
}

fn disk_with_pattern(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let data: Vec<u8> = (0..DISK_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

#[test]
fn malformed_chains_get_errors_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (disk, data) = disk_with_pattern(dir.path());
    let mut daemon = Daemon::start(dir.path(), &["--disk", disk.to_str().unwrap()]);
    let mut guest = Guest::attach(&daemon.socket);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;

    let (status, got) = guest.read(8, 4096);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
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
    assert_eq!(
        (used, guest.status()),
        (vec![(0, 1)], VIRTIO_BLK_S_UNSUPP as u8)
    );

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
        table.0,
        32,
        VRING_DESC_F_INDIRECT as u16,
        0,
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
    assert_eq!(
        (used, guest.status()),
        (vec![(0, 513)], VIRTIO_BLK_S_OK as u8)
    );

    // GET_ID: the serial (the file name by default), NUL-padded to the 20 bytes asked for.
    guest.header(VIRTIO_BLK_T_GET_ID, 0);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 20, W), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!(
        (used, guest.status()),
        (vec![(0, 21)], VIRTIO_BLK_S_OK as u8)
    );
    let mut id = [0xffu8; 20];
    guest.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"disk.img\0\0\0\0\0\0\0\0\0\0\0\0");

    // Still alive, still correct.
    let (status, got) = guest.read(0, 8192);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
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
    let ioerr = VIRTIO_BLK_S_IOERR as u8;

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
    assert_eq!((status, &got[..]), (VIRTIO_BLK_S_OK as u8, &data[..4096]));
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
    assert!(daemon.log().contains("guest turned the write cache off"));
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
    assert_eq!(guest.read(0, 512).0, VIRTIO_BLK_S_OK as u8);

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
    assert_eq!(
        (used, guest.status()),
        (vec![(0, 4097)], VIRTIO_BLK_S_OK as u8)
    );
    let mut got = vec![0u8; 4096];
    extra.read_slice(&mut got, GuestAddress(EXTRA_GPA)).unwrap();
    assert_eq!(got, data[1024..1024 + 4096]);
    drop(guest);
    assert!(daemon.stop().success());
}
