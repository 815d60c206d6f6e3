//! Live-migrating a QEMU guest between two vhost-user-blk daemons on one image: QEMU
//! processes under TCG driven over QMP, the guest running the crash test's workload (stamped
//! O_DIRECT writes, verifying reads, flushes) throughout, and its console followed from
//! whichever QEMU runs it.
//!
//! The guest's RAM is 512 MiB + 8 KiB: QEMU 7.2 under TCG corrupts migrated guests whose RAM
//! blocks are a multiple of 256 KiB (fixed in QEMU 9.0, commit 03bfc2188f; see
//! ../shared/REFERENCE.md).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::guest::{build_guest, guest_cache};
use super::{eventually, limits};

/// The guest's RAM: 512 MiB + 8 KiB (see the module documentation).
const RAM: &str = "524296K";

/// A QMP connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the QMP socket at `path` (waiting for QEMU to create it) and leaves
    /// capabilities negotiation.
    pub fn connect(path: &Path) -> Qmp {
        // The socket file exists a moment before QEMU listens on it: connecting is the test.
        let mut stream = None;
        eventually("QEMU's QMP socket accepting", limits::REPLY, || {
            stream = UnixStream::connect(path).ok();
            stream.is_some()
        });
        let stream = stream.expect("connected");
        stream.set_read_timeout(Some(limits::REPLY)).unwrap();
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        qmp.line(); // the greeting
        qmp.execute("qmp_capabilities", json!({}))
            .expect("qmp_capabilities");
        qmp
    }

    fn line(&mut self) -> Value {
        self.try_line().expect("a QMP line")
    }

    fn try_line(&mut self) -> std::io::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}")))
    }

    /// Runs `command` and returns its `return`, or its error's description.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        self.try_execute(command, arguments)
            .expect("QEMU answers on QMP")
    }

    /// Like [`Qmp::execute`], but a QMP connection that QEMU closed is an error, not a panic.
    fn try_execute(
        &mut self,
        command: &str,
        arguments: Value,
    ) -> std::io::Result<Result<Value, String>> {
        let request = json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{request}")?;
        loop {
            let mut reply = self.try_line()?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(error) = reply.get("error") {
                return Ok(Err(error["desc"].as_str().unwrap_or("?").to_owned()));
            }
            return Ok(Ok(reply["return"].take()));
        }
    }
}

/// One QEMU process running (or about to receive) the guest.
pub struct Vm {
    qemu: Child,
    stdin: ChildStdin,
    pub qmp: Qmp,
}

