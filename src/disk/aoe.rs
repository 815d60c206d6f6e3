//! `--disk aoe://IFACE/e<shelf>.<slot>`: a remote ATA-over-Ethernet target (vblade, or any
//! AoE r11 target) shown to the guest as a virtio-blk disk, with no aoe kernel module.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aoe::initiator::{Counters, Target};
use aoe::{discover, AoeError};

use super::{Capacity, Disk, DiskError, DiskInfo, PerQueue};
use crate::engine::{AoeEngine, Engine};

/// Where an AoE disk is: `aoe://IFACE/e<shelf>.<slot>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AoeAddress {
    pub iface: String,
    pub shelf: u16,
    pub slot: u8,
}

impl std::fmt::Display for AoeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "aoe://{}/e{}.{}", self.iface, self.shelf, self.slot)
    }
}

impl std::str::FromStr for AoeAddress {
    type Err = AoeError;

    fn from_str(s: &str) -> Result<Self, AoeError> {
        let (iface, shelf, slot) = aoe::parse_address(s)?;
        Ok(AoeAddress { iface, shelf, slot })
    }
}

pub struct AoeDisk {
    info: DiskInfo,
    address: AoeAddress,
    target: Arc<Target>,
    /// Hands each engine a tag prefix of its own, so that replies to an engine of an earlier
    /// connection never match a new one's tags.
    next_tag_prefix: AtomicU8,
    /// What the engines of each queue have done, across connections.
    counters: PerQueue<Counters>,
}

impl AoeDisk {
    /// Finds the target at `address` and describes it.
    pub fn open(
        address: &AoeAddress,
        read_only: bool,
        serial: Option<&str>,
        deadline: Duration,
    ) -> Result<Self, DiskError> {
        let AoeAddress { iface, shelf, slot } = address;
        let found = discover::discover(iface, *shelf, *slot)?;
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
        let capacity = Capacity::new(id.sectors * 512, 512).ok_or_else(|| {
            DiskError::too_small(address, id.sectors * 512, 512, "export a larger disk")
        })?;
        Ok(AoeDisk {
            info: DiskInfo {
                capacity: Arc::new(capacity),
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
            target: Arc::new(Target {
                mac: found.mac,
                shelf: *shelf,
                slot: *slot,
                sectors_per_frame: found.sectors_per_frame,
                buffer_count: found.buffer_count,
                lba48: id.lba48,
                flush: id.flush_cache,
                deadline,
            }),
            address: address.clone(),
            next_tag_prefix: AtomicU8::new(0),
            counters: PerQueue::default(),
        })
    }
}

impl Disk for AoeDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn engine(&self, queue: u16, capacity: u16) -> Result<Box<dyn Engine>, DiskError> {
        let tag_prefix = self.next_tag_prefix.fetch_add(1, Ordering::Relaxed);
        let engine = AoeEngine::new(
            &self.address.iface,
            self.target.clone(),
            tag_prefix,
            capacity,
            self.counters.get(queue),
        )
        .map_err(DiskError::Engine)?;
        Ok(Box::new(engine))
    }

    /// The target's size as it says now (asked again with IDENTIFY DEVICE): grow what it
    /// exports, then tell vblkd. A size given here must be that size.
    fn grow(&self, size: Option<u64>) -> Result<u64, DiskError> {
        let AoeAddress { iface, shelf, slot } = &self.address;
        let found = discover::discover(iface, *shelf, *slot).map_err(DiskError::AoeIdentify)?;
        let now = found.identity.sectors * 512;
        if size.is_some_and(|s| s != now) {
            return Err(DiskError::AoeSize { size: now });
        }
        Ok(now)
    }

    fn engine_counters(&self, queue: u16) -> Vec<(&'static str, u64)> {
        self.counters.get(queue).values().to_vec()
    }

    fn details(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "aoe_sectors_per_frame",
                u64::from(self.target.sectors_per_frame),
            ),
            ("aoe_buffer_count", u64::from(self.target.buffer_count)),
        ]
    }
}
