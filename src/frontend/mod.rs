//! The vhost-user face of vblkd: what the frontend (QEMU, cloud-hypervisor, a libblkio
//! client) negotiates and sends, and the glue between `vhost-user-backend`'s per-queue
//! threads and the queue workers.
//!
//! [`BlockDevice`] is the backend the vhost-user library drives, one per connection: it
//! negotiates features, answers config-space reads and writes, maps the memory the frontend
//! sends (guarded by [`crate::util::sigbus`]), hands the in-flight tracking buffer to the
//! queues ([`crate::queue::inflight`]) and their events to the queue workers;
//! [`BackendChannel`] is the way back to the frontend; [`DeviceState`] what outlives a
//! connection. Nothing here does I/O: requests go to [`crate::queue`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::queue::controls::Controls;
use crate::queue::QueueStats;

mod channel;
mod device;

pub use channel::BackendChannel;
pub use device::BlockDevice;

/// The device's state that outlives a connection: a new [`BlockDevice`] is built for each
/// frontend (fresh engines, as on a device reset), and these carry on.
pub struct DeviceState {
    /// The queues' counters.
    pub queues: Vec<Arc<QueueStats>>,
    /// The guest's write cache (virtio's WCE), which the guest switches through the config
    /// space and every queue reads once per write.
    pub write_cache: Arc<AtomicBool>,
    /// The connected frontend's channel, to tell it of a resize.
    pub channel: BackendChannel,
    /// The operator's I/O limits and error policy, and whether the disk is paused.
    pub controls: Arc<Controls>,
}

impl DeviceState {
    /// The state of a device with `num_queues` queues whose write cache starts `write_cache`,
    /// under `controls` (made for as many queues).
    pub fn new(num_queues: u16, write_cache: bool, controls: Arc<Controls>) -> Self {
        DeviceState {
            queues: (0..num_queues).map(|_| Arc::default()).collect(),
            write_cache: Arc::new(AtomicBool::new(write_cache)),
            channel: BackendChannel::default(),
            controls,
        }
    }
}
