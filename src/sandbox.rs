//! The sandbox: what a vblkd subverted through guest input could still do.
//!
//! vblkd parses what a guest and a frontend send; one memory-safety bug in it or in a crate
//! under it would otherwise hand that guest whatever a root process can do. So once start-up
//! is over — the disk is open, the sockets listen — the process gives up what serving does
//! not need:
//!
//! - `PR_SET_NO_NEW_PRIVS`, always, before any thread exists: nothing vblkd runs can gain
//!   privileges (setuid binaries, file capabilities).
//! - seccomp filters (`--seccomp kill|log|off`, on by default), compiled with Firecracker's
//!   `seccompiler`: pure Rust, no C library to ship or load, and filters written as data here,
//!   where they can be read and tested. The process filter goes on every thread at once
//!   (`TSYNC`) at the end of start-up — threads started earlier (the signal watcher, the
//!   control socket, librbd's) included — and every thread started later inherits it. Queue
//!   threads, which only move requests, add a tighter filter of their own on their first
//!   event ([`enter`]); filters stack, so a call must pass both.
//!
//! What each role may call is in [`allowed`]; what is not there kills the process (`kill`,
//! SIGSYS, so that a missing call fails a test at once), or is allowed and logged by the
//! kernel (`log`: `audit: type=1326 ... syscall=N`, for finding what a new code path needs).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::disk::DiskKind;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What a call outside a filter does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::VariantNames, strum::Display,
)]
#[strum(serialize_all = "lowercase")]
pub enum SeccompMode {
    /// The process is killed (SIGSYS).
    Kill,
    /// The call is allowed, and the kernel logs it.
    Log,
    /// No filters (debugging).
    Off,
}

/// What a thread does, which decides what it may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::EnumIter)]
pub enum Role {
    /// Every thread after start-up: serving frontends one after another (their memory, their
    /// rings, new engines for each), the control socket and the metrics, and whatever the
    /// disk's library needs (librbd's threads).
    Process,
    /// A queue thread: takes requests from its ring, hands them to its engine, completes
    /// them.
    Queue,
    /// A thread of the thread pool (`--aio threads`, and the helper of the other engines for
    /// what they cannot do themselves): reads, writes, flushes and deallocates on the disk.
    Pool,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter for {role:?}: {source}")]
    Build {
        role: Role,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter for {role:?}: {source}")]
    Install {
        role: Role,
        source: seccompiler::Error,
    },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot restrict file-system access (Landlock): {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("--user/--group: cannot {what}: {source}")]
    Identity {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The user and group to serve as, instead of the one that started vblkd (root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// The capability an AoE disk keeps: its engines open a raw socket for each frontend.
const CAP_NET_RAW: u32 = 13;

/// Becomes `who`, with no supplementary groups and no capabilities — but `CAP_NET_RAW` if
/// `keep_net_raw`. Called by the only thread there is (librbd's aside, which glibc switches
/// too), so that every thread started later inherits exactly this.
pub fn become_user(who: Identity, keep_net_raw: bool) -> Result<(), SandboxError> {
    let fail = |what: &'static str| SandboxError::Identity {
        what,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: prctl with integer arguments.
    if keep_net_raw && unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(fail("keep capabilities across the user change"));
    }
    // SAFETY: an empty group list: a count of zero, no pointer read.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(fail("drop the supplementary groups"));
    }
    // SAFETY: integer arguments.
    if unsafe { libc::setresgid(who.gid, who.gid, who.gid) } != 0 {
        return Err(fail("change group"));
    }
    // SAFETY: integer arguments.
    if unsafe { libc::setresuid(who.uid, who.uid, who.uid) } != 0 {
        return Err(fail("change user"));
    }
    if keep_net_raw {
        set_capabilities(1 << CAP_NET_RAW).map_err(|source| SandboxError::Identity {
            what: "keep CAP_NET_RAW alone",
            source,
        })?;
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } != 0 {
            return Err(fail("stop keeping capabilities"));
        }
    }
    Ok(())
}

/// Sets the calling thread's permitted and effective capabilities to `set` (of the first 32),
/// inheritable to none.
fn set_capabilities(set: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let none = Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    };
    let data = [
        Data {
            effective: set,
            permitted: set,
            inheritable: 0,
        },
        none,
    ];
    // SAFETY: capset reads a version-3 header and two data words, which these are.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The file-system access the process keeps after start-up (Landlock): none, but making and
/// removing sockets in `socket_dirs` (the vhost-user socket is removed at exit); for RBD,
/// reading anywhere too (librbd loads plugins and reads its configuration when it likes),
/// writing nowhere.
pub fn paths_ruleset(
    disk: DiskKind,
    socket_dirs: &[&std::path::Path],
) -> Result<landlock::RulesetCreated, SandboxError> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr,
    };
    let abi = landlock::ABI::V6;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(
            socket_dirs,
            AccessFs::RemoveFile | AccessFs::MakeSock,
        ))?;
    if disk == DiskKind::Rbd {
        ruleset = ruleset.add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?;
    }
    Ok(ruleset)
}

