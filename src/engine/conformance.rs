//! One suite, every engine: the same operations on an O_DIRECT temporary file through
//! io_uring, Linux AIO, the thread pool and the null engine, only the constructor differing.
//! The null engine moves no data, so it is held to the completion contract only.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use vm_memory::GuestMemoryBackend as _;

use super::*;
use crate::engine::AlignedBuffer;
use crate::GuestMemory;

const FILE_BYTES: u64 = 1 << 20;
const CAPACITY: u16 = 64;

/// An engine under test.
struct Subject {
    engine: Box<dyn Engine>,
    moves_data: bool,
    /// Whether it holds operations in a table of `CAPACITY` entries (and refuses more).
    bounded: bool,
}

fn file() -> (tempfile::TempDir, File) {
    // O_DIRECT needs a real file system, not the tmpfs /tmp may be.
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
    let path = dir.path().join("disk.img");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    file.set_len(FILE_BYTES).unwrap();
    (dir, file)
}

/// Every engine, each over a fresh file.
fn subjects() -> Vec<(&'static str, tempfile::TempDir, Subject)> {
    type Make = fn(Arc<File>) -> Box<dyn Engine>;
    let makers: [(&str, Make, bool, bool); 4] = [
        (
            "io_uring",
            |f| Box::new(UringEngine::new(f, CAPACITY, None).unwrap()),
            true,
            true,
        ),
        (
            "native",
            |f| Box::new(AioEngine::new(f, CAPACITY).unwrap()),
            true,
            true,
        ),
        (
            "threads",
            |f| Box::new(ThreadPool::engine(f, 4).unwrap()),
            true,
            false,
        ),
        (
            "null",
            |_| Box::new(NullEngine::new(CAPACITY).unwrap()),
            false,
            false,
        ),
    ];
    makers
        .into_iter()
        .map(|(name, make, moves_data, bounded)| {
            let (dir, file) = file();
            let subject = Subject {
                engine: make(Arc::new(file)),
                moves_data,
                bounded,
            };
            (name, dir, subject)
        })
        .collect()
}

impl Subject {
    /// Pushes `ops`, submits, and waits for all their completions (in token order).
    fn run(&mut self, ops: Vec<(u64, IoOp)>) -> Vec<Completion> {
        let count = ops.len();
        for (token, op) in ops {
            self.engine.push(token, op);
        }
        self.engine.submit().unwrap();
        let mut done = Vec::new();
        for _ in 0..100 {
            if done.len() >= count {
                break;
            }
            reap_or_wait(&mut *self.engine, &mut done, 100).unwrap();
        }
        assert_eq!(done.len(), count, "not every operation completed");
        done.sort_by_key(|c| c.token);
        done
    }

    /// Runs one operation.
    fn one(&mut self, token: u64, op: IoOp) -> Completion {
        self.run(vec![(token, op)]).remove(0)
    }
}

fn bytes(done: &Completion) -> usize {
    *done.result.as_ref().expect("operation failed")
}

/// What a read brought back in its own buffer.
fn read_back(done: Completion) -> AlignedBuffer {
    let buffer = done.data.and_then(DataBuffers::into_aligned);
    buffer.expect("a read's buffer comes back")
}

fn pattern(len: usize, seed: u8) -> AlignedBuffer {
    let mut buf = AlignedBuffer::new(len).unwrap();
    for (b, i) in buf.as_mut_slice().iter_mut().zip((0..=255u8).cycle()) {
        *b = i.wrapping_mul(31).wrapping_add(seed) | 1;
    }
    buf
}

fn read(offset: u64, len: usize) -> IoOp {
    IoOp::Transfer {
        direction: Direction::Read,
        offset,
        data: DataBuffers::aligned(AlignedBuffer::new(len).unwrap()),
    }
}

