//! One suite, every engine: the same operations on an O_DIRECT temporary file through
//! io_uring, Linux AIO, the thread pool and the null engine, only the constructor differing.
//! The null engine moves no data, so it is held to the completion contract only.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::*;
use crate::aligned::AlignedBuffer;

const FILE_BYTES: u64 = 1 << 20;
const CAPACITY: u16 = 64;

/// An engine under test over its file (kept open for the engine's life).
struct Subject {
    engine: Box<dyn Engine>,
    moves_data: bool,
    _file: File,
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
    type Make = fn(&File) -> (Box<dyn Engine>, bool);
    let makers: [(&str, Make); 4] = [
        ("io_uring", |f| {
            let engine = UringEngine::new(f.as_raw_fd(), CAPACITY, None).unwrap();
            (Box::new(engine), true)
        }),
        ("native", |f| {
            (
                Box::new(AioEngine::new(f.as_raw_fd(), CAPACITY).unwrap()),
                true,
            )
        }),
        ("threads", |f| {
            (
                Box::new(ThreadPool::engine(f.as_raw_fd(), 4).unwrap()),
                true,
            )
        }),
        ("null", |_| {
            (Box::new(NullEngine::new(CAPACITY).unwrap()), false)
        }),
    ];
    makers
        .into_iter()
        .map(|(name, make)| {
            let (dir, file) = file();
            let (engine, moves_data) = make(&file);
            let subject = Subject {
                engine,
                moves_data,
                _file: file,
            };
            (name, dir, subject)
        })
        .collect()
}

impl Subject {
    /// Pushes `ops`, submits, and waits for all their completions (in token order).
    ///
    /// # Safety
    /// The buffers the operations refer to must stay valid until this returns.
    unsafe fn run(&mut self, ops: &[(u64, IoOp)]) -> Vec<(u64, io::Result<usize>)> {
        for &(token, op) in ops {
            // SAFETY: per this function's contract.
            unsafe { self.engine.push(token, op) };
        }
        self.engine.submit().unwrap();
        let mut done = Vec::new();
        for _ in 0..100 {
            self.engine.reap(&mut done).unwrap();
            if done.len() >= ops.len() {
                break;
            }
            wait_for_completions(&*self.engine, 100).unwrap();
        }
        assert_eq!(done.len(), ops.len(), "not every operation completed");
        let mut out: Vec<_> = done.into_iter().map(|c| (c.token, c.result)).collect();
        out.sort_by_key(|(token, _)| *token);
        out
    }
}

fn bytes(results: &[(u64, io::Result<usize>)]) -> Vec<usize> {
    results
        .iter()
        .map(|(_, r)| *r.as_ref().expect("operation failed"))
        .collect()
}

fn pattern(len: usize, seed: u8) -> AlignedBuffer {
    let mut buf = AlignedBuffer::new(len).unwrap();
    for (b, i) in buf.as_mut_slice().iter_mut().zip((0..=255u8).cycle()) {
        *b = i.wrapping_mul(31).wrapping_add(seed) | 1;
    }
    buf
}

#[test]
fn written_data_reads_back_through_two_segments() {
    for (name, _dir, mut s) in subjects() {
        let data = pattern(64 << 10, 7);
        let half = 32 << 10;
        let base = data.iovec().iov_base.cast::<u8>();
        let write_iov = [
            libc::iovec {
                iov_base: base.cast(),
                iov_len: half,
            },
            libc::iovec {
                iov_base: base.wrapping_add(half).cast(),
                iov_len: half,
            },
        ];
        let back = AlignedBuffer::new(64 << 10).unwrap();
        let write = IoOp::Write {
            offset: 4096,
            iov: write_iov.as_ptr(),
            iovcnt: 2,
            dsync: false,
        };
        let read = IoOp::Read {
            offset: 4096,
            iov: back.iovec(),
            iovcnt: 1,
        };
        // SAFETY: the buffers and iovec arrays live until the end of the loop body.
        unsafe {
            assert_eq!(bytes(&s.run(&[(1, write)])), [64 << 10], "{name}");
            assert_eq!(bytes(&s.run(&[(2, read)])), [64 << 10], "{name}");
        }
        if s.moves_data {
            assert!(back.as_slice() == data.as_slice(), "{name}: data differs");
        }
    }
}

#[test]
fn a_full_window_in_flight_completes_every_operation_once() {
    for (name, _dir, mut s) in subjects() {
        let bufs: Vec<_> = (0..CAPACITY)
            .map(|_| AlignedBuffer::new(4096).unwrap())
            .collect();
        let ops: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let op = IoOp::Read {
                    offset: i as u64 * 8192,
                    iov: b.iovec(),
                    iovcnt: 1,
                };
                (i as u64, op)
            })
            .collect();
        // SAFETY: `bufs` outlives the call.
        let results = unsafe { s.run(&ops) };
        let tokens: Vec<u64> = results.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tokens,
            (0..u64::from(CAPACITY)).collect::<Vec<_>>(),
            "{name}"
        );
        assert!(bytes(&results).iter().all(|&n| n == 4096), "{name}");
    }
}

#[test]
fn flush_dsync_discard_and_write_zeroes_complete_and_zero() {
    for (name, _dir, mut s) in subjects() {
        let data = pattern(16 << 10, 3);
        let back = AlignedBuffer::new(16 << 10).unwrap();
        let write = IoOp::Write {
            offset: 0,
            iov: data.iovec(),
            iovcnt: 1,
            dsync: true,
        };
        let read = IoOp::Read {
            offset: 0,
            iov: back.iovec(),
            iovcnt: 1,
        };
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
        // SAFETY: the buffers live until the end of the loop body.
        unsafe {
            assert_eq!(bytes(&s.run(&[(1, write)])), [16 << 10], "{name}");
            for (token, op) in (2..).zip(ops) {
                assert_eq!(bytes(&s.run(&[(token, op)])), [0], "{name}: {op:?}");
            }
            assert_eq!(bytes(&s.run(&[(9, read)])), [16 << 10], "{name}");
        }
        if s.moves_data {
            let got = back.as_slice();
            let want = data.as_slice();
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
        let back = AlignedBuffer::new(8192).unwrap();
        let read = IoOp::Read {
            offset: FILE_BYTES - 4096,
            iov: back.iovec(),
            iovcnt: 1,
        };
        // SAFETY: `back` outlives the call.
        let n = bytes(&unsafe { s.run(&[(1, read)]) })[0];
        // A short transfer, which the worker completes by resubmitting the rest.
        let want = if s.moves_data { 4096 } else { 8192 };
        assert_eq!(n, want, "{name}");
    }
}
