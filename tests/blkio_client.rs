//! vblkd driven by a real, independently written vhost-user-blk client: the `blkio` crate's
//! `virtio-blk-vhost-user` driver. Every byte written is read back and compared, through the
//! daemon and in the host file.

mod common;

use std::path::Path;

use blkio::ReqFlags;
use common::{first_difference, Client, Daemon, Rng};

const DISK_BYTES: u64 = 64 << 20;
const BUFFER_BYTES: usize = 40 << 20;
const QUEUES: usize = 2;
const ROUNDS: usize = 10;
const REQUESTS_PER_QUEUE: usize = 12;
const MAX_REQUEST: u64 = 1 << 20;

/// One request of a round: its extent on disk and where its data sits in the buffer region.
struct Planned {
    write: bool,
    offset: u64,
    len: usize,
    iov: Vec<libc::iovec>,
}

fn pick_len(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => 512,
        1 => 4096,
        2 => 8192,
        3 => 64 << 10,
        4 => MAX_REQUEST,
        _ => (1 + rng.below(MAX_REQUEST / 512)) * 512,
    }
}

/// Splits `len` bytes at `base` into 1 to 8 segments. Most cuts fall on 512-byte boundaries;
/// some requests get arbitrary cuts and an unaligned start, which O_DIRECT cannot take
/// directly and the daemon must bounce.
fn segments(rng: &mut Rng, base: *mut u8, len: usize, odd: bool) -> Vec<libc::iovec> {
    let pieces = 1 + rng.below(8) as usize;
    let unit = if odd { 1 } else { 512 };
    let mut cuts: Vec<usize> = (1..pieces)
        .map(|_| rng.below((len / unit) as u64) as usize * unit)
        .filter(|&c| c > 0 && c < len)
        .collect();
    cuts.push(0);
    cuts.push(len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| libc::iovec {
            // SAFETY: w[0] < len, inside the buffer the caller reserved.
            iov_base: unsafe { base.add(w[0]) }.cast(),
            iov_len: w[1] - w[0],
        })
        .collect()
}

fn overlaps(a: (u64, u64), planned: &[Planned]) -> bool {
    planned
        .iter()
        .any(|p| a.0 < p.offset + p.len as u64 && p.offset < a.1)
}

/// Random reads and writes of many sizes, many in flight on both queues, checked against an
/// in-memory model of the disk.
fn random_io(client: &mut Client, model: &mut [u8], rng: &mut Rng) {
    for round in 0..ROUNDS {
        let mut planned: Vec<Vec<Planned>> = (0..QUEUES).map(|_| Vec::new()).collect();
        let mut next_buf = 0usize;
        for q in 0..QUEUES {
            for i in 0..REQUESTS_PER_QUEUE {
                let len = pick_len(rng);
                let offset = loop {
                    let off = rng.below((DISK_BYTES - len) / 512 + 1) * 512;
                    let all: Vec<&Planned> = planned.iter().flatten().collect();
                    if !all
                        .iter()
                        .any(|p| off < p.offset + p.len as u64 && p.offset < off + len)
                    {
                        break off;
                    }
                };
                debug_assert!(!overlaps((offset, offset + len), &planned[q]));
                let odd = (round + i) % 5 == 0;
                let start = next_buf + if odd { 8 } else { 0 };
                next_buf = (start + len as usize).next_multiple_of(4096);
                assert!(next_buf <= BUFFER_BYTES);
                let write = rng.below(3) != 0;
                if write {
                    rng.fill(&mut client.buffers()[start..start + len as usize]);
                }
                let iov = segments(rng, client.buffer_ptr(start), len as usize, odd);
                planned[q].push(Planned {
                    write,
                    offset,
                    len: len as usize,
                    iov,
                });
            }
        }
        for (q, reqs) in planned.iter().enumerate() {
            for (i, p) in reqs.iter().enumerate() {
                let queue = &mut client.queues[q];
                if p.write {
                    queue.writev(
                        p.offset,
                        p.iov.as_ptr(),
                        p.iov.len() as u32,
                        i,
                        ReqFlags::empty(),
                    );
                } else {
                    queue.readv(
                        p.offset,
                        p.iov.as_ptr(),
                        p.iov.len() as u32,
                        i,
                        ReqFlags::empty(),
                    );
                }
            }
        }
        for (q, reqs) in planned.iter().enumerate() {
            for (i, ret) in client.wait(q, reqs.len()) {
                let p = &reqs[i];
                assert_eq!(
                    ret,
                    0,
                    "round {round} queue {q}: {} of {} at {} failed",
                    if p.write { "write" } else { "read" },
                    p.len,
                    p.offset
                );
            }
        }
        for reqs in &planned {
            for p in reqs {
                let data: Vec<u8> = p
                    .iov
                    .iter()
                    // SAFETY: the request completed; its buffers are ours again.
                    .flat_map(|v| unsafe {
                        std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                    })
                    .copied()
                    .collect();
                let extent = p.offset as usize..p.offset as usize + p.len;
                if p.write {
                    model[extent].copy_from_slice(&data);
                } else if let Some(at) = first_difference(&data, &model[extent]) {
                    panic!(
                        "round {round}: read of {} at {} differs at byte {at}",
                        p.len, p.offset
                    );
                }
            }
        }
    }
}

