//! vblkd on a real block device: a loop device over a file (losetup, root). Sizes and sector
//! sizes come from the device's ioctls; data is verified through the daemon and in the file.

use std::path::{Path, PathBuf};

use support::blockdev::Loop;
use support::workload::{random_io, BUFFER_BYTES};
use support::{first_difference, pattern_byte, run_vblkd, Client, Daemon, Rng};

const DISK_BYTES: usize = 32 << 20;

fn backing_file(dir: &Path) -> PathBuf {
    let file = dir.join("backing.img");
    let data: Vec<u8> = (0..DISK_BYTES).map(|i| pattern_byte(i, 13)).collect();
    std::fs::write(&file, data).unwrap();
    file
}

#[test]
#[ignore = "needs root (loop devices)"]
fn serves_a_block_device() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = backing_file(dir.path());
    let dev = Loop::attach(&file, 512);

    let (code, err) = run_vblkd(&[
        "serve",
        "--socket",
        "/tmp/unused.sock",
        "--disk",
        dev.path(),
        "--size",
        "1M",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot resize block device"), "{err}");

    let daemon = Daemon::start(dir.path(), &["--disk", dev.path(), "--num-queues", "2"]);
    let mut model = std::fs::read(&file).unwrap();
    let mut client = Client::connect(&daemon.socket, 2, false, BUFFER_BYTES).unwrap();
    assert_eq!(
        client.capacity(),
        DISK_BYTES as u64,
        "size from BLKGETSIZE64"
    );
    random_io(&mut client, &mut model, &mut Rng::new(0x10b), 2);
    client.queues[0].flush(0, blkio::ReqFlags::empty());
    assert_eq!(client.wait(0, 1)[0].1, 0);
    drop(client);
    assert!(daemon.stop().success());
    drop(dev);
    let on_disk = std::fs::read(&file).unwrap();
    if let Some(at) = first_difference(&on_disk, &model) {
        panic!("backing file differs at byte {at}");
    }
}

#[test]
#[ignore = "needs root (loop devices)"]
fn four_kib_sector_device_needs_a_matching_block_size() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = backing_file(dir.path());
    let dev = Loop::attach(&file, 4096);

    let socket = dir.path().join("s.sock");
    let (code, err) = run_vblkd(&[
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--disk",
        dev.path(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("4096-byte sectors") && err.contains("--logical-block-size 4096"),
        "{err}"
    );

    let daemon = Daemon::start(
        dir.path(),
        &["--disk", dev.path(), "--logical-block-size", "4096"],
    );
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    assert_eq!(client.blkio.get_i32("request-alignment").unwrap(), 4096);
    assert_eq!(client.read_sync(0, 4096, 8192), 0);
    let expected: Vec<u8> = (4096..12288).map(|i| pattern_byte(i, 13)).collect();
    assert_eq!(&client.buffers()[..8192], &expected[..]);
    drop(client);
    assert!(daemon.stop().success());
}
