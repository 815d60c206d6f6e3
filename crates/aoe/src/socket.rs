//! A raw AF_PACKET socket bound to one interface and to the AoE ethertype: the initiator's
//! only connection to the network. Non-blocking; its readiness goes into an epoll set.
//!
//! Sending: a packet socket normally builds each frame as a small linear head plus page
//! fragments, so a 4 KiB write frame costs a fresh page allocation, and the copy from guest
//! memory into that page (cold in this CPU's cache: the target's side freed it) ran at about
//! 2 GB/s — a fifth of vblkd's CPU per 4 KiB write. With `PACKET_VNET_HDR` each frame is
//! preceded by a virtio-net header whose `hdr_len` asks for the whole frame in the linear
//! area, which comes from the slab allocator and is recycled warm ([`RawSocket::send_linear`]).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use vmm_sys_util::syscall::SyscallReturnCode;

use super::frame::{Mac, ATA_HEADER_LEN, ETHERTYPE, FLAG_RESPONSE};

/// One classic BPF instruction.
fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: u16::try_from(code).expect("classic BPF opcodes are 16 bits"),
        jt,
        jf,
        k,
    }
}

pub struct RawSocket {
    fd: OwnedFd,
    pub mac: Mac,
    pub mtu: usize,
    /// Whether frames sent by [`RawSocket::send_batch`] carry a virtio-net header.
    vnet_header: bool,
}

/// Size of `struct virtio_net_hdr`, which PACKET_VNET_HDR puts in front of every frame.
const VNET_HEADER_LEN: usize = 10;

/// The size of a socket structure as the socket calls take it.
fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("socket structures are small")
}

