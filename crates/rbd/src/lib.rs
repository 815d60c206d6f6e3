//! Ceph RBD images, through librbd and librados loaded at run time (see the `ffi` module).
//!
//! An [`Image`] is one open image on one cluster connection. Its I/O is asynchronous only:
//! [`Image::read`], [`Image::write`] and the others hand librbd a request whose buffers it
//! reads or fills in place (no copies), and librbd calls the request's [`OnDone`] from its own
//! thread when it finishes.
//! One handle serves every queue of a disk: librbd's asynchronous calls are thread-safe, and a
//! second handle on the same image would fight the first for the image's exclusive lock.

mod ffi;

use std::ffi::{c_int, c_void, CString};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What librbd calls, from one of its threads, with the request's result: bytes moved, or
/// `-errno`.
pub type OnDone = Box<dyn Fn(isize) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum RbdError {
    #[error("{0}")]
    Library(String),
    #[error("'{0}' is not an RBD disk; write rbd:POOL/IMAGE (or POOL/NAMESPACE/IMAGE), optionally @SNAPSHOT, :conf=PATH, :id=USER, e.g. rbd:rbd/vm0:conf=/etc/ceph/ceph.conf")]
    BadSpec(String),
    #[error("cannot read Ceph configuration {path}: {source}")]
    Config { path: String, source: io::Error },
    #[error("cannot reach the Ceph cluster within {timeout:?}: {source}; check the monitors in {conf} and that they are up")]
    Connect {
        conf: String,
        timeout: Duration,
        source: io::Error,
    },
    #[error("cannot use pool '{pool}': {source}; check that it exists (ceph osd pool ls)")]
    Pool { pool: String, source: io::Error },
    #[error("cannot open RBD image {image}: {source}; check that it exists (rbd ls {pool})")]
    Open {
        pool: String,
        image: String,
        source: io::Error,
    },
    #[error("the Ceph cluster did not open RBD image {image} within {timeout:?}; check that its OSDs are up and it is not full (ceph health)")]
    Unresponsive { image: String, timeout: Duration },
    #[error("cannot read the size of RBD image {image}: {source}")]
    Size { image: String, source: io::Error },
}

/// An image named the way QEMU's rbd driver names one:
/// `rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:conf=PATH][:id=USER]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
    /// Opened read-only, as of the snapshot.
    pub snapshot: Option<String>,
    /// The Ceph configuration file; librados's default search when absent.
    pub conf: Option<PathBuf>,
    /// The client's id (`client.ID`); librados's default (`admin`) when absent.
    pub user: Option<String>,
}

impl Spec {
    pub fn parse(s: &str) -> Result<Spec, RbdError> {
        let bad = || RbdError::BadSpec(s.to_owned());
        let rest = s.strip_prefix("rbd:").ok_or_else(bad)?;
        let mut parts = rest.split(':');
        let name = parts.next().ok_or_else(bad)?;
        let (mut conf, mut user) = (None, None);
        for option in parts {
            match option.split_once('=') {
                Some(("conf", path)) if !path.is_empty() => conf = Some(PathBuf::from(path)),
                Some(("id", id)) if !id.is_empty() => user = Some(id.to_owned()),
                _ => return Err(bad()),
            }
        }
        let (name, snapshot) = match name.split_once('@') {
            Some((name, snap)) if !snap.is_empty() => (name, Some(snap.to_owned())),
            Some(_) => return Err(bad()),
            None => (name, None),
        };
        let fields: Vec<&str> = name.split('/').collect();
        let (pool, namespace, image) = match fields[..] {
            [pool, image] => (pool, None, image),
            [pool, namespace, image] if !namespace.is_empty() => {
                (pool, Some(namespace.to_owned()), image)
            }
            _ => return Err(bad()),
        };
        if pool.is_empty() || image.is_empty() {
            return Err(bad());
        }
        Ok(Spec {
            pool: pool.to_owned(),
            namespace,
            image: image.to_owned(),
            snapshot,
            conf,
            user,
        })
    }

    /// `POOL[/NAMESPACE]/IMAGE[@SNAPSHOT]`, for messages.
    pub fn name(&self) -> String {
        let mut name = self.pool.clone();
        if let Some(ns) = &self.namespace {
            name = format!("{name}/{ns}");
        }
        name = format!("{name}/{}", self.image);
        if let Some(snap) = &self.snapshot {
            name = format!("{name}@{snap}");
        }
        name
    }
}

