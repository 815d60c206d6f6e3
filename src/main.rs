//! The `vblkd` command line.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use vblkd::daemon::{self, ServeOptions};
use vblkd::disk::{
    AioMode, AoeDisk, CacheMode, Disk, FileDisk, FileDiskOptions, NullDisk, RbdDisk, SERIAL_LEN,
};

#[derive(Parser)]
#[command(
    version,
    about = "A vhost-user-blk daemon: serve a disk to QEMU or cloud-hypervisor guests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a disk on a vhost-user socket until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Ask a running vblkd, through its control socket, what it serves and how it is doing.
    Ctl(CtlArgs),
    /// Measure a vhost-user-blk daemon: runs the vblkd-bench program installed beside vblkd
    /// (`vblkd bench --help` for its commands).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Args)]
struct CtlArgs {
    /// The daemon's control socket (what it was started with as --control).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// What the daemon serves: the disk, its size and block sizes, the queues.
    Info {
        /// Print the reply as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Requests and bytes by kind, errors, refused requests by reason, in flight now,
    /// submissions and guest notifications: in total and per queue.
    Stats {
        /// Print the reply as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Grow the disk while the guest runs, and tell the guest. A file grows to SIZE; for a
    /// block device or an RBD image resized by other means, leave SIZE out. Shrinking is
    /// refused.
    Resize {
        /// The new size; suffixes K, M, G, T.
        #[arg(value_parser = vblkd::size::parse)]
        size: Option<u64>,
        /// Print the reply as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The vhost-user unix socket to listen on (replaced if it exists). Not needed when
    /// systemd passes the listening socket (socket activation).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Permission bits of the socket --socket creates (octal). Whoever may connect gets the
    /// guest's memory and the disk: the owner only, unless a group is trusted too.
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    socket_mode: u32,
    /// The group the socket --socket creates belongs to (with e.g. --socket-mode 0660, the
    /// group the VMM runs as, such as libvirt-qemu).
    #[arg(long, value_name = "NAME", value_parser = parse_group)]
    socket_group: Option<libc::gid_t>,
    /// Also serve a control socket here (mode 0600), for `vblkd ctl`: what is served, and
    /// statistics.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Also serve the same figures as Prometheus metrics at http://ADDR:PORT/metrics (use a
    /// loopback address unless the network is trusted).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// A regular file or a block device; null:SIZE, a disk that does no I/O;
    /// aoe://IFACE/e<shelf>.<slot>, an ATA-over-Ethernet target (e.g. vblade); or
    /// rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER], a Ceph RBD image.
    #[arg(long, value_name = "PATH")]
    disk: PathBuf,
    /// Create the file with this size, or grow it (sparse); suffixes K, M, G, T (powers of 1024).
    #[arg(long, value_name = "BYTES", value_parser = vblkd::size::parse)]
    size: Option<u64>,
    /// I/O engine, as QEMU's aio= option.
    #[arg(long, value_enum, default_value = "io_uring")]
    aio: AioMode,
    /// Host cache mode, as QEMU's cache= option.
    #[arg(long, value_enum, default_value = "none")]
    cache: CacheMode,
    /// Number of virtqueues, each served by its own thread and engine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    num_queues: u16,
    /// Entries per virtqueue (a power of two).
    #[arg(long, default_value_t = 256, value_parser = parse_queue_size)]
    queue_size: u16,
    /// Refuse writes; the guest sees a read-only disk.
    #[arg(long)]
    read_only: bool,
    /// Logical block size the guest sees.
    #[arg(long, default_value_t = 512, value_parser = parse_block_size)]
    logical_block_size: u32,
    /// Serial number returned to the guest (at most 20 bytes); defaults to the disk's file name.
    #[arg(long, value_name = "STR", value_parser = parse_serial)]
    serial: Option<String>,
    /// Busy-poll each queue (and its engine) for up to this many microseconds after its last
    /// work before going to sleep, in a window that adapts to how soon work comes (like QEMU's
    /// poll-max-ns): lower latency for more CPU under load, none when idle. 0 = off.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    poll_us: u32,
    /// AoE disks: fail a request still unanswered after this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    aoe_deadline: f64,
    /// RBD disks: give up reaching the Ceph cluster at start after this many seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    connect_timeout: u64,
    /// Which of [`LOCAL_DISK_OPTIONS`] the user gave (not defaults), to refuse them where they
    /// do not apply.
    #[arg(skip)]
    explicit: Vec<&'static str>,
    /// Threads per queue for --aio threads.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// With --aio io_uring and O_DIRECT (cache=none, directsync): register the guest's memory
    /// with each ring, for less CPU per request, if it is at most MAX bytes (suffixes K, M, G,
    /// T). This pins all of the guest's memory (faulting it in) while the frontend is
    /// connected, and the frontend decides how large it is: MAX bounds what it can make vblkd
    /// pin.
    #[arg(long, value_name = "MAX", value_parser = vblkd::size::parse)]
    fixed_buffers: Option<u64>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not a permission mode; write it in octal, e.g. 0660"))
}

fn parse_group(s: &str) -> Result<libc::gid_t, String> {
    if let Ok(gid) = s.parse() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(s).map_err(|_| format!("'{s}' is not a group name"))?;
    // SAFETY: getgrnam reads a C string and returns a pointer to static data (or null); we
    // read one field right away, before anything else could call it.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    if group.is_null() {
        return Err(format!(
            "no group '{s}'; give a group name from /etc/group or a number"
        ));
    }
    // SAFETY: non-null, so it points to a valid `struct group`.
    Ok(unsafe { (*group).gr_gid })
}

fn parse_queue_size(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && n >= 2 => Ok(n),
        _ => Err(format!("'{s}' is not a power of two between 2 and 32768")),
    }
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("'{s}' is not 512 or 4096")),
    }
}

