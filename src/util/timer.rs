//! A one-shot timer as a file descriptor (`timerfd`), so that a thread sleeping in epoll can
//! wait for it beside its other sources — and so that another thread can wake it by firing it
//! now. Both halves take `&self`: the owner arms it, any thread may fire it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A non-blocking `CLOCK_MONOTONIC` timerfd.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd })
    }

    /// Makes the fd readable after `delay` (at once for zero), replacing any earlier setting.
    pub fn fire_in(&self, delay: Duration) -> io::Result<()> {
        // A zero expiry would disarm the timer: the shortest one fires at once instead.
        let delay = delay.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(delay.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(delay.subsec_nanos()),
            },
        };
        // SAFETY: `spec` is a valid itimerspec; a null old-value pointer is allowed.
        let ret =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the fd unreadable again if it fired (a read of the expiry count), so that epoll
    /// does not report it twice.
    pub fn consume(&self) {
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into a u64 we own; the fd is non-blocking, so a timer
        // that has not fired answers EAGAIN, which is what "nothing to consume" means.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(expirations).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(timer: &Timer, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: timer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
    }

    #[test]
    fn a_timer_fires_once_and_is_consumed() {
        let timer = Timer::new().unwrap();
        assert!(!readable(&timer, 0), "unarmed");
        timer.fire_in(Duration::ZERO).unwrap();
        assert!(readable(&timer, 1000), "fired at once");
        timer.consume();
        assert!(!readable(&timer, 0), "consumed");
        timer.consume();
        timer.fire_in(Duration::from_secs(3600)).unwrap();
        timer.fire_in(Duration::from_millis(1)).unwrap();
        assert!(
            readable(&timer, 1000),
            "the later setting replaces the earlier"
        );
    }
}
