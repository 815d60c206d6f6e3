//! The worker in-process: a vring in ordinary memory, filled the way a guest driver fills it,
//! and a scripted engine over a disk held in a `Vec`.

use std::sync::Mutex;

use vhost_user_backend::VringT;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vmm_sys_util::eventfd::EventFd;

use super::*;

const QUEUE_SIZE: u16 = 16;
const HDR: u64 = 0x10_000;
const DATA: u64 = 0x20_000;
const STATUS: u64 = 0x30_000;
const MEM_END: u64 = 0x40_000;
const DISK_BYTES: usize = 1 << 20;

/// An engine over a disk in memory that moves at most `max_transfer` bytes per operation, as
/// a kernel may when a transfer is interrupted or split: every operation longer than that
/// completes short.
struct ShortEngine {
    disk: Arc<Mutex<Vec<u8>>>,
    max_transfer: usize,
    /// (offset, bytes asked) of every read or write pushed.
    pushed: Arc<Mutex<Vec<(u64, usize)>>>,
    done: Vec<Completion>,
    eventfd: EventFd,
    /// Runs on every push: plays a guest that adds requests while the worker serves.
    on_push: Option<Box<dyn FnMut() + Send>>,
}

impl Engine for ShortEngine {
    fn completion_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.eventfd.as_raw_fd()
    }

    unsafe fn push(&mut self, token: u64, op: IoOp) {
        let (offset, iov, iovcnt, write) = match op {
            IoOp::Read {
                offset,
                iov,
                iovcnt,
            } => (offset, iov, iovcnt, false),
            IoOp::Write {
                offset,
                iov,
                iovcnt,
                ..
            } => (offset, iov, iovcnt, true),
            _ => panic!("only reads and writes are scripted"),
        };
        // SAFETY: the push contract guarantees `iovcnt` valid iovecs at `iov`.
        let iovs = unsafe { std::slice::from_raw_parts(iov, iovcnt) };
        let asked: usize = iovs.iter().map(|v| v.iov_len).sum();
        self.pushed.lock().unwrap().push((offset, asked));
        if let Some(hook) = &mut self.on_push {
            hook();
        }
        let n = asked.min(self.max_transfer);
        let start = usize::try_from(offset).unwrap();
        let mut disk = self.disk.lock().unwrap();
        let range = &mut disk[start..start + n];
        // SAFETY: the iovecs describe guest memory the worker keeps mapped.
        unsafe {
            if write {
                iov::copy_from(iovs, range);
            } else {
                iov::copy_to(iovs, 0, range);
            }
        }
        self.done.push(Completion {
            token,
            result: Ok(n),
        });
    }

    fn submit(&mut self) -> std::io::Result<()> {
        self.eventfd.write(1)
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> std::io::Result<()> {
        out.append(&mut self.done);
        Ok(())
    }
}

struct Harness {
    mem: GuestMemory,
    vring: VringRwLock,
    worker: QueueWorker,
    disk: Arc<Mutex<Vec<u8>>>,
    pushed: Arc<Mutex<Vec<(u64, usize)>>>,
}

impl Harness {
    fn new(max_transfer: usize) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap();
        Self::with_guest_memory(mem, max_transfer, None)
    }

    fn with_guest_memory(
        mem: GuestMemory,
        max_transfer: usize,
        on_push: Option<Box<dyn FnMut() + Send>>,
    ) -> Self {
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vring = VringRwLock::new(atomic.clone(), QUEUE_SIZE).unwrap();
        vring.set_queue_size(QUEUE_SIZE);
        vring.set_queue_info(0, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        let disk: Vec<u8> = (0..DISK_BYTES).map(|i| (i % 251) as u8).collect();
        let disk = Arc::new(Mutex::new(disk));
        let pushed = Arc::default();
        let engine = ShortEngine {
            disk: disk.clone(),
            max_transfer,
            pushed: Arc::clone(&pushed),
            done: Vec::new(),
            eventfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            on_push,
        };
        let config = WorkerConfig {
            limits: Limits {
                capacity: DISK_BYTES as u64,
                block_size: 512,
                read_only: false,
                max_data_bytes: 1 << 20,
            },
            serial: b"test".to_vec(),
            buffer_alignment: 1,
            honours_flush: true,
            write_cache: Arc::new(AtomicBool::new(true)),
            poll: None,
        };
        let mut worker =
            QueueWorker::new(0, Box::new(engine), Arc::new(config), atomic, QUEUE_SIZE);
        worker.start(&vring, None);
        Harness {
            mem,
            vring,
            worker,
            disk,
            pushed,
        }
    }

    /// Makes one request of `len` bytes at `sector` available and kicks; returns the status
    /// byte and the used ring's length for it, once the worker completed it.
    fn request(&mut self, ty: u32, sector: u64, len: u32) -> (u8, u32) {
        make_available(&self.mem, ty, sector, len);
        self.worker.on_kick(&self.vring);
        // The scripted engine signals its eventfd on every submit, as a real one would once
        // the I/O finished.
        while self.worker.in_flight > 0 {
            self.worker.on_completion(&self.vring);
        }
        let used_idx = self.used_idx();
        let entry = USED + 4 + 8 * u64::from((used_idx - 1) % QUEUE_SIZE);
        let len: u32 = self.mem.read_obj(GuestAddress(entry + 4)).unwrap();
        let status = self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap();
        (status, len)
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }
}

