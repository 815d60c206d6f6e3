//! Blocking execution of one [`IoOp`]: the thread pool's whole job, and the fallback the
//! asynchronous engines use for what their kernel interface cannot do (Linux AIO has no
//! fallocate; neither interface can emulate write-zeroes on a file system without
//! `FALLOC_FL_ZERO_RANGE`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use vmm_sys_util::fallocate::{fallocate, FallocateMode};
use vmm_sys_util::syscall::SyscallReturnCode;

use super::{AlignedBuffer, Direction, IoOp};

/// Runs `op` on `file` and returns the bytes moved.
pub(super) fn execute(file: &File, op: &IoOp) -> io::Result<usize> {
    match *op {
        IoOp::Transfer {
            direction,
            offset,
            ref data,
        } => {
            // SAFETY: the operation owns its buffers (`DataBuffers`) for the whole call.
            unsafe { transfer(file, offset, data.iovecs(), direction) }
        }
        IoOp::Flush => {
            file.sync_data()?;
            Ok(0)
        }
        IoOp::Discard { offset, len } => {
            // Discard is a hint: a file system that cannot punch holes loses nothing by
            // ignoring it, exactly as QEMU's file driver treats ENOTSUP.
            match punch_hole(file, offset, len) {
                Err(e) if is_unsupported(&e) => Ok(0),
                other => other.map(|()| 0),
            }
        }
        IoOp::WriteZeroes { offset, len, unmap } => {
            if unmap && punch_hole(file, offset, len).is_ok() {
                return Ok(0);
            }
            match fallocate(file, FallocateMode::ZeroRange, true, offset, len) {
                Err(e) if is_unsupported(&e.into()) => {
                    write_zeroes_by_hand(file, offset, len).map(|()| 0)
                }
                Err(e) => Err(e.into()),
                Ok(()) => Ok(0),
            }
        }
    }
}

/// Deallocates a range, keeping the file's size.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    Ok(fallocate(
        file,
        FallocateMode::PunchHole,
        true,
        offset,
        len,
    )?)
}

/// One `preadv2`/`pwritev2`: returns the bytes moved, which may be fewer than asked (the
/// worker resubmits the rest, for every engine alike).
///
/// # Safety
/// Every iovec must describe memory valid for the transfer's access for the whole call.
unsafe fn transfer(
    file: &File,
    offset: u64,
    iovs: &[libc::iovec],
    direction: Direction,
) -> io::Result<usize> {
    let fd = file.as_raw_fd();
    let pos = super::file_offset(offset);
    // Fewer buffers if the list were too long: a short transfer (it is at most IOV_MAX).
    let cnt = i32::try_from(iovs.len()).unwrap_or(i32::MAX);
    // SAFETY: the caller guarantees the iovecs; `cnt` is at most their number.
    let moved = SyscallReturnCode(unsafe {
        match direction {
            Direction::Read => libc::preadv2(fd, iovs.as_ptr(), cnt, pos, 0),
            Direction::Write { dsync } => {
                let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                libc::pwritev2(fd, iovs.as_ptr(), cnt, pos, flags)
            }
        }
    })
    .into_result()?;
    // Anything but -1 is a byte count.
    usize::try_from(moved).map_err(|_| io::Error::from_raw_os_error(libc::EIO))
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

/// A zeroed, aligned buffer usable with O_DIRECT, shared read-only by every thread.
fn zero_buffer() -> io::Result<&'static AlignedBuffer> {
    static ZEROES: OnceLock<AlignedBuffer> = OnceLock::new();
    if let Some(zeroes) = ZEROES.get() {
        return Ok(zeroes);
    }
    // Two threads may both allocate; one buffer is kept, the other freed.
    let _ = ZEROES.set(AlignedBuffer::new(1 << 20)?);
    Ok(ZEROES.get().expect("set above"))
}

fn write_zeroes_by_hand(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let zeroes = zero_buffer()?.iovec();
    let mut done = 0u64;
    while done < len {
        let iov = libc::iovec {
            iov_base: zeroes.iov_base,
            iov_len: usize::try_from(len - done)
                .map_or(zeroes.iov_len, |rest| rest.min(zeroes.iov_len)),
        };
        // SAFETY: `iov` is a prefix of the zero buffer, which lives for the whole program.
        let written = unsafe {
            transfer(
                file,
                offset + done,
                std::slice::from_ref(&iov),
                Direction::Write { dsync: false },
            )
        }?;
        if written == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        done += written as u64;
    }
    Ok(())
}
