//! The virtio-blk device model: feature bits, configuration space and request parsing.
//! Independent of vhost-user and of how I/O is done.

pub mod config;
pub mod layout;
pub mod request;
