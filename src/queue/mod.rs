//! The queue worker: one per virtqueue, owning its own engine, on the thread that serves its
//! queue (alone, or with others: see [`poll_together`]).
//!
//! A kick drains the avail ring completely, in batches that double in size (1, 2, 4, ...):
//! each chain is parsed, validated, and pushed to the engine as one operation whose buffers
//! are the guest's own memory ([`bounce`] where they cannot be); each batch is submitted, and
//! whatever finished is published, before the next is taken. Completions come back on the
//! engine's completion fd, which the thread polls in the same epoll set as the kick. Finished
//! requests get their status byte and a used-ring entry ([`slot`]), and the guest is
//! signalled — only if the event index (or the no-interrupt flag) says it wants to be. An
//! engine that wakes the worker on a timer anyway ([`Wakeup::OnTimer`]) lets the worker leave
//! kicks off and look at the avail ring then, which saves the thread a wake-up per batch.
//! With `--poll-us`, the worker's thread busy-polls its rings and engines for a while after the
//! last work before it sleeps ([`poll`]).
//!
//! When the frontend gave us an in-flight tracking buffer ([`inflight`]),
//! every head is also recorded there from the moment it is taken until its used-ring entry is
//! written, and a ring start resubmits what a crashed predecessor left in flight.
//!
//! Nothing the guest writes can make the worker loop without progress. A ring the guest broke
//! (an avail index more than a queue ahead, rings outside its memory) is marked broken: it is
//! no longer served, said so once, and served again only after the frontend restarts it. Every
//! log line a guest can provoke is rate-limited.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::Level::{Debug, Error, Warn};
use vhost_user_backend::{VringState, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use crate::blk::layout::status;
use crate::blk::request::{self, Limits, Rejected, RequestKind, Scratch};
use crate::disk::{DiskInfo, SERIAL_LEN};
use crate::engine::{reap_or_wait, Completion, Direction, Engine, IoMemory, IoOp, Wakeup};
use crate::util::ratelimit::limited;
use crate::{GuestMemory, Vring};
use controls::Controls;
use diskio::iov;
use inflight::InflightQueue;
pub use poll::{poll_together, PollWindows};
use slot::{Failure, Job, Outcome, Slot, Transfer};
pub use stats::{Counter, QueueStats};

mod bounce;
pub mod controls;
mod dirty_log;
pub mod inflight;
mod poll;
mod slot;
mod stats;
pub mod throttle;

type RingState = VringState<GuestMemoryAtomic<GuestMemory>>;

/// The largest submission batch (see [`QueueWorker::serve_batches`]).
const MAX_BATCH: usize = 256;

/// The shortest sleep of a queue over its I/O limits: a few requests' worth of room gathers
/// in the buckets meanwhile, and the queue is woken once for them rather than once each.
const MIN_THROTTLE_SLEEP: Duration = Duration::from_millis(1);

/// Per-device settings every worker reads.
pub struct QueueConfig {
    /// What requests are checked against, the disk's capacity among it.
    pub limits: Limits,
    pub serial: Vec<u8>,
    pub buffer_alignment: usize,
    pub honours_flush: bool,
    /// The guest's WCE bit, shared by all queues; read once per write request.
    pub write_cache: Arc<AtomicBool>,
    /// Busy-poll the queue and the engine for up to this long after the last work before
    /// sleeping (the maximum of an adaptive window, see [`poll`]).
    pub poll: Option<Duration>,
    /// Whether the frontend logs dirty pages (a live migration): then what the engines and
    /// the worker write into guest memory behind the library's back is marked in its log
    /// ([`dirty_log`]).
    pub dirty_log: Arc<AtomicBool>,
    /// Whether another process holds the image: requests fail rather than touch it.
    pub fenced: Arc<AtomicBool>,
    /// The operator's limits and error policy, and the pause a failure puts the disk in.
    pub controls: Arc<Controls>,
}

impl QueueConfig {
    pub fn new(
        info: &DiskInfo,
        max_data_bytes: u64,
        write_cache: Arc<AtomicBool>,
        poll: Option<Duration>,
        dirty_log: Arc<AtomicBool>,
        fenced: Arc<AtomicBool>,
        controls: Arc<Controls>,
    ) -> Self {
        QueueConfig {
            dirty_log,
            fenced,
            controls,
            poll,
            limits: Limits::new(info, max_data_bytes),
            serial: info.serial.clone(),
            buffer_alignment: info.buffer_alignment,
            honours_flush: info.honours_flush,
            write_cache,
        }
    }
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
    /// Not taking requests now: the queue is over its I/O limits or the disk is paused. The
    /// queue's timer wakes it when it may go on.
    Held,
}

/// Whether the worker's thread polls after an event ([`poll_together`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum Polling {
    No,
    Yes,
}

