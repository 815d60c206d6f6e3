//! The serving loop: listen, serve one frontend, drain, listen again.
//!
//! A vhost-user socket serves one frontend at a time. When it hangs up — the VM shut down, or
//! QEMU is about to reconnect (`-chardev socket,reconnect=N`) — every in-flight request is
//! completed, the device is rebuilt with fresh engines, and the socket accepts the next
//! frontend. The disk stays open throughout.
//!
//! SIGINT and SIGTERM stop the loop: no new frontend is accepted, the current connection is
//! shut down, in-flight I/O is finished, and the process exits with status 0. Signals are
//! blocked in every thread and taken synchronously by one watcher thread, so no I/O system
//! call is ever interrupted by them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{block_signal, create_sigset, Error as SignalError};

use super::status::Served;
use super::{control, metrics, notify};
use crate::disk::{Disk, DiskError, DiskKind};
use crate::frontend::BlockDevice;
use crate::queue::controls::{Controls, ErrorPolicy};
use crate::queue::throttle::ThrottleConfig;
use crate::sandbox::{self, Identity, SandboxError, SeccompMode};
use crate::util::sigbus;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {path}: {source}; check that its directory exists and is writable")]
    Listen {
        path: PathBuf,
        source: vhost::vhost_user::Error,
    },
    #[error("cannot set the permissions of {path}: {source}")]
    Permissions { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Control(#[from] control::ListenError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// `vhost_user_backend::Error` implements Display but not Error, so it is kept as text.
    #[error("vhost-user: {0}")]
    VhostUser(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The vhost-user socket to serve on.
#[derive(Debug)]
pub enum Socket {
    /// Created here (replacing what is there), with these permissions: who may connect gets
    /// the guest's memory and the disk, so the default is the owner only.
    Path {
        path: PathBuf,
        mode: u32,
        /// The group that may connect (with a mode that lets the group in).
        group: Option<libc::gid_t>,
    },
    /// Listening already, passed by systemd (see [`super::activation`]).
    Activated(std::os::unix::net::UnixListener),
}

/// The id of the group `name` (a name from the group database, or a number).
pub fn group_id(name: &str) -> Result<libc::gid_t, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let c_name =
        std::ffi::CString::new(name).map_err(|_| format!("'{name}' is not a group name"))?;
    // SAFETY: getgrnam reads a C string and returns a pointer to static data (or null); we
    // read one field right away, before anything else could call it.
    let group = unsafe { libc::getgrnam(c_name.as_ptr()) };
    if group.is_null() {
        return Err(format!(
            "no group '{name}'; give a group name from /etc/group or a number"
        ));
    }
    // SAFETY: non-null, so it points to a valid `struct group`.
    Ok(unsafe { (*group).gr_gid })
}

/// The user `name` (from the user database, or a number) and its primary group.
pub fn user_id(name: &str) -> Result<(libc::uid_t, libc::gid_t), String> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| format!("'{name}' is not a user name"))?;
    let by_number = name.parse::<libc::uid_t>().ok();
    // SAFETY: getpwnam/getpwuid return a pointer to static data (or null); we read two
    // fields right away, before anything else could call them.
    let user = unsafe {
        match by_number {
            Some(uid) => libc::getpwuid(uid),
            None => libc::getpwnam(c_name.as_ptr()),
        }
    };
    if user.is_null() {
        return match by_number {
            // A number without an entry: its group is the same number, as for a container's.
            Some(uid) => Ok((uid, uid)),
            None => Err(format!(
                "no user '{name}'; give a user name from /etc/passwd or a number"
            )),
        };
    }
    // SAFETY: non-null, so it points to a valid `struct passwd`.
    Ok(unsafe { ((*user).pw_uid, (*user).pw_gid) })
}

