//! The worker in-process: a vring in ordinary memory, filled the way a guest driver fills it,
//! and a scripted engine over a disk held in a `Vec`.

use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use vhost_user_backend::VringT;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::GuestMemoryBackend as _;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use controls::ErrorPolicy;
use throttle::ThrottleConfig;
use vblkd_test_support::desc;

const QUEUE_SIZE: u16 = 16;
/// Where the rings are; the descriptor table is at 0.
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const MEM_END: u64 = 0x40_000;
const DISK_BYTES: usize = 1 << 20;

/// What the scripted engine does, and what it saw. Shared with the test.
struct Script {
    disk: Vec<u8>,
    /// Reads and writes move at most this many bytes per operation, as a kernel may when a
    /// transfer is interrupted or split.
    max_transfer: usize,
    /// Every operation fails with this errno.
    fail: Option<i32>,
    /// Completions are kept until the test hands them out (see [`Harness::release`]).
    hold: bool,
    held: Vec<Completion>,
    /// Completions the test handed out from `held`, in its order.
    released: Vec<Completion>,
    /// (offset, bytes asked, first buffer's address) of every read or write pushed.
    pushed: Vec<(u64, usize, usize)>,
    flushes: usize,
    /// Runs on every push: plays a guest that adds requests while the worker serves.
    on_push: Option<Box<dyn FnMut() + Send>>,
}

struct ScriptedEngine {
    script: Arc<Mutex<Script>>,
    eventfd: EventFd,
}

impl Engine for ScriptedEngine {
    fn completion_fd(&self) -> std::os::fd::RawFd {
        self.eventfd.as_raw_fd()
    }

    fn push(&mut self, token: u64, op: IoOp) {
        let mut script = self.script.lock().unwrap();
        if let Some(hook) = &mut script.on_push {
            hook();
        }
        let write = op.direction().is_some_and(Direction::is_write);
        let result = match &op {
            IoOp::Transfer { offset, data, .. } => {
                let iovs = data.iovecs();
                let asked = data.len();
                script
                    .pushed
                    .push((*offset, asked, iovs[0].iov_base as usize));
                let n = asked.min(script.max_transfer);
                let start = usize::try_from(*offset).unwrap();
                let range = &mut script.disk[start..start + n];
                // SAFETY: the operation owns its buffers until its completion.
                unsafe {
                    if write {
                        iov::copy_from(iovs, range);
                    } else {
                        iov::copy_to(iovs, 0, range);
                    }
                }
                n
            }
            IoOp::Flush => {
                script.flushes += 1;
                0
            }
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len, .. } => {
                let start = usize::try_from(*offset).unwrap();
                script.disk[start..start + usize::try_from(*len).unwrap()].fill(0);
                0
            }
        };
        let result = match script.fail {
            Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
            None => Ok(result),
        };
        script.held.push(Completion::new(token, op, result));
    }

    fn submit(&mut self) -> std::io::Result<()> {
        self.eventfd.write(1)
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> std::io::Result<()> {
        let mut script = self.script.lock().unwrap();
        out.append(&mut script.released);
        if !script.hold {
            out.append(&mut script.held);
        }
        Ok(())
    }
}

/// One request of the test guest. Request `slot` uses descriptors `3 * slot ..= 3 * slot + 2`
/// (so its head is `3 * slot`) and its own header, data and status addresses.
#[derive(Clone, Copy)]
struct Req {
    slot: u16,
    ty: u32,
    sector: u64,
    len: u32,
    /// Added to the data address: a misaligned buffer when not a multiple of 512.
    misalign: u64,
}

impl Req {
    fn new(ty: u32, sector: u64, len: u32) -> Self {
        Req {
            slot: 0,
            ty,
            sector,
            len,
            misalign: 0,
        }
    }

    fn in_slot(self, slot: u16) -> Self {
        Req { slot, ..self }
    }

    fn head(&self) -> u16 {
        3 * self.slot
    }

    fn header(&self) -> u64 {
        0x10_000 + 0x100 * u64::from(self.slot)
    }

