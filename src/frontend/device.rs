//! The vhost-user-blk device: what the frontend negotiates, and the glue between
//! `vhost-user-backend`'s per-queue epoll threads and our queue workers.
//!
//! `vhost-user-backend` runs one epoll thread per entry of [`queues_per_thread`]: queue q is
//! served by thread q mod `--queue-threads` (by default one thread per queue, but no more
//! threads than CPUs the daemon may run on: polling threads beyond that only take turns).
//! Each thread's epoll holds its vrings' kick fds (registered by the library) and its workers'
//! engine eventfds and timers (registered by [`BlockDevice::register_engines`]), so a thread
//! sleeps until the guest or the disk has something for one of its queues, and polls all of
//! them together ([`poll_together`]). Each worker sits behind its own mutex, which only its
//! thread takes on the data path — the control thread takes it only to drain the queue on
//! GET_VRING_BASE or shutdown, which a polling thread allows between two rounds.
//!
//! The device offers `INFLIGHT_SHMFD` whatever the engine: tracking happens in the worker,
//! above the engine seam, so every engine's requests survive a crash of the daemon (see
//! [`crate::queue::inflight`]).
//!
//! It offers live migration too (`VHOST_F_LOG_ALL`, `LOG_SHMFD`): while the frontend logs
//! dirty pages, every guest page vblkd writes is marked in its log before the used-ring entry
//! that shows it — what goes through guest memory by the library's bitmap, what the kernel or
//! another thread wrote by the queue worker ([`crate::queue`]). The switch-over is the
//! frontend stopping every ring while it logs: each `GET_VRING_BASE` completes (and logs) what
//! is in flight before it is answered, and when the last ring stops the disk gives up its
//! image locks for the destination, which takes them when its own frontend starts the device
//! ([`Disk::activate`]). A migration that is cancelled restarts the rings here, which takes the
//! locks back.
//!
//! [`queues_per_thread`]: VhostUserBackend::queues_per_thread

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::Backend;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringT};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::DeviceState;
use crate::blk::config::{
    config_space, device_features, max_request_bytes, CONFIG_LEN, WRITEBACK_OFFSET,
};
use crate::blk::layout::ConfigSpace;
use crate::disk::{Disk, DiskError};
use crate::queue::inflight::InflightBuffer;
use crate::queue::{poll_together, PollWindows, Polling, QueueConfig, QueueWorker};
use crate::util::ratelimit::limited;
use crate::util::sigbus;
use crate::{GuestMemory, Vring};

/// Largest configuration-space read we answer (the virtio-blk config is well below this).
const MAX_CONFIG_READ: u32 = 256;

pub struct BlockDevice {
    disk: Arc<dyn Disk>,
    num_queues: u16,
    queue_size: u16,
    write_cache: Arc<AtomicBool>,
    workers: Vec<Mutex<QueueWorker>>,
    /// The vring threads, in the library's order.
    threads: Vec<QueueThread>,
    /// The in-flight tracking buffer the frontend set (GET_/SET_INFLIGHT_FD); each worker
    /// takes its region when its ring starts.
    inflight: Mutex<Option<Arc<InflightBuffer>>>,
    /// Where the frontend's channel goes, and the rest that outlives this connection.
    state: Arc<DeviceState>,
    /// Whether the frontend logs dirty pages now (`VHOST_F_LOG_ALL` acked); the workers read
    /// it too.
    dirty_log: Arc<AtomicBool>,
    /// Whether the disk may be served: false while another process holds the image (the
    /// workers then fail requests instead of touching it).
    fenced: Arc<AtomicBool>,
    /// The queues whose rings are started, one bit each.
    running: Mutex<u64>,
}

/// The queues one vring thread serves, in the order of its vrings, and its polling windows.
struct QueueThread {
    queues: Vec<u16>,
    /// Taken by the thread only; `None` without polling.
    poll: Mutex<Option<PollWindows>>,
}

/// What woke a vring thread, for the k-th of its queues.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Event {
    Kick,
    Completion,
    Timer,
}