fn submit_one(
    client: &mut Client,
    q: usize,
    what: &str,
    op: impl FnOnce(&mut blkio::Blkioq),
) -> i32 {
    op(&mut client.queues[q]);
    let ret = client.wait(q, 1)[0].1;
    eprintln!("{what}: {ret}");
    ret
}

/// Flush, write-zeroes with and without unmap, discard; each checked by reading back.
fn zeroing_requests(client: &mut Client, model: &mut [u8]) {
    assert_eq!(
        submit_one(client, 0, "flush", |q| q.flush(0, ReqFlags::empty())),
        0
    );

    let cases: [(&str, u64, u64); 3] = [
        ("write-zeroes (may unmap)", 1 << 20, 3 << 20),
        ("write-zeroes (no unmap)", 8 << 20, 256 << 10),
        ("discard", 16 << 20, 2 << 20),
    ];
    for (what, offset, len) in cases {
        let ret = submit_one(client, 1, what, |q| match what {
            "discard" => q.discard(offset, len, 0, ReqFlags::empty()),
            "write-zeroes (no unmap)" => q.write_zeroes(offset, len, 0, ReqFlags::NO_UNMAP),
            _ => q.write_zeroes(offset, len, 0, ReqFlags::empty()),
        });
        assert_eq!(ret, 0, "{what}");
        // This daemon punches a hole for discard, so the range reads back as zeroes.
        model[offset as usize..(offset + len) as usize].fill(0);
        assert_eq!(client.read_sync(0, offset, len as usize), 0);
        assert!(
            client.buffers()[..len as usize].iter().all(|&b| b == 0),
            "{what} left data behind"
        );
    }
}

/// Requests reaching past the end fail (and do not hang); the disk is unchanged.
fn past_end_requests(client: &mut Client) {
    let capacity = client.capacity();
    assert_ne!(
        client.read_sync(0, capacity - 512, 4096),
        0,
        "read past the end succeeded"
    );
    assert_ne!(
        client.read_sync(1, capacity, 512),
        0,
        "read at the end succeeded"
    );
    assert_ne!(
        client.write_sync(0, capacity - 512, &[0xAA; 1024]),
        0,
        "write past the end succeeded"
    );
}

fn assert_file_matches(path: &Path, model: &[u8]) {
    let file = std::fs::read(path).unwrap();
    assert_eq!(file.len(), model.len());
    if let Some(at) = first_difference(&file, model) {
        panic!("host file differs from what the guest wrote at byte {at}");
    }
}

