//! The `vblkd` command line: arguments in, typed configuration out, and the library's
//! [`vblkd::commands`] do the rest. Every error ends the program with status 2 and one line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use strum::VariantNames;

use vblkd::commands::{self, AoeExportConfig, ServeConfig};
use vblkd::disk::{AioMode, CacheMode, DiskKind, DiskOptions, DiskSpec, Locking, SERIAL_LEN};
use vblkd::export::ExportSpec;
use vblkd::queue::controls::{ErrorPolicy, OnError};
use vblkd::queue::throttle::{ThrottleConfig, ThrottleError};
use vblkd::sandbox::{Identity, SeccompMode};
use vblkd::service::daemon::{group_id, user_id};
use vblkd::service::status::Command as ControlCommand;
use vblkd::util::size;

/// The default ceiling of the polling window for files, block devices and the null disk.
/// Measured (docs/benchmarks.md, "Polling by default"): a guest turns a batch round in
/// 30-50 µs on these VMs, so 50 µs covers the wait for its next kick at queue depth, where
/// polling saves a sleep and a wake-up per batch (the null disk 1.8-2.6x as fast, at less CPU
/// per request); 32 µs did as well there but covered neither wait at QD1, where it was slower
/// than no polling and 50 µs 40 µs faster. At light paced loads every wait is longer than
/// 50 µs, the windows stay closed, and it costs no CPU.
const DEFAULT_POLL_US: u32 = 50;

/// The polling ceiling a disk gets without `--poll-us`. AoE disks do not poll by default: their
/// engine gathers replies on a timer instead, which polling defeats (4k QD32 against vblade:
/// 8-20 % fewer IOPS at 1.6-1.9x the CPU per I/O, the poller spinning on the receive ring).
/// Nor do RBD disks: librbd's own threads do the I/O on the daemon's CPUs, where a spinning
/// queue thread competes with them (not measured, so not switched on).
fn default_poll_us(disk: DiskKind) -> u32 {
    match disk {
        DiskKind::File | DiskKind::Null => DEFAULT_POLL_US,
        DiskKind::Aoe | DiskKind::Rbd => 0,
    }
}

