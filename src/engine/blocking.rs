//! Blocking execution of one [`IoOp`]: the thread pool's whole job, and the fallback the
//! asynchronous engines use for what their kernel interface cannot do (Linux AIO has no
//! fallocate; neither interface can emulate write-zeroes on a file system without
//! `FALLOC_FL_ZERO_RANGE`).

use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

use super::IoOp;

/// Runs `op` on `fd` and returns the bytes moved.
pub(super) fn execute(fd: RawFd, op: &IoOp) -> io::Result<usize> {
    match *op {
        IoOp::Read {
            offset,
            iov,
            iovcnt,
        } => transfer(fd, offset, iov, iovcnt, Direction::Read),
        IoOp::Write {
            offset,
            iov,
            iovcnt,
            dsync,
        } => transfer(fd, offset, iov, iovcnt, Direction::Write { dsync }),
        IoOp::Flush => {
            // SAFETY: fdatasync takes a plain fd and touches no memory of ours.
            cvt(unsafe { libc::fdatasync(fd) } as isize)?;
            Ok(0)
        }
        IoOp::Discard { offset, len } => {
            // Discard is a hint: a file system that cannot punch holes loses nothing by
            // ignoring it, exactly as QEMU's file driver treats ENOTSUP.
            match fallocate(fd, PUNCH_HOLE, offset, len) {
                Err(e) if is_unsupported(&e) => Ok(0),
                other => other.map(|_| 0),
            }
        }
        IoOp::WriteZeroes { offset, len, unmap } => {
            if unmap && fallocate(fd, PUNCH_HOLE, offset, len).is_ok() {
                return Ok(0);
            }
            match fallocate(
                fd,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Err(e) if is_unsupported(&e) => write_zeroes_by_hand(fd, offset, len).map(|_| 0),
                other => other.map(|_| 0),
            }
        }
    }
}

const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write { dsync: bool },
}

/// One `preadv2`/`pwritev2`: returns the bytes moved, which may be fewer than asked (the
/// worker resubmits the rest, for every engine alike).
fn transfer(
    fd: RawFd,
    offset: u64,
    iov: *const libc::iovec,
    iovcnt: usize,
    dir: Direction,
) -> io::Result<usize> {
    let pos =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let cnt = i32::try_from(iovcnt).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the engine contract (Engine::push) guarantees `iov` points to `iovcnt` valid
    // iovecs whose buffers stay valid for the life of the operation.
    cvt(unsafe {
        match dir {
            Direction::Read => libc::preadv2(fd, iov, cnt, pos, 0),
            Direction::Write { dsync } => {
                let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                libc::pwritev2(fd, iov, cnt, pos, flags)
            }
        }
    })
}

fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate takes a plain fd and integers.
    let ret = unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) };
    cvt(ret as isize).map(|_| ())
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

/// A zeroed, 4 KiB-aligned buffer usable with O_DIRECT, shared read-only by every thread.
struct ZeroBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is written once (zeroed at allocation) and only ever read afterwards.
unsafe impl Send for ZeroBuffer {}
// SAFETY: as above; concurrent reads of immutable memory are fine.
unsafe impl Sync for ZeroBuffer {}

fn zero_buffer() -> &'static ZeroBuffer {
    static ZEROES: OnceLock<ZeroBuffer> = OnceLock::new();
    ZEROES.get_or_init(|| {
        const LEN: usize = 1 << 20;
        let layout = std::alloc::Layout::from_size_align(LEN, 4096).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        ZeroBuffer { ptr, len: LEN }
    })
}

fn write_zeroes_by_hand(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let zeroes = zero_buffer();
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(zeroes.len as u64) as usize;
        let iov = libc::iovec {
            iov_base: zeroes.ptr.cast(),
            iov_len: chunk,
        };
        transfer(
            fd,
            offset + done,
            &iov,
            1,
            Direction::Write { dsync: false },
        )?;
        done += chunk as u64;
    }
    Ok(())
}

fn cvt(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}