/// Puts `ruleset` on the calling thread and every thread it starts later; on a kernel without
/// Landlock, says so once and goes on.
pub fn restrict_paths(ruleset: landlock::RulesetCreated) -> Result<(), SandboxError> {
    use landlock::RulesetStatus;
    match ruleset.restrict_self()?.ruleset {
        RulesetStatus::FullyEnforced => {
            log::info!("Landlock: no file-system access but the sockets' directories")
        }
        RulesetStatus::PartiallyEnforced => log::info!(
            "Landlock: partly enforced (this kernel knows only some of the access rights)"
        ),
        RulesetStatus::NotEnforced => {
            log::warn!(
                "Landlock is not available in this kernel: file-system access is not restricted"
            )
        }
    }
    Ok(())
}

/// The threads' own filters, compiled once the process filter is on (none with `--seccomp
/// off`).
static OWN_FILTERS: OnceLock<Option<BTreeMap<Role, BpfProgram>>> = OnceLock::new();

/// Sets `PR_SET_NO_NEW_PRIVS` on the calling thread (and so on every thread it starts later).
pub fn no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Ends start-up: puts the process filter on every thread, and prepares the queue threads'.
pub fn lock_down(mode: SeccompMode, disk: DiskKind) -> Result<(), SandboxError> {
    let Some(action) = mismatch(mode) else {
        let _ = OWN_FILTERS.set(None);
        log::warn!("seccomp is off (--seccomp off): no system call filter");
        return Ok(());
    };
    let own = [Role::Queue, Role::Pool]
        .into_iter()
        .map(|role| Ok((role, compile(role, disk, action.clone())?)))
        .collect::<Result<BTreeMap<_, _>, SandboxError>>()?;
    for filter in stack(Role::Process, disk, action)? {
        seccompiler::apply_filter_all_threads(&filter).map_err(|source| SandboxError::Install {
            role: Role::Process,
            source,
        })?;
    }
    let _ = OWN_FILTERS.set(Some(own));
    log::info!("seccomp filters on ({mode})");
    Ok(())
}

