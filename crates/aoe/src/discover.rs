//! Finding a target: a config query broadcast to shelf.slot teaches us its MAC address, buffer
//! count and frame size; IDENTIFY DEVICE its capacity, serial number and flush support.

use std::io;
use std::time::{Duration, Instant};

use super::frame::{
    self, AtaArg, ConfigArg, Frame, Header, Identity, Mac, ATA_HEADER_LEN, ATA_IDENTIFY, BROADCAST,
    CMD_ATA, CMD_CONFIG, CONFIG_HEADER_LEN, FLAG_ERROR, FLAG_RESPONSE, SECTOR,
};
use super::socket::RawSocket;
use super::AoeError;

/// What discovery learned.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub mac: Mac,
    pub buffer_count: u16,
    /// Sectors per frame: the target's limit and our MTU's, whichever is smaller.
    pub sectors_per_frame: u8,
    pub identity: Identity,
}

/// How long to keep asking before giving up.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(250);

fn header(socket: &RawSocket, dst: Mac, shelf: u16, slot: u8, command: u8, tag: u32) -> Header {
    Header {
        dst,
        src: socket.mac,
        flags: 0,
        error: 0,
        shelf,
        slot,
        command,
        tag,
    }
}

/// Sends `frame` every RETRY until `accept` returns something or `timeout` passes.
fn ask<T>(
    socket: &RawSocket,
    frame: &[u8],
    timeout: Duration,
    mut accept: impl FnMut(Frame) -> Option<T>,
) -> io::Result<Option<T>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        socket.send(&[io::IoSlice::new(frame)])?;
        let retry_at = (Instant::now() + RETRY).min(deadline);
        loop {
            let now = Instant::now();
            if now >= retry_at || !socket.wait(retry_at - now)? {
                break;
            }
            while let Some(n) = socket.recv(&mut buf)? {
                if let Some(found) = frame::parse(&buf[..n]).ok().and_then(&mut accept) {
                    return Ok(Some(found));
                }
            }
        }
    }
    Ok(None)
}

pub fn discover(iface: &str, shelf: u16, slot: u8) -> Result<Discovered, AoeError> {
    let socket = RawSocket::open(iface).map_err(|source| AoeError::Socket {
        iface: iface.to_owned(),
        source,
    })?;
    let io_err = |source| AoeError::Socket {
        iface: iface.to_owned(),
        source,
    };
    let matches = |h: &Header| h.flags & FLAG_RESPONSE != 0 && h.shelf == shelf && h.slot == slot;

    let mut query = [0u8; CONFIG_HEADER_LEN];
    frame::encode_config(
        &mut query,
        &header(&socket, BROADCAST, shelf, slot, CMD_CONFIG, 0x7e57_0001),
        &ConfigArg {
            buffer_count: 0,
            firmware: 0,
            max_sectors: 0,
            aoe_version: 0,
            ccmd: 0,
            config: b"",
        },
    );
    let found = ask(&socket, &query, DISCOVERY_TIMEOUT, |f| match f {
        Frame::Config { header, arg } if matches(&header) && header.flags & FLAG_ERROR == 0 => {
            Some((header.src, arg.buffer_count, arg.max_sectors))
        }
        _ => None,
    })
    .map_err(io_err)?;
    let Some((mac, buffer_count, max_sectors)) = found else {
        return Err(AoeError::NoTarget {
            iface: iface.to_owned(),
            shelf,
            slot,
        });
    };

    let tag = 0x7e57_0002;
    let mut identify = [0u8; ATA_HEADER_LEN];
    frame::encode_ata(
        &mut identify,
        &header(&socket, mac, shelf, slot, CMD_ATA, tag),
        &AtaArg {
            sector_count: 1,
            cmd_status: ATA_IDENTIFY,
            ..AtaArg::default()
        },
    );
    let identity = ask(&socket, &identify, DISCOVERY_TIMEOUT, |f| match f {
        Frame::Ata { header, data, .. }
            if matches(&header) && header.tag == tag && header.src == mac =>
        {
            frame::parse_identify(data)
        }
        _ => None,
    })
    .map_err(io_err)?
    .ok_or_else(|| AoeError::NoIdentity {
        iface: iface.to_owned(),
        shelf,
        slot,
    })?;

    // 0 means the original limit of two sectors per frame.
    let target_max = if max_sectors == 0 { 2 } else { max_sectors };
    let mtu_max = socket.mtu.saturating_sub(ATA_HEADER_LEN) / SECTOR;
    let sectors_per_frame = u8::try_from(mtu_max)
        .map_or(target_max, |mtu_max| target_max.min(mtu_max))
        .max(1);
    Ok(Discovered {
        mac,
        buffer_count: buffer_count.max(1),
        sectors_per_frame,
        identity,
    })
}
