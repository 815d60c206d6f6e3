//! The sandbox of a running daemon, seen from outside: every thread filtered, none able to
//! gain privileges, the queue threads under a tighter filter of their own.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use support::{Client, Daemon};

/// (name, status file) of every thread of process `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut threads: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let task = task.unwrap().path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap();
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            (comm.trim().to_owned(), status)
        })
        .collect();
    threads.sort();
    threads
}

/// The value of `key:` in a status file.
fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
}

#[test]
fn every_thread_of_a_serving_daemon_is_filtered_and_cannot_gain_privileges() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (daemon, _disk) = Daemon::on_new_file(
        dir.path(),
        "16M",
        &["--num-queues", "2", "--aio", "threads", "--threads", "2"],
    );
    let mut client = Client::connect(&daemon.socket, 2, false, 1 << 20).unwrap();
    // One request on each queue: each queue thread has had its first event.
    assert_eq!(client.read_sync(0, 0, 4096), 0);
    assert_eq!(client.read_sync(1, 0, 4096), 0);
    // Landlock is on (this kernel has it): the process can reach no path but the sockets'
    // directories (the unit test after_start_up_the_process_can_only_make_and_remove_sockets
    // shows what that refuses).
    support::eventually(
        "the log saying Landlock is on",
        support::limits::REPLY,
        || {
            daemon
                .log()
                .contains("Landlock: no file-system access but the sockets' directories")
        },
    );
    let threads = threads(daemon.pid());
    let names: Vec<&str> = threads.iter().map(|(name, _)| name.as_str()).collect();
    eprintln!("threads: {names:?}");
    assert!(names.contains(&"vblkd-control") && names.contains(&"vblkd-signals"));
    let queues = threads
        .iter()
        .filter(|(name, _)| name == "vring_worker")
        .count();
    assert_eq!(queues, 2, "{names:?}");
    let pool = threads
        .iter()
        .filter(|(name, _)| name.starts_with("vblkd-io-"))
        .count();
    assert_eq!(pool, 4, "two pool threads per queue: {names:?}");
    for (name, status) in &threads {
        assert_eq!(field(status, "Seccomp"), "2", "{name}: seccomp filter mode");
        assert_eq!(field(status, "NoNewPrivs"), "1", "{name}");
        // The process's allow-list and its rule against opening paths; a queue or pool
        // thread's own.
        let filters: u32 = field(status, "Seccomp_filters").parse().unwrap();
        let own = name == "vring_worker" || name.starts_with("vblkd-io-");
        let expected = if own { 3 } else { 2 };
        assert_eq!(filters, expected, "{name}: filters");
    }
    drop(client);
    assert!(daemon.stop().success());
}

#[test]
fn with_seccomp_off_there_is_no_filter_but_still_no_new_privileges() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let daemon = Daemon::start(dir.path(), &["--disk", "null:64M", "--seccomp", "off"]);
    for (name, status) in threads(daemon.pid()) {
        assert_eq!(field(&status, "Seccomp"), "0", "{name}");
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{name}");
    }
    // The reader of its log may be a line behind.
    support::eventually("the log saying so", support::limits::REPLY, || {
        daemon.log().contains("seccomp is off")
    });
    assert!(daemon.stop().success());
}

/// `(thread name, uid, effective capabilities, permitted capabilities)` of every thread of
/// `pid`; the uid as its four ids (real, effective, saved, file system).
pub(crate) fn identities(pid: u32) -> Vec<(String, String, String, String)> {
    threads(pid)
        .into_iter()
        .map(|(name, status)| {
            let uid = field(&status, "Uid")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let eff = field(&status, "CapEff").to_owned();
            let prm = field(&status, "CapPrm").to_owned();
            (name, uid, eff, prm)
        })
        .collect()
}

/// `--user nobody`: after opening the disk and the sockets, every thread is nobody (real,
/// effective, saved and file-system uid) with no capability at all; I/O goes on.
#[test]
#[ignore = "needs root (to change user)"]
fn with_user_every_thread_is_that_user_without_capabilities() {
    let dir = support::tempdir_for_another_user();
    let (daemon, _disk) = Daemon::on_new_file(
        dir.path(),
        "16M",
        &["--num-queues", "2", "--user", "nobody"],
    );
    let mut client = Client::connect(&daemon.socket, 2, false, 1 << 20).unwrap();
    assert_eq!(client.write_sync(0, 0, &[7; 4096]), 0);
    assert_eq!(client.read_sync(1, 0, 4096), 0);
    assert_eq!(client.buffers()[..4096], [7; 4096]);
    for (name, uid, eff, prm) in identities(daemon.pid()) {
        assert_eq!(uid, "65534 65534 65534 65534", "{name}");
        assert_eq!(eff, "0000000000000000", "{name}: effective capabilities");
        assert_eq!(prm, "0000000000000000", "{name}: permitted capabilities");
    }
    support::eventually("the log saying so", support::limits::REPLY, || {
        daemon.log().contains("serving as uid 65534")
    });
    drop(client);
    assert!(daemon.stop().success());
}

