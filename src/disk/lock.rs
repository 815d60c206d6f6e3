//! Image locking that QEMU understands: no two processes write one image unless both agree.
//!
//! QEMU's file driver (block/file-posix.c) expresses what an open image may be used for as
//! permissions — consistent read, write, write-unchanged, resize, bits 0 to 3 — and what it
//! lets others do as the permissions it shares. It publishes both with open-file-description
//! (OFD) byte-range locks on the image itself, all of them *read* locks, so that any number of
//! processes can hold the same byte: byte 100 + bit for each permission it holds, byte 200 +
//! bit for each permission it does not share. Taking a permission then means: lock our bytes,
//! and check with `F_OFD_GETLK` that nobody holds byte 200 + bit for a permission we want
//! (someone does not share it) and nobody holds byte 100 + bit for a permission we do not
//! share (someone has it). OFD locks of our own file description never conflict with us, and
//! they go away when the file is closed or the process dies. vblkd takes the same bytes with
//! the same meaning, so a writable vblkd and QEMU, qemu-storage-daemon or qemu-img exclude
//! each other (in either order), and read-only users share as QEMU lets them.
//!
//! A writable vblkd holds consistent read and write and shares everything but write, as
//! QEMU's virtio-blk does; a read-only one holds consistent read and shares the same, so it
//! refuses to start beside a writer and a writer beside it, but many read-only users share.
//!
//! During a live migration two daemons serve one image by design. As QEMU does, the incoming
//! side (`--incoming`) starts without the locks and takes them when its frontend starts the
//! device, and the outgoing side gives them up when its rings stop while dirty-page logging
//! is on (the switch-over; see [`crate::frontend`]): at any moment one of them writes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `--locking`, as QEMU's `locking=` option.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::Display, strum::VariantNames,
)]
#[strum(serialize_all = "snake_case")]
pub enum Locking {
    /// Lock, unless the file system cannot (then say so once and go on).
    Auto,
    /// Lock, and refuse to serve where the file system cannot.
    On,
    /// Take no locks (a cluster file system whose users share the image on purpose).
    Off,
}

/// QEMU's permission bits (`BLK_PERM_*`).
const CONSISTENT_READ: u8 = 1 << 0;
const WRITE: u8 = 1 << 1;
const WRITE_UNCHANGED: u8 = 1 << 2;
const RESIZE: u8 = 1 << 3;
const ALL: u8 = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE;
/// Where the bytes of held and of unshared permissions start.
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// The names QEMU gives the permissions in its messages, by bit.
fn name(bit: u8) -> &'static str {
    match bit {
        CONSISTENT_READ => "consistent read",
        WRITE => "write",
        WRITE_UNCHANGED => "write unchanged",
        _ => "resize",
    }
}

fn bits(mask: u8) -> impl Iterator<Item = (i64, u8)> {
    (0..4)
        .map(|i| (i, 1u8 << i))
        .filter(move |(_, bit)| mask & bit != 0)
}

/// Why the image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot lock {path}: another process{holder} {what} (QEMU, qemu-storage-daemon, qemu-img or another vblkd use the image); stop it, or pass --locking off if the image is shared on purpose")]
    Conflict {
        path: PathBuf,
        /// What the other process does: keeps a permission for itself, or holds one we do not
        /// share (QEMU: `Failed to get "write" lock`, `Failed to get shared "write" lock`).
        what: String,
        /// " (PID COMMAND)", if /proc says who.
        holder: String,
    },
    #[error("the file system of {path} does not support OFD locks ({source}); pass --locking off (or auto) to serve it without locking")]
    Unsupported { path: PathBuf, source: io::Error },
    #[error("cannot lock {path}: {source}")]
    Failed { path: PathBuf, source: io::Error },
}

/// The locks of one open image.
#[derive(Debug)]
pub struct ImageLock {
    file: Arc<File>,
    path: PathBuf,
    /// Permissions held, and not shared.
    held: u8,
    unshared: u8,
    mode: Locking,
    /// Whether our bytes are locked now.
    active: bool,
}

impl ImageLock {
    /// The locks a user of `file` (at `path`) takes: a writer's or a reader's.
    pub fn new(file: Arc<File>, path: &Path, read_only: bool, mode: Locking) -> Self {
        let held = if read_only {
            CONSISTENT_READ
        } else {
            CONSISTENT_READ | WRITE
        };
        ImageLock {
            file,
            path: path.to_owned(),
            held,
            unshared: WRITE,
            mode,
            active: false,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active || self.mode == Locking::Off
    }

    /// What the control socket reports: `held`, `released` or `off`.
    pub fn state(&self) -> &'static str {
        match (self.mode, self.active) {
            (Locking::Off, _) => "off",
            (_, true) => "held",
            (_, false) => "released",
        }
    }

