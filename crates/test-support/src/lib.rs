//! What vblkd's tests share: the real `vblkd` binary under test ([`Daemon`]), driven as a real
//! vhost-user client would ([`Client`], the `blkio` crate's `virtio-blk-vhost-user` driver),
//! by a hand-made frontend that can misbehave ([`frontend`]), or by a QEMU guest ([`guest`]);
//! block devices that are slow on purpose ([`blockdev`]); a throwaway Ceph cluster
//! ([`ceph`]); and the one set of time limits every test waits with ([`limits`]).
//!
//! The suites that need root, QEMU, vblade or Ceph are `#[ignore]`d with the reason, so that
//! plain `cargo test` runs the rest anywhere and lists what it left out; `scripts/test` runs
//! them all (`--include-ignored`) after checking that what they need is there.

pub mod blockdev;
pub mod ceph;
pub mod desc;
pub mod frontend;
pub mod guest;
pub mod migration;
pub mod workload;

/// How long the tests wait for things, in one place.
pub mod limits {
    use std::time::Duration;

    /// A daemon's answer: a request completing, a reply to a message, a state the control
    /// socket reports, readiness after start.
    pub const REPLY: Duration = Duration::from_secs(30);
    /// A QEMU guest under TCG booting to its first command.
    pub const GUEST_BOOT: Duration = Duration::from_secs(300);
    /// A QEMU guest's whole run.
    pub const GUEST_RUN: Duration = Duration::from_secs(600);
    /// A guest's writes making no progress while a daemon is restarted under it.
    pub const STALL: Duration = Duration::from_secs(120);
}

use std::io::{BufRead, BufReader};
use std::mem::MaybeUninit;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blkio::{Blkio, Blkioq, MemoryRegion, ReqFlags};
use vblkd::service::notify::NotifySocket;
use vblkd::service::status::{Command as ControlCommand, Info, Stats};

/// A small deterministic generator, so failures reproduce: the benchmark's.
pub use vblkd_bench::rng::Rng;

/// `n` as an index or a length: every size in these tests fits (they run on 64-bit hosts).
pub fn usize_of(n: u64) -> usize {
    usize::try_from(n).expect("test sizes fit usize")
}

/// Byte `at` of a test pattern: `at * step` modulo a prime, so that every sector differs and a
/// misplaced sector shows.
pub fn pattern_byte(at: usize, step: usize) -> u8 {
    u8::try_from(at.wrapping_mul(step) % 251).expect("below 251")
}

/// The daemon under test: this build's, or another build named by `VBLKD_TEST_BIN` (to show
/// that a test fails on an older daemon, or to compare builds).
pub fn vblkd_bin() -> PathBuf {
    std::env::var_os("VBLKD_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| built("vblkd"))
}

/// A program this build made: beside the test executable's directory (`target/debug/deps`),
/// where cargo puts a package's binaries before it runs its tests.
pub fn built(program: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps/TEST");
    let path = dir.join(program);
    assert!(
        path.is_file(),
        "{} is not built; run the tests with cargo test (which builds it)",
        path.display()
    );
    path
}

/// A running daemon; stopped with SIGTERM (and checked to exit 0) by [`Daemon::stop`], killed
/// on drop otherwise. It always has a control socket, which is how a test learns what the
/// daemon did ([`Daemon::stats`], [`Daemon::info`]); its log is for people (and failure
/// messages), not for synchronising on.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    /// The control socket: the one given as `--control`, or one of the test's own.
    pub control: PathBuf,
    /// One connection to it, kept for every question a test asks (so that asking opens and
    /// closes nothing in the daemon).
    control_client: Mutex<Option<Box<vblkd::service::control::Client>>>,
    log: Arc<Mutex<String>>,
    /// Copies stderr into `log`; finishes when the daemon's stderr closes.
    reader: Option<std::thread::JoinHandle<()>>,
    /// Where the daemon's sd_notify messages go (kept, so that STOPPING=1 finds it).
    supervisor: NotifySocket,
}

