//! The queue worker: one per virtqueue, on its own thread, owning its own engine.
//!
//! A kick drains the avail ring completely, in batches that double in size (1, 2, 4, ...):
//! each chain is parsed, validated, and pushed to the engine as one operation whose buffers
//! are the guest's own memory; each batch is submitted, and whatever finished is published,
//! before the next is taken. Completions come back on the engine's eventfd, which the thread
//! polls in the same epoll set as the kick. Finished requests get their status byte and a
//! used-ring entry, and the guest is signalled — only if the event index (or the
//! no-interrupt flag) says it wants to be. An engine that will call back soon anyway (see
//! [`Engine::calls_back_soon`]) lets the worker leave kicks off and look at the avail ring
//! then, which saves the thread a wake-up per batch.
//!
//! In-flight requests live in a slot table indexed by descriptor head: a head is unique among
//! the chains the guest has made available, so the table never needs more than queue-size
//! entries and the steady state allocates nothing. When the frontend gave us an in-flight
//! tracking buffer ([`crate::inflight`]), every head is also recorded there from the moment it
//! is taken until its used-ring entry is written, and a ring start resubmits what a crashed
//! predecessor left in flight.
//!
//! Nothing the guest writes can make the worker loop without progress. A ring the guest broke
//! (an avail index more than a queue ahead, rings outside its memory) is marked broken: it is
//! no longer served, said so once, and served again only after the frontend restarts it. Every
//! log line a guest can provoke is rate-limited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::Level::{Debug, Error, Warn};
use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use crate::aligned::AlignedBuffer;
use crate::blk::layout::status;
use crate::blk::request::{self, Limits, Rejected, Request, RequestKind, Scratch};
use crate::device::LiveState;
use crate::disk::DiskInfo;
use crate::engine::{wait_for_completions, Completion, DataBuffers, Engine, IoOp};
use crate::inflight::InflightQueue;
use crate::iov;
use crate::ratelimit::limited;
use crate::stats::{Counter, QueueStats};
use crate::GuestMemory;
use poll::{Awaiting, PollWindows};

mod poll;

type Vring = VringState<GuestMemoryAtomic<GuestMemory>>;

/// The largest submission batch (see [`QueueWorker::serve_batches`]).
const MAX_BATCH: usize = 256;

/// The most iovecs one system call accepts (`IOV_MAX`); longer lists go through a bounce
/// buffer.
const IOV_MAX: usize = 1024;

/// Per-device settings every worker reads.
pub struct WorkerConfig {
    pub limits: Limits,
    pub serial: Vec<u8>,
    pub buffer_alignment: usize,
    pub honours_flush: bool,
    /// The guest's WCE bit, shared by all queues; read once per write request.
    pub write_cache: Arc<AtomicBool>,
    /// Busy-poll the queue and the engine for up to this long after the last work before
    /// sleeping (the maximum of an adaptive window, see [`poll`]).
    pub poll: Option<Duration>,
    /// The capacity requests are checked against, which an online resize changes (the one in
    /// `limits` is the size at start).
    pub live: Arc<LiveState>,
}

impl WorkerConfig {
    pub fn new(
        info: &DiskInfo,
        max_data_bytes: u64,
        write_cache: Arc<AtomicBool>,
        poll: Option<Duration>,
        live: Arc<LiveState>,
    ) -> Self {
        WorkerConfig {
            live,
            poll,
            limits: Limits::new(info, max_data_bytes),
            serial: info.serial.clone(),
            buffer_alignment: info.buffer_alignment,
            honours_flush: info.honours_flush,
            write_cache,
        }
    }
}

