//! Running under systemd: socket activation (the listening socket passed in LISTEN_FDS serves a
//! real client), sd_notify READY=1, STATUS= on connect and disconnect, STOPPING=1; and who may
//! connect to a socket vblkd creates (mode 0600 unless told otherwise, and the group given);
//! and the hardened unit of docs/systemd.md, as systemd rates it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use support::{limits, run_vblkd, vblkd_bin, Client, Daemon};
use vblkd::service::notify::{NotifySocket, NOTIFY_SOCKET};

#[test]
#[ignore = "needs systemd-socket-activate"]
fn a_socket_passed_by_systemd_serves_a_client_and_the_state_is_reported() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let socket = dir.path().join("activated.sock");
    let supervisor = NotifySocket::bind(&dir.path().join("notify.sock")).unwrap();
    // systemd-socket-activate listens, and starts vblkd with the socket on the first
    // connection, as a .socket unit does.
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(format!(
            "--setenv={NOTIFY_SOCKET}={}",
            supervisor.path().display()
        ))
        .arg(vblkd_bin())
        .args(["serve", "--disk", "null:64M"])
        .stdin(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate runs (Debian package systemd; scripts/setup installs it)");
    support::eventually("the activator listening", limits::REPLY, || {
        socket.exists() || activator.try_wait().unwrap().is_some()
    });
    assert!(
        activator.try_wait().unwrap().is_none(),
        "systemd-socket-activate exited"
    );
    let before = std::fs::metadata(&socket).unwrap().ino();

    let mut client = Client::connect(&socket, 1, false, 1 << 20).unwrap();
    let gone = || false;
    assert!(supervisor.wait_for("READY=1", limits::REPLY, gone).unwrap());
    assert!(supervisor
        .wait_for("STATUS=serving a frontend", limits::REPLY, gone)
        .unwrap());
    assert_eq!(client.read_sync(0, 0, 4096), 0);
    drop(client);
    assert!(supervisor
        .wait_for("STATUS=waiting for a frontend", limits::REPLY, gone)
        .unwrap());
    assert_eq!(
        std::fs::metadata(&socket).unwrap().ino(),
        before,
        "vblkd replaced the socket systemd made"
    );

    // SAFETY: signalling our own child, which exec'd vblkd.
    unsafe { libc::kill(i32::try_from(activator.id()).unwrap(), libc::SIGTERM) };
    assert!(supervisor
        .wait_for("STOPPING=1", limits::REPLY, gone)
        .unwrap());
    assert!(activator.wait().unwrap().success());
}

#[test]
#[ignore = "needs root (to give the socket to another group)"]
fn the_socket_is_the_owners_unless_a_group_is_given() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let daemon = Daemon::start(dir.path(), &["--disk", "null:64M"]);
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(daemon.stop().success());

    // Group 1 exists on every Debian system ("daemon").
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--disk",
            "null:64M",
            "--socket-mode",
            "0660",
            "--socket-group",
            "1",
        ],
    );
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 1);
    assert!(daemon.stop().success());

    let socket = dir.path().join("s.sock");
    let socket = socket.to_str().unwrap();
    for (args, says) in [
        (vec!["--socket-mode", "0999"], "not a permission mode"),
        (vec!["--socket-group", "no-such-group-here"], "no group"),
    ] {
        let mut all = vec!["serve", "--socket", socket, "--disk", "null:64M"];
        all.extend(args);
        let (code, stderr) = run_vblkd(&all);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    let (code, stderr) = run_vblkd(&["serve", "--disk", "null:64M"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--socket PATH is needed"), "{stderr}");
}

/// The hardened unit of docs/systemd.md, as `systemd-analyze security` rates it (offline,
/// from the file): "SAFE", at most 1 on its scale of 0 (best) to 10.
#[test]
#[ignore = "needs systemd-analyze (Debian's systemd)"]
fn the_hardened_unit_rates_safe() {
    let level = exposure("vblkd@.service");
    assert!(level <= 1.0, "the unit rates {level}");
}

/// The AoE target's unit: it starts as root with CAP_NET_RAW (a raw socket) and the user
/// change, and has the host's network, which systemd-analyze counts (1.2 of it); the rest is
/// as tight as vblkd@.service: at most 2, "OK".
#[test]
#[ignore = "needs systemd-analyze (Debian's systemd)"]
fn the_aoe_export_unit_rates_ok() {
    let level = exposure("vblkd-aoe-export.service");
    assert!(level <= 2.0, "the unit rates {level}");
}

/// `systemd-analyze security`'s overall exposure level of contrib/systemd/`unit`.
fn exposure(unit: &str) -> f64 {
    let unit = format!("{}/contrib/systemd/{unit}", env!("CARGO_MANIFEST_DIR"));
    let out = support::run_tool(
        &[
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--no-pager",
            &unit,
        ],
        "systemd-analyze (apt-get install systemd)",
    );
    let out = String::from_utf8(out).unwrap();
    let level = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    eprintln!("{unit}: exposure level {level}\n{out}");
    level
}
