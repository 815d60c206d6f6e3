//! The AoE initiator as an I/O engine: virtio requests become ATA frames on a raw socket.
//!
//! Each queue's engine owns its socket, its tag space (the top byte of every tag is the
//! engine's id, and a socket filter lets only that engine's replies through, so one queue's
//! traffic never wakes another) and its timers. Socket and timers sit in a small epoll set
//! whose fd is the engine's completion fd, so the queue thread waits on guest kicks, replies
//! and retransmission deadlines in one epoll — no extra thread, no signals (vblade's AIO
//! lesson).
//!
//! A request is split into frames of at most `sectors_per_frame` sectors. The frames a round
//! releases go out in one `sendmmsg`, writes gathered straight from guest memory; replies are
//! read in place from the socket's mapped receive ring ([`aoe::ring`]) and read data
//! copied into guest memory at its offset. Frames are released as the congestion window
//! allows; a frame that times out is sent again with a fresh tag after a backed-off RTO, and
//! a request still unanswered at its deadline fails with EIO. Only replies that match an
//! outstanding tag, come from the target's MAC and carry its shelf.slot are accepted.
//!
//! While the target has a queue of frames to work through, replies are gathered on a timer
//! instead of waking the thread for each ([`aoe::gather`]); the worker then keeps
//! guest kicks off too and looks at the avail ring when the timer fires
//! ([`Engine::calls_back_soon`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{Completion, DataBuffers, Engine, IoOp};
use crate::iov;
use crate::ratelimit::limited;
use crate::stats::bump;
use aoe::flow::FlowControl;
use aoe::frame::{
    self, AtaArg, Frame, Header, Mac, AFLAG_EXTENDED, AFLAG_WRITE, ATA_FLUSH_CACHE, ATA_HEADER_LEN,
    ATA_READ_EXT, ATA_STATUS_DF, ATA_STATUS_ERR, ATA_WRITE_EXT, CMD_ATA, FLAG_ERROR, FLAG_RESPONSE,
    SECTOR,
};
use aoe::gather::ReplyGathering;
use aoe::ring::RxRing;
use aoe::socket::{RawSocket, TxBatch};

/// What every engine of one AoE disk shares: where the target is and how to talk to it.
#[derive(Debug, Clone)]
pub struct AoeTarget {
    pub iface: String,
    pub mac: Mac,
    pub shelf: u16,
    pub slot: u8,
    pub sectors_per_frame: u8,
    /// Most frames the target can buffer (its config reply's buffer count).
    pub buffer_count: u16,
    pub lba48: bool,
    pub flush: bool,
    /// A request still unanswered after this fails.
    pub deadline: Duration,
}

/// ATA READ/WRITE SECTORS (28-bit) for targets without LBA48.
const ATA_READ: u8 = 0x20;
const ATA_WRITE: u8 = 0x30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
}

/// One frame's worth of a request.
#[derive(Clone, Copy, Debug)]
struct Piece {
    req: usize,
    kind: Kind,
    lba: u64,
    sectors: u8,
    /// Offset of this piece's data within the request's buffers.
    byte_off: usize,
}

struct Sent {
    piece: Piece,
    tag: u32,
    sent_at: Instant,
    retries: u32,
    due: Instant,
}

struct Request {
    token: u64,
    /// The guest's buffers (none for a flush), handed back with the completion.
    data: Option<DataBuffers>,
    len: usize,
    pieces_left: usize,
    error: Option<i32>,
    deadline: Instant,
}

pub struct AoeEngine {
    socket: RawSocket,
    ring: RxRing,
    epoll: Epoll,
    /// Fires at the next retransmission or request deadline.
    retransmit: Timer,
    /// Fires when replies gathered long enough (see [`ReplyGathering`]); while the engine
    /// gathers, the socket is left out of the epoll set.
    gather: Timer,
    initiator: Initiator,
}

/// The protocol state of one engine: requests, their frames, tags, flow control, deadlines.
/// It never makes a system call; frames to send collect in `tx`.
struct Initiator {
    target: Arc<AoeTarget>,
    /// Our own MAC, the source of every frame.
    mac: Mac,
    tag_prefix: u32,
    next_tag: u32,
    requests: Vec<Option<Request>>,
    free: Vec<usize>,
    queued: VecDeque<Piece>,
    outstanding: Vec<Sent>,
    /// Requests in push order; deadlines are push time + a constant, so the oldest live
    /// request has the earliest deadline.
    by_age: VecDeque<(Instant, usize, u64)>,
    flow: FlowControl,
    reply_gathering: ReplyGathering,
    done: Vec<Completion>,
    tx: TxBatch,
    counters: Arc<AoeCounters>,
}