/// A librbd result: non-negative is success, negative `-errno`.
fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        Ok(ret)
    }
}

fn c_string(s: &str, spec: &str) -> Result<CString, RbdError> {
    CString::new(s).map_err(|_| RbdError::BadSpec(spec.to_owned()))
}

/// An open image, with the cluster connection and pool context it lives on.
pub struct Image {
    lib: &'static ffi::Lib,
    image: ffi::ImageT,
    ioctx: ffi::IoCtxT,
    cluster: ffi::RadosT,
}

// SAFETY: librbd and librados handles may be used from any thread; librbd serialises what
// needs it internally (its asynchronous calls are made from many threads by QEMU and SPDK).
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Image {
    /// Connects to the cluster and opens the image, read-only when asked or when it names a
    /// snapshot, giving up after `timeout`.
    ///
    /// librados bounds reaching the monitors, but opening an image is I/O on the pool, which
    /// waits for its OSDs without limit (they may be down, or the cluster full). So the open
    /// runs on a thread of its own and is abandoned after `timeout`; should it finish later,
    /// that thread closes the image again.
    pub fn open(spec: &Spec, read_only: bool, timeout: Duration) -> Result<Image, RbdError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let spec_for_thread = spec.clone();
        std::thread::Builder::new()
            .name("rbd-open".into())
            .spawn(move || {
                let _ = tx.send(Self::open_now(&spec_for_thread, read_only, timeout));
            })
            .map_err(|e| RbdError::Library(format!("cannot start a thread: {e}")))?;
        rx.recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| {
                Err(RbdError::Unresponsive {
                    image: spec.name(),
                    timeout,
                })
            })
    }

    fn open_now(spec: &Spec, read_only: bool, timeout: Duration) -> Result<Image, RbdError> {
        let lib = ffi::lib().map_err(RbdError::Library)?;
        let text = spec.name();
        let user = spec
            .user
            .as_deref()
            .map(|u| c_string(u, &text))
            .transpose()?;
        let mut cluster: ffi::RadosT = std::ptr::null_mut();
        let user_ptr = user.as_ref().map_or(std::ptr::null(), |u| u.as_ptr());
        // SAFETY: `cluster` is a valid out-pointer, `user_ptr` null or a C string.
        check(unsafe { (lib.rados_create)(&mut cluster, user_ptr) }).map_err(|source| {
            RbdError::Connect {
                conf: "the Ceph configuration".into(),
                timeout,
                source,
            }
        })?;
        // From here on, Drop cleans up whatever exists.
        let mut this = Image {
            lib,
            image: std::ptr::null_mut(),
            ioctx: std::ptr::null_mut(),
            cluster,
        };
        let conf_name = spec.conf.as_ref().map_or_else(
            || "the default Ceph configuration".to_owned(),
            |p| p.display().to_string(),
        );
        let conf = spec
            .conf
            .as_ref()
            .map(|p| c_string(&p.to_string_lossy(), &text))
            .transpose()?;
        let conf_ptr = conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: a created cluster handle; null means librados's default search path.
        check(unsafe { (lib.rados_conf_read_file)(cluster, conf_ptr) }).map_err(|source| {
            RbdError::Config {
                path: conf_name.clone(),
                source,
            }
        })?;
        let seconds = c_string(&timeout.as_secs().max(1).to_string(), &text)?;
        let settings = [
            (c"client_mount_timeout", seconds.as_c_str()),
            (c"rados_mon_op_timeout", seconds.as_c_str()),
            // No client-side cache, as QEMU's cache=none: a write is acknowledged once the
            // cluster has it, so a guest that disabled its write cache needs nothing more,
            // and there is no second copy of the data in this process.
            (c"rbd_cache", c"false"),
        ];
        for (option, value) in settings {
            // SAFETY: C strings; an option this librados lacks is an error we can ignore.
            unsafe { (lib.rados_conf_set)(cluster, option.as_ptr(), value.as_ptr()) };
        }
        // SAFETY: a configured cluster handle.
        check(unsafe { (lib.rados_connect)(cluster) }).map_err(|source| RbdError::Connect {
            conf: conf_name,
            timeout,
            source,
        })?;
        let pool = c_string(&spec.pool, &text)?;
        // SAFETY: a connected cluster, a C string, a valid out-pointer.
        check(unsafe { (lib.rados_ioctx_create)(cluster, pool.as_ptr(), &mut this.ioctx) })
            .map_err(|source| RbdError::Pool {
                pool: spec.pool.clone(),
                source,
            })?;
        if let Some(ns) = &spec.namespace {
            let ns = c_string(ns, &text)?;
            // SAFETY: a live pool context and a C string (copied by librados).
            unsafe { (lib.rados_ioctx_set_namespace)(this.ioctx, ns.as_ptr()) };
        }
        let name = c_string(&spec.image, &text)?;
        let snap = spec
            .snapshot
            .as_deref()
            .map(|s| c_string(s, &text))
            .transpose()?;
        let snap_ptr = snap.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let open = if read_only || spec.snapshot.is_some() {
            lib.rbd_open_read_only
        } else {
            lib.rbd_open
        };
        // SAFETY: a live pool context, C strings (or null), a valid out-pointer.
        check(unsafe { open(this.ioctx, name.as_ptr(), &mut this.image, snap_ptr) }).map_err(
            |source| RbdError::Open {
                pool: spec.pool.clone(),
                image: text.clone(),
                source,
            },
        )?;
        Ok(this)
    }

    /// The image's size in bytes.
    pub fn size(&self) -> io::Result<u64> {
        let mut size = 0;
        // SAFETY: an open image and a valid out-pointer.
        check(unsafe { (self.lib.rbd_get_size)(self.image, &mut size) })?;
        Ok(size)
    }

    /// Starts a read of the image at `offset` into `iovecs`; `on_done` is called once, from
    /// a librbd thread, when it finishes. An error means it never started, and `on_done` will
    /// not be called.
    ///
    /// # Safety
    /// The memory the iovecs describe, and `on_done` itself (its address is what librbd is
    /// given), must stay valid and in place until `on_done` has been called.
    pub unsafe fn read(
        &self,
        offset: u64,
        iovecs: &[libc::iovec],
        on_done: &OnDone,
    ) -> io::Result<()> {
        // SAFETY: this function's contract is `transfer`'s.
        unsafe { self.transfer(self.lib.rbd_aio_readv, offset, iovecs, on_done) }
    }

    /// Starts a write of `iovecs` to the image at `offset`.
    ///
    /// # Safety
    /// As [`Image::read`].
    pub unsafe fn write(
        &self,
        offset: u64,
        iovecs: &[libc::iovec],
        on_done: &OnDone,
    ) -> io::Result<()> {
        // SAFETY: as for reads.
        unsafe { self.transfer(self.lib.rbd_aio_writev, offset, iovecs, on_done) }
    }

    /// Starts `call` (`rbd_aio_readv` or `rbd_aio_writev`) on `iovecs` at `offset`.
    ///
    /// # Safety
    /// As [`Image::read`].
    unsafe fn transfer(
        &self,
        call: ffi::VectoredIo,
        offset: u64,
        iovecs: &[libc::iovec],
        on_done: &OnDone,
    ) -> io::Result<()> {
        let image = self.image;
        // librbd reports a write as 0, not as bytes: a list cut short would look complete.
        let count = c_int::try_from(iovecs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the caller keeps the iovecs and `on_done` valid (this function's contract);
        // `count` is their number.
        unsafe { self.start(on_done, |c| call(image, iovecs.as_ptr(), count, offset, c)) }
    }

    /// Starts a flush of what the image has acknowledged.
    ///
    /// # Safety
    /// As [`Image::read`], for `on_done`.
    pub unsafe fn flush(&self, on_done: &OnDone) -> io::Result<()> {
        let (image, lib) = (self.image, self.lib);
        // SAFETY: `on_done` stays valid (this function's contract).
        unsafe { self.start(on_done, |c| (lib.rbd_aio_flush)(image, c)) }
    }

    /// Starts deallocating `len` bytes at `offset`.
    ///
    /// # Safety
    /// As [`Image::read`], for `on_done`.
    pub unsafe fn discard(&self, offset: u64, len: u64, on_done: &OnDone) -> io::Result<()> {
        let (image, lib) = (self.image, self.lib);
        // SAFETY: `on_done` stays valid (this function's contract).
        unsafe { self.start(on_done, |c| (lib.rbd_aio_discard)(image, offset, len, c)) }
    }

    /// Starts zeroing `len` bytes at `offset`, deallocating them if `unmap` allows.
    ///
    /// # Safety
    /// As [`Image::read`], for `on_done`.
    pub unsafe fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        on_done: &OnDone,
    ) -> io::Result<()> {
        let (image, lib) = (self.image, self.lib);
        let flags = if unmap {
            0
        } else {
            ffi::WRITE_ZEROES_FLAG_THICK_PROVISION
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        // SAFETY: `on_done` stays valid (this function's contract).
        unsafe {
            self.start(on_done, |c| {
                (lib.rbd_aio_write_zeroes)(image, offset, len, c, flags, 0)
            })
        }
    }

    /// Makes a completion that reports to `on_done` and passes it to `call`, which starts
    /// the request with it; `on_done` is then called once, from a librbd thread, when the
    /// request finishes. An error means it never started, and `on_done` will not be called.
    ///
    /// # Safety
    /// `on_done` itself (its address is what librbd is given) and any memory the request
    /// refers to must stay valid and in place until `on_done` has been called.
    unsafe fn start(
        &self,
        on_done: &OnDone,
        call: impl FnOnce(ffi::CompletionT) -> c_int,
    ) -> io::Result<()> {
        let lib = self.lib;
        let mut c: ffi::CompletionT = std::ptr::null_mut();
        let arg = (on_done as *const OnDone).cast_mut().cast::<c_void>();
        // SAFETY: a valid out-pointer; `arg` stays valid per this function's contract.
        check(unsafe { (lib.rbd_aio_create_completion)(arg, finished, &mut c) })?;
        if let Err(e) = check(call(c)) {
            // SAFETY: the completion was never handed to an operation.
            unsafe { (lib.rbd_aio_release)(c) };
            return Err(e);
        }
        Ok(())
    }
}

/// librbd's completion callback: reports the result to the request's [`OnDone`].
unsafe extern "C" fn finished(c: ffi::CompletionT, arg: *mut c_void) {
    let Ok(lib) = ffi::lib() else {
        return; // unreachable: a completion exists only if the library loaded
    };
    // SAFETY: `c` is the completion librbd finished; we release it exactly once, here.
    let ret = unsafe { (lib.rbd_aio_get_return_value)(c) };
    // SAFETY: as above.
    unsafe { (lib.rbd_aio_release)(c) };
    // SAFETY: `arg` is the `OnDone` given to `Image::start`, valid until called (its contract).
    let on_done = unsafe { &*arg.cast::<OnDone>() };
    on_done(ret);
}

impl Drop for Image {
    fn drop(&mut self) {
        let lib = self.lib;
        // SAFETY: each handle is closed once, image before its pool context before the
        // cluster; null ones were never opened.
        unsafe {
            if !self.image.is_null() {
                (lib.rbd_close)(self.image);
            }
            if !self.ioctx.is_null() {
                (lib.rados_ioctx_destroy)(self.ioctx);
            }
            (lib.rados_shutdown)(self.cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_qemu_names_them() {
        let s = Spec::parse("rbd:rbd/vm0").unwrap();
        assert_eq!((s.pool.as_str(), s.image.as_str()), ("rbd", "vm0"));
        assert_eq!(
            (s.namespace, s.snapshot, s.conf, s.user),
            (None, None, None, None)
        );
        let s = Spec::parse("rbd:pool/ns/img@snap:conf=/etc/ceph/x.conf:id=vblkd").unwrap();
        assert_eq!(s.namespace.as_deref(), Some("ns"));
        assert_eq!(s.snapshot.as_deref(), Some("snap"));
        assert_eq!(s.conf, Some(PathBuf::from("/etc/ceph/x.conf")));
        assert_eq!(s.user.as_deref(), Some("vblkd"));
        assert_eq!(s.name(), "pool/ns/img@snap");
        for bad in [
            "rbd:",
            "rbd:pool",
            "rbd:/img",
            "rbd:pool/",
            "rbd:a/b/c/d",
            "rbd:pool/img@",
            "rbd:pool/img:conf=",
            "rbd:pool/img:colour=red",
            "pool/img",
        ] {
            assert!(Spec::parse(bad).is_err(), "{bad}");
        }
    }
}