impl BlockDevice {
    /// A device on `disk` with `num_queues` queues of up to `queue_size` entries, each with a
    /// fresh engine, served by `threads` threads, busy-polling for `poll` after work if set.
    /// `mem` is the guest memory the vhost-user library maintains; `state` is what outlives
    /// the connection.
    pub fn new(
        disk: Arc<dyn Disk>,
        num_queues: u16,
        threads: u16,
        queue_size: u16,
        poll: Option<Duration>,
        mem: GuestMemoryAtomic<GuestMemory>,
        state: &Arc<DeviceState>,
    ) -> Result<Self, DiskError> {
        let write_cache = state.write_cache.clone();
        let (dirty_log, fenced) = (Arc::default(), Arc::default());
        let config = Arc::new(QueueConfig::new(
            disk.info(),
            max_request_bytes(queue_size),
            write_cache.clone(),
            poll,
            Arc::clone(&dirty_log),
            Arc::clone(&fenced),
            Arc::clone(&state.controls),
        ));
        let workers = (0..num_queues)
            .zip(&state.queues)
            .map(|(queue, stats)| {
                let engine = disk.engine(queue, queue_size)?;
                Ok(Mutex::new(QueueWorker::new(
                    queue,
                    engine,
                    config.clone(),
                    mem.clone(),
                    queue_size,
                    stats.clone(),
                )))
            })
            .collect::<Result<Vec<_>, DiskError>>()?;
        let threads = threads.clamp(1, num_queues.max(1));
        let threads = (0..threads)
            .map(|t| QueueThread {
                queues: (t..num_queues).step_by(usize::from(threads)).collect(),
                poll: Mutex::new(poll.map(PollWindows::new)),
            })
            .collect();
        Ok(BlockDevice {
            disk,
            num_queues,
            queue_size,
            write_cache,
            workers,
            threads,
            inflight: Mutex::new(None),
            state: state.clone(),
            dirty_log,
            fenced,
            running: Mutex::new(0),
        })
    }

    /// The epoll event id of the engine eventfd of a thread's k-th queue (its timer's is the
    /// next one: the I/O limits' waits, wake-ups on resume). The library reserves ids up to
    /// `num_queues` for kicks and its own events.
    fn engine_event(&self, k: usize) -> u64 {
        u64::from(self.num_queues) + 1 + 2 * k as u64
    }

    /// Which of a thread's `vrings` queues an event id is for, and what it reports.
    fn event_of(&self, device_event: u16, vrings: usize) -> Option<(usize, Event)> {
        let id = usize::from(device_event);
        if id < vrings {
            return Some((id, Event::Kick));
        }
        let past = id.checked_sub(usize::from(self.num_queues) + 1)?;
        let event = if past % 2 == 0 {
            Event::Completion
        } else {
            Event::Timer
        };
        Some((past / 2, event))
    }

    /// Puts each worker's engine eventfd and its queue's timer into its thread's epoll set.
    pub fn register_engines(
        &self,
        handlers: &[Arc<VringEpollHandler<Arc<BlockDevice>>>],
    ) -> io::Result<()> {
        for (thread, handler) in self.threads.iter().zip(handlers) {
            for (k, &queue) in thread.queues.iter().enumerate() {
                let fd = self.worker(&self.workers[usize::from(queue)]).engine_fd();
                handler.register_listener(fd, EventSet::IN, self.engine_event(k))?;
                let timer = self.state.controls.timer(queue).as_raw_fd();
                handler.register_listener(timer, EventSet::IN, self.engine_event(k) + 1)?;
            }
        }
        Ok(())
    }

    /// Locks queue `queue`'s worker — unless `wait` is false and the control thread holds it
    /// (draining the queue for GET_VRING_BASE: a polling thread serves its other queues
    /// meanwhile) — and starts it first if its ring was started since (before the worker
    /// resubmits what a predecessor left in flight, the disk is made ours).
    fn worker_started(
        &self,
        queue: usize,
        vring: &Vring,
        wait: bool,
    ) -> Option<MutexGuard<'_, QueueWorker>> {
        let worker = self.workers.get(queue)?;
        let mut worker = if wait {
            self.worker(worker)
        } else {
            match worker.try_lock() {
                Ok(worker) => worker,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return None,
            }
        };
        if !worker.is_started() && vring.get_ref().get_queue().ready() {
            self.ring_starting(queue);
            let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            worker.start(vring, inflight.as_ref().and_then(|b| b.queue(queue)));
        }
        Some(worker)
    }

    /// Completes every in-flight request on every queue.
    pub fn drain(&self) {
        for worker in &self.workers {
            self.worker(worker).drain();
        }
    }

    fn worker<'a>(&self, worker: &'a Mutex<QueueWorker>) -> MutexGuard<'a, QueueWorker> {
        // A worker that panicked mid-request leaves consistent-enough state to drain; keep
        // serving rather than poison every later event.
        worker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `queue`'s ring is about to start: the first to start makes the disk ours
    /// (takes its locks, which an earlier switch-over or `--incoming` left untaken).
    fn ring_starting(&self, queue: usize) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if *running == 0 {
            match self.disk.activate() {
                Ok(()) => self.fenced.store(false, Ordering::Relaxed),
                Err(e) => {
                    limited!(
                        log::Level::Error,
                        "not serving the disk: {e}; requests fail until it is free and the \
                         frontend restarts the device"
                    );
                    self.fenced.store(true, Ordering::Relaxed);
                }
            }
        }
        *running |= 1 << queue;
    }

    /// Queue `queue`'s ring stopped: when the last one stops while the frontend logs dirty
    /// pages, this is a migration's switch-over, and the disk is given up.
    fn ring_stopped(&self, queue: usize) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let was = *running;
        *running &= !(1 << queue);
        if was != 0 && *running == 0 && self.dirty_log.load(Ordering::Relaxed) {
            self.disk.inactivate();
        }
    }

    fn config(&self) -> ConfigSpace {
        config_space(
            self.disk.info(),
            self.num_queues,
            self.queue_size,
            self.write_cache.load(Ordering::Relaxed),
        )
    }
}