/// What an engine did: the first thing to look at on a lossy network. Written by the engine's
/// own thread only (a load and a store), read by the control socket through the disk, and
/// logged when the engine stops.
#[derive(Debug, Default)]
pub struct AoeCounters {
    frames: AtomicU64,
    retransmitted: AtomicU64,
    gathering_periods: AtomicU64,
}

impl AoeCounters {
    /// `(name, value)` of each counter.
    pub fn values(&self) -> [(&'static str, u64); 3] {
        [
            ("aoe_frames", self.frames.load(Ordering::Relaxed)),
            (
                "aoe_retransmitted",
                self.retransmitted.load(Ordering::Relaxed),
            ),
            (
                "aoe_gathering_periods",
                self.gathering_periods.load(Ordering::Relaxed),
            ),
        ]
    }
}

const SOCKET_EVENT: u64 = 1;
const RETRANSMIT_EVENT: u64 = 2;
const GATHER_EVENT: u64 = 3;

/// A timerfd and when it is set to fire.
struct Timer {
    fd: OwnedFd,
    armed: Option<Instant>,
}

impl Timer {
    fn new() -> io::Result<Self> {
        // SAFETY: plain timerfd_create; the fd is owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd, armed: None })
    }

    /// Sets the timer to fire at `at`, or disarms it.
    fn set(&mut self, at: Option<Instant>, now: Instant) -> io::Result<()> {
        self.armed = at;
        let value = match at {
            // A zero value would disarm the timer; fire at least a microsecond from now.
            Some(t) => t
                .saturating_duration_since(now)
                .max(Duration::from_micros(1)),
            None => Duration::ZERO,
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(value.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: value.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; a null old-value pointer is allowed.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// If the timer has fired, consumes the expiry (it is level-triggered in the epoll set),
    /// leaves the timer disarmed and says so.
    fn clear_if_fired(&mut self, now: Instant) -> bool {
        if !self.armed.is_some_and(|t| t <= now) {
            return false;
        }
        let mut expirations = [0u8; 8];
        // SAFETY: reading 8 bytes into our buffer; EAGAIN (not quite due) is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        self.armed = None;
        true
    }
}

impl AoeEngine {
    /// An engine with tag prefix `id`, opening its own socket on the target's interface.
    /// An engine for `target` using tag prefix `id`, counting into `counters`.
    pub fn new(
        target: Arc<AoeTarget>,
        id: u8,
        capacity: u16,
        counters: Arc<AoeCounters>,
    ) -> io::Result<Self> {
        let mut socket = RawSocket::open(&target.iface)?;
        socket.accept_only_tag_prefix(id)?;
        socket.send_linear()?;
        let max_window = target.buffer_count.clamp(1, 256);
        // Room for a full window of replies plus strays (duplicates, late answers).
        let ring = RxRing::attach(&socket, usize::from(max_window) * 2)?;
        let epoll = Epoll::new()?;
        let retransmit = Timer::new()?;
        let gather = Timer::new()?;
        for (fd, event) in [
            (socket.as_raw_fd(), SOCKET_EVENT),
            (retransmit.fd.as_raw_fd(), RETRANSMIT_EVENT),
            (gather.fd.as_raw_fd(), GATHER_EVENT),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, event),
            )?;
        }
        let initiator = Initiator {
            mac: socket.mac,
            target,
            tag_prefix: u32::from(id) << 24,
            next_tag: 0,
            requests: (0..capacity).map(|_| None).collect(),
            free: (0..usize::from(capacity)).rev().collect(),
            queued: VecDeque::new(),
            outstanding: Vec::new(),
            by_age: VecDeque::new(),
            flow: FlowControl::new(max_window),
            reply_gathering: ReplyGathering::default(),
            done: Vec::new(),
            tx: TxBatch::default(),
            counters,
        };
        Ok(AoeEngine {
            socket,
            ring,
            epoll,
            retransmit,
            gather,
            initiator,
        })
    }

    /// Makes sure the timer fires by the next retransmission or deadline. It may fire early
    /// (then reap re-arms it); re-arming only when the next event moved earlier keeps the
    /// common path free of system calls.
    fn arm_retransmit(&mut self) -> io::Result<()> {
        let next = self.initiator.next_event();
        let now = Instant::now();
        match (next, self.retransmit.armed) {
            (Some(next), Some(armed)) if armed <= next && armed > now => Ok(()),
            (None, None) => Ok(()),
            _ => self.retransmit.set(next, now),
        }
    }

    /// Decides how the engine waits for the next replies: woken by each one, or by the
    /// gather timer with the socket out of the epoll set meanwhile.
    fn choose_wait(&mut self) -> io::Result<()> {
        let initiator = &mut self.initiator;
        let was_gathering = initiator.reply_gathering.is_active();
        let outstanding = initiator.outstanding.len();
        let delay = initiator.reply_gathering.decide(
            outstanding,
            initiator.queued.len(),
            initiator.flow.window(),
        );
        if let Some(delay) = delay {
            if self.gather.armed.is_none() {
                let now = Instant::now();
                self.gather.set(Some(now + delay), now)?;
                initiator.reply_gathering.period_started(outstanding);
            }
        }
        // A gather timer still running after we stop gathering fires once more, harmlessly.
        if delay.is_some() != was_gathering {
            let events = if delay.is_some() {
                EventSet::empty()
            } else {
                EventSet::IN
            };
            self.epoll.ctl(
                ControlOperation::Modify,
                self.socket.as_raw_fd(),
                EpollEvent::new(events, SOCKET_EVENT),
            )?;
        }
        Ok(())
    }

    /// Sends what this round queued and sets the timer for what is now outstanding. Must
    /// run before completions are handed out: queued write frames point at guest memory.
    fn transmit(&mut self) -> io::Result<()> {
        self.initiator.fill_window();
        if !self.initiator.tx.is_empty() {
            self.socket.send_batch(&mut self.initiator.tx);
        }
        self.arm_retransmit()
    }
}

impl Initiator {
    fn fresh_tag(&mut self) -> u32 {
        self.next_tag = (self.next_tag + 1) & 0x00ff_ffff;
        self.tag_prefix | self.next_tag
    }