/// Sets `path`'s permission bits to `mode` and, if given, its group.
fn restrict(path: &std::path::Path, mode: u32, group: Option<libc::gid_t>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Where and how to serve.
#[derive(Debug)]
pub struct ServeOptions {
    pub socket: Socket,
    pub num_queues: u16,
    /// Threads serving the queues (queue q: thread q mod this).
    pub queue_threads: u16,
    pub queue_size: u16,
    /// Busy-poll each queue for this long after its last work before sleeping.
    pub poll: Option<std::time::Duration>,
    /// Where to serve the control socket, if anywhere.
    pub control: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`ADDR:PORT`), if anywhere.
    pub metrics: Option<String>,
    /// What `--disk` named, for the control socket's `info`.
    pub disk_name: String,
    /// The I/O limits to start with.
    pub limits: ThrottleConfig,
    /// What failed requests do.
    pub error_policy: ErrorPolicy,
    /// Who to serve as once the disk and the sockets are open (`--user`, `--group`).
    pub identity: Option<Identity>,
    /// The system call filters, which go on when start-up is over.
    pub seccomp: SeccompMode,
    pub disk_kind: DiskKind,
}

impl ServeOptions {
    /// The vhost-user socket's path, if vblkd made it.
    fn socket_path(&self) -> Option<&std::path::Path> {
        match &self.socket {
            Socket::Path { path, .. } => Some(path),
            Socket::Activated(_) => None,
        }
    }
}

