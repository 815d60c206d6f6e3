//! `aio=native`: Linux AIO (`io_setup`/`io_submit`/`io_getevents`), one context per queue.
//!
//! This is the design QEMU's native AIO patches and vblade's AIO patch arrived at: a batch of
//! iocbs goes to the kernel in one `io_submit`, and every iocb carries `IOCB_FLAG_RESFD` so the
//! kernel bumps an eventfd when it finishes. That eventfd sits in the worker's epoll beside the
//! vring kick — no signals, no extra thread on the data path.
//!
//! Linux AIO is only asynchronous with `O_DIRECT` (buffered submissions block in
//! `io_submit`), which is why the command line refuses `aio=native` without it. It has no
//! fallocate, and `IOCB_CMD_FDSYNC` exists only where the file system implements it
//! (kernel 4.18 and later); those operations go to a one-thread helper pool that signals the
//! same eventfd.
//!
//! The system calls are made directly: the ABI is four calls and two fixed-layout structs.
//! Completions are read straight from the completion ring the kernel maps into our address
//! space (as QEMU and libaio do), so reaping needs no `io_getevents` call.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::aio::{
    IoControlBlock, IoEvent, IOCB_CMD_FDSYNC, IOCB_CMD_PREAD, IOCB_CMD_PREADV, IOCB_CMD_PWRITE,
    IOCB_CMD_PWRITEV, IOCB_FLAG_RESFD,
};
use vmm_sys_util::eventfd::EventFd;

use super::pending::Pending;
use super::{drain_eventfd, Completion, Direction, Engine, IoOp, ThreadPool};

/// The kernel's `aio_context_t`: also the address of the completion ring it maps for us,
/// which is why the context is not `vmm_sys_util::aio::IoContext` (it keeps the id private).
type AioContext = libc::c_ulong;

/// Header of the completion ring the kernel maps at the context's address (`struct aio_ring`
/// in fs/aio.c); `nr` io_events follow it.
#[repr(C)]
struct AioRing {
    id: u32,
    nr: u32,
    head: AtomicU32,
    tail: AtomicU32,
    magic: u32,
    compat_features: u32,
    incompat_features: u32,
    header_length: u32,
}

const AIO_RING_MAGIC: u32 = 0xa10a_10a1;

/// The Linux AIO engine of one queue.
pub struct AioEngine {
    ctx: AioContext,
    file: Arc<File>,
    eventfd: EventFd,
    /// iocbs of the current batch; the kernel copies them during `io_submit`.
    batch: Vec<IoControlBlock>,
    batch_ptrs: Vec<*mut IoControlBlock>,
    events: Vec<IoEvent>,
    helper: ThreadPool,
    /// Cleared the first time the file system turns `IOCB_CMD_FDSYNC` down.
    fdsync_in_kernel: bool,
    /// Whether the completion ring can be read in userspace (a known layout).
    user_ring: bool,
    /// Every operation in the context, by the user data of its iocb.
    pending: Pending,
}

// SAFETY: the raw pointers in `batch_ptrs` only ever point into `batch`, which moves with the
// engine, and are rebuilt before each use; the AIO context may be used from any thread.
unsafe impl Send for AioEngine {}

