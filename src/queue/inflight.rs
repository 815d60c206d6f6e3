//! In-flight request tracking (vhost-user `INFLIGHT_SHMFD`), so that a crash or an upgrade
//! loses no request.
//!
//! A queue worker takes requests from the avail ring and completes them out of order. If vblkd
//! dies in between, the frontend only knows the used index; the requests that were taken and
//! not completed — while later ones were — are found nowhere else (their avail-ring slots may
//! have been reused). So every request is also recorded, by descriptor head, in a buffer that
//! vblkd allocates and hands to the frontend (`GET_INFLIGHT_FD`), and that the frontend hands
//! back to the next vblkd (`SET_INFLIGHT_FD`). The buffer is shared memory: what we stored
//! before a SIGKILL is there afterwards.
//!
//! The layout and the protocol are the vhost-user specification's ("Inflight I/O tracking",
//! split virtqueues). The buffer holds one region per queue, each a 16-byte header
//! (`features: u64, version: u16, desc_num: u16, last_batch_head: u16, used_idx: u16`)
//! followed by one 16-byte entry per descriptor (`inflight: u8, padding: [u8; 5], next: u16,
//! counter: u64`). The worker:
//! - marks a head in flight, with a rising counter, as it takes it from the avail ring and
//!   before any I/O is issued ([`InflightQueue::take`]);
//! - around each used-ring entry, records the head as the last batch, publishes, clears the
//!   head and stores the new used index ([`InflightQueue::before_used`],
//!   [`InflightQueue::after_used`]);
//! - when a ring starts, repairs a publication the crash cut in half and resubmits every head
//!   still marked, oldest first; the avail ring resumes at `used index + resubmitted`
//!   ([`InflightQueue::recover`]).
//!
//! The frontend can write to this buffer too, so nothing read from it is trusted: indices are
//! bounds-checked and every access is atomic (no references to plain data in shared memory).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// The only layout version there is; 0 means "never used" (a fresh or reset buffer).
const VERSION: u16 = 1;
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 16;
/// Each queue's region starts on a cache line of its own.
const REGION_ALIGN: usize = 64;
/// The largest split virtqueue.
const MAX_QUEUE_SIZE: u16 = 32768;

// Offsets within a queue region's header and within an entry.
const VERSION_AT: usize = 8;
const DESC_NUM_AT: usize = 10;
const LAST_BATCH_HEAD_AT: usize = 12;
const USED_IDX_AT: usize = 14;
const INFLIGHT_AT: usize = 0;
const NEXT_AT: usize = 6;
const COUNTER_AT: usize = 8;

/// The bytes one queue's region takes for `queue_size` descriptors.
fn region_len(queue_size: u16) -> usize {
    (HEADER_LEN + ENTRY_LEN * usize::from(queue_size)).next_multiple_of(REGION_ALIGN)
}

/// The shared tracking buffer of one connection, mapped into our address space.
pub struct InflightBuffer {
    base: NonNull<u8>,
    len: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is only accessed through atomics (see `InflightQueue`), which are safe to
// use from any thread; the pointer itself is just an address.
unsafe impl Send for InflightBuffer {}
// SAFETY: as above.
unsafe impl Sync for InflightBuffer {}

impl InflightBuffer {
    /// The size of a buffer for `num_queues` queues of `queue_size` descriptors.
    pub fn size_for(num_queues: u16, queue_size: u16) -> u64 {
        (usize::from(num_queues) * region_len(queue_size)) as u64
    }

