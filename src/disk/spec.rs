//! What `--disk` names, and the options that go with it.
//!
//! A [`DiskSpec`] is parsed from the `--disk` string (`FromStr`): a path, `null:SIZE`,
//! `aoe://IFACE/e<shelf>.<slot>` or `rbd:POOL/IMAGE...`. Each [`DiskKind`] says which
//! [`DiskOption`]s apply to it; [`open`] refuses one that does not, if it was given, with a
//! line that says why and what to do — rather than ignore `--aio` on a disk that does no I/O.
//! Options not given take the kind's defaults here, so the command line holds no logic of its
//! own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::aoe::AoeAddress;
use super::file::FileDiskOptions;
use super::{AioMode, AoeDisk, CacheMode, Disk, DiskError, FileDisk, Locking, NullDisk, RbdDisk};
use crate::util::size;

/// A disk as `--disk` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSpec {
    /// A regular file or a block device.
    File(PathBuf),
    /// `null:SIZE`: a disk of SIZE bytes that does no I/O.
    Null { size: u64 },
    /// `aoe://IFACE/e<shelf>.<slot>`: an ATA-over-Ethernet target.
    Aoe(AoeAddress),
    /// `rbd:POOL[/NAMESPACE]/IMAGE[@SNAP][:conf=PATH][:id=USER]`: a Ceph RBD image.
    Rbd(rbd::Spec),
}

/// The kinds of disk, for what applies to which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    File,
    Null,
    Aoe,
    Rbd,
}

/// A `--disk` that names nothing vblkd can serve.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("--disk null:SIZE: {0}")]
    NullSize(String),
    #[error(transparent)]
    Aoe(#[from] ::aoe::AoeError),
    #[error(transparent)]
    Rbd(#[from] ::rbd::RbdError),
}

impl std::str::FromStr for DiskSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        if let Some(size) = s.strip_prefix("null:") {
            let size = size::parse(size).map_err(SpecError::NullSize)?;
            return Ok(DiskSpec::Null { size });
        }
        if s.starts_with("aoe:") {
            return Ok(DiskSpec::Aoe(s.parse()?));
        }
        if s.starts_with("rbd:") {
            return Ok(DiskSpec::Rbd(rbd::Spec::parse(s)?));
        }
        Ok(DiskSpec::File(PathBuf::from(s)))
    }
}

impl DiskSpec {
    pub fn kind(&self) -> DiskKind {
        match self {
            DiskSpec::File(_) => DiskKind::File,
            DiskSpec::Null { .. } => DiskKind::Null,
            DiskSpec::Aoe(_) => DiskKind::Aoe,
            DiskSpec::Rbd(_) => DiskKind::Rbd,
        }
    }
}

impl std::fmt::Display for DiskSpec {
    /// The disk as the user named it (an RBD image without its options).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskSpec::File(path) => write!(f, "{}", path.display()),
            DiskSpec::Null { size } => write!(f, "null:{}", size::label(*size)),
            DiskSpec::Aoe(address) => write!(f, "{address}"),
            DiskSpec::Rbd(spec) => write!(f, "rbd:{}", spec.name()),
        }
    }
}

/// An option of `vblkd serve` that only some kinds of disk take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter)]
pub enum DiskOption {
    Size,
    Aio,
    Cache,
    Threads,
    FixedBuffers,
    LogicalBlockSize,
    AoeDeadline,
    ConnectTimeout,
    Locking,
}

impl DiskOption {
    /// The option as the command line spells it.
    pub fn flag(self) -> &'static str {
        match self {
            DiskOption::Size => "--size",
            DiskOption::Aio => "--aio",
            DiskOption::Cache => "--cache",
            DiskOption::Threads => "--threads",
            DiskOption::FixedBuffers => "--fixed-buffers",
            DiskOption::LogicalBlockSize => "--logical-block-size",
            DiskOption::AoeDeadline => "--aoe-deadline",
            DiskOption::ConnectTimeout => "--connect-timeout",
            DiskOption::Locking => "--locking",
        }
    }
}

