//! Small things the layers above share and that depend on none of them: rate-limited logging
//! for what a guest can provoke, size arguments ("4k", "1G"), a latency histogram, the
//! SIGBUS guard for memory another process can take away, a timerfd, the single-writer
//! counter increment, and waiting for one of a few descriptors.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod histogram;
pub mod ratelimit;
pub mod sigbus;
pub mod size;
pub mod timer;

/// Adds `n` to a counter only one thread writes at a time: a load and a store, no locked
/// read-modify-write on the I/O path. Readers on other threads see it a moment later. It
/// saturates, which a count of requests or nanoseconds reaches only after centuries.
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_add(n),
        Ordering::Relaxed,
    );
}

/// Waits, as long as it takes, until one of `fds` is readable; returns the index of the first
/// readable one (list the one that must win first). Signals do not end the wait.
pub fn first_readable(fds: &[RawFd]) -> io::Result<usize> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let count = libc::nfds_t::try_from(polled.len()).expect("a few descriptors");
    loop {
        // SAFETY: `polled` is a valid array of `count` initialised pollfds.
        let ret = unsafe { libc::poll(polled.as_mut_ptr(), count, -1) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if let Some(i) = polled.iter().position(|p| p.revents != 0) {
            return Ok(i);
        }
    }
}