    fn data(&self) -> u64 {
        0x20_000 + 0x4000 * u64::from(self.slot) + self.misalign
    }

    fn status(&self) -> u64 {
        0x30_000 + u64::from(self.slot)
    }
}

/// Puts `req` in the avail ring, as a guest driver would.
fn make_available(mem: &GuestMemory, req: Req) {
    mem.write_obj(req.ty.to_le(), GuestAddress(req.header()))
        .unwrap();
    mem.write_obj(req.sector.to_le(), GuestAddress(req.header() + 8))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(req.status())).unwrap();
    // Reads, GET_ID: the device writes the data buffer.
    let data_flags = if matches!(req.ty, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID) {
        desc::WRITE
    } else {
        0
    };
    let (next, head) = (desc::NEXT, req.head());
    let descs = [
        Descriptor::new(req.header(), 16, next, head + 1),
        Descriptor::new(req.data(), req.len, data_flags | next, head + 2),
        Descriptor::new(req.status(), 1, desc::WRITE, 0),
    ];
    for (i, d) in (u64::from(head)..).zip(descs) {
        mem.write_obj(d, GuestAddress(16 * i)).unwrap();
    }
    let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
    let entry = AVAIL + 4 + 2 * u64::from(idx % QUEUE_SIZE);
    mem.write_obj(head, GuestAddress(entry)).unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
        .unwrap();
}

struct Harness {
    mem: GuestMemory,
    vring: Vring,
    worker: QueueWorker,
    script: Arc<Mutex<Script>>,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {}, 1)
    }

    fn with(setup: impl FnOnce(&mut Script), buffer_alignment: usize) -> Self {
        let controls = Controls::new(1, ThrottleConfig::default(), ErrorPolicy::default());
        Self::under(controls.unwrap(), setup, buffer_alignment)
    }

    /// A harness under `controls` whose script `setup` adjusts, for a disk needing
    /// `buffer_alignment`.
    fn under(controls: Controls, setup: impl FnOnce(&mut Script), buffer_alignment: usize) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), usize::try_from(MEM_END).unwrap())])
            .unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vring = Vring::new(atomic.clone(), QUEUE_SIZE).unwrap();
        vring.set_queue_size(QUEUE_SIZE);
        vring.set_queue_info(0, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        let mut script = Script {
            disk: (0..=250).cycle().take(DISK_BYTES).collect(),
            max_transfer: usize::MAX,
            fail: None,
            hold: false,
            held: Vec::new(),
            released: Vec::new(),
            pushed: Vec::new(),
            flushes: 0,
            on_push: None,
        };
        setup(&mut script);
        let script = Arc::new(Mutex::new(script));
        let engine = ScriptedEngine {
            script: Arc::clone(&script),
            eventfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let capacity = crate::disk::Capacity::new(DISK_BYTES as u64, 512).unwrap();
        let config = QueueConfig {
            limits: Limits {
                capacity: Arc::new(capacity),
                block_size: 512,
                read_only: false,
                max_data_bytes: 1 << 20,
            },
            serial: b"test-serial".to_vec(),
            buffer_alignment,
            honours_flush: true,
            write_cache: Arc::new(AtomicBool::new(true)),
            poll: None,
            dirty_log: Arc::default(),
            fenced: Arc::default(),
            controls: Arc::new(controls),
        };
        let mut worker = QueueWorker::new(
            0,
            Box::new(engine),
            Arc::new(config),
            atomic,
            QUEUE_SIZE,
            Arc::default(),
        );
        worker.start(&vring, None);
        Harness {
            mem,
            vring,
            worker,
            script,
        }
    }

    /// Makes `reqs` available and kicks.
    fn kick(&mut self, reqs: &[Req]) {
        for &req in reqs {
            make_available(&self.mem, req);
        }
        assert_eq!(self.worker.on_kick(&self.vring), Polling::No);
    }

    /// Makes one request available, kicks, and completes it; returns its status byte and the
    /// used ring's length for it.
    fn request(&mut self, req: Req) -> (u8, u32) {
        self.kick(&[req]);
        // The scripted engine signals its eventfd on every submit, as a real one would once
        // the I/O finished.
        while self.worker.in_flight > 0 {
            assert_eq!(self.worker.on_completion(&self.vring), Polling::No);
        }
        let (head, len) = *self.used().last().unwrap();
        assert_eq!(head, u32::from(req.head()));
        (self.status(req), len)
    }

    fn status(&self, req: Req) -> u8 {
        self.mem.read_obj(GuestAddress(req.status())).unwrap()
    }

    /// Hands out held completions, in the order of `tokens` (descriptor heads).
    fn release(&mut self, tokens: &[u16]) {
        {
            let mut script = self.script.lock().unwrap();
            for &token in tokens {
                let at = script
                    .held
                    .iter()
                    .position(|c| c.token == u64::from(token))
                    .unwrap();
                let completion = script.held.remove(at);
                script.released.push(completion);
            }
        }
        assert_eq!(self.worker.on_completion(&self.vring), Polling::No);
    }

    /// (offset, bytes) of every read or write the engine was given.
    fn asked(&self) -> Vec<(u64, usize)> {
        let script = self.script.lock().unwrap();
        script.pushed.iter().map(|p| (p.0, p.1)).collect()
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// The used ring's entries so far: (head, length).
    fn used(&self) -> Vec<(u32, u32)> {
        (0..self.used_idx())
            .map(|i| {
                let entry = USED + 4 + 8 * u64::from(i % QUEUE_SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(entry)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(entry + 4)).unwrap();
                (id, len)
            })
            .collect()
    }

    fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }
}