impl DiskKind {
    /// What the kind is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            DiskKind::File => "a file or block device",
            DiskKind::Null => "a null disk",
            DiskKind::Aoe => "an AoE disk",
            DiskKind::Rbd => "an RBD disk",
        }
    }

    /// `Ok` if `option` applies to this kind of disk; otherwise why not, said so that the
    /// user knows what to do instead.
    pub fn accepts(self, option: DiskOption) -> Result<(), &'static str> {
        use DiskKind as K;
        use DiskOption as O;
        match (self, option) {
            (K::File, O::AoeDeadline | O::ConnectTimeout) => {
                Err("it is for a network disk; leave it out")
            }
            (K::File, _) => Ok(()),
            (K::Null, O::LogicalBlockSize) => Ok(()),
            (K::Null, O::Locking) => Err("a null disk has no image to lock"),
            (K::Aoe, O::Locking) => Err("the AoE target decides who may use its disk"),
            (K::Rbd, O::Locking) => Err("librbd's exclusive lock guards an RBD image"),
            (K::Null, O::Size) => Err("a null disk's size is in its name (null:SIZE)"),
            (K::Null, _) => Err("a null disk does no I/O; leave it out"),
            (K::Aoe, O::AoeDeadline) => Ok(()),
            (K::Aoe, O::LogicalBlockSize) => Err("an AoE target has 512-byte sectors"),
            (K::Aoe, O::Size) => Err("an AoE target's size is what it exports"),
            (K::Aoe, _) => Err("the AoE target does the I/O; leave it out"),
            (K::Rbd, O::LogicalBlockSize | O::ConnectTimeout) => Ok(()),
            (K::Rbd, O::Size) => Err("an RBD image's size is its own (rbd resize)"),
            (K::Rbd, _) => Err("librbd does the I/O, with its cache off; leave it out"),
        }
    }
}

/// The options `vblkd serve` takes for its disk. `None` is "not given": the kind's default
/// applies, and an option the kind does not take is refused only when given.
#[derive(Debug, Clone, Default)]
pub struct DiskOptions {
    pub read_only: bool,
    /// GET_ID's serial; by default the disk's own name.
    pub serial: Option<String>,
    /// The guest's sector size (512 or 4096); 512 by default.
    pub logical_block_size: Option<u32>,
    /// Create or grow a file to this size.
    pub size: Option<u64>,
    /// io_uring by default.
    pub aio: Option<AioMode>,
    /// none by default.
    pub cache: Option<CacheMode>,
    /// Threads per queue for `--aio threads`; 16 by default.
    pub threads: Option<u16>,
    pub fixed_buffers: Option<u64>,
    /// An AoE request unanswered this long fails; 60 s by default.
    pub aoe_deadline: Option<Duration>,
    /// Give up reaching a Ceph cluster after this long; 10 s by default.
    pub connect_timeout: Option<Duration>,
    /// Image locking for files and block devices; `auto` by default.
    pub locking: Option<Locking>,
    /// The destination of an incoming migration: the disk is not locked until the frontend
    /// starts the device (any kind of disk takes this; only those with locks care).
    pub incoming: bool,
}

impl DiskOptions {
    /// The kind-specific options that were given.
    fn given(&self) -> impl Iterator<Item = DiskOption> + '_ {
        use strum::IntoEnumIterator;
        DiskOption::iter().filter(|option| match option {
            DiskOption::Size => self.size.is_some(),
            DiskOption::Aio => self.aio.is_some(),
            DiskOption::Cache => self.cache.is_some(),
            DiskOption::Threads => self.threads.is_some(),
            DiskOption::FixedBuffers => self.fixed_buffers.is_some(),
            DiskOption::LogicalBlockSize => self.logical_block_size.is_some(),
            DiskOption::AoeDeadline => self.aoe_deadline.is_some(),
            DiskOption::ConnectTimeout => self.connect_timeout.is_some(),
            DiskOption::Locking => self.locking.is_some(),
        })
    }
}

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{flag} does not apply to {kind}: {why}")]
    Inapplicable {
        flag: &'static str,
        kind: &'static str,
        why: &'static str,
    },
    #[error(transparent)]
    Disk(#[from] DiskError),
}