fn parse_serial(s: &str) -> Result<String, String> {
    if s.len() > SERIAL_LEN {
        return Err(format!(
            "'{s}' is {} bytes; virtio-blk serials hold at most {SERIAL_LEN}",
            s.len()
        ));
    }
    Ok(s.to_owned())
}

/// Options for a local file or block device only, refused with other disks when given.
const LOCAL_DISK_OPTIONS: [&str; 5] = ["aio", "cache", "size", "threads", "fixed_buffers"];

fn open_disk(args: &ServeArgs) -> Result<Arc<dyn Disk>, Box<dyn std::error::Error>> {
    let spec = args.disk.to_str().unwrap_or_default();
    if spec.starts_with("rbd:") {
        if let Some(option) = args.explicit.first() {
            return Err(format!(
                "--{} applies to files and block devices, not to an RBD disk (librbd does its I/O, with its cache off); leave it out",
                option.replace('_', "-")
            )
            .into());
        }
        let timeout = std::time::Duration::from_secs(args.connect_timeout);
        let disk = RbdDisk::open(
            spec,
            args.read_only,
            args.logical_block_size,
            args.serial.as_deref(),
            timeout,
        )?;
        let info = disk.info();
        log::info!(
            "serving RBD image {} ({} bytes{})",
            disk.name(),
            info.capacity,
            if info.read_only { ", read-only" } else { "" }
        );
        return Ok(Arc::new(disk));
    }
    if spec.starts_with("aoe://") {
        if !(args.aoe_deadline > 0.0 && args.aoe_deadline.is_finite()) {
            return Err("--aoe-deadline must be a positive number of seconds".into());
        }
        let deadline = std::time::Duration::from_secs_f64(args.aoe_deadline);
        let disk = AoeDisk::open(spec, args.read_only, args.serial.as_deref(), deadline)?;
        return Ok(Arc::new(disk));
    }
    if let Some(size) = spec.strip_prefix("null:") {
        let size = vblkd::size::parse(size).map_err(|e| format!("--disk null:SIZE: {e}"))?;
        let disk = NullDisk::new(
            size,
            args.logical_block_size,
            args.read_only,
            args.serial.as_deref(),
        )?;
        log::info!(
            "serving a null disk of {} bytes (no I/O is done)",
            disk.info().capacity
        );
        return Ok(Arc::new(disk));
    }
    let disk = FileDisk::open(&FileDiskOptions {
        path: args.disk.clone(),
        size: args.size,
        aio: args.aio,
        cache: args.cache,
        read_only: args.read_only,
        logical_block_size: args.logical_block_size,
        serial: args.serial.clone(),
        threads: usize::from(args.threads),
        fixed_buffers: args.fixed_buffers,
    })?;
    let info = disk.info();
    log::info!(
        "serving {} ({} bytes, {}-byte blocks{}) with aio={:?} cache={:?}",
        args.disk.display(),
        info.capacity,
        info.logical_block_size,
        if info.read_only { ", read-only" } else { "" },
        disk.aio(),
        args.cache,
    );
    Ok(Arc::new(disk))
}

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Before anything else could see them: the variables are meant for this process only.
    let activated = vblkd::activation::listener()
        .map_err(|e| format!("cannot use the socket systemd passed: {e}"))?;
    let socket = match (activated, &args.socket) {
        (Some(listener), None) => daemon::Socket::Activated(listener),
        (Some(_), Some(path)) => {
            return Err(format!(
            "systemd passed a listening socket, and --socket {} names another; leave --socket out",
            path.display()
        )
            .into())
        }
        (None, Some(path)) => daemon::Socket::Path {
            path: path.clone(),
            mode: args.socket_mode,
            group: args.socket_group,
        },
        (None, None) => {
            return Err(
                "--socket PATH is needed (unless systemd starts vblkd with socket activation)"
                    .into(),
            )
        }
    };
    // Before any thread exists, so that every thread inherits the mask.
    daemon::block_termination_signals()
        .map_err(|e| format!("cannot block termination signals: {e}"))?;
    vblkd::sigbus::install().map_err(|e| format!("cannot install the SIGBUS handler: {e}"))?;
    let disk = open_disk(&args)?;
    log::info!(
        "{} queue(s) of {} entries",
        args.num_queues,
        args.queue_size
    );
    daemon::serve(
        disk,
        &ServeOptions {
            socket,
            num_queues: args.num_queues,
            queue_size: args.queue_size,
            poll: (args.poll_us > 0)
                .then(|| std::time::Duration::from_micros(u64::from(args.poll_us))),
            control: args.control,
            metrics: args.metrics,
            disk_name: args.disk.display().to_string(),
        },
    )?;
    Ok(())
}

