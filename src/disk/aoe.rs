//! `--disk aoe://IFACE/e<shelf>.<slot>`: a remote ATA-over-Ethernet target (vblade, or any
//! AoE r11 target) shown to the guest as a virtio-blk disk, with no aoe kernel module.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Disk, DiskError, DiskInfo};
use crate::engine::{AoeCounters, AoeEngine, AoeTarget, Engine};
use aoe::{discover, parse_address, AoeError};

pub struct AoeDisk {
    info: DiskInfo,
    target: Arc<AoeTarget>,
    /// Hands each queue's engine its own tag prefix.
    next_engine: AtomicU8,
    /// What every engine made so far has done.
    counters: Mutex<Vec<Arc<AoeCounters>>>,
}

impl AoeDisk {
    /// Finds the target at `address` and describes it.
    pub fn open(
        address: &str,
        read_only: bool,
        serial: Option<&str>,
        deadline: Duration,
    ) -> Result<Self, AoeError> {
        let (iface, shelf, slot) = parse_address(address)?;
        let found = discover::discover(&iface, shelf, slot)?;
        let id = &found.identity;
        log::info!(
            "AoE target e{shelf}.{slot} on {iface}: {} sectors, {} buffers, {} sectors per frame{}",
            id.sectors,
            found.buffer_count,
            found.sectors_per_frame,
            if id.flush_cache {
                ""
            } else {
                ", no FLUSH CACHE"
            }
        );
        Ok(AoeDisk {
            info: DiskInfo {
                capacity: id.sectors * 512,
                logical_block_size: 512,
                physical_block_size: 512,
                read_only,
                serial: super::serial(serial, || id.serial.clone()),
                // The target may buffer writes (vblade does, in its page cache).
                write_cache: true,
                honours_flush: id.flush_cache,
                discard: false,
                buffer_alignment: 1,
            },
            target: Arc::new(AoeTarget {
                iface,
                mac: found.mac,
                shelf,
                slot,
                sectors_per_frame: found.sectors_per_frame,
                buffer_count: found.buffer_count,
                lba48: id.lba48,
                flush: id.flush_cache,
                deadline,
            }),
            next_engine: AtomicU8::new(0),
            counters: Mutex::new(Vec::new()),
        })
    }
}

impl Disk for AoeDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn engine(&self, capacity: u16) -> Result<Box<dyn Engine>, DiskError> {
        let id = self.next_engine.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(AoeCounters::default());
        let engine = AoeEngine::new(self.target.clone(), id, capacity, counters.clone())
            .map_err(DiskError::Engine)?;
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(counters);
        Ok(Box::new(engine))
    }

    /// The target's size as it says now (asked again with IDENTIFY DEVICE): grow what it
    /// exports, then tell vblkd. A size given here must be that size.
    fn resize(&self, size: Option<u64>) -> Result<u64, DiskError> {
        let t = &self.target;
        let found = discover::discover(&t.iface, t.shelf, t.slot)
            .map_err(|e| DiskError::Engine(std::io::Error::other(e.to_string())))?;
        let now = found.identity.sectors * 512;
        if size.is_some_and(|s| s != now) {
            return Err(DiskError::AoeSize { size: now });
        }
        Ok(now)
    }

    /// Every engine's counters (today's and those of earlier connections), summed.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let engines = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = AoeCounters::default().values();
        for engine in engines.iter() {
            for (sum, (_, n)) in total.iter_mut().zip(engine.values()) {
                sum.1 += n;
            }
        }
        total.to_vec()
    }
}