#[test]
fn a_short_read_is_resubmitted_for_the_rest() {
    let mut h = Harness::with(|s| s.max_transfer = 4096, 1);
    let req = Req::new(VIRTIO_BLK_T_IN, 8, 16 * 1024);
    let (status, used_len) = h.request(req);
    assert_eq!(status, status::OK);
    assert_eq!(used_len, 16 * 1024 + 1);
    let asked = h.asked();
    assert_eq!(
        asked,
        [(4096, 16384), (8192, 12288), (12288, 8192), (16384, 4096)]
    );
    let read = h.read_guest(req.data(), 16 * 1024);
    assert_eq!(read, h.script.lock().unwrap().disk[4096..4096 + 16 * 1024]);
}

#[test]
fn a_short_write_is_resubmitted_for_the_rest() {
    // 3000 bytes per transfer: the rest starts in the middle of a buffer, not on a sector.
    let mut h = Harness::with(|s| s.max_transfer = 3000, 1);
    let req = Req::new(VIRTIO_BLK_T_OUT, 2, 8192);
    let data: Vec<u8> = (0..=255).cycle().step_by(7).take(8192).collect();
    h.mem.write_slice(&data, GuestAddress(req.data())).unwrap();
    let (status, used_len) = h.request(req);
    assert_eq!(status, status::OK);
    assert_eq!(used_len, 1);
    let asked = h.asked();
    assert_eq!(asked, [(1024, 8192), (4024, 5192), (7024, 2192)]);
    assert_eq!(h.script.lock().unwrap().disk[1024..1024 + 8192], data[..]);
}

#[test]
fn a_transfer_that_stops_making_progress_fails_the_request() {
    let mut h = Harness::with(|s| s.max_transfer = 0, 1);
    let (status, used_len) = h.request(Req::new(VIRTIO_BLK_T_IN, 0, 4096));
    assert_eq!(status, status::IOERR);
    assert_eq!(used_len, 1);
    assert_eq!(h.script.lock().unwrap().pushed.len(), 1);
}

