//! What each subcommand of `vblkd` does, given its arguments as typed values: the command
//! line (`main.rs`) parses, these act.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vmm_sys_util::eventfd::EventFd;

use crate::disk::{DiskError, DiskKind, DiskOptions, DiskSpec, OpenError};
use crate::export::{ExportDisk, ExportSpec, Exporting, Interface};
use crate::queue::controls::ErrorPolicy;
use crate::queue::throttle::ThrottleConfig;
use crate::sandbox::{self, Identity, SeccompMode};
use crate::service::control::{self, ClientError};
use crate::service::daemon::{self, ServeOptions, Socket};
use crate::service::{activation, notify, status::Command};
use crate::util::sigbus;

/// Everything `vblkd serve` is told.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where to listen, unless systemd passes the socket.
    pub socket: Option<PathBuf>,
    /// Permission bits of a socket created at `socket`.
    pub socket_mode: u32,
    /// Its group.
    pub socket_group: Option<libc::gid_t>,
    pub control: Option<PathBuf>,
    pub metrics: Option<String>,
    pub disk: DiskSpec,
    pub disk_options: DiskOptions,
    pub num_queues: u16,
    /// Threads serving the queues.
    pub queue_threads: u16,
    pub queue_size: u16,
    /// The busy-polling ceiling; `None` for none.
    pub poll: Option<Duration>,
    /// The I/O limits to start with.
    pub limits: ThrottleConfig,
    /// What failed requests do.
    pub error_policy: ErrorPolicy,
    /// The system call filters.
    pub seccomp: SeccompMode,
    /// Who to serve as.
    pub identity: Option<Identity>,
}

/// `vblkd serve`: serves the disk until SIGINT or SIGTERM.
pub fn serve(config: ServeConfig) -> Result<(), Box<dyn std::error::Error>> {
    // Before anything else could see them: the variables are meant for this process only.
    let activated =
        activation::listener().map_err(|e| format!("cannot use the socket systemd passed: {e}"))?;
    let socket = match (activated, &config.socket) {
        (Some(listener), None) => Socket::Activated(listener),
        (Some(_), Some(path)) => {
            return Err(format!(
            "systemd passed a listening socket, and --socket {} names another; leave --socket out",
            path.display()
        )
            .into())
        }
        (None, Some(path)) => Socket::Path {
            path: path.clone(),
            mode: config.socket_mode,
            group: config.socket_group,
        },
        (None, None) => {
            return Err(
                "--socket PATH is needed (unless systemd starts vblkd with socket activation)"
                    .into(),
            )
        }
    };
    if config.queue_threads > config.num_queues {
        return Err(format!(
            "--queue-threads {} is more than --num-queues {}: each thread serves one queue at \
             least; give at most {}",
            config.queue_threads, config.num_queues, config.num_queues
        )
        .into());
    }
    // Before any thread exists, so that every thread inherits them.
    sandbox::no_new_privs()?;
    daemon::block_termination_signals()
        .map_err(|e| format!("cannot block termination signals: {e}"))?;
    sigbus::install().map_err(|e| format!("cannot install the SIGBUS handler: {e}"))?;
    let disk = crate::disk::open(&config.disk, &config.disk_options)?;
    log::info!(
        "{} queue(s) of {} entries, served by {} thread(s)",
        config.num_queues,
        config.queue_size,
        config.queue_threads
    );
    daemon::serve(
        disk,
        &ServeOptions {
            socket,
            num_queues: config.num_queues,
            queue_threads: config.queue_threads,
            queue_size: config.queue_size,
            poll: config.poll,
            control: config.control,
            metrics: config.metrics,
            disk_name: config.disk.to_string(),
            limits: config.limits,
            error_policy: config.error_policy,
            seccomp: config.seccomp,
            identity: config.identity,
            disk_kind: config.disk.kind(),
        },
    )?;
    Ok(())
}

