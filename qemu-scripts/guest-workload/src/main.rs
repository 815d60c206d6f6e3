//! The guest side of the crash test (tests/suite/crash.rs): keeps a vhost-user-blk disk busy with
//! stamped O_DIRECT writes, flushes and verifying reads from many threads while the host kills
//! and restarts the daemon under it; when told to stop, checks that every write the disk
//! acknowledged is on it.
//!
//! It talks to the host on the console, in lines starting with "VBLKD ": `crash_started`,
//! `progress writes=N`, `error ...` for anything that went wrong, and at the end
//! `crash_result writes=.. flushes=.. reads=.. verified=.. errors=.. max_latency_ms=..`. The
//! host ends the run by writing `stop` on the console.
//!
//! Every write goes to a block that only its thread writes, carrying the block number and a
//! generation that rises with each write of that block; a write's generation is recorded as
//! acknowledged once the disk completed it. Reads go to a region written once at the start.

use std::fs::{File, OpenOptions};
use std::io::BufRead;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;
/// Blocks 0..WRITE_BLOCKS take the writes.
const WRITE_BLOCKS: u64 = 1024;
/// Blocks READ_START..READ_START + READ_BLOCKS are written once, then only read.
const READ_START: u64 = 2048;
const READ_BLOCKS: u64 = 1024;
const WRITERS: u64 = 12;
const READERS: u64 = 4;
/// Each writer flushes after this many writes, so flushes are in flight beside writes.
const FLUSH_EVERY: u64 = 8;
const MAGIC: &[u8; 8] = b"VBLKDCRS";
/// `O_DIRECT` on x86_64 (std has no constant for it, and this tool has no dependencies).
const O_DIRECT: i32 = 0o40000;

/// A buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, BLOCK).unwrap();
        // SAFETY: a non-zero size; the pointer is checked and freed with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` initialised bytes we own exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, BLOCK).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// xorshift64*, for patterns and block choices: the benchmark's, the same file.
#[path = "../../../crates/bench/src/rng.rs"]
#[allow(dead_code)] // this program needs only part of it
mod rng;
use rng::Rng;

fn stamp(buf: &mut [u8], block: u64, generation: u64) {
    buf[0..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&block.to_le_bytes());
    buf[16..24].copy_from_slice(&generation.to_le_bytes());
    Rng::new((block << 32) ^ generation ^ 0x9e37_79b9_7f4a_7c15).fill(&mut buf[24..]);
}

/// The generation a block carries, if it is a whole, well-formed block `block`.
fn generation_of(buf: &[u8], block: u64) -> Result<u64, String> {
    if &buf[0..8] != MAGIC {
        return Err("no stamp".into());
    }
    let found = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    if found != block {
        return Err(format!("holds block {found}"));
    }
    let generation = u64::from_le_bytes(buf[16..24].try_into().unwrap());
    let mut expected = vec![0u8; buf.len()];
    stamp(&mut expected, block, generation);
    if expected != buf {
        return Err(format!("generation {generation} is torn"));
    }
    Ok(generation)
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    writes: AtomicU64,
    flushes: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
    max_latency_us: AtomicU64,
}

