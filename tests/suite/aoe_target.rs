//! vblkd as an ATA-over-Ethernet target (`vblkd aoe-export`), against real initiators: vblkd's
//! own (`serve --disk aoe://...`) across a veth pair, clean and lossy, and Linux's `aoe`
//! driver in a QEMU guest whose virtio-net is on a tap device in the target's namespace; and
//! vblade in turn on the same image, to show the two targets are interchangeable.
//!
//! Needs root, iproute2, vblade and QEMU (scripts/setup installs them).

use std::process::Command;

use serde_json::Value;
use support::{Client, Daemon};
use vblkd::service::status::Command as ControlCommand;

use crate::aoe::{verify_random_io, Rig, TargetKind, DISK_BYTES};
use crate::sandbox::identities;

/// What the target's export e3.7 has counted (`vblkd ctl stats`).
fn counters(target: &Daemon) -> Value {
    target.ctl(&ControlCommand::Stats)["exports"]["e3.7"].clone()
}

fn vblkd_target(extra: &[&str]) -> TargetKind {
    TargetKind::Vblkd(extra.iter().map(|s| s.to_string()).collect())
}

/// Random I/O from vblkd's initiator through vblkd's target at `mtu`, verified through the
/// initiator and in the exported file; the frame size both chose is `sectors`.
fn random_io_at_mtu(mtu: u32, sectors: u64, extra: &[&str]) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rig = Rig::build(dir.path(), mtu, false, vblkd_target(extra));
    let info = rig.exporter().ctl(&ControlCommand::Info);
    assert_eq!(
        info["interfaces"][0]["sectors_per_frame"], sectors,
        "{info}"
    );
    assert_eq!(info["exports"][0]["capacity"], DISK_BYTES as u64, "{info}");
    let daemon = rig.daemon(dir.path(), &[]);
    assert_eq!(daemon.info().details["aoe_sectors_per_frame"], sectors);
    verify_random_io(&rig, &daemon);
    assert!(daemon.stop().success());
    let done = counters(rig.exporter());
    assert!(done["writes"].as_u64() > Some(100), "{done}");
    assert!(done["reads"].as_u64() > Some(100), "{done}");
    // The client's flush reached the target as FLUSH CACHE (EXT).
    assert!(done["flushes"].as_u64() >= Some(1), "{done}");
    assert_eq!(done["io_errors"], 0, "{done}");
    assert_eq!(done["malformed"], 0, "{done}");
    // Requests of several frames (the read-back's are 4 MiB) were done as runs of neighbours.
    assert!(done["merged"].as_u64() > Some(0), "{done}");
    // The ring put every write's data where O_DIRECT could write it from, at either MTU,
    // and io_uring took the ring as a fixed buffer.
    assert_eq!(done["writes_from_ring"], done["writes"], "{done}");
    let default_engine = !extra.iter().any(|a| matches!(*a, "--aio" | "--cache"));
    if default_engine {
        assert_eq!(done["io_uring_fixed_registrations"], 1, "{done}");
    }
    if let Some(at) = extra.iter().position(|a| *a == "--metrics") {
        check_metrics(&rig, extra[at + 1], &done);
    }
}

/// The target's metrics, scraped from inside its namespace, pass promtool and say what
/// `ctl stats` says.
fn check_metrics(rig: &Rig, addr: &str, done: &Value) {
    let (ns, addr) = (rig.ns_target.clone(), addr.to_owned());
    let body = std::thread::spawn(move || {
        crate::aoe::enter_netns(&ns);
        crate::control::scrape(&addr)
    })
    .join()
    .unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; scripts/setup installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}\n{body}",
        String::from_utf8_lossy(&checked.stderr)
    );
    for name in ["writes", "reads", "flushes"] {
        let series = format!("vblkd_aoe_export_{name}_total{{export=\"e3.7\"}}");
        assert_eq!(
            Some(crate::control::sample(&body, &series)),
            done[name].as_u64(),
            "{body}"
        );
    }
}

#[test]
#[ignore = "needs root and iproute2"]
fn aoe_target_random_io_at_mtu_1500() {
    random_io_at_mtu(1500, 2, &["--metrics", "127.0.0.1:9464"]);
}

#[test]
#[ignore = "needs root and iproute2"]
fn aoe_target_random_io_at_mtu_9000() {
    random_io_at_mtu(9000, 17, &[]);
}

/// Every engine behind the target, and a cached mode.
#[test]
#[ignore = "needs root and iproute2"]
fn aoe_target_serves_with_every_engine() {
    for extra in [
        &["--aio", "native"][..],
        &["--aio", "threads", "--cache", "writethrough"],
        &["--cache", "writeback", "--buffers", "8"],
    ] {
        eprintln!("target with {extra:?}");
        random_io_at_mtu(9000, 17, extra);
    }
}