    /// A new, zeroed buffer in a memfd (sealed so that it can neither shrink nor grow: a
    /// frontend that truncated it would make our next access a SIGBUS). Returns the mapping
    /// and the fd to hand to the frontend.
    pub fn create(num_queues: u16, queue_size: u16) -> io::Result<(Self, File)> {
        check_geometry(num_queues, queue_size)?;
        // SAFETY: a NUL-terminated name and valid flags; we take ownership of the new fd.
        let fd = unsafe {
            libc::memfd_create(
                c"vblkd-inflight".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let size = Self::size_for(num_queues, queue_size);
        file.set_len(size)?;
        // SAFETY: fcntl on an fd we own; the seals are plain flags.
        let sealed = unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if sealed < 0 {
            return Err(io::Error::last_os_error());
        }
        let buffer = Self::map(&file, 0, size, num_queues, queue_size)?;
        Ok((buffer, file))
    }

    /// Maps a buffer the frontend handed back (`SET_INFLIGHT_FD`), after checking that the
    /// file really holds `size` bytes at `offset` and that they are enough for the geometry
    /// the frontend claims.
    pub fn open(
        file: &File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> io::Result<Self> {
        check_geometry(num_queues, queue_size)?;
        let meta = file.metadata()?;
        let needed = Self::size_for(num_queues, queue_size);
        let fits = meta.file_type().is_file()
            && size >= needed
            && offset
                .checked_add(size)
                .is_some_and(|end| end <= meta.len());
        if !fits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "inflight buffer of {size} bytes at offset {offset} does not fit its \
                     {}-byte file, or is smaller than the {needed} bytes {num_queues} queues \
                     of {queue_size} need",
                    meta.len()
                ),
            ));
        }
        let buffer = Self::map(file, offset, needed, num_queues, queue_size)?;
        // The frontend keeps this file and could shrink it (ours are sealed; this one may not
        // be).
        crate::util::sigbus::guard(buffer.base.as_ptr(), buffer.len);
        Ok(buffer)
    }

    fn map(
        file: &File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> io::Result<Self> {
        let len = usize::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
        let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared mapping of a file we checked holds these bytes; the kernel
        // picks the address. Nothing else in this process refers to that range.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(InflightBuffer {
            base: NonNull::new(addr.cast()).ok_or(io::ErrorKind::InvalidData)?,
            len,
            num_queues,
            queue_size,
        })
    }

    /// The region of queue `index`, if the buffer has one.
    pub fn queue(self: &Arc<Self>, index: usize) -> Option<InflightQueue> {
        (index < usize::from(self.num_queues)).then(|| InflightQueue {
            buffer: self.clone(),
            start: index * region_len(self.queue_size),
            desc_num: self.queue_size,
        })
    }
}

impl Drop for InflightBuffer {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping `map` created, unmapped exactly once here;
        // every `InflightQueue` holds an Arc to us, so no access outlives it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn check_geometry(num_queues: u16, queue_size: u16) -> io::Result<()> {
    if num_queues == 0 || queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("an inflight buffer for {num_queues} queues of {queue_size} descriptors"),
        ));
    }
    Ok(())
}

/// What a ring start found in its region.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Heads still in flight, oldest first: to be submitted again.
    pub resubmit: Vec<u16>,
    /// The counter the next request taken gets.
    pub next_counter: u64,
}

/// One queue's region of the tracking buffer.
pub struct InflightQueue {
    buffer: Arc<InflightBuffer>,
    start: usize,
    desc_num: u16,
}

impl InflightQueue {
    /// How many descriptors the region tracks (heads must be below this).
    pub fn desc_num(&self) -> u16 {
        self.desc_num
    }

