//! A local regular file or block device, served through io_uring, Linux AIO or a thread pool.
//!
//! Cache modes mean what QEMU's `cache=` modes mean. They reduce to three independent knobs:
//!
//! | mode         | O_DIRECT | write cache (WCE) | FLUSH        |
//! |--------------|----------|-------------------|--------------|
//! | none         | yes      | on                | fdatasync    |
//! | writeback    | no       | on                | fdatasync    |
//! | writethrough | no       | off               | fdatasync    |
//! | directsync   | yes      | off               | fdatasync    |
//! | unsafe       | no       | on                | ignored      |
//!
//! "Write cache off" is implemented per write with `RWF_DSYNC` rather than by opening the file
//! with `O_DSYNC`: the effect on each write is the same, and it lets the guest switch the cache
//! on and off at run time through the WCE config byte, as virtio allows and QEMU does.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::lock::{ImageLock, Locking};
use super::{Capacity, Disk, DiskError, DiskInfo, PerQueue};
use crate::engine::{
    probe_io_uring, AioEngine, AlignedBuffer, Engine, FixedBufferCounters, ThreadPool, UringEngine,
};

/// The I/O engine, named as QEMU's `aio=` option names it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::Display, strum::VariantNames,
)]
#[strum(serialize_all = "snake_case")]
pub enum AioMode {
    #[strum(serialize = "io_uring")]
    IoUring,
    Native,
    Threads,
}

/// Host caching, named as QEMU's `cache=` option names it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::Display, strum::VariantNames,
)]
#[strum(serialize_all = "snake_case")]
pub enum CacheMode {
    None,
    Writeback,
    Writethrough,
    Directsync,
    Unsafe,
}

impl CacheMode {
    pub fn direct_io(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }

    pub fn write_cache(self) -> bool {
        !matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }

    pub fn honours_flush(self) -> bool {
        self != CacheMode::Unsafe
    }
}

/// How to open and serve a file disk.
#[derive(Debug, Clone)]
pub struct FileDiskOptions {
    pub path: PathBuf,
    /// Create the file with this size, or grow it to it; never shrink.
    pub size: Option<u64>,
    pub aio: AioMode,
    pub cache: CacheMode,
    pub read_only: bool,
    pub logical_block_size: u32,
    pub serial: Option<String>,
    /// Threads per queue for `aio=threads`.
    pub threads: usize,
    /// `aio=io_uring` with O_DIRECT: register guest memory of up to this many bytes with each
    /// ring (`--fixed-buffers`, see [`crate::engine::UringEngine`]).
    pub fixed_buffers: Option<u64>,
    /// Image locking, as QEMU's `locking=`.
    pub locking: Locking,
    /// An incoming migration's destination: take the image's locks only when the frontend
    /// starts the device.
    pub incoming: bool,
}

/// An open file or block device.
#[derive(Debug)]
pub struct FileDisk {
    /// Shared with every engine, which does its I/O on it.
    file: Arc<File>,
    path: PathBuf,
    block_device: bool,
    info: DiskInfo,
    aio: AioMode,
    threads: usize,
    fixed_buffers: Option<u64>,
    /// With fixed buffers: what each queue's rings did with guest memory.
    fixed_buffer_counters: PerQueue<FixedBufferCounters>,
    /// The image's locks (see [`super::lock`]).
    lock: Mutex<ImageLock>,
}

/// How long to wait at start for the locks of a process that is gone but whose files the
/// kernel has not closed yet (see [`ImageLock::acquire_patiently`]).
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Buffer address and length alignment that O_DIRECT accepts on every Linux block device.
const DIRECT_IO_BUFFER_ALIGN: usize = 512;

