//! `vblkd aoe-export`: serving disks to ATA-over-Ethernet initiators — Linux's `aoe` driver,
//! vblkd's own `--disk aoe://...`, anything that talks to vblade.
//!
//! This is what vblade's AIO patch set out to be and left unfinished: its author found the
//! SIGIO handler that reported AIO completions dominating the profile, and wished for a way of
//! polling the AIO events together with the socket. Here each interface has one thread and one
//! epoll set holding the raw socket (its memory-mapped receive ring, [`aoe::ring`]) and the
//! completion fd of every exported disk's engine — the same engines, opened by the same code
//! ([`crate::disk::open`]), as `serve` uses. A round of the loop takes every frame waiting in
//! the ring, turns each into a reply or an I/O ([`aoe::target::Export`] decides which),
//! submits each engine's batch with one call, reaps what finished, and sends every reply of
//! the round with one `sendmmsg`. Many commands are in flight at once, up to the buffer count
//! the target announces: that many buffers are held for each disk, so the count is true.
//!
//! Several disks on one interface share its thread (no locks, no hand-offs between threads:
//! the lesson of the AIO patch's wish to export several devices "without the complexity and
//! overhead of a multithreaded approach"); several interfaces run in parallel.
//!
//! The read data is read into the target's buffers and sent from them. A write's data is
//! written to disk from where the kernel put it, the receive ring: its slot is held until the
//! write is done. Copying it out first cost a tenth of a 4 KiB write's CPU, mostly cache
//! misses on the frame the initiator's CPU had just written. The ring places frames so that
//! their data is aligned for O_DIRECT, and has three slots for every command the disks may
//! hold, so the kernel comes round to a held slot only when a write takes longer than the
//! two ring-fuls of frames after it take to arrive; it then drops frames until the slot is
//! released (initiators retransmit). A frame that is not aligned after all is copied.
//!
//! An initiator splits every request into frames of a few sectors (two at MTU 1500), so a
//! round often holds runs of commands for neighbouring sectors. Each run becomes one I/O, the
//! commands' buffers its iovecs, as QEMU's virtio-blk merges neighbouring requests: the file
//! system is entered once per run rather than once per frame, which is most of a buffered
//! write's cost (ext4 walks the whole folio's buffers for each write into it).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aoe::frame::{ATA_HEADER_LEN, SECTOR};
use aoe::ring::{HeldSlot, RxRing};
use aoe::socket::{RawSocket, TxBatch};
use aoe::target::{Action, Export, ExportConfig, Op, Pending};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::disk::Disk;
use crate::engine::{AlignedBuffer, Completion, DataBuffers, Direction, Engine, IoMemory, IoOp};
use crate::util::bump;
use crate::util::ratelimit::limited;

mod spec;
mod status;

pub use spec::{ExportSpec, SpecError};
pub use status::{ExportInfo, ExportStats, Exporting, InterfaceInfo};

/// Commands each disk holds at once unless told otherwise: Linux's `aoe` driver keeps at most
/// 64 frames outstanding per target (its `aoe_maxout`), and asks for no more than offered.
pub const DEFAULT_BUFFER_COUNT: u16 = 64;

/// The largest ATA frame's sector count (the field is a byte).
const MAX_SECTORS: usize = 255;

/// The most commands one I/O does together: 1 MiB at MTU 9000, 128 KiB at 1500, well under
/// the kernel's 1024 iovecs per call.
const MAX_MERGED: usize = 128;

/// What each exported disk has done, for the log and the control socket.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Commands whose I/O failed.
    pub io_errors: AtomicU64,
    /// Frames answered without I/O (config, IDENTIFY, errors, cached replies).
    pub replies: AtomicU64,
    /// Copies of a command in progress, dropped.
    pub duplicates: AtomicU64,
    /// Frames that were not well-formed.
    pub malformed: AtomicU64,
    /// Commands dropped for want of a buffer: an initiator sent more than the buffer count.
    pub over_buffer_count: AtomicU64,
    /// Commands done in one I/O with the command before them (the next sectors, taken in the
    /// same round).
    pub merged: AtomicU64,
    /// Writes done from the frame in the receive ring, not a copy.
    pub writes_from_ring: AtomicU64,
}

