//! The integration suite: the real `vblkd` binary, driven by real peers — the `blkio`
//! crate's vhost-user client, a hand-made frontend that misbehaves on purpose, QEMU guests,
//! vblade across network namespaces, a throwaway Ceph cluster — one test binary over the
//! shared `vblkd-test-support` crate.
//!
//! Tests that need root, QEMU, vblade or Ceph are `#[ignore]`d with what they need: plain
//! `cargo test` runs the others anywhere and lists those it left out; `scripts/test` installs
//! what they need and runs every test (`--include-ignored`), and a test whose prerequisite is
//! missing there fails, saying what is missing.

extern crate vblkd_test_support as support;

mod aoe;
mod aoe_target;
mod bench_smoke;
mod blkio_client;
mod block_device;
mod cli;
mod control;
mod crash;
mod full_disk;
mod hostile_frontend;
mod hostile_guest;
mod limits;
mod migration;
mod qemu_guest;
mod rbd;
mod reconnect;
mod sandbox;
mod systemd;