/// A request between submission and completion.
#[derive(Default)]
struct Slot {
    busy: bool,
    status: GuestAddress,
    /// Bytes the engine must report for success.
    expected: usize,
    /// The used ring's length on success: bytes written into guest buffers, status included.
    used_len: u32,
    /// The guest's data buffers as the parser found them. While the request is in flight they
    /// belong to its operation and come back with the completion; a bounced request's stay
    /// here, for the copy back.
    iov: Vec<libc::iovec>,
    /// Whether the operation's buffers are a bounce buffer rather than the guest's.
    bounced: bool,
    /// The read or write being done, and the bytes of it that earlier short transfers moved:
    /// a short transfer is resubmitted for the rest.
    transfer: Option<Transfer>,
    done: usize,
    /// The guest memory the status byte (and a bounced request's iovecs) point into.
    mem: Option<Arc<GuestMemory>>,
    /// When the request was taken from the avail ring.
    taken_at: Option<Instant>,
}

// SAFETY: the iovecs point into guest memory that `mem` keeps mapped; a slot is only ever
// used by the worker that owns it.
unsafe impl Send for Slot {}

/// Where a read or write goes.
#[derive(Clone, Copy)]
struct Transfer {
    offset: u64,
    /// `Some(dsync)` for a write.
    write: Option<bool>,
}

impl Transfer {
    /// The operation for the bytes after the first `done`, in `data`.
    fn op(self, done: usize, data: DataBuffers) -> IoOp {
        let offset = self.offset + done as u64;
        match self.write {
            None => IoOp::Read { offset, data },
            Some(dsync) => IoOp::Write {
                offset,
                data,
                dsync,
            },
        }
    }
}

/// How to collect completions: `Reap` resets the engine's eventfd (after an epoll wake-up),
/// `Poll` avoids system calls (inside a busy-polling loop).
#[derive(Clone, Copy)]
enum Reaper {
    Reap,
    Poll,
}

/// What a look at the avail ring found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Avail {
    /// Nothing new.
    Empty,
    /// New chains, now taken.
    Took,
    /// The ring cannot be served: it is stopping (not ready) or the guest broke it.
    Unusable,
}

/// What happened to a chain taken from the avail ring.
enum Started {
    /// Handed to the engine.
    Submitted,
    /// Finished already; put it in the used ring with this length.
    Done(u32),
    /// Not ours to answer (a head that is out of range or already in flight).
    Ignored,
}

pub struct QueueWorker {
    index: usize,
    engine: Box<dyn Engine>,
    config: Arc<WorkerConfig>,
    mem: GuestMemoryAtomic<GuestMemory>,
    slots: Vec<Slot>,
    in_flight: usize,
    scratch: Scratch,
    completions: Vec<Completion>,
    finished: Vec<(u16, u32)>,
    /// The vring this worker serves, remembered from its first event so that in-flight I/O
    /// can be completed into it when the queue is stopped from the control thread.
    vring: Option<VringRwLock>,
    /// Whether the ring has been started (see [`QueueWorker::is_started`]).
    started: bool,
    /// The guest broke the ring; it is not served until the frontend restarts it.
    broken: bool,
    /// This queue's region of the in-flight tracking buffer, if the frontend gave us one.
    inflight: Option<InflightQueue>,
    /// The order number the next request taken gets in the tracking buffer.
    taken: u64,
    /// With polling configured: how long to poll.
    poll_windows: Option<PollWindows>,
    /// Requests put in the used ring so far (wrapping): tells the polling loop that it did
    /// work.
    completed: u64,
    /// What this queue has done, for the control socket.
    stats: Arc<QueueStats>,
}

impl QueueWorker {
    pub fn new(
        index: usize,
        engine: Box<dyn Engine>,
        config: Arc<WorkerConfig>,
        mem: GuestMemoryAtomic<GuestMemory>,
        queue_size: u16,
        stats: Arc<QueueStats>,
    ) -> Self {
        QueueWorker {
            stats,
            index,
            engine,
            mem,
            slots: (0..queue_size).map(|_| Slot::default()).collect(),
            in_flight: 0,
            scratch: Scratch::default(),
            completions: Vec::with_capacity(usize::from(queue_size)),
            finished: Vec::with_capacity(usize::from(queue_size)),
            vring: None,
            started: false,
            broken: false,
            inflight: None,
            taken: 0,
            poll_windows: config.poll.map(PollWindows::new),
            completed: 0,
            config,
        }
    }

