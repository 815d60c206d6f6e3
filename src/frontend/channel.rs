//! The frontend's channel for messages from the backend (`BACKEND_REQ`,
//! `SET_BACKEND_REQ_FD`): how vblkd tells the frontend that the disk's size changed.
//!
//! It outlives the connections (the daemon keeps one), holding the channel of the frontend
//! connected now, if that frontend gave one: QEMU does, cloud-hypervisor does not (its guests
//! see a new size after a restart).

use std::io;
use std::sync::Mutex;

use vhost::vhost_user::Backend;

#[derive(Default)]
pub struct BackendChannel {
    current: Mutex<Option<Backend>>,
}

impl BackendChannel {
    /// The frontend gave us its channel.
    pub fn connected(&self, backend: Backend) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(backend);
    }

    /// The frontend hung up.
    pub fn disconnected(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Tells the frontend that the config space changed
    /// (`VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`); it reads it again and passes the change on to
    /// the guest. Returns whether a frontend was told: without one, the next frontend reads
    /// the new config anyway. Waits for the frontend's acknowledgement, on the caller's thread.
    pub fn config_changed(&self) -> io::Result<bool> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(backend) => backend
                .config_change()
                .map(|_| true)
                .map_err(|e| io::Error::other(e.to_string())),
            None => Ok(false),
        }
    }
}