#[test]
#[ignore = "needs root and iproute2"]
fn aoe_target_survives_loss_reordering_and_duplicates() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::build(dir.path(), 9000, true, vblkd_target(&[]));
    let daemon = rig.daemon(dir.path(), &[]);
    verify_random_io(&rig, &daemon);
    assert!(daemon.stop().success());
    let stats = rig.relay.take().unwrap().stop();
    eprintln!("relay: {stats:?}");
    assert!(
        stats.dropped > 10 && stats.duplicated > 5 && stats.reordered > 10,
        "the path was not lossy: {stats:?}"
    );
    let done = counters(rig.exporter());
    // Duplicated requests were seen as copies: dropped while in progress, or answered again
    // (a write's from the cache), never an error.
    let copies = done["duplicates"].as_u64().unwrap() + done["replies"].as_u64().unwrap();
    assert!(copies > 0, "{done}");
    assert_eq!(done["io_errors"], 0, "{done}");
}

/// The same image exported by vblade, then by vblkd, then by vblade again, each time written
/// and read back through vblkd's initiator: what one target wrote the other serves.
#[test]
#[ignore = "needs root, iproute2 and vblade"]
fn aoe_target_and_vblade_are_interchangeable() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::build(dir.path(), 1500, false, TargetKind::Vblade);
    for kind in [vblkd_target(&[]), TargetKind::Vblade, vblkd_target(&[])] {
        let daemon = rig.daemon(dir.path(), &[]);
        // verify_random_io starts from the file as it is: what the last target left.
        verify_random_io(&rig, &daemon);
        assert!(daemon.stop().success());
        rig.switch_target(kind);
        rig.start_target();
    }
}

#[test]
#[ignore = "needs root and iproute2"]
fn aoe_target_read_only_refuses_writes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rig = Rig::build(dir.path(), 1500, false, vblkd_target(&["--read-only"]));
    let before = std::fs::read(&rig.file).unwrap();
    let daemon = rig.daemon(dir.path(), &[]);
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    assert_eq!(client.read_sync(0, 4096, 8192), 0);
    assert_eq!(&client.buffers()[..8192], &before[4096..4096 + 8192]);
    assert_ne!(
        client.write_sync(0, 4096, &[0x5a; 4096]),
        0,
        "a write to a read-only export must fail"
    );
    drop(client);
    assert!(daemon.stop().success());
    assert!(
        std::fs::read(&rig.file).unwrap() == before,
        "the file changed"
    );
    let done = counters(rig.exporter());
    assert_eq!(done["writes"], 0, "{done}");
}

/// Linux's aoe driver as the initiator: a QEMU guest on a tap device in the target's
/// namespace finds e3.7 (writable) and e3.8 (read-only, a second target process on the same
/// interface), writes the pattern to e3.7 with O_DIRECT and reads it back, reads e3.8 and
/// fails to write it.
#[test]
#[ignore = "needs root, iproute2 and QEMU"]
fn aoe_target_serves_linux_aoe_driver() {
    support::guest::build_guest();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ns = format!("vblkd-g{}", std::process::id());
    let run = |cmd: &[&str]| support::run_tool(cmd, "this test needs root and iproute2");
    run(&["ip", "netns", "add", &ns]);
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _netns = Netns(ns.clone());
    run(&[
        "ip", "-n", &ns, "tuntap", "add", "dev", "vtap", "mode", "tap",
    ]);
    run(&["ip", "-n", &ns, "link", "set", "vtap", "up"]);

    let pattern = std::fs::read(support::guest::guest_cache().join("pattern.bin")).unwrap();
    let writable = dir.path().join("e3.7.img");
    let read_only = dir.path().join("e3.8.img");
    std::fs::write(&writable, vec![0u8; DISK_BYTES]).unwrap();
    let mut ro_data = pattern.clone();
    ro_data.resize(16 << 20, 0);
    std::fs::write(&read_only, &ro_data).unwrap();
    let wrapper = ["ip", "netns", "exec", &ns];
    let e37 = format!("e3.7={}", writable.display());
    let e38 = format!("e3.8={}", read_only.display());
    let target = Daemon::export_with(&wrapper, dir.path(), &["-i", "vtap", &e37]);
    let ro_target = Daemon::export_with(&wrapper, dir.path(), &["-i", "vtap", "--read-only", &e38]);

    // A guest whose network stalls would otherwise hold the test (and CI) until it is killed.
    let limit = support::limits::GUEST_RUN.as_secs().to_string();
    let guest = std::process::Command::new("timeout")
        .args([limit.as_str(), "ip", "netns", "exec", &ns])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/qemu-scripts/boot-guest.sh"
        ))
        .arg("-")
        .env("VBLKD_GUEST_TEST", "aoe")
        .env("VBLKD_GUEST_TAP", "vtap")
        .output()
        .expect("run qemu");
    let console = String::from_utf8_lossy(&guest.stdout);
    eprintln!("{console}");
    assert!(
        guest.status.success(),
        "qemu failed, or ran past {:?} ({}): {}",
        support::limits::GUEST_RUN,
        guest.status,
        String::from_utf8_lossy(&guest.stderr)
    );
    let report: std::collections::HashMap<&str, &str> = console
        .lines()
        .filter_map(|l| l.find("VBLKD ").map(|at| l[at + 6..].trim()))
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    assert!(report.contains_key("done"), "{report:?}");
    assert!(!report.keys().any(|k| k.starts_with("error")), "{report:?}");
    assert_eq!(report["size_bytes"], DISK_BYTES.to_string());
    for key in ["readback_start", "readback_end", "readonly_start"] {
        assert_eq!(report[key], report["pattern"], "{key}");
    }
    assert_eq!(report["readonly_write"], "failed");

    let done = counters(&target);
    assert_eq!(done["io_errors"], 0, "{done}");
    assert!(target.stop().success());
    assert!(ro_target.stop().success());
    let file = std::fs::read(&writable).unwrap();
    assert!(
        file[..pattern.len()] == pattern[..],
        "start of e3.7 differs"
    );
    assert!(
        file[DISK_BYTES - (4 << 20)..] == pattern[..],
        "end of e3.7 differs"
    );
    assert!(
        std::fs::read(&read_only).unwrap() == ro_data,
        "e3.8 changed"
    );
}