/// `vblkd ctl`: runs `command` on the daemon whose control socket is `control`, and prints
/// the reply as one JSON object or as `key: value` lines.
pub fn ctl(control: &Path, command: &Command, json: bool) -> Result<(), ClientError> {
    let reply = control::request(control, command)?;
    let mut out = String::new();
    if json {
        out = format!("{reply}\n");
    } else {
        tree("", &reply, &mut out);
    }
    // A reader that went away (`| head`) is not an error.
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}

/// A reply as `key: value` lines, nested keys joined with dots (`total.reads: 12`).
fn tree(prefix: &str, value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                tree(&key, v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                tree(&format!("{prefix}.{i}"), v, out);
            }
        }
        Value::String(s) => *out += &format!("{prefix}: {s}\n"),
        other => *out += &format!("{prefix}: {other}\n"),
    }
}

/// `vblkd bench ARGS` is `vblkd-bench ARGS`, as `git foo` is `git-foo`: the benchmark tool is
/// its own program (it drives any vhost-user-blk daemon, and its plotting and client libraries
/// stay out of the daemon). The one beside this executable is preferred, so that a build tree
/// or an install directory is used as a whole; otherwise PATH decides. Returns only if it
/// cannot be run.
pub fn bench(args: &[OsString]) -> Box<dyn std::error::Error> {
    const BENCH: &str = "vblkd-bench";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(BENCH)))
        .filter(|path| path.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from(BENCH));
    let err = std::process::Command::new(&program).args(args).exec();
    format!(
        "cannot run {} ({err}); build it with `cargo build --release -p {BENCH}`, or put it on PATH",
        program.display()
    )
    .into()
}

/// Everything `vblkd aoe-export` is told.
#[derive(Debug)]
pub struct AoeExportConfig {
    /// The network interfaces to serve on (every export on each).
    pub interfaces: Vec<String>,
    pub exports: Vec<ExportSpec>,
    /// How every disk is opened (as `serve --disk`).
    pub disk_options: DiskOptions,
    /// Commands each disk holds at once, as announced.
    pub buffer_count: u16,
    pub seccomp: SeccompMode,
    /// Also serve a control socket here, for `vblkd ctl`.
    pub control: Option<PathBuf>,
    /// Also serve Prometheus metrics at this address.
    pub metrics: Option<String>,
    /// Who to serve as, once the disks and sockets are open.
    pub identity: Option<Identity>,
}