    fn complete_now(&mut self, token: u64, result: io::Result<usize>, data: Option<DataBuffers>) {
        self.done.push(Completion {
            token,
            result,
            data,
        });
    }

    /// Queues `piece` for sending with a fresh tag.
    fn transmit(&mut self, piece: Piece, retries: u32) {
        bump(&self.counters.frames, 1);
        if retries > 0 {
            bump(&self.counters.retransmitted, 1);
        }
        let tag = self.fresh_tag();
        let t = &*self.target;
        let header = Header {
            dst: t.mac,
            src: self.mac,
            flags: 0,
            error: 0,
            shelf: t.shelf,
            slot: t.slot,
            command: CMD_ATA,
            tag,
        };
        let (ext, read_cmd, write_cmd) = if t.lba48 {
            (AFLAG_EXTENDED, ATA_READ_EXT, ATA_WRITE_EXT)
        } else {
            (0, ATA_READ, ATA_WRITE)
        };
        let arg = match piece.kind {
            Kind::Read => AtaArg {
                aflags: ext,
                sector_count: piece.sectors,
                cmd_status: read_cmd,
                lba: piece.lba,
                ..AtaArg::default()
            },
            Kind::Write => AtaArg {
                aflags: ext | AFLAG_WRITE,
                sector_count: piece.sectors,
                cmd_status: write_cmd,
                lba: piece.lba,
                ..AtaArg::default()
            },
            Kind::Flush => AtaArg {
                cmd_status: ATA_FLUSH_CACHE,
                ..AtaArg::default()
            },
        };
        let mut head = [0u8; ATA_HEADER_LEN];
        frame::encode_ata(&mut head, &header, &arg);
        let data = self.tx.push(head);
        if piece.kind == Kind::Write {
            // The frame points at the request's buffers, which it holds until its completion;
            // the engine sends the batch before it hands out any completion.
            let req = self.requests[piece.req].as_ref().expect("live request");
            iov::subrange(
                req.data.as_ref().map_or(&[], DataBuffers::iovecs),
                piece.byte_off,
                usize::from(piece.sectors) * SECTOR,
                data,
            );
        }
        let now = Instant::now();
        self.outstanding.push(Sent {
            piece,
            tag,
            sent_at: now,
            retries,
            due: now + self.flow.rto(retries),
        });
    }