/// What one polling round of a queue did.
struct Round {
    avail: Avail,
    /// Requests were put in the used ring.
    completed: bool,
    /// Requests are with the engine.
    in_flight: bool,
}

/// How the last look of a round collects completions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LastLook {
    /// The worker goes back to sleep on the engine's completion fd afterwards: arm it first.
    BeforeSleep,
    /// The worker keeps polling: no system call. With `others`, its thread polls other
    /// queues too, which get their turn after a queue's worth of requests from this one.
    Polling { others: bool },
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
    queue: u16,
    engine: Box<dyn Engine>,
    config: Arc<QueueConfig>,
    mem: GuestMemoryAtomic<GuestMemory>,
    /// The memory map the engine was last given (see [`Engine::set_io_memory`]).
    engine_mem: Option<Arc<GuestMemory>>,
    slots: Vec<Slot>,
    in_flight: usize,
    /// Operations pushed to the engine since the last submit.
    unsubmitted: usize,
    scratch: Scratch,
    completions: Vec<Completion>,
    finished: Vec<(u16, u32)>,
    /// The vring this worker serves, remembered from its first event so that in-flight I/O
    /// can be completed into it when the queue is stopped from the control thread.
    vring: Option<Vring>,
    /// Whether the ring has been started (see [`QueueWorker::is_started`]).
    started: bool,
    /// The guest broke the ring; it is not served until the frontend restarts it.
    broken: bool,
    /// This queue's region of the in-flight tracking buffer, if the frontend gave us one.
    inflight: Option<InflightQueue>,
    /// The order number the next request taken gets in the tracking buffer.
    taken: u64,
    /// Requests put in the used ring so far (wrapping): tells the polling loop that it did
    /// work.
    completed: u64,
    /// What this queue has done, for the control socket.
    stats: Arc<QueueStats>,
    /// Requests over the I/O limits, in the order taken: started, but not yet handed to the
    /// engine. While there are any, the queue takes nothing from its ring.
    throttled: VecDeque<(u16, IoOp)>,
    /// Since when the queue has been held back by the limits.
    throttled_since: Option<Instant>,
    /// Requests that failed and that the error policy holds until the disk resumes, with the
    /// operation that does them again.
    held: Vec<(u16, IoOp)>,
}

