//! The kernel's packet receive ring (PACKET_RX_RING, TPACKET_V2) mapped into the engine.
//!
//! With a plain packet socket every reply costs a `recv` call, a copy into our buffer and the
//! freeing of its socket buffer, all on the initiator's CPU — for 4 KiB reads that was a
//! fifth of vblkd's time per I/O. With the ring, the kernel copies each accepted frame into
//! a slot of shared memory while it delivers the frame (in the softirq of whoever sent it)
//! and frees the buffer there; the engine reads the slot in place and hands it back by
//! flipping its status word. Epoll still works: the socket is readable while a filled slot
//! waits for us.
//!
//! Slots are filled in order and read in order. If every slot is ours when a frame
//! arrives, the kernel drops the frame, which the initiator treats like any lost frame.
//!
//! A target may keep a slot after reading it ([`RxFrame::hold`]): a write's data is then
//! written to disk straight from the ring, and the slot goes back when the write is done
//! ([`RxRing::release`]). The kernel fills slots strictly in turn, so when it comes round to a
//! held slot it drops frames until that slot is released: the ring must be large beside the
//! number of slots held. Held slots also keep the socket readable to `poll` (it looks at the
//! slot before the kernel's), so whoever holds slots waits for frames edge-triggered.

use std::io;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::socket::RawSocket;

/// Room for the slot header (tpacket2_hdr, sockaddr_ll, alignment, and the virtio-net header
/// of a socket that sends linear frames) in front of the frame.
const SLOT_OVERHEAD: usize = 128;
const PAGE: usize = 4096;
/// What [`RxRing::attach_aligned`] aligns frames' bytes to at least: O_DIRECT's buffer
/// alignment.
pub const DATA_ALIGN: usize = 512;
/// Where the kernel puts a frame's Ethernet header in a TPACKET_V2 slot, less the reserve and
/// the virtio-net header (af_packet's `tpacket_rcv`: the aligned `TPACKET2_HDRLEN` plus 16,
/// minus the 14-byte Ethernet header). Only a guess to aim with: every frame's real offset is
/// in its slot header.
const V2_MAC_OFFSET: usize = 80 - 14;

pub struct RxRing {
    map: Arc<Mapping>,
    slot_size: usize,
    slots: usize,
    next: usize,
    /// Slots read and kept ([`RxFrame::hold`]): not the kernel's, but nothing new either.
    held: Vec<bool>,
}

/// The ring's memory, unmapped when the ring and every I/O that points into it are gone.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, touched only through the ring (which one thread
// owns) and by I/O the ring's owner started; the pointer itself is just an address.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in attach, once, when nothing refers to it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A slot kept after its frame was read, until [`RxRing::release`].
#[derive(Debug, PartialEq, Eq)]
pub struct HeldSlot(usize);

/// A slot for the header, `reserve` bytes and the largest frame: a power of two.
fn slot_size(socket: &RawSocket, reserve: usize) -> usize {
    (socket.mtu + libc::ETH_HLEN as usize + SLOT_OVERHEAD + reserve).next_power_of_two()
}

impl RxRing {
    /// Puts a ring of at least `slots` slots, each big enough for a frame at the interface's
    /// MTU, on `socket`. Frames that were queued on the socket before it are discarded.
    pub fn attach(socket: &RawSocket, slots: usize) -> io::Result<Self> {
        Self::attach_reserving(socket, slots, 0)
    }

    /// As [`Self::attach`], with frames placed so that their byte `at` (an ATA frame's data)
    /// starts on a [`DATA_ALIGN`] boundary, as O_DIRECT wants the memory it writes from — on a
    /// page boundary if that makes slots no larger: then 4 KiB of data lies in one page, and
    /// writing it pins one page, not two.
    pub fn attach_aligned(socket: &RawSocket, slots: usize, at: usize) -> io::Result<Self> {
        let reserve = |align: usize| {
            let unaligned = (V2_MAC_OFFSET + socket.vnet_header_len() + at) % align;
            (align - unaligned) % align
        };
        let (page, sector) = (reserve(PAGE), reserve(DATA_ALIGN));
        let reserve = if slot_size(socket, page) == slot_size(socket, sector) {
            page
        } else {
            sector
        };
        Self::attach_reserving(socket, slots, reserve)
    }

