//! `aio=io_uring`: one ring per queue worker.
//!
//! Reads, writes and flushes go through the ring: a batch is queued as submission entries and
//! handed over with one `io_uring_enter`. The ring's completions are announced on
//! an eventfd registered with the ring, so the worker sleeps in epoll on the vring kick and the
//! ring at once. The disk's fd is registered with the ring (fixed file), which spares the kernel
//! a file-table lookup per request.
//!
//! With `--fixed-buffers MAX` and O_DIRECT, guest memory is registered with the ring as fixed
//! buffers (split at the kernel's 1 GiB per-buffer limit, re-registered when the frontend
//! changes the memory table), so requests skip pinning their pages one by one (1 MiB reads:
//! 30 % less CPU per request): `READ_FIXED`/`WRITE_FIXED` for one-segment requests,
//! `READV_FIXED`/`WRITEV_FIXED` (Linux 6.15) for the rest. It is opt-in and bounded because
//! registration pins, and so faults in, all of the guest's memory for as long as the frontend
//! is connected, and the frontend decides how large that memory is (a sparse memfd costs it
//! nothing); the kernel's memory-lock limit does not bound it for root. Guest memory larger
//! than MAX, or that the kernel cannot pin, goes through plain vectored I/O.
//!
//! Discard and write-zeroes go to a one-thread helper pool signalling the same eventfd: they
//! are rare, and `fallocate` modes vary by file system in ways that need a synchronous fallback
//! (writing zeroes by hand) that a ring entry cannot express.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use vmm_sys_util::eventfd::EventFd;

use super::pending::Pending;
use super::{drain_eventfd, Completion, Direction, Engine, IoMemory, IoOp, ThreadPool};
use crate::util::ratelimit::limited;

/// The io_uring engine of one queue.
pub struct UringEngine {
    ring: IoUring,
    eventfd: EventFd,
    helper: ThreadPool,
    /// Entries pushed but not yet submitted.
    unsubmitted: usize,
    fixed: FixedBuffers,
    /// Every operation in the ring, by the user data of its entry.
    pending: Pending,
    /// The disk, registered with the ring as its one fixed file.
    _file: Arc<File>,
}

/// The kernel's limit on one registered buffer.
const MAX_FIXED_BUFFER: usize = 1 << 30;
/// Buffer-table entries reserved at ring creation: 1 TiB of guest memory in 1 GiB pieces.
const FIXED_SLOTS: u32 = 1024;

/// What one queue's rings did with guest memory under `--fixed-buffers`, across
/// connections: written by the queue's engine, read by the status.
#[derive(Debug, Default)]
pub struct FixedBufferCounters {
    registered: AtomicU64,
    refused: AtomicU64,
}