    /// Whether the ring was started since the worker was built or last stopped. The first
    /// event after the frontend starts a ring (the library delivers one when the ring is
    /// enabled) finds it not started, and the caller calls [`QueueWorker::start`] first.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Starts serving the ring. With a tracking buffer, repairs it and resubmits, oldest
    /// first, what was in flight when the previous daemon stopped; the avail ring then resumes
    /// after those requests, whatever base the frontend set (it only knows the used index).
    pub fn start(&mut self, vring: &VringRwLock, inflight: Option<InflightQueue>) {
        self.vring.get_or_insert_with(|| vring.clone());
        if !vring.get_ref().get_queue().ready() {
            // A late completion after the ring stopped: nothing to start yet.
            return;
        }
        self.started = true;
        self.broken = false;
        self.inflight = None;
        self.taken = 0;
        let mem = self.mem.memory().into_inner();
        let mut state = vring.get_mut();
        if let Some(inflight) = inflight {
            self.recover(&mut state, &mem, inflight);
        }
        // Requests the previous daemon completed after the frontend had hung up (a SIGTERM
        // drains in-flight I/O after the connection closes) are in the used ring, but their
        // interrupt went nowhere: the frontend had detached the guest's notifier. Without one
        // now, the guest would wait for them forever. A spurious interrupt is harmless.
        self.signal_guest(&state);
    }

    /// Takes the ring's region of the tracking buffer: repairs it, resubmits what it holds and
    /// puts the avail ring after those requests.
    fn recover(&mut self, state: &mut Vring, mem: &Arc<GuestMemory>, inflight: InflightQueue) {
        let queue = state.get_queue_mut();
        if queue.size() > inflight.desc_num() {
            limited!(
                Warn,
                "queue {}: the in-flight buffer tracks {} descriptors but the ring has {}; \
                 requests on this queue are not tracked",
                self.index,
                inflight.desc_num(),
                queue.size()
            );
            return;
        }
        let used = match queue.used_idx(&**mem, Ordering::Acquire) {
            Ok(used) => used.0,
            Err(e) => return self.mark_broken(&format!("its used ring is unusable ({e})")),
        };
        if let Some(recovery) = inflight.recover(used) {
            self.taken = recovery.next_counter;
            let resubmit = u16::try_from(recovery.resubmit.len()).unwrap_or(u16::MAX);
            queue.set_next_avail(used.wrapping_add(resubmit));
            queue.set_next_used(used);
            if resubmit > 0 {
                log::info!(
                    "queue {}: resubmitting {resubmit} requests left in flight by the previous \
                     connection",
                    self.index
                );
            }
            let (desc_table, size) = (GuestAddress(queue.desc_table()), queue.size());
            for head in recovery.resubmit {
                let chain = DescriptorChain::new(&**mem, desc_table, size, head);
                if let Started::Done(len) = self.start_request(chain, mem, size) {
                    self.finished.push((head, len));
                }
            }
        }
        self.inflight = Some(inflight);
        self.submit_and_publish(state, mem, Reaper::Reap);
    }

    /// The ring is stopping (GET_VRING_BASE): completes what is in flight, and forgets the
    /// ring's state so that the next start begins afresh.
    pub fn stop(&mut self) {
        self.drain();
        self.started = false;
        self.broken = false;
        self.inflight = None;
    }

    fn mark_broken(&mut self, why: &str) {
        self.broken = true;
        limited!(
            Error,
            "queue {}: {why}; not serving it until the frontend restarts it (guest reset)",
            self.index
        );
    }

    pub fn engine_fd(&self) -> std::os::fd::RawFd {
        self.engine.completion_fd()
    }

