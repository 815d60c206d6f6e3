//! Disk backends: what sits behind the virtio-blk device.
//!
//! A backend describes the disk the guest sees ([`DiskInfo`]) and builds one I/O engine per
//! queue worker ([`Disk::engine`]). The local file/block-device backend lives in [`file`], a
//! disk that does no I/O (for measuring the daemon itself) in [`NullDisk`], a remote ATA over
//! Ethernet target in [`AoeDisk`], a Ceph RBD image in [`RbdDisk`].

use std::io;
use std::path::{Path, PathBuf};

use crate::engine::Engine;

mod aoe;
pub mod file;
mod null;
mod rbd;

pub use aoe::AoeDisk;
pub use file::{AioMode, CacheMode, FileDisk, FileDiskOptions};
pub use null::NullDisk;
pub use rbd::RbdDisk;

/// Longest serial number virtio-blk's GET_ID can return.
pub const SERIAL_LEN: usize = 20;

/// What the guest is shown, and the rules the queue workers enforce.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// Size in bytes, a multiple of `logical_block_size`.
    pub capacity: u64,
    /// Every request's offset and length must be a multiple of this (512 or 4096).
    pub logical_block_size: u32,
    /// Reported to the guest as a topology hint.
    pub physical_block_size: u32,
    pub read_only: bool,
    /// Returned by GET_ID, at most [`SERIAL_LEN`] bytes.
    pub serial: Vec<u8>,
    /// The write-cache state the guest starts with (virtio's WCE bit).
    pub write_cache: bool,
    /// Whether FLUSH really syncs (false for cache=unsafe).
    pub honours_flush: bool,
    /// Whether DISCARD and WRITE_ZEROES are offered.
    pub discard: bool,
    /// Guest buffers whose address or length is not a multiple of this go through a bounce
    /// buffer (O_DIRECT's rule); 1 when any buffer will do.
    pub buffer_alignment: usize,
}

/// The GET_ID serial: the one given, or the backend's own, cut to what virtio-blk allows.
fn serial(given: Option<&str>, default: impl FnOnce() -> String) -> Vec<u8> {
    let mut bytes = given.map_or_else(default, str::to_owned).into_bytes();
    bytes.truncate(SERIAL_LEN);
    bytes
}

/// `size` rounded down to whole blocks: what the guest can address. No whole block is an
/// error that names `path`.
fn whole_blocks(path: &Path, size: u64, block: u32) -> Result<u64, DiskError> {
    match size - size % u64::from(block) {
        0 => Err(DiskError::TooSmall {
            path: path.to_path_buf(),
            size,
            block,
        }),
        capacity => Ok(capacity),
    }
}

/// A disk backend: its description and a factory of per-queue engines.
pub trait Disk: Send + Sync {
    fn info(&self) -> &DiskInfo;

    /// A new engine for one queue, able to hold `capacity` operations in flight.
    fn engine(&self, capacity: u16) -> Result<Box<dyn Engine>, DiskError>;

    /// The engines' own counters (frames, retransmissions, ...), summed over every engine the
    /// disk made; none for most disks.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Grows the disk to `size` bytes, or with `None` finds out how large it is now (a block
    /// device, an image resized by its owner); returns the new capacity, in whole blocks.
    /// Shrinking is the caller's to refuse.
    fn resize(&self, size: Option<u64>) -> Result<u64, DiskError> {
        let _ = size;
        Err(DiskError::ResizeUnsupported)
    }
}

/// Why a disk could not be opened or served. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {0} does not exist; pass --size BYTES to create it as a sparse file")]
    Missing(PathBuf),
    #[error("cannot open disk {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot inspect disk {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot resize disk {path} to {size} bytes: {source}")]
    Resize {
        path: PathBuf,
        size: u64,
        source: io::Error,
    },
    #[error("refusing to shrink {path} from {current} to {requested} bytes; pass a --size of at least {current} or none")]
    Shrink {
        path: PathBuf,
        current: u64,
        requested: u64,
    },
    #[error("--size cannot resize block device {0}; leave it out to use the whole device")]
    SizeOnBlockDevice(PathBuf),
    #[error("disk {0} is neither a regular file nor a block device")]
    NotAFileOrBlockDevice(PathBuf),
    #[error(
        "disk {path} is {size} bytes, smaller than one {block}-byte block; pass a larger --size"
    )]
    TooSmall {
        path: PathBuf,
        size: u64,
        block: u32,
    },
    #[error("the file system of {0} does not support O_DIRECT, which --cache none and directsync need; use --cache writeback or writethrough")]
    DirectIoUnsupported(PathBuf),
    #[error("{path} rejects {block}-byte direct I/O; pass --logical-block-size 4096")]
    BlockSizeTooSmall { path: PathBuf, block: u32 },
    #[error("block device {path} has {device}-byte sectors; pass --logical-block-size {device} or larger")]
    DeviceBlockSize { path: PathBuf, device: u32 },
    #[error("--aio native needs O_DIRECT (--cache none or directsync): with the page cache, io_submit blocks until the I/O is done; use --aio io_uring or threads for cached modes")]
    NativeNeedsDirectIo,
    #[error("RBD image {image} is {size} bytes; grow it with `rbd resize --size SIZE {image}` and run resize without a size")]
    RbdSize { image: String, size: u64 },
    #[error("the AoE target exports {size} bytes; grow what it exports (and restart it if it reads the size once, as vblade does), then run resize without a size")]
    AoeSize { size: u64 },
    #[error("this kind of disk cannot be resized while served")]
    ResizeUnsupported,
    #[error("cannot start the I/O engine: {0}")]
    Engine(io::Error),
}