#[test]
fn an_engine_error_fails_only_that_request_with_ioerr() {
    let mut h = Harness::with(|s| s.fail = Some(libc::EIO), 1);
    let (status, used_len) = h.request(Req::new(VIRTIO_BLK_T_IN, 0, 4096));
    assert_eq!((status, used_len), (status::IOERR, 1));
    h.script.lock().unwrap().fail = None;
    let (status, used_len) = h.request(Req::new(VIRTIO_BLK_T_IN, 0, 4096));
    assert_eq!((status, used_len), (status::OK, 4097));
}

/// Runs the worker until nothing it started is with the engine.
fn finish_submitted(h: &mut Harness) {
    while h.worker.in_flight > h.worker.held.len() + h.worker.throttled.len() {
        assert_eq!(h.worker.on_completion(&h.vring), Polling::No);
    }
}

#[test]
fn a_write_to_a_full_disk_is_held_until_resumed_and_the_queue_waits() {
    let mut h = Harness::with(|s| s.fail = Some(libc::ENOSPC), 1);
    let write = Req::new(VIRTIO_BLK_T_OUT, 0, 4096);
    h.mem
        .write_slice(&[7; 4096], GuestAddress(write.data()))
        .unwrap();
    h.kick(&[write]);
    finish_submitted(&mut h);
    let controls = Arc::clone(&h.worker.config.controls);
    assert!(controls.paused());
    assert_eq!(controls.cause().unwrap().errno, libc::ENOSPC);
    assert!(h.used().is_empty(), "held, not completed");
    assert_eq!(h.status(write), 0xff, "no status written");
    // While paused, the queue takes nothing new.
    let read = Req::new(VIRTIO_BLK_T_IN, 8, 512).in_slot(1);
    h.kick(&[read]);
    assert_eq!(h.asked().len(), 1);
    // Space is freed; the operator resumes; the write is done again, then the read.
    h.script.lock().unwrap().fail = None;
    controls.resume();
    assert_eq!(h.worker.on_timer(&h.vring), Polling::No);
    finish_submitted(&mut h);
    assert_eq!(h.used().len(), 2);
    assert_eq!((h.status(write), h.status(read)), (status::OK, status::OK));
    assert_eq!(h.script.lock().unwrap().disk[..4096], [7; 4096]);
    assert_eq!(h.worker.stats.get(Counter::HeldOnError), 1);
    assert_eq!(h.worker.stats.get(Counter::IoErrors), 0);
}

#[test]
fn with_werror_report_a_full_disk_fails_the_write() {
    let report = ErrorPolicy {
        read: controls::OnError::Report,
        write: controls::OnError::Report,
    };
    let controls = Controls::new(1, ThrottleConfig::default(), report).unwrap();
    let mut h = Harness::under(controls, |s| s.fail = Some(libc::ENOSPC), 1);
    let (status, _) = h.request(Req::new(VIRTIO_BLK_T_OUT, 0, 4096));
    assert_eq!(status, status::IOERR);
    assert!(!h.worker.config.controls.paused());
}

#[test]
fn a_held_request_fails_when_the_ring_stops_without_a_tracking_buffer() {
    let mut h = Harness::with(|s| s.fail = Some(libc::ENOSPC), 1);
    let write = Req::new(VIRTIO_BLK_T_OUT, 0, 512);
    h.kick(&[write]);
    finish_submitted(&mut h);
    assert_eq!(h.worker.held.len(), 1);
    h.worker.stop();
    assert_eq!(h.worker.in_flight, 0);
    assert_eq!(h.used(), [(u32::from(write.head()), 1)]);
    assert_eq!(h.status(write), status::IOERR);
}

