//! ATA over Ethernet (AoE r11): the protocol pieces of a userspace initiator and target, free
//! of any vhost-user or virtio concern.
//!
//! [`frame`] encodes and parses AoE frames, [`socket`] is the raw AF_PACKET socket
//! (with [`ring`], its memory-mapped receive ring), [`initiator`] the initiator's protocol
//! state without I/O (requests into frames, retransmission, deadlines), which uses
//! [`flow`] (the congestion window and RTT estimate) and [`gather`] (when to let replies
//! gather instead of waking for each); [`discover`] finds a target. vblkd's AoE engine is glue
//! between an [`initiator::Initiator`], a socket and timers (`vblkd::engine::AoeEngine`).
//! [`target`] is the other side's protocol state without I/O (what to answer, which disk I/O
//! to do), which vblkd's `aoe-export` drives with the same socket and ring and the disk
//! engines of `serve`. See vblkd's docs/aoe.md.

use std::io;

pub mod discover;
pub mod flow;
pub mod frame;
pub mod gather;
pub mod initiator;
pub mod ring;
pub mod socket;
pub mod target;

#[derive(Debug, thiserror::Error)]
pub enum AoeError {
    #[error("'{0}' is not an AoE disk; write aoe://IFACE/e<shelf>.<slot>, e.g. aoe://eth0/e1.1")]
    BadAddress(String),
    #[error("cannot use {iface} for AoE: {source}{}", hint(.source))]
    Socket { iface: String, source: io::Error },
    #[error("no AoE target e{shelf}.{slot} answered on {iface}; check that it is exported there (e.g. vblade {shelf} {slot} IFACE FILE) and that {iface} is up and on the same network")]
    NoTarget { iface: String, shelf: u16, slot: u8 },
    #[error(
        "AoE target e{shelf}.{slot} on {iface} answered the config query but not IDENTIFY DEVICE"
    )]
    NoIdentity { iface: String, shelf: u16, slot: u8 },
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (raw sockets need root or CAP_NET_RAW)",
        _ => "",
    }
}

/// `aoe://IFACE/e<shelf>.<slot>` → (interface, shelf, slot).
pub fn parse_address(s: &str) -> Result<(String, u16, u8), AoeError> {
    let bad = || AoeError::BadAddress(s.to_owned());
    let rest = s.strip_prefix("aoe://").ok_or_else(bad)?;
    let (iface, target) = rest.split_once('/').ok_or_else(bad)?;
    let (shelf, slot) = parse_target_name(target).ok_or_else(bad)?;
    if iface.is_empty() {
        return Err(bad());
    }
    Ok((iface.to_owned(), shelf, slot))
}

/// `e<shelf>.<slot>`, as the Linux driver names a target, → (shelf, slot); none for the
/// broadcast shelf (0xffff) or slot (0xff), which are not a target.
pub fn parse_target_name(s: &str) -> Option<(u16, u8)> {
    let (shelf, slot) = s.strip_prefix('e')?.split_once('.')?;
    let (shelf, slot): (u16, u8) = (shelf.parse().ok()?, slot.parse().ok()?);
    (shelf != u16::MAX && slot != u8::MAX).then_some((shelf, slot))
}

/// How many cases the property tests run: `PROPTEST_CASES`, 5000 by default.
#[cfg(test)]
fn proptest_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_the_linux_driver_names_them() {
        assert_eq!(
            parse_address("aoe://eth0/e1.1").unwrap(),
            ("eth0".into(), 1, 1)
        );
        assert_eq!(
            parse_address("aoe://vb/e65534.254").unwrap(),
            ("vb".into(), 65534, 254)
        );
        for bad in [
            "aoe://eth0/1.1",
            "aoe:///e1.1",
            "eth0/e1.1",
            "aoe://eth0/e1",
            "aoe://eth0/e1.256",
            "aoe://eth0/e65535.1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
