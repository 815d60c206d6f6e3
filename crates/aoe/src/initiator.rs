//! The initiator's protocol state, without any I/O: requests taken apart into frames, tags,
//! flow control, retransmission and deadlines, and reassembly of the replies.
//!
//! An [`Initiator`] takes operations ([`diskio::IoOp`]) and hands back their completions; in
//! between it says which frames to send (into a [`TxBatch`]), is given the replies that
//! arrive and the passing of time, and says when it next needs to be woken. It never makes a
//! system call, so it is tested with synthetic frames, and whatever drives it — vblkd's AoE
//! engine, on a raw socket and timers in one epoll set — is glue.
//!
//! A request is split into frames of at most `sectors_per_frame` sectors. Frames are released
//! as the congestion window allows ([`FlowControl`]); a frame that times out is sent again
//! with a fresh tag after a backed-off RTO, and a request still unanswered at its deadline
//! fails with EIO. Only replies that match an outstanding tag, come from the target's MAC and
//! carry its shelf.slot are accepted. Read data is copied into the request's buffers at its
//! offset; write frames point straight at them.
//!
//! The top byte of every tag is the initiator's prefix, so that several initiators (one per
//! queue) share a target, each seeing only its own replies (a socket filter can select on it,
//! [`crate::socket::RawSocket::accept_only_tag_prefix`]).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diskio::{iov, Completion, DataBuffers, Direction, IoOp};

use crate::flow::FlowControl;
use crate::frame::{
    self, AtaArg, Frame, Header, Mac, AFLAG_EXTENDED, AFLAG_WRITE, ATA_FLUSH_CACHE, ATA_HEADER_LEN,
    ATA_READ_EXT, ATA_STATUS_DF, ATA_STATUS_ERR, ATA_WRITE_EXT, CMD_ATA, FLAG_ERROR, FLAG_RESPONSE,
    SECTOR,
};
use crate::gather::ReplyGathering;
use crate::socket::TxBatch;

/// What an initiator needs to know of its target (discovery finds it out).
#[derive(Debug, Clone)]
pub struct Target {
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

/// What one frame asks of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Transfer(Direction),
    Flush,
}

/// One frame's worth of a request.
#[derive(Clone, Copy, Debug)]
struct Piece {
    req: usize,
    command: Command,
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
    /// The request's buffers (none for a flush), handed back with the completion.
    data: Option<DataBuffers>,
    len: usize,
    pieces_left: usize,
    error: Option<i32>,
    deadline: Instant,
}

/// What initiators have done: the first thing to look at on a lossy network. An initiator
/// only adds to them, and one initiator at a time may count into a set (a load and a store,
/// no locked read-modify-write per frame); anyone may read them. A set outlives the
/// initiators that count into it: vblkd keeps one per queue, across connections.
#[derive(Debug, Default)]
pub struct Counters {
    frames: AtomicU64,
    retransmitted: AtomicU64,
    gathering_periods: AtomicU64,
}

impl Counters {
    /// `(name, value)` of each counter.
    pub fn values(&self) -> [(&'static str, u64); 3] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("aoe_frames", get(&self.frames)),
            ("aoe_retransmitted", get(&self.retransmitted)),
            ("aoe_gathering_periods", get(&self.gathering_periods)),
        ]
    }

    fn bump(counter: &AtomicU64) {
        counter.store(
            counter.load(Ordering::Relaxed).saturating_add(1),
            Ordering::Relaxed,
        );
    }
}

/// The protocol state of one initiator; see the module documentation.
pub struct Initiator {
    target: Arc<Target>,
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
    counters: Arc<Counters>,
}

impl Initiator {
    /// An initiator of `target` sending from `mac`, with tags starting with `tag_prefix`, room
    /// for `capacity` requests, counting into `counters`.
    pub fn new(
        target: Arc<Target>,
        mac: Mac,
        tag_prefix: u8,
        capacity: u16,
        counters: Arc<Counters>,
    ) -> Self {
        Initiator {
            flow: FlowControl::new(target.buffer_count.clamp(1, 256)),
            target,
            mac,
            tag_prefix: u32::from(tag_prefix) << 24,
            next_tag: 0,
            requests: (0..capacity).map(|_| None).collect(),
            free: (0..usize::from(capacity)).rev().collect(),
            queued: VecDeque::new(),
            outstanding: Vec::new(),
            by_age: VecDeque::new(),
            reply_gathering: ReplyGathering::default(),
            done: Vec::new(),
            tx: TxBatch::default(),
            counters,
        }
    }

    /// The frames to send now: after [`Initiator::fill_window`] or
    /// [`Initiator::handle_timeouts`]. They point at requests' buffers, so they must be sent
    /// before [`Initiator::take_done`] hands those back.
    pub fn tx(&mut self) -> &mut TxBatch {
        &mut self.tx
    }

