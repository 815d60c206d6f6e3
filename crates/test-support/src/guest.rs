//! Booting the QEMU test guest (qemu-scripts/) against a vblkd socket, and checking what it
//! reports and what it wrote.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use super::{limits, Daemon};

pub const DISK_BYTES: usize = 64 << 20;
const PATTERN_BYTES: usize = 4 << 20;

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../qemu-scripts")
}

pub fn guest_cache() -> PathBuf {
    std::env::var_os("VBLKD_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| scripts().join(".cache"))
}

/// Builds the guest once per test run (the tests below run in parallel).
pub fn build_guest() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(scripts().join("build-guest.sh"))
            .status()
            .expect("run build-guest.sh");
        assert!(
            status.success(),
            "qemu-scripts/build-guest.sh failed; see its message above"
        );
    });
}

/// Boots the guest against `socket`, runs the disk checks and returns its "VBLKD key value"
/// report lines once it powered off.
pub fn boot(socket: &std::path::Path) -> HashMap<String, String> {
    RunningGuest::start(socket, "checks")
        .wait_exit()
        .into_iter()
        .map(|line| match line.split_once(' ') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (line, String::new()),
        })
        .collect()
}

/// Boots the guest on `daemon`'s disk and checks its report: size, both queues, O_DIRECT
/// pattern round trips, the write cache switched off through the WCE byte; then that the bytes
/// behind the disk (what `backing` reads, once the daemon has stopped) hold what the guest
/// wrote. `serial`, if given, is what GET_ID must return.
pub fn check_guest(daemon: Daemon, backing: impl FnOnce() -> Vec<u8>, serial: Option<&str>) {
    build_guest();
    let report = boot(&daemon.socket);
    let get = |k: &str| {
        report
            .get(k)
            .unwrap_or_else(|| panic!("guest did not report {k}: {report:?}"))
            .as_str()
    };

    let errors: Vec<_> = report.keys().filter(|k| k.starts_with("error")).collect();
    assert!(errors.is_empty(), "guest reported errors: {report:?}");
    assert_eq!(get("done"), "");
    assert_eq!(get("size_bytes"), DISK_BYTES.to_string());
    assert_eq!(get("queues"), "2", "the guest should use both queues");
    assert_eq!(
        get("cache_type"),
        "write back",
        "the disk has a write cache"
    );
    if let Some(serial) = serial {
        assert_eq!(get("serial"), serial);
    }
    assert_eq!(get("readback_start"), get("pattern"));
    assert_eq!(get("readback_end"), get("pattern"));
    assert_eq!(get("readback_small"), get("pattern_small"));
    assert_eq!(get("cache_type_after"), "write through");
    daemon.wait_for_info("the daemon seeing the write cache turned off", |info| {
        !info.write_cache
    });
    assert!(daemon.stop().success(), "vblkd did not exit cleanly");

    let pattern = std::fs::read(guest_cache().join("pattern.bin")).unwrap();
    let file = backing();
    assert_eq!(file.len(), DISK_BYTES);
    assert!(
        file[..PATTERN_BYTES] == pattern[..],
        "start of the disk file differs from the guest's writes"
    );
    assert!(
        file[DISK_BYTES - PATTERN_BYTES..] == pattern[..],
        "end of the disk file differs"
    );
    assert!(
        file[8 << 20..(8 << 20) + (128 << 10)] == pattern[..128 << 10],
        "single-sector writes differ"
    );
}

/// What the "fill" workload reports must say: each of its four copies read back as the
/// pattern, and no I/O error in the guest's kernel log.
pub fn assert_fill_read_back(report: &HashMap<String, String>) {
    for i in 0..4 {
        assert_eq!(
            report[&format!("readback_{i}")],
            report["pattern"],
            "copy {i}"
        );
    }
    assert_eq!(report["kernel_io_errors"], "0");
}

/// A guest that keeps running while the test talks to it over its console: the crash test.
pub struct RunningGuest {
    qemu: std::process::Child,
    stdin: std::process::ChildStdin,
    /// The "VBLKD ..." lines, without the prefix, as the guest prints them.
    lines: mpsc::Receiver<String>,
}

impl RunningGuest {
    /// Boots the guest against `socket`, running `test` (`VBLKD_GUEST_TEST`, see
    /// boot-guest.sh).
    pub fn start(socket: &Path, test: &str) -> RunningGuest {
        build_guest();
        let mut qemu = Command::new(scripts().join("boot-guest.sh"))
            .arg(socket)
            .arg("2")
            .env("VBLKD_GUEST_TEST", test)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start qemu");
        let stdin = qemu.stdin.take().unwrap();
        let stdout = qemu.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[guest] {line}");
                // The firmware's terminal escapes may share a line with the first report.
                if let Some(at) = line.find("VBLKD ") {
                    if tx.send(line[at + 6..].trim().to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        RunningGuest { qemu, stdin, lines }
    }

    /// The next report line; fails the test if none comes within `limit`.
    pub fn next(&self, limit: Duration, waiting_for: &str) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the guest reported nothing within {limit:?} while {waiting_for}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the guest's console closed while {waiting_for}")
            }
        }
    }

    /// Reads report lines until "done", failing the test on an "error" line or on none within
    /// `limit`; returns the `key value` lines as a map, and every line as it came.
    pub fn report_until_done(
        &self,
        limit: Duration,
        waiting_for: &str,
    ) -> (HashMap<String, String>, Vec<String>) {
        let (mut report, mut seen) = (HashMap::new(), Vec::new());
        loop {
            let line = self.next(limit, waiting_for);
            seen.push(line.clone());
            assert!(!line.starts_with("error"), "{line}");
            if line == "done" {
                return (report, seen);
            }
            if let Some((k, v)) = line.split_once(' ') {
                report.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    /// Writes one line to the guest's console.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for QEMU to exit (the guest powers off), failing after [`limits::GUEST_RUN`]. Lines the
    /// guest still prints are returned.
    pub fn wait_exit(mut self) -> Vec<String> {
        let deadline = std::time::Instant::now() + limits::GUEST_RUN;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => rest.push(line),
                // The console closes when QEMU exits.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the guest did not power off within {:?}", limits::GUEST_RUN)
                }
            }
        }
        let status = self.qemu.wait().unwrap();
        assert!(status.success(), "qemu exited with {status}");
        rest
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}
