//! A hand-driven vhost-user frontend (the `vhost` crate's, plus raw messages), below any
//! well-behaved client library: its guest memory is a memfd shared with the daemon, so a test
//! can place any descriptor chain it likes, publish any avail index, send any message, and read
//! back the used ring and status bytes. Every wait has a deadline: a wedged daemon fails the
//! test instead of hanging it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const MEM_SIZE: u64 = 1 << 20;
/// Where the single-request helpers put their header, data and status byte.
pub const HDR: u64 = 0x10_000;
pub const DATA: u64 = 0x20_000;
pub const STATUS: u64 = 0x30_000;
/// Per-slot headers, status bytes and 4 KiB data buffers for many requests in flight.
const SLOT_HDR: u64 = 0x40_000;
const SLOT_STATUS: u64 = 0x48_000;
const SLOT_DATA: u64 = 0x80_000;
pub const SLOT_DATA_LEN: u32 = 4096;
pub const MAX_SLOTS: u16 = 128;
const _: () = assert!(MAX_SLOTS as u64 * SLOT_DATA_LEN as u64 == MEM_SIZE - SLOT_DATA);
/// What the tests write from slot `slot`, to block `slot` of the disk: a pattern of its own.
pub fn slot_block(slot: u16) -> Vec<u8> {
    (0..usize::try_from(SLOT_DATA_LEN).unwrap())
        .map(|i| crate::pattern_byte(i + usize::from(slot) * 31, 1))
        .collect()
}

/// Checks that `disk` (a file's bytes) holds [`slot_block`] at block `slot` of each of the
/// first `slots` slots.
pub fn assert_slot_blocks(disk: &[u8], slots: u16) {
    let len = usize::try_from(SLOT_DATA_LEN).unwrap();
    for slot in 0..slots {
        let at = usize::from(slot) * len;
        assert!(
            disk[at..at + len] == slot_block(slot)[..],
            "block {slot} on disk"
        );
    }
}

/// A status byte the daemon has not written.
pub const UNTOUCHED: u8 = 0xEE;
use crate::desc::{NEXT, WRITE as W};
use crate::limits;

/// Bytes of a dirty-page log: one bit per page of [`MEM_SIZE`], and room to spare.
const LOG_BYTES: u64 = 4096;

/// The guest pages (4 KiB, by number) marked in `log`; clears them.
pub fn take_dirty_pages(log: &File) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; usize::try_from(LOG_BYTES).unwrap()];
    log.read_exact_at(&mut bytes, 0).unwrap();
    log.write_all_at(&vec![0u8; bytes.len()], 0).unwrap();
    (0u64..)
        .zip(bytes)
        .flat_map(|(byte, bits)| {
            (0..8)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| byte * 8 + b)
        })
        .collect()
}

/// The rings sit in fresh (zeroed) memory, each on its own page.
const DESC_TABLE: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

/// The size of [`disk_with_pattern`]'s disk.
pub const DISK_BYTES: u64 = 1 << 20;

/// A 1 MiB disk file in `dir` holding a known pattern; returns its path and contents.
pub fn disk_with_pattern(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let data: Vec<u8> = (0..DISK_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

pub fn memfd(size: u64) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; we own the returned fd.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    file
}

/// Connects to `socket` with a deadline on every reply.
pub fn connect(socket: &Path) -> Frontend {
    let stream = UnixStream::connect(socket).expect("connect to the daemon");
    stream.set_read_timeout(Some(limits::REPLY)).unwrap();
    Frontend::from_stream(stream, 1)
}

/// How to set the device up.
pub struct Setup {
    pub queue_size: u16,
    /// Negotiate INFLIGHT_SHMFD and use this buffer (None: ask the daemon for one).
    pub inflight: Option<Option<(VhostUserInflight, File)>>,
    /// Reuse this guest memory file (after a daemon restart, the guest's RAM is the same).
    pub memory: Option<File>,
    /// The avail index the ring starts at (SET_VRING_BASE).
    pub base: u16,
    /// Negotiate LOG_SHMFD, so that dirty-page logging can be turned on
    /// ([`Guest::start_dirty_log`]).
    pub dirty_log: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            queue_size: 16,
            inflight: None,
            memory: None,
            base: 0,
            dirty_log: false,
        }
    }
}

