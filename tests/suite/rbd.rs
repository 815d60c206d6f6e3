//! vblkd in front of a real Ceph cluster (single node, started by the test): random I/O of
//! many sizes over two queues, read back through vblkd and compared with `rbd export` of the
//! image; flush, discard and write-zeroes; a QEMU guest on an image; and the one clear error
//! for an unreachable cluster or a missing image.

use support::ceph::{Cluster, Store};
use support::guest::check_guest;
use support::workload::{past_end_requests, random_io, submit_one, zeroing_requests, BUFFER_BYTES};
use support::{eventually, first_difference, limits, run_vblkd, usize_of, Client, Daemon, Rng};

const IMAGE_BYTES: u64 = 64 << 20;

/// `rbd export` of `image` (read independently of vblkd) holds exactly `model`.
fn assert_exported(cluster: &Cluster, image: &str, model: &[u8]) {
    let exported = cluster.export(image);
    if let Some(at) = first_difference(&exported, model) {
        panic!("rbd export of {image} differs from what was written at byte {at}");
    }
}

#[test]
#[ignore = "needs Ceph"]
fn rbd_random_io_over_two_queues_matches_rbd_export() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = Cluster::start(dir.path());
    cluster.create_image("vm0", IMAGE_BYTES);
    let disk = cluster.disk("vm0");
    let daemon = Daemon::start(dir.path(), &["--disk", &disk, "--num-queues", "2"]);
    let mut model = vec![0u8; usize_of(IMAGE_BYTES)];
    {
        let mut client = Client::connect(&daemon.socket, 2, false, BUFFER_BYTES).unwrap();
        assert_eq!(client.capacity(), IMAGE_BYTES);
        random_io(&mut client, &mut model, &mut Rng::new(0xceb), 2);
        zeroing_requests(&mut client, &mut model);
        past_end_requests(&mut client);
        assert_eq!(
            submit_one(&mut client, 0, "flush", |q| q
                .flush(0, blkio::ReqFlags::empty())),
            0
        );
        let all = client.read_all(1, 4 << 20);
        if let Some(at) = first_difference(&all, &model) {
            panic!("the image read back through vblkd differs at byte {at}");
        }
    }
    assert!(daemon.stop().success());
    assert_exported(&cluster, "vm0", &model);
}

/// Writes in flight when the OSD is killed, and writes issued while it is down, complete once
/// it is back; the data verifies through vblkd and in `rbd export`, and vblkd never fails.
#[test]
#[ignore = "needs Ceph"]
fn requests_survive_the_osd_being_killed_and_restarted() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cluster = Cluster::start_with(dir.path(), Store::Durable);
    cluster.create_image("vm1", IMAGE_BYTES);
    let disk = cluster.disk("vm1");
    let daemon = Daemon::start(dir.path(), &["--disk", &disk, "--num-queues", "2"]);
    let mut client = Client::connect(&daemon.socket, 2, false, BUFFER_BYTES).unwrap();
    let mut model = vec![0u8; usize_of(IMAGE_BYTES)];
    let mut rng = Rng::new(0x05d);
    const BLOCK: usize = 64 << 10;
    const PER_QUEUE: usize = 8;
    rng.fill(&mut client.buffers()[..2 * 2 * PER_QUEUE * BLOCK]);
    // Block n of the buffer goes to image block 3n + 1: spread over several objects.
    let queue_writes = |client: &mut Client, first: usize| {
        for n in first..first + 2 * PER_QUEUE {
            let q = n % 2;
            let offset = (3 * n + 1) * BLOCK;
            let buf = client.buffer_ptr(n * BLOCK);
            client.queues[q].write(offset as u64, buf, BLOCK, n, blkio::ReqFlags::empty());
        }
        client.submit(0);
        client.submit(1);
    };
    queue_writes(&mut client, 0);
    cluster.kill_osd();
    queue_writes(&mut client, 2 * PER_QUEUE);
    cluster.start_osd();
    for q in 0..2 {
        for (n, ret) in client.wait(q, 2 * PER_QUEUE) {
            assert_eq!(ret, 0, "write {n} failed across the OSD restart");
        }
    }
    for n in 0..4 * PER_QUEUE {
        let at = (3 * n + 1) * BLOCK;
        let written = client.buffers()[n * BLOCK..(n + 1) * BLOCK].to_vec();
        model[at..at + BLOCK].copy_from_slice(&written);
    }
    let all = client.read_all(0, 4 << 20);
    if let Some(at) = first_difference(&all, &model) {
        panic!("the image read back through vblkd differs at byte {at}");
    }
    drop(client);
    assert!(daemon.stop().success(), "vblkd did not exit cleanly");
    assert_exported(&cluster, "vm1", &model);
}