fn ctl(args: &CtlArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (command, arguments, json) = match args.command {
        CtlCommand::Info { json } => ("info", serde_json::Value::Null, json),
        CtlCommand::Stats { json } => ("stats", serde_json::Value::Null, json),
        CtlCommand::Resize { size, json } => ("resize", serde_json::json!({ "size": size }), json),
    };
    let reply = vblkd::control::request(&args.control, command, arguments)?;
    let mut out = String::new();
    if json {
        out = format!("{reply}\n");
    } else {
        tree("", &reply, &mut out);
    }
    // A reader that went away (`| head`) is not an error.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Ok(())
}

/// A reply as `key: value` lines, nested keys joined with dots (`total.reads: 12`).
fn tree(prefix: &str, value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                tree(&key, v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                tree(&format!("{prefix}.{i}"), v, out);
            }
        }
        serde_json::Value::String(s) => *out += &format!("{prefix}: {s}\n"),
        other => *out += &format!("{prefix}: {other}\n"),
    }
}

/// `vblkd bench ARGS` is `vblkd-bench ARGS`, as `git foo` is `git-foo`: the benchmark tool is
/// its own program (it drives any vhost-user-blk daemon, and its plotting and client libraries
/// stay out of the daemon). The one beside this executable is preferred, so that a build tree
/// or an install directory is used as a whole; otherwise PATH decides.
fn bench(args: &[OsString]) -> Result<(), Box<dyn std::error::Error>> {
    const BENCH: &str = "vblkd-bench";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(BENCH)))
        .filter(|path| path.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from(BENCH));
    // exec only returns on failure.
    let err = std::process::Command::new(&program).args(args).exec();
    Err(format!(
        "cannot run {} ({err}); build it with `cargo build --release -p {BENCH}`, or put it on PATH",
        program.display()
    )
    .into())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Serve(args), Some(serve)) =
        (&mut cli.command, matches.subcommand_matches("serve"))
    {
        args.explicit = serve
            .ids()
            .filter(|id| {
                serve.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
            })
            .filter_map(|id| LOCAL_DISK_OPTIONS.into_iter().find(|o| *o == id.as_str()))
            .collect();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Ctl(args) => ctl(&args),
        Command::Bench { args } => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vblkd: error: {e}");
            ExitCode::from(2)
        }
    }
}