/// `vblkd aoe-export`: serves the disks to AoE initiators until SIGINT or SIGTERM, then
/// finishes the commands in flight.
pub fn aoe_export(config: AoeExportConfig) -> Result<(), Box<dyn std::error::Error>> {
    sandbox::no_new_privs()?;
    daemon::block_termination_signals()
        .map_err(|e| format!("cannot block termination signals: {e}"))?;
    for (i, a) in config.exports.iter().enumerate() {
        if let Some(b) = config.exports[..i]
            .iter()
            .find(|b| (b.shelf, b.slot) == (a.shelf, a.slot))
        {
            return Err(format!(
                "{a} and {b} are both e{}.{}; give each disk a slot of its own",
                a.shelf, a.slot
            )
            .into());
        }
    }
    let mut disks = Vec::with_capacity(config.exports.len());
    for spec in &config.exports {
        let in_export = |e: &dyn std::fmt::Display| format!("e{}.{}: {e}", spec.shelf, spec.slot);
        // A file's engine registers the export's receive ring (memory the kernel holds
        // anyway) and buffers with io_uring, so that no transfer pins pages of its own.
        let options = match spec.disk.kind() {
            DiskKind::File => DiskOptions {
                fixed_buffers: Some(u64::MAX),
                ..config.disk_options.clone()
            },
            _ => config.disk_options.clone(),
        };
        let disk = crate::disk::open(&spec.disk, &options).map_err(|e| match e {
            OpenError::Disk(DiskError::BlockSizeTooSmall { path, .. }) => in_export(&format!(
                "{} rejects 512-byte direct I/O, and AoE sectors are 512 bytes; export it with --cache writeback",
                path.display()
            )),
            e => in_export(&e),
        })?;
        if disk.info().logical_block_size != 512 {
            return Err(
                in_export(&"AoE sectors are 512 bytes; leave --logical-block-size out").into(),
            );
        }
        disk.activate().map_err(|e| in_export(&e))?;
        disks.push(ExportDisk {
            shelf: spec.shelf,
            slot: spec.slot,
            disk_name: spec.disk.to_string(),
            disk,
            buffer_count: config.buffer_count,
            counters: Default::default(),
        });
    }
    let mut interfaces = Vec::with_capacity(config.interfaces.len());
    for (index, name) in config.interfaces.iter().enumerate() {
        let index = u16::try_from(index).map_err(|_| "too many interfaces")?;
        let interface = Interface::open(name, index, &disks)?;
        let i = interface.info();
        for d in &disks {
            log::info!(
                "exporting {} as {} on {name} ({}, {} sectors per frame, {} buffers): {} bytes{}",
                d.disk_name,
                d.name(),
                i.mac,
                i.sectors_per_frame,
                d.buffer_count,
                d.disk.info().capacity.bytes(),
                if d.disk.info().read_only {
                    ", read-only"
                } else {
                    ""
                },
            );
        }
        interfaces.push(interface);
    }
    let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
    let ended = Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
    let signals = signal_fd()?;
    let kind = if config
        .exports
        .iter()
        .any(|e| e.disk.kind() == DiskKind::Rbd)
    {
        DiskKind::Rbd
    } else {
        DiskKind::File
    };
    let control = match &config.control {
        Some(path) => Some((path, control::bind(path)?)),
        None => None,
    };
    if let Some(who) = config.identity {
        // The raw sockets are open: no capability is needed any more.
        sandbox::become_user(who, false)?;
        log::info!("exporting as uid {} gid {}", who.uid, who.gid);
    }
    let socket_dirs: Vec<&Path> = config
        .control
        .iter()
        .filter_map(|p| p.parent())
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .collect();
    sandbox::restrict_paths(sandbox::paths_ruleset(kind, &socket_dirs)?)?;
    let exporting = Arc::new(Exporting {
        interfaces: interfaces.iter().map(Interface::info).collect(),
        exports: disks,
        buffer_count: config.buffer_count,
    });
    if let Some((path, socket)) = control {
        control::spawn(path, socket, exporting.clone())?;
        log::info!("control socket on {}", path.display());
    }
    if let Some(addr) = &config.metrics {
        let exporting = exporting.clone();
        crate::service::metrics::spawn(addr, Arc::new(move || exporting.metrics()))?;
        log::info!("metrics on http://{addr}/metrics");
    }
    notify::prepare();
    sandbox::lock_down(config.seccomp, kind)?;
    let threads = interfaces
        .into_iter()
        .zip(&config.interfaces)
        .map(|(interface, name)| {
            let (stop, ended) = (stop.clone(), ended.clone());
            std::thread::Builder::new()
                .name(format!("vblkd-aoe-{name}"))
                .spawn(move || {
                    let result = interface.run(&stop);
                    let _ = ended.write(1);
                    result
                })
        })
        .collect::<io::Result<Vec<_>>>()?;
    notify::notify("READY=1\nSTATUS=exporting");
    // Until a signal, or an interface's loop ends (it failed).
    crate::util::first_readable(&[signals.as_raw_fd(), ended.as_raw_fd()])?;
    log::info!("stopping: finishing the commands in flight");
    notify::notify("STOPPING=1");
    stop.write(1)?;
    let mut failure = None;
    for (thread, name) in threads.into_iter().zip(&config.interfaces) {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(format!("serving on {name} failed: {e}")),
            Err(_) => failure = Some(format!("serving on {name} panicked")),
        }
    }
    for d in &exporting.exports {
        let figures: Vec<String> = d
            .counters
            .values()
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        log::info!("{}: {}", d.name(), figures.join(", "));
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// A descriptor that is readable when SIGINT or SIGTERM (blocked in every thread) is pending.
fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signals are valid numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: makes a new descriptor for `set`; the result is checked and owned below.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
