//! Disk backends: what sits behind the virtio-blk device.
//!
//! A backend describes the disk the guest sees ([`DiskInfo`]), builds one I/O engine per queue
//! worker ([`Disk::engine`]) and grows or re-measures itself for an online resize
//! ([`Disk::grow`], through [`resize`], the one path that applies the [`Capacity`] rules).
//! What `--disk` names is a [`DiskSpec`], opened with [`open`] and the [`DiskOptions`] given
//! for it: a local file or block device ([`FileDisk`]), a disk that does no I/O ([`NullDisk`],
//! for measuring the daemon itself), a remote ATA over Ethernet target ([`AoeDisk`]) or a Ceph
//! RBD image ([`RbdDisk`]).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::Engine;

mod aoe;
mod capacity;
pub mod file;
pub mod lock;
mod null;
mod rbd;
mod spec;

pub use aoe::{AoeAddress, AoeDisk};
pub use capacity::{Capacity, CapacityError, Resized};
pub use file::{AioMode, CacheMode, FileDisk};
pub use lock::Locking;
pub use null::NullDisk;
pub use rbd::RbdDisk;
pub use spec::{open, DiskKind, DiskOption, DiskOptions, DiskSpec, OpenError, SpecError};

/// Longest serial number virtio-blk's GET_ID can return.
pub const SERIAL_LEN: usize = 20;

/// What the guest is shown, and the rules the queue workers enforce.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// Size in bytes, shared with everything that checks or reports it (an online resize
    /// changes it).
    pub capacity: Arc<Capacity>,
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

/// Counters a disk keeps for its engines, one set per queue, across connections: an engine
/// counts into its queue's set, and a reconnect finds the same sets (memory stays flat).
#[derive(Debug)]
struct PerQueue<T> {
    sets: std::sync::Mutex<Vec<Arc<T>>>,
}

impl<T> Default for PerQueue<T> {
    fn default() -> Self {
        PerQueue {
            sets: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl<T: Default> PerQueue<T> {
    /// Queue `queue`'s set, made when first asked for.
    fn get(&self, queue: u16) -> Arc<T> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let index = usize::from(queue);
        if sets.len() <= index {
            sets.resize_with(index + 1, Arc::default);
        }
        sets[index].clone()
    }
}

/// The GET_ID serial: the one given, or the backend's own, cut to what virtio-blk allows.
fn serial(given: Option<&str>, default: impl FnOnce() -> String) -> Vec<u8> {
    let mut bytes = given.map_or_else(default, str::to_owned).into_bytes();
    bytes.truncate(SERIAL_LEN);
    bytes
}

/// A disk backend: its description and a factory of per-queue engines.
pub trait Disk: Send + Sync {
    fn info(&self) -> &DiskInfo;

    /// A new engine for queue `queue`, able to hold `capacity` operations in flight.
    fn engine(&self, queue: u16, capacity: u16) -> Result<Box<dyn Engine>, DiskError>;

    /// The counters of queue `queue`'s engines (frames, retransmissions, ...), summed over
    /// every engine the disk made for that queue; none for most disks.
    fn engine_counters(&self, queue: u16) -> Vec<(&'static str, u64)> {
        let _ = queue;
        Vec::new()
    }

    /// What the backend found out about the disk beyond [`DiskInfo`] (an AoE target's frame
    /// size and buffer count), as `(name, value)`.
    fn details(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// The frontend starts the device: make sure the image may be written by us alone (take
    /// its locks, if it has any and they were given up). An error means another process
    /// uses it: the device must not serve.
    fn activate(&self) -> Result<(), DiskError> {
        Ok(())
    }

    /// The frontend migrated the VM away (its rings stopped while it logged dirty pages):
    /// give the image up for the destination.
    fn inactivate(&self) {}

    /// The state of the image's locks (`held`, `released`, `off`), for disks that have them.
    fn image_lock(&self) -> Option<&'static str> {
        None
    }

    /// The backend's part of an online resize: grows the disk to `size` bytes, or with `None`
    /// finds out how large it is now (a block device, an image resized by its owner); returns
    /// its size in bytes. Called through [`resize`], which applies the capacity's rules.
    fn grow(&self, size: Option<u64>) -> Result<u64, DiskError> {
        let _ = size;
        Err(DiskError::ResizeUnsupported)
    }
}

/// Resizes `disk` while it is served: refuses to shrink it, lets the backend grow (or
/// re-measure) it, and makes the result its capacity. The frontend is the caller's to tell.
pub fn resize(disk: &dyn Disk, size: Option<u64>) -> Result<Resized, DiskError> {
    let capacity = &disk.info().capacity;
    capacity.check_request(size)?;
    let now = disk.grow(size)?;
    Ok(capacity.grow_to(now)?)
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
    #[error("disk {name} is {size} bytes, smaller than one {block}-byte block; {advice}")]
    TooSmall {
        name: String,
        size: u64,
        block: u32,
        advice: &'static str,
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
    #[error(transparent)]
    Aoe(#[from] ::aoe::AoeError),
    #[error(transparent)]
    Rbd(#[from] ::rbd::RbdError),
    #[error("cannot ask the AoE target its size: {0}")]
    AoeIdentify(::aoe::AoeError),
    #[error("this kind of disk cannot be resized while served")]
    ResizeUnsupported,
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("cannot start the I/O engine: {0}")]
    Engine(io::Error),
}

impl DiskError {
    /// A disk of `size` bytes holds no whole `block`-byte block.
    fn too_small(
        name: impl std::fmt::Display,
        size: u64,
        block: u32,
        advice: &'static str,
    ) -> Self {
        DiskError::TooSmall {
            name: name.to_string(),
            size,
            block,
            advice,
        }
    }
}
