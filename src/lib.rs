//! vblkd: a vhost-user-blk daemon.
//!
//! A request travels: avail ring → [`worker`] (parse with [`blk::request`], build an
//! [`engine::IoOp`] over guest memory) → [`engine`] (io_uring, Linux AIO or a thread pool,
//! chosen by the [`disk`] backend) → completion eventfd → [`worker`] (status byte, used ring,
//! one call-fd signal per batch). [`device`] is the vhost-user face of it all, [`daemon`] the
//! accept/serve/drain loop. See `docs/architecture.md` for the whole story.

pub mod activation;
pub mod aligned;
pub mod blk;
pub mod control;
pub mod daemon;
pub mod device;
pub mod disk;
pub mod engine;
pub mod histogram;
mod inflight;
mod iov;
pub mod metrics;
pub mod notify;
mod ratelimit;
pub mod sigbus;
pub mod size;
pub mod stats;
#[cfg(test)]
mod testing;
mod worker;

/// Guest memory as the vhost-user library maps it (no dirty-page bitmap).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