impl Vm {
    /// Starts QEMU with its disk on the vhost-user `socket`, running the crash workload;
    /// with `incoming`, waiting for a migration on that unix socket instead of booting. Its
    /// console's report lines go to `lines`. `dir` holds its QMP socket, named `name`.
    pub fn start(
        dir: &Path,
        name: &str,
        socket: &Path,
        incoming: Option<&Path>,
        lines: mpsc::Sender<String>,
    ) -> Vm {
        build_guest();
        let cache = guest_cache();
        let qmp_path = dir.join(format!("{name}.qmp"));
        let _ = std::fs::remove_file(&qmp_path);
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-smp", "2", "-m", RAM])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={RAM},share=on"))
            .args(["-numa", "node,memdev=mem"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(cache.join("vmlinuz"))
            .arg("-initrd")
            .arg(cache.join("initrd.gz"))
            .args(["-append", "console=ttyS0 quiet panic=-1 vblkd.test=crash"])
            .arg("-chardev")
            .arg(format!("socket,id=c0,path={}", socket.display()))
            .args(["-device", "vhost-user-blk-pci,chardev=c0,num-queues=2"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        if let Some(incoming) = incoming {
            command
                .arg("-incoming")
                .arg(format!("unix:{}", incoming.display()));
        }
        let mut qemu = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start qemu-system-x86_64 (apt-get install qemu-system-x86)");
        let stdin = qemu.stdin.take().unwrap();
        let stdout = qemu.stdout.take().unwrap();
        let label = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{label}] {line}");
                if let Some(at) = line.find("VBLKD ") {
                    if lines.send(line[at + 6..].trim().to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        let qmp = Qmp::connect(&qmp_path);
        Vm { qemu, stdin, qmp }
    }

    /// Writes a line on the guest's console.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Ends QEMU (after it migrated the guest away), and waits for it. A source QEMU that is
    /// already gone did its part: the guest runs on the destination, which the test goes on
    /// checking. How it ended is printed (seen once in a full suite run, QMP closed before
    /// `quit`; the cause is not known).
    pub fn quit(mut self) {
        let asked = self.qmp.try_execute("quit", json!({})).is_ok();
        let status = self.qemu.wait().unwrap();
        if !asked {
            eprintln!("the source QEMU had ended by itself after the migration: {status}");
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    pub fn wait(mut self) {
        let status = self.qemu.wait().unwrap();
        assert!(status.success(), "qemu exited with {status}");
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// What one migration took, as QEMU reports it.
#[derive(Debug, Clone, Copy)]
pub struct Migrated {
    pub downtime_ms: u64,
    pub total_ms: u64,
}

/// Migrates `from` to a QEMU started on `socket` (waiting for it on `dir/migration.sock`);
/// returns the new one (the old one has quit) and what QEMU said it took.
pub fn migrate(
    dir: &Path,
    name: &str,
    mut from: Vm,
    socket: &Path,
    lines: mpsc::Sender<String>,
) -> (Vm, Migrated) {
    let channel = dir.join("migration.sock");
    let _ = std::fs::remove_file(&channel);
    let to = Vm::start(dir, name, socket, Some(&channel), lines);
    from.qmp
        .execute(
            "migrate",
            json!({"uri": format!("unix:{}", channel.display())}),
        )
        .expect("migrate");
    let migrated = wait_migration(&mut from.qmp, "completed");
    from.quit();
    (to, migrated)
}

/// Polls `query-migrate` until the status is `want` (or fails the test if it is `failed`).
pub fn wait_migration(qmp: &mut Qmp, want: &str) -> Migrated {
    let deadline = Instant::now() + limits::STALL;
    loop {
        let info = qmp
            .execute("query-migrate", json!({}))
            .expect("query-migrate");
        let status = info["status"].as_str().unwrap_or("none").to_owned();
        if status == want {
            return Migrated {
                downtime_ms: info["downtime"].as_u64().unwrap_or(0),
                total_ms: info["total-time"].as_u64().unwrap_or(0),
            };
        }
        assert!(
            status != "failed" && Instant::now() < deadline,
            "migration {status}: {info}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The console's report lines, and what the workload said so far.
pub struct Console {
    pub lines: mpsc::Receiver<String>,
    pub sender: mpsc::Sender<String>,
    pub writes: u64,
    pub errors: Vec<String>,
}

impl Default for Console {
    fn default() -> Self {
        let (sender, lines) = mpsc::channel();
        Console {
            lines,
            sender,
            writes: 0,
            errors: Vec::new(),
        }
    }
}

impl Console {
    /// Waits for the next line, failing the test after `limit`.
    pub fn next(&self, limit: Duration, what: &str) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("the guest said nothing within {limit:?} while {what}"))
    }

    /// Reads lines until the workload has started.
    pub fn started(&mut self) {
        loop {
            let line = self.next(limits::GUEST_BOOT, "the guest boots");
            assert!(!line.starts_with("error"), "{line}");
            if line == "crash_started" {
                return;
            }
        }
    }

    /// Reads lines until the guest had `more` writes acknowledged; fails if its writes
    /// stall for [`limits::STALL`] (a request lost at a switch-over hangs its thread).
    /// (The workload reports its count every few hundred milliseconds, moving or not.)
    pub fn progress(&mut self, more: u64, what: &str) {
        let target = self.writes + more;
        let mut moved = Instant::now();
        while self.writes < target {
            let line = self.next(limits::STALL, what);
            if let Some(n) = line.strip_prefix("progress writes=") {
                let writes = n.trim().parse().unwrap_or(self.writes);
                if writes > self.writes {
                    moved = Instant::now();
                }
                self.writes = writes;
            } else if line.starts_with("error") {
                self.errors.push(line);
            }
            assert!(
                moved.elapsed() < limits::STALL,
                "the guest's writes stalled at {} for {:?} while {what}",
                self.writes,
                limits::STALL
            );
        }
    }

    /// Tells the workload to stop and returns its result line (`crash_result ...`).
    pub fn finish(&mut self, vm: &mut Vm) -> String {
        vm.send("stop");
        loop {
            let line = self.next(limits::STALL, "the guest verifies its writes");
            if line.starts_with("crash_result") {
                return line;
            }
            if line.starts_with("error") {
                self.errors.push(line);
            }
        }
    }
}
