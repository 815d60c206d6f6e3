//! Byte ranges of iovec lists: the one place that walks "bytes `off..off + len` of these
//! buffers", for the worker (GET_ID, bounce buffers, the rest of a short transfer) and the AoE
//! engine (frames of a request).

/// Appends the iovecs covering bytes `off..off + len` of `iovs` to `out`.
pub fn subrange(iovs: &[libc::iovec], off: usize, len: usize, out: &mut Vec<libc::iovec>) {
    let (mut pos, end) = (0usize, off + len);
    for v in iovs {
        let (start, stop) = (pos, pos + v.iov_len);
        pos = stop;
        let (a, b) = (start.max(off), stop.min(end));
        if a < b {
            out.push(libc::iovec {
                // Pointer arithmetic only: `a - start` is inside this buffer.
                iov_base: v.iov_base.cast::<u8>().wrapping_add(a - start).cast(),
                iov_len: b - a,
            });
        }
    }
}

/// Calls `f(ptr, len, done)` for each piece of bytes `off..off + len` of `iovs`, where `done`
/// counts the bytes of the range before that piece.
fn for_each_piece(
    iovs: &[libc::iovec],
    off: usize,
    len: usize,
    mut f: impl FnMut(*mut u8, usize, usize),
) {
    let (mut pos, end, mut done) = (0usize, off + len, 0usize);
    for v in iovs {
        let (start, stop) = (pos, pos + v.iov_len);
        pos = stop;
        let (a, b) = (start.max(off), stop.min(end));
        if a < b {
            f(v.iov_base.cast::<u8>().wrapping_add(a - start), b - a, done);
            done += b - a;
        }
    }
}

/// Copies `bytes` into the buffers `iovs` describe, from byte `off` of them on; returns the
/// bytes copied (fewer if the buffers end first).
///
/// # Safety
/// Every iovec must describe memory valid for writes for the duration of the call.
pub unsafe fn copy_to(iovs: &[libc::iovec], off: usize, bytes: &[u8]) -> usize {
    let mut copied = 0;
    for_each_piece(iovs, off, bytes.len(), |dst, n, done| {
        // SAFETY: the caller guarantees `dst..dst + n` is writable; `done + n` stays within
        // `bytes` because the pieces add up to at most `bytes.len()`.
        unsafe { std::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), dst, n) };
        copied += n;
    });
    copied
}

/// Copies the first `dst.len()` bytes of the buffers `iovs` describe into `dst`.
///
/// # Safety
/// Every iovec must describe memory valid for reads for the duration of the call.
pub unsafe fn copy_from(iovs: &[libc::iovec], dst: &mut [u8]) {
    for_each_piece(iovs, 0, dst.len(), |src, n, done| {
        // SAFETY: as in `copy_to`, with reads.
        unsafe { std::ptr::copy_nonoverlapping(src, dst[done..].as_mut_ptr(), n) };
    });
}

/// Zeroes bytes `from..to` of the buffers `iovs` describe.
///
/// # Safety
/// Every iovec must describe memory valid for writes for the duration of the call.
pub unsafe fn zero(iovs: &[libc::iovec], from: usize, to: usize) {
    for_each_piece(iovs, from, to.saturating_sub(from), |dst, n, _| {
        // SAFETY: as in `copy_to`.
        unsafe { std::ptr::write_bytes(dst, 0, n) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cross_buffer_boundaries() {
        let (mut a, mut b) = ([0u8; 4], [0u8; 6]);
        let iovs = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 4,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 6,
            },
        ];
        let mut out = Vec::new();
        subrange(&iovs, 3, 4, &mut out);
        assert_eq!(out.iter().map(|v| v.iov_len).collect::<Vec<_>>(), [1, 3]);
        // SAFETY: the iovecs point at `a` and `b`, alive for these calls.
        unsafe {
            assert_eq!(copy_to(&iovs, 2, &[1, 2, 3, 4, 5, 6, 7, 8, 9]), 8);
            zero(&iovs, 5, 7);
            let mut back = [0u8; 10];
            copy_from(&iovs, &mut back);
            assert_eq!(back, [0, 0, 1, 2, 3, 0, 0, 6, 7, 8]);
        }
    }
}
