//! Surviving a frontend that shrinks guest memory under us.
//!
//! Guest memory is a file the frontend passed us (a memfd, a file on hugetlbfs or tmpfs), and
//! its size is checked when it arrives. But the frontend keeps the file: if it truncates it
//! later, our next load or store in the vanished part raises SIGBUS, whose default action kills
//! the whole daemon — every queue, every request in flight. QEMU seals its memfds against
//! shrinking; a hostile or broken frontend need not.
//!
//! [`install`] puts a SIGBUS handler in place that recognises such a fault — an address error
//! (`BUS_ADRERR`) inside a range registered with [`guard`] — and maps a private zero page over
//! the faulting page. The access is retried and reads zeroes (or writes to memory the frontend
//! no longer has); the request it belonged to completes with whatever it got, and the daemon
//! lives on. Any other SIGBUS goes to the handler that was there before (Rust's stack-overflow
//! reporter, or the default action).
//!
//! The handler only loads atomics and makes two system calls (`mmap`, `sigaction`), which is
//! what a signal handler may do.

use std::io;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Ranges remembered; the oldest are forgotten first (they belong to connections long gone).
const SLOTS: usize = 1024;

struct Range {
    start: AtomicUsize,
    end: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // the template of the array below, copied
const EMPTY: Range = Range {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};
static RANGES: [Range; SLOTS] = [EMPTY; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
/// Pages replaced since start.
static REPLACED: AtomicU64 = AtomicU64::new(0);
/// The disposition before ours, for faults that are not ours.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

/// Installs the handler. Call once, early (before guest memory is mapped).
pub fn install() -> io::Result<()> {
    // SAFETY: zeroed sigaction structs are valid "no handler, empty mask" values that
    // sigaction fills in or reads.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: both pointers are valid sigaction structs; `sa_mask` was zeroed (empty set).
    if unsafe { libc::sigaction(libc::SIGBUS, &ours, &mut previous) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Leaked on purpose: the handler may need it until the process ends.
    PREVIOUS.store(Box::into_raw(Box::new(previous)), Ordering::Release);
    Ok(())
}

/// Registers `[start, start + len)` (host addresses of guest memory) as memory the frontend
/// may take away.
pub fn guard(start: *const u8, len: usize) {
    let (start, end) = (start as usize, (start as usize).saturating_add(len));
    // The frontend re-sends its whole memory map on every change; registering the same range
    // again would push older ones (the in-flight buffer's) out of the table.
    let known = RANGES
        .iter()
        .any(|r| r.start.load(Ordering::Acquire) == start && r.end.load(Ordering::Acquire) == end);
    if known {
        return;
    }
    let slot = &RANGES[NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS];
    // Empty while being rewritten, so that a fault in between never matches half of it.
    slot.end.store(0, Ordering::Release);
    slot.start.store(start, Ordering::Release);
    slot.end.store(end, Ordering::Release);
}

/// How many pages of guarded memory were found gone and replaced since the daemon started.
pub fn pages_replaced() -> u64 {
    REPLACED.load(Ordering::Relaxed)
}

fn guarded(addr: usize) -> bool {
    RANGES.iter().any(|r| {
        let end = r.end.load(Ordering::Acquire);
        r.start.load(Ordering::Acquire) <= addr && addr < end
    })
}

/// Maps a private zero page (of a size the mapping at `addr` can be split at) over `addr`.
fn replace_page(addr: usize) -> bool {
    // 4 KiB pages first; hugetlbfs mappings can only be split at their own page size.
    for size in [4usize << 10, 2 << 20, 1 << 30] {
        let page = addr & !(size - 1);
        // SAFETY: a fixed anonymous mapping over a page inside guest memory we mapped; the
        // page's old contents are gone anyway (the file no longer holds them).
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            return true;
        }
    }
    false
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == libc::BUS_ADRERR && guarded(addr) && replace_page(addr) {
        REPLACED.fetch_add(1, Ordering::Relaxed);
        return; // the access is retried, now on the zero page
    }
    // Not ours: put the previous disposition back and return; the access faults again and
    // that disposition takes it.
    let previous = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `previous` is null or the leaked sigaction from `install`; a null new action
    // pointer would only query, so restore SIG_DFL explicitly in that case.
    unsafe {
        if previous.is_null() {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        } else {
            libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};

    #[test]
    fn a_truncated_guarded_mapping_reads_zeroes_instead_of_killing_us() {
        install().unwrap();
        // SAFETY: memfd_create with a NUL-terminated name; we own the fd.
        let file = unsafe {
            std::fs::File::from_raw_fd(libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC))
        };
        file.set_len(2 << 12).unwrap();
        // SAFETY: a fresh shared mapping of the 8 KiB file.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 << 12,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        } as *mut u8;
        assert_ne!(map as *mut libc::c_void, libc::MAP_FAILED);
        guard(map, 2 << 12);
        // SAFETY: within the mapping, which the file still backs.
        unsafe { map.add(4096).write_volatile(7) };
        let before = pages_replaced();
        file.set_len(4096).unwrap();
        // SAFETY: within the mapping; the second page is now past the end of the file.
        let got = unsafe { map.add(4096).read_volatile() };
        assert_eq!(got, 0);
        assert_eq!(pages_replaced(), before + 1);
        // SAFETY: the first page is still backed by the file.
        assert_eq!(unsafe { map.read_volatile() }, 0);
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(map.cast(), 2 << 12) };
    }
}