/// A guest with one virtqueue, attached to the daemon.
pub struct Guest {
    pub frontend: Frontend,
    pub mem: GuestMemoryMmap,
    pub mem_file: File,
    pub host_base: u64,
    pub kick: EventFd,
    pub call: EventFd,
    pub queue_size: u16,
    pub used_seen: u16,
    /// The in-flight buffer the daemon gave us, to hand to its successor.
    pub inflight: Option<(VhostUserInflight, File)>,
    /// The virtio features acked (without LOG_ALL).
    features: u64,
}

impl Guest {
    /// Connects to the daemon and sets up queue 0 the way QEMU would.
    pub fn attach(socket: &Path) -> Guest {
        Self::attach_with(socket, Setup::default())
    }

    pub fn attach_with(socket: &Path, setup: Setup) -> Guest {
        let file = setup.memory.unwrap_or_else(|| memfd(MEM_SIZE));
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            super::usize_of(MEM_SIZE),
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let host_base = mem.get_host_address(GuestAddress(0)).unwrap() as u64;

        let mut frontend = connect(socket);
        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        let wanted = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_CONFIG_WCE)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_eq!(offered & wanted, wanted, "daemon offers {offered:#x}");
        let offered = frontend.get_protocol_features().unwrap();
        let mut protocol = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        assert!(offered.contains(protocol | VhostUserProtocolFeatures::MQ));
        if setup.inflight.is_some() {
            assert!(offered.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
            protocol |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        if setup.dirty_log {
            assert!(offered.contains(VhostUserProtocolFeatures::LOG_SHMFD));
            protocol |= VhostUserProtocolFeatures::LOG_SHMFD;
        }
        frontend.set_protocol_features(protocol).unwrap();
        // Have every message acknowledged, as QEMU does with REPLY_ACK, so that a call returns
        // only once the daemon has applied it.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        frontend.set_features(wanted).unwrap();
        let inflight = setup.inflight.map(|given| {
            let (info, file) = given.unwrap_or_else(|| {
                frontend
                    .get_inflight_fd(&VhostUserInflight::new(0, 0, 1, setup.queue_size))
                    .expect("GET_INFLIGHT_FD")
            });
            frontend
                .set_inflight_fd(&info, file.as_raw_fd())
                .expect("SET_INFLIGHT_FD");
            (info, file)
        });
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: MEM_SIZE,
                userspace_addr: host_base,
                mmap_offset: 0,
                mmap_handle: file.as_raw_fd(),
            }])
            .unwrap();
        let mut guest = Guest {
            frontend,
            mem,
            mem_file: file,
            host_base,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            queue_size: setup.queue_size,
            used_seen: 0,
            inflight,
            features: wanted,
        };
        guest.start_ring(setup.base);
        guest
    }

    /// Turns dirty-page logging on, as QEMU does when a migration starts: a fresh log
    /// (SET_LOG_BASE, one bit per 4 KiB page of guest memory), then `VHOST_F_LOG_ALL`.
    /// Returns the log.
    pub fn start_dirty_log(&mut self) -> File {
        let log = memfd(LOG_BYTES);
        let region = VhostUserDirtyLogRegion {
            mmap_size: LOG_BYTES,
            mmap_offset: 0,
            mmap_handle: log.as_raw_fd(),
        };
        self.frontend.set_log_base(0, Some(region)).unwrap();
        let logging = self.features | VhostUserVirtioFeatures::LOG_ALL.bits();
        self.frontend.set_features(logging).unwrap();
        log
    }

    /// Turns dirty-page logging off (the migration ended or was cancelled).
    pub fn stop_dirty_log(&mut self) {
        self.frontend.set_features(self.features).unwrap();
    }

    /// Starts (or restarts) queue 0 at avail index `base`.
    pub fn start_ring(&mut self, base: u16) {
        // Before the ring starts: the daemon may publish as soon as it has the kick fd.
        self.used_seen = self.used_idx();
        let config = self.ring_config();
        let f = &mut self.frontend;
        f.set_vring_num(0, self.queue_size).unwrap();
        f.set_vring_base(0, base).unwrap();
        f.set_vring_addr(0, &config).unwrap();
        f.set_vring_call(0, &self.call).unwrap();
        f.set_vring_kick(0, &self.kick).unwrap();
        f.set_vring_enable(0, true).unwrap();
    }

    pub fn ring_config(&self) -> VringConfigData {
        VringConfigData {
            queue_max_size: self.queue_size,
            queue_size: self.queue_size,
            flags: 0,
            desc_table_addr: self.host_base + DESC_TABLE,
            used_ring_addr: self.host_base + USED,
            avail_ring_addr: self.host_base + AVAIL,
            log_addr: None,
        }
    }

    pub fn load_u16(&self, addr: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(addr)).unwrap())
    }

    pub fn avail_idx(&self) -> u16 {
        self.load_u16(AVAIL + 2)
    }

    pub fn used_idx(&self) -> u16 {
        self.load_u16(USED + 2)
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    pub fn header(&self, ty: u32, sector: u64) {
        self.header_at(HDR, ty, sector);
    }

    fn header_at(&self, at: u64, ty: u32, sector: u64) {
        self.mem.write_obj(ty.to_le(), GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(at + 8))
            .unwrap();
    }

    /// Stores descriptors at table index `first` onwards.
    pub fn put_descriptors(&self, first: u16, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            let at = DESC_TABLE + 16 * (u64::from(first) + i as u64);
            self.mem.write_obj(*d, GuestAddress(at)).unwrap();
        }
    }

    /// Appends `heads` to the avail ring and publishes the new index (no kick).
    pub fn make_available(&self, heads: &[u16]) {
        let avail_idx = self.avail_idx();
        for (n, head) in heads.iter().enumerate() {
            let slot = (u64::from(avail_idx) + n as u64) % u64::from(self.queue_size);
            self.mem
                .write_obj(head.to_le(), GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
        }
        self.set_avail_idx(avail_idx.wrapping_add(u16::try_from(heads.len()).unwrap()));
    }

    /// Collects used-ring entries until `n` new ones arrived.
    pub fn wait_used(&mut self, n: usize) -> Vec<(u32, u32)> {
        let mut used = Vec::new();
        while used.len() < n {
            wait_for_call(&self.call);
            used.extend(self.take_used());
        }
        used
    }

    /// The used-ring entries added since the last look.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.used_idx();
        let mut used = Vec::new();
        while self.used_seen != idx {
            used.push(self.used_entry(self.used_seen));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        used
    }

    /// The used-ring entry the used index `index` points at: (head, length).
    fn used_entry(&self, index: u16) -> (u32, u32) {
        let elem = USED + 4 + 8 * (u64::from(index) % u64::from(self.queue_size));
        let id = u32::from_le(self.mem.read_obj(GuestAddress(elem)).unwrap());
        let len = u32::from_le(self.mem.read_obj(GuestAddress(elem + 4)).unwrap());
        (id, len)
    }

    /// Makes `descs` (stored from table index 0, next pointers as given) available, kicks, and
    /// waits for the used ring to grow by `expect_used` entries. Returns them.
    pub fn submit(
        &mut self,
        descs: &[RawDescriptor],
        heads: &[u16],
        expect_used: u16,
    ) -> Vec<(u32, u32)> {
        self.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        self.put_descriptors(0, descs);
        self.make_available(heads);
        self.kick.write(1).unwrap();
        self.wait_used(usize::from(expect_used))
    }

    pub fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// A well-formed read of `len` bytes at `sector`; returns the status and the data.
    pub fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
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

    /// Places request `slot` (descriptors 3*slot.., its own header, 4 KiB of data and status
    /// byte): a read or, with `data`, a write of one 4 KiB block at `sector`. Returns its head.
    pub fn place_request(&self, slot: u16, sector: u64, data: Option<&[u8]>) -> u16 {
        assert!(slot < MAX_SLOTS && 3 * slot + 2 < self.queue_size);
        let hdr = SLOT_HDR + 16 * u64::from(slot);
        let buf = SLOT_DATA + u64::from(SLOT_DATA_LEN) * u64::from(slot);
        let status = SLOT_STATUS + u64::from(slot);
        let (ty, flags) = match data {
            Some(data) => {
                self.mem.write_slice(data, GuestAddress(buf)).unwrap();
                (VIRTIO_BLK_T_OUT, 0)
            }
            None => (VIRTIO_BLK_T_IN, W),
        };
        self.header_at(hdr, ty, sector);
        self.mem.write_obj(UNTOUCHED, GuestAddress(status)).unwrap();
        let head = 3 * slot;
        let descs = [
            Descriptor::new(hdr, 16, NEXT, head + 1),
            Descriptor::new(buf, SLOT_DATA_LEN, flags | NEXT, head + 2),
            Descriptor::new(status, 1, W, 0),
        ];
        self.put_descriptors(head, &descs.map(RawDescriptor::from));
        head
    }

    /// The device's configuration space (60 bytes: up to the write-zeroes fields).
    pub fn config(&mut self) -> Vec<u8> {
        let (_, payload) = self
            .frontend
            .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .unwrap();
        payload
    }

    /// How many heads of queue 0 the in-flight buffer marks as taken and not completed.
    pub fn heads_in_flight(&self) -> usize {
        self.marked_heads().len()
    }

    /// How many distinct heads of queue 0 the daemon has taken: those in the used ring and
    /// those the in-flight buffer marks. A union, not a sum: between writing a head's used
    /// entry and clearing its mark the daemon has it in both, and a sum read in that window
    /// counts a request that was never taken. Exact while the ring, started at index 0, has
    /// had fewer requests than its size.
    pub fn heads_taken(&self) -> usize {
        // The used index first: a head published after it is read is still marked, or was
        // cleared and is missed (an undercount, which the next look corrects).
        let used = self.used_idx().min(self.queue_size);
        let mut heads = self.marked_heads();
        heads.extend(
            (0..used)
                .map(|index| u16::try_from(self.used_entry(index).0).expect("a head below 2^16")),
        );
        heads.len()
    }

    /// The heads of queue 0 the in-flight buffer marks (the daemon's bookkeeping, which the
    /// frontend can read: the vhost-user layout, a 16-byte header then 16 bytes per
    /// descriptor, the first of them the in-flight flag).
    fn marked_heads(&self) -> std::collections::BTreeSet<u16> {
        use std::os::unix::fs::FileExt;
        let (info, file) = self.inflight.as_ref().expect("an in-flight buffer");
        let mut region = vec![0u8; 16 + 16 * usize::from(info.queue_size)];
        file.read_exact_at(&mut region, info.mmap_offset).unwrap();
        (0..info.queue_size)
            .filter(|&head| region[16 + 16 * usize::from(head)] == 1)
            .collect()
    }

    pub fn slot_status(&self, slot: u16) -> u8 {
        self.mem
            .read_obj(GuestAddress(SLOT_STATUS + u64::from(slot)))
            .unwrap()
    }

    pub fn slot_data(&self, slot: u16) -> Vec<u8> {
        let mut data = vec![0u8; SLOT_DATA_LEN as usize];
        let at = SLOT_DATA + u64::from(SLOT_DATA_LEN) * u64::from(slot);
        self.mem.read_slice(&mut data, GuestAddress(at)).unwrap();
        data
    }
}

