//! A Ceph RBD image as the disk: the image's size is the capacity, I/O goes to librbd.

use std::sync::Arc;
use std::time::Duration;

use super::{Capacity, Disk, DiskError, DiskInfo};
use crate::engine::{Engine, RbdEngine};

pub struct RbdDisk {
    info: DiskInfo,
    /// `POOL[/NAMESPACE]/IMAGE[@SNAP]`.
    name: String,
    /// One handle for every queue (see [`RbdEngine`]).
    image: Arc<rbd::Image>,
}

impl RbdDisk {
    /// Connects to the cluster, giving up after `timeout`, and opens the image `spec` names.
    pub fn open(
        spec: &rbd::Spec,
        read_only: bool,
        logical_block_size: u32,
        serial: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, DiskError> {
        let image = rbd::Image::open(spec, read_only, timeout)?;
        let size = image.size().map_err(|source| rbd::RbdError::Size {
            image: spec.name(),
            source,
        })?;
        let read_only = read_only || spec.snapshot.is_some();
        let capacity = Capacity::new(size, logical_block_size).ok_or_else(|| {
            DiskError::too_small(
                spec.name(),
                size,
                logical_block_size,
                "grow it with rbd resize",
            )
        })?;
        Ok(RbdDisk {
            info: DiskInfo {
                capacity: Arc::new(capacity),
                logical_block_size,
                // RADOS objects are 4 MiB by default; 4 KiB is what a guest can align to.
                physical_block_size: logical_block_size.max(4096),
                read_only,
                serial: super::serial(serial, || spec.image.clone()),
                write_cache: true,
                honours_flush: true,
                discard: !read_only,
                buffer_alignment: 1,
            },
            name: spec.name(),
            image: Arc::new(image),
        })
    }

    /// `POOL[/NAMESPACE]/IMAGE[@SNAP]`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Disk for RbdDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// The image's size as it is now: grow the image with `rbd resize`, then tell vblkd. A
    /// size given here must be that size.
    fn grow(&self, size: Option<u64>) -> Result<u64, DiskError> {
        let now = self.image.size().map_err(DiskError::Engine)?;
        if size.is_some_and(|s| s != now) {
            return Err(DiskError::RbdSize {
                image: self.name.clone(),
                size: now,
            });
        }
        Ok(now)
    }

    fn engine(&self, _queue: u16, capacity: u16) -> Result<Box<dyn Engine>, DiskError> {
        let engine = RbdEngine::new(self.image.clone(), capacity).map_err(DiskError::Engine)?;
        Ok(Box::new(engine))
    }
}
