//! Turning a descriptor chain into a virtio-blk request — the guest is not trusted.
//!
//! A request is a chain of device-readable descriptors (the 16-byte header, then data for
//! writes) followed by device-writable ones (data for reads, then one status byte). Virtio 1.x
//! lets the driver split or merge these parts across descriptors freely, so the parser works on
//! byte ranges, not on descriptor positions.
//!
//! Everything is checked before any I/O is issued: the chain's shape, that every byte lies in
//! a mapped guest region, that the request fits the disk and its block size. A chain that fails
//! a check is rejected with the status address when one can be trusted, so the worker can
//! answer `VIRTIO_BLK_S_IOERR` (or `UNSUPP`), and without one otherwise, in which case the
//! chain is returned to the guest unanswered. Nothing here panics on guest input.
//!
//! Data buffers come back as host iovecs pointing into the mapped guest memory: the engine
//! reads and writes guest memory directly (zero copy).

use virtio_bindings::virtio_blk::*;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use std::sync::Arc;

use super::config::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS};
use super::layout::{status, DiscardSegment, RequestHeader};
use crate::disk::{Capacity, DiskInfo};
use crate::GuestMemory;

const SECTOR_SIZE: u64 = 512;
const HEADER_LEN: usize = std::mem::size_of::<RequestHeader>();
const DISCARD_SEGMENT_LEN: usize = std::mem::size_of::<DiscardSegment>();

/// What the guest asked for. Offsets and lengths are in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read { offset: u64 },
    Write { offset: u64 },
    Flush,
    GetId,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// A validated request. Its data buffers are the iovecs the parser filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// Total bytes described by the data iovecs.
    pub data_len: usize,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain was refused. [`Rejection`] names each kind (without its detail), for the
/// statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, strum::EnumDiscriminants)]
#[strum_discriminants(
    name(Rejection),
    derive(
        strum::EnumIter,
        strum::EnumCount,
        strum::IntoStaticStr,
        serde::Serialize,
        serde::Deserialize,
        PartialOrd,
        Ord
    ),
    strum(serialize_all = "snake_case"),
    serde(rename_all = "snake_case")
)]
pub enum RequestError {
    #[error("descriptor chain is empty, loops, or is longer than the queue")]
    BrokenChain,
    #[error("last descriptor is not a writable status byte")]
    NoStatus,
    #[error("descriptor points outside guest memory")]
    OutsideGuestMemory,
    #[error("readable descriptor follows a writable one")]
    ReadableAfterWritable,
    #[error("request header is shorter than 16 bytes")]
    ShortHeader,
    #[error("data buffers go in the wrong direction for the request type")]
    WrongDirection,
    #[error("sector or length is not a multiple of the logical block size")]
    Unaligned,
    #[error("request reaches past the end of the disk")]
    PastEnd,
    #[error("request is larger than the advertised limits")]
    TooLarge,
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("malformed discard/write-zeroes payload")]
    BadDiscardPayload,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("unsupported discard/write-zeroes flags or segment count")]
    UnsupportedDiscard,
}

impl RequestError {
    /// The virtio-blk status this error is reported with.
    pub fn status(self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::UnsupportedDiscard => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// A refused chain: the error, and where to report it if the chain has a usable status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

/// The limits a request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The disk's, read at every request (an online resize changes it).
    pub capacity: Arc<Capacity>,
    pub block_size: u64,
    pub read_only: bool,
    pub max_data_bytes: u64,
}

impl Limits {
    pub fn new(info: &DiskInfo, max_data_bytes: u64) -> Self {
        Limits {
            capacity: info.capacity.clone(),
            block_size: u64::from(info.logical_block_size),
            read_only: info.read_only,
            max_data_bytes,
        }
    }