    /// The guest kicked: take every available chain, submit the batch, complete what is
    /// already done, notify once. With polling configured, keep going until the queue has
    /// been idle for the polling time.
    pub fn on_kick(&mut self, vring: &VringRwLock) {
        self.vring.get_or_insert_with(|| vring.clone());
        if let Some(windows) = &mut self.poll_windows {
            windows.woke();
        }
        self.serve(vring, Reaper::Reap);
    }

    /// The engine's eventfd fired: complete what finished and notify once (and poll, if
    /// configured).
    pub fn on_completion(&mut self, vring: &VringRwLock) {
        self.vring.get_or_insert_with(|| vring.clone());
        if let Some(windows) = &mut self.poll_windows {
            windows.woke();
        }
        if self.config.poll.is_none() && self.engine.calls_back_soon() {
            // Guest kicks were left off (see serve), on the promise to look at the avail ring
            // when the engine called back: this is that call.
            return self.serve(vring, Reaper::Reap);
        }
        self.reap(Reaper::Reap);
        if self.finished.is_empty() {
            return;
        }
        {
            let mem = self.mem.memory().into_inner();
            self.publish(&mut vring.get_mut(), &mem);
        }
        if self.config.poll.is_some() {
            self.serve(vring, Reaper::Poll);
        }
    }

    /// Takes available requests, submits, reaps and publishes; while polling, repeats until
    /// the queue has been idle for the polling window, and only then lets the guest kick again.
    fn serve(&mut self, vring: &VringRwLock, reaper: Reaper) {
        let Some(mut poll) = self.poll_windows.take() else {
            let mem = self.mem.memory().into_inner();
            let mut state = vring.get_mut();
            loop {
                let avail = self.serve_batches(&mut state, &mem, reaper);
                if avail == Avail::Unusable || self.engine.calls_back_soon() {
                    // Kicks stay off: on_completion looks at the ring, or there is nothing to
                    // serve until the ring restarts.
                    return;
                }
                match state.enable_notification() {
                    // A request slipped in as we re-armed; the next round takes it.
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(e) => {
                        return self.mark_broken(&format!("cannot enable notifications ({e})"))
                    }
                }
            }
        };
        self.poll_loop(vring, &mut poll);
        self.poll_windows = Some(poll);
    }