impl ExportCounters {
    /// The counters as `(name, value)`.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("reads", load(&self.reads)),
            ("writes", load(&self.writes)),
            ("flushes", load(&self.flushes)),
            ("bytes_read", load(&self.bytes_read)),
            ("bytes_written", load(&self.bytes_written)),
            ("io_errors", load(&self.io_errors)),
            ("replies", load(&self.replies)),
            ("duplicates", load(&self.duplicates)),
            ("malformed", load(&self.malformed)),
            ("over_buffer_count", load(&self.over_buffer_count)),
            ("merged", load(&self.merged)),
            ("writes_from_ring", load(&self.writes_from_ring)),
        ]
    }
}

/// One disk exported on one interface: its protocol state, its engine, its buffers.
struct Exported {
    protocol: Export,
    disk: Arc<dyn Disk>,
    engine: Box<dyn Engine>,
    /// Buffers not in use, each big enough for the largest frame's data.
    free: Vec<AlignedBuffer>,
    /// Commands in flight, by token.
    in_flight: Vec<Option<InFlight>>,
    /// Free tokens (indexes of `in_flight`).
    free_tokens: Vec<usize>,
    /// The run of neighbouring transfers taken this round and not yet handed to the engine.
    run: Option<Run>,
    /// The buffers of `run`'s commands, in order, if its data is ours.
    run_parts: Vec<(AlignedBuffer, usize)>,
    /// Where the data of `run`'s commands is in the receive ring, in order, if it is there.
    run_in_ring: RingParts,
    /// Keeps the receive ring mapped for the writes done from it.
    ring_keeper: Arc<dyn Send + Sync>,
    /// The alignment the disk needs of the memory a transfer is done from.
    buffer_alignment: usize,
    counters: Arc<ExportCounters>,
    /// Whether writes must be durable when they complete (the disk's write cache is off:
    /// cache=writethrough or directsync).
    dsync: bool,
}

/// Pieces of frames in the receive ring, which `Exported::ring_keeper` keeps mapped.
#[derive(Default)]
struct RingParts(Vec<libc::iovec>);

// SAFETY: the iovecs are addresses in a mapping that lives as long as the keeper beside them
// in `Exported`; nothing is read through them here, only handed to the engine.
unsafe impl Send for RingParts {}

/// Where a transfer's data is: a buffer of ours, or its frame in the receive ring.
enum Part {
    Ours(AlignedBuffer),
    InRing(libc::iovec),
}

struct InFlight {
    pending: Pending,
    /// The bytes a transfer must move to succeed (0 for a flush).
    len: usize,
    read: bool,
    /// The command done in the same I/O right after this one, by token.
    next: Option<usize>,
    /// The receive-ring slot that holds a write's data, until the write is done.
    slot: Option<HeldSlot>,
}

/// Transfers of neighbouring sectors in one direction, taken in one round: one I/O, whose
/// engine token is its first command's.
struct Run {
    first: usize,
    last: usize,
    direction: Direction,
    offset: u64,
    /// The byte after the run.
    end: u64,
    /// Whether the data is in the receive ring (`run_in_ring`) rather than our buffers.
    in_ring: bool,
}

/// An interface's loop: its socket and ring, the disks exported on it.
pub struct Interface {
    name: String,
    /// Sectors per ATA frame: what the interface's MTU allows.
    max_sectors: u8,
    socket: RawSocket,
    ring: RxRing,
    exports: Vec<Exported>,
    tx: TxBatch,
    /// What the frames queued in `tx` point at, kept until they are sent.
    tx_buffers: Vec<(usize, AlignedBuffer)>,
    tx_owned: Vec<Vec<u8>>,
    completions: Vec<Completion>,
    /// The buffers of one completed I/O, in order.
    done_buffers: Vec<AlignedBuffer>,
    /// The socket and the engines' completion fds; made with the interface, before the
    /// sandbox takes epoll_create away.
    epoll: Epoll,
}

/// Epoll data of the socket and the stop fd; the engines' are their index.
const SOCKET: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;

