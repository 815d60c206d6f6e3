//! `--disk null:SIZE`: a disk that does no I/O at all (see [`crate::engine::NullEngine`]).

use super::{Disk, DiskError, DiskInfo};
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
        let capacity = super::whole_blocks("null".as_ref(), size, logical_block_size)?;
        Ok(NullDisk {
            info: DiskInfo {
                capacity,
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

    fn resize(&self, size: Option<u64>) -> Result<u64, DiskError> {
        let size = size.unwrap_or(self.info.capacity);
        super::whole_blocks("null".as_ref(), size, self.info.logical_block_size)
    }

    fn engine(&self, capacity: u16) -> Result<Box<dyn Engine>, DiskError> {
        Ok(Box::new(
            NullEngine::new(capacity).map_err(DiskError::Engine)?,
        ))
    }
}
