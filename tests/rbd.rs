//! vblkd in front of a real Ceph cluster (single node, started by the test): random I/O of
//! many sizes over two queues, read back through vblkd and compared with `rbd export` of the
//! image; flush, discard and write-zeroes; a QEMU guest on an image; and the one clear error
//! for an unreachable cluster or a missing image.

mod common;

use common::ceph::Cluster;
use common::guest::check_guest;
use common::workload::{past_end_requests, random_io, submit_one, zeroing_requests, BUFFER_BYTES};
use common::{first_difference, run_vblkd, usize_of, Client, Daemon, Rng};

const IMAGE_BYTES: u64 = 64 << 20;

#[test]
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
    let exported = cluster.export("vm0");
    if let Some(at) = first_difference(&exported, &model) {
        panic!("rbd export of the image differs from what was written at byte {at}");
    }
}

/// The QEMU guest test (O_DIRECT patterns at both ends, single sectors, WCE off) on an image;
/// what the guest wrote is checked in `rbd export` of it.
#[test]
fn qemu_guest_on_an_rbd_disk() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cluster = Cluster::start(dir.path());
    cluster.create_image("guest", common::guest::DISK_BYTES as u64);
    let disk = cluster.disk("guest");
    let daemon = Daemon::start(dir.path(), &["--disk", &disk, "--num-queues", "2"]);
    // GET_ID returns the image's name by default.
    check_guest(daemon, || cluster.export("guest"), Some("guest"));
}

#[test]
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
    assert!(stderr.contains("--cache applies to files"), "{stderr}");

    let (code, stderr) = run_vblkd(&["serve", "--socket", socket, "--disk", "rbd:just-a-pool"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not an RBD disk"), "{stderr}");
}
