//! `vblkd bench matrix`: every aio × cache mode of vblkd and of qemu-storage-daemon, the null
//! disks of both, and the direct reference, over one grid of workloads, in one run — so that
//! the report's ratios compare numbers taken minutes apart on the same machine.
//!
//! Daemons are started here, one configuration at a time, pinned to the last CPU while the
//! load threads are pinned to the first (when there are at least two), so that every daemon
//! is measured the same way. Page caches are dropped between configurations when we are root.
//! A run that fails is recorded as failed, never dropped.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use vblkd::service::notify::NotifySocket;

use super::report;
use super::results::{Config, Peer, Row};
use super::{run, Endpoint, RunResult, Rw, Watched, Workload};

#[derive(Debug, Clone)]
pub struct MatrixOptions {
    pub disk: PathBuf,
    /// Size of the disk file to create when it does not exist.
    pub size: u64,
    pub out: PathBuf,
    pub seconds: f64,
    pub ramp: f64,
    pub pin: bool,
    /// The vblkd program to measure.
    pub vblkd: PathBuf,
    /// Extra arguments for every vblkd daemon.
    pub vblkd_args: Vec<String>,
    /// Also run vblkd with this --poll-us, where polling matters.
    pub poll_us: u32,
    /// A run with more steal than this (percent) is repeated, up to `retries` times, and the
    /// quietest try kept.
    pub max_steal: f64,
    pub retries: u32,
}

/// The `vblkd` in this program's directory (a build tree or an install directory holds both),
/// or else plain `vblkd`, for PATH to find.
pub fn vblkd_beside_this_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("vblkd")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("vblkd"))
}

const AIO_MODES: [&str; 3] = ["io_uring", "native", "threads"];
const CACHE_MODES: [&str; 3] = ["none", "writeback", "directsync"];
const DAEMON_QUEUES: usize = 2;

/// The configurations of a matrix; vblkd also runs with `--poll-us poll_us` in the modes where
/// polling matters (null, io_uring and native with O_DIRECT).
pub fn configs(with_qsd: bool, poll_us: u32) -> Vec<Config> {
    let config = |peer, aio: Option<&str>, cache: &str, poll_us| Config {
        peer,
        aio: aio.map(str::to_owned),
        cache: cache.to_owned(),
        poll_us,
    };
    let mut out = vec![config(Peer::Direct, Some("io_uring"), "none", None)];
    let peers: &[Peer] = if with_qsd {
        &[Peer::Vblkd, Peer::Qsd]
    } else {
        &[Peer::Vblkd]
    };
    for &peer in peers {
        out.push(config(peer, None, "none", None));
        for aio in AIO_MODES {
            for cache in CACHE_MODES {
                // Linux AIO blocks without O_DIRECT; both daemons refuse it.
                if aio == "native" && cache == "writeback" {
                    continue;
                }
                out.push(config(peer, Some(aio), cache, None));
            }
        }
    }
    out.push(config(Peer::Vblkd, None, "none", Some(poll_us)));
    out.push(config(Peer::Vblkd, Some("io_uring"), "none", Some(poll_us)));
    out.push(config(Peer::Vblkd, Some("native"), "none", Some(poll_us)));
    out
}

pub fn grid(seconds: f64, ramp: f64) -> Vec<Workload> {
    let mut out = Vec::new();
    for queues in [1, DAEMON_QUEUES] {
        for (rw, bs, iodepth) in [
            (Rw::Randread, 4096, 1),
            (Rw::Randread, 4096, 32),
            (Rw::Randwrite, 4096, 1),
            (Rw::Randwrite, 4096, 32),
            (Rw::Randread, 64 << 10, 8),
            (Rw::Read, 1 << 20, 4),
            (Rw::Write, 1 << 20, 4),
        ] {
            out.push(Workload {
                rw,
                bs,
                iodepth,
                queues,
                seconds,
                ramp,
                rate: None,
            });
        }
    }
    out
}