#[test]
fn written_data_reads_back_through_two_segments_of_guest_memory() {
    for (name, _dir, mut s) in subjects() {
        let data = pattern(64 << 10, 7);
        let half = 32 << 10;
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 10)]).unwrap();
        let region = mem.iter().next().unwrap();
        // SAFETY: the region is mapped, 64 KiB long, and nothing else uses it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_slice().as_ptr(), region.as_ptr(), 64 << 10)
        };
        let iovecs = vec![
            libc::iovec {
                iov_base: region.as_ptr().cast(),
                iov_len: half,
            },
            libc::iovec {
                iov_base: region.as_ptr().wrapping_add(half).cast(),
                iov_len: half,
            },
        ];
        // SAFETY: both iovecs lie in the one region of `mem`.
        let guest = unsafe { DataBuffers::borrowing(Arc::new(mem.clone()), iovecs) };
        let write = IoOp::Transfer {
            direction: Direction::Write { dsync: false },
            offset: 4096,
            data: guest,
        };
        let written = s.one(1, write);
        assert_eq!(bytes(&written), 64 << 10, "{name}");
        assert_eq!(
            written.data.map(|d| d.len()),
            Some(64 << 10),
            "{name}: buffers back"
        );
        let back = s.one(2, read(4096, 64 << 10));
        assert_eq!(bytes(&back), 64 << 10, "{name}");
        if s.moves_data {
            assert!(
                read_back(back).as_slice() == data.as_slice(),
                "{name}: data differs"
            );
        }
    }
}

#[test]
fn a_full_window_in_flight_completes_every_operation_once() {
    for (name, _dir, mut s) in subjects() {
        let ops = (0..CAPACITY)
            .map(|i| (u64::from(i), read(u64::from(i) * 8192, 4096)))
            .collect();
        let results = s.run(ops);
        let tokens: Vec<u64> = results.iter().map(|c| c.token).collect();
        assert_eq!(
            tokens,
            (0..u64::from(CAPACITY)).collect::<Vec<_>>(),
            "{name}"
        );
        assert!(results.iter().all(|c| bytes(c) == 4096), "{name}");
        assert!(
            results.iter().all(|c| c.data.is_some()),
            "{name}: buffers back"
        );
    }
}

#[test]
fn flush_dsync_discard_and_write_zeroes_complete_and_zero() {
    for (name, _dir, mut s) in subjects() {
        let data = pattern(16 << 10, 3);
        let want = data.as_slice().to_vec();
        let write = IoOp::Transfer {
            direction: Direction::Write { dsync: true },
            offset: 0,
            data: DataBuffers::aligned(data),
        };
        assert_eq!(bytes(&s.one(1, write)), 16 << 10, "{name}");
        let ops = [
            IoOp::Discard {
                offset: 0,
                len: 4096,
            },
            IoOp::WriteZeroes {
                offset: 8192,
                len: 4096,
                unmap: false,
            },
            IoOp::Flush,
        ];
        for (token, op) in (2..).zip(ops) {
            let what = format!("{op:?}");
            let done = s.one(token, op);
            assert_eq!(bytes(&done), 0, "{name}: {what}");
            assert!(done.data.is_none(), "{name}: {what}");
        }
        let back = s.one(9, read(0, 16 << 10));
        assert_eq!(bytes(&back), 16 << 10, "{name}");
        if s.moves_data {
            let back = read_back(back);
            let got = back.as_slice();
            assert!(got[..4096].iter().all(|&b| b == 0), "{name}: discard");
            assert!(got[4096..8192] == want[4096..8192], "{name}: untouched");
            assert!(got[8192..12288].iter().all(|&b| b == 0), "{name}: zeroes");
            assert!(got[12288..] == want[12288..], "{name}: untouched");
        }
    }
}

#[test]
fn a_read_across_the_end_of_the_file_returns_what_exists() {
    for (name, _dir, mut s) in subjects() {
        let n = bytes(&s.one(1, read(FILE_BYTES - 4096, 8192)));
        // A short transfer, which the worker completes by resubmitting the rest.
        let want = if s.moves_data { 4096 } else { 8192 };
        assert_eq!(n, want, "{name}");
    }
}

#[test]
fn an_operation_beyond_the_capacity_is_refused_with_ebusy_and_its_buffers_come_back() {
    for (name, _dir, mut s) in subjects().into_iter().filter(|(_, _, s)| s.bounded) {
        let ops = (0..=CAPACITY)
            .map(|i| (u64::from(i), read(u64::from(i) * 4096, 4096)))
            .collect();
        let results = s.run(ops);
        let refused: Vec<_> = results
            .iter()
            .filter(|c| c.result.is_err())
            .map(|c| (c.token, c.result.as_ref().unwrap_err().raw_os_error()))
            .collect();
        assert_eq!(
            refused,
            [(u64::from(CAPACITY), Some(libc::EBUSY))],
            "{name}"
        );
        assert!(results.iter().all(|c| c.data.is_some()), "{name}");
    }
}