    /// `reserve`: bytes the kernel leaves free in front of each frame (`PACKET_RESERVE`).
    fn attach_reserving(socket: &RawSocket, slots: usize, reserve: usize) -> io::Result<Self> {
        let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        socket.set_option(libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        let reserve_option = libc::c_uint::try_from(reserve).expect("under a page");
        socket.set_option(libc::SOL_PACKET, libc::PACKET_RESERVE, &reserve_option)?;
        // A block (the kernel's unit of allocation) is a whole number of pages and of slots.
        let slot_size = slot_size(socket, reserve);
        let block_size = slot_size.max(PAGE);
        let per_block = block_size / slot_size;
        let blocks = slots.div_ceil(per_block).max(1);
        let slots = blocks * per_block;
        let field = |n: usize| {
            u32::try_from(n)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "receive ring too large"))
        };
        let req = libc::tpacket_req {
            tp_block_size: field(block_size)?,
            tp_block_nr: field(blocks)?,
            tp_frame_size: field(slot_size)?,
            tp_frame_nr: field(slots)?,
        };
        socket.set_option(libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let map_len = blocks * block_size;
        // SAFETY: maps the ring just configured on the socket; the result is checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                socket.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = RxRing {
            map: Arc::new(Mapping {
                base: NonNull::new(map.cast()).expect("mmap returned a non-null mapping"),
                len: map_len,
            }),
            slot_size,
            slots,
            next: 0,
            held: vec![false; slots],
        };
        // Frames that reached the socket's queue before the ring existed would keep it
        // readable for ever (poll reports the queue as well as the ring).
        socket.discard_queued()?;
        Ok(ring)
    }

    /// Where slot `slot` (< `self.slots`) starts in the mapping.
    fn slot_start(&self, slot: usize) -> *mut u8 {
        debug_assert!(slot < self.slots);
        // SAFETY: slot < slots, so the offset stays inside the mapping.
        unsafe { self.map.base.as_ptr().add(slot * self.slot_size) }
    }

    fn status(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: every slot starts with the u32 status word (page- or slot-aligned, so
        // aligned for an AtomicU32), and the kernel only ever accesses it atomically too.
        unsafe { &*self.slot_start(slot).cast::<AtomicU32>() }
    }

    /// The oldest frame the kernel has filled and we have not handed back, if any.
    pub fn pop(&mut self) -> Option<RxFrame<'_>> {
        let slot = self.next;
        if self.held[slot] {
            // The kernel is at this slot too, dropping frames until it is released.
            return None;
        }
        // Acquire: the frame's bytes were written before its status said USER.
        if self.status(slot).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
            return None;
        }
        let start = self.slot_start(slot);
        // SAFETY: the slot is ours (status USER); its header is a tpacket2_hdr written by the
        // kernel.
        let header = unsafe { start.cast::<libc::tpacket2_hdr>().read() };
        let offset = usize::from(header.tp_mac).min(self.slot_size);
        let len = (header.tp_snaplen as usize).min(self.slot_size - offset);
        // SAFETY: offset + len stays inside the slot (clamped above), and the kernel leaves the
        // slot alone until we hand it back (RxFrame's drop, or `release` after `hold`).
        let bytes = unsafe { std::slice::from_raw_parts(start.add(offset), len) };
        Some(RxFrame {
            ring: self,
            slot,
            bytes,
        })
    }

    /// Hands a held slot back to the kernel: nothing may read its frame any more.
    pub fn release(&mut self, slot: HeldSlot) {
        self.held[slot.0] = false;
        // Release: whatever read the frame is done before the kernel may overwrite it.
        self.status(slot.0)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }

    /// The ring's memory (every slot), for an engine to prepare for I/O from it.
    pub fn region(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.map.base.as_ptr().cast(),
            iov_len: self.map.len,
        }
    }

    /// What keeps the ring's memory mapped, for an I/O that points into a held slot
    /// (`diskio::DataBuffers::borrowing`).
    pub fn keeper(&self) -> Arc<dyn Send + Sync> {
        self.map.clone()
    }
}

/// A received frame, read in place; its slot goes back to the kernel when this is dropped.
pub struct RxFrame<'a> {
    ring: &'a mut RxRing,
    slot: usize,
    bytes: &'a [u8],
}

impl Deref for RxFrame<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl RxFrame<'_> {
    /// Keeps the frame's slot from the kernel, and so its bytes where they are, until
    /// [`RxRing::release`]; the ring goes on with the next slot.
    pub fn hold(self) -> HeldSlot {
        let mut frame = ManuallyDrop::new(self);
        let slot = frame.slot;
        frame.ring.held[slot] = true;
        frame.ring.next = (slot + 1) % frame.ring.slots;
        HeldSlot(slot)
    }
}

impl Drop for RxFrame<'_> {
    fn drop(&mut self) {
        // Release: we are done reading the bytes before the kernel may overwrite them.
        self.ring
            .status(self.slot)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.ring.next = (self.slot + 1) % self.ring.slots;
    }
}