#[test]
fn a_queue_over_its_limits_holds_requests_until_its_timer_fires() {
    // One request a second: the first is admitted, the second held, the third stays in the
    // ring.
    let limits = "iops-total=1".parse().unwrap();
    let controls = Controls::new(1, limits, ErrorPolicy::default()).unwrap();
    let mut h = Harness::under(controls, |s| s.hold = true, 1);
    let reqs = [0, 1, 2].map(|slot| Req::new(VIRTIO_BLK_T_IN, 0, 512).in_slot(slot));
    h.kick(&reqs);
    assert_eq!(h.asked().len(), 1);
    assert_eq!(h.worker.throttled.len(), 1);
    assert_eq!(h.worker.in_flight, 2);
    assert_eq!(h.worker.stats.get(Counter::Throttled), 1);
    // A kick meanwhile changes nothing.
    assert_eq!(h.worker.on_kick(&h.vring), Polling::No);
    assert_eq!(h.asked().len(), 1);
    // The limits are lifted: the timer wakes the queue, and it goes on.
    h.worker
        .config
        .controls
        .set_limits(ThrottleConfig::default());
    assert_eq!(h.worker.on_timer(&h.vring), Polling::No);
    assert_eq!(h.asked().len(), 3);
    h.script.lock().unwrap().hold = false;
    finish_submitted(&mut h);
    assert_eq!(h.used().len(), 3);
    assert!(reqs.iter().all(|&r| h.status(r) == status::OK));
}

#[test]
fn stopping_the_ring_completes_what_the_limits_held_back() {
    let limits = "iops-total=1".parse().unwrap();
    let controls = Controls::new(1, limits, ErrorPolicy::default()).unwrap();
    let mut h = Harness::under(controls, |_| {}, 1);
    let reqs = [0, 1, 2].map(|slot| Req::new(VIRTIO_BLK_T_IN, 0, 512).in_slot(slot));
    h.kick(&reqs);
    assert_eq!(h.worker.throttled.len(), 1);
    // GET_VRING_BASE: the frontend must get a ring with nothing in flight.
    h.worker.stop();
    assert_eq!(h.worker.in_flight, 0);
    assert_eq!(h.used().len(), 2, "the third was never taken");
    assert!(reqs[..2].iter().all(|&r| h.status(r) == status::OK));
    assert_eq!(h.worker.stats.get(Counter::Throttled), 1);
    assert!(
        h.worker.throttled_since.is_none(),
        "the time held back is counted"
    );
}

#[test]
fn each_request_kind_reaches_the_engine_or_is_answered_in_place() {
    let mut h = Harness::new();
    assert_eq!(
        h.request(Req::new(VIRTIO_BLK_T_FLUSH, 0, 0).in_slot(1)).0,
        status::OK
    );
    assert_eq!(h.script.lock().unwrap().flushes, 1);

    // GET_ID: the serial, NUL-padded to 20 bytes, answered without the engine.
    let id = Req::new(VIRTIO_BLK_T_GET_ID, 0, 20);
    assert_eq!(h.request(id), (status::OK, 21));
    assert_eq!(
        h.read_guest(id.data(), 20),
        b"test-serial\0\0\0\0\0\0\0\0\0"
    );

    // DISCARD: one segment of 8 sectors at sector 16 (le64 sector, le32 count, le32 flags).
    let discard = Req::new(VIRTIO_BLK_T_DISCARD, 0, 16);
    let mut segment = [0u8; 16];
    segment[..8].copy_from_slice(&16u64.to_le_bytes());
    segment[8..12].copy_from_slice(&8u32.to_le_bytes());
    h.mem
        .write_slice(&segment, GuestAddress(discard.data()))
        .unwrap();
    assert_eq!(h.request(discard).0, status::OK);
    assert!(h.script.lock().unwrap().disk[16 * 512..24 * 512]
        .iter()
        .all(|&b| b == 0));
    assert_ne!(h.script.lock().unwrap().disk[24 * 512], 0);

    // An unknown type is answered UNSUPP, and the engine never sees it.
    let pushed = h.script.lock().unwrap().pushed.len();
    assert_eq!(h.request(Req::new(0x77, 0, 512)), (status::UNSUPP, 1));
    assert_eq!(h.script.lock().unwrap().pushed.len(), pushed);
}

