//! `--disk null:SIZE`: a disk that does no I/O at all (see [`crate::engine::NullEngine`]).

use std::sync::Arc;

use super::{Capacity, Disk, DiskError, DiskInfo};
use crate::engine::{Engine, NullEngine};

#[derive(Debug)]
pub struct NullDisk {
    info: DiskInfo,
}

impl NullDisk {
    pub fn new(
        size: u64,
        logical_block_size: u32,
        read_only: bool,
        serial: Option<&str>,
    ) -> Result<Self, DiskError> {
        let capacity = Capacity::new(size, logical_block_size).ok_or_else(|| {
            DiskError::too_small("null", size, logical_block_size, "write a larger null:SIZE")
        })?;
        Ok(NullDisk {
            info: DiskInfo {
                capacity: Arc::new(capacity),
                logical_block_size,
                physical_block_size: logical_block_size,
                read_only,
                serial: super::serial(serial, || "null".into()),
                write_cache: true,
                honours_flush: true,
                discard: !read_only,
                buffer_alignment: 1,
            },
        })
    }
}

impl Disk for NullDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// A null disk is whatever size it is told.
    fn grow(&self, size: Option<u64>) -> Result<u64, DiskError> {
        Ok(size.unwrap_or_else(|| self.info.capacity.bytes()))
    }

    fn engine(&self, _queue: u16, capacity: u16) -> Result<Box<dyn Engine>, DiskError> {
        Ok(Box::new(
            NullEngine::new(capacity).map_err(DiskError::Engine)?,
        ))
    }
}