impl RawSocket {
    /// Opens a socket on `iface` that sends and receives AoE frames.
    pub fn open(iface: &str) -> io::Result<Self> {
        let no_such = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface named {iface}"),
            )
        };
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('\0') {
            return Err(no_such());
        }
        // SAFETY: plain socket(2); the fd is owned below.
        let raw = SyscallReturnCode(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(ETHERTYPE.to_be()),
            )
        })
        .into_result()?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // The interface's details come from ioctls on this socket (not if_nametoindex, which
        // opens a socket of another family, which the sandbox does not allow).
        // SAFETY: ifreq is plain data; the name fits (checked above: shorter than IFNAMSIZ).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
            *d = libc::c_char::from_ne_bytes([*s]);
        }
        // SAFETY: SIOCGIFINDEX fills the ifreq we pass.
        let found =
            SyscallReturnCode(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) })
                .into_result();
        match found {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Err(no_such()),
            other => other?,
        };
        // SAFETY: the ioctl succeeded, so the index member is the valid one.
        let ifindex = unsafe { req.ifr_ifru.ifru_ifindex };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::sa_family_t::try_from(libc::AF_PACKET).expect("AF_PACKET is 17");
        addr.sll_protocol = ETHERTYPE.to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a valid sockaddr_ll of the size we pass.
        SyscallReturnCode(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                socklen_of::<libc::sockaddr_ll>(),
            )
        })
        .into_result()?;

        // SAFETY: SIOCGIFHWADDR fills the ifreq we pass.
        SyscallReturnCode(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) })
            .into_result()?;
        // SAFETY: the ioctl succeeded, so the hardware-address member is the valid one.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(hw.iter()) {
            *m = u8::from_ne_bytes(b.to_ne_bytes());
        }
        // SAFETY: as above, for SIOCGIFMTU.
        SyscallReturnCode(unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut req) })
            .into_result()?;
        // SAFETY: the ioctl succeeded, so the MTU member is the valid one.
        let mtu = usize::try_from(unsafe { req.ifr_ifru.ifru_mtu })
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative MTU"))?;
        Ok(RawSocket {
            fd,
            mac,
            mtu,
            vnet_header: false,
        })
    }

    /// Lets through only frames whose tag's top byte is `prefix`: every packet socket on the
    /// interface gets a copy of every AoE frame, and without this filter each queue's engine
    /// would be woken for (and copy) the replies meant for the others.
    pub fn accept_only_tag_prefix(&self, prefix: u8) -> io::Result<()> {
        // Keep the frame if the byte at offset 20 (the tag's most significant) is `prefix`.
        self.accept_only(&[
            bpf(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 20),
            bpf(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                0,
                1,
                u32::from(prefix),
            ),
        ])
    }

    /// Lets through only requests (no response flag): a packet socket also sees the frames
    /// sent on its interface, and a target would otherwise copy every reply it sends, data
    /// and all, back into its own receive ring.
    pub fn accept_only_requests(&self) -> io::Result<()> {
        // Keep the frame if byte 14 (version and flags) has no response bit.
        self.accept_only(&[
            bpf(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 14),
            bpf(
                libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
                1,
                0,
                u32::from(FLAG_RESPONSE),
            ),
        ])
    }

    /// Attaches a classic BPF filter made of `test`, whose last jump goes to the next
    /// instruction to keep the frame and skips it to drop it.
    fn accept_only(&self, test: &[libc::sock_filter]) -> io::Result<()> {
        let mut program = test.to_vec();
        program.push(bpf(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX));
        program.push(bpf(libc::BPF_RET | libc::BPF_K, 0, 0, 0));
        let fprog = libc::sock_fprog {
            len: u16::try_from(program.len()).expect("a few instructions"),
            filter: program.as_mut_ptr(),
        };
        // The kernel copies the program, so `fprog` need only live through the call.
        self.set_option(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
        // Frames that arrived before the filter was attached may still be queued.
        self.discard_queued()
    }

    /// Sets a socket option whose value is the plain-data `value`.
    pub(super) fn set_option<T>(&self, level: i32, name: i32, value: &T) -> io::Result<()> {
        // SAFETY: setsockopt reads size_of::<T>() bytes from `value`, a live reference; the
        // callers pass the kernel's own structures (or a c_int) for the option they name.
        SyscallReturnCode(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                socklen_of::<T>(),
            )
        })
        .into_result()?;
        Ok(())
    }

    /// Drops every frame waiting in the socket's receive queue.
    pub(super) fn discard_queued(&self) -> io::Result<()> {
        let mut scratch = [0u8; 64];
        while self.recv(&mut scratch)?.is_some() {}
        Ok(())
    }

    /// The bytes of virtio-net header the kernel puts in front of each frame it delivers.
    pub(super) fn vnet_header_len(&self) -> usize {
        if self.vnet_header {
            VNET_HEADER_LEN
        } else {
            0
        }
    }

    /// Makes [`Self::send_batch`] hand the kernel each frame as one linear buffer (see the
    /// module docs). Must come before a ring is attached (the kernel refuses it after).
    pub fn send_linear(&mut self) -> io::Result<()> {
        self.set_option(libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1 as &libc::c_int)?;
        self.vnet_header = true;
        Ok(())
    }

    /// Sends one frame made of `parts` (discovery; the engine sends with [`Self::send_batch`]).
    pub fn send(&self, parts: &[IoSlice]) -> io::Result<()> {
        // SAFETY: msghdr is plain data; we point it at `parts`, which outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = parts.len();
        // SAFETY: `msg` describes valid buffers; the socket is bound, so no address is needed.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends every frame in `batch` with as few system calls as the kernel allows, and
    /// empties it. A frame the kernel refuses (e.g. no buffer space) is skipped: to the
    /// initiator it is a lost frame, sent again when its timer runs out.
    pub fn send_batch(&self, batch: &mut TxBatch) {
        let frames = batch.starts.len();
        batch.msgs.clear();
        for (k, &start) in batch.starts.iter().enumerate() {
            let end = batch
                .starts
                .get(k + 1)
                .copied()
                .unwrap_or(batch.iovecs.len());
            // The header's address is only fixed now that no more headers will be pushed.
            let header = &mut batch.headers[k];
            let head = if self.vnet_header {
                let frame_len: usize = batch.iovecs[start + 1..end]
                    .iter()
                    .map(|v| v.iov_len)
                    .sum::<usize>()
                    + ATA_HEADER_LEN;
                // virtio_net_hdr: no checksum or segmentation offload (flags, gso_type 0);
                // hdr_len, little-endian, is how much of the frame goes in the linear area.
                // Frames are at most an MTU, far below 64 KiB.
                let linear = u16::try_from(frame_len).unwrap_or(u16::MAX);
                header[2..4].copy_from_slice(&linear.to_le_bytes());
                &mut header[..]
            } else {
                &mut header[VNET_HEADER_LEN..]
            };
            batch.iovecs[start] = libc::iovec {
                iov_base: head.as_mut_ptr().cast(),
                iov_len: head.len(),
            };
            // SAFETY: mmsghdr is plain data; zeroed is a valid starting value.
            let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
            msg.msg_hdr.msg_iov = batch.iovecs[start..].as_mut_ptr();
            msg.msg_hdr.msg_iovlen = end - start;
            batch.msgs.push(msg);
        }
        let mut sent = 0;
        while sent < frames {
            let rest = &mut batch.msgs[sent..];
            // At most u32::MAX messages per call; the loop sends the rest.
            let count = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            // SAFETY: every message points at iovecs in `batch` (headers we own, and guest
            // memory the caller keeps mapped until the batch is sent); the socket is bound,
            // so no address is needed.
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), rest.as_mut_ptr(), count, 0) };
            if let Some(n) = usize::try_from(n).ok().filter(|&n| n > 0) {
                sent += n;
            } else {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    log::debug!("AoE send failed: {err}");
                    sent += 1;
                }
            }
        }
        batch.headers.clear();
        batch.iovecs.clear();
        batch.starts.clear();
    }

    /// Receives one frame into `buf`; None when nothing is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: `buf` is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Ok(n) = usize::try_from(n) {
                return Ok(Some(n));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        }
    }

    /// Waits up to `timeout` for a frame to arrive.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe {
            libc::poll(
                &mut pfd,
                1,
                i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(err);
        }
        Ok(n > 0)
    }
}

