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
//! Slots are filled in order and handed back in order. If every slot is ours when a frame
//! arrives, the kernel drops the frame, which the initiator treats like any lost frame.

use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::socket::RawSocket;

/// Room for the slot header (tpacket2_hdr, sockaddr_ll, alignment, and the virtio-net header
/// of a socket that sends linear frames) in front of the frame.
const SLOT_OVERHEAD: usize = 128;
const PAGE: usize = 4096;

pub struct RxRing {
    map: NonNull<u8>,
    map_len: usize,
    slot_size: usize,
    slots: usize,
    next: usize,
}

// SAFETY: the mapping belongs to this ring alone; moving it to another thread is harmless.
unsafe impl Send for RxRing {}

impl RxRing {
    /// Puts a ring of at least `slots` slots, each big enough for a frame at the interface's
    /// MTU, on `socket`. Frames that were queued on the socket before it are discarded.
    pub fn attach(socket: &RawSocket, slots: usize) -> io::Result<Self> {
        let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        socket.set_option(libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        // A slot holds the header plus the largest frame; a block (the kernel's unit of
        // allocation) is a whole number of pages and of slots.
        let slot_size = (socket.mtu + libc::ETH_HLEN as usize + SLOT_OVERHEAD).next_power_of_two();
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
            map: NonNull::new(map.cast()).expect("mmap returned a non-null mapping"),
            map_len,
            slot_size,
            slots,
            next: 0,
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
        unsafe { self.map.as_ptr().add(slot * self.slot_size) }
    }

    fn status(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: every slot starts with the u32 status word (page- or slot-aligned, so
        // aligned for an AtomicU32), and the kernel only ever accesses it atomically too.
        unsafe { &*self.slot_start(slot).cast::<AtomicU32>() }
    }

    /// The oldest frame the kernel has filled and we have not handed back, if any.
    pub fn pop(&mut self) -> Option<RxFrame<'_>> {
        let slot = self.next;
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
        // slot alone until we hand it back in RxFrame's drop, which ends this borrow.
        let bytes = unsafe { std::slice::from_raw_parts(start.add(offset), len) };
        Some(RxFrame {
            ring: self,
            slot,
            bytes,
        })
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in attach; no RxFrame can outlive `self`.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
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

impl Drop for RxFrame<'_> {
    fn drop(&mut self) {
        // Release: we are done reading the bytes before the kernel may overwrite them.
        self.ring
            .status(self.slot)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.ring.next = (self.slot + 1) % self.ring.slots;
    }
}
