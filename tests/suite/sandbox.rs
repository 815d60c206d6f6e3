//! The sandbox of a running daemon, seen from outside: every thread filtered, none able to
//! gain privileges, the queue threads under a tighter filter of their own.

use std::os::unix::process::ExitStatusExt;

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

/// Evaluates `exprs` inside the running daemon `pid` (gdb attaches and calls them on a
/// thread of the daemon, as subverted code would) and returns gdb's output.
fn call_inside(pid: u32, exprs: &[&str]) -> String {
    let mut command = std::process::Command::new("gdb");
    command.args(["-p", &pid.to_string(), "-batch", "-nx"]);
    // When the call kills the process, some gdb versions fail an internal check on detaching:
    // no core file of gdb for that, and no question.
    for setting in ["corefile no", "quit yes"] {
        command.args(["-iex", &format!("maint set internal-error {setting}")]);
    }
    for expr in exprs {
        command.args(["-ex", &format!("print (int) {expr}")]);
    }
    let out = command.output().expect("gdb runs (apt-get install gdb)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// What a subverted daemon would try, tried inside a running one: opening a path fails even
/// with seccomp off (Landlock alone), and reaching the network kills it (seccomp).
#[test]
#[ignore = "needs root (ptrace) and gdb"]
fn a_running_daemon_can_neither_open_paths_nor_reach_the_network() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let daemon = Daemon::start(dir.path(), &["--disk", "null:64M", "--seccomp", "off"]);
    let out = call_inside(
        daemon.pid(),
        &["open(\"/etc/passwd\", 0)", "*(int*)__errno_location()"],
    );
    assert!(
        out.contains("$1 = -1") && out.contains("$2 = 13"),
        "EACCES expected:\n{out}"
    );
    assert!(daemon.stop().success());

    let daemon = Daemon::start(dir.path(), &["--disk", "null:64M"]);
    // gdb returns once the call ended — here with the process (what it prints then varies
    // between gdb versions); the daemon, unreaped, still has its status.
    let out = call_inside(daemon.pid(), &["socket(2, 1, 0)"]);
    let status = daemon.stop();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status}; gdb said:\n{out}"
    );
}
