//! The control socket: `vblkd ctl stats` counts exactly what a real client did (and what a
//! hostile request was refused for); bad control input gets error objects and never disturbs
//! the daemon or its I/O.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use blkio::ReqFlags;
use serde_json::Value;
use support::desc::WRITE as W;
use support::frontend::{chain, Guest, DATA, HDR, STATUS};
use support::{run_vblkd, Client, Daemon};
use vblkd::blk::layout::status;
use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;

fn ctl(control: &Path, command: &str) -> Value {
    let (code, out) = run_vblkd_stdout(&[
        "ctl",
        "--control",
        control.to_str().unwrap(),
        command,
        "--json",
    ]);
    assert_eq!(code, 0, "vblkd ctl {command} failed");
    serde_json::from_str(&out).expect("one JSON object")
}

fn run_vblkd_stdout(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(support::vblkd_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn stats_count_exactly_what_the_client_did() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let control = dir.path().join("control.sock");
    let (daemon, _disk) = Daemon::on_new_file(
        dir.path(),
        "16M",
        &["--num-queues", "2", "--control", control.to_str().unwrap()],
    );
    let mode = std::fs::metadata(&control).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the control socket is the owner's only"
    );

    let mut client = Client::connect(&daemon.socket, 2, false, 1 << 20).unwrap();
    for i in 0..10 {
        assert_eq!(client.read_sync(0, i * 4096, 4096), 0);
    }
    for i in 0..7 {
        assert_eq!(client.write_sync(1, i * 8192, &[0x33; 8192]), 0);
    }
    for _ in 0..3 {
        client.queues[1].flush(0, ReqFlags::empty());
        assert_eq!(client.wait(1, 1)[0].1, 0);
    }
    drop(client);
    // A hostile request: a read past the end of the disk.
    let mut guest = Guest::attach(&daemon.socket);
    guest.header(VIRTIO_BLK_T_IN, (16 << 20) / 512);
    let used = guest.submit(
        &chain(&[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]),
        &[0],
        1,
    );
    assert_eq!(used, vec![(0, 1)], "only the status byte is written");
    assert_eq!(
        guest.status(),
        status::IOERR,
        "a read past the end succeeded"
    );
    drop(guest);

    let stats = ctl(&control, "stats");
    let total = &stats["total"];
    let expect = [
        ("reads", 10),
        ("writes", 7),
        ("flushes", 3),
        ("bytes_read", 10 * 4096),
        ("bytes_written", 7 * 8192),
        ("io_errors", 0),
        ("in_flight", 0),
    ];
    for (key, want) in expect {
        assert_eq!(total[key], want, "total {key}: {stats}");
    }
    assert_eq!(total["rejected"]["past_end"], 1, "{stats}");
    // Every request the disk saw has a latency: 10 reads, 7 writes, 3 flushes.
    let latency = &total["latency_us"];
    assert_eq!(latency["count"], 20, "{stats}");
    let (p50, p99, max) = (
        latency["p50"].as_f64().unwrap(),
        latency["p99"].as_f64().unwrap(),
        latency["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{latency}");
    assert_eq!(stats["queues"][1]["latency_us"]["count"], 10, "{stats}");
    assert_eq!(stats["queues"][0]["reads"], 10, "{stats}");
    assert_eq!(stats["queues"][1]["writes"], 7, "{stats}");
    // One request at a time, each handed to the engine in a submission of its own; the
    // refused one reached no engine.
    assert_eq!(total["submissions"], 20, "{stats}");
    // Every queue signals its guest, at most once per request answered (21, the refused one
    // included) and once per ring start (three: two queues, then the hand-made guest's) —
    // fewer when the client is still looking at the used ring and its event index does not
    // ask for a signal, which depends on timing.
    let notifications = total["notifications"].as_u64().unwrap();
    assert!((3..=24).contains(&notifications), "{stats}");
    for q in 0..2 {
        assert!(
            stats["queues"][q]["notifications"].as_u64().unwrap() > 0,
            "{stats}"
        );
    }

    let info = ctl(&control, "info");
    assert_eq!(info["capacity"], 16 << 20, "{info}");
    assert_eq!(info["num_queues"], 2, "{info}");
    assert_eq!(info["serial"], "disk.img", "{info}");
    assert!(daemon.stop().success());
}

/// Sends `request` (a line, or anything) and returns the reply line.
fn exchange(stream: &UnixStream, request: &[u8]) -> Value {
    (&*stream).write_all(request).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn connect(control: &Path) -> UnixStream {
    let stream = UnixStream::connect(control).unwrap();
    let mut greeting = String::new();
    BufReader::new(&stream).read_line(&mut greeting).unwrap();
    let greeting: Value = serde_json::from_str(&greeting).unwrap();
    assert_eq!(greeting["vblkd"]["protocol"], 1, "{greeting}");
    stream
}

#[test]
fn bad_control_input_gets_error_objects_and_io_carries_on() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let control = dir.path().join("control.sock");
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", "null:64M", "--control", control.to_str().unwrap()],
    );
    let s = connect(&control);
    let class = |v: Value| v["error"]["class"].as_str().unwrap_or("").to_owned();
    assert_eq!(class(exchange(&s, b"garbage\n")), "ParseError");
    assert_eq!(
        class(exchange(&s, b"{\"execute\": \"reboot\"}\n")),
        "CommandNotFound"
    );
    assert_eq!(
        class(exchange(&s, b"{\"run\": \"stats\"}\n")),
        "InvalidRequest"
    );
    assert_eq!(class(exchange(&s, b"[1, 2, 3]\n")), "InvalidRequest");
    // The same connection still answers.
    assert!(exchange(&s, b"{\"execute\": \"stats\"}\n")["return"]["total"].is_object());
    // A line longer than the limit: an error, then the connection closes.
    let huge = vec![b'x'; 100 << 10];
    assert_eq!(class(exchange(&s, &huge)), "LineTooLong");
    // Closed with our unread bytes still queued: the end comes as a reset or as EOF.
    let mut rest = String::new();
    match BufReader::new(&s).read_line(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection stayed open: {other:?} {rest}"),
    }
    // A client that leaves in the middle of a request.
    let half = connect(&control);
    (&half).write_all(b"{\"execute\": \"sta").unwrap();
    drop(half);
    // Clients that connect and say nothing take their own threads, up to a limit.
    let idle: Vec<UnixStream> = (0..16).map(|_| connect(&control)).collect();
    let refused = UnixStream::connect(&control).unwrap();
    let mut line = String::new();
    BufReader::new(&refused).read_line(&mut line).unwrap();
    assert!(line.contains("TooManyClients"), "{line}");
    drop(idle);

    // The daemon still serves I/O, and `vblkd ctl` still works.
    let mut client = Client::connect(&daemon.socket, 1, false, 1 << 20).unwrap();
    assert_eq!(client.read_sync(0, 0, 4096), 0);
    drop(client);
    let (code, out) = run_vblkd_stdout(&["ctl", "--control", control.to_str().unwrap(), "stats"]);
    assert_eq!(code, 0);
    assert!(out.contains("total.reads: 1"), "{out}");
    let (code, err) = run_vblkd(&["ctl", "--control", "/nonexistent/ctl.sock", "info"]);
    assert_eq!(code, 2);
    assert!(err.contains("is vblkd running with --control"), "{err}");
    assert!(daemon.stop().success());
}