impl AioEngine {
    /// An AIO context with room for `capacity` operations on `file`.
    pub fn new(file: Arc<File>, capacity: u16) -> io::Result<Self> {
        let mut ctx: AioContext = 0;
        let nr = libc::c_long::from(capacity.max(1));
        // SAFETY: io_setup writes the new context id into `ctx`, a valid u64.
        if unsafe { libc::syscall(libc::SYS_io_setup, nr, &mut ctx as *mut AioContext) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let eventfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let helper = ThreadPool::new(file.clone(), 1, eventfd.try_clone()?)?;
        let pending = Pending::new(usize::from(capacity.max(1)), eventfd.try_clone()?);
        Ok(AioEngine {
            ctx,
            file,
            eventfd,
            batch: Vec::with_capacity(usize::from(capacity)),
            batch_ptrs: Vec::with_capacity(usize::from(capacity)),
            events: vec![IoEvent::default(); usize::from(capacity.max(1))],
            helper,
            fdsync_in_kernel: true,
            user_ring: false,
            pending,
        }
        .with_user_ring())
    }

    fn with_user_ring(mut self) -> Self {
        // SAFETY: the context id is the address of the kernel's ring mapping, valid until
        // io_destroy; we only read its header here.
        let ring = unsafe { &*(self.ctx as *const AioRing) };
        self.user_ring = ring.magic == AIO_RING_MAGIC
            && ring.incompat_features == 0
            && ring.header_length as usize == std::mem::size_of::<AioRing>();
        self
    }

    /// Takes completions from the mapped ring; false if the ring cannot be used.
    fn reap_user_ring(&mut self, out: &mut Vec<Completion>) -> bool {
        if !self.user_ring {
            return false;
        }
        let base = self.ctx as *const AioRing;
        // SAFETY: checked in `with_user_ring` that the mapping has the expected layout; it
        // stays mapped until io_destroy in Drop.
        let ring = unsafe { &*base };
        let nr = ring.nr;
        let mut head = ring.head.load(Ordering::Relaxed);
        // Pairs with the kernel's barrier before it publishes a new tail.
        let tail = ring.tail.load(Ordering::Acquire);
        // Pointer arithmetic only: the events follow the header in the same mapping.
        let events = base.wrapping_add(1).cast::<IoEvent>();
        while head != tail {
            // SAFETY: `head < nr`, and events[0..nr] follow the header in the mapping.
            let ev = unsafe { std::ptr::read_volatile(events.add(head as usize)) };
            out.extend(self.pending.complete(ev.data, ev.res));
            head = (head + 1) % nr;
        }
        // Hands the slots back to the kernel once we have copied the events out.
        ring.head.store(head, Ordering::Release);
        true
    }

    /// A read or write iocb; a single buffer goes as PREAD/PWRITE, sparing the kernel an
    /// iovec import, as QEMU's linux-aio does. A disabled write cache is `RWF_DSYNC`.
    fn transfer_iocb(
        &self,
        direction: Direction,
        offset: u64,
        iovs: &[libc::iovec],
    ) -> IoControlBlock {
        let write = direction.is_write();
        let (opcode, buf, nbytes) = match iovs {
            [v] if write => (IOCB_CMD_PWRITE, v.iov_base as u64, v.iov_len as u64),
            [v] => (IOCB_CMD_PREAD, v.iov_base as u64, v.iov_len as u64),
            _ if write => (IOCB_CMD_PWRITEV, iovs.as_ptr() as u64, iovs.len() as u64),
            _ => (IOCB_CMD_PREADV, iovs.as_ptr() as u64, iovs.len() as u64),
        };
        IoControlBlock {
            aio_buf: buf,
            aio_nbytes: nbytes,
            aio_offset: super::file_offset(offset),
            aio_reserved1: match direction {
                Direction::Write { dsync: true } => RWF_DSYNC,
                _ => 0,
            },
            ..self.iocb(opcode)
        }
    }

    fn iocb(&self, opcode: u32) -> IoControlBlock {
        IoControlBlock {
            // The opcodes are small constants.
            aio_lio_opcode: u16::try_from(opcode).unwrap_or(u16::MAX),
            // Descriptors are never negative; were one, the kernel would refuse this iocb
            // (EBADF), failing only its request.
            aio_fildes: u32::try_from(self.file.as_raw_fd()).unwrap_or(u32::MAX),
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: u32::try_from(self.eventfd.as_raw_fd()).unwrap_or(u32::MAX),
            ..IoControlBlock::default()
        }
    }

    /// Handles the iocb the kernel refused at index `i` of the batch.
    fn reject(&mut self, i: usize, err: io::Error) {
        let iocb = self.batch[i];
        let fdsync = u32::from(iocb.aio_lio_opcode) == IOCB_CMD_FDSYNC;
        if fdsync && err.raw_os_error() == Some(libc::EINVAL) {
            log::info!(
                "this file system has no asynchronous fdatasync; flushing on a helper thread"
            );
            self.fdsync_in_kernel = false;
            if let Some((token, op)) = self.pending.withdraw(iocb.aio_data) {
                self.helper.push(token, op);
            }
            return;
        }
        self.pending.refuse(iocb.aio_data, err);
    }
}

/// `aio_rw_flags`, which `IoControlBlock` calls `aio_reserved1` (the field predates the
/// flags), takes `RWF_*` as a 32-bit value.
const RWF_DSYNC: u32 = libc::RWF_DSYNC.unsigned_abs();
const _: () = assert!(libc::RWF_DSYNC > 0);

impl Engine for AioEngine {
    fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    fn push(&mut self, token: u64, op: IoOp) {
        let iocb = if let IoOp::Transfer {
            direction,
            offset,
            ref data,
        } = op
        {
            self.transfer_iocb(direction, offset, data.iovecs())
        } else if matches!(op, IoOp::Flush) && self.fdsync_in_kernel {
            self.iocb(IOCB_CMD_FDSYNC)
        } else {
            // Discard and write-zeroes, and a flush where the file system has no asynchronous
            // fdatasync: the helper thread.
            return self.helper.push(token, op);
        };
        // The iocb points at the buffers (or their iovec list's heap allocation), which stay
        // where they are while `pending` holds the operation, until its completion.
        if let Some(user_data) = self.pending.insert(token, op) {
            self.batch.push(IoControlBlock {
                aio_data: user_data,
                ..iocb
            });
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        let mut start = 0;
        while start < self.batch.len() {
            self.batch_ptrs.clear();
            let base = self.batch.as_mut_ptr();
            // SAFETY: every index is below `batch.len()`.
            self.batch_ptrs
                .extend((start..self.batch.len()).map(|i| unsafe { base.add(i) }));
            // SAFETY: `batch_ptrs` holds `len` pointers to initialised iocbs in `batch`, which
            // is neither moved nor resized during the call; their buffers are held in
            // `pending` until the kernel completes them.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.ctx,
                    // Fewer if it did not fit (it does: at most the capacity); the loop
                    // submits the rest.
                    libc::c_long::try_from(self.batch_ptrs.len()).unwrap_or(libc::c_long::MAX),
                    self.batch_ptrs.as_mut_ptr(),
                )
            };
            match usize::try_from(ret) {
                Ok(submitted) => start += submitted,
                Err(_) => {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    // The context is sized to our capacity, so EAGAIN means the kernel is
                    // short of resources; fail the first iocb rather than spin.
                    self.reject(start, err);
                    start += 1;
                }
            }
        }
        self.batch.clear();
        self.helper.submit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.pending.take_refused(out);
        self.helper.reap(out)?;
        if self.reap_user_ring(out) {
            return Ok(());
        }
        loop {
            let mut timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `events` has room for `events.len()` io_events; a zero timeout makes
            // the call non-blocking.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx,
                    0 as libc::c_long,
                    libc::c_long::try_from(self.events.len()).unwrap_or(libc::c_long::MAX),
                    self.events.as_mut_ptr(),
                    &mut timeout as *mut libc::timespec,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            };
            out.extend(
                self.events[..n]
                    .iter()
                    .filter_map(|ev| self.pending.complete(ev.data, ev.res)),
            );
            if n < self.events.len() {
                break;
            }
        }
        Ok(())
    }

    fn arm(&mut self) -> io::Result<()> {
        // The kernel (through IOCB_FLAG_RESFD) and the helper both signal this eventfd.
        drain_eventfd(&self.eventfd)
    }
}

impl Drop for AioEngine {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from io_setup and is destroyed exactly once; io_destroy waits for
        // operations still in flight, so no buffer is written after we return.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
    }
}