/// vblkd needs no root at all: started as nobody, on an image and a socket directory nobody
/// owns, it serves (with its sandbox on).
#[test]
#[ignore = "needs root (to start a process as another user), setpriv"]
fn an_unprivileged_user_runs_the_daemon() {
    let dir = support::tempdir_for_another_user();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    for path in [dir.path(), image.as_path()] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let daemon = Daemon::start_with(&wrapper, dir.path(), &["--disk", image.to_str().unwrap()]);
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    assert_eq!(client.write_sync(0, 4096, &[9; 4096]), 0);
    assert_eq!(client.read_sync(0, 4096, 4096), 0);
    assert_eq!(client.buffers()[..4096], [9; 4096]);
    for (name, uid, eff, _) in identities(daemon.pid()) {
        assert_eq!(uid, "65534 65534 65534 65534", "{name}");
        assert_eq!(eff, "0000000000000000", "{name}");
    }
    drop(client);
    assert!(daemon.stop().success());
    assert_eq!(std::fs::read(&image).unwrap()[4096..8192], [9; 4096]);
}

/// Code a subverted daemon would run, put into a running one: an `LD_PRELOAD` library whose
/// signal handlers try, on whichever daemon thread the signal lands, to open a path (SIGUSR1;
/// the outcome is written to stderr, the daemon's log) or to make an IPv4 socket (SIGUSR2).
/// The handlers are installed before `main`, the attempts made long after the sandbox is on.
/// (gdb's inferior calls did this before; gdb 13 cannot restore the registers of a CPU with
/// AMX state, and the interrupted system call then failed the daemon with errno 516.)
const SUBVERT_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

static void say(const char *what, long value) {
    char buf[64];
    int n = 0;
    while (*what) buf[n++] = *what++;
    if (value < 0) { buf[n++] = '-'; value = -value; }
    char digits[20];
    int d = 0;
    do { digits[d++] = '0' + value % 10; value /= 10; } while (value);
    while (d) buf[n++] = digits[--d];
    buf[n++] = '\n';
    write(2, buf, n);
}

static void try_open(int sig) {
    (void)sig;
    int fd = open("/etc/passwd", O_RDONLY);
    say("subvert: open errno ", fd < 0 ? errno : 0);
}

static void try_socket(int sig) {
    (void)sig;
    say("subvert: socket ", socket(AF_INET, SOCK_STREAM, 0));
}

__attribute__((constructor)) static void install(void) {
    signal(SIGUSR1, try_open);
    signal(SIGUSR2, try_socket);
}
"#;

/// Builds [`SUBVERT_C`] in `dir`; the library's path.
fn subvert_library(dir: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("subvert.c");
    let library = dir.join("subvert.so");
    std::fs::write(&source, SUBVERT_C).unwrap();
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .args([&library, &source])
        .output()
        .expect("a C compiler (cc; Debian's gcc)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    library
}

/// A daemon on a null disk with the [`SUBVERT_C`] library preloaded, and `extra` options.
fn subverted_daemon(dir: &std::path::Path, extra: &[&str]) -> Daemon {
    let preload = format!("LD_PRELOAD={}", subvert_library(dir).display());
    let mut args = vec!["--disk", "null:64M"];
    args.extend_from_slice(extra);
    Daemon::start_with(&["env", &preload], dir, &args)
}

fn signal(daemon: &Daemon, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(daemon.pid()).unwrap();
    // SAFETY: kill takes no pointers.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// What a subverted daemon would try, tried inside a running one: opening a path fails even
/// with seccomp off (Landlock alone), and reaching the network kills it (seccomp).
#[test]
#[ignore = "needs root (Landlock, seccomp) and a C compiler"]
fn a_running_daemon_can_neither_open_paths_nor_reach_the_network() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let daemon = subverted_daemon(dir.path(), &["--seccomp", "off"]);
    signal(&daemon, libc::SIGUSR1);
    let said = |daemon: &Daemon| daemon.log().lines().any(|l| l.contains("subvert: open"));
    support::eventually("the open attempt", Duration::from_secs(10), || {
        said(&daemon)
    });
    let log = daemon.log();
    assert!(
        log.contains(&format!("subvert: open errno {}", libc::EACCES)),
        "EACCES expected:\n{log}"
    );
    assert!(daemon.stop().success());

    let mut daemon = subverted_daemon(dir.path(), &[]);
    signal(&daemon, libc::SIGUSR2);
    support::eventually("the daemon's end", Duration::from_secs(10), || {
        !daemon.is_running()
    });
    let log = daemon.log();
    let status = daemon.stop();
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}; log:\n{log}");
}