    /// Hands out every finished request.
    pub fn take_done(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    /// Whether to let replies gather instead of waking for each, and for how long (see
    /// [`crate::gather`]); `None` to wake for each reply.
    pub fn gathering_delay(&mut self) -> Option<Duration> {
        self.reply_gathering.decide(
            self.outstanding.len(),
            self.queued.len(),
            self.flow.window(),
        )
    }

    /// Whether replies are being gathered now (the last [`Initiator::gathering_delay`] said
    /// so).
    pub fn is_gathering(&self) -> bool {
        self.reply_gathering.is_active()
    }

    /// A gathering period of `delay` begins now.
    pub fn gathering_started(&mut self) {
        self.reply_gathering.period_started(self.outstanding.len());
    }

    /// The gathering period is over.
    pub fn gathering_ended(&mut self) {
        self.reply_gathering.period_ended();
        Counters::bump(&self.counters.gathering_periods);
    }

    fn fresh_tag(&mut self) -> u32 {
        self.next_tag = (self.next_tag + 1) & 0x00ff_ffff;
        self.tag_prefix | self.next_tag
    }

    fn complete_now(&mut self, token: u64, op: IoOp, result: io::Result<usize>) {
        self.done.push(Completion::new(token, op, result));
    }

    /// Queues `piece` for sending with a fresh tag.
    fn transmit(&mut self, piece: Piece, retries: u32) {
        Counters::bump(&self.counters.frames);
        if retries > 0 {
            Counters::bump(&self.counters.retransmitted);
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
        let arg = match piece.command {
            Command::Transfer(Direction::Read) => AtaArg {
                aflags: ext,
                sector_count: piece.sectors,
                cmd_status: read_cmd,
                lba: piece.lba,
                ..AtaArg::default()
            },
            Command::Transfer(Direction::Write { .. }) => AtaArg {
                aflags: ext | AFLAG_WRITE,
                sector_count: piece.sectors,
                cmd_status: write_cmd,
                lba: piece.lba,
                ..AtaArg::default()
            },
            Command::Flush => AtaArg {
                cmd_status: ATA_FLUSH_CACHE,
                ..AtaArg::default()
            },
        };
        let mut head = [0u8; ATA_HEADER_LEN];
        frame::encode_ata(&mut head, &header, &arg);
        let data = self.tx.push(head);
        if matches!(piece.command, Command::Transfer(Direction::Write { .. })) {
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

    /// Queues frames for the pieces waiting, while the window has room.
    pub fn fill_window(&mut self) {
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

    /// Takes a frame that arrived: a reply to one of our frames, or something to ignore.
    pub fn handle_reply(&mut self, reply: &[u8]) {
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
        if error.is_none() && piece.command == Command::Transfer(Direction::Read) {
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
        self.reply_gathering.replied();
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

    /// Retransmits frames whose RTO passed and fails requests whose deadline passed, as of
    /// `now`.
    pub fn handle_timeouts(&mut self, now: Instant) {
        while let Some((deadline, req)) = self.oldest() {
            if deadline > now {
                break;
            }
            if let Some(r) = self.requests[req].as_mut() {
                r.error.get_or_insert(libc::EIO);
            }
            log::warn!(
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

    /// Takes a request apart into frame-sized pieces, queued for sending (by the next
    /// [`Initiator::fill_window`]).
    pub fn push(&mut self, token: u64, op: IoOp) {
        let (command, offset) = match op {
            IoOp::Transfer {
                direction, offset, ..
            } => (Command::Transfer(direction), offset),
            IoOp::Flush if self.target.flush => (Command::Flush, 0),
            IoOp::Flush => return self.complete_now(token, op, Ok(0)),
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => {
                let unsupported = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
                return self.complete_now(token, op, Err(unsupported));
            }
        };
        let Some(req) = self.free.pop() else {
            // Whoever pushes never has more requests in flight than our capacity.
            let busy = io::Error::from_raw_os_error(libc::EBUSY);
            return self.complete_now(token, op, Err(busy));
        };
        let data = op.into_data();
        let len = data.as_ref().map_or(0, DataBuffers::len);
        let per_frame = usize::from(self.target.sectors_per_frame);
        let sectors = len / SECTOR;
        let pieces = if command == Command::Flush {
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
        if command == Command::Flush {
            self.queued.push_back(Piece {
                req,
                command,
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
                command,
                lba: first + start as u64,
                sectors: u8::try_from(sectors - start)
                    .map_or(self.target.sectors_per_frame, |rest| {
                        rest.min(self.target.sectors_per_frame)
                    }),
                byte_off: start * SECTOR,
            });
        }
    }

    /// When to be woken next, whatever arrives: the earliest retransmission or request
    /// deadline.
    pub fn next_event(&mut self) -> Option<Instant> {
        let oldest = self.oldest().map(|(deadline, _)| deadline);
        self.outstanding.iter().map(|s| s.due).chain(oldest).min()
    }
}

/// The initiator driven by synthetic reply frames: no socket, no root, no target.
#[cfg(test)]
mod tests {
    use super::*;
    use diskio::AlignedBuffer;

    const OURS: Mac = [2, 0, 0, 0, 0, 1];
    const THEIRS: Mac = [2, 0, 0, 0, 0, 2];

    fn initiator(sectors_per_frame: u8, buffer_count: u16, deadline: Duration) -> Initiator {
        let target = Target {
            mac: THEIRS,
            shelf: 1,
            slot: 2,
            sectors_per_frame,
            buffer_count,
            lba48: true,
            flush: true,
            deadline,
        };
        Initiator::new(Arc::new(target), OURS, 7, 8, Arc::default())
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
        let op = IoOp::Transfer {
            direction: Direction::Read,
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
        let op = IoOp::Transfer {
            direction: Direction::Write { dsync: false },
            offset: 0,
            data: DataBuffers::aligned(buffer),
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
        ini.handle_timeouts(Instant::now());
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
        ini.handle_timeouts(Instant::now());
        let done = ini.done.pop().unwrap();
        assert_eq!(done.result.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(ini.outstanding.is_empty() && ini.queued.is_empty());
        // Its answer, arriving after all, completes nothing twice.
        ini.handle_reply(&answer(&head, 0x40, 0));
        assert!(ini.done.is_empty());
    }
}