/// An error librbd reports fails that request with IOERR and nothing else: the image shrinks
/// under vblkd (which keeps its capacity), so librbd refuses requests past the new end.
#[test]
#[ignore = "needs Ceph"]
fn an_error_from_librbd_fails_only_that_request() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = Cluster::start(dir.path());
    cluster.create_image("vm2", IMAGE_BYTES);
    let disk = cluster.disk("vm2");
    let daemon = Daemon::start(dir.path(), &["--disk", &disk]);
    let mut client = Client::connect(&daemon.socket, 1, false, BUFFER_BYTES).unwrap();
    let past_new_end = IMAGE_BYTES - (4 << 20);
    assert_eq!(client.write_sync(0, past_new_end, &[0x5a; 4096]), 0);
    let image = format!("{}/vm2", support::ceph::POOL);
    cluster.rbd(&[
        "resize",
        "--allow-shrink",
        "--no-progress",
        "--size",
        "32M",
        &image,
    ]);
    // librbd learns of the new size from the image's header watch, shortly after.
    eventually(
        "librbd refusing I/O past the new end",
        limits::REPLY,
        || client.read_sync(0, past_new_end, 4096) != 0,
    );
    assert_eq!(
        client.read_sync(0, 0, 4096),
        0,
        "a request inside the image failed"
    );
    assert_eq!(client.write_sync(0, 4096, &[0xa5; 4096]), 0);
    drop(client);
    assert!(daemon.stop().success(), "vblkd did not exit cleanly");
}

/// A snapshot is served read-only, as it was when taken.
#[test]
#[ignore = "needs Ceph"]
fn a_snapshot_is_served_read_only_as_it_was() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = Cluster::start(dir.path());
    cluster.create_image("vm4", IMAGE_BYTES);
    let image = format!("{}/vm4", support::ceph::POOL);
    {
        let daemon = Daemon::start(dir.path(), &["--disk", &cluster.disk("vm4")]);
        let mut client = Client::connect(&daemon.socket, 1, false, BUFFER_BYTES).unwrap();
        assert_eq!(client.write_sync(0, 8192, &[0x11; 4096]), 0);
        drop(client);
        assert!(daemon.stop().success());
    }
    cluster.rbd(&["snap", "create", &format!("{image}@before")]);
    let snapshot = format!("{}@before:conf={}", image, cluster.conf());
    let daemon = Daemon::start(dir.path(), &["--disk", &format!("rbd:{snapshot}")]);
    // The device says it is read-only (VIRTIO_BLK_F_RO), so the client refuses to open it
    // for writing.
    let refused = Client::connect(&daemon.socket, 1, false, BUFFER_BYTES).err();
    assert_eq!(
        refused.map(|e| e.errno().raw_os_error()),
        Some(libc::EROFS),
        "the snapshot was offered writable"
    );
    let mut client = Client::connect(&daemon.socket, 1, true, BUFFER_BYTES).unwrap();
    assert_eq!(client.read_sync(0, 8192, 4096), 0);
    assert!(client.buffers()[..4096].iter().all(|&b| b == 0x11));
    assert_eq!(client.read_sync(0, 0, 4096), 0);
    assert!(client.buffers()[..4096].iter().all(|&b| b == 0));
    drop(client);
    assert!(daemon.stop().success());
}