#[test]
fn completions_that_arrive_out_of_order_and_late_are_each_published() {
    let mut h = Harness::with(|s| s.hold = true, 1);
    let reqs =
        [0, 1, 2].map(|slot| Req::new(VIRTIO_BLK_T_IN, 8 * u64::from(slot), 512).in_slot(slot));
    h.kick(&reqs);
    assert_eq!(h.worker.in_flight, 3);
    assert_eq!(h.used_idx(), 0);
    // The last request finishes first, then the first; the middle one much later.
    h.release(&[reqs[2].head(), reqs[0].head()]);
    assert_eq!(h.used(), [(6, 513), (0, 513)]);
    assert_eq!(h.status(reqs[1]), 0xff, "still in flight");
    h.release(&[reqs[1].head()]);
    assert_eq!(h.used(), [(6, 513), (0, 513), (3, 513)]);
    for req in reqs {
        assert_eq!(h.status(req), status::OK);
        let at = usize::try_from(req.sector).unwrap() * 512;
        assert_eq!(
            h.read_guest(req.data(), 512),
            h.script.lock().unwrap().disk[at..at + 512]
        );
    }
}

#[test]
fn stopping_the_ring_completes_what_is_in_flight() {
    let mut h = Harness::with(|s| s.hold = true, 1);
    let reqs = [0, 1].map(|slot| Req::new(VIRTIO_BLK_T_IN, 0, 512).in_slot(slot));
    h.kick(&reqs);
    assert_eq!(h.worker.in_flight, 2);
    // The disk finishes while the frontend stops the ring (GET_VRING_BASE).
    h.script.lock().unwrap().hold = false;
    h.worker.stop();
    assert_eq!(h.worker.in_flight, 0);
    assert_eq!(h.used().len(), 2);
    assert!(reqs.iter().all(|&r| h.status(r) == status::OK));
}

#[test]
fn with_event_idx_the_guest_is_signalled_only_when_it_asks() {
    let mut h = Harness::new();
    let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    // SAFETY: a duplicate of the eventfd, owned by the File from here on.
    let file = unsafe { std::fs::File::from_raw_fd(libc::dup(call.as_raw_fd())) };
    h.vring.set_call(Some(file));
    h.vring.set_queue_event_idx(true);
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(QUEUE_SIZE));

    // The guest wants a signal once the used index passes 5: the first request stays quiet.
    h.mem.write_obj(5u16, used_event).unwrap();
    h.request(Req::new(VIRTIO_BLK_T_IN, 0, 512));
    assert!(
        call.read().is_err(),
        "signalled although the guest did not ask"
    );

    // Now it asks to hear of the next entry (used index 1 -> 2).
    h.mem.write_obj(1u16, used_event).unwrap();
    h.request(Req::new(VIRTIO_BLK_T_IN, 0, 512));
    assert_eq!(call.read().unwrap(), 1);
}

#[test]
fn a_misaligned_buffer_goes_through_a_bounce_buffer() {
    // O_DIRECT's rule: buffers aligned to 512 bytes. The guest's is one byte off.
    let mut h = Harness::with(|_| {}, 512);
    let region = h.mem.iter().next().unwrap();
    let guest_base = region.as_ptr() as usize;
    let guest = guest_base..guest_base + region.size();
    let in_guest = |addr: usize| guest.contains(&addr);

    let write = Req {
        misalign: 1,
        ..Req::new(VIRTIO_BLK_T_OUT, 4, 1024)
    };
    let data: Vec<u8> = (0..=255).cycle().step_by(13).take(1024).collect();
    h.mem
        .write_slice(&data, GuestAddress(write.data()))
        .unwrap();
    assert_eq!(h.request(write), (status::OK, 1));
    assert_eq!(h.script.lock().unwrap().disk[2048..3072], data[..]);

    let read = Req {
        misalign: 1,
        ..Req::new(VIRTIO_BLK_T_IN, 4, 1024).in_slot(1)
    };
    assert_eq!(h.request(read), (status::OK, 1025));
    assert_eq!(h.read_guest(read.data(), 1024), data);
    // Neither reached the engine with guest memory.
    let script = h.script.lock().unwrap();
    assert!(script.pushed.iter().all(|p| !in_guest(p.2)));
}