fn io_suite(aio: &str, cache: &str) {
    io_suite_with(aio, cache, &[]);
}

fn io_suite_with(aio: &str, cache: &str, extra: &[&str]) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    let mut args = vec![
        "--disk",
        disk.to_str().unwrap(),
        "--size",
        "64M",
        "--num-queues",
        "2",
        "--aio",
        aio,
        "--cache",
        cache,
    ];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(dir.path(), &args);
    let mut rng = Rng::new(0x5eed ^ aio.len() as u64 ^ ((cache.len() as u64) << 8));
    let mut model = vec![0u8; DISK_BYTES as usize];
    {
        let mut client =
            Client::connect(&daemon.socket, QUEUES as i32, false, BUFFER_BYTES).unwrap();
        assert_eq!(client.capacity(), DISK_BYTES);
        random_io(&mut client, &mut model, &mut rng);
        zeroing_requests(&mut client, &mut model);
        past_end_requests(&mut client);
        assert_eq!(
            submit_one(&mut client, 0, "flush", |q| q.flush(0, ReqFlags::empty())),
            0
        );
        let all = client.read_all(1, 4 << 20);
        if let Some(at) = first_difference(&all, &model) {
            panic!("disk read back through the daemon differs at byte {at}");
        }
    }
    // The flush above made the data durable; the host file must hold exactly the model.
    assert_file_matches(&disk, &model);

    // A second frontend (or the same VM reconnecting) sees the same data.
    let mut client = Client::connect(&daemon.socket, 1, false, 8 << 20).unwrap();
    let all = client.read_all(0, 8 << 20);
    assert!(
        first_difference(&all, &model).is_none(),
        "data changed across reconnect"
    );
    drop(client);

    let status = daemon.stop();
    assert!(status.success(), "vblkd exited with {status} after SIGTERM");
}

#[test]
fn io_uring_cache_none() {
    io_suite("io_uring", "none");
}

#[test]
fn io_uring_cache_writeback() {
    io_suite("io_uring", "writeback");
}

#[test]
fn native_cache_none() {
    io_suite("native", "none");
}

#[test]
fn native_cache_directsync() {
    io_suite("native", "directsync");
}

#[test]
fn threads_cache_none() {
    io_suite("threads", "none");
}

#[test]
fn threads_cache_writeback() {
    io_suite("threads", "writeback");
}

#[test]
fn io_uring_cache_writethrough() {
    io_suite("io_uring", "writethrough");
}

#[test]
fn threads_cache_unsafe() {
    io_suite("threads", "unsafe");
}

/// Busy-polling replaces the kick and the engine eventfd with a spin; the data must not care.
#[test]
fn io_uring_cache_none_polling() {
    io_suite_with("io_uring", "none", &["--poll-us", "100"]);
}

#[test]
fn native_cache_none_polling() {
    io_suite_with("native", "none", &["--poll-us", "100"]);
}

#[test]
fn threads_cache_writeback_polling() {
    io_suite_with("threads", "writeback", &["--poll-us", "100"]);
}

#[test]
fn read_only_disk_is_offered_read_only() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = dir.path().join("disk.img");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&disk, &data).unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &["--disk", disk.to_str().unwrap(), "--read-only"],
    );

    // The device offers VIRTIO_BLK_F_RO, so a read-write client is turned away...
    let err = Client::connect(&daemon.socket, 1, false, 1 << 20)
        .err()
        .expect("read-write attach must fail");
    assert_eq!(err.errno(), blkio::Errno::ROFS, "{}", err.message());
    // ...and a read-only one reads the data. (Writes that get past a client are refused by
    // the daemon itself: see hostile_guest.rs.)
    let mut client = Client::connect(&daemon.socket, 1, true, 1 << 20).unwrap();
    assert_eq!(client.read_all(0, 256 << 10), data);
    drop(client);
    assert!(daemon.stop().success());
}