/// Online resize of an RBD disk: the image grows with `rbd resize`, and `vblkd ctl resize`
/// picks the new size up; a size that is not the image's is refused with what to do.
#[test]
#[ignore = "needs Ceph"]
fn an_image_grown_by_rbd_resize_is_picked_up() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = Cluster::start(dir.path());
    cluster.create_image("vm5", IMAGE_BYTES);
    let control = dir.path().join("control.sock");
    let control = control.to_str().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", &cluster.disk("vm5"), "--control", control],
    );
    let image = format!("{}/vm5", support::ceph::POOL);
    cluster.rbd(&["resize", "--no-progress", "--size", "96M", &image]);
    let (code, stderr) = run_vblkd(&["ctl", "--control", control, "resize", "128M"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("rbd resize"), "{stderr}");
    let (code, stderr) = run_vblkd(&["ctl", "--control", control, "resize"]);
    assert_eq!(code, 0, "{stderr}");
    let mut client = Client::connect(&daemon.socket, 1, false, BUFFER_BYTES).unwrap();
    assert_eq!(client.capacity(), 96 << 20);
    assert_eq!(client.write_sync(0, 80 << 20, &[0x77; 4096]), 0);
    drop(client);
    assert!(daemon.stop().success());
}

/// The QEMU guest test (O_DIRECT patterns at both ends, single sectors, WCE off) on an image;
/// what the guest wrote is checked in `rbd export` of it.
#[test]
#[ignore = "needs Ceph and QEMU"]
fn qemu_guest_on_an_rbd_disk() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = Cluster::start(dir.path());
    cluster.create_image("guest", support::guest::DISK_BYTES as u64);
    let disk = cluster.disk("guest");
    let daemon = Daemon::start(dir.path(), &["--disk", &disk, "--num-queues", "2"]);
    // GET_ID returns the image's name by default.
    check_guest(daemon, || cluster.export("guest"), Some("guest"));
}

#[test]
#[ignore = "needs Ceph"]
fn a_missing_image_or_an_unreachable_cluster_is_one_clear_error() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let socket = dir.path().join("s.sock");
    let socket = socket.to_str().unwrap();

    // Nobody listens on the monitor port this configuration names.
    let conf = dir.path().join("nowhere.conf");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &conf,
        format!("[global]\nmon host = v2:127.0.0.1:{port}/0\nauth client required = none\n"),
    )
    .unwrap();
    let disk = format!("rbd:rbd/vm0:conf={}", conf.display());
    let (code, stderr) = run_vblkd(&[
        "serve",
        "--socket",
        socket,
        "--disk",
        &disk,
        "--connect-timeout",
        "2",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot reach the Ceph cluster"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    let cluster = Cluster::start(dir.path());
    let (code, stderr) = run_vblkd(&["serve", "--socket", socket, "--disk", &cluster.disk("nope")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot open RBD image rbd/nope"),
        "{stderr}"
    );

    let (code, stderr) = run_vblkd(&[
        "serve",
        "--socket",
        socket,
        "--disk",
        &cluster.disk("nope"),
        "--cache",
        "writeback",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--cache does not apply to an RBD disk"),
        "{stderr}"
    );

    // The monitor answers, but no OSD serves the pool.
    cluster.create_image("vm3", IMAGE_BYTES);
    let mut cluster = cluster;
    cluster.kill_osd();
    let (code, stderr) = run_vblkd(&[
        "serve",
        "--socket",
        socket,
        "--disk",
        &cluster.disk("vm3"),
        "--connect-timeout",
        "2",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("did not open RBD image rbd/vm3"),
        "{stderr}"
    );

    let (code, stderr) = run_vblkd(&["serve", "--socket", socket, "--disk", "rbd:just-a-pool"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not an RBD disk"), "{stderr}");
}