fn qsd_available() -> bool {
    Command::new("qemu-storage-daemon")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A started daemon; stopped (SIGTERM, then SIGKILL) on drop.
struct RunningDaemon {
    pid: u32,
    child: Option<Child>,
    socket: PathBuf,
}

impl RunningDaemon {
    /// Sends `signal` (0: none, only checks); false if the process is gone.
    fn signal(&self, signal: i32) -> bool {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return false;
        };
        // SAFETY: kill takes plain integers; the pid is a daemon we started.
        unsafe { libc::kill(pid, signal) == 0 }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let gone = match &mut self.child {
                Some(child) => child.try_wait().map(|s| s.is_some()).unwrap_or(true),
                None => !self.signal(0),
            };
            if gone {
                break;
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn pin_command(cmd: &mut Command, cpus: Vec<usize>) {
    // SAFETY: the closure only calls sched_setaffinity (async-signal-safe) before exec.
    unsafe {
        cmd.pre_exec(move || super::pin_current_thread(&cpus));
    }
}

fn start_daemon(
    config: &Config,
    opts: &MatrixOptions,
    dir: &Path,
    daemon_cpus: &[usize],
) -> Result<RunningDaemon, String> {
    let socket = dir.join(format!("{}.sock", config.peer.name()));
    let _ = std::fs::remove_file(&socket);
    match config.peer {
        Peer::Direct => Err("the direct reference has no daemon".into()),
        Peer::Vblkd => {
            let mut cmd = Command::new(&opts.vblkd);
            cmd.arg("serve")
                .arg("--socket")
                .arg(&socket)
                .arg("--num-queues")
                .arg(DAEMON_QUEUES.to_string());
            match &config.aio {
                Some(aio) => {
                    cmd.arg("--disk").arg(&opts.disk).args([
                        "--aio",
                        aio,
                        "--cache",
                        &config.cache,
                    ]);
                }
                None => {
                    cmd.arg("--disk")
                        .arg(format!("null:{}", file_len(&opts.disk)?));
                }
            }
            if let Some(poll_us) = config.poll_us {
                cmd.arg("--poll-us").arg(poll_us.to_string());
            }
            cmd.args(&opts.vblkd_args);
            // Its log goes to a file, read back only to say why it did not come up.
            let log_path = dir.join("vblkd.log");
            let log = std::fs::File::create(&log_path)
                .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
            let ready = NotifySocket::bind(&dir.join("vblkd-notify.sock"))
                .map_err(|e| format!("cannot make a notify socket in {}: {e}", dir.display()))?;
            cmd.env("RUST_LOG", "info")
                .env(vblkd::service::notify::NOTIFY_SOCKET, ready.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            pin_command(&mut cmd, daemon_cpus.to_vec());
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", opts.vblkd.display()))?;
            let listening = ready
                .wait_for("READY=1", Duration::from_secs(30), || {
                    child.try_wait().map_or(true, |status| status.is_some())
                })
                .map_err(|e| e.to_string())?;
            if !listening {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("vblkd did not come up: {}", log.trim()));
            }
            Ok(RunningDaemon {
                pid: child.id(),
                child: Some(child),
                socket,
            })
        }
        Peer::Qsd => {
            let blockdev = match &config.aio {
                Some(aio) => {
                    let direct = matches!(config.cache.as_str(), "none" | "directsync");
                    format!(
                        "driver=file,node-name=disk,filename={},aio={aio},cache.direct={}",
                        opts.disk.display(),
                        if direct { "on" } else { "off" }
                    )
                }
                None => format!(
                    "driver=null-co,node-name=disk,size={}",
                    file_len(&opts.disk)?
                ),
            };
            let writethrough = if config.cache == "directsync" {
                "on"
            } else {
                "off"
            };
            let pidfile = dir.join("qsd.pid");
            let _ = std::fs::remove_file(&pidfile);
            let mut cmd = Command::new("qemu-storage-daemon");
            cmd.arg("--blockdev")
                .arg(blockdev)
                .arg("--export")
                .arg(format!(
                    "type=vhost-user-blk,id=export,node-name=disk,addr.type=unix,addr.path={},writable=on,num-queues={DAEMON_QUEUES},writethrough={writethrough}",
                    socket.display()
                ))
                .arg("--daemonize")
                .arg("--pidfile")
                .arg(&pidfile)
                .stdin(Stdio::null());
            pin_command(&mut cmd, daemon_cpus.to_vec());
            // With --daemonize the parent exits once the export is ready.
            let out = cmd
                .output()
                .map_err(|e| format!("cannot start qemu-storage-daemon: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "qemu-storage-daemon failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let pid = std::fs::read_to_string(&pidfile)
                .map_err(|e| format!("no pidfile from qemu-storage-daemon: {e}"))?
                .trim()
                .parse()
                .map_err(|e| format!("bad pidfile: {e}"))?;
            Ok(RunningDaemon {
                pid,
                child: None,
                socket,
            })
        }
    }
}

fn file_len(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Creates the disk file, filled with non-zero data so that reads do real I/O (a sparse or
/// fallocated file would be read as zeroes without touching the device).
fn prepare_disk(path: &Path, size: u64) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    eprintln!(
        "creating {} ({} MiB of data)...",
        path.display(),
        size >> 20
    );
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut chunk = vec![0; 1 << 20];
    super::fill_with_data(&mut chunk);
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).map_or(chunk.len(), |left| left.min(chunk.len()));
        f.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| e.to_string())
}

fn drop_caches() {
    if let Ok(mut f) = OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
    {
        // SAFETY: sync takes no arguments.
        unsafe { libc::sync() };
        let _ = f.write_all(b"3\n");
    }
}

/// (daemon CPUs, load CPUs): the last CPU for the daemon, the first for the load.
fn cpu_split(pin: bool) -> (Vec<usize>, Vec<usize>) {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if !pin || n < 2 {
        return (Vec::new(), Vec::new());
    }
    (vec![n - 1], vec![0])
}

/// Runs the whole matrix and writes report.md, results.json and the charts into `opts.out`.
pub fn run_matrix(opts: &MatrixOptions) -> Result<PathBuf, String> {
    prepare_disk(&opts.disk, opts.size)?;
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("cannot create {}: {e}", opts.out.display()))?;
    let work = tempfile_dir()?;
    let with_qsd = qsd_available();
    if !with_qsd {
        eprintln!(
            "qemu-storage-daemon not found: comparing with the direct reference only (scripts/setup installs it)"
        );
    }
    let configs = configs(with_qsd, opts.poll_us);
    let grid = grid(opts.seconds, opts.ramp);
    let (daemon_cpus, load_cpus) = cpu_split(opts.pin);

    let progress = ProgressBar::new((configs.len() * grid.len()) as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} (eta {eta}) {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    for config in &configs {
        drop_caches();
        let daemon = match config.peer {
            Peer::Direct => Ok(None),
            _ => start_daemon(config, opts, &work, &daemon_cpus).map(Some),
        };
        // What each run of this configuration drives and watches, or why it cannot run.
        let setup = daemon.as_ref().map(|daemon| match daemon {
            None => (Endpoint::Direct(opts.disk.clone()), Watched::default()),
            Some(d) => {
                let watched = Watched {
                    daemon: Some(d.pid),
                    backend: None,
                };
                (Endpoint::Socket(d.socket.clone()), watched)
            }
        });
        // Dropping caches syncs the whole machine; the disk can stay busy for seconds after.
        // A discarded warm-up run absorbs that before anything is recorded.
        if let (Ok((endpoint, _)), Some(first)) = (&setup, grid.first()) {
            progress.set_message(format!("{}: warm-up", config.label()));
            let warm_up = Workload {
                seconds: opts.seconds.max(1.0),
                ramp: 0.0,
                ..first.clone()
            };
            let _ = run(endpoint, &warm_up, Watched::default(), &load_cpus);
        }
        for w in &grid {
            progress.set_message(format!("{}: {}", config.label(), w.label()));
            let result = match &setup {
                Err(e) => Err((*e).clone()),
                Ok((endpoint, watched)) => quietest_run(opts, || {
                    run(endpoint, w, *watched, &load_cpus).map_err(|e| e.to_string())
                }),
            };
            let result = result.and_then(|r| {
                if r.errors > 0 {
                    Err(format!("{} of the requests failed", r.errors))
                } else {
                    Ok(r)
                }
            });
            if let Err(e) = &result {
                progress.println(format!("FAILED {} {}: {e}", config.label(), w.label()));
            }
            rows.push(Row {
                config: config.clone(),
                workload: w.clone(),
                result,
            });
            progress.inc(1);
        }
        drop(daemon);
    }
    progress.finish_with_message("done");
    let _ = std::fs::remove_dir_all(&work);

    let json = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
    std::fs::write(opts.out.join("results.json"), json).map_err(|e| e.to_string())?;
    let context = report::Context {
        disk: opts.disk.clone(),
        disk_bytes: file_len(&opts.disk)?,
        seconds: opts.seconds,
        ramp: opts.ramp,
        daemon_cpus,
        load_cpus,
        vblkd_args: opts.vblkd_args.clone(),
        poll_us: opts.poll_us,
        max_steal: opts.max_steal,
        retries: opts.retries,
    };
    report::write(&opts.out, &rows, &context)
}

/// Runs `run` until a try has at most `max_steal` percent of steal or `retries` more tries were
/// made; the quietest try. On a shared VM the hypervisor's share moves a run's figures by
/// several times (docs/benchmarks.md), more than any difference between the daemons.
fn quietest_run(
    opts: &MatrixOptions,
    mut run: impl FnMut() -> Result<RunResult, String>,
) -> Result<RunResult, String> {
    let mut best = run()?;
    for _ in 0..opts.retries {
        if best.steal_percent <= opts.max_steal {
            break;
        }
        let again = run()?;
        if again.steal_percent < best.steal_percent {
            best = again;
        }
    }
    Ok(best)
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("vblkd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