    /// Sends queued pieces while the window has room.
    fn fill_window(&mut self) {
        while self.outstanding.len() < self.flow.window() {
            let Some(piece) = self.queued.pop_front() else {
                break;
            };
            if self.requests[piece.req]
                .as_ref()
                .is_some_and(|r| r.error.is_none())
            {
                self.transmit(piece, 0);
            }
        }
    }

    /// One piece of request `req` is done (or failed with `error`).
    fn piece_done(&mut self, req: usize, error: Option<i32>) {
        let Some(r) = self.requests[req].as_mut() else {
            return;
        };
        r.pieces_left -= 1;
        if r.error.is_none() {
            r.error = error;
        }
        if r.pieces_left == 0 || r.error.is_some() {
            self.finish(req);
        }
    }

    /// Completes request `req` and forgets its other pieces: late replies to them find no tag.
    fn finish(&mut self, req: usize) {
        let Some(r) = self.requests[req].take() else {
            return;
        };
        self.outstanding.retain(|s| s.piece.req != req);
        self.queued.retain(|p| p.req != req);
        self.free.push(req);
        let result = match r.error {
            None => Ok(r.len),
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        };
        self.done.push(Completion {
            token: r.token,
            result,
            data: r.data,
        });
    }

    fn handle_reply(&mut self, reply: &[u8]) {
        let t = &*self.target;
        let Ok(Frame::Ata { header, arg, data }) = frame::parse(reply) else {
            return;
        };
        if header.flags & FLAG_RESPONSE == 0
            || header.src != t.mac
            || header.shelf != t.shelf
            || header.slot != t.slot
        {
            return;
        }
        let Some(i) = self.outstanding.iter().position(|s| s.tag == header.tag) else {
            return; // a duplicate, a reply to a frame sent again, or not ours
        };
        let sent = self.outstanding.swap_remove(i);
        let rtt = (sent.retries == 0).then(|| sent.sent_at.elapsed());
        self.flow.on_reply(rtt);
        let piece = sent.piece;
        let failed = header.flags & FLAG_ERROR != 0
            || arg.cmd_status & (ATA_STATUS_ERR | ATA_STATUS_DF) != 0;
        let mut error = failed.then_some(libc::EIO);
        if error.is_none() && piece.kind == Kind::Read {
            let len = usize::from(piece.sectors) * SECTOR;
            match (data.get(..len), self.requests[piece.req].as_ref()) {
                (Some(bytes), Some(req)) => {
                    let iovs = req.data.as_ref().map_or(&[][..], DataBuffers::iovecs);
                    // SAFETY: the request holds its buffers (`DataBuffers`) until it completes.
                    unsafe { iov::copy_to(iovs, piece.byte_off, bytes) };
                }
                (None, _) => error = Some(libc::EIO),
                (_, None) => {}
            }
        }
        self.piece_done(piece.req, error);
    }

    /// The oldest request still live (finished ones are dropped from the front lazily).
    fn oldest(&mut self) -> Option<(Instant, usize)> {
        while let Some(&(deadline, req, token)) = self.by_age.front() {
            if self.requests[req]
                .as_ref()
                .is_some_and(|r| r.token == token && r.deadline == deadline)
            {
                return Some((deadline, req));
            }
            self.by_age.pop_front();
        }
        None
    }

    /// Retransmits frames whose RTO passed and fails requests whose deadline passed.
    fn handle_timeouts(&mut self) {
        let now = Instant::now();
        while let Some((deadline, req)) = self.oldest() {
            if deadline > now {
                break;
            }
            if let Some(r) = self.requests[req].as_mut() {
                r.error.get_or_insert(libc::EIO);
            }
            limited!(
                log::Level::Warn,
                "AoE request timed out after {:?}; failing it",
                self.target.deadline
            );
            self.finish(req);
        }
        let mut lost = false;
        let mut i = 0;
        while i < self.outstanding.len() {
            if self.outstanding[i].due <= now {
                let sent = self.outstanding.swap_remove(i);
                lost = true;
                self.transmit(sent.piece, sent.retries + 1);
            } else {
                i += 1;
            }
        }
        if lost {
            self.flow.on_timeout();
        }
    }