/// The queue threads a device gets without `--queue-threads`: one per queue, but no more than
/// the CPUs this process may run on (its affinity and cgroup quota). Beyond that, polling
/// threads only take turns on a CPU: two queues pinned to one CPU did as well with one thread
/// polling both as with two pollers, and spun one thread instead of two (docs/benchmarks.md,
/// "Queue threads").
fn default_queue_threads(num_queues: u16) -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    num_queues
        .min(u16::try_from(cpus).unwrap_or(u16::MAX))
        .max(1)
}

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
    Serve(Box<ServeArgs>),
    /// Export disks to ATA-over-Ethernet initiators (Linux's aoe driver, `serve --disk
    /// aoe://...`, anything that works with vblade) until SIGINT or SIGTERM.
    ///
    /// Linux's aoe driver never sends FLUSH CACHE: for its writes to be durable when they
    /// complete, export with --cache writethrough or directsync.
    AoeExport(Box<AoeExportArgs>),
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
    /// Print the reply as one JSON object.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// What the daemon serves: the disk, its size and block sizes, the queues.
    Info,
    /// Requests and bytes by kind, errors, refused requests by reason, in flight now,
    /// submissions and guest notifications: in total and per queue.
    Stats,
    /// Grow the disk while the guest runs, and tell the guest. A file grows to SIZE; for a
    /// block device or an RBD image resized by other means, leave SIZE out. Shrinking is
    /// refused.
    Resize {
        /// The new size; suffixes K, M, G, T.
        #[arg(value_parser = size::parse)]
        size: Option<u64>,
    },
    /// Replace the I/O limits while the guest runs, within a second: the same KEY=VALUE list
    /// as `serve --throttle` (`iops-total=2000,bps-total=50M`); an empty string removes them.
    SetLimits {
        #[arg(value_name = "LIMITS", value_parser = parse_limits)]
        limits: ThrottleConfig,
    },
    /// Resume a disk paused after a failed request (`--werror`/`--rerror`): the held requests
    /// are done again, and the guest's I/O goes on. Fix the cause first (free space).
    Resume,
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
    #[arg(long, value_name = "NAME", value_parser = group_id)]
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
    #[arg(long, value_name = "DISK")]
    disk: DiskSpec,
    #[command(flatten)]
    file: FileArgs,
    /// Number of virtqueues, each with its own engine.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    num_queues: u16,
    /// Threads serving the virtqueues: queue q is served by thread q mod N, which polls its
    /// queues together [default: one per queue, but no more than the CPUs vblkd may run on —
    /// more polling threads than CPUs only take turns].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    queue_threads: Option<u16>,
    /// Entries per virtqueue (a power of two).
    #[arg(long, default_value_t = 256, value_parser = parse_queue_size)]
    queue_size: u16,
    /// Refuse writes; the guest sees a read-only disk.
    #[arg(long)]
    read_only: bool,
    /// The sector size the guest sees (512 or 4096) [default: 512].
    #[arg(long, value_parser = parse_block_size)]
    logical_block_size: Option<u32>,
    /// Serial number returned to the guest (at most 20 bytes); defaults to the disk's name.
    #[arg(long, value_name = "STR", value_parser = parse_serial)]
    serial: Option<String>,
    /// Busy-poll each queue (and its engine) for up to this many microseconds after its last
    /// work before going to sleep, in a window that adapts to how soon work comes (like QEMU's
    /// poll-max-ns): on a busy queue it saves a sleep and a wake-up per batch, on an idle one it
    /// closes. A ceiling above the disk's latency also covers the disk, for lower QD1 latency
    /// at the price of a spinning CPU. 0 = off [default: 50; 0 for AoE and RBD disks].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    poll_us: Option<u32>,
    /// AoE disks: fail a request still unanswered after this many seconds [default: 60].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    aoe_deadline: Option<Duration>,
    /// RBD disks: give up reaching the Ceph cluster at start after this many seconds
    /// [default: 10].
    #[arg(long, value_name = "SECS", value_parser = parse_connect_timeout)]
    connect_timeout: Option<Duration>,
    /// Files with --aio io_uring and O_DIRECT (cache=none, directsync): register the guest's
    /// memory with each ring, for less CPU per request, if it is at most MAX bytes (suffixes K,
    /// M, G, T). This pins all of the guest's memory (faulting it in) while the frontend is
    /// connected, and the frontend decides how large it is: MAX bounds what it can make vblkd
    /// pin.
    #[arg(long, value_name = "MAX", value_parser = size::parse)]
    fixed_buffers: Option<u64>,
    /// The destination of a live migration (as QEMU's -incoming): start without the image's
    /// locks, and take them when the frontend starts the device — after the source gave them
    /// up at the switch-over.
    #[arg(long)]
    incoming: bool,
    /// I/O limits for the whole disk, with QEMU's names: iops-total, iops-read, iops-write,
    /// bps-total, bps-read, bps-write (bytes: suffixes K, M, G, T), each also with -max (a
    /// burst rate) and -max-length (its seconds), and iops-size. E.g.
    /// iops-total=2000,bps-total=50M. `vblkd ctl set-limits` changes them.
    #[arg(long, value_name = "KEY=VALUE,...", value_parser = parse_limits, default_value = "")]
    throttle: ThrottleConfig,
    /// What a failed write (or write-zeroes, discard, flush) does, as QEMU's werror=: report
    /// it to the guest; stop: hold it and pause the disk until `vblkd ctl resume`; enospc:
    /// stop if the disk is full, report anything else.
    #[arg(long, default_value = "enospc", value_parser = PossibleValuesParser::new(OnError::VARIANTS)
        .map(|s| s.parse::<OnError>().expect("a listed value")))]
    werror: OnError,
    /// What a failed read does, as QEMU's rerror=: report it to the guest, or stop (hold it
    /// and pause the disk until `vblkd ctl resume`).
    #[arg(long, default_value = "report", value_parser = PossibleValuesParser::new(["report", "stop"])
        .map(|s| s.parse::<OnError>().expect("a listed value")))]
    rerror: OnError,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// The sandbox: `serve`'s and `aoe-export`'s.