impl QueueWorker {
    pub fn new(
        queue: u16,
        engine: Box<dyn Engine>,
        config: Arc<QueueConfig>,
        mem: GuestMemoryAtomic<GuestMemory>,
        queue_size: u16,
        stats: Arc<QueueStats>,
    ) -> Self {
        QueueWorker {
            stats,
            queue,
            engine,
            mem,
            engine_mem: None,
            slots: (0..queue_size).map(|_| Slot::default()).collect(),
            in_flight: 0,
            unsubmitted: 0,
            scratch: Scratch::default(),
            completions: Vec::with_capacity(usize::from(queue_size)),
            finished: Vec::with_capacity(usize::from(queue_size)),
            vring: None,
            started: false,
            broken: false,
            inflight: None,
            taken: 0,
            completed: 0,
            config,
            throttled: VecDeque::new(),
            throttled_since: None,
            held: Vec::new(),
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
    pub fn start(&mut self, vring: &Vring, inflight: Option<InflightQueue>) {
        self.vring.get_or_insert_with(|| vring.clone());
        if !vring.get_ref().get_queue().ready() {
            // A late completion after the ring stopped: nothing to start yet.
            return;
        }
        self.started = true;
        self.broken = false;
        self.inflight = None;
        self.taken = 0;
        let mem = self.current_memory();
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
    fn recover(&mut self, state: &mut RingState, mem: &Arc<GuestMemory>, inflight: InflightQueue) {
        let queue = state.get_queue_mut();
        if queue.size() > inflight.desc_num() {
            limited!(
                Warn,
                "queue {}: the in-flight buffer tracks {} descriptors but the ring has {}; \
                 requests on this queue are not tracked",
                self.queue,
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
            self.stats.add(Counter::Resubmitted, u64::from(resubmit));
            if resubmit > 0 {
                log::info!(
                    "queue {}: resubmitting {resubmit} requests left in flight by the previous \
                     connection",
                    self.queue
                );
            }
            let (desc_table, size) = (GuestAddress(queue.desc_table()), queue.size());
            let now = Instant::now();
            for head in recovery.resubmit {
                let chain = DescriptorChain::new(&**mem, desc_table, size, head);
                if let Started::Done(len) = self.start_request(chain, mem, size, now) {
                    self.finished.push((head, len));
                }
            }
        }
        self.inflight = Some(inflight);
        self.submit();
        self.last_look(state, mem, LastLook::BeforeSleep);
    }

    /// The ring is stopping (GET_VRING_BASE): completes what is in flight, and forgets the
    /// ring's state so that the next start begins afresh.
    pub fn stop(&mut self) {
        self.stats.add(
            Counter::InFlightAtStop,
            (self.in_flight - self.held.len()) as u64,
        );
        self.drain();
        self.started = false;
        self.broken = false;
        self.inflight = None;
    }

    fn mark_broken(&mut self, why: &str) {
        self.broken = true;
        self.stats.add(Counter::BrokenRings, 1);
        limited!(
            Error,
            "queue {}: {why}; not serving it until the frontend restarts it (guest reset)",
            self.queue
        );
    }

    pub fn engine_fd(&self) -> std::os::fd::RawFd {
        self.engine.completion_fd()
    }

    /// The queue's timer fired: the I/O limits may have room, or the disk was resumed, or
    /// the limits changed. Returns whether the caller polls next ([`poll_together`]).
    pub fn on_timer(&mut self, vring: &Vring) -> Polling {
        self.vring.get_or_insert_with(|| vring.clone());
        self.config.controls.timer(self.queue).consume();
        self.serve(vring)
    }

    /// The guest memory map now; the engine is told when it changed.
    fn current_memory(&mut self) -> Arc<GuestMemory> {
        let mem = self.mem.memory().into_inner();
        if !self
            .engine_mem
            .as_ref()
            .is_some_and(|known| Arc::ptr_eq(known, &mem))
        {
            self.engine.set_io_memory(&IoMemory::guest(&mem));
            self.engine_mem = Some(mem.clone());
        }
        mem
    }

    /// The guest kicked: take every available chain, submit the batch, complete what is
    /// already done, notify once. With polling configured, the caller polls next.
    pub fn on_kick(&mut self, vring: &Vring) -> Polling {
        self.vring.get_or_insert_with(|| vring.clone());
        self.serve(vring)
    }

    /// The engine's completion fd fired: complete what finished and notify once (and poll, if
    /// configured and something finished).
    pub fn on_completion(&mut self, vring: &Vring) -> Polling {
        self.vring.get_or_insert_with(|| vring.clone());
        if self.config.poll.is_none() && self.engine.wakeup() == Wakeup::OnTimer {
            // Guest kicks were left off (see serve), on the promise to look at the avail ring
            // when the engine woke us: this is that wake-up.
            return self.serve(vring);
        }
        self.arm_and_reap();
        if self.finished.is_empty() {
            return Polling::No;
        }
        let mem = self.current_memory();
        self.publish(&mut vring.get_mut(), &mem);
        if self.config.poll.is_some() {
            return self.serve(vring);
        }
        Polling::No
    }

    /// Without polling: takes available requests, submits, reaps and publishes until the ring
    /// is empty, then lets the guest kick again. With polling, the caller does that
    /// ([`poll_together`]).
    fn serve(&mut self, vring: &Vring) -> Polling {
        self.release_held();
        if self.config.poll.is_some() {
            return Polling::Yes;
        }
        let mem = self.current_memory();
        let mut state = vring.get_mut();
        loop {
            let avail = self.serve_batches(&mut state, &mem, LastLook::BeforeSleep);
            if matches!(avail, Avail::Unusable | Avail::Held)
                || self.engine.wakeup() == Wakeup::OnTimer
            {
                // Kicks stay off: on_completion looks at the ring, the queue's timer says
                // when to go on, or there is nothing to serve until the ring restarts.
                return Polling::No;
            }
            match state.enable_notification() {
                // A request slipped in as we re-armed; the next round takes it.
                Ok(true) => continue,
                Ok(false) => return Polling::No,
                Err(e) => {
                    self.mark_broken(&format!("cannot enable notifications ({e})"));
                    return Polling::No;
                }
            }
        }
    }

    /// One round of polling: takes what the ring holds, submits, reaps and publishes, with
    /// notifications off (the guest need not kick: we look). With `others`, the thread polls
    /// other queues too, and the round ends after a queue's worth of requests.
    fn poll_round(&mut self, vring: &Vring, others: bool) -> Round {
        // Each round takes the current memory map (the frontend may add regions while we
        // poll) and the vring lock afresh (the control thread may need it between rounds).
        let mem = self.current_memory();
        let mut state = vring.get_mut();
        let completed = self.completed;
        let avail = self.serve_batches(&mut state, &mem, LastLook::Polling { others });
        Round {
            avail,
            completed: self.completed != completed,
            in_flight: self.in_flight > 0,
        }
    }

    /// Polling ends: arms the engine's completion fd (polling left it readable, and epoll
    /// must not wake us for completions already taken), publishes the last completions and,
    /// unless `kicks_stay_off`, lets the guest kick again. Returns whether a request slipped
    /// in as kicks were re-armed (then polling goes on).
    fn stop_polling(&mut self, vring: &Vring, kicks_stay_off: bool) -> bool {
        let mem = self.current_memory();
        let mut state = vring.get_mut();
        self.last_look(&mut state, &mem, LastLook::BeforeSleep);
        if kicks_stay_off || self.broken || !state.get_queue().ready() {
            return false;
        }
        match state.enable_notification() {
            Ok(slipped_in) => slipped_in,
            Err(e) => {
                self.mark_broken(&format!("cannot enable notifications ({e})"));
                false
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
        state: &mut RingState,
        mem: &Arc<GuestMemory>,
        last: LastLook,
    ) -> Avail {
        let mut batch = 1;
        let mut result = Avail::Empty;
        loop {
            let avail = self.take_available(state, mem, batch);
            self.submit();
            if avail != Avail::Took {
                self.last_look(state, mem, last);
                return if avail == Avail::Empty { result } else { avail };
            }
            // Cheap check: buffered reads and the like may have completed during submission.
            self.reap();
            self.publish(state, mem);
            result = Avail::Took;
            // Capped: a guest that keeps the ring busy keeps this loop going — or, on a thread
            // that serves other queues too, hands over to them after 1 + 2 + ... + 128.
            batch = (batch * 2).min(MAX_BATCH);
            if batch == MAX_BATCH && last == (LastLook::Polling { others: true }) {
                return Avail::Took;
            }
        }
    }

    /// Parses up to `max` available chains and pushes their I/O.
    fn take_available(
        &mut self,
        state: &mut RingState,
        mem: &Arc<GuestMemory>,
        max: usize,
    ) -> Avail {
        // A ring that is stopping (GET_VRING_BASE marks it not ready before it drains us) is
        // not the guest's fault; one the guest broke stays broken until restarted.
        if self.broken || !state.get_queue().ready() {
            return Avail::Unusable;
        }
        if let Err(e) = state.disable_notification() {
            self.mark_broken(&format!("cannot disable notifications ({e})"));
            return Avail::Unusable;
        }
        if self.holding() {
            return Avail::Held;
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
        let mem = &self.current_memory();
        let size = queue.size();
        let chains = match queue.iter(&**mem) {
            Ok(chains) => chains,
            Err(e) => {
                // An avail index more than a queue ahead, or an unmapped ring.
                self.mark_broken(&format!("its avail ring is unusable ({e})"));
                return Avail::Unusable;
            }
        };
        // One clock read for the batch: per request, it was a twelfth of a busy queue's time
        // (perf, null disk, QD32), and a batch is parsed in a few microseconds.
        let now = Instant::now();
        for chain in chains.take(max) {
            let head = chain.head_index();
            if let Some(inflight) = self.inflight.as_ref().filter(|_| head < size) {
                inflight.take(head, self.taken);
                self.taken = self.taken.wrapping_add(1);
            }
            match self.start_request(chain, mem, size, now) {
                Started::Done(len) => self.finished.push((head, len)),
                Started::Submitted | Started::Ignored => {}
            }
            if self.holding() {
                // The rest stays in the ring until the queue may go on.
                break;
            }
        }
        Avail::Took
    }

    /// Whether the queue takes no requests now: it is over its limits, or the disk is paused.
    fn holding(&self) -> bool {
        !self.throttled.is_empty() || self.config.controls.paused()
    }

    /// Hands the engine what may go now: the requests the error policy held, once the disk is
    /// resumed, and those over the limits that the limits now admit.
    fn release_held(&mut self) {
        if !self.held.is_empty() && !self.config.controls.paused() {
            log::info!(
                "queue {}: resubmitting {} held request(s)",
                self.queue,
                self.held.len()
            );
            for (head, op) in std::mem::take(&mut self.held) {
                self.push_now(head, op);
            }
        }
        while let Some((_, op)) = self.throttled.front() {
            if !self.admitted(op) {
                return;
            }
            if let Some((head, op)) = self.throttled.pop_front() {
                self.push_now(head, op);
            }
        }
        self.throttled_until_now();
    }

    /// Counts the time the queue was held back by the limits, if it was.
    fn throttled_until_now(&mut self) {
        if let Some(since) = self.throttled_since.take() {
            let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.stats.add(Counter::ThrottledMicroseconds, us);
        }
    }

    /// Whether the limits admit `op` now (charging them for it); if not, the queue's timer is
    /// set for when they may.
    #[inline]
    fn admitted(&self, op: &IoOp) -> bool {
        match self.config.controls.throttle.admit(op) {
            Ok(()) => true,
            Err(wait) => self.sleep_until_admitted(wait),
        }
    }

    /// Sets the queue's timer for `wait` from now (at least [`MIN_THROTTLE_SLEEP`]); false, the
    /// request is not admitted.
    #[cold]
    fn sleep_until_admitted(&self, wait: Duration) -> bool {
        let timer = self.config.controls.timer(self.queue);
        if let Err(e) = timer.fire_in(wait.max(MIN_THROTTLE_SLEEP)) {
            limited!(Error, "queue {}: cannot set its timer: {e}", self.queue);
        }
        false
    }

    /// Lets go of what is held when the ring stops or the daemon shuts down: requests over
    /// the limits go to the engine now; requests the error policy held stay in the in-flight
    /// tracking buffer, for whoever serves the ring next to do again — or, without one, or
    /// when the frontend migrates the guest (the destination does not get our tracking
    /// buffer), are completed with an I/O error.
    fn let_go_of_held(&mut self) {
        while let Some((head, op)) = self.throttled.pop_front() {
            self.push_now(head, op);
        }
        self.throttled_until_now();
        self.submit();
        let tracked = self.inflight.is_some() && !self.config.dirty_log.load(Ordering::Relaxed);
        if !self.held.is_empty() {
            limited!(
                Warn,
                "queue {}: the ring stops with {} held requests; {}",
                self.queue,
                self.held.len(),
                if tracked {
                    "they stay in the in-flight buffer, to be done when it starts again"
                } else {
                    "they fail (nothing would keep them)"
                }
            );
        }
        for (head, _) in std::mem::take(&mut self.held) {
            if let Some(slot) = self.slots.get_mut(usize::from(head)) {
                slot.give_up(!tracked);
            }
            self.in_flight -= 1;
            if !tracked {
                self.finished.push((head, 1));
            }
        }
    }

    /// Hands what was pushed since the last submit to the engine, if anything was.
    fn submit(&mut self) {
        self.stats.set_in_flight(self.in_flight);
        if self.unsubmitted == 0 {
            return;
        }
        self.unsubmitted = 0;
        self.stats.add(Counter::Submissions, 1);
        if let Err(e) = self.engine.submit() {
            limited!(Error, "queue {}: submitting I/O failed: {e}", self.queue);
        }
    }

    /// Pushes a new request's operation, or holds it if it is over the limits (or others are
    /// held before it).
    fn push(&mut self, head: u16, op: IoOp) {
        if self.throttled.is_empty() && self.admitted(&op) {
            return self.push_now(head, op);
        }
        if self.throttled.is_empty() {
            self.throttled_since = Some(Instant::now());
        }
        self.stats.add(Counter::Throttled, 1);
        self.throttled.push_back((head, op));
    }

    fn push_now(&mut self, head: u16, op: IoOp) {
        self.unsubmitted += 1;
        self.engine.push(u64::from(head), op);
    }

    /// The last look of a round: collect what finished — arming the engine's completion fd
    /// first if the worker sleeps on it next — and publish it.
    fn last_look(&mut self, state: &mut RingState, mem: &GuestMemory, last: LastLook) {
        match last {
            LastLook::BeforeSleep => self.arm_and_reap(),
            LastLook::Polling { .. } => self.reap(),
        }
        self.publish(state, mem);
    }

    /// Waits for every in-flight request and completes it into the vring. Called when the
    /// queue stops (GET_VRING_BASE) or the daemon shuts down.
    pub fn drain(&mut self) {
        loop {
            // Requests that fail while draining may be held too.
            self.let_go_of_held();
            if let Some(vring) = self.vring.clone() {
                let mem = self.current_memory();
                self.publish(&mut vring.get_mut(), &mem);
            } else {
                self.finished.clear();
            }
            if self.in_flight == 0 {
                return;
            }
            if let Err(e) = reap_or_wait(&mut *self.engine, &mut self.completions, 1000) {
                limited!(Error, "queue {}: waiting for I/O failed: {e}", self.queue);
                return;
            }
            self.handle_completions();
        }
    }

    /// Parses one chain of a ring of `size` descriptors, taken at `now`, and starts its request.
    fn start_request(
        &mut self,
        chain: DescriptorChain<&GuestMemory>,
        mem: &Arc<GuestMemory>,
        size: u16,
        now: Instant,
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
                self.queue
            );
            return Started::Ignored;
        };
        if slot.busy {
            limited!(
                Warn,
                "queue {}: guest reused descriptor {head} while in flight; ignored",
                self.queue
            );
            return Started::Ignored;
        }
        let config = &*self.config;
        let req = match request::parse(chain, mem, &config.limits, &mut self.scratch, &mut slot.iov)
        {
            Ok(req) => req,
            Err(Rejected { status, error }) => {
                self.stats.rejected(error);
                limited!(
                    Debug,
                    "queue {}: request {head} rejected: {error}",
                    self.queue
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
        self.stats.add(Counter::of(req.kind), 1);
        if config.fenced.load(Ordering::Relaxed) {
            write_status(mem, req.status, status::IOERR);
            return Started::Done(1);
        }
        let op = match req.kind {
            RequestKind::Read { .. } | RequestKind::Write { .. } if req.data_len == 0 => {
                write_status(mem, req.status, status::OK);
                return Started::Done(1);
            }
            RequestKind::GetId => {
                // SAFETY: the parser built these iovecs from guest memory that `mem` keeps mapped.
                let n = unsafe { iov::copy_to(&slot.iov, 0, &config.serial) };
                // The serial is NUL-padded when it is shorter than the buffer (up to 20 bytes).
                let padded = req.data_len.min(SERIAL_LEN);
                // SAFETY: as above.
                unsafe { iov::zero(&slot.iov, n, padded) };
                if config.dirty_log.load(Ordering::Relaxed) {
                    dirty_log::mark(mem, &slot.iov);
                }
                write_status(mem, req.status, status::OK);
                return Started::Done(used_len(padded));
            }
            RequestKind::Flush if !config.honours_flush => {
                write_status(mem, req.status, status::OK);
                return Started::Done(1);
            }
            RequestKind::Flush | RequestKind::Discard { .. } | RequestKind::WriteZeroes { .. } => {
                let job = match req.kind {
                    RequestKind::Discard { offset, len } => Job::Discard { offset, len },
                    RequestKind::WriteZeroes { offset, len, unmap } => {
                        Job::WriteZeroes { offset, len, unmap }
                    }
                    _ => Job::Flush,
                };
                slot.start(req.status, job, 0, 1, mem, now);
                job.op(0, None).expect("only a transfer needs buffers")
            }
            RequestKind::Read { offset } | RequestKind::Write { offset } => {
                let direction = match req.kind {
                    RequestKind::Write { .. } => Direction::Write {
                        dsync: config.honours_flush && !config.write_cache.load(Ordering::Relaxed),
                    },
                    _ => Direction::Read,
                };
                let prepared = bounce::prepare(
                    &mut slot.iov,
                    direction,
                    req.data_len,
                    mem,
                    config.buffer_alignment,
                );
                let (data, bounced) = match prepared {
                    Ok(prepared) => prepared,
                    Err(e) => {
                        limited!(
                            Error,
                            "queue {}: cannot allocate a bounce buffer: {e}",
                            self.queue
                        );
                        write_status(mem, req.status, status::IOERR);
                        return Started::Done(1);
                    }
                };
                if bounced {
                    self.stats.add(Counter::Bounced, 1);
                }
                // The used ring reports bytes written for the guest, status byte included.
                let used = if direction == Direction::Read {
                    used_len(req.data_len)
                } else {
                    1
                };
                let transfer = Transfer { direction, offset };
                slot.start(
                    req.status,
                    Job::Transfer(transfer),
                    req.data_len,
                    used,
                    mem,
                    now,
                );
                slot.set_bounced(bounced);
                transfer.op(0, data)
            }
        };
        self.in_flight += 1;
        self.push(head, op);
        Started::Submitted
    }

    /// Collects finished operations without a system call where the engine allows.
    fn reap(&mut self) {
        if let Err(e) = self.engine.reap(&mut self.completions) {
            limited!(
                Error,
                "queue {}: reaping completions failed: {e}",
                self.queue
            );
        }
        self.handle_completions();
    }

    /// Arms the engine's completion fd for the next sleep, then collects what finished.
    fn arm_and_reap(&mut self) {
        if let Err(e) = self.engine.arm() {
            limited!(
                Error,
                "queue {}: arming completions failed: {e}",
                self.queue
            );
        }
        self.reap();
    }

    /// Turns collected completions into (head, used length) pairs, or into the rest of a
    /// short transfer.
    fn handle_completions(&mut self) {
        let mut resubmitted = false;
        let logging = self.config.dirty_log.load(Ordering::Relaxed);
        let policy = self.config.controls.policy;
        let mut completions = std::mem::take(&mut self.completions);
        // One clock read for everything reaped together, as for everything taken together.
        let mut now = None;
        for c in completions.drain(..) {
            // Tokens are the heads we pushed; anything else is an engine bug, not a crash.
            let head = u16::try_from(c.token).ok();
            let slot = head.and_then(|h| self.slots.get_mut(usize::from(h)));
            let (Some(head), Some(slot)) = (head, slot.filter(|s| s.busy)) else {
                limited!(
                    Error,
                    "queue {}: completion for unknown request {}",
                    self.queue,
                    c.token
                );
                continue;
            };
            match slot.complete(c.result, c.data, logging, &policy) {
                Outcome::Resubmit(rest) => {
                    self.push_now(head, rest);
                    resubmitted = true;
                }
                Outcome::Held { op, job, error } => {
                    let controls = &self.config.controls;
                    controls.pause(self.queue, job.name(), job.offset(), &error);
                    self.stats.add(Counter::HeldOnError, 1);
                    self.held.push((head, op));
                }
                Outcome::Finished {
                    used_len,
                    failure,
                    moved,
                    taken_at,
                } => {
                    if failure.is_some() {
                        self.stats.add(Counter::IoErrors, 1);
                    }
                    match failure {
                        Some(Failure::Io(e)) => {
                            limited!(Warn, "queue {}: I/O error: {e}", self.queue);
                        }
                        Some(Failure::NoProgress { done, expected }) => limited!(
                            Warn,
                            "queue {}: short transfer: {done} of {expected} bytes, then no \
                             progress",
                            self.queue
                        ),
                        None => {}
                    }
                    match moved {
                        Some((Direction::Read, n)) => self.stats.add(Counter::BytesRead, n as u64),
                        Some((Direction::Write { .. }, n)) => {
                            self.stats.add(Counter::BytesWritten, n as u64);
                        }
                        None => {}
                    }
                    if let Some(taken_at) = taken_at {
                        let now = *now.get_or_insert_with(Instant::now);
                        self.stats.latency(now.saturating_duration_since(taken_at));
                    }
                    self.in_flight -= 1;
                    self.finished.push((head, used_len));
                }
            }
        }
        self.completions = completions;
        self.stats.set_in_flight(self.in_flight);
        if resubmitted {
            self.submit();
        }
    }

    /// Puts finished requests in the used ring and signals the guest if it asked to be.
    fn publish(&mut self, state: &mut RingState, mem: &GuestMemory) {
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
                Err(e) => limited!(Warn, "queue {}: cannot add to used ring: {e}", self.queue),
            }
        }
        match state.needs_notification() {
            Ok(false) => {}
            Ok(true) | Err(_) => self.signal_guest(state),
        }
    }

    fn signal_guest(&self, state: &RingState) {
        self.stats.add(Counter::Notifications, 1);
        if let Err(e) = state.signal_used_queue() {
            // A full (or closed) call eventfd: the frontend's problem, not a reason to stop;
            // the next signal tries again.
            limited!(Warn, "queue {}: cannot signal the guest: {e}", self.queue);
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

#[cfg(test)]
mod tests;