impl Daemon {
    /// Starts `vblkd serve --socket DIR/vblkd.sock ARGS...` and waits until it listens.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        Self::start_with(&[], dir, args)
    }

    /// Starts a daemon on a new sparse file `DIR/disk.img` of `size` (e.g. "64M"), with
    /// `extra` arguments; returns it and the file's path.
    pub fn on_new_file(dir: &Path, size: &str, extra: &[&str]) -> (Daemon, PathBuf) {
        let disk = dir.join("disk.img");
        let mut args = vec!["--disk", disk.to_str().unwrap(), "--size", size];
        args.extend_from_slice(extra);
        (Self::start(dir, &args), disk)
    }

    /// Like [`Daemon::start`], run through `wrapper` (e.g. `ip netns exec NS`), which must
    /// exec vblkd in its own process.
    pub fn start_with(wrapper: &[&str], dir: &Path, args: &[&str]) -> Daemon {
        let socket = dir.join("vblkd.sock");
        let serve = ["serve".as_ref(), "--socket".as_ref(), socket.as_os_str()];
        Self::launch(wrapper, dir, &serve, args, socket.clone())
    }

    /// Starts `vblkd aoe-export ARGS...` through `wrapper` (e.g. `ip netns exec NS`) and waits
    /// until it serves.
    pub fn export_with(wrapper: &[&str], dir: &Path, args: &[&str]) -> Daemon {
        Self::launch(wrapper, dir, &["aoe-export".as_ref()], args, PathBuf::new())
    }

    /// Starts `vblkd SUBCOMMAND... ARGS...` (with a control socket of the test's own unless
    /// ARGS has one) and waits for its READY=1; `socket` is where its frontends connect.
    fn launch(
        wrapper: &[&str],
        dir: &Path,
        subcommand: &[&std::ffi::OsStr],
        args: &[&str],
        socket: PathBuf,
    ) -> Daemon {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        // Readiness is the daemon's READY=1 (sd_notify), sent once its socket listens.
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let ready = NotifySocket::bind(&dir.join(format!("notify-{n}.sock"))).unwrap();
        // A daemon that runs as another user (started through `setpriv`) must reach it too.
        std::fs::set_permissions(ready.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let given = args.iter().position(|a| *a == "--control");
        let control = match given.and_then(|i| args.get(i + 1)) {
            Some(path) => PathBuf::from(path),
            None => dir.join(format!("control-{n}.sock")),
        };
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(vblkd_bin());
                c
            }
            None => Command::new(vblkd_bin()),
        };
        command.args(subcommand).args(args);
        if given.is_none() {
            command.arg("--control").arg(&control);
        }
        let mut child = command
            .env(
                "RUST_LOG",
                std::env::var("VBLKD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env(vblkd::service::notify::NOTIFY_SOCKET, ready.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vblkd starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[vblkd] {line}");
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let listening = ready
            .wait_for("READY=1", limits::REPLY, || {
                child.try_wait().unwrap().is_some()
            })
            .unwrap();
        if !listening {
            let _ = child.kill();
            let status = child.wait().unwrap();
            reader.join().unwrap();
            panic!(
                "vblkd did not report READY=1 ({status}):\n{}",
                log.lock().unwrap()
            );
        }
        Daemon {
            child: Some(child),
            socket,
            control,
            control_client: Mutex::new(None),
            log,
            reader: Some(reader),
            supervisor: ready,
        }
    }

    /// Waits for the daemon to send `state` (one line, e.g. `STATUS=...`) to its supervisor
    /// (sd_notify); false if it does not within [`limits::REPLY`].
    pub fn wait_for_notify(&self, state: &str) -> bool {
        self.supervisor
            .wait_for(state, limits::REPLY, || false)
            .unwrap()
    }

    /// What the daemon logged so far (the reader may be a line behind).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Runs `command` on the daemon's control socket.
    pub fn ctl(&self, command: &ControlCommand) -> serde_json::Value {
        use vblkd::service::control::Client as ControlClient;
        let mut client = self.control_client.lock().unwrap();
        // The kept connection may have been closed for idleness (after minutes): then once
        // more on a new one.
        let kept = client.as_mut().map(|c| c.call(command));
        let answer = match kept {
            Some(Ok(answer)) => Ok(answer),
            _ => ControlClient::connect(&self.control).and_then(|mut fresh| {
                let answer = fresh.call(command);
                *client = Some(Box::new(fresh));
                answer
            }),
        };
        answer.unwrap_or_else(|e| panic!("control request {command:?} failed: {e}"))
    }

    /// What the daemon's queues have done.
    pub fn stats(&self) -> Stats {
        serde_json::from_value(self.ctl(&ControlCommand::Stats)).expect("a stats reply")
    }

    /// What the daemon serves.
    pub fn info(&self) -> Info {
        serde_json::from_value(self.ctl(&ControlCommand::Info)).expect("an info reply")
    }

    /// Waits until the daemon's statistics satisfy `cond`, failing the test (saying `what`
    /// did not happen) after [`limits::REPLY`].
    pub fn wait_for_stats(&self, what: &str, cond: impl FnMut(&Stats) -> bool) -> Stats {
        self.wait_for(what, Self::stats, cond)
    }

    /// Waits until what the daemon reports serving satisfies `cond` (see
    /// [`Daemon::wait_for_stats`]).
    pub fn wait_for_info(&self, what: &str, cond: impl FnMut(&Info) -> bool) -> Info {
        self.wait_for(what, Self::info, cond)
    }

    fn wait_for<T>(&self, what: &str, ask: fn(&Self) -> T, mut cond: impl FnMut(&T) -> bool) -> T {
        let mut last = None;
        eventually(what, limits::REPLY, || {
            let answer = ask(self);
            let holds = cond(&answer);
            last = Some(answer);
            holds
        });
        last.expect("asked at least once")
    }

    /// SIGKILL, as a crash would; returns the log.
    pub fn kill(mut self) -> String {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        self.log()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(self) -> ExitStatus {
        self.stop_with_log().0
    }

    /// SIGTERM, then wait for the exit status and the whole log, up to the last line.
    pub fn stop_with_log(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        (status, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How much a daemon's resident memory may move over many connections with the allocator's
/// bookkeeping; a leak of even one page per connection over hundreds exceeds it.
pub const RSS_SLACK_KIB: u64 = 1024;

/// The number of open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Waits until `daemon` has seen `connections` frontends come, and the last one go.
pub fn wait_for_disconnect(daemon: &Daemon, connections: u64) {
    daemon.wait_for_info("the frontend disconnecting", |info| {
        !info.frontend.connected && info.frontend.connections >= connections
    });
}

/// Runs a tool (`cmd[0]` with the rest as arguments) to completion and returns its stdout;
/// fails the test with its stderr if it fails, and `hint` (what it needs) either way.
pub fn run_tool(cmd: &[&str], hint: &str) -> Vec<u8> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {hint}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {} ({hint})",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `vblkd ARGS...` to completion, returning its exit code and stderr.
pub fn run_vblkd(args: &[&str]) -> (i32, String) {
    let out = Command::new(vblkd_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A connected blkio client with one shared buffer region.
pub struct Client {
    pub blkio: Blkio,
    pub queues: Vec<Blkioq>,
    region: MemoryRegion,
}

impl Client {
    pub fn connect(
        socket: &Path,
        num_queues: i32,
        read_only: bool,
        buffer_bytes: usize,
    ) -> blkio::Result<Client> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", socket.to_str().unwrap())?;
        if read_only {
            blkio.set_bool("read-only", true)?;
        }
        blkio.connect()?;
        blkio.set_i32("num-queues", num_queues)?;
        let queues = blkio.start()?.queues;
        let region = blkio.alloc_mem_region(buffer_bytes)?;
        blkio.map_mem_region(&region)?;
        Ok(Client {
            blkio,
            queues,
            region,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").unwrap()
    }

    /// The shared buffer region as a byte slice.
    pub fn buffers(&mut self) -> &mut [u8] {
        // SAFETY: the region is mapped for the client's lifetime and `&mut self` makes the
        // access unique; the daemon only touches it while a request we submitted is pending,
        // and callers only look at buffers of completed requests.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    pub fn buffer_ptr(&self, offset: usize) -> *mut u8 {
        assert!(offset < self.region.len);
        (self.region.addr + offset) as *mut u8
    }

    /// Waits for `n` completions on queue `q` and returns their results, by user_data.
    pub fn wait(&mut self, q: usize, n: usize) -> Vec<(usize, i32)> {
        let mut done = Vec::with_capacity(n);
        let mut completions: Vec<MaybeUninit<blkio::Completion>> =
            (0..n.max(1)).map(|_| MaybeUninit::uninit()).collect();
        while done.len() < n {
            let mut timeout = limits::REPLY;
            let want = n - done.len();
            let got = self.queues[q]
                .do_io(&mut completions[..want], want, Some(&mut timeout), None)
                .expect("do_io");
            assert!(
                got > 0,
                "request(s) on queue {q} did not complete within {:?}",
                limits::REPLY
            );
            for c in &completions[..got] {
                // SAFETY: do_io initialised the first `got` entries.
                let c = unsafe { c.assume_init_ref() };
                done.push((c.user_data, c.ret));
            }
        }
        done
    }

    /// One read of `len` bytes at `offset` into the start of the buffer region; returns the
    /// result code.
    /// Submits what was queued on queue `q`, without waiting for anything.
    pub fn submit(&mut self, q: usize) {
        let mut none: [MaybeUninit<blkio::Completion>; 0] = [];
        self.queues[q].do_io(&mut none, 0, None, None).unwrap();
    }

    pub fn read_sync(&mut self, q: usize, offset: u64, len: usize) -> i32 {
        let buf = self.buffer_ptr(0);
        self.queues[q].read(offset, buf, len, 0, ReqFlags::empty());
        self.wait(q, 1)[0].1
    }

    pub fn write_sync(&mut self, q: usize, offset: u64, data: &[u8]) -> i32 {
        self.buffers()[..data.len()].copy_from_slice(data);
        let buf = self.buffer_ptr(0);
        self.queues[q].write(offset, buf, data.len(), 0, ReqFlags::empty());
        self.wait(q, 1)[0].1
    }

    /// Reads the whole disk, `chunk` bytes at a time, into a vector.
    pub fn read_all(&mut self, q: usize, chunk: usize) -> Vec<u8> {
        let capacity = self.capacity();
        let mut out = Vec::with_capacity(usize_of(capacity));
        let mut pos = 0u64;
        while pos < capacity {
            let len = chunk.min(usize_of(capacity - pos));
            assert_eq!(self.read_sync(q, pos, len), 0, "read at {pos}");
            out.extend_from_slice(&self.buffers()[..len]);
            pos += len as u64;
        }
        out
    }
}

/// A directory for a test whose daemon runs as another user (`--user`, `setpriv`): in the
/// system's temporary directory, which every user can reach, and searchable by all — the build
/// tree may sit below a directory only its owner can enter (a clone in `mktemp -d`).
pub fn tempdir_for_another_user() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Asks `cond` every 10 ms until it holds, failing the test (saying `what` did not happen)
/// after `limit`. Only for states that no event announces: a used index moved while the
/// frontend's call eventfd is saturated, a socket file appeared, a count the control socket
/// reports reached a value.
pub fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Index of the first differing byte, for readable assertion messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}