    fn at(&self, offset: usize, size: usize) -> *mut u8 {
        let at = self.start + offset;
        assert!(
            at + size <= self.buffer.len && at % size == 0,
            "inflight access out of bounds"
        );
        // SAFETY: checked just above that `at` lies within the mapping.
        unsafe { self.buffer.base.as_ptr().add(at) }
    }

    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        // SAFETY: `at` checks bounds; the mapping lives as long as `self.buffer`. An atomic is
        // the right type for memory another process may write concurrently.
        unsafe { AtomicU8::from_ptr(self.at(offset, 1)) }
    }

    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        // SAFETY: as in `u8_at`; `at` also checks the alignment.
        unsafe { AtomicU16::from_ptr(self.at(offset, 2).cast()) }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as in `u16_at`.
        unsafe { AtomicU64::from_ptr(self.at(offset, 8).cast()) }
    }

    fn entry(&self, head: u16) -> usize {
        HEADER_LEN + ENTRY_LEN * usize::from(head)
    }

    fn load16(&self, offset: usize) -> u16 {
        u16::from_le(self.u16_at(offset).load(Ordering::Acquire))
    }

    fn store16(&self, offset: usize, value: u16) {
        self.u16_at(offset).store(value.to_le(), Ordering::Release);
    }

    /// Brings the region in line with the ring's used index `used_idx` as the ring starts and
    /// returns what must be submitted again. A fresh region (version 0: a new buffer, or one
    /// the frontend reset with the device) is initialised, and `None` says there is nothing to
    /// recover: the ring starts where the frontend said.
    pub fn recover(&self, used_idx: u16) -> Option<Recovery> {
        let initialised =
            self.load16(VERSION_AT) == VERSION && self.load16(DESC_NUM_AT) == self.desc_num;
        if !initialised {
            self.u64_at(0).store(0, Ordering::Relaxed);
            for head in 0..self.desc_num {
                self.u8_at(self.entry(head) + INFLIGHT_AT)
                    .store(0, Ordering::Relaxed);
            }
            self.store16(DESC_NUM_AT, self.desc_num);
            self.store16(LAST_BATCH_HEAD_AT, 0);
            self.store16(USED_IDX_AT, used_idx);
            self.store16(VERSION_AT, VERSION);
            return None;
        }

        // A crash between publishing used entries and clearing their heads: the heads of the
        // last batch (linked from last_batch_head) that made it into the used ring are done.
        let published = used_idx.wrapping_sub(self.load16(USED_IDX_AT));
        let mut head = self.load16(LAST_BATCH_HEAD_AT);
        for _ in 0..published.min(self.desc_num) {
            if head >= self.desc_num {
                break;
            }
            self.u8_at(self.entry(head) + INFLIGHT_AT)
                .store(0, Ordering::Release);
            head = self.load16(self.entry(head) + NEXT_AT);
        }
        self.store16(USED_IDX_AT, used_idx);

        let mut pending: Vec<(u64, u16)> = (0..self.desc_num)
            .filter(|&h| {
                self.u8_at(self.entry(h) + INFLIGHT_AT)
                    .load(Ordering::Acquire)
                    == 1
            })
            .map(|h| {
                (
                    self.u64_at(self.entry(h) + COUNTER_AT)
                        .load(Ordering::Acquire),
                    h,
                )
            })
            .collect();
        pending.sort_unstable();
        Some(Recovery {
            next_counter: pending.last().map_or(0, |&(c, _)| c.wrapping_add(1)),
            resubmit: pending.into_iter().map(|(_, h)| h).collect(),
        })
    }

    /// Records that `head` was taken from the avail ring, as the `counter`-th request. Must
    /// happen before any of its I/O is issued. `head` must be below [`Self::desc_num`].
    pub fn take(&self, head: u16, counter: u64) {
        let entry = self.entry(head);
        self.u64_at(entry + COUNTER_AT)
            .store(counter, Ordering::Relaxed);
        self.u8_at(entry + INFLIGHT_AT).store(1, Ordering::Release);
    }

    /// Records `head` as the batch about to be published: call just before its used-ring
    /// entry is written.
    pub fn before_used(&self, head: u16) {
        let entry = self.entry(head);
        self.store16(entry + NEXT_AT, self.load16(LAST_BATCH_HEAD_AT));
        self.store16(LAST_BATCH_HEAD_AT, head);
    }

    /// Records that `head` is in the used ring, whose index is now `used_idx`.
    pub fn after_used(&self, head: u16, used_idx: u16) {
        self.u8_at(self.entry(head) + INFLIGHT_AT)
            .store(0, Ordering::Release);
        self.store16(USED_IDX_AT, used_idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(queue_size: u16) -> (InflightQueue, File) {
        let (buffer, file) = InflightBuffer::create(2, queue_size).unwrap();
        (Arc::new(buffer).queue(1).unwrap(), file)
    }

    /// Takes `head`, then publishes it with used index `used`.
    fn complete(q: &InflightQueue, head: u16, used: u16) {
        q.before_used(head);
        q.after_used(head, used);
    }

    #[test]
    fn a_fresh_buffer_resubmits_nothing_and_regions_are_separate() {
        let (buffer, _file) = InflightBuffer::create(2, 256).unwrap();
        let buffer = Arc::new(buffer);
        assert_eq!(
            buffer.len as u64,
            InflightBuffer::size_for(2, 256),
            "two regions of 16 + 16 * 256 bytes"
        );
        let (q0, q1) = (buffer.queue(0).unwrap(), buffer.queue(1).unwrap());
        assert!(buffer.queue(2).is_none());
        assert_eq!(q0.recover(7), None);
        assert_eq!(q1.recover(0), None);
        q0.take(255, 0);
        // Queue 1's region is untouched by queue 0's last entry.
        assert_eq!(q1.recover(0).unwrap().resubmit, Vec::<u16>::new());
        assert_eq!(q0.recover(7).unwrap().resubmit, vec![255]);
    }

    #[test]
    fn in_flight_heads_come_back_oldest_first() {
        let (q, _file) = queue(16);
        q.recover(0);
        // Taken in the order 5, 3, 9, 1; 3 and 1 complete (out of order).
        for (counter, head) in [5, 3, 9, 1].into_iter().enumerate() {
            q.take(head, counter as u64);
        }
        complete(&q, 1, 1);
        complete(&q, 3, 2);
        let recovery = q.recover(2).unwrap();
        assert_eq!(recovery.resubmit, vec![5, 9]);
        assert_eq!(recovery.next_counter, 3);
    }

    #[test]
    fn a_publication_cut_short_by_a_crash_is_repaired() {
        let (q, _file) = queue(16);
        q.recover(0);
        q.take(4, 0);
        q.take(6, 1);
        // Head 6 reached the used ring (index 1), but the crash came before it was cleared.
        q.before_used(6);
        assert_eq!(q.recover(1).unwrap().resubmit, vec![4]);
        // Not published at all: it is resubmitted.
        q.before_used(4);
        assert_eq!(q.recover(1).unwrap().resubmit, vec![4]);
    }

    #[test]
    fn garbage_written_by_the_frontend_stays_in_bounds() {
        let (buffer, file) = InflightBuffer::create(1, 8).unwrap();
        let q = Arc::new(buffer).queue(0).unwrap();
        q.recover(0);
        // A hostile frontend scribbles over the whole region: every head marked, a batch head
        // and next pointers far out of range, a used index far ahead.
        let raw = InflightBuffer::open(&file, 0, InflightBuffer::size_for(1, 8), 1, 8).unwrap();
        // SAFETY: the test owns this mapping and nothing else reads it meanwhile.
        unsafe { std::ptr::write_bytes(raw.base.as_ptr(), 0xff, raw.len) };
        q.store16(VERSION_AT, VERSION);
        q.store16(DESC_NUM_AT, 8);
        let recovery = q.recover(0x7000).unwrap();
        assert!(recovery.resubmit.iter().all(|&h| h < 8));
    }

    #[test]
    fn a_handed_back_buffer_must_hold_what_it_claims() {
        let (_, file) = InflightBuffer::create(1, 64).unwrap();
        let size = InflightBuffer::size_for(1, 64);
        assert!(InflightBuffer::open(&file, 0, size, 1, 64).is_ok());
        assert!(InflightBuffer::open(&file, 0, size, 2, 64).is_err());
        assert!(InflightBuffer::open(&file, 4096, size, 1, 64).is_err());
        assert!(InflightBuffer::open(&file, 0, size + 1, 1, 64).is_err());
        assert!(InflightBuffer::open(&file, 0, size, 1, 0).is_err());
        // The buffer we create cannot be truncated under us.
        assert!(file.set_len(0).is_err());
    }
}