impl VhostUserBackend for BlockDevice {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        device_features(self.disk.info())
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits()
    }

    fn acked_features(&self, features: u64) {
        let logging = features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0;
        if self.dirty_log.swap(logging, Ordering::Relaxed) != logging {
            log::info!(
                "the frontend {} logging dirty pages (live migration)",
                if logging { "started" } else { "stopped" }
            );
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        self.state.channel.connected(backend);
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The library configures each queue's event-index handling itself.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let Some(end) = offset
            .checked_add(size)
            .filter(|&end| end <= MAX_CONFIG_READ)
        else {
            return Vec::new();
        };
        // Fields past the ones we implement read as zero, as on a device that predates them.
        let mut bytes = vec![0u8; MAX_CONFIG_READ as usize];
        bytes[..CONFIG_LEN].copy_from_slice(self.config().as_slice());
        bytes[offset as usize..end as usize].to_vec()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // The writeback byte is the only writable field of virtio-blk's config space. Other
        // writes are ignored rather than failed: an error here would make the vhost-user
        // library drop the whole connection.
        match (offset, buf) {
            (WRITEBACK_OFFSET, [wce]) => {
                let on = *wce != 0;
                limited!(
                    log::Level::Info,
                    "guest turned the write cache {}",
                    if on { "on" } else { "off" }
                );
                self.write_cache.store(on, Ordering::Relaxed);
            }
            _ => limited!(
                log::Level::Warn,
                "ignoring a {}-byte write to read-only config space at offset {offset}",
                buf.len()
            ),
        }
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        // The workers hold the same GuestMemoryAtomic the library just updated. The frontend
        // keeps the files behind it and could shrink them: guard every region against that.
        for region in mem.memory().iter() {
            sigbus::guard(region.as_ptr(), region.size());
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let mask = |queues: &[u16]| queues.iter().fold(0u64, |m, &q| m | 1 << q);
        self.threads.iter().map(|t| mask(&t.queues)).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let queue = queue_index as usize;
        if let Some(worker) = self.workers.get(queue) {
            self.worker(worker).stop();
            self.ring_stopped(queue);
        }
        Ok(())
    }

    fn get_inflight_fd(&self, msg: &VhostUserInflight) -> io::Result<(VhostUserInflight, File)> {
        if msg.num_queues > self.num_queues {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "an inflight buffer for {} queues; this device has {}",
                    msg.num_queues, self.num_queues
                ),
            ));
        }
        let (buffer, file) = InflightBuffer::create(msg.num_queues, msg.queue_size)?;
        *self.inflight.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(buffer));
        let size = InflightBuffer::size_for(msg.num_queues, msg.queue_size);
        Ok((
            VhostUserInflight::new(size, 0, msg.num_queues, msg.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&self, msg: &VhostUserInflight, file: File) -> io::Result<()> {
        let buffer = InflightBuffer::open(
            &file,
            msg.mmap_offset,
            msg.mmap_size,
            msg.num_queues,
            msg.queue_size,
        )?;
        *self.inflight.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(buffer));
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(thread) = self.threads.get(thread_id) else {
            return Ok(());
        };
        let Some((k, event)) = self.event_of(device_event, vrings.len()) else {
            return Ok(());
        };
        let (Some(&queue), Some(vring)) = (thread.queues.get(k), vrings.get(k)) else {
            return Ok(());
        };
        // Only queue threads get here; the first event tightens the thread's filter.
        crate::sandbox::enter(crate::sandbox::Role::Queue);
        let mut windows = thread.poll.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(windows), Event::Kick | Event::Completion) = (windows.as_mut(), event) {
            windows.woke();
        }
        let polling = match self.worker_started(usize::from(queue), vring, true) {
            Some(mut worker) => match event {
                Event::Kick => worker.on_kick(vring),
                Event::Completion => worker.on_completion(vring),
                Event::Timer => worker.on_timer(vring),
            },
            None => Polling::No,
        };
        if let (Some(windows), Polling::Yes) = (windows.as_mut(), polling) {
            poll_together(windows, thread.queues.len(), |k| {
                let vring = vrings.get(k)?;
                let queue = usize::from(*thread.queues.get(k)?);
                let worker = self.worker_started(queue, vring, false)?;
                worker.is_started().then_some((worker, vring))
            });
        }
        Ok(())
    }
}