/// Waits for the call eventfd, failing the test after [`limits::REPLY`].
pub fn wait_for_call(call: &EventFd) {
    let mut pfd = libc::pollfd {
        fd: call.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let limit = i32::try_from(limits::REPLY.as_millis()).unwrap();
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, limit) };
    assert_eq!(
        ready,
        1,
        "the daemon did not answer within {:?}",
        limits::REPLY
    );
    let _ = call.read();
}

/// A chain stored from index 0 with consecutive next pointers.
pub fn chain(parts: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
    parts
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == parts.len();
            let flags = if last { flags } else { flags | NEXT };
            let next = u16::try_from(i + 1).unwrap();
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect()
}

/// vhost-user message codes used by raw messages.
pub mod code {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const SET_OWNER: u32 = 3;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
}

/// A vhost-user connection driven one raw message at a time, for what the `vhost` crate's
/// frontend cannot say (values out of range, a message split across writes).
pub struct RawFrontend {
    pub stream: UnixStream,
}

const VERSION_1: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;

impl RawFrontend {
    pub fn connect(socket: &Path) -> RawFrontend {
        let stream = UnixStream::connect(socket).expect("connect to the daemon");
        stream.set_read_timeout(Some(limits::REPLY)).unwrap();
        RawFrontend { stream }
    }

