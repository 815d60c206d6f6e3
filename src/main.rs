//! The `vblkd` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use vblkd::bench::{self, Rw, Target, Workload};
use vblkd::daemon::{self, ServeOptions};
use vblkd::disk::{
    AioMode, AoeDisk, CacheMode, Disk, FileDisk, FileDiskOptions, NullDisk, SERIAL_LEN,
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
    /// Measure a vhost-user-blk daemon (or a file, natively).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// One workload against one daemon socket, or natively against a file.
    Run(BenchRunArgs),
    /// Every aio and cache mode of vblkd and qemu-storage-daemon, the null disks and the
    /// native reference, over a grid of workloads; writes report.md and SVG charts.
    Matrix(BenchMatrixArgs),
}

#[derive(Args)]
struct BenchMatrixArgs {
    /// The disk file to benchmark on; created (filled with data) if missing.
    #[arg(long, value_name = "FILE")]
    disk: PathBuf,
    /// Size of the disk file when it has to be created.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Where report.md, results.json and the charts go.
    #[arg(long, value_name = "DIR", default_value = "bench-report")]
    out: PathBuf,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Warm-up seconds per run.
    #[arg(long, default_value_t = 0.5)]
    ramp: f64,
    /// Do not pin daemons and load threads to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Also measure vblkd with --poll-us set to this (0: skip those rows). The polling window
    /// adapts up to this ceiling, which must exceed the disk's latency for QD1 to gain.
    #[arg(long, default_value_t = 200)]
    poll_us: u32,
    /// Extra arguments for every vblkd daemon, e.g. --vblkd-arg=--threads=16.
    #[arg(long = "vblkd-arg", value_name = "ARG", allow_hyphen_values = true)]
    vblkd_args: Vec<String>,
}

#[derive(Args)]
#[group(id = "target", required = true, multiple = false)]
struct TargetArgs {
    /// A vhost-user-blk socket (vblkd, qemu-storage-daemon, ...).
    #[arg(long, value_name = "PATH", group = "target")]
    socket: Option<PathBuf>,
    /// A file or block device, driven with io_uring and O_DIRECT: the native reference.
    #[arg(long, value_name = "FILE", group = "target")]
    native: Option<PathBuf>,
}

#[derive(Args)]
struct BenchRunArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    /// Block size; suffixes K, M.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u64,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    iodepth: u16,
    /// Queues, one load thread each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Issue at most this many requests per second per queue (a light, steady load, e.g. to
    /// see what busy polling costs when the disk is nearly idle); default: as fast as possible.
    #[arg(long, value_name = "IOPS")]
    rate: Option<f64>,
    /// Length of the measured window.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Warm-up before measuring.
    #[arg(long, default_value_t = 1.0)]
    ramp: f64,
    /// The daemon's PID, to measure its CPU time and context switches per I/O.
    #[arg(long)]
    pid: Option<u32>,
    /// The PID of what the daemon talks to (e.g. vblade behind an AoE disk), to measure its CPU
    /// time per I/O too.
    #[arg(long)]
    target_pid: Option<u32>,
    /// Pin the load threads to these CPUs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// The vhost-user unix socket to listen on (replaced if it exists).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// A regular file or a block device; null:SIZE, a disk that does no I/O; or
    /// aoe://IFACE/e<shelf>.<slot>, an ATA-over-Ethernet target (e.g. vblade).
    #[arg(long, value_name = "PATH")]
    disk: PathBuf,
    /// Create the file with this size, or grow it (sparse); suffixes K, M, G, T (powers of 1024).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
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
    /// Threads per queue for --aio threads.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// With --aio io_uring and O_DIRECT (cache=none, directsync): register the guest's memory
    /// with each ring, for less CPU per request, if it is at most MAX bytes (suffixes K, M, G,
    /// T). This pins all of the guest's memory (faulting it in) while the frontend is
    /// connected, and the frontend decides how large it is: MAX bounds what it can make vblkd
    /// pin.
    #[arg(long, value_name = "MAX", value_parser = parse_size)]
    fixed_buffers: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown suffix '{c}'; use K, M, G or T")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size; write e.g. 1073741824 or 1G"))?;
    n.checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a usable size"))
}

fn parse_queue_size(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && (2..=32768).contains(&n) => Ok(n as u16),
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

fn open_disk(args: &ServeArgs) -> Result<Arc<dyn Disk>, Box<dyn std::error::Error>> {
    let spec = args.disk.to_str().unwrap_or_default();
    if spec.starts_with("aoe://") {
        if !(args.aoe_deadline > 0.0 && args.aoe_deadline.is_finite()) {
            return Err("--aoe-deadline must be a positive number of seconds".into());
        }
        let deadline = std::time::Duration::from_secs_f64(args.aoe_deadline);
        let disk = AoeDisk::open(spec, args.read_only, args.serial.as_deref(), deadline)?;
        return Ok(Arc::new(disk));
    }
    if let Some(size) = spec.strip_prefix("null:") {
        let size = parse_size(size).map_err(|e| format!("--disk null:SIZE: {e}"))?;
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
            socket: args.socket,
            num_queues: args.num_queues,
            queue_size: args.queue_size,
            poll: (args.poll_us > 0)
                .then(|| std::time::Duration::from_micros(u64::from(args.poll_us))),
        },
    )?;
    Ok(())
}

fn bench_run(args: BenchRunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let target = match (args.target.socket, args.target.native) {
        (Some(socket), _) => Target::Socket(socket),
        (None, Some(file)) => Target::Native(file),
        (None, None) => unreachable!("clap requires one target"),
    };
    if !(args.seconds > 0.0 && args.ramp >= 0.0) {
        return Err("--seconds must be positive and --ramp not negative".into());
    }
    if args.bs == 0 || args.bs % 512 != 0 {
        return Err(format!("--bs {} is not a multiple of 512", args.bs).into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    let workload = Workload {
        rw: args.rw,
        bs: args.bs as usize,
        iodepth: usize::from(args.iodepth),
        queues: usize::from(args.queues),
        seconds: args.seconds,
        ramp: args.ramp,
        rate: args.rate,
    };
    let watched = bench::Watched {
        daemon: args.pid,
        target: args.target_pid,
    };
    let result = bench::run(&target, &workload, watched, &args.cpus)?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", bench::format_result(&result));
    }
    Ok(())
}

fn bench_matrix(args: BenchMatrixArgs) -> Result<(), Box<dyn std::error::Error>> {
    let report = bench::matrix::run_matrix(&bench::matrix::MatrixOptions {
        disk: args.disk,
        size: args.size,
        out: args.out,
        seconds: args.seconds,
        ramp: args.ramp,
        pin: !args.no_pin,
        vblkd_args: args.vblkd_args,
        poll_us: args.poll_us,
    })?;
    println!("report written to {}", report.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(BenchCommand::Run(args)) => bench_run(args),
        Command::Bench(BenchCommand::Matrix(args)) => bench_matrix(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vblkd: error: {e}");
            ExitCode::from(2)
        }
    }
}