#[derive(Args)]
struct SandboxArgs {
    /// System call filters: kill the process on a call outside them; log it and allow it
    /// (to find what a new setup needs: `journalctl -k` or `dmesg`, `type=1326`); or off.
    #[arg(long, default_value = "kill", value_parser = PossibleValuesParser::new(SeccompMode::VARIANTS)
        .map(|s| s.parse::<SeccompMode>().expect("a listed value")))]
    seccomp: SeccompMode,
    /// Serve as this user (a name or a number) once the disks and the sockets are open, with
    /// no capabilities left — but CAP_NET_RAW for `serve` on an AoE disk, whose engines open
    /// raw sockets for each frontend. The group is the user's own unless --group says
    /// otherwise.
    #[arg(long, value_name = "NAME", value_parser = user_id)]
    user: Option<(libc::uid_t, libc::gid_t)>,
    /// With --user: serve as this group instead of the user's own.
    #[arg(long, value_name = "NAME", value_parser = group_id, requires = "user")]
    group: Option<libc::gid_t>,
}

impl SandboxArgs {
    /// Who `--user` and `--group` say to serve as.
    fn identity(&self) -> Option<Identity> {
        self.user.map(|(uid, gid)| Identity {
            uid,
            gid: self.group.unwrap_or(gid),
        })
    }
}

/// How a file or block device is opened and driven: `serve`'s and `aoe-export`'s.
#[derive(Args)]
struct FileArgs {
    /// Files: create the file with this size, or grow it (sparse); suffixes K, M, G, T
    /// (powers of 1024).
    #[arg(long, value_name = "BYTES", value_parser = size::parse)]
    size: Option<u64>,
    /// Files: the I/O engine, as QEMU's aio= option [default: io_uring].
    #[arg(long, value_parser = PossibleValuesParser::new(AioMode::VARIANTS)
        .map(|s| s.parse::<AioMode>().expect("a listed value")))]
    aio: Option<AioMode>,
    /// Files: host cache mode, as QEMU's cache= option [default: none].
    #[arg(long, value_parser = PossibleValuesParser::new(CacheMode::VARIANTS)
        .map(|s| s.parse::<CacheMode>().expect("a listed value")))]
    cache: Option<CacheMode>,
    /// Files with --aio threads: threads per queue (aoe-export: per disk and interface)
    /// [default: 16].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// Files and block devices: lock the image as QEMU does (OFD byte-range locks), so that
    /// no two processes write it; off for a cluster file system that shares it on purpose
    /// [default: auto: lock where the file system can].
    #[arg(long, value_parser = PossibleValuesParser::new(Locking::VARIANTS)
        .map(|s| s.parse::<Locking>().expect("a listed value")))]
    locking: Option<Locking>,
}

#[derive(Args)]
struct AoeExportArgs {
    /// The network interface to serve on; repeat it to serve every disk on several.
    #[arg(long = "interface", short = 'i', value_name = "IFACE", required = true)]
    interfaces: Vec<String>,
    /// The disks, each as e<shelf>.<slot>=DISK (what Linux's aoe driver calls
    /// /dev/etherd/e<shelf>.<slot>); DISK is a file, a block device, null:SIZE or
    /// rbd:POOL/IMAGE, as `serve --disk` takes it.
    #[arg(value_name = "e<shelf>.<slot>=DISK", required = true)]
    exports: Vec<ExportSpec>,
    #[command(flatten)]
    file: FileArgs,
    /// Refuse writes (ATA ABRT); initiators see a read-only disk.
    #[arg(long)]
    read_only: bool,
    /// Commands each disk holds at once, as announced to initiators (vblade's -b).
    #[arg(long, value_name = "N", default_value_t = vblkd::export::DEFAULT_BUFFER_COUNT,
        value_parser = clap::value_parser!(u16).range(1..=4096))]
    buffers: u16,
    /// Also serve a control socket here (mode 0600), for `vblkd ctl`: the exports, what each
    /// has done, resize.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Also serve what each export has done as Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