impl FixedBufferCounters {
    /// `(name, value)` of each counter.
    pub fn values(&self) -> [(&'static str, u64); 2] {
        [
            (
                "io_uring_fixed_registrations",
                self.registered.load(Ordering::Relaxed),
            ),
            (
                "io_uring_fixed_refusals",
                self.refused.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// Guest memory registered with the ring.
#[derive(Default)]
struct FixedBuffers {
    /// What keeps the registered memory mapped until the registration is replaced, as
    /// `register_buffers_update` requires.
    keeper: Option<Arc<dyn Send + Sync>>,
    /// Host address ranges of the registered buffers; the position is the buffer index.
    bufs: Vec<libc::iovec>,
    /// Whether the kernel has READV_FIXED and WRITEV_FIXED.
    vectored: bool,
    /// The most guest memory to register, in bytes; `None` when the ring has no buffer table
    /// (fixed buffers not asked for, or refused by the kernel).
    max_bytes: Option<u64>,
    /// What registrations did (with fixed buffers asked for).
    counters: Option<Arc<FixedBufferCounters>>,
}

// SAFETY: the iovecs only describe memory that `keeper`, which is Send + Sync, keeps mapped.
unsafe impl Send for FixedBuffers {}

impl FixedBuffers {
    fn count(&self, which: impl FnOnce(&FixedBufferCounters) -> &AtomicU64) {
        if let Some(counters) = &self.counters {
            crate::util::bump(which(counters), 1);
        }
    }

    /// The index of the registered buffer that holds every iovec of `iovs`, if one does.
    fn index_of(&self, iovs: &[libc::iovec]) -> Option<u16> {
        let within = |buf: &libc::iovec, v: &libc::iovec| {
            let (start, addr) = (buf.iov_base as usize, v.iov_base as usize);
            addr >= start && addr - start + v.iov_len <= buf.iov_len
        };
        let first = iovs.first()?;
        let (index, buf) = self
            .bufs
            .iter()
            .enumerate()
            .find(|(_, b)| within(b, first))?;
        if iovs.len() > 1 && !self.vectored {
            return None;
        }
        let index = u16::try_from(index).ok()?;
        iovs[1..].iter().all(|v| within(buf, v)).then_some(index)
    }
}

/// Checks that the kernel lets this process create an io_uring (it may be compiled out, or
/// disabled by `kernel.io_uring_disabled` or a seccomp policy).
pub fn probe_io_uring() -> io::Result<()> {
    IoUring::new(2).map(|_| ())
}

const FIXED_DISK: types::Fixed = types::Fixed(0);

/// `IORING_REGISTER_BUFFERS_UPDATE` (the kernel's ABI; the crate does not export it).
const REGISTER_BUFFERS_UPDATE: u8 = 16;

/// Limits the ring, set up disabled, to what vblkd submits — reads and writes (vectored,
/// fixed-buffer or both) and fsync, on the registered file only — and to updating its fixed
/// buffers (`IORING_REGISTER_RESTRICTIONS`), then enables it. A subverted queue thread can
/// then make the ring do nothing else (no opening files, no sockets, no other fds).
fn restrict(ring: &IoUring) -> io::Result<()> {
    use io_uring::register::Restriction;
    let ops = [
        opcode::Readv::CODE,
        opcode::Writev::CODE,
        opcode::ReadFixed::CODE,
        opcode::WriteFixed::CODE,
        opcode::ReadvFixed::CODE,
        opcode::WritevFixed::CODE,
        opcode::Fsync::CODE,
    ];
    let mut allowed: Vec<Restriction> = ops.into_iter().map(Restriction::sqe_op).collect();
    allowed.push(Restriction::sqe_flags_allowed(
        squeue::Flags::FIXED_FILE.bits(),
    ));
    allowed.push(Restriction::sqe_flags_required(
        squeue::Flags::FIXED_FILE.bits(),
    ));
    allowed.push(Restriction::register_op(REGISTER_BUFFERS_UPDATE));
    ring.submitter().register_restrictions(&mut allowed)?;
    ring.submitter().register_enable_rings()
}

impl UringEngine {
    /// A ring with room for `capacity` operations on `file`, registering guest memory of up
    /// to `fixed_buffers` bytes as fixed buffers, counting what it does into the counters
    /// given with it.
    pub fn new(
        file: Arc<File>,
        capacity: u16,
        fixed_buffers: Option<(u64, Arc<FixedBufferCounters>)>,
    ) -> io::Result<Self> {
        let (fixed_buffers, counters) = fixed_buffers.unzip();
        let entries = u32::from(capacity.max(2)).next_power_of_two();
        let build = |restricted: bool| {
            let mut builder = IoUring::builder();
            // Completions are posted by task work on the worker thread. A sleeping worker is
            // woken for it anyway; a running (polling) one need not be interrupted by an IPI:
            // the TASKRUN flag tells it to enter the kernel instead.
            builder.setup_coop_taskrun().setup_taskrun_flag();
            if restricted {
                // Disabled until its restrictions are in place (see `restrict`).
                builder.setup_r_disabled();
            }
            builder.build(entries)
        };
        let (ring, restricted) = match build(true) {
            Ok(ring) => (ring, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                limited!(
                    log::Level::Warn,
                    "io_uring: this kernel cannot restrict a ring to vblkd's operations; the \
                     rings are not restricted"
                );
                (build(false)?, false)
            }
            Err(e) => return Err(e),
        };
        ring.submitter().register_files(&[file.as_raw_fd()])?;
        let eventfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let helper = ThreadPool::new(file.clone(), 1, eventfd.try_clone()?)?;
        let pending = Pending::new(usize::from(capacity.max(1)), eventfd.try_clone()?);
        let max_bytes =
            fixed_buffers.filter(
                |_| match ring.submitter().register_buffers_sparse(FIXED_SLOTS) {
                    Ok(()) => true,
                    Err(e) => {
                        log::info!(
                            "io_uring: no fixed buffers ({e}); requests pin guest pages one by one"
                        );
                        false
                    }
                },
            );
        let vectored = max_bytes.is_some() && {
            let mut probe = Probe::new();
            ring.submitter().register_probe(&mut probe).is_ok()
                && probe.is_supported(opcode::ReadvFixed::CODE)
                && probe.is_supported(opcode::WritevFixed::CODE)
        };
        if restricted {
            restrict(&ring)?;
        }
        let fixed = FixedBuffers {
            vectored,
            max_bytes,
            counters,
            ..FixedBuffers::default()
        };
        Ok(UringEngine {
            ring,
            eventfd,
            helper,
            unsubmitted: 0,
            fixed,
            pending,
            _file: file,
        })
    }

    /// Registers `memory`'s regions as the ring's fixed buffers, replacing what was
    /// registered.
    fn register(&mut self, memory: &IoMemory) {
        let mut bufs = Vec::new();
        for region in memory.regions() {
            let (base, len) = (region.iov_base.cast::<u8>(), region.iov_len);
            for start in (0..len).step_by(MAX_FIXED_BUFFER) {
                bufs.push(libc::iovec {
                    // Pointer arithmetic only: `start` is inside the region.
                    iov_base: base.wrapping_add(start).cast(),
                    iov_len: (len - start).min(MAX_FIXED_BUFFER),
                });
            }
        }
        bufs.truncate(FIXED_SLOTS as usize);
        let total: u64 = bufs.iter().map(|b| b.iov_len as u64).sum();
        let max_bytes = self.fixed.max_bytes.unwrap_or(0);
        if total > max_bytes {
            limited!(
                log::Level::Warn,
                "io_uring: {} ({} MiB) is more than --fixed-buffers allows ({} MiB); not \
                 registering it",
                memory.what,
                total >> 20,
                max_bytes >> 20
            );
            bufs.clear();
            self.fixed.count(|c| &c.refused);
        }
        // Entries of the previous registration beyond the new ones are cleared.
        let mut update = bufs.clone();
        update.resize(
            self.fixed.bufs.len().max(bufs.len()),
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
        );
        // SAFETY: each iovec describes memory that `memory`'s keeper, kept in
        // `self.fixed.keeper`, keeps mapped until the next update replaces these entries; the
        // kernel pins the pages meanwhile.
        match unsafe {
            self.ring
                .submitter()
                .register_buffers_update(0, &update, None)
        } {
            Ok(_) => {
                if !bufs.is_empty() {
                    limited!(
                        log::Level::Info,
                        "io_uring: {} registered as {} fixed buffers ({} regions)",
                        memory.what,
                        bufs.len(),
                        memory.regions().len()
                    );
                    self.fixed.count(|c| &c.registered);
                }
                self.fixed.bufs = bufs;
            }
            Err(e) => {
                limited!(
                    log::Level::Warn,
                    "io_uring: cannot register {} as fixed buffers ({e}); requests pin its \
                     pages one by one",
                    memory.what
                );
                self.fixed.bufs.clear();
            }
        }
        self.fixed.keeper = Some(memory.keeper().clone());
    }

    fn push_entry(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: the entry's buffers are held in `pending` until the kernel completes it,
            // and the registered disk file (`_file`) lives as long as the ring.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.unsubmitted += 1;
                return;
            }
            // The submission queue is sized to the engine's capacity, so it can only be full
            // if the kernel has not consumed earlier entries yet; hand them over and retry.
            if let Err(e) = self.ring.submit() {
                limited!(log::Level::Error, "io_uring submit failed: {e}");
            }
            self.unsubmitted = 0;
        }
    }
}

/// An iovec list's count and first length as a ring entry holds them (32 bits each). Either can
/// only shrink in the conversion (the worker's lists are at most IOV_MAX long, one descriptor's
/// length fits 32 bits anyway), and less than asked is a short transfer, which the worker
/// resubmits: never more memory than the iovecs describe.
fn ring_lengths(iovs: &[libc::iovec]) -> (u32, u32) {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (
        clamp(iovs.len()),
        iovs.first().map_or(0, |v| clamp(v.iov_len)),
    )
}

impl Engine for UringEngine {
    fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    fn set_io_memory(&mut self, memory: &IoMemory) {
        if self.fixed.max_bytes.is_some() {
            self.register(memory);
        }
    }

    fn push(&mut self, token: u64, op: IoOp) {
        let entry = match &op {
            IoOp::Transfer {
                direction,
                offset,
                data,
            } => {
                let iovs = data.iovecs();
                let (iovcnt, first_len) = ring_lengths(iovs);
                let (o, fixed) = (*offset, self.fixed.index_of(iovs));
                let flags = match direction {
                    Direction::Write { dsync: true } => libc::RWF_DSYNC,
                    _ => 0,
                };
                match (*direction, fixed) {
                    (Direction::Read, Some(i)) if iovcnt == 1 => {
                        opcode::ReadFixed::new(FIXED_DISK, iovs[0].iov_base.cast(), first_len, i)
                            .offset(o)
                            .build()
                    }
                    (Direction::Read, Some(i)) => {
                        opcode::ReadvFixed::new(FIXED_DISK, iovs.as_ptr(), iovcnt, i)
                            .offset(o)
                            .build()
                    }
                    (Direction::Read, None) => {
                        opcode::Readv::new(FIXED_DISK, iovs.as_ptr(), iovcnt)
                            .offset(o)
                            .build()
                    }
                    (Direction::Write { .. }, Some(i)) if iovcnt == 1 => {
                        opcode::WriteFixed::new(FIXED_DISK, iovs[0].iov_base.cast(), first_len, i)
                            .offset(o)
                            .rw_flags(flags)
                            .build()
                    }
                    (Direction::Write { .. }, Some(i)) => {
                        opcode::WritevFixed::new(FIXED_DISK, iovs.as_ptr(), iovcnt, i)
                            .offset(o)
                            .rw_flags(flags)
                            .build()
                    }
                    (Direction::Write { .. }, None) => {
                        opcode::Writev::new(FIXED_DISK, iovs.as_ptr(), iovcnt)
                            .offset(o)
                            .rw_flags(flags)
                            .build()
                    }
                }
            }
            IoOp::Flush => opcode::Fsync::new(FIXED_DISK)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => {
                self.helper.push(token, op);
                return;
            }
        };
        // The entry points at the iovec list's heap allocation, which stays where it is while
        // `pending` holds the operation, until the completion hands it back.
        if let Some(user_data) = self.pending.insert(token, op) {
            self.push_entry(entry.user_data(user_data));
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted > 0 {
            self.ring.submit()?;
            self.unsubmitted = 0;
        }
        self.helper.submit()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.ring.completion().is_empty() && self.ring.submission().taskrun() {
            // Completions wait in task work; any system call runs it.
            self.ring.submit()?;
        }
        self.pending.take_refused(out);
        let pending = &mut self.pending;
        out.extend(
            self.ring
                .completion()
                .filter_map(|cqe| pending.complete(cqe.user_data(), i64::from(cqe.result()))),
        );
        self.helper.reap(out)
    }

    fn arm(&mut self) -> io::Result<()> {
        // The ring and the helper both signal this eventfd.
        drain_eventfd(&self.eventfd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(addr: usize, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        }
    }

    #[test]
    fn the_ring_refuses_operations_vblkd_does_not_submit() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let mut engine = UringEngine::new(file, 4, None).unwrap();
        let path = c"/etc/passwd";
        let refused = [
            opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build(),
            opcode::Nop::new().build(),
            // An allowed operation, but on a descriptor of the process rather than the ring's
            // registered file.
            opcode::Fsync::new(types::Fd(0)).build(),
        ];
        for (i, entry) in (0u64..).zip(refused) {
            // SAFETY: the path is a static NUL-terminated string; the other entries point at
            // nothing.
            unsafe { engine.ring.submission().push(&entry.user_data(i)).unwrap() };
            // A refused entry ends the submission: one at a time.
            let _ = engine.ring.submit_and_wait(1);
            let results: Vec<i32> = engine.ring.completion().map(|c| c.result()).collect();
            assert_eq!(results, [-libc::EACCES], "entry {i}");
        }
        // What vblkd submits still works.
        let fsync = opcode::Fsync::new(FIXED_DISK).build().user_data(9);
        // SAFETY: an fsync of the registered file points at nothing.
        unsafe { engine.ring.submission().push(&fsync).unwrap() };
        engine.ring.submit_and_wait(1).unwrap();
        let results: Vec<i32> = engine.ring.completion().map(|c| c.result()).collect();
        assert_eq!(results, [0]);
    }

    #[test]
    fn a_request_uses_the_fixed_buffer_that_holds_all_its_segments() {
        let mut fixed = FixedBuffers {
            bufs: vec![iov(0x1000, 0x1000), iov(0x10_000, 0x4000)],
            vectored: true,
            max_bytes: Some(u64::MAX),
            keeper: None,
            counters: None,
        };
        assert_eq!(fixed.index_of(&[iov(0x1000, 0x1000)]), Some(0));
        assert_eq!(
            fixed.index_of(&[iov(0x10_000, 0x200), iov(0x13_000, 0x1000)]),
            Some(1)
        );
        // Running past a buffer's end, or across two buffers: plain I/O.
        assert_eq!(fixed.index_of(&[iov(0x1800, 0x1000)]), None);
        assert_eq!(
            fixed.index_of(&[iov(0x1000, 0x200), iov(0x10_000, 0x200)]),
            None
        );
        // A bounce buffer outside guest memory.
        assert_eq!(fixed.index_of(&[iov(0x50_000, 0x200)]), None);
        // Without vectored fixed operations, only one-segment requests qualify.
        fixed.vectored = false;
        assert_eq!(
            fixed.index_of(&[iov(0x10_000, 0x200), iov(0x11_000, 0x200)]),
            None
        );
        assert_eq!(fixed.index_of(&[iov(0x10_000, 0x200)]), Some(1));
    }
}