/// `vblkd ctl resize` on the target grows the export; the initiator sees the new size at its
/// next IDENTIFY (its own resize without a size asks again).
#[test]
#[ignore = "needs root and iproute2"]
fn aoe_target_resize_is_seen_at_the_next_identify() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rig = Rig::build(dir.path(), 1500, false, vblkd_target(&[]));
    let daemon = rig.daemon(dir.path(), &[]);
    assert_eq!(daemon.info().capacity, DISK_BYTES as u64);
    let grown = 2 * DISK_BYTES as u64;
    let reply = rig
        .exporter()
        .ctl(&ControlCommand::Resize { size: Some(grown) });
    assert_eq!(reply["capacity"], grown, "{reply}");
    assert_eq!(std::fs::metadata(&rig.file).unwrap().len(), grown);
    daemon.ctl(&ControlCommand::Resize { size: None });
    assert_eq!(daemon.info().capacity, grown);
    // The new end is readable through the initiator.
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    assert_eq!(client.read_sync(0, grown - 4096, 4096), 0);
    drop(client);
    assert!(daemon.stop().success());
}

/// `--user nobody`: the target serves with no capability left in any thread (its raw socket
/// was opened before), its engines' threads included.
#[test]
#[ignore = "needs root and iproute2"]
fn aoe_target_as_another_user_keeps_no_capability() {
    let dir = support::tempdir_for_another_user();
    let rig = Rig::build(
        dir.path(),
        1500,
        false,
        vblkd_target(&["--user", "nobody", "--aio", "threads"]),
    );
    let daemon = rig.daemon(dir.path(), &[]);
    verify_random_io(&rig, &daemon);
    assert!(daemon.stop().success());
    for (name, uid, eff, prm) in identities(rig.exporter().pid()) {
        assert_eq!(uid, "65534 65534 65534 65534", "{name}");
        assert_eq!(eff, "0000000000000000", "{name}: effective capabilities");
        assert_eq!(prm, "0000000000000000", "{name}: permitted capabilities");
    }
}

/// SIGTERM while writes are in flight: the target finishes what it holds and exits 0, a new
/// target takes over, the initiator's retransmissions reach it, and every write lands.
#[test]
#[ignore = "needs root and iproute2"]
fn aoe_target_stopped_under_load_loses_no_write() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rig = Rig::build(dir.path(), 9000, false, vblkd_target(&[]));
    let daemon = rig.daemon(dir.path(), &["--aoe-deadline", "30"]);
    const REQUESTS: usize = 32;
    const LEN: usize = 1 << 20;
    let mut client = Client::connect(&daemon.socket, 1, false, REQUESTS * LEN).unwrap();
    for (i, b) in client.buffers().iter_mut().enumerate() {
        *b = support::pattern_byte(i, 13);
    }
    for r in 0..REQUESTS {
        let buf = client.buffer_ptr(r * LEN);
        let offset = (r * LEN) as u64;
        client.queues[0].write(offset, buf, LEN, r, blkio::ReqFlags::empty());
    }
    client.submit(0);
    // 32 MiB in 1928 frames: the target is stopped once it has begun, with most to come.
    let mut written = 0;
    support::eventually("the target writing", support::limits::REPLY, || {
        written = counters(rig.exporter())["bytes_written"].as_u64().unwrap();
        written > 0
    });
    assert!(
        written < (REQUESTS * LEN) as u64,
        "all written before the stop"
    );
    rig.switch_target(vblkd_target(&[]));
    rig.start_target();
    let done = client.wait(0, REQUESTS);
    assert!(done.iter().all(|&(_, ret)| ret == 0), "{done:?}");
    let expected = client.buffers()[..REQUESTS * LEN].to_vec();
    drop(client);
    assert!(daemon.stop().success());
    let file = std::fs::read(&rig.file).unwrap();
    assert!(file[..REQUESTS * LEN] == expected[..], "a write was lost");
}