/// The signals that stop the daemon.
const TERMINATION: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards.
/// Call before any thread is spawned.
pub fn block_termination_signals() -> io::Result<()> {
    for signal in TERMINATION {
        match block_signal(signal) {
            // Blocked by whoever started us: as good.
            Ok(()) | Err(SignalError::SignalAlreadyBlocked(_)) => {}
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
    Ok(())
}

/// What the signal watcher needs to stop the loop wherever it is.
struct Stop {
    requested: AtomicBool,
    /// Wakes the loop while it waits for a frontend.
    wake: EventFd,
    /// Hangs up the current frontend, if any.
    connection: Mutex<Option<ShutdownHandle>>,
}

impl Stop {
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(handle) = self
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            handle.shutdown();
        }
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

fn spawn_signal_watcher(stop: Arc<Stop>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("vblkd-signals".into())
        .spawn(move || {
            let Ok(set) = create_sigset(&TERMINATION) else {
                log::error!(
                    "cannot make the set of termination signals; SIGTERM cannot stop vblkd"
                );
                return;
            };
            loop {
                let mut sig = 0;
                // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    log::info!("signal {sig} received: finishing in-flight I/O and exiting");
                    notify::notify("STOPPING=1");
                    stop.request();
                }
            }
        })
        .map(|_| ())
}

/// Serves `disk` on `opts.socket` until SIGINT or SIGTERM.
pub fn serve(disk: Arc<dyn Disk>, opts: &ServeOptions) -> Result<(), DaemonError> {
    let stop = Arc::new(Stop {
        requested: AtomicBool::new(false),
        wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        connection: Mutex::new(None),
    });
    // Counters, the operator's controls and the way to the frontend live as long as the
    // daemon, across connections.
    let controls = Controls::new(opts.num_queues, opts.limits.clone(), opts.error_policy)?;
    controls.on_pause(Box::new(|cause| match cause {
        Some(cause) => notify::notify(&format!("STATUS=paused: {cause}; see vblkd ctl info")),
        None => notify::notify("STATUS=serving (resumed)"),
    }));
    if !opts.limits.is_empty() {
        log::info!("I/O limits {}", opts.limits);
    }
    let served = Arc::new(Served::new(
        disk.clone(),
        opts.disk_name.clone(),
        opts.num_queues,
        opts.queue_size,
        Arc::new(controls),
    ));

    // The sockets first, while the process may still make them anywhere; then the user
    // change, while this is the only thread of ours (so that every later one inherits it);
    // then the threads.
    let mut listener = match &opts.socket {
        Socket::Activated(listener) => {
            log::info!("listening on the socket systemd passed");
            Listener::from(listener.try_clone()?)
        }
        Socket::Path { path, mode, group } => {
            let listener = Listener::new(path, true).map_err(|source| DaemonError::Listen {
                path: path.clone(),
                source,
            })?;
            restrict(path, *mode, *group).map_err(|source| DaemonError::Permissions {
                path: path.clone(),
                source,
            })?;
            log::info!("listening on {}", path.display());
            listener
        }
    };
    let control = match &opts.control {
        Some(path) => Some((path, control::bind(path)?)),
        None => None,
    };
    if let Some(who) = opts.identity {
        sandbox::become_user(who, opts.disk_kind == DiskKind::Aoe)?;
        log::info!("serving as uid {} gid {}", who.uid, who.gid);
    }
    // Before any thread of ours starts, so that all of them inherit it (librbd's started with
    // the disk, and are not restricted).
    let socket_dirs: Vec<&std::path::Path> = [opts.socket_path(), opts.control.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(std::path::Path::parent)
        .map(|dir| match dir.as_os_str().is_empty() {
            true => std::path::Path::new("."),
            false => dir,
        })
        .collect();
    sandbox::restrict_paths(sandbox::paths_ruleset(opts.disk_kind, &socket_dirs)?)?;
    spawn_signal_watcher(stop.clone())?;
    if let Some((path, socket)) = control {
        control::spawn(path, socket, served.clone())?;
        log::info!("control socket on {}", path.display());
    }
    if let Some(addr) = &opts.metrics {
        let served = served.clone();
        metrics::spawn(addr, Arc::new(move || metrics::render(&served)))?;
        log::info!("metrics on http://{addr}/metrics");
    }
    notify::prepare();
    sandbox::lock_down(opts.seccomp, opts.disk_kind)?;
    notify::notify("READY=1\nSTATUS=waiting for a frontend");

    while !stop.requested() {
        // Build the next device before accepting, so a frontend never waits for it.
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let device = Arc::new(BlockDevice::new(
            disk.clone(),
            opts.num_queues,
            opts.queue_threads,
            opts.queue_size,
            opts.poll,
            mem.clone(),
            &served.device,
        )?);
        let mut daemon =
            VhostUserDaemon::new("vblkd".into(), device.clone(), mem).map_err(vhost_error)?;
        device.register_engines(&daemon.get_epoll_handlers())?;

        if !wait_for_frontend(listener.as_raw_fd(), stop.wake.as_raw_fd())? {
            stop_workers(&daemon);
            break;
        }
        served.frontend_connected();
        daemon.start(&mut listener).map_err(vhost_error)?;
        log::info!("frontend connected");
        notify::notify("STATUS=serving a frontend");
        let pages_gone = sigbus::pages_replaced();
        *stop.connection.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
        if stop.requested() {
            daemon.request_shutdown();
        }
        let result = daemon.wait();
        stop.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        served.frontend_disconnected();
        device.drain();
        stop_workers(&daemon);
        let pages_gone = sigbus::pages_replaced() - pages_gone;
        if pages_gone > 0 {
            log::warn!(
                "{pages_gone} pages of guest memory vanished while in use (the frontend shrank \
                 its memory file); they read as zeroes"
            );
        }
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => log::info!("frontend disconnected"),
            Err(e) => log::warn!("frontend connection ended: {e}"),
        }
        if !stop.requested() {
            notify::notify("STATUS=waiting for a frontend");
        }
    }
    Ok(())
}

fn vhost_error(e: vhost_user_backend::Error) -> DaemonError {
    DaemonError::VhostUser(e.to_string())
}

fn stop_workers(daemon: &VhostUserDaemon<Arc<BlockDevice>>) {
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
}

/// Waits until a frontend is connecting (true) or a stop was requested (false).
fn wait_for_frontend(listener: RawFd, stop: RawFd) -> io::Result<bool> {
    Ok(crate::util::first_readable(&[stop, listener])? == 1)
}