impl FileDisk {
    pub fn open(opts: &FileDiskOptions) -> Result<Self, DiskError> {
        let path = &opts.path;
        if opts.aio == AioMode::Native && !opts.cache.direct_io() {
            return Err(DiskError::NativeNeedsDirectIo);
        }
        let aio = match opts.aio {
            AioMode::IoUring => match probe_io_uring() {
                Ok(()) => AioMode::IoUring,
                Err(e) => {
                    log::warn!("the kernel refused io_uring ({e}); falling back to --aio threads");
                    AioMode::Threads
                }
            },
            other => other,
        };

        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(DiskError::Inspect {
                    path: path.clone(),
                    source,
                })
            }
        };
        let is_block_device = meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        match &meta {
            None if opts.size.is_none() => return Err(DiskError::Missing(path.clone())),
            Some(m) if !m.is_file() && !is_block_device => {
                return Err(DiskError::NotAFileOrBlockDevice(path.clone()))
            }
            Some(_) if is_block_device && opts.size.is_some() => {
                return Err(DiskError::SizeOnBlockDevice(path.clone()))
            }
            _ => {}
        }

        if let Some(size) = opts.size {
            let current = meta.as_ref().map_or(0, |m| m.len());
            if size < current {
                return Err(DiskError::Shrink {
                    path: path.clone(),
                    current,
                    requested: size,
                });
            }
        }

        let file = Arc::new(open_file(path, opts, meta.is_none())?);
        // Locked before anything changes the file: --size must not grow another's image.
        let mut lock = ImageLock::new(file.clone(), path, opts.read_only, opts.locking);
        if !opts.incoming {
            lock.acquire_patiently(LOCK_PATIENCE)?;
        }
        if let Some(size) = opts.size {
            if file_len(&file, path)? < size {
                file.set_len(size).map_err(|source| DiskError::Resize {
                    path: path.clone(),
                    size,
                    source,
                })?;
            }
        }

        let block = opts.logical_block_size;
        let (size, physical_block_size) = if is_block_device {
            let device_block = block_device_sector_size(&file, path)?;
            if block < device_block {
                return Err(DiskError::DeviceBlockSize {
                    path: path.clone(),
                    device: device_block,
                });
            }
            (
                block_device_size(&file, path)?,
                block_device_physical_block(&file)
                    .unwrap_or(block)
                    .max(block),
            )
        } else {
            (file_len(&file, path)?, block.max(4096))
        };
        let capacity = Capacity::new(size, block).ok_or_else(|| {
            DiskError::too_small(path.display(), size, block, "pass a larger --size")
        })?;
        if opts.cache.direct_io() {
            check_direct_io_block_size(&file, path, block, capacity.bytes())?;
        }

        let info = DiskInfo {
            capacity: Arc::new(capacity),
            logical_block_size: block,
            physical_block_size,
            read_only: opts.read_only,
            serial: super::serial(opts.serial.as_deref(), || {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            write_cache: opts.cache.write_cache(),
            honours_flush: opts.cache.honours_flush(),
            discard: !opts.read_only,
            buffer_alignment: if opts.cache.direct_io() {
                DIRECT_IO_BUFFER_ALIGN
            } else {
                1
            },
        };
        Ok(FileDisk {
            file,
            path: path.clone(),
            block_device: is_block_device,
            info,
            aio,
            threads: opts.threads,
            // Fixed buffers replace the page pinning O_DIRECT does per request; buffered I/O
            // pins nothing, so it would only pay the registration's cost.
            fixed_buffers: opts.fixed_buffers.filter(|_| opts.cache.direct_io()),
            fixed_buffer_counters: PerQueue::default(),
            lock: Mutex::new(lock),
        })
    }

    /// The engine actually in use (io_uring may have fallen back to threads).
    pub fn aio(&self) -> AioMode {
        self.aio
    }
}

