//! The `vblkd-bench` command line (also reached as `vblkd bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use vblkd_bench::{matrix, Endpoint, Rw, Watched, Workload};

#[derive(Parser)]
#[command(
    version,
    about = "Measure a vhost-user-blk daemon (vblkd, qemu-storage-daemon, ...) against the same work done directly on the disk"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One workload against one daemon's socket, or directly against a file.
    Run(RunArgs),
    /// Every aio and cache mode of vblkd and qemu-storage-daemon, the null disks and the
    /// direct reference, over a grid of workloads; writes report.md and SVG charts.
    Matrix(MatrixArgs),
}

#[derive(Args)]
struct MatrixArgs {
    /// The disk file to benchmark on; created (filled with data) if missing.
    #[arg(long, value_name = "FILE")]
    disk: PathBuf,
    /// Size of the disk file when it has to be created.
    #[arg(long, default_value = "1G", value_parser = vblkd::util::size::parse)]
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
    /// Also measure vblkd with --poll-us set to this, where polling matters (null disk,
    /// io_uring and native with O_DIRECT): by default 0, polling off beside the default rows;
    /// a ceiling above the disk's latency (e.g. 200) shows what covering the disk gains at QD1.
    #[arg(long, default_value_t = 0)]
    poll_us: u32,
    /// Repeat a run during which the machine's hypervisor took more than this share of its CPU
    /// time (steal, in percent), and keep the quietest of the tries.
    #[arg(long, default_value_t = 5.0)]
    max_steal: f64,
    /// How many times at most a run is repeated for --max-steal.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// The vblkd to measure; default: the one beside this program, else on PATH.
    #[arg(long, value_name = "PATH")]
    vblkd: Option<PathBuf>,
    /// Extra arguments for every vblkd daemon, e.g. --vblkd-arg=--threads=16.
    #[arg(long = "vblkd-arg", value_name = "ARG", allow_hyphen_values = true)]
    vblkd_args: Vec<String>,
}

#[derive(Args)]
#[group(id = "endpoint", required = true, multiple = false)]
struct EndpointArgs {
    /// A vhost-user-blk socket (vblkd, qemu-storage-daemon, ...).
    #[arg(long, value_name = "PATH", group = "endpoint")]
    socket: Option<PathBuf>,
    /// A file or block device, driven directly with io_uring and O_DIRECT, no daemon: the
    /// reference a daemon is compared with.
    #[arg(long, value_name = "FILE", group = "endpoint")]
    direct: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    /// Block size; suffixes K, M.
    #[arg(long, default_value = "4k", value_parser = vblkd::util::size::parse)]
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
    backend_pid: Option<u32>,
    /// Pin the load threads to these CPUs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = match (args.endpoint.socket, args.endpoint.direct) {
        (Some(socket), _) => Endpoint::Socket(socket),
        (None, Some(file)) => Endpoint::Direct(file),
        (None, None) => unreachable!("clap requires one endpoint"),
    };
    if !(args.seconds > 0.0 && args.ramp >= 0.0) {
        return Err("--seconds must be positive and --ramp not negative".into());
    }
    if args.bs == 0 || args.bs % 512 != 0 {
        return Err(format!("--bs {} is not a multiple of 512", args.bs).into());
    }
    let bs = usize::try_from(args.bs)
        .ok()
        .filter(|&bs| bs as u64 <= vblkd_bench::MAX_BLOCK_SIZE)
        .ok_or_else(|| {
            format!(
                "--bs {} is larger than {}",
                args.bs,
                vblkd::util::size::label(vblkd_bench::MAX_BLOCK_SIZE)
            )
        })?;
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    let workload = Workload {
        rw: args.rw,
        bs,
        iodepth: usize::from(args.iodepth),
        queues: usize::from(args.queues),
        seconds: args.seconds,
        ramp: args.ramp,
        rate: args.rate,
    };
    let watched = Watched {
        daemon: args.pid,
        backend: args.backend_pid,
    };
    let result = vblkd_bench::run(&endpoint, &workload, watched, &args.cpus)?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", vblkd_bench::format_result(&result));
    }
    Ok(())
}

fn matrix(args: MatrixArgs) -> Result<(), Box<dyn std::error::Error>> {
    let report = matrix::run_matrix(&matrix::MatrixOptions {
        disk: args.disk,
        size: args.size,
        out: args.out,
        seconds: args.seconds,
        ramp: args.ramp,
        pin: !args.no_pin,
        vblkd: args.vblkd.unwrap_or_else(matrix::vblkd_beside_this_program),
        vblkd_args: args.vblkd_args,
        poll_us: args.poll_us,
        max_steal: args.max_steal,
        retries: args.retries,
    })?;
    println!("report written to {}", report.display());
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Matrix(args) => matrix(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vblkd bench: error: {e}");
            ExitCode::from(2)
        }
    }
}
