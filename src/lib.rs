//! vblkd: a vhost-user-blk daemon.
//!
//! A request travels: avail ring → [`queue`] (parse with [`blk::request`], build an
//! [`engine::IoOp`] over guest memory) → [`engine`] (io_uring, Linux AIO, a thread pool,
//! librbd or an AoE initiator, chosen by the [`disk`] backend) → completion fd → [`queue`]
//! (status byte, used ring, one call-fd signal per batch). [`frontend`] is the vhost-user face
//! of it all; [`service`] the accept/serve/drain loop and the control socket, metrics and
//! systemd protocols around it; [`export`] the other way round, disks served to ATA-over-Ethernet
//! initiators; [`commands`] what each subcommand of the `vblkd` program does.
//! See `docs/architecture.md` for the whole story.
//!
//! The modules are layers, and each uses only the ones below it:
//!
//! | layer | modules |
//! |---|---|
//! | subcommands | [`commands`] |
//! | AoE target | [`export`] (`vblkd aoe-export`: disks served to AoE initiators) |
//! | service | [`service`] |
//! | vhost-user frontend | [`frontend`] |
//! | queue workers | [`queue`] |
//! | device model, I/O, backends, the sandbox | [`blk`], [`engine`], [`disk`], [`sandbox`] |
//! | leaf utilities | [`util`] (and the `diskio` crate) |

pub mod blk;
pub mod commands;
pub mod disk;
pub mod engine;
pub mod export;
pub mod frontend;
pub mod queue;
pub mod sandbox;
pub mod service;
pub mod util;

/// Guest memory as the vhost-user library maps it, each region with the bitmap through which
/// writes are marked in the frontend's dirty-page log while it migrates the VM (and that costs
/// an atomic load per write otherwise).
pub type GuestMemory = vm_memory::GuestMemoryMmap<vhost_user_backend::bitmap::BitmapMmapRegion>;

/// A virtqueue as the vhost-user library hands it to the queue workers.
pub type Vring = vhost_user_backend::VringRwLock<vm_memory::GuestMemoryAtomic<GuestMemory>>;