impl Disk for FileDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn grow(&self, size: Option<u64>) -> Result<u64, DiskError> {
        let path = &self.path;
        let size = if self.block_device {
            if size.is_some() {
                return Err(DiskError::SizeOnBlockDevice(path.clone()));
            }
            block_device_size(&self.file, path)?
        } else {
            let now = file_len(&self.file, path)?;
            match size {
                Some(size) if size > now => {
                    self.file
                        .set_len(size)
                        .map_err(|source| DiskError::Resize {
                            path: path.clone(),
                            size,
                            source,
                        })?;
                    size
                }
                _ => now,
            }
        };
        Ok(size)
    }

    fn engine(&self, queue: u16, capacity: u16) -> Result<Box<dyn Engine>, DiskError> {
        let file = self.file.clone();
        let engine: Box<dyn Engine> = match self.aio {
            AioMode::IoUring => {
                let fixed = self
                    .fixed_buffers
                    .map(|max| (max, self.fixed_buffer_counters.get(queue)));
                Box::new(UringEngine::new(file, capacity, fixed).map_err(DiskError::Engine)?)
            }
            AioMode::Native => Box::new(AioEngine::new(file, capacity).map_err(DiskError::Engine)?),
            AioMode::Threads => {
                Box::new(ThreadPool::engine(file, self.threads).map_err(DiskError::Engine)?)
            }
        };
        Ok(engine)
    }

    fn activate(&self) -> Result<(), DiskError> {
        let mut lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let was = lock.is_active();
        lock.acquire()?;
        if !was {
            log::info!("{}: image locks taken", self.path.display());
        }
        Ok(())
    }

    fn inactivate(&self) {
        let mut lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if lock.is_active() {
            lock.release();
            log::info!(
                "{}: image locks given up (the frontend migrated the VM away)",
                self.path.display()
            );
        }
    }

    fn image_lock(&self) -> Option<&'static str> {
        let lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        Some(lock.state())
    }

    fn engine_counters(&self, queue: u16) -> Vec<(&'static str, u64)> {
        match (self.aio, self.fixed_buffers) {
            (AioMode::IoUring, Some(_)) => self.fixed_buffer_counters.get(queue).values().to_vec(),
            _ => Vec::new(),
        }
    }
}

fn open_file(path: &Path, opts: &FileDiskOptions, create: bool) -> Result<File, DiskError> {
    let mut options = OpenOptions::new();
    options.read(true).write(!opts.read_only).create(create);
    if opts.cache.direct_io() {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path).map_err(|source| {
        if opts.cache.direct_io() && source.raw_os_error() == Some(libc::EINVAL) {
            DiskError::DirectIoUnsupported(path.to_path_buf())
        } else {
            DiskError::Open {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn file_len(file: &File, path: &Path) -> Result<u64, DiskError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|source| DiskError::Inspect {
            path: path.to_path_buf(),
            source,
        })
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Runs an ioctl that writes one `T` through its argument, as the block-device queries do.
fn ioctl_read<T: Default>(file: &File, request: libc::c_ulong) -> io::Result<T> {
    let mut value = T::default();
    // SAFETY: `request` is one of the BLK*GET ioctls, which write exactly one `T` (u64 or int)
    // through the pointer, and `value` is such a `T`.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &mut value as *mut T) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn block_device_size(file: &File, path: &Path) -> Result<u64, DiskError> {
    ioctl_read::<u64>(file, BLKGETSIZE64).map_err(|source| DiskError::Inspect {
        path: path.to_path_buf(),
        source,
    })
}

fn block_device_sector_size(file: &File, path: &Path) -> Result<u32, DiskError> {
    ioctl_read::<libc::c_int>(file, libc::BLKSSZGET as libc::c_ulong)
        .and_then(|size| {
            u32::try_from(size)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative sector size"))
        })
        .map_err(|source| DiskError::Inspect {
            path: path.to_path_buf(),
            source,
        })
}

fn block_device_physical_block(file: &File) -> Option<u32> {
    ioctl_read::<libc::c_uint>(file, libc::BLKPBSZGET as libc::c_ulong)
        .ok()
        .filter(|&size| size > 0)
}

/// A file system on a 4 KiB-sector device rejects 512-byte direct I/O at run time; find out
/// now, with one aligned read, and tell the user what to pass instead.
fn check_direct_io_block_size(
    file: &File,
    path: &Path,
    block: u32,
    capacity: u64,
) -> Result<(), DiskError> {
    let mut buf = AlignedBuffer::new(block as usize).map_err(|source| DiskError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    // Read the last block: an odd multiple of 512 when the disk has more than one block, which
    // is what a 4 KiB-only device refuses.
    let result = file.read_at(buf.as_mut_slice(), capacity - u64::from(block));
    if result.is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL)) {
        return Err(DiskError::BlockSizeTooSmall {
            path: path.to_path_buf(),
            block,
        });
    }
    Ok(())
}