/// The calling thread takes on `role` (a queue thread on its first event, a pool thread as it
/// starts): its filter goes on top of the process's, once. Does nothing before [`lock_down`]
/// or with `--seccomp off`.
pub fn enter(role: Role) {
    thread_local! {
        static ENTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if ENTERED.get() {
        return;
    }
    let filter = OWN_FILTERS
        .get()
        .and_then(Option::as_ref)
        .and_then(|f| f.get(&role));
    if let Some(filter) = filter {
        ENTERED.set(true);
        if let Err(e) = seccompiler::apply_filter(filter) {
            // The process filter still holds; a thread without its own is looser, not open.
            log::error!("cannot install the seccomp filter for {role:?}: {e}");
        }
    }
}

fn mismatch(mode: SeccompMode) -> Option<SeccompAction> {
    match mode {
        SeccompMode::Kill => Some(SeccompAction::KillProcess),
        SeccompMode::Log => Some(SeccompAction::Log),
        SeccompMode::Off => None,
    }
}

/// The filters a thread of `role` runs under, for a `disk`: the process's (its allow-list,
/// then [`no_paths`] but for RBD), and a queue thread's own on top.
pub fn stack(
    role: Role,
    disk: DiskKind,
    action: SeccompAction,
) -> Result<Vec<BpfProgram>, SandboxError> {
    let mut filters = vec![compile(Role::Process, disk, action.clone())?];
    if disk != DiskKind::Rbd {
        filters.push(no_paths()?);
    }
    if role != Role::Process {
        filters.push(compile(role, disk, action)?);
    }
    Ok(filters)
}

/// `role`'s own filter for a `disk`, where what is not allowed gets `action`.
pub fn compile(
    role: Role,
    disk: DiskKind,
    action: SeccompAction,
) -> Result<BpfProgram, SandboxError> {
    let build = |source| SandboxError::Build { role, source };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(role, disk).into_iter().collect();
    let filter =
        SeccompFilter::new(rules, action, SeccompAction::Allow, target_arch()).map_err(build)?;
    filter.try_into().map_err(build)
}

/// A filter that makes opening a path fail with `EACCES` (and allows everything else): stacked
/// on the process filter, for every disk but RBD (librbd loads plugins and reads its
/// configuration when it likes). Nothing vblkd does after start-up opens a path; glibc does,
/// and copes: malloc reads `/sys/devices/system/cpu/online` when a thread first needs an arena
/// of its own, and falls back when it cannot.
fn no_paths() -> Result<BpfProgram, SandboxError> {
    let build = |source| SandboxError::Build {
        role: Role::Process,
        source,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [
        any(libc::SYS_openat),
        any(libc::SYS_open),
        any(libc::SYS_openat2),
    ]
    .into_iter()
    .collect();
    let errno = u32::try_from(libc::EACCES).expect("a small errno");
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        target_arch(),
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

fn target_arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
}

/// A call allowed whatever its arguments.
fn any(call: libc::c_long) -> (i64, Vec<SeccompRule>) {
    (call, Vec::new())
}

/// A call allowed when argument `arg` is one of `values`.
fn when(call: libc::c_long, arg: u8, values: &[u64]) -> (i64, Vec<SeccompRule>) {
    let rules = values
        .iter()
        .map(|&value| {
            let condition =
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                    .expect("a valid argument index");
            SeccompRule::new(vec![condition]).expect("one condition")
        })
        .collect();
    (call, rules)
}

/// What threads of every role call: memory, threads' own life, time, logging, futexes.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    // glibc's fallback for the CPU count when it cannot read /sys (see `no_paths`), and a
    // panic's backtrace looking for the executable: neither must turn into a kill.
    libc::SYS_sched_getaffinity,
    libc::SYS_readlink,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_fcntl,
    // Refused with EACCES by the filter of [`no_paths`] (but for RBD): glibc tries it.
    libc::SYS_openat,
    // The engines' I/O: io_uring, Linux AIO, the AoE socket.
    libc::SYS_io_uring_enter,
    libc::SYS_io_submit,
    libc::SYS_io_getevents,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
];

/// What the process does after start-up, beyond [`COMMON`].
const PROCESS: &[libc::c_long] = &[
    // Threads: the vhost-user thread and the queue threads of each frontend, pool threads,
    // control connections.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_prctl,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_tgkill,
    // Frontends and control clients: accepting, fds passed with messages, timeouts.
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // Guest memory, the in-flight and dirty-log buffers, the engines of each connection.
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_register,
    libc::SYS_io_setup,
    libc::SYS_io_destroy,
    libc::SYS_ioctl,
    // The thread pool's I/O, resizes, image locks.
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_flock,
    libc::SYS_munlock,
    libc::SYS_mlock,
    // A queue thread tightening its own filter (which can only take calls away).
    libc::SYS_seccomp,
    // Removing the socket at exit.
    libc::SYS_unlink,
];

/// What a queue thread does, beyond [`COMMON`]: io_uring registers the guest's memory again
/// when the frontend changes it (`--fixed-buffers`); the first ring to start takes the image's
/// locks, which looks at the file.
const QUEUE: &[libc::c_long] = &[
    libc::SYS_io_uring_register,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// What a pool thread does, beyond [`COMMON`]: the blocking I/O of `src/engine/blocking.rs`.
const POOL: &[libc::c_long] = &[
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
];

/// The calls `role` may make for a `disk`.
pub fn allowed(role: Role, disk: DiskKind) -> Vec<(i64, Vec<SeccompRule>)> {
    let mut calls: Vec<(i64, Vec<SeccompRule>)> = COMMON.iter().map(|&c| any(c)).collect();
    match role {
        Role::Queue => {
            calls.extend(QUEUE.iter().map(|&c| any(c)));
            if disk == DiskKind::Rbd {
                calls.extend(RBD.iter().map(|&c| any(c)));
            }
        }
        Role::Pool => calls.extend(POOL.iter().map(|&c| any(c))),
        Role::Process => {
            calls.extend(PROCESS.iter().map(|&c| any(c)));
            // Sockets: a raw one per queue of each frontend for AoE, the network to the
            // cluster for librbd; none for a file (systemd's notification socket is made at
            // start-up).
            let families: &[i32] = match disk {
                DiskKind::Aoe => &[libc::AF_PACKET],
                DiskKind::Rbd => &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6],
                DiskKind::File | DiskKind::Null => &[],
            };
            if !families.is_empty() {
                let families: Vec<u64> = families
                    .iter()
                    .map(|&f| u64::try_from(f).expect("address families are positive"))
                    .collect();
                calls.push(when(libc::SYS_socket, 0, &families));
                calls.push(any(libc::SYS_bind));
            }
            if disk == DiskKind::Rbd {
                calls.extend(RBD.iter().map(|&c| any(c)));
            }
        }
    }
    calls
}

/// What librbd calls besides, in its own threads and in the queue threads that call into it:
/// the network to the cluster, its admin socket, its files and plugins.
const RBD: &[libc::c_long] = &[
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_pipe2,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_sysinfo,
    libc::SYS_sched_setaffinity,
    libc::SYS_getcpu,
    libc::SYS_access,
    libc::SYS_mkdir,
    libc::SYS_unlink,
    libc::SYS_getdents64,
    libc::SYS_set_tid_address,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_times,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// How a forked child that installs `role`'s filter (for a `disk`) and then makes `call`
    /// ends: `Ok(status)` if it exited, `Err(signal)` if a signal killed it.
    fn in_child(role: Role, disk: DiskKind, call: impl FnOnce() -> i64) -> Result<i32, i32> {
        let filters = stack(role, disk, SeccompAction::KillProcess).unwrap();
        // SAFETY: the child only installs the filter (no allocation: the program is built),
        // makes one system call and exits without running destructors or atexit handlers.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if filters
                .iter()
                .any(|f| seccompiler::apply_filter(f).is_err())
            {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(100) };
            }
            let ret = call();
            // SAFETY: as above.
            unsafe { libc::_exit(if ret < 0 { 1 } else { 0 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFEXITED(status) {
            Ok(libc::WEXITSTATUS(status))
        } else {
            Err(libc::WTERMSIG(status))
        }
    }

    fn execve() -> i64 {
        let path = c"/bin/true";
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: valid NUL-terminated strings and null-terminated arrays.
        unsafe {
            libc::syscall(
                libc::SYS_execve,
                path.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
            )
        }
    }

    fn open_passwd() -> i64 {
        let path = c"/etc/passwd";
        // SAFETY: a valid NUL-terminated path.
        unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY,
            )
        }
    }

    fn inet_socket() -> i64 {
        // SAFETY: integer arguments only.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) }
    }

    fn ptrace() -> i64 {
        // SAFETY: integer arguments only; PTRACE_TRACEME takes no pointers.
        unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) }
    }

    fn getpid() -> i64 {
        // SAFETY: no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) }
    }

    #[test]
    fn after_start_up_the_process_can_only_make_and_remove_sockets_in_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let ruleset = paths_ruleset(DiskKind::File, &[dir.path()]).unwrap();
        let socket = std::ffi::CString::new(dir.path().join("s").to_str().unwrap()).unwrap();
        let file = std::ffi::CString::new(dir.path().join("f").to_str().unwrap()).unwrap();
        // SAFETY: sockaddr_un is plain data.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap();
        for (d, s) in addr.sun_path.iter_mut().zip(socket.as_bytes()) {
            *d = libc::c_char::from_ne_bytes([*s]);
        }
        let addr_len = libc::socklen_t::try_from(std::mem::size_of_val(&addr)).unwrap();
        // SAFETY: the child restricts itself (system calls on a ruleset built before the fork)
        // and makes raw system calls on values built before the fork, then exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match ruleset.restrict_self() {
                Err(_) => 100,
                Ok(_) => {
                    let mut code = 0;
                    // SAFETY: NUL-terminated paths, a valid sockaddr_un.
                    unsafe {
                        if libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) >= 0 {
                            code |= 1;
                        }
                        if libc::open(file.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600) >= 0 {
                            code |= 2;
                        }
                        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                        if libc::bind(fd, std::ptr::addr_of!(addr).cast(), addr_len) != 0 {
                            code |= 4;
                        }
                        if libc::unlink(socket.as_ptr()) != 0 {
                            code |= 8;
                        }
                    }
                    code
                }
            };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        // Reading a file elsewhere (1) and making a file beside the sockets (2) refused;
        // making the socket (4) and removing it (8) allowed.
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "what was allowed that must not be, or not that must"
        );
    }

    #[test]
    fn the_filters_kill_what_a_subverted_daemon_would_try() {
        let killed = Err(libc::SIGSYS);
        type Call = fn() -> i64;
        let every_role: [(&str, DiskKind, Call, Result<i32, i32>); 5] = [
            ("getpid", DiskKind::File, getpid, Ok(0)),
            ("execve", DiskKind::File, execve, killed),
            ("ptrace", DiskKind::File, ptrace, killed),
            ("socket", DiskKind::File, inet_socket, killed),
            ("AoE socket", DiskKind::Aoe, inet_socket, killed),
        ];
        for role in [Role::Process, Role::Queue, Role::Pool] {
            for (what, disk, call, expected) in every_role {
                assert_eq!(in_child(role, disk, call), expected, "{role:?}: {what}");
            }
        }
        // Opening a path fails (glibc copes), but for RBD, whose library needs its files.
        let refused = Ok(1);
        assert_eq!(in_child(Role::Queue, DiskKind::File, open_passwd), refused);
        assert_eq!(in_child(Role::Process, DiskKind::Aoe, open_passwd), refused);
        assert_eq!(in_child(Role::Process, DiskKind::Rbd, open_passwd), Ok(0));
        // What an RBD disk needs, it has: librbd connects to the cluster.
        assert_eq!(in_child(Role::Process, DiskKind::Rbd, inet_socket), Ok(0));
        assert_eq!(in_child(Role::Queue, DiskKind::Rbd, inet_socket), killed);
    }

    #[test]
    fn every_role_compiles_for_every_disk() {
        use strum::IntoEnumIterator;
        for role in Role::iter() {
            for disk in [DiskKind::File, DiskKind::Null, DiskKind::Aoe, DiskKind::Rbd] {
                let filters = stack(role, disk, SeccompAction::KillProcess).unwrap();
                assert!(filters.iter().all(|f| !f.is_empty()));
                let own = usize::from(role != Role::Process);
                let no_paths = usize::from(disk != DiskKind::Rbd);
                assert_eq!(filters.len(), 1 + no_paths + own);
            }
        }
    }
}