impl Shared {
    /// Reports an error (the first few in full; all are counted), and slows the failing
    /// thread down so that a disk that fails everything does not flood the console.
    fn error(&self, what: String) {
        const REPORTED: u64 = 20;
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < REPORTED {
            println!("VBLKD error {what}");
        } else if n == REPORTED {
            println!("VBLKD error (more errors are only counted)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    /// Times one I/O.
    fn timed<T>(&self, op: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = op();
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.max_latency_us.fetch_max(us, Ordering::Relaxed);
        result
    }
}

fn writer(disk: &File, shared: &Shared, id: u64, acked: &[AtomicU64]) {
    let mut rng = Rng::new(0x1234_5678 + id);
    let mut buf = Aligned::new(BLOCK);
    let mut written = 0u64;
    let own = (WRITE_BLOCKS - id).div_ceil(WRITERS);
    while !shared.stop.load(Ordering::Relaxed) {
        let block = id + WRITERS * (rng.next_u64() % own);
        let slot = &acked[usize::try_from(block).unwrap()];
        let generation = slot.load(Ordering::Relaxed) + 1;
        stamp(buf.bytes(), block, generation);
        match shared.timed(|| disk.write_at(buf.bytes(), block * BLOCK as u64)) {
            Ok(n) if n == BLOCK => {
                slot.store(generation, Ordering::Relaxed);
                shared.writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(n) => shared.error(format!("write block={block} short={n}")),
            Err(e) => shared.error(format!("write block={block} {e}")),
        }
        written += 1;
        if written.is_multiple_of(FLUSH_EVERY) {
            match shared.timed(|| disk.sync_data()) {
                Ok(()) => {
                    shared.flushes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => shared.error(format!("flush {e}")),
            }
        }
    }
}

fn reader(disk: &File, shared: &Shared, id: u64) {
    let mut rng = Rng::new(0x8765_4321 + id);
    let mut buf = Aligned::new(BLOCK);
    while !shared.stop.load(Ordering::Relaxed) {
        let block = READ_START + rng.next_u64() % READ_BLOCKS;
        match shared.timed(|| disk.read_at(buf.bytes(), block * BLOCK as u64)) {
            Ok(n) if n == BLOCK => match generation_of(buf.bytes(), block) {
                Ok(0) => {
                    shared.reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok(g) => shared.error(format!("read block={block} generation={g}")),
                Err(e) => shared.error(format!("read block={block} {e}")),
            },
            Ok(n) => shared.error(format!("read block={block} short={n}")),
            Err(e) => shared.error(format!("read block={block} {e}")),
        }
    }
}

/// Goes over `blocks` blocks from `first` in 1 MiB requests: fills each block with `each` and
/// writes it, or reads it and hands it to `each`.
fn sweep(
    disk: &File,
    first: u64,
    blocks: u64,
    write: bool,
    mut each: impl FnMut(u64, &mut [u8]),
) -> std::io::Result<()> {
    const CHUNK: u64 = 256;
    let mut buf = Aligned::new(CHUNK as usize * BLOCK);
    let mut at = first;
    while at < first + blocks {
        let n = CHUNK.min(first + blocks - at);
        let bytes = &mut buf.bytes()[..n as usize * BLOCK];
        let offset = at * BLOCK as u64;
        if !write {
            disk.read_exact_at(bytes, offset)?;
        }
        for (i, block) in bytes.chunks_mut(BLOCK).enumerate() {
            each(at + i as u64, block);
        }
        if write {
            disk.write_all_at(bytes, offset)?;
        }
        at += n;
    }
    Ok(())
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "/dev/vda".into());
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_DIRECT)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    sweep(&disk, READ_START, READ_BLOCKS, true, |block, buf| {
        stamp(buf, block, 0)
    })
    .and_then(|()| disk.sync_data())
    .unwrap_or_else(|e| panic!("writing the read region: {e}"));

    let shared = Arc::new(Shared::default());
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..WRITE_BLOCKS).map(|_| AtomicU64::new(0)).collect());
    println!("VBLKD crash_started");
    let disk = Arc::new(disk);
    let mut threads = Vec::new();
    for id in 0..WRITERS {
        let (disk, shared, acked) = (disk.clone(), shared.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            writer(&disk, &shared, id, &acked)
        }));
    }
    for id in 0..READERS {
        let (disk, shared) = (disk.clone(), shared.clone());
        threads.push(std::thread::spawn(move || reader(&disk, &shared, id)));
    }
    let progress = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                println!(
                    "VBLKD progress writes={}",
                    shared.writes.load(Ordering::Relaxed)
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    for line in std::io::stdin().lock().lines() {
        if line.map_or(true, |l| l.trim() == "stop") {
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    progress.join().unwrap();

    // Every acknowledged write must be on the disk: the last generation written to each block
    // (all writes have completed by now, each was acknowledged or reported as an error).
    let mut verified = 0u64;
    let result = sweep(&disk, 0, WRITE_BLOCKS, false, |block, buf| {
        let want = acked[usize::try_from(block).unwrap()].load(Ordering::Relaxed);
        if want == 0 {
            return;
        }
        match generation_of(buf, block) {
            Ok(g) if g == want => verified += 1,
            Ok(g) => shared.error(format!(
                "verify block={block} generation={g} acknowledged={want}"
            )),
            Err(e) => shared.error(format!("verify block={block} acknowledged={want}: {e}")),
        }
    });
    if let Err(e) = result {
        shared.error(format!("verify {e}"));
    }
    println!(
        "VBLKD crash_result writes={} flushes={} reads={} verified={verified} errors={} max_latency_ms={}",
        shared.writes.load(Ordering::Relaxed),
        shared.flushes.load(Ordering::Relaxed),
        shared.reads.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed),
        shared.max_latency_us.load(Ordering::Relaxed) / 1000,
    );
}