    /// Takes a request apart into frame-sized pieces, queued for sending.
    fn push(&mut self, token: u64, op: IoOp) {
        let (kind, offset) = match op {
            IoOp::Read { offset, .. } => (Kind::Read, offset),
            IoOp::Write { offset, .. } => (Kind::Write, offset),
            IoOp::Flush if self.target.flush => (Kind::Flush, 0),
            IoOp::Flush => return self.complete_now(token, Ok(0), None),
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => {
                let unsupported = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
                return self.complete_now(token, Err(unsupported), None);
            }
        };
        let data = op.into_data();
        let len = data.as_ref().map_or(0, DataBuffers::len);
        let Some(req) = self.free.pop() else {
            // The worker never has more requests in flight than our capacity.
            let busy = io::Error::from_raw_os_error(libc::EBUSY);
            return self.complete_now(token, Err(busy), data);
        };
        let per_frame = usize::from(self.target.sectors_per_frame);
        let sectors = len / SECTOR;
        let pieces = if kind == Kind::Flush {
            1
        } else {
            sectors.div_ceil(per_frame)
        };
        let deadline = Instant::now() + self.target.deadline;
        self.requests[req] = Some(Request {
            token,
            data,
            len,
            pieces_left: pieces,
            error: None,
            deadline,
        });
        self.by_age.push_back((deadline, req, token));
        if kind == Kind::Flush {
            self.queued.push_back(Piece {
                req,
                kind,
                lba: 0,
                sectors: 0,
                byte_off: 0,
            });
            return;
        }
        let first = offset / SECTOR as u64;
        for p in 0..pieces {
            let start = p * per_frame;
            self.queued.push_back(Piece {
                req,
                kind,
                lba: first + start as u64,
                sectors: u8::try_from(sectors - start)
                    .map_or(self.target.sectors_per_frame, |rest| {
                        rest.min(self.target.sectors_per_frame)
                    }),
                byte_off: start * SECTOR,
            });
        }
    }

    /// When the timer must fire next: the earliest retransmission or request deadline.
    fn next_event(&mut self) -> Option<Instant> {
        let oldest = self.oldest().map(|(deadline, _)| deadline);
        self.outstanding.iter().map(|s| s.due).chain(oldest).min()
    }
}

impl Drop for AoeEngine {
    fn drop(&mut self) {
        let [(_, frames), (_, retransmitted), (_, gathering_periods)] =
            self.initiator.counters.values();
        log::info!(
            "AoE engine {}: sent {frames} frames, {retransmitted} of them again after a timeout; \
             gathered replies in {gathering_periods} periods",
            self.initiator.tag_prefix >> 24
        );
    }
}

impl Engine for AoeEngine {
    fn completion_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn calls_back_soon(&self) -> bool {
        self.initiator.reply_gathering.is_active()
    }

    fn push(&mut self, token: u64, op: IoOp) {
        self.initiator.push(token, op);
    }

    fn submit(&mut self) -> io::Result<()> {
        self.transmit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let now = Instant::now();
        self.retransmit.clear_if_fired(now);
        let period_over = self.gather.clear_if_fired(now);
        while let Some(reply) = self.ring.pop() {
            self.initiator.handle_reply(&reply);
            self.initiator.reply_gathering.replied();
        }
        if period_over {
            self.initiator.reply_gathering.period_ended();
            bump(&self.initiator.counters.gathering_periods, 1);
        }
        self.initiator.handle_timeouts();
        self.transmit()?;
        self.choose_wait()?;
        out.append(&mut self.initiator.done);
        Ok(())
    }
}

/// The initiator's protocol logic driven by synthetic reply frames: no socket, no root, no
/// vblade.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::AlignedBuffer;
    use aoe::frame::{self, Frame};

    const OURS: Mac = [2, 0, 0, 0, 0, 1];
    const THEIRS: Mac = [2, 0, 0, 0, 0, 2];