const DEFAULT_THREADS: u16 = 16;
const DEFAULT_AOE_DEADLINE: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the disk `spec` names with `options`, and says in the log what is served.
pub fn open(spec: &DiskSpec, options: &DiskOptions) -> Result<Arc<dyn Disk>, OpenError> {
    let kind = spec.kind();
    if let Some((option, why)) = options
        .given()
        .find_map(|option| kind.accepts(option).err().map(|why| (option, why)))
    {
        return Err(OpenError::Inapplicable {
            flag: option.flag(),
            kind: kind.name(),
            why,
        });
    }
    let block = options.logical_block_size.unwrap_or(512);
    let serial = options.serial.as_deref();
    let read_only = if options.read_only { ", read-only" } else { "" };
    let disk: Arc<dyn Disk> = match spec {
        DiskSpec::File(path) => {
            let cache = options.cache.unwrap_or(CacheMode::None);
            let disk = FileDisk::open(&FileDiskOptions {
                path: path.clone(),
                size: options.size,
                aio: options.aio.unwrap_or(AioMode::IoUring),
                cache,
                read_only: options.read_only,
                logical_block_size: block,
                serial: options.serial.clone(),
                threads: usize::from(options.threads.unwrap_or(DEFAULT_THREADS)),
                fixed_buffers: options.fixed_buffers,
                locking: options.locking.unwrap_or(Locking::Auto),
                incoming: options.incoming,
            })?;
            log::info!(
                "serving {} ({} bytes, {block}-byte blocks{read_only}) with aio={} cache={cache}",
                path.display(),
                disk.info().capacity.bytes(),
                disk.aio(),
            );
            Arc::new(disk)
        }
        DiskSpec::Null { size } => {
            let disk = NullDisk::new(*size, block, options.read_only, serial)?;
            log::info!(
                "serving a null disk of {} bytes{read_only} (no I/O is done)",
                disk.info().capacity.bytes()
            );
            Arc::new(disk)
        }
        DiskSpec::Aoe(address) => {
            let deadline = options.aoe_deadline.unwrap_or(DEFAULT_AOE_DEADLINE);
            Arc::new(AoeDisk::open(address, options.read_only, serial, deadline)?)
        }
        DiskSpec::Rbd(rbd) => {
            let timeout = options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            let disk = RbdDisk::open(rbd, options.read_only, block, serial, timeout)?;
            log::info!(
                "serving RBD image {} ({} bytes{})",
                disk.name(),
                disk.info().capacity.bytes(),
                if disk.info().read_only {
                    ", read-only"
                } else {
                    ""
                }
            );
            Arc::new(disk)
        }
    };
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_is_named_as_the_command_line_writes_it() {
        assert_eq!(
            "/tmp/x.img".parse::<DiskSpec>().unwrap(),
            DiskSpec::File("/tmp/x.img".into())
        );
        assert_eq!(
            "null:1G".parse::<DiskSpec>().unwrap(),
            DiskSpec::Null { size: 1 << 30 }
        );
        let aoe: DiskSpec = "aoe://eth0/e1.2".parse().unwrap();
        assert_eq!(aoe.kind(), DiskKind::Aoe);
        assert_eq!(aoe.to_string(), "aoe://eth0/e1.2");
        assert_eq!("rbd:p/i".parse::<DiskSpec>().unwrap().kind(), DiskKind::Rbd);
        for bad in ["null:", "null:1Q", "aoe://eth0", "rbd:", "rbd:pool"] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_option_a_kind_cannot_use_is_refused_with_the_reason() {
        let null: DiskSpec = "null:1G".parse().unwrap();
        let with_aio = DiskOptions {
            aio: Some(AioMode::Native),
            ..DiskOptions::default()
        };
        let err = open(&null, &with_aio).err().unwrap().to_string();
        assert_eq!(
            err,
            "--aio does not apply to a null disk: a null disk does no I/O; leave it out"
        );
        // Every kind refuses at least one option, and takes the ones every disk has.
        for kind in [DiskKind::File, DiskKind::Null, DiskKind::Aoe, DiskKind::Rbd] {
            use strum::IntoEnumIterator;
            assert!(
                DiskOption::iter().any(|o| kind.accepts(o).is_err()),
                "{kind:?}"
            );
        }
        assert!(open(&null, &DiskOptions::default()).is_ok());
    }
}