    /// Checks a byte range against block alignment, size limits and the end of the disk.
    fn check_range(&self, offset: u64, len: u64, max: u64) -> Result<(), RequestError> {
        if offset % self.block_size != 0 || len % self.block_size != 0 {
            return Err(RequestError::Unaligned);
        }
        if len > max {
            return Err(RequestError::TooLarge);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity.bytes() => Ok(()),
            _ => Err(RequestError::PastEnd),
        }
    }
}

/// One descriptor's guest range.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// Reusable buffers, so that parsing allocates nothing in the steady state.
#[derive(Default)]
pub struct Scratch {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

/// Parses `chain`, filling `iov` with the request's data buffers.
pub fn parse(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    limits: &Limits,
    scratch: &mut Scratch,
    iov: &mut Vec<libc::iovec>,
) -> Result<Request, Rejected> {
    iov.clear();
    scratch.readable.clear();
    scratch.writable.clear();

    let mut readable_after_writable = false;
    let mut ends_cleanly = false;
    let mut ends_writable = false;
    for desc in chain {
        let seg = Segment {
            addr: desc.addr(),
            len: u64::from(desc.len()),
        };
        if desc.is_write_only() {
            scratch.writable.push(seg);
        } else {
            readable_after_writable |= !scratch.writable.is_empty();
            scratch.readable.push(seg);
        }
        ends_cleanly = !desc.has_next();
        ends_writable = desc.is_write_only();
    }
    // The iterator stops early, without saying so, on loops, on chains longer than the queue,
    // on bad next indices and on unreadable indirect tables: the last descriptor it gave us
    // then still says "next".
    let reject = |status, error| Rejected { status, error };
    if !ends_cleanly {
        return Err(reject(None, RequestError::BrokenChain));
    }

    if !ends_writable {
        return Err(reject(None, RequestError::NoStatus));
    }
    let status = status_address(mem, &scratch.writable).map_err(|e| reject(None, e))?;
    let fail = |error| reject(Some(status), error);
    if readable_after_writable {
        return Err(fail(RequestError::ReadableAfterWritable));
    }

    let mut header = RequestHeader::default();
    let readable_len = gather(mem, &scratch.readable, 0, header.as_mut_slice()).map_err(fail)?;
    if readable_len < HEADER_LEN as u64 {
        return Err(fail(RequestError::ShortHeader));
    }
    let request_type = u32::from(header.request_type);
    let sector = u64::from(header.sector);
    let out_len = readable_len - HEADER_LEN as u64;
    let in_len = total_len(&scratch.writable) - 1;

    let (kind, data_len) = match request_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let is_read = request_type == VIRTIO_BLK_T_IN;
            let (len, stray) = if is_read {
                (in_len, out_len)
            } else {
                (out_len, in_len)
            };
            if stray != 0 {
                return Err(fail(RequestError::WrongDirection));
            }
            if !is_read && limits.read_only {
                return Err(fail(RequestError::ReadOnly));
            }
            let offset = sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(RequestError::PastEnd)
                .map_err(fail)?;
            limits
                .check_range(offset, len, limits.max_data_bytes)
                .map_err(fail)?;
            if is_read {
                host_iovecs(mem, &scratch.writable, 0, in_len, iov).map_err(fail)?;
                (RequestKind::Read { offset }, len)
            } else {
                host_iovecs(mem, &scratch.readable, HEADER_LEN as u64, out_len, iov)
                    .map_err(fail)?;
                (RequestKind::Write { offset }, len)
            }
        }
        VIRTIO_BLK_T_FLUSH => (RequestKind::Flush, 0),
        VIRTIO_BLK_T_GET_ID => {
            host_iovecs(mem, &scratch.writable, 0, in_len, iov).map_err(fail)?;
            (RequestKind::GetId, in_len)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if limits.read_only {
                return Err(fail(RequestError::ReadOnly));
            }
            if out_len == 0 || out_len % DISCARD_SEGMENT_LEN as u64 != 0 {
                return Err(fail(RequestError::BadDiscardPayload));
            }
            if out_len / DISCARD_SEGMENT_LEN as u64 > u64::from(MAX_DISCARD_SEGMENTS) {
                return Err(fail(RequestError::UnsupportedDiscard));
            }
            let mut seg = DiscardSegment::default();
            gather(
                mem,
                &scratch.readable,
                HEADER_LEN as u64,
                seg.as_mut_slice(),
            )
            .map_err(fail)?;
            let (sector, sectors, flags) = (
                u64::from(seg.sector),
                u32::from(seg.num_sectors),
                u32::from(seg.flags),
            );
            let is_discard = request_type == VIRTIO_BLK_T_DISCARD;
            let allowed_flags = if is_discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed_flags != 0 {
                return Err(fail(RequestError::UnsupportedDiscard));
            }
            let offset = sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(RequestError::PastEnd)
                .map_err(fail)?;
            let len = u64::from(sectors) * SECTOR_SIZE;
            limits
                .check_range(offset, len, u64::from(MAX_DISCARD_SECTORS) * SECTOR_SIZE)
                .map_err(fail)?;
            let kind = if is_discard {
                RequestKind::Discard { offset, len }
            } else {
                RequestKind::WriteZeroes {
                    offset,
                    len,
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                }
            };
            (kind, 0)
        }
        other => return Err(fail(RequestError::Unsupported(other))),
    };
    Ok(Request {
        kind,
        data_len: usize::try_from(data_len).map_err(|_| fail(RequestError::TooLarge))?,
        status,
    })
}

fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

/// The status byte is the last byte of the last writable descriptor (the caller has checked
/// that this is the chain's last descriptor).
fn status_address(mem: &GuestMemory, writable: &[Segment]) -> Result<GuestAddress, RequestError> {
    let last = writable.last().ok_or(RequestError::NoStatus)?;
    if last.len == 0 {
        return Err(RequestError::NoStatus);
    }
    let addr = last
        .addr
        .checked_add(last.len - 1)
        .ok_or(RequestError::OutsideGuestMemory)?;
    if !mem.check_range(addr, 1) {
        return Err(RequestError::OutsideGuestMemory);
    }
    Ok(addr)
}

/// Copies bytes `skip..skip + buf.len()` of the concatenated segments into `buf` and returns
/// the segments' total length (which may be shorter than asked: the caller checks).
fn gather(
    mem: &GuestMemory,
    segs: &[Segment],
    skip: u64,
    buf: &mut [u8],
) -> Result<u64, RequestError> {
    let mut pos = 0u64;
    let mut filled = 0usize;
    for seg in segs {
        let seg_end = pos + seg.len;
        let want_start = skip + filled as u64;
        if filled < buf.len() && want_start < seg_end {
            let within = want_start - pos;
            let n = usize::try_from(seg.len - within)
                .unwrap_or(usize::MAX)
                .min(buf.len() - filled);
            let addr = seg
                .addr
                .checked_add(within)
                .ok_or(RequestError::OutsideGuestMemory)?;
            mem.read_slice(&mut buf[filled..filled + n], addr)
                .map_err(|_| RequestError::OutsideGuestMemory)?;
            filled += n;
        }
        pos = seg_end;
    }
    Ok(pos)
}

/// Appends host iovecs for bytes `skip..skip + len` of the concatenated segments, splitting
/// where a segment crosses guest memory regions and refusing any byte that is not mapped.
fn host_iovecs(
    mem: &GuestMemory,
    segs: &[Segment],
    skip: u64,
    len: u64,
    iov: &mut Vec<libc::iovec>,
) -> Result<(), RequestError> {
    let mut pos = 0u64;
    let end = skip + len;
    for seg in segs {
        let (seg_start, seg_end) = (pos, pos + seg.len);
        pos = seg_end;
        let from = seg_start.max(skip);
        let to = seg_end.min(end);
        if from >= to {
            continue;
        }
        let addr = seg
            .addr
            .checked_add(from - seg_start)
            .ok_or(RequestError::OutsideGuestMemory)?;
        let len = usize::try_from(to - from).map_err(|_| RequestError::TooLarge)?;
        for slice in mem.get_slices(addr, len) {
            let slice = slice.map_err(|_| RequestError::OutsideGuestMemory)?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
