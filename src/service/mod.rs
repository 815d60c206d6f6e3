//! The service around the data path: the serving loop, and how a daemon is run, watched and
//! changed from outside.
//!
//! [`daemon`] listens, serves one frontend at a time and drains; [`status`] is the daemon's
//! status as data, which the [`control`] socket answers with and [`metrics`] exports;
//! [`notify`] and [`activation`] are systemd's readiness and socket-activation protocols.

pub mod activation;
pub mod control;
pub mod daemon;
pub mod metrics;
pub mod notify;
pub mod status;