/// A disk to export and how.
pub struct ExportDisk {
    pub shelf: u16,
    pub slot: u8,
    /// What was named to export (the disk as `serve --disk` would name it).
    pub disk_name: String,
    pub disk: Arc<dyn Disk>,
    pub buffer_count: u16,
    pub counters: Arc<ExportCounters>,
}

impl ExportDisk {
    /// `e<shelf>.<slot>`, as initiators name it.
    pub fn name(&self) -> String {
        format!("e{}.{}", self.shelf, self.slot)
    }
}

/// Why an interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The raw socket (`aoe::AoeError::Socket`, with its hint about CAP_NET_RAW).
    #[error(transparent)]
    Socket(#[from] aoe::AoeError),
    #[error("interface {iface} has an MTU of {mtu}, too small for one 512-byte sector per AoE frame (it needs {need})")]
    MtuTooSmall {
        iface: String,
        mtu: usize,
        need: usize,
    },
    #[error("e{shelf}.{slot}: {source}")]
    Engine {
        shelf: u16,
        slot: u8,
        source: crate::disk::DiskError,
    },
    #[error("cannot allocate the buffers of e{shelf}.{slot}: {source}")]
    Buffers {
        shelf: u16,
        slot: u8,
        source: io::Error,
    },
}

impl Interface {
    /// Opens `iface` for the disks of `exports`; `index` tells the disks' engines apart
    /// (their per-queue counters).
    pub fn open(iface: &str, index: u16, exports: &[ExportDisk]) -> Result<Self, ExportError> {
        let socket_error = |source| {
            ExportError::Socket(aoe::AoeError::Socket {
                iface: iface.to_owned(),
                source,
            })
        };
        let mut socket = RawSocket::open(iface).map_err(socket_error)?;
        socket.send_linear().map_err(socket_error)?;
        socket.accept_only_requests().map_err(socket_error)?;
        let sectors = socket.mtu.saturating_sub(ATA_HEADER_LEN) / SECTOR;
        if sectors == 0 {
            return Err(ExportError::MtuTooSmall {
                iface: iface.to_owned(),
                mtu: socket.mtu,
                need: ATA_HEADER_LEN + SECTOR,
            });
        }
        let max_sectors = u8::try_from(sectors.min(MAX_SECTORS)).expect("at most 255");
        // A slot for every command the disks may hold (a write's is held), and twice as many
        // arriving meanwhile: see the module docs.
        let slots: usize = exports
            .iter()
            .map(|e| 3 * usize::from(e.buffer_count))
            .sum();
        let ring =
            RxRing::attach_aligned(&socket, slots.max(64), ATA_HEADER_LEN).map_err(socket_error)?;
        let mut exported = Vec::with_capacity(exports.len());
        for e in exports {
            let info = e.disk.info();
            let engine_error = |source| ExportError::Engine {
                shelf: e.shelf,
                slot: e.slot,
                source,
            };
            let buffer_len = usize::from(max_sectors) * SECTOR;
            let (free, slab) = AlignedBuffer::slab(buffer_len, usize::from(e.buffer_count))
                .map_err(|source| ExportError::Buffers {
                    shelf: e.shelf,
                    slot: e.slot,
                    source,
                })?;
            let mut engine = e.disk.engine(index, e.buffer_count).map_err(engine_error)?;
            // SAFETY: the regions are the ring's mapping and the buffers' slab, which the
            // keepers keep mapped and allocated.
            let memory = unsafe {
                IoMemory::new(
                    "the receive ring and the buffers",
                    vec![ring.region(), slab.iovec],
                    Arc::new((ring.keeper(), slab.keeper)),
                )
            };
            engine.set_io_memory(&memory);
            let serial = String::from_utf8_lossy(&info.serial).into_owned();
            exported.push(Exported {
                protocol: Export::new(ExportConfig {
                    shelf: e.shelf,
                    slot: e.slot,
                    mac: socket.mac,
                    sectors: info.capacity.bytes() / SECTOR as u64,
                    read_only: info.read_only,
                    buffer_count: e.buffer_count,
                    max_sectors,
                    serial,
                    model: format!("vblkd e{}.{}", e.shelf, e.slot),
                }),
                disk: e.disk.clone(),
                engine,
                free,
                in_flight: (0..e.buffer_count).map(|_| None).collect(),
                free_tokens: (0..usize::from(e.buffer_count)).rev().collect(),
                run: None,
                run_parts: Vec::new(),
                run_in_ring: RingParts::default(),
                ring_keeper: ring.keeper(),
                buffer_alignment: info.buffer_alignment.max(1),
                counters: e.counters.clone(),
                dsync: info.honours_flush && !info.write_cache,
            });
        }
        let epoll = Epoll::new().map_err(socket_error)?;
        let add = |fd: i32, events: EventSet, data: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, data))
        };
        // Edge-triggered: a held slot keeps the socket readable (see `aoe::ring`), and every
        // round takes all the frames there are.
        let frames = EventSet::IN | EventSet::EDGE_TRIGGERED;
        add(socket.as_raw_fd(), frames, SOCKET).map_err(socket_error)?;
        for (i, e) in exported.iter().enumerate() {
            add(e.engine.completion_fd(), EventSet::IN, i as u64).map_err(socket_error)?;
        }
        Ok(Interface {
            epoll,
            name: iface.to_owned(),
            max_sectors,
            socket,
            ring,
            exports: exported,
            tx: TxBatch::default(),
            tx_buffers: Vec::new(),
            tx_owned: Vec::new(),
            completions: Vec::new(),
            done_buffers: Vec::new(),
        })
    }

    /// The interface as the control socket tells it.
    pub fn info(&self) -> InterfaceInfo {
        InterfaceInfo {
            name: self.name.clone(),
            mac: mac_text(&self.socket.mac),
            sectors_per_frame: self.max_sectors,
        }
    }

    /// Serves until `stop` is readable, then finishes the commands in flight and returns.
    pub fn run(mut self, stop: &EventFd) -> io::Result<()> {
        crate::sandbox::enter(crate::sandbox::Role::Queue);
        self.epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        // As vblade does: initiators that listen find the targets without asking.
        for i in 0..self.exports.len() {
            let announcement = self.exports[i].protocol.announcement();
            self.queue_frame(announcement);
        }
        self.send();

        let mut stopping = false;
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let stopping_now = stopping;
            let mut busy = false;
            if !stopping_now {
                busy |= self.take_frames();
            }
            for e in &mut self.exports {
                e.end_run();
                e.engine.submit()?;
            }
            busy |= self.reap()?;
            self.send();
            let in_flight: usize = self
                .exports
                .iter()
                .map(|e| e.in_flight.len() - e.free_tokens.len())
                .sum();
            if stopping_now && in_flight == 0 {
                return Ok(());
            }
            if busy {
                continue;
            }
            for e in &mut self.exports {
                e.engine.arm()?;
            }
            if self.reap()? {
                self.send();
                continue;
            }
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if !stopping_now && events[..n].iter().any(|ev| ev.data() == STOP) {
                log::info!("{}: finishing {in_flight} command(s) in flight", self.name);
                stopping = true;
                // No more frames are taken: waiting frames must not keep waking the loop, nor
                // the stop fd, which stays readable.
                for fd in [self.socket.as_raw_fd(), stop.as_raw_fd()] {
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())?;
                }
            }
        }
    }

    /// Handles every frame waiting in the ring; whether there was any.
    fn take_frames(&mut self) -> bool {
        let mut any = false;
        let mut replies = Vec::new();
        // A resize shows from the next round on.
        for e in &mut self.exports {
            e.protocol
                .set_sectors(e.disk.info().capacity.bytes() / SECTOR as u64);
        }
        while let Some(frame) = self.ring.pop() {
            any = true;
            let mut holder = None;
            for (i, e) in self.exports.iter_mut().enumerate() {
                match e.protocol.handle(&frame) {
                    Action::Ignore => {}
                    Action::Malformed(why) => {
                        bump(&e.counters.malformed, 1);
                        limited!(
                            log::Level::Warn,
                            "{}: dropped a frame from {}: {why}",
                            self.name,
                            mac_text(frame.get(6..12).unwrap_or_default())
                        );
                    }
                    Action::Duplicate => bump(&e.counters.duplicates, 1),
                    Action::Reply(bytes) => {
                        bump(&e.counters.replies, 1);
                        replies.push(bytes);
                    }
                    Action::Io { op, pending } => {
                        if let Some(token) = e.start(op, pending) {
                            holder = Some((i, token));
                        }
                    }
                }
            }
            if let Some((i, token)) = holder {
                let slot = frame.hold();
                if let Some(command) = self.exports[i].in_flight[token].as_mut() {
                    command.slot = Some(slot);
                }
            }
        }
        for bytes in replies {
            self.queue_frame(bytes);
        }
        any
    }

    /// Queues the replies of every command that finished; whether there was any.
    fn reap(&mut self) -> io::Result<bool> {
        let mut any = false;
        for (i, e) in self.exports.iter_mut().enumerate() {
            self.completions.clear();
            e.engine.reap(&mut self.completions)?;
            any |= !self.completions.is_empty();
            for c in self.completions.drain(..) {
                let Ok(first) = usize::try_from(c.token) else {
                    continue;
                };
                let mut command = e.in_flight.get_mut(first).and_then(Option::take);
                if command.is_none() {
                    continue;
                }
                // The I/O's commands in order, each with its buffer: a command succeeded if
                // the bytes moved reach past its own.
                let mut left = *c.result.as_ref().unwrap_or(&0);
                if let Some(data) = c.data {
                    data.take_aligned(&mut self.done_buffers);
                }
                let mut buffers = self.done_buffers.drain(..);
                let mut token = first;
                while let Some(mut done) = command.take() {
                    e.free_tokens.push(token);
                    if let Some(slot) = done.slot.take() {
                        self.ring.release(slot);
                    }
                    let ok = c.result.is_ok() && left >= done.len;
                    left = left.saturating_sub(done.len);
                    if !ok {
                        bump(&e.counters.io_errors, 1);
                        limited!(
                            log::Level::Warn,
                            "{}: e{}.{}: I/O failed: {}",
                            self.name,
                            e.protocol.config().shelf,
                            e.protocol.config().slot,
                            match &c.result {
                                Ok(_) => format!("short transfer, {} bytes not moved", done.len),
                                Err(err) => err.to_string(),
                            }
                        );
                    }
                    let header = e.protocol.complete(done.pending, ok);
                    let data = self.tx.push(header);
                    if let Some(buffer) = buffers.next() {
                        if done.read && ok {
                            data.push(libc::iovec {
                                iov_base: buffer.iovec().iov_base,
                                iov_len: done.len,
                            });
                        }
                        self.tx_buffers.push((i, buffer));
                    }
                    if let Some(next) = done.next {
                        token = next;
                        command = e.in_flight.get_mut(next).and_then(Option::take);
                    }
                }
            }
        }
        Ok(any)
    }

    /// Queues a frame made in full (a config reply, an error): padded to Ethernet's minimum.
    fn queue_frame(&mut self, mut bytes: Vec<u8>) {
        bytes.resize(bytes.len().max(60), 0);
        let mut header = [0u8; ATA_HEADER_LEN];
        header.copy_from_slice(&bytes[..ATA_HEADER_LEN]);
        let rest = &bytes[ATA_HEADER_LEN..];
        let data = self.tx.push(header);
        data.push(libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        });
        // A Vec's heap data does not move when the Vec does.
        self.tx_owned.push(bytes);
    }

    /// Sends every queued frame, and takes back what they pointed at.
    fn send(&mut self) {
        if !self.tx.is_empty() {
            self.socket.send_batch(&mut self.tx);
        }
        for (i, buffer) in self.tx_buffers.drain(..) {
            self.exports[i].free.push(buffer);
        }
        self.tx_owned.clear();
    }
}