    fn initiator(sectors_per_frame: u8, buffer_count: u16, deadline: Duration) -> Initiator {
        let target = AoeTarget {
            iface: "test0".into(),
            mac: THEIRS,
            shelf: 1,
            slot: 2,
            sectors_per_frame,
            buffer_count,
            lba48: true,
            flush: true,
            deadline,
        };
        Initiator {
            target: Arc::new(target),
            mac: OURS,
            tag_prefix: 0x0700_0000,
            next_tag: 0,
            requests: (0..8).map(|_| None).collect(),
            free: (0..8).rev().collect(),
            queued: VecDeque::new(),
            outstanding: Vec::new(),
            by_age: VecDeque::new(),
            flow: FlowControl::new(buffer_count),
            reply_gathering: ReplyGathering::default(),
            done: Vec::new(),
            tx: TxBatch::default(),
            counters: Arc::default(),
        }
    }

    /// A disk whose every byte says where it is (the low byte of a sector-dependent offset).
    fn disk_byte(at: usize) -> u8 {
        (at / 512 * 7 + at % 512).to_le_bytes()[0]
    }

    fn parse_request(head: &[u8; ATA_HEADER_LEN]) -> (Header, AtaArg) {
        match frame::parse(head).unwrap() {
            Frame::Ata { header, arg, .. } => (header, arg),
            other => panic!("not an ATA frame: {other:?}"),
        }
    }

    /// The target's answer to the request `head`: `status` and `flags` as given, the disk's
    /// bytes for a read.
    fn answer(head: &[u8; ATA_HEADER_LEN], status: u8, flags: u8) -> Vec<u8> {
        let (header, arg) = parse_request(head);
        let reply = Header {
            dst: header.src,
            src: header.dst,
            flags: FLAG_RESPONSE | flags,
            ..header
        };
        let mut frame = [0u8; ATA_HEADER_LEN];
        frame::encode_ata(
            &mut frame,
            &reply,
            &AtaArg {
                cmd_status: status,
                ..arg
            },
        );
        let mut frame = frame.to_vec();
        if arg.aflags & AFLAG_WRITE == 0 && arg.cmd_status != ATA_FLUSH_CACHE {
            let start = usize::try_from(arg.lba).unwrap() * SECTOR;
            let len = usize::from(arg.sector_count) * SECTOR;
            frame.extend((start..start + len).map(disk_byte));
        }
        frame
    }

    /// Pushes a read of `len` bytes at `sector` under `token`, into a buffer of its own that
    /// comes back with the completion.
    fn push_read(ini: &mut Initiator, token: u64, sector: u64, len: usize) {
        let op = IoOp::Read {
            offset: sector * SECTOR as u64,
            data: DataBuffers::aligned(AlignedBuffer::new(len).unwrap()),
        };
        ini.push(token, op);
    }

    /// The bytes a completed read brought back.
    fn read_back(done: Completion) -> Vec<u8> {
        let buffer = done.data.and_then(DataBuffers::into_aligned);
        buffer
            .expect("a read's buffer comes back")
            .as_slice()
            .to_vec()
    }

    #[test]
    fn a_read_is_split_into_frames_paced_by_the_window_and_reassembled() {
        let mut ini = initiator(2, 8, Duration::from_secs(60));
        push_read(&mut ini, 1, 8, 4096);
        let mut per_round = Vec::new();
        while ini.done.is_empty() {
            ini.fill_window();
            let frames = ini.tx.take_frames();
            per_round.push(frames.len());
            for (head, _) in frames {
                ini.handle_reply(&answer(&head, 0x40, 0));
            }
        }
        // Slow start: one frame, then two, then the last one of four.
        assert_eq!(per_round, [1, 2, 1]);
        let done = ini.done.pop().unwrap();
        assert_eq!((done.token, done.result.as_ref().unwrap()), (1, &4096));
        assert!(read_back(done)
            .iter()
            .enumerate()
            .all(|(i, &b)| b == disk_byte(8 * 512 + i)));
    }