    /// Takes the locks, or says which permission another process holds or keeps for itself.
    pub fn acquire(&mut self) -> Result<(), LockError> {
        if self.is_active() {
            return Ok(());
        }
        let set = bits(self.held)
            .map(|(i, _)| PERM_BASE + i)
            .chain(bits(self.unshared).map(|(i, _)| SHARED_BASE + i));
        for byte in set {
            if let Err(source) = self.lock(byte, libc::F_RDLCK) {
                self.unlock_all();
                return match source.raw_os_error() {
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                        if self.mode == Locking::Auto =>
                    {
                        log::warn!(
                            "{} does not support OFD locks ({source}); serving it without image \
                             locking",
                            self.path.display()
                        );
                        self.mode = Locking::Off;
                        Ok(())
                    }
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                        Err(LockError::Unsupported {
                            path: self.path.clone(),
                            source,
                        })
                    }
                    Some(libc::EAGAIN | libc::EACCES) => Err(self.conflict(byte)),
                    _ => Err(LockError::Failed {
                        path: self.path.clone(),
                        source,
                    }),
                };
            }
        }
        // A permission we want that someone does not share, or one we do not share that
        // someone holds.
        let wanted = bits(self.held).map(|(i, _)| SHARED_BASE + i);
        let unshared = bits(self.unshared).map(|(i, _)| PERM_BASE + i);
        for byte in wanted.chain(unshared) {
            match self.held_by_others(byte) {
                Ok(false) => {}
                Ok(true) => {
                    self.unlock_all();
                    return Err(self.conflict(byte));
                }
                Err(source) => {
                    self.unlock_all();
                    return Err(LockError::Failed {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        self.active = true;
        Ok(())
    }

    /// Like [`ImageLock::acquire`], but waits up to `patience` while the conflicting locks
    /// belong to no process /proc shows: a process that just exited (a daemon killed and
    /// restarted) keeps its locks until the kernel has closed its files, which for io_uring
    /// happens a moment later, on a kernel thread.
    pub fn acquire_patiently(&mut self, patience: std::time::Duration) -> Result<(), LockError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.acquire() {
                Err(LockError::Conflict { holder, .. })
                    if holder.is_empty() && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Gives the locks up (an outgoing migration's switch-over).
    pub fn release(&mut self) {
        if self.active {
            self.unlock_all();
            self.active = false;
        }
    }

    /// The error for a conflict found at `byte` (one of ours, or one we tested).
    fn conflict(&self, byte: i64) -> LockError {
        let perm = name(1u8 << ((byte - PERM_BASE) % 100));
        let what = if byte >= SHARED_BASE {
            format!("keeps \"{perm}\" for itself")
        } else {
            format!("holds \"{perm}\", which this vblkd does not share")
        };
        LockError::Conflict {
            path: self.path.clone(),
            what,
            holder: holder(&self.file, byte)
                .map(|who| format!(" ({who})"))
                .unwrap_or_default(),
        }
    }

    fn unlock_all(&self) {
        for byte in bits(ALL).flat_map(|(i, _)| [PERM_BASE + i, SHARED_BASE + i]) {
            let _ = self.lock(byte, libc::F_UNLCK);
        }
    }

    fn lock(&self, byte: i64, kind: libc::c_int) -> io::Result<()> {
        let mut lock = flock(byte, kind);
        // SAFETY: F_OFD_SETLK reads the flock struct we pass, which lives across the call.
        let ret = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_SETLK, &mut lock) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether another open file description holds a lock on `byte` (one a write lock would
    /// conflict with: any).
    fn held_by_others(&self, byte: i64) -> io::Result<bool> {
        let mut lock = flock(byte, libc::F_WRLCK);
        // SAFETY: F_OFD_GETLK reads and overwrites the flock struct we pass.
        let ret = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(i32::from(lock.l_type) != libc::F_UNLCK)
    }
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// A one-byte lock request at `byte`.
fn flock(byte: i64, kind: libc::c_int) -> libc::flock {
    libc::flock {
        // The lock types are 0..=2.
        l_type: i16::try_from(kind).unwrap_or(0),
        l_whence: 0, // SEEK_SET
        l_start: byte,
        l_len: 1,
        // OFD locks want 0 here.
        l_pid: 0,
    }
}

/// Who else holds a lock on `byte` of the file behind `file`: `PID (COMMAND)`, found in
/// /proc (OFD locks carry no pid for `F_OFD_GETLK`, but /proc/PID/fdinfo lists them).
fn holder(file: &File, byte: i64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let (ino, dev) = (meta.ino(), meta.dev());
    // /proc/locks writes the device as MAJOR:MINOR in hex.
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let id = format!("{major:02x}:{minor:02x}:{ino}");
    let me = std::process::id();
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            let holds = info.lines().filter(|l| l.starts_with("lock:")).any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                // lock: N: OFDLCK ADVISORY READ -1 MAJ:MIN:INO START END
                let range = (words.get(7), words.get(8));
                words.get(6) == Some(&id.as_str())
                    && matches!(range, (Some(start), Some(end))
                        if start.parse::<i64>().is_ok_and(|s| s <= byte)
                            && end.parse::<i64>().is_ok_and(|e| e >= byte))
            });
            if holds {
                let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                return Some(format!("{pid}, {}", comm.trim()));
            }
        }
    }
    None
}
