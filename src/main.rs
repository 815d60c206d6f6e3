//! The `vblkd` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use vblkd::daemon::{self, ServeOptions};
use vblkd::disk::{AioMode, CacheMode, Disk, FileDisk, FileDiskOptions, SERIAL_LEN};

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
}

#[derive(Args)]
struct ServeArgs {
    /// The vhost-user unix socket to listen on (replaced if it exists).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// A regular file or a block device.
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
    /// Threads per queue for --aio threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
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

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let disk = FileDisk::open(&FileDiskOptions {
        path: args.disk.clone(),
        size: args.size,
        aio: args.aio,
        cache: args.cache,
        read_only: args.read_only,
        logical_block_size: args.logical_block_size,
        serial: args.serial,
        threads: usize::from(args.threads),
    })?;
    let info = disk.info();
    log::info!(
        "serving {} ({} bytes, {}-byte blocks{}) with aio={:?} cache={:?}, {} queue(s) of {}",
        args.disk.display(),
        info.capacity,
        info.logical_block_size,
        if info.read_only { ", read-only" } else { "" },
        disk.aio(),
        args.cache,
        args.num_queues,
        args.queue_size,
    );
    let disk: Arc<dyn Disk> = Arc::new(disk);
    daemon::serve(
        disk,
        &ServeOptions {
            socket: args.socket,
            num_queues: args.num_queues,
            queue_size: args.queue_size,
        },
    )?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = daemon::block_termination_signals() {
        eprintln!("vblkd: error: cannot block termination signals: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vblkd: error: {e}");
            ExitCode::from(2)
        }
    }
}