    #[test]
    fn a_write_carries_the_guest_data_in_its_frames() {
        let mut ini = initiator(2, 8, Duration::from_secs(60));
        let data: Vec<u8> = (0..=255).cycle().step_by(3).take(2048).collect();
        let mut buffer = AlignedBuffer::new(data.len()).unwrap();
        buffer.as_mut_slice().copy_from_slice(&data);
        let op = IoOp::Write {
            offset: 0,
            data: DataBuffers::aligned(buffer),
            dsync: false,
        };
        ini.push(5, op);
        let mut sent = Vec::new();
        while ini.done.is_empty() {
            ini.fill_window();
            for (head, payload) in ini.tx.take_frames() {
                let (_, arg) = parse_request(&head);
                assert_ne!(arg.aflags & AFLAG_WRITE, 0);
                sent.push((arg.lba, payload));
                ini.handle_reply(&answer(&head, 0x40, 0));
            }
        }
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], (0, data[..1024].to_vec()));
        assert_eq!(sent[1], (2, data[1024..].to_vec()));
        assert_eq!(ini.done.pop().unwrap().result.unwrap(), 2048);
    }

    #[test]
    fn an_error_reply_fails_only_its_request() {
        let mut ini = initiator(2, 8, Duration::from_secs(60));
        push_read(&mut ini, 0, 0, 512);
        push_read(&mut ini, 1, 1, 512);
        ini.fill_window();
        let (first, _) = ini.tx.take_frames().remove(0);
        ini.handle_reply(&answer(&first, ATA_STATUS_ERR, 0));
        ini.fill_window();
        let (second, _) = ini.tx.take_frames().remove(0);
        ini.handle_reply(&answer(&second, 0x40, 0));
        let results: Vec<_> = ini
            .done
            .drain(..)
            .map(|c| (c.token, c.result.map_err(|e| e.raw_os_error())))
            .collect();
        assert_eq!(results, [(0, Err(Some(libc::EIO))), (1, Ok(512))]);
    }

    #[test]
    fn replies_that_are_not_ours_or_come_twice_are_ignored() {
        let mut ini = initiator(2, 8, Duration::from_secs(60));
        push_read(&mut ini, 9, 3, 512);
        ini.fill_window();
        let (head, _) = ini.tx.take_frames().remove(0);
        let good = answer(&head, 0x40, 0);
        let mut from_elsewhere = good.clone();
        from_elsewhere[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        let mut other_slot = good.clone();
        other_slot[18] = 3;
        let mut unknown_tag = good.clone();
        unknown_tag[21] ^= 0x55;
        let mut not_a_reply = good.clone();
        not_a_reply[14] &= !FLAG_RESPONSE;
        for stray in [&from_elsewhere, &other_slot, &unknown_tag, &not_a_reply] {
            ini.handle_reply(stray);
        }
        assert!(ini.done.is_empty());
        ini.handle_reply(&good);
        ini.handle_reply(&good);
        assert_eq!(ini.done.len(), 1);
        assert_eq!(ini.done[0].result.as_ref().unwrap(), &512);
    }

    #[test]
    fn a_lost_frame_is_sent_again_under_a_new_tag_and_the_old_one_is_forgotten() {
        let mut ini = initiator(2, 8, Duration::from_secs(60));
        push_read(&mut ini, 4, 0, 512);
        ini.fill_window();
        let (lost, _) = ini.tx.take_frames().remove(0);
        // Its retransmission timeout passes.
        ini.outstanding[0].due = Instant::now() - Duration::from_millis(1);
        ini.handle_timeouts();
        let (again, _) = ini.tx.take_frames().remove(0);
        let (lost_header, _) = parse_request(&lost);
        let (again_header, again_arg) = parse_request(&again);
        assert_ne!(lost_header.tag, again_header.tag);
        assert_eq!(again_arg.lba, 0);
        assert_eq!(ini.counters.values()[1], ("aoe_retransmitted", 1));
        // The first frame's answer arrives late: no longer ours.
        ini.handle_reply(&answer(&lost, 0x40, 0));
        assert!(ini.done.is_empty());
        ini.handle_reply(&answer(&again, 0x40, 0));
        assert_eq!(ini.done.pop().unwrap().result.unwrap(), 512);
    }

    #[test]
    fn a_request_unanswered_past_its_deadline_fails_and_its_frames_are_dropped() {
        let mut ini = initiator(2, 8, Duration::ZERO);
        push_read(&mut ini, 6, 0, 1024);
        ini.fill_window();
        let (head, _) = ini.tx.take_frames().remove(0);
        ini.handle_timeouts();
        let done = ini.done.pop().unwrap();
        assert_eq!(done.result.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(ini.outstanding.is_empty() && ini.queued.is_empty());
        // Its answer, arriving after all, completes nothing twice.
        ini.handle_reply(&answer(&head, 0x40, 0));
        assert!(ini.done.is_empty());
    }
}
