//! A bad command line or an unusable disk: one line saying what is wrong and what to do, and
//! exit status 2.

use support::run_vblkd;

/// A 1 MiB disk image in `dir`.
fn image(dir: &std::path::Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    img
}

fn serve_error(dir: &std::path::Path, extra: &[&str]) -> String {
    let socket = dir.join("s.sock");
    let mut args = vec!["serve", "--socket", socket.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, stderr) = run_vblkd(&args);
    assert_eq!(code, 2, "exit status for {extra:?}; stderr: {stderr}");
    eprintln!("{extra:?} -> {stderr}");
    stderr
}

#[test]
fn unusable_disks_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let img_s = img.to_str().unwrap();

    let e = serve_error(dir.path(), &["--disk", img_s]);
    assert!(e.contains("does not exist") && e.contains("--size"), "{e}");

    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let e = serve_error(dir.path(), &["--disk", img_s, "--size", "4096"]);
    assert!(e.contains("refusing to shrink"), "{e}");
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        1 << 20,
        "the file was changed"
    );

    let e = serve_error(
        dir.path(),
        &["--disk", img_s, "--aio", "native", "--cache", "writeback"],
    );
    assert!(
        e.contains("O_DIRECT") && e.contains("io_submit blocks"),
        "{e}"
    );

    let e = serve_error(dir.path(), &["--disk", dir.path().to_str().unwrap()]);
    assert!(
        e.contains("neither a regular file nor a block device"),
        "{e}"
    );

    std::fs::write(dir.path().join("tiny.img"), [0u8; 100]).unwrap();
    let e = serve_error(
        dir.path(),
        &["--disk", dir.path().join("tiny.img").to_str().unwrap()],
    );
    assert!(e.contains("smaller than one 512-byte block"), "{e}");
}

#[test]
fn bad_options_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let img_s = img.to_str().unwrap();

    let e = serve_error(dir.path(), &["--disk", img_s, "--queue-size", "100"]);
    assert!(e.contains("power of two"), "{e}");
    let e = serve_error(
        dir.path(),
        &["--disk", img_s, "--logical-block-size", "1024"],
    );
    assert!(e.contains("512 or 4096"), "{e}");
    let e = serve_error(
        dir.path(),
        &["--disk", img_s, "--serial", "a-serial-that-is-far-too-long"],
    );
    assert!(e.contains("at most 20"), "{e}");
    let e = serve_error(dir.path(), &["--disk", img_s, "--size", "12Q"]);
    assert!(e.contains("suffix"), "{e}");
    let e = serve_error(dir.path(), &["--disk", img_s, "--aio", "posix"]);
    assert!(e.contains("io_uring") && e.contains("threads"), "{e}");
    let e = serve_error(
        dir.path(),
        &["--disk", img_s, "--throttle", "iops-total=5,iops-read=5"],
    );
    assert!(
        e.contains("iops-total and iops-read cannot be used at the same time"),
        "{e}"
    );
    let e = serve_error(dir.path(), &["--disk", img_s, "--throttle", "iops=5"]);
    assert!(
        e.contains("unknown limit 'iops'") && e.contains("iops-total"),
        "{e}"
    );
    let e = serve_error(
        dir.path(),
        &["--disk", img_s, "--num-queues", "2", "--queue-threads", "3"],
    );
    assert!(
        e.contains("--queue-threads 3 is more than --num-queues 2") && e.contains("at most 2"),
        "{e}"
    );
    let e = serve_error(dir.path(), &["--disk", img_s, "--rerror", "enospc"]);
    assert!(e.contains("report") && e.contains("stop"), "{e}");
    let e = serve_error(dir.path(), &["--disk", img_s, "--seccomp", "strict"]);
    assert!(
        e.contains("kill") && e.contains("log") && e.contains("off"),
        "{e}"
    );

    let (code, e) = run_vblkd(&[
        "serve",
        "--socket",
        "/nonexistent/dir/s.sock",
        "--disk",
        img_s,
    ]);
    assert_eq!(code, 2);
    assert!(
        e.contains("cannot listen on /nonexistent/dir/s.sock"),
        "{e}"
    );
}

#[test]
fn options_that_do_not_apply_to_the_disk_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let img_s = img.to_str().unwrap();
    for (disk, option, says) in [
        (
            "null:1G",
            ["--aio", "native"],
            "--aio does not apply to a null disk",
        ),
        (
            "null:1G",
            ["--size", "1G"],
            "--size does not apply to a null disk",
        ),
        (
            "aoe://lo/e1.1",
            ["--cache", "writeback"],
            "--cache does not apply to an AoE disk",
        ),
        (
            "rbd:pool/image",
            ["--threads", "4"],
            "--threads does not apply to an RBD disk",
        ),
        (
            img_s,
            ["--aoe-deadline", "5"],
            "--aoe-deadline does not apply to a file or block device",
        ),
    ] {
        let mut args = vec!["--disk", disk];
        args.extend(option);
        let e = serve_error(dir.path(), &args);
        assert!(e.contains(says), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    }
}

/// `aoe-export`'s mistakes are named before any socket is opened.
#[test]
fn bad_exports_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let export = |extra: &[&str]| {
        let mut args = vec!["aoe-export", "--interface", "lo"];
        args.extend_from_slice(extra);
        let (code, stderr) = run_vblkd(&args);
        assert_eq!(code, 2, "exit status for {extra:?}; stderr: {stderr}");
        stderr
    };
    let e = export(&["1.1=/x"]);
    assert!(e.contains("write e<shelf>.<slot>=DISK"), "{e}");
    let e = export(&["e1.255=/x"]);
    assert!(e.contains("slot 0-254"), "{e}");
    let one = format!("e1.1={}", img.display());
    let e = export(&[&one, &one]);
    assert!(e.contains("are both e1.1"), "{e}");
    let e = export(&["e1.1=null:1M", "--aio", "native"]);
    assert!(e.contains("--aio does not apply to a null disk"), "{e}");
    let (code, stderr) = run_vblkd(&["aoe-export", &one]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--interface"), "{stderr}");
}