impl From<AoeExportArgs> for AoeExportConfig {
    fn from(args: AoeExportArgs) -> Self {
        AoeExportConfig {
            interfaces: args.interfaces,
            exports: args.exports,
            disk_options: DiskOptions {
                read_only: args.read_only,
                size: args.file.size,
                aio: args.file.aio,
                cache: args.file.cache,
                threads: args.file.threads,
                locking: args.file.locking,
                ..DiskOptions::default()
            },
            buffer_count: args.buffers,
            seccomp: args.sandbox.seccomp,
            control: args.control,
            metrics: args.metrics,
            identity: args.sandbox.identity(),
        }
    }
}

fn parse_limits(s: &str) -> Result<ThrottleConfig, String> {
    s.parse().map_err(|e: ThrottleError| e.to_string())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not a permission mode; write it in octal, e.g. 0660"))
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

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|secs| *secs > 0.0 && secs.is_finite())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("'{s}' is not a positive number of seconds"))
}

fn parse_connect_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs @ 1..=3600) => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "'{s}' is not a whole number of seconds from 1 to 3600"
        )),
    }
}

impl From<ServeArgs> for ServeConfig {
    fn from(args: ServeArgs) -> Self {
        let poll_us = args
            .poll_us
            .unwrap_or_else(|| default_poll_us(args.disk.kind()));
        ServeConfig {
            socket: args.socket,
            socket_mode: args.socket_mode,
            socket_group: args.socket_group,
            control: args.control,
            metrics: args.metrics,
            disk: args.disk,
            disk_options: DiskOptions {
                read_only: args.read_only,
                serial: args.serial,
                logical_block_size: args.logical_block_size,
                size: args.file.size,
                aio: args.file.aio,
                cache: args.file.cache,
                threads: args.file.threads,
                fixed_buffers: args.fixed_buffers,
                aoe_deadline: args.aoe_deadline,
                connect_timeout: args.connect_timeout,
                locking: args.file.locking,
                incoming: args.incoming,
            },
            num_queues: args.num_queues,
            queue_threads: args
                .queue_threads
                .unwrap_or_else(|| default_queue_threads(args.num_queues)),
            queue_size: args.queue_size,
            poll: (poll_us > 0).then(|| Duration::from_micros(u64::from(poll_us))),
            limits: args.throttle,
            seccomp: args.sandbox.seccomp,
            identity: args.sandbox.identity(),
            error_policy: ErrorPolicy {
                read: args.rerror,
                write: args.werror,
            },
        }
    }
}

impl From<CtlCommand> for ControlCommand {
    fn from(command: CtlCommand) -> Self {
        match command {
            CtlCommand::Info => ControlCommand::Info,
            CtlCommand::Stats => ControlCommand::Stats,
            CtlCommand::Resize { size } => ControlCommand::Resize { size },
            CtlCommand::SetLimits { limits } => ControlCommand::SetLimits(limits),
            CtlCommand::Resume => ControlCommand::Resume,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Serve(args) => commands::serve((*args).into()),
        Command::AoeExport(args) => commands::aoe_export((*args).into()),
        Command::Ctl(args) => {
            commands::ctl(&args.control, &args.command.into(), args.json).map_err(Into::into)
        }
        Command::Bench { args } => Err(commands::bench(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vblkd: error: {e}");
            ExitCode::from(2)
        }
    }
}
