//! The disk's size as the guest sees it, and the rules for changing it.
//!
//! One [`Capacity`] per disk, shared by everything that needs the size: the queues check every
//! request against it, the config space reports it, an online resize changes it. It is one
//! atomic: reading it is a load per request, and no copy of it can go stale. Its rules are
//! here alone: the capacity is whole logical blocks, and it only grows — a guest may hold data
//! anywhere within the size it was shown, so a smaller disk would lose it.

use std::sync::atomic::{AtomicU64, Ordering};

/// A disk's capacity in bytes, a multiple of its logical block size.
#[derive(Debug)]
pub struct Capacity {
    bytes: AtomicU64,
    block_size: u32,
}

/// What a resize did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resized {
    pub previous: u64,
    pub capacity: u64,
}

/// Why the capacity cannot change as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("refusing to shrink the disk from {current} to {requested} bytes: the guest may hold data there")]
    Shrink { current: u64, requested: u64 },
    #[error("the disk is now {now} bytes, smaller than the {shown} the guest was shown; keeping {shown}")]
    Shrunk { now: u64, shown: u64 },
}

impl Capacity {
    /// The capacity of a disk of `size` bytes with `block_size`-byte blocks: `size` rounded
    /// down to whole blocks, or `None` if it holds not one.
    pub fn new(size: u64, block_size: u32) -> Option<Self> {
        let bytes = Self::whole_blocks(size, block_size);
        (bytes > 0).then(|| Capacity {
            bytes: AtomicU64::new(bytes),
            block_size,
        })
    }

    fn whole_blocks(size: u64, block_size: u32) -> u64 {
        size - size % u64::from(block_size.max(1))
    }

    /// The capacity now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Refuses a requested size below the capacity, before anything is done about it.
    pub fn check_request(&self, requested: Option<u64>) -> Result<(), CapacityError> {
        let current = self.bytes();
        match requested {
            Some(requested) if requested < current => {
                Err(CapacityError::Shrink { current, requested })
            }
            _ => Ok(()),
        }
    }

    /// Makes the disk's new size `size` (as measured after growing it) the capacity, in whole
    /// blocks; refuses one below the capacity, which stays.
    pub fn grow_to(&self, size: u64) -> Result<Resized, CapacityError> {
        let capacity = Self::whole_blocks(size, self.block_size);
        let previous = self.bytes();
        if capacity < previous {
            return Err(CapacityError::Shrunk {
                now: capacity,
                shown: previous,
            });
        }
        // Resizes are serialised by their caller (one control request at a time changes a
        // disk); the queues only read.
        self.bytes.store(capacity, Ordering::Relaxed);
        Ok(Resized { previous, capacity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_blocks_only_and_never_smaller() {
        assert!(Capacity::new(4095, 4096).is_none());
        let capacity = Capacity::new(10_000, 4096).unwrap();
        assert_eq!(capacity.bytes(), 8192);
        assert_eq!(
            capacity.check_request(Some(4096)),
            Err(CapacityError::Shrink {
                current: 8192,
                requested: 4096
            })
        );
        assert_eq!(capacity.check_request(Some(8192)), Ok(()));
        assert_eq!(capacity.check_request(None), Ok(()));
        assert_eq!(
            capacity.grow_to(20_000),
            Ok(Resized {
                previous: 8192,
                capacity: 16384
            })
        );
        assert_eq!(
            capacity.grow_to(12_288),
            Err(CapacityError::Shrunk {
                now: 12_288,
                shown: 16384
            })
        );
        assert_eq!(capacity.bytes(), 16384, "a refused resize changes nothing");
    }
}