#[test]
fn a_guest_that_keeps_the_ring_busy_is_served_to_the_end() {
    // Each request the worker pushes, the guest answers with a new one, 200 times over: the
    // worker keeps taking (its batch size must stay bounded) and completes every one.
    let guest_mem = Arc::new(Mutex::new(None::<GuestMemory>));
    let feed = {
        let guest_mem = Arc::clone(&guest_mem);
        let mut more = 200;
        move || {
            if more > 0 {
                more -= 1;
                let mem = guest_mem.lock().unwrap();
                make_available(mem.as_ref().unwrap(), Req::new(VIRTIO_BLK_T_IN, 0, 512));
            }
        }
    };
    let mut h = Harness::with(|s| s.on_push = Some(Box::new(feed)), 1);
    *guest_mem.lock().unwrap() = Some(h.mem.clone());
    let (status, _) = h.request(Req::new(VIRTIO_BLK_T_IN, 0, 512));
    assert_eq!(status, status::OK);
    assert_eq!(h.script.lock().unwrap().pushed.len(), 201);
    assert_eq!(h.used_idx(), 201);
}

#[test]
fn a_used_length_beyond_32_bits_saturates_instead_of_wrapping() {
    assert_eq!(used_len(4096), 4097);
    assert_eq!(used_len(u32::MAX as usize - 1), u32::MAX);
    // A chain of 32766 one-MiB segments (a queue of 32768) carries more than 4 GiB.
    assert_eq!(used_len(32766 << 20), u32::MAX);
}

#[test]
fn a_queue_kept_busy_does_not_starve_another_on_its_thread() {
    // Queue A's guest answers each request with a new one, 2000 times over; queue B has one
    // request waiting. One thread polls both: B's request must be taken long before A's
    // guest stops, not after (a queue's round ends after a queue's worth of requests).
    const FEEDS: usize = 2000;
    let a_pushed = Arc::new(AtomicUsize::new(0));
    let a_mem = Arc::new(Mutex::new(None::<GuestMemory>));
    let feed = {
        let (a_mem, a_pushed) = (Arc::clone(&a_mem), Arc::clone(&a_pushed));
        move || {
            if a_pushed.fetch_add(1, Ordering::Relaxed) < FEEDS {
                let mem = a_mem.lock().unwrap();
                make_available(mem.as_ref().unwrap(), Req::new(VIRTIO_BLK_T_IN, 0, 512));
            }
        }
    };
    let a = Harness::with(|s| s.on_push = Some(Box::new(feed)), 1);
    *a_mem.lock().unwrap() = Some(a.mem.clone());
    let b_taken_after = Arc::new(AtomicUsize::new(usize::MAX));
    let note = {
        let (a_pushed, b_taken_after) = (Arc::clone(&a_pushed), Arc::clone(&b_taken_after));
        move || b_taken_after.store(a_pushed.load(Ordering::Relaxed), Ordering::Relaxed)
    };
    let b = Harness::with(|s| s.on_push = Some(Box::new(note)), 1);
    make_available(&a.mem, Req::new(VIRTIO_BLK_T_IN, 0, 512));
    make_available(&b.mem, Req::new(VIRTIO_BLK_T_IN, 0, 512));

    let queues = [
        (Mutex::new(a.worker), &a.vring),
        (Mutex::new(b.worker), &b.vring),
    ];
    let mut windows = PollWindows::new(Duration::from_micros(50));
    poll_together(&mut windows, queues.len(), |k| {
        let (worker, vring) = queues.get(k)?;
        Some((worker.lock().unwrap(), *vring))
    });
    let b_taken_after = b_taken_after.load(Ordering::Relaxed);
    assert!(
        b_taken_after < 300,
        "B's request taken after {b_taken_after} of A's"
    );
    // And both guests got every answer.
    let used = |mem: &GuestMemory| mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
    assert_eq!(usize::from(used(&a.mem)), FEEDS + 1);
    assert_eq!(used(&b.mem), 1);
}