    /// The polling half of [`QueueWorker::serve`].
    fn poll_loop(&mut self, vring: &VringRwLock, poll: &mut PollWindows) {
        let mut idle_since = Instant::now();
        let mut awaiting = Awaiting::Kick;
        loop {
            // Each round takes the current memory map (the frontend may add regions while we
            // poll) and the vring lock afresh (the control thread may need it between rounds).
            let mem = self.mem.memory().into_inner();
            let mut state = vring.get_mut();
            // Notifications stay off while we poll: the guest need not kick, we look.
            let completed = self.completed;
            let avail = self.serve_batches(&mut state, &mem, Reaper::Poll);
            if avail == Avail::Unusable {
                // Going to sleep without re-arming kicks: the eventfd reports completions.
                self.reap(Reaper::Reap);
                self.publish(&mut state, &mem);
                return;
            }
            // The last work decides what comes next: completions hand the guest its turn,
            // submissions the disk.
            let did_complete = self.completed != completed;
            if did_complete || self.in_flight == 0 {
                awaiting = Awaiting::Kick;
            } else if avail == Avail::Took {
                awaiting = Awaiting::Completion;
            }
            if did_complete || avail == Avail::Took {
                idle_since = Instant::now();
            } else if idle_since.elapsed() >= poll.current(awaiting) {
                // Going to sleep: reset the engine's eventfd (polling left it readable) so
                // that epoll does not wake us for completions we already took.
                self.reap(Reaper::Reap);
                self.publish(&mut state, &mem);
                match state.enable_notification() {
                    Ok(false) => {
                        poll.sleep(idle_since, awaiting);
                        return;
                    }
                    Err(e) => {
                        return self.mark_broken(&format!("cannot enable notifications ({e})"))
                    }
                    // A request slipped in as we re-armed: keep polling.
                    Ok(true) => idle_since = Instant::now(),
                }
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Serves the avail ring in batches that double (1, 2, 4, ...): each is taken, submitted,
    /// and what finished is published, before the next is taken. The disk starts on the first
    /// request while the rest are parsed, and the guest gets the first completions while the
    /// rest are processed, so neither waits for the whole batch (see docs/benchmarks.md,
    /// "Keeping the disk busy"); the price is a few more submissions than one per kick.
    /// Returns what the ring held: `Took` if anything was taken.
    fn serve_batches(
        &mut self,
        state: &mut Vring,
        mem: &Arc<GuestMemory>,
        reaper: Reaper,
    ) -> Avail {
        let mut batch = 1;
        let mut result = Avail::Empty;
        loop {
            let avail = self.take_available(state, mem, batch);
            if avail != Avail::Took {
                // The final look: reap the way the caller asked (resetting the eventfd after
                // an epoll wake-up); in between, looking costs no system call.
                self.submit_and_publish(state, mem, reaper);
                return if avail == Avail::Unusable {
                    avail
                } else {
                    result
                };
            }
            self.submit_and_publish(state, mem, Reaper::Poll);
            result = Avail::Took;
            // Capped: a guest that keeps the ring busy keeps this loop going.
            batch = (batch * 2).min(MAX_BATCH);
        }
    }

    /// Parses up to `max` available chains and pushes their I/O.
    fn take_available(&mut self, state: &mut Vring, mem: &Arc<GuestMemory>, max: usize) -> Avail {
        // A ring that is stopping (GET_VRING_BASE marks it not ready before it drains us) is
        // not the guest's fault; one the guest broke stays broken until restarted.
        if self.broken || !state.get_queue().ready() {
            return Avail::Unusable;
        }
        if let Err(e) = state.disable_notification() {
            self.mark_broken(&format!("cannot disable notifications ({e})"));
            return Avail::Unusable;
        }
        let queue = state.get_queue_mut();
        match queue.avail_idx(&**mem, Ordering::Acquire) {
            Ok(idx) if idx.0 == queue.next_avail() => return Avail::Empty,
            Ok(_) => {}
            Err(e) => {
                self.mark_broken(&format!("its avail ring is unusable ({e})"));
                return Avail::Unusable;
            }
        }
        // Load the memory map only now, after the avail index: a region the frontend added
        // (and we acknowledged) before publishing these requests is then guaranteed to be in it.
        let mem = &self.mem.memory().into_inner();
        self.engine.use_guest_memory(mem);
        let size = queue.size();
        let chains = match queue.iter(&**mem) {
            Ok(chains) => chains,
            Err(e) => {
                // An avail index more than a queue ahead, or an unmapped ring.
                self.mark_broken(&format!("its avail ring is unusable ({e})"));
                return Avail::Unusable;
            }
        };
        for chain in chains.take(max) {
            let head = chain.head_index();
            if let Some(inflight) = self.inflight.as_ref().filter(|_| head < size) {
                inflight.take(head, self.taken);
                self.taken = self.taken.wrapping_add(1);
            }
            match self.start_request(chain, mem, size) {
                Started::Done(len) => self.finished.push((head, len)),
                Started::Submitted | Started::Ignored => {}
            }
        }
        Avail::Took
    }

    fn submit(&mut self) {
        self.stats.add(Counter::Submissions, 1);
        self.stats.set_in_flight(self.in_flight);
        if let Err(e) = self.engine.submit() {
            limited!(Error, "queue {}: submitting I/O failed: {e}", self.index);
        }
    }

    fn submit_and_publish(&mut self, state: &mut Vring, mem: &GuestMemory, reaper: Reaper) {
        self.submit();
        // Cheap check: buffered reads and the like may have completed during submission.
        self.reap(reaper);
        self.publish(state, mem);
    }

    /// Waits for every in-flight request and completes it into the vring. Called when the
    /// queue stops (GET_VRING_BASE) or the daemon shuts down.
    pub fn drain(&mut self) {
        while self.in_flight > 0 {
            if let Err(e) = wait_for_completions(&*self.engine, 1000) {
                limited!(Error, "queue {}: waiting for I/O failed: {e}", self.index);
                return;
            }
            self.reap(Reaper::Reap);
            if let Some(vring) = self.vring.clone() {
                let mem = self.mem.memory().into_inner();
                self.publish(&mut vring.get_mut(), &mem);
            } else {
                self.finished.clear();
            }
        }
    }

    /// Parses one chain of a ring of `size` descriptors and starts its request.
    fn start_request(
        &mut self,
        chain: DescriptorChain<&GuestMemory>,
        mem: &Arc<GuestMemory>,
        size: u16,
    ) -> Started {
        let head = chain.head_index();
        let Some(slot) = self
            .slots
            .get_mut(usize::from(head))
            .filter(|_| head < size)
        else {
            limited!(
                Warn,
                "queue {}: descriptor head {head} is outside the queue; ignored",
                self.index
            );
            return Started::Ignored;
        };
        if slot.busy {
            limited!(
                Warn,
                "queue {}: guest reused descriptor {head} while in flight; ignored",
                self.index
            );
            return Started::Ignored;
        }
        let config = &*self.config;
        let limits = Limits {
            capacity: config.live.capacity(),
            ..config.limits
        };
        let req = match request::parse(chain, mem, &limits, &mut self.scratch, &mut slot.iov) {
            Ok(req) => req,
            Err(Rejected { status, error }) => {
                self.stats.rejected(error);
                limited!(
                    Debug,
                    "queue {}: request {head} rejected: {error}",
                    self.index
                );
                return match status {
                    Some(addr) => {
                        write_status(mem, addr, error.status());
                        Started::Done(1)
                    }
                    None => Started::Done(0),
                };
            }
        };
        let counter = match req.kind {
            RequestKind::Read { .. } => Counter::Reads,
            RequestKind::Write { .. } => Counter::Writes,
            RequestKind::Flush => Counter::Flushes,
            RequestKind::Discard { .. } => Counter::Discards,
            RequestKind::WriteZeroes { .. } => Counter::WriteZeroes,
            RequestKind::GetId => Counter::GetIds,
        };
        self.stats.add(counter, 1);
        let op = match req.kind {
            RequestKind::Read { .. } | RequestKind::Write { .. } if req.data_len == 0 => {
                write_status(mem, req.status, status::OK);
                return Started::Done(1);
            }
            RequestKind::GetId => {
                // SAFETY: the parser built these iovecs from guest memory that `mem` keeps mapped.
                let n = unsafe { iov::copy_to(&slot.iov, 0, &config.serial) };
                // The serial is NUL-padded when it is shorter than the buffer (up to 20 bytes).
                let padded = req.data_len.min(crate::disk::SERIAL_LEN);
                // SAFETY: as above.
                unsafe { iov::zero(&slot.iov, n, padded) };
                write_status(mem, req.status, status::OK);
                return Started::Done(used_len(padded));
            }
            RequestKind::Flush if !config.honours_flush => {
                write_status(mem, req.status, status::OK);
                return Started::Done(1);
            }
            RequestKind::Flush => IoOp::Flush,
            RequestKind::Discard { offset, len } => IoOp::Discard { offset, len },
            RequestKind::WriteZeroes { offset, len, unmap } => {
                IoOp::WriteZeroes { offset, len, unmap }
            }
            RequestKind::Read { offset } | RequestKind::Write { offset } => {
                let data = match prepare_data(slot, &req, mem, config.buffer_alignment) {
                    Ok(data) => data,
                    Err(e) => {
                        limited!(
                            Error,
                            "queue {}: cannot allocate a bounce buffer: {e}",
                            self.index
                        );
                        write_status(mem, req.status, status::IOERR);
                        return Started::Done(1);
                    }
                };
                let write = matches!(req.kind, RequestKind::Write { .. })
                    .then(|| config.honours_flush && !config.write_cache.load(Ordering::Relaxed));
                let transfer = Transfer { offset, write };
                slot.transfer = Some(transfer);
                if slot.bounced {
                    self.stats.add(Counter::Bounced, 1);
                }
                transfer.op(0, data)
            }
        };
        slot.busy = true;
        slot.status = req.status;
        slot.expected = match req.kind {
            RequestKind::Read { .. } | RequestKind::Write { .. } => req.data_len,
            _ => 0,
        };
        // The used ring reports bytes written for the guest, status byte included.
        slot.used_len = if matches!(req.kind, RequestKind::Read { .. }) {
            used_len(req.data_len)
        } else {
            1
        };
        slot.mem = Some(mem.clone());
        slot.taken_at = Some(Instant::now());
        if !matches!(op, IoOp::Read { .. } | IoOp::Write { .. }) {
            slot.transfer = None;
        }
        slot.done = 0;
        self.in_flight += 1;
        self.engine.push(u64::from(head), op);
        Started::Submitted
    }

    /// Collects finished operations and turns them into (head, used length) pairs.
    fn reap(&mut self, reaper: Reaper) {
        let collected = match reaper {
            Reaper::Reap => self.engine.reap(&mut self.completions),
            Reaper::Poll => self.engine.poll(&mut self.completions),
        };
        if let Err(e) = collected {
            limited!(
                Error,
                "queue {}: reaping completions failed: {e}",
                self.index
            );
        }
        let mut resubmitted = false;
        for mut c in self.completions.drain(..) {
            // Tokens are the heads we pushed; anything else is an engine bug, not a crash.
            let head = u16::try_from(c.token).ok();
            let slot = head.and_then(|h| self.slots.get_mut(usize::from(h)));
            let (Some(head), Some(slot)) = (head, slot.filter(|s| s.busy)) else {
                limited!(
                    Error,
                    "queue {}: completion for unknown request {}",
                    self.index,
                    c.token
                );
                continue;
            };
            let ok = match c.result {
                Ok(n) if slot.done + n == slot.expected => true,
                Ok(n) if n > 0 && slot.done + n < slot.expected => {
                    // A short transfer (a signal, a file that changed under us, a device
                    // splitting the request): the kernel moved part of it, so do the rest
                    // rather than fail the whole request, as QEMU does.
                    slot.done += n;
                    if let (Some(transfer), Some(mut data)) = (slot.transfer, c.data.take()) {
                        data.advance(n);
                        self.engine.push(c.token, transfer.op(slot.done, data));
                        resubmitted = true;
                        continue;
                    }
                    false
                }
                Ok(n) => {
                    limited!(
                        Warn,
                        "queue {}: short transfer: {} of {} bytes, then no progress",
                        self.index,
                        slot.done + n,
                        slot.expected
                    );
                    false
                }
                Err(e) => {
                    limited!(Warn, "queue {}: I/O error: {e}", self.index);
                    false
                }
            };
            let read = slot.transfer.is_some_and(|t| t.write.is_none());
            match c.data {
                Some(data) if slot.bounced => {
                    if let Some(bounce) = data.into_aligned().filter(|_| ok && read) {
                        // SAFETY: the iovecs are guest memory `slot.mem` (still held) keeps
                        // mapped.
                        unsafe { iov::copy_to(&slot.iov, 0, bounce.as_slice()) };
                    }
                }
                // The guest's iovec list, emptied: the next request's, without allocating.
                Some(data) => slot.iov = data.recycle(),
                None => {}
            }
            let mem = slot.mem.take().expect("busy slot holds its memory");
            write_status(
                &mem,
                slot.status,
                if ok { status::OK } else { status::IOERR },
            );
            let len = if ok { slot.used_len } else { 1 };
            match slot.transfer {
                _ if !ok => self.stats.add(Counter::IoErrors, 1),
                Some(Transfer { write: None, .. }) => {
                    self.stats.add(Counter::BytesRead, slot.expected as u64);
                }
                Some(Transfer { write: Some(_), .. }) => {
                    self.stats.add(Counter::BytesWritten, slot.expected as u64);
                }
                None => {}
            }
            if let Some(taken_at) = slot.taken_at.take() {
                self.stats.latency(taken_at.elapsed());
            }
            slot.busy = false;
            self.in_flight -= 1;
            self.finished.push((head, len));
        }
        self.stats.set_in_flight(self.in_flight);
        if resubmitted {
            self.submit();
        }
    }

    /// Puts finished requests in the used ring and signals the guest if it asked to be.
    fn publish(&mut self, state: &mut Vring, mem: &GuestMemory) {
        if self.finished.is_empty() {
            return;
        }
        let queue = state.get_queue_mut();
        self.completed = self.completed.wrapping_add(self.finished.len() as u64);
        for (head, len) in self.finished.drain(..) {
            // Each entry is its own batch in the tracking buffer: marked as the last batch
            // before the used index moves, cleared after.
            let inflight = self.inflight.as_ref().filter(|t| head < t.desc_num());
            if let Some(inflight) = inflight {
                inflight.before_used(head);
            }
            match queue.add_used(mem, head, len) {
                Ok(()) => {
                    if let Some(inflight) = inflight {
                        inflight.after_used(head, queue.next_used());
                    }
                }
                Err(e) => limited!(Warn, "queue {}: cannot add to used ring: {e}", self.index),
            }
        }
        match state.needs_notification() {
            Ok(false) => {}
            Ok(true) | Err(_) => self.signal_guest(state),
        }
    }

    fn signal_guest(&self, state: &Vring) {
        self.stats.add(Counter::Notifications, 1);
        if let Err(e) = state.signal_used_queue() {
            // A full (or closed) call eventfd: the frontend's problem, not a reason to stop;
            // the next signal tries again.
            limited!(Warn, "queue {}: cannot signal the guest: {e}", self.index);
        }
    }
}

/// The used ring's length for a request that wrote `data` bytes for the guest plus its status
/// byte. A chain may carry more than 4 GiB (seg_max × size_max with a large queue); the field
/// is 32 bits, so such a length saturates.
fn used_len(data: usize) -> u32 {
    u32::try_from(data).unwrap_or(u32::MAX).saturating_add(1)
}

fn write_status(mem: &GuestMemory, addr: GuestAddress, status: u8) {
    // The parser checked that the status byte is mapped; a failure here means the guest
    // changed its memory map under us, and there is nobody left to tell.
    if let Err(e) = mem.write_obj(status, addr) {
        limited!(Warn, "cannot write request status: {e}");
    }
}

/// The buffers a read or write of `req` goes to the engine with: the guest's own, or (for
/// O_DIRECT alignment, or more segments than one system call takes) a bounce buffer, filled
/// with the data for writes.
fn prepare_data(
    slot: &mut Slot,
    req: &Request,
    mem: &Arc<GuestMemory>,
    alignment: usize,
) -> std::io::Result<DataBuffers> {
    let misaligned = alignment > 1
        && slot
            .iov
            .iter()
            .any(|v| (v.iov_base as usize) % alignment != 0 || v.iov_len % alignment != 0);
    slot.bounced = misaligned || slot.iov.len() > IOV_MAX;
    if !slot.bounced {
        let iovecs = std::mem::take(&mut slot.iov);
        // SAFETY: the parser built these iovecs from regions of `mem`.
        return Ok(unsafe { DataBuffers::in_guest(mem.clone(), iovecs) });
    }
    let mut bounce = AlignedBuffer::new(req.data_len)?;
    if matches!(req.kind, RequestKind::Write { .. }) {
        // SAFETY: the parser built these iovecs from mapped guest memory.
        unsafe { iov::copy_from(&slot.iov, bounce.as_mut_slice()) };
    }
    Ok(DataBuffers::aligned(bounce))
}

#[cfg(test)]
mod tests;
