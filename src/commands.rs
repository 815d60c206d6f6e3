//! What each subcommand of `vblkd` does, given its arguments as typed values: the command
//! line (`main.rs`) parses, these act.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::disk::{DiskOptions, DiskSpec};
use crate::queue::controls::ErrorPolicy;
use crate::queue::throttle::ThrottleConfig;
use crate::sandbox::{self, Identity, SeccompMode};
use crate::service::control::{self, ClientError};
use crate::service::daemon::{self, ServeOptions, Socket};
use crate::service::{activation, status::Command};
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
    // Before any thread exists, so that every thread inherits them.
    sandbox::no_new_privs()?;
    daemon::block_termination_signals()
        .map_err(|e| format!("cannot block termination signals: {e}"))?;
    sigbus::install().map_err(|e| format!("cannot install the SIGBUS handler: {e}"))?;
    let disk = crate::disk::open(&config.disk, &config.disk_options)?;
    log::info!(
        "{} queue(s) of {} entries",
        config.num_queues,
        config.queue_size
    );
    daemon::serve(
        disk,
        &ServeOptions {
            socket,
            num_queues: config.num_queues,
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
