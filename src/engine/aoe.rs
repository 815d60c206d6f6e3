//! The AoE initiator as an I/O engine: glue between the initiator's protocol state
//! ([`aoe::initiator::Initiator`], which turns operations into ATA frames and replies into
//! completions), a raw socket and two timers.
//!
//! Each queue's engine owns its socket, its tag space (the top byte of every tag is the
//! engine's, and a socket filter lets only its replies through, so one queue's traffic never
//! wakes another) and its timers. Socket and timers sit in a small epoll set whose fd is the
//! engine's completion fd, so the queue thread waits on guest kicks, replies and
//! retransmission deadlines in one epoll — no extra thread, no signals (vblade's AIO lesson).
//! The frames a round releases go out in one `sendmmsg`, writes gathered straight from guest
//! memory; replies are read in place from the socket's mapped receive ring ([`aoe::ring`]).
//!
//! While the target has a queue of frames to work through, replies are gathered on a timer
//! instead of waking the thread for each ([`aoe::gather`]): the socket leaves the epoll set,
//! and the engine tells the worker that it wakes [`Wakeup::OnTimer`], so the worker keeps
//! guest kicks off too and looks at the avail ring when the timer fires.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aoe::initiator::{Counters, Initiator, Target};
use aoe::ring::RxRing;
use aoe::socket::RawSocket;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::{Completion, Engine, IoOp, Wakeup};

pub struct AoeEngine {
    socket: RawSocket,
    ring: RxRing,
    epoll: Epoll,
    /// Fires at the next retransmission or request deadline.
    retransmit: Timer,
    /// Fires when replies gathered long enough; while the engine gathers, the socket is left
    /// out of the epoll set.
    gather: Timer,
    initiator: Initiator,
}

const SOCKET_EVENT: u64 = 1;
const RETRANSMIT_EVENT: u64 = 2;
const GATHER_EVENT: u64 = 3;

/// A timerfd and when it is set to fire.
struct Timer {
    fd: TimerFd,
    armed: Option<Instant>,
}

impl Timer {
    fn new() -> io::Result<Self> {
        Ok(Timer {
            fd: TimerFd::new()?,
            armed: None,
        })
    }

    /// Sets the timer to fire at `at`, or disarms it.
    fn set(&mut self, at: Option<Instant>, now: Instant) -> io::Result<()> {
        self.armed = at;
        match at {
            // A zero value would disarm the timer; fire at least a microsecond from now.
            Some(t) => {
                let after = t
                    .saturating_duration_since(now)
                    .max(Duration::from_micros(1));
                self.fd.reset(after, None)?;
            }
            None => self.fd.clear()?,
        }
        Ok(())
    }

    /// If the timer has fired, consumes the expiry (it is level-triggered in the epoll set),
    /// leaves the timer disarmed and says so.
    fn clear_if_fired(&mut self, now: Instant) -> io::Result<bool> {
        if !self.armed.is_some_and(|t| t <= now) {
            return Ok(false);
        }
        // The kernel's timer was set a moment after `armed` was computed, so it may not have
        // fired quite yet; then it is still armed, and the next wake-up takes it. Reading a
        // timer that has fired (and so disarmed itself) does not block.
        if self.fd.is_armed()? {
            return Ok(false);
        }
        self.fd.wait()?;
        self.armed = None;
        Ok(true)
    }
}

impl AoeEngine {
    /// An engine for `target` on `iface` with tag prefix `tag_prefix` and room for
    /// `capacity` requests, counting into `counters`.
    pub fn new(
        iface: &str,
        target: Arc<Target>,
        tag_prefix: u8,
        capacity: u16,
        counters: Arc<Counters>,
    ) -> io::Result<Self> {
        let mut socket = RawSocket::open(iface)?;
        socket.accept_only_tag_prefix(tag_prefix)?;
        socket.send_linear()?;
        // Room for a full window of replies plus strays (duplicates, late answers).
        let ring = RxRing::attach(&socket, usize::from(target.buffer_count.clamp(1, 256)) * 2)?;
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
        let initiator = Initiator::new(target, socket.mac, tag_prefix, capacity, counters);
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
        let was_gathering = self.initiator.is_gathering();
        let delay = self.initiator.gathering_delay();
        if let Some(delay) = delay {
            if self.gather.armed.is_none() {
                let now = Instant::now();
                self.gather.set(Some(now + delay), now)?;
                self.initiator.gathering_started();
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
        let tx = self.initiator.tx();
        if !tx.is_empty() {
            self.socket.send_batch(tx);
        }
        self.arm_retransmit()
    }
}

impl Engine for AoeEngine {
    fn completion_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn wakeup(&self) -> Wakeup {
        if self.initiator.is_gathering() {
            Wakeup::OnTimer
        } else {
            Wakeup::OnCompletion
        }
    }

    fn push(&mut self, token: u64, op: IoOp) {
        self.initiator.push(token, op);
    }

    fn submit(&mut self) -> io::Result<()> {
        self.transmit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let now = Instant::now();
        self.retransmit.clear_if_fired(now)?;
        let period_over = self.gather.clear_if_fired(now)?;
        while let Some(reply) = self.ring.pop() {
            self.initiator.handle_reply(&reply);
        }
        if period_over {
            self.initiator.gathering_ended();
        }
        self.initiator.handle_timeouts(Instant::now());
        self.transmit()?;
        self.choose_wait()?;
        self.initiator.take_done(out);
        Ok(())
    }
}