/// `GET /metrics` over plain HTTP/1.0; returns the body.
pub(crate) fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: vblkd\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    body.to_owned()
}

/// The value of the sample `name{labels}` in a scrape.
pub(crate) fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
        .parse()
        .unwrap()
}

#[test]
#[ignore = "needs promtool (Debian's prometheus)"]
fn metrics_pass_promtool_and_match_ctl_stats() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let control = dir.path().join("control.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--disk",
            "null:64M",
            "--num-queues",
            "2",
            "--control",
            control.to_str().unwrap(),
            "--metrics",
            &addr,
            "--throttle",
            "iops-total=100000,bps-total=1G",
        ],
    );
    let mut client = Client::connect(&daemon.socket, 2, false, 1 << 20).unwrap();
    for i in 0..5 {
        assert_eq!(client.read_sync(0, i * 4096, 4096), 0);
        assert_eq!(client.write_sync(1, i * 4096, &[1; 4096]), 0);
    }
    drop(client);

    let body = scrape(&addr);
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; scripts/setup installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}\n{body}",
        String::from_utf8_lossy(&checked.stderr)
    );

    let stats = ctl(&control, "stats");
    for (q, key) in [
        (0, "reads"),
        (1, "writes"),
        (1, "bytes_written"),
        (0, "notifications"),
    ] {
        let series = format!("vblkd_{key}_total{{queue=\"{q}\"}}");
        assert_eq!(
            sample(&body, &series),
            stats["queues"][q][key].as_u64().unwrap(),
            "{series}"
        );
    }
    assert_eq!(sample(&body, "vblkd_reads_total{queue=\"0\"}"), 5);
    assert_eq!(sample(&body, "vblkd_limit{key=\"iops-total\"}"), 100_000);
    assert_eq!(sample(&body, "vblkd_limit{key=\"bps-total\"}"), 1 << 30);
    assert_eq!(sample(&body, "vblkd_paused"), 0);
    assert_eq!(sample(&body, "vblkd_throttled_total{queue=\"1\"}"), 0);
    assert_eq!(
        sample(&body, "vblkd_request_latency_seconds_count{queue=\"1\"}"),
        5
    );
    assert!(daemon.stop().success());
}