impl Exported {
    /// Starts the I/O of a command, if there is a buffer for it: a transfer joins the run of
    /// the round's transfers if it continues it, a flush ends the run and goes on its own.
    /// Returns the command's token if it writes from the frame, whose slot must then be held.
    fn start(&mut self, op: Op<'_>, pending: Pending) -> Option<usize> {
        let in_ring = matches!(op, Op::Write { data, .. }
            if (data.as_ptr() as usize) % self.buffer_alignment == 0);
        let needs_buffer = match op {
            Op::Read { .. } => true,
            Op::Write { .. } => !in_ring,
            Op::Flush => false,
        };
        let token = match self.free_tokens.pop() {
            Some(token) if !needs_buffer || !self.free.is_empty() => token,
            other => {
                self.free_tokens.extend(other);
                bump(&self.counters.over_buffer_count, 1);
                self.protocol.abandon(pending);
                return None;
            }
        };
        let (direction, offset, part, len) = match op {
            Op::Flush => {
                bump(&self.counters.flushes, 1);
                self.end_run();
                self.in_flight[token] = Some(InFlight {
                    pending,
                    len: 0,
                    read: false,
                    next: None,
                    slot: None,
                });
                self.engine.push(token as u64, IoOp::Flush);
                return None;
            }
            Op::Read { offset, len } => {
                let buffer = self.free.pop().expect("checked above");
                bump(&self.counters.reads, 1);
                bump(&self.counters.bytes_read, len as u64);
                (Direction::Read, offset, Part::Ours(buffer), len)
            }
            Op::Write { offset, data } => {
                bump(&self.counters.writes, 1);
                bump(&self.counters.bytes_written, data.len() as u64);
                let direction = Direction::Write { dsync: self.dsync };
                let part = if in_ring {
                    bump(&self.counters.writes_from_ring, 1);
                    Part::InRing(libc::iovec {
                        iov_base: data.as_ptr() as *mut libc::c_void,
                        iov_len: data.len(),
                    })
                } else {
                    let mut buffer = self.free.pop().expect("checked above");
                    buffer.as_mut_slice()[..data.len()].copy_from_slice(data);
                    Part::Ours(buffer)
                };
                (direction, offset, part, data.len())
            }
        };
        self.in_flight[token] = Some(InFlight {
            pending,
            len,
            read: direction == Direction::Read,
            next: None,
            slot: None,
        });
        let continues = self.run.as_ref().is_some_and(|run| {
            run.direction == direction
                && run.end == offset
                && run.in_ring == in_ring
                && self.run_parts.len() + self.run_in_ring.0.len() < MAX_MERGED
        });
        if continues {
            let run = self.run.as_mut().expect("checked above");
            if let Some(last) = self.in_flight[run.last].as_mut() {
                last.next = Some(token);
            }
            run.last = token;
            run.end += len as u64;
            bump(&self.counters.merged, 1);
        } else {
            self.end_run();
            self.run = Some(Run {
                first: token,
                last: token,
                direction,
                offset,
                end: offset + len as u64,
                in_ring,
            });
        }
        match part {
            Part::Ours(buffer) => self.run_parts.push((buffer, len)),
            Part::InRing(iovec) => self.run_in_ring.0.push(iovec),
        }
        in_ring.then_some(token)
    }

    /// Hands the run of transfers to the engine as one I/O.
    fn end_run(&mut self) {
        let Some(run) = self.run.take() else {
            return;
        };
        let data = if run.in_ring {
            // SAFETY: the iovecs lie in frames of the receive ring, whose slots stay held, and
            // so unwritten by the kernel, until this I/O completes; the keeper keeps the ring
            // mapped for as long as the I/O holds these buffers. A write only reads them.
            unsafe {
                DataBuffers::borrowing(
                    self.ring_keeper.clone(),
                    std::mem::take(&mut self.run_in_ring.0),
                )
            }
        } else if self.run_parts.len() == 1 {
            let (buffer, len) = self.run_parts.pop().expect("one part");
            DataBuffers::aligned_prefix(buffer, len)
        } else {
            DataBuffers::aligned_parts(self.run_parts.drain(..))
        };
        let io = IoOp::Transfer {
            direction: run.direction,
            offset: run.offset,
            data,
        };
        self.engine.push(run.first as u64, io);
    }
}

/// A MAC address as `02:00:00:00:00:01`.
pub fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