/// Where the rings are; the descriptor table is at 0.
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

/// Puts one request (descriptors 0..3, so head 0) in the avail ring, as a guest would.
fn make_available(mem: &GuestMemory, ty: u32, sector: u64, len: u32) {
    mem.write_obj(ty.to_le(), GuestAddress(HDR)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let data_flags = if ty == VIRTIO_BLK_T_IN {
        VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    let next = VRING_DESC_F_NEXT as u16;
    let descs = [
        Descriptor::new(HDR, 16, next, 1),
        Descriptor::new(DATA, len, data_flags | next, 2),
        Descriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, d) in (0u64..).zip(descs) {
        mem.write_obj(d, GuestAddress(16 * i)).unwrap();
    }
    let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
    let slot = AVAIL + 4 + 2 * u64::from(idx % QUEUE_SIZE);
    mem.write_obj(0u16, GuestAddress(slot)).unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
        .unwrap();
}

#[test]
fn a_short_read_is_resubmitted_for_the_rest() {
    let mut h = Harness::new(4096);
    let (status, used_len) = h.request(VIRTIO_BLK_T_IN, 8, 16 * 1024);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used_len, 16 * 1024 + 1);
    assert_eq!(
        *h.pushed.lock().unwrap(),
        [(4096, 16384), (8192, 12288), (12288, 8192), (16384, 4096)]
    );
    let mut read = vec![0u8; 16 * 1024];
    h.mem.read_slice(&mut read, GuestAddress(DATA)).unwrap();
    assert_eq!(read, h.disk.lock().unwrap()[4096..4096 + 16 * 1024]);
}

#[test]
fn a_short_write_is_resubmitted_for_the_rest() {
    // 3000 bytes per transfer: the rest starts in the middle of a buffer, not on a sector.
    let mut h = Harness::new(3000);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 256) as u8).collect();
    h.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let (status, used_len) = h.request(VIRTIO_BLK_T_OUT, 2, 8192);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(used_len, 1);
    assert_eq!(
        *h.pushed.lock().unwrap(),
        [(1024, 8192), (4024, 5192), (7024, 2192)]
    );
    assert_eq!(h.disk.lock().unwrap()[1024..1024 + 8192], data[..]);
}

#[test]
fn a_transfer_that_stops_making_progress_fails_the_request() {
    let mut h = Harness::new(0);
    let (status, used_len) = h.request(VIRTIO_BLK_T_IN, 0, 4096);
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(used_len, 1);
    assert_eq!(h.pushed.lock().unwrap().len(), 1);
}

#[test]
fn a_guest_that_keeps_the_ring_busy_is_served_to_the_end() {
    // Each request the worker pushes, the guest answers with a new one, 200 times over: the
    // worker keeps taking (its batch size must stay bounded) and completes every one.
    let guest_mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap();
    let mut more = 200;
    let feed = {
        let mem = guest_mem.clone();
        move || {
            if more > 0 {
                more -= 1;
                make_available(&mem, VIRTIO_BLK_T_IN, 0, 512);
            }
        }
    };
    let mut h = Harness::with_guest_memory(guest_mem, 4096, Some(Box::new(feed)));
    let (status, _) = h.request(VIRTIO_BLK_T_IN, 0, 512);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.pushed.lock().unwrap().len(), 201);
    assert_eq!(h.used_idx(), 201);
}