/// Frames gathered during one round of the engine, to be sent together by
/// [`RawSocket::send_batch`].
#[derive(Default)]
pub struct TxBatch {
    /// Every frame's virtio-net header (sent only if the socket asks for it) and AoE header.
    headers: Vec<[u8; VNET_HEADER_LEN + ATA_HEADER_LEN]>,
    /// Every frame's header iovec followed by its data iovecs.
    iovecs: Vec<libc::iovec>,
    /// Where each frame's iovecs start.
    starts: Vec<usize>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the iovecs point at guest memory the engine keeps mapped until the batch is sent,
// and at our own headers; the batch is used by one thread at a time.
unsafe impl Send for TxBatch {}

impl TxBatch {
    /// Adds a frame made of `header` and then whatever the caller appends to the returned
    /// list of data iovecs (which must stay valid until the batch is sent).
    pub fn push(&mut self, header: [u8; ATA_HEADER_LEN]) -> &mut Vec<libc::iovec> {
        self.starts.push(self.iovecs.len());
        let mut both = [0u8; VNET_HEADER_LEN + ATA_HEADER_LEN];
        both[VNET_HEADER_LEN..].copy_from_slice(&header);
        self.headers.push(both);
        // Filled in by send_batch, once the headers no longer move.
        self.iovecs.push(libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        &mut self.iovecs
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The frames queued so far, each as its AoE header and data, forgetting them: what would
    /// have been sent, for a test of an initiator (or anything that sends frames another way).
    pub fn take_frames(&mut self) -> Vec<([u8; ATA_HEADER_LEN], Vec<u8>)> {
        let ends = self
            .starts
            .iter()
            .skip(1)
            .copied()
            .chain([self.iovecs.len()]);
        let frames = self
            .starts
            .iter()
            .zip(ends)
            .zip(&self.headers)
            .map(|((&start, end), header)| {
                let mut data = Vec::new();
                for v in &self.iovecs[start + 1..end] {
                    // SAFETY: data iovecs describe memory valid until the batch is sent.
                    data.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
                    });
                }
                let head: [u8; ATA_HEADER_LEN] = header[VNET_HEADER_LEN..].try_into().unwrap();
                (head, data)
            })
            .collect();
        self.headers.clear();
        self.iovecs.clear();
        self.starts.clear();
        frames
    }
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
