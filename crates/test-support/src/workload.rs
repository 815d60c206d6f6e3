//! The data-verifying workload shared by the client tests: random reads and writes of many
//! sizes, multi-segment and partly unaligned, many in flight on every queue, checked against
//! an in-memory model of the disk.

use blkio::ReqFlags;

use super::{first_difference, usize_of, Client, Rng};

const ROUNDS: usize = 10;
const REQUESTS_PER_QUEUE: usize = 12;
const MAX_REQUEST: u64 = 1 << 20;
/// Buffer space one round needs: every request at its largest, plus alignment slack.
pub const BUFFER_BYTES: usize = 40 << 20;

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
    let pieces = 1 + rng.index(8);
    let unit = if odd { 1 } else { 512 };
    let mut cuts: Vec<usize> = (1..pieces)
        .map(|_| rng.index(len / unit) * unit)
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
pub fn random_io(client: &mut Client, model: &mut [u8], rng: &mut Rng, queues: usize) {
    let disk_bytes = model.len() as u64;
    for round in 0..ROUNDS {
        let mut planned: Vec<Vec<Planned>> = (0..queues).map(|_| Vec::new()).collect();
        let mut next_buf = 0usize;
        for q in 0..queues {
            for i in 0..REQUESTS_PER_QUEUE {
                let len = pick_len(rng);
                let offset = loop {
                    let off = rng.below((disk_bytes - len) / 512 + 1) * 512;
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
                let len = usize_of(len);
                next_buf = (start + len).next_multiple_of(4096);
                assert!(next_buf <= BUFFER_BYTES);
                let write = rng.below(3) != 0;
                if write {
                    rng.fill(&mut client.buffers()[start..start + len]);
                }
                let iov = segments(rng, client.buffer_ptr(start), len, odd);
                planned[q].push(Planned {
                    write,
                    offset,
                    len,
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
                        u32::try_from(p.iov.len()).unwrap(),
                        i,
                        ReqFlags::empty(),
                    );
                } else {
                    queue.readv(
                        p.offset,
                        p.iov.as_ptr(),
                        u32::try_from(p.iov.len()).unwrap(),
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
                let extent = usize_of(p.offset)..usize_of(p.offset) + p.len;
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

pub fn submit_one(
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
pub fn zeroing_requests(client: &mut Client, model: &mut [u8]) {
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
        let len = usize_of(len);
        model[usize_of(offset)..usize_of(offset) + len].fill(0);
        assert_eq!(client.read_sync(0, offset, len), 0);
        assert!(
            client.buffers()[..len].iter().all(|&b| b == 0),
            "{what} left data behind"
        );
    }
}

/// Requests reaching past the end fail (and do not hang); the disk is unchanged.
pub fn past_end_requests(client: &mut Client) {
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
