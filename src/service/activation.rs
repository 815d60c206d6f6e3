//! systemd socket activation: the listening socket handed over in `LISTEN_FDS`.
//!
//! With a `.socket` unit, systemd creates and listens on the vhost-user socket itself and
//! starts vblkd when it is needed; the socket exists (and frontends can connect) before vblkd
//! runs, so there is no race between the daemon's bind and the VM's connect.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST: RawFd = 3;

/// The listening unix socket systemd passed to this process, if any. `LISTEN_PID` must name
/// us (the variables are inherited by children, for whom they are not meant), exactly one fd
/// must be passed, and it must be a listening unix stream socket. The variables are removed,
/// as `sd_listen_fds(1)` does, so nothing started later takes them for its own.
pub fn listener() -> io::Result<Option<UnixListener>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if fds != "1" {
        return Err(invalid(format!(
            "systemd passed {fds} sockets (LISTEN_FDS); vblkd serves one: give its .socket unit one ListenStream="
        )));
    }
    let int_option = |name| {
        let mut value: libc::c_int = 0;
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
            .expect("an int's size fits");
        // SAFETY: getsockopt writes at most `len` bytes into `value`, a live c_int.
        let ret = unsafe {
            libc::getsockopt(
                FIRST,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(value)
        }
    };
    let usable = int_option(libc::SO_DOMAIN)? == libc::AF_UNIX
        && int_option(libc::SO_TYPE)? == libc::SOCK_STREAM
        && int_option(libc::SO_ACCEPTCONN)? == 1;
    if !usable {
        return Err(invalid(
            "the socket systemd passed is not a listening unix stream socket: use ListenStream=/path in the .socket unit".into(),
        ));
    }
    // SAFETY: fd 3 was passed to this process for it to own (LISTEN_PID names us), and it was
    // just checked to be a listening socket; nothing else in the process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(FIRST) };
    // Not inherited by anything vblkd might start.
    // SAFETY: fcntl on our own fd with integer arguments.
    unsafe { libc::fcntl(FIRST, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Some(listener))
}