    fn header(code: u32, body_len: usize, need_reply: bool) -> Vec<u8> {
        let flags = VERSION_1 | if need_reply { NEED_REPLY } else { 0 };
        let mut msg = Vec::new();
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&u32::try_from(body_len).unwrap().to_le_bytes());
        msg
    }

    /// Sends one message in one write, with `fds` attached.
    pub fn send(&mut self, code: u32, body: &[u8], need_reply: bool, fds: &[RawFd]) {
        let mut msg = Self::header(code, body.len(), need_reply);
        msg.extend_from_slice(body);
        self.stream.send_with_fds(&[&msg[..]], fds).unwrap();
    }

    /// Sends one message in two writes, split `at` bytes into the body; the second goes only
    /// once the daemon has read all of the first.
    pub fn send_split(&mut self, code: u32, body: &[u8], at: usize, need_reply: bool) {
        let mut first = Self::header(code, body.len(), need_reply);
        first.extend_from_slice(&body[..at]);
        self.stream.write_all(&first).unwrap();
        super::eventually("the daemon reading the first part", limits::REPLY, || {
            self.unread_by_peer() == 0
        });
        self.stream.write_all(&body[at..]).unwrap();
    }

    /// Bytes we sent that the daemon has not read yet (SIOCOUTQ on a unix stream socket).
    fn unread_by_peer(&self) -> i32 {
        let mut pending: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int through the pointer we pass.
        let ret = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut pending) };
        assert_eq!(ret, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
        pending
    }

    /// Reads one reply and returns its u64 payload; `None` if the daemon hung up instead.
    pub fn reply_u64(&mut self) -> Option<u64> {
        use std::io::Read;
        let mut buf = [0u8; 12 + 8];
        match self.stream.read_exact(&mut buf) {
            Ok(()) => Some(u64::from_le_bytes(buf[12..20].try_into().unwrap())),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(e) => panic!("no answer from the daemon within {:?}: {e}", limits::REPLY),
        }
    }

    /// Reads a vring-state reply (index, num).
    pub fn reply_vring_state(&mut self) -> Option<(u32, u32)> {
        self.reply_u64().map(|v| {
            (
                u32::try_from(v & 0xffff_ffff).unwrap(),
                u32::try_from(v >> 32).unwrap(),
            )
        })
    }

    /// Sets the owner and negotiates features with REPLY_ACK, as every frontend starts, so
    /// that every later message with `need_reply` is answered 0 (done) or 1 (refused).
    pub fn handshake(&mut self) {
        self.send(code::SET_OWNER, &[], false, &[]);
        self.send(code::GET_FEATURES, &[], false, &[]);
        self.reply_u64().expect("GET_FEATURES answered");
        let features =
            VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | (1 << VIRTIO_F_VERSION_1);
        self.send(code::SET_FEATURES, &features.to_le_bytes(), false, &[]);
        let protocol = VhostUserProtocolFeatures::REPLY_ACK.bits();
        self.send(
            code::SET_PROTOCOL_FEATURES,
            &protocol.to_le_bytes(),
            true,
            &[],
        );
        assert_eq!(self.reply_u64(), Some(0), "SET_PROTOCOL_FEATURES acked");
    }
}

/// A vring state body: index, then value.
pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut body = index.to_le_bytes().to_vec();
    body.extend_from_slice(&num.to_le_bytes());
    body
}
