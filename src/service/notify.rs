//! Telling a supervisor how the daemon is doing: systemd's `sd_notify` protocol, both ends.
//!
//! Started with `NOTIFY_SOCKET` in its environment (a systemd `Type=notify` service, or a test
//! harness), the daemon sends `READY=1` once its socket accepts connections and `STOPPING=1`
//! when it begins to shut down. That is the one reliable readiness signal: the socket file
//! exists before `listen`, and a log line is for people. Without `NOTIFY_SOCKET` nothing is
//! sent.
//!
//! [`NotifySocket`] is the supervisor's end, for whatever starts vblkd and must know when it
//! can connect: the benchmark's matrix and the tests.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The variable naming the supervisor's datagram socket (a path, or `@name` for the abstract
/// namespace).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `READY=1`) to the supervisor named by `NOTIFY_SOCKET`, if any. A
/// supervisor that cannot be reached is logged, never fatal: serving matters more.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET).filter(|t| !t.is_empty()) else {
        return;
    };
    if let Err(e) = send(&target, state) {
        log::warn!("cannot tell the supervisor {state} through {target:?}: {e}");
    }
}

/// Makes the socket messages go out of, if there is a supervisor to send to: before the
/// sandbox goes on (see [`crate::sandbox`]), which keeps threads from making sockets.
pub fn prepare() {
    if std::env::var_os(NOTIFY_SOCKET).is_some_and(|t| !t.is_empty()) {
        if let Err(e) = sender() {
            log::warn!("cannot make a socket to notify the supervisor: {e}");
        }
    }
}

/// The socket every message is sent from, made with the first (at start-up, before the
/// sandbox takes socket(2) away from most threads).
fn sender() -> io::Result<&'static UnixDatagram> {
    static SOCKET: std::sync::OnceLock<UnixDatagram> = std::sync::OnceLock::new();
    if let Some(socket) = SOCKET.get() {
        return Ok(socket);
    }
    let socket = UnixDatagram::unbound()?;
    // A supervisor that does not read would otherwise block the sender once its queue is
    // full (ten datagrams by default): state messages are dropped rather than wait for it.
    socket.set_nonblocking(true)?;
    Ok(SOCKET.get_or_init(|| socket))
}

fn send(target: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = sender()?;
    match target.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), target)?;
        }
    }
    Ok(())
}

/// The supervisor's end: a datagram socket to name in the daemon's `NOTIFY_SOCKET`, removed
/// when dropped.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a socket at `path` (replacing a stale one).
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(NotifySocket {
            socket: UnixDatagram::bind(path)?,
            path: path.to_owned(),
        })
    }

    /// What to set `NOTIFY_SOCKET` to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `limit` for a message holding the line `state`. `gone` is asked every
    /// 100 ms whether the process has died, in which case no message will come: `Ok(false)`,
    /// as for the limit passing.
    pub fn wait_for(
        &self,
        state: &str,
        limit: Duration,
        mut gone: impl FnMut() -> bool,
    ) -> io::Result<bool> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || gone() {
                return Ok(false);
            }
            self.socket
                .set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]);
                    if message.lines().any(|line| line == state) {
                        return Ok(true);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_sent_to_the_socket_is_seen_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = NotifySocket::bind(&dir.path().join("notify.sock")).unwrap();
        send(supervisor.path().as_os_str(), "STATUS=starting\nREADY=1").unwrap();
        assert!(supervisor
            .wait_for("READY=1", Duration::from_secs(5), || false)
            .unwrap());
        send(supervisor.path().as_os_str(), "STATUS=READY=1").unwrap();
        assert!(!supervisor
            .wait_for("READY=1", Duration::from_millis(300), || false)
            .unwrap());
    }

    #[test]
    fn a_supervisor_that_does_not_read_never_blocks_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = NotifySocket::bind(&dir.path().join("notify.sock")).unwrap();
        // Its queue fills (ten datagrams by default); the sends after that fail at once.
        let refused = (0..1000)
            .map(|_| send(supervisor.path().as_os_str(), "STATUS=busy"))
            .filter(|r| {
                r.as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
            })
            .count();
        assert!(
            refused > 0,
            "every send was queued; the queue never filled?"
        );
    }

    #[test]
    fn a_dead_process_ends_the_wait_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = NotifySocket::bind(&dir.path().join("notify.sock")).unwrap();
        let mut asked = 0;
        let ready = supervisor.wait_for("READY=1", Duration::from_secs(60), || {
            asked += 1;
            true
        });
        assert!(!ready.unwrap());
        assert_eq!(asked, 1, "the wait went on after the process died");
    }
}
