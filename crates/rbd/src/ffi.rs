//! The parts of librados and librbd (Ceph 16, `rados/librados.h`, `rbd/librbd.h`) we call,
//! resolved with `dlopen` when the first RBD disk is opened.
//!
//! Loading at run time rather than linking is QEMU's choice too (its rbd driver is a module):
//! building vblkd needs no Ceph headers or libraries, and a host without them runs every other
//! disk; only `--disk rbd:` asks for `librbd.so.1`, and says how to get it if it is missing.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub type RadosT = *mut c_void;
pub type IoCtxT = *mut c_void;
pub type ImageT = *mut c_void;
pub type CompletionT = *mut c_void;
pub type Callback = unsafe extern "C" fn(CompletionT, *mut c_void);
/// `rbd_aio_readv` and `rbd_aio_writev`.
pub type VectoredIo =
    unsafe extern "C" fn(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int;

/// `RBD_WRITE_ZEROES_FLAG_THICK_PROVISION`: zero without deallocating.
pub const WRITE_ZEROES_FLAG_THICK_PROVISION: c_int = 1;

/// Declares the function table and its loader: each entry is looked up by its own name.
macro_rules! functions {
    ($($name:ident: fn($($arg:ty),*) -> $ret:ty;)*) => {
        #[allow(non_snake_case)]
        pub struct Lib {
            $(pub $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl Lib {
            /// Resolves every function in `handles` (the first that has it).
            ///
            /// # Safety
            /// Each handle must come from a successful `dlopen` and stay loaded for the life
            /// of the program; the symbols must have the signatures declared here.
            unsafe fn resolve(handles: &[*mut c_void]) -> Result<Self, String> {
                Ok(Lib {
                    $($name: {
                        let name = concat!(stringify!($name), "\0");
                        let symbol = handles
                            .iter()
                            // SAFETY: a loaded handle and a NUL-terminated name.
                            .map(|&h| unsafe { libc::dlsym(h, name.as_ptr().cast()) })
                            .find(|p| !p.is_null())
                            .ok_or_else(|| format!("{} lacks {}", LIBRBD, stringify!($name)))?;
                        // SAFETY: the caller guarantees the symbol has this signature; a
                        // function pointer and a data pointer have the same size here.
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> $ret>(symbol) }
                    },)*
                })
            }
        }
    };
}

functions! {
    rados_create: fn(*mut RadosT, *const c_char) -> c_int;
    rados_conf_read_file: fn(RadosT, *const c_char) -> c_int;
    rados_conf_set: fn(RadosT, *const c_char, *const c_char) -> c_int;
    rados_connect: fn(RadosT) -> c_int;
    rados_shutdown: fn(RadosT) -> ();
    rados_ioctx_create: fn(RadosT, *const c_char, *mut IoCtxT) -> c_int;
    rados_ioctx_destroy: fn(IoCtxT) -> ();
    rados_ioctx_set_namespace: fn(IoCtxT, *const c_char) -> ();
    rbd_open: fn(IoCtxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd_open_read_only: fn(IoCtxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd_close: fn(ImageT) -> c_int;
    rbd_get_size: fn(ImageT, *mut u64) -> c_int;
    rbd_aio_create_completion: fn(*mut c_void, Callback, *mut CompletionT) -> c_int;
    rbd_aio_get_return_value: fn(CompletionT) -> isize;
    rbd_aio_release: fn(CompletionT) -> ();
    rbd_aio_readv: fn(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int;
    rbd_aio_writev: fn(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int;
    rbd_aio_flush: fn(ImageT, CompletionT) -> c_int;
    rbd_aio_discard: fn(ImageT, u64, u64, CompletionT) -> c_int;
    rbd_aio_write_zeroes: fn(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int;
}

const LIBRBD: &str = "librbd.so.1";
const LIBRADOS: &str = "librados.so.2";

/// The loaded libraries, or why they could not be loaded (said once, kept).
pub fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Lib, String> {
    let open = |name: &str| {
        let c_name = std::ffi::CString::new(name).expect("no NUL in a library name");
        // SAFETY: dlopen with a NUL-terminated name; the handle is never closed.
        let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a NUL-terminated message (or null) after a failure.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "unknown error".into()
            } else {
                // SAFETY: as above.
                unsafe { CStr::from_ptr(why) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!(
                "cannot load {name} ({why}); install Ceph's client libraries (Debian: apt-get install librbd1)"
            ));
        }
        Ok(handle)
    };
    let handles = [open(LIBRBD)?, open(LIBRADOS)?];
    // SAFETY: both handles stay loaded forever, and the declarations above follow the Ceph
    // 16 headers.
    unsafe { Lib::resolve(&handles) }
}
