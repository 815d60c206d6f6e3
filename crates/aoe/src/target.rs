//! A target's protocol state, without any I/O: what to answer to each frame an initiator
//! sends, and which disk I/O to do first.
//!
//! An [`Export`] is one `shelf.slot` on one interface. [`Export::handle`] takes a received
//! frame and says what to do: nothing (it is not for us), send a reply that needs no disk
//! (config queries, MAC masks, reservations, IDENTIFY, errors), or do a read, a write or a
//! flush and then send the reply header [`Export::complete`] makes. It never makes a system
//! call, so every rule below is tested with synthetic frames; the event loop that drives it
//! (vblkd's `aoe-export`, a raw socket and the disk's engine in one epoll set) is glue.
//!
//! The rules are those an initiator expects from vblade (Linux's `aoe` driver and vblkd's
//! own initiator rely on them): config strings with read, test, prefix, set and force-set;
//! a MAC mask list that hides the target from every other host; a reserve list outside of
//! which only IDENTIFY is answered (AoE error 6); READ/WRITE SECTORS (EXT) in their DMA and
//! PIO forms, FLUSH CACHE (EXT), IDENTIFY DEVICE with the LBA48 capacity; ATA errors in the
//! status and error registers (IDNF past the end, ABRT for what is refused), AoE errors for
//! bad arguments and unknown commands. Where vblade trusts a length from the wire (the
//! number of mask directives, of reserved MACs), this checks it against the frame.
//!
//! A frame may reach us twice (a switch or a relay duplicates it). Both initiators give a
//! retransmission a fresh tag, so a second frame with a tag seen from the same host is such a
//! copy: while its command is in progress the copy is dropped, and once a write or a flush
//! is done the copy gets the reply again from a small cache instead of being done twice (a
//! late copy of a write must not land after a later write to the same sectors). Reads are
//! simply done again. The cache holds a few windows' worth of commands, far fewer than the
//! initiators' tags take to come round again (2^15 commands for `aoe`, 2^24 for vblkd), and
//! an entry is used only if the copy asks for the same command, sectors and count.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use crate::frame::{
    self, AtaArg, ConfigArg, Frame, Header, Mac, AFLAG_EXTENDED, ATA_FLUSH_CACHE, ATA_HEADER_LEN,
    ATA_IDENTIFY, ATA_READ_EXT, ATA_STATUS_ERR, ATA_WRITE_EXT, BROADCAST, CMD_ATA, CMD_CONFIG,
    CONFIG_HEADER_LEN, FLAG_ERROR, FLAG_RESPONSE, HEADER_LEN, SECTOR,
};

pub const CMD_MAC_MASK: u8 = 2;
pub const CMD_RESERVE: u8 = 3;

/// AoE error codes (the header's error byte, with the E flag).
pub const ERROR_UNRECOGNISED: u8 = 1;
pub const ERROR_BAD_ARGUMENT: u8 = 2;
pub const ERROR_CONFIG_STRING: u8 = 4;
pub const ERROR_RESERVED: u8 = 6;

/// ATA status: ready; the error register means something.
pub const ATA_STATUS_DRDY: u8 = 0x40;
/// ATA error register: command aborted; sector not found (an LBA past the end).
pub const ATA_ERROR_ABRT: u8 = 0x04;
pub const ATA_ERROR_IDNF: u8 = 0x10;

/// The commands that move data, each with whether it writes and whether it is LBA48.
const ATA_READ: u8 = 0x20;
const ATA_READ_DMA: u8 = 0xC8;
const ATA_READ_DMA_EXT: u8 = 0x25;
const ATA_WRITE: u8 = 0x30;
const ATA_WRITE_DMA: u8 = 0xCA;
const ATA_WRITE_DMA_EXT: u8 = 0x35;
const ATA_FLUSH_CACHE_EXT: u8 = 0xEA;

/// Longest config string (AoE r11).
pub const MAX_CONFIG: usize = 1024;
/// Most entries of the MAC mask list (as vblade).
pub const MAX_MASKS: usize = 32;

/// Config query subcommands (the low nibble of byte 29).
const CONFIG_READ: u8 = 0;
const CONFIG_TEST: u8 = 1;
const CONFIG_PREFIX: u8 = 2;
const CONFIG_SET: u8 = 3;
const CONFIG_FORCE_SET: u8 = 4;

/// The firmware version the config reply carries; vblade reports 0x4000 + its version.
pub const FIRMWARE: u16 = 0x4001;

/// The largest LBA28 capacity, which IDENTIFY reports for anything larger.
const LBA28_MAX: u64 = 0x0FFF_FFFF;

/// What an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    pub shelf: u16,
    pub slot: u8,
    /// The interface's MAC address: the source of every reply.
    pub mac: Mac,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    pub read_only: bool,
    /// Commands the target holds at once, as told to initiators.
    pub buffer_count: u16,
    /// Sectors per ATA frame: what the interface's MTU allows.
    pub max_sectors: u8,
    /// IDENTIFY's serial number (20 characters) and model (40).
    pub serial: String,
    pub model: String,
}

/// What to do with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Not for this export (another target, a reply, a masked host): say nothing.
    Ignore,
    /// For this export but not well-formed: say nothing, and let the log say why (rate-limited).
    Malformed(&'static str),
    /// A copy of a command in progress: say nothing.
    Duplicate,
    /// Send this frame; no disk I/O is needed.
    Reply(Vec<u8>),
    /// Do this I/O, then send the header [`Export::complete`] makes of `pending` (and the data
    /// read, after it).
    Io { op: Op<'a>, pending: Pending },
}

/// The disk I/O a command needs. Offsets and lengths are in bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Read { offset: u64, len: usize },
    Write { offset: u64, data: &'a [u8] },
    Flush,
}

/// A command being done: what its reply and its duplicates need.
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    reply: [u8; ATA_HEADER_LEN],
    key: (Mac, u32),
    /// The command, LBA and count, which a copy must match to be answered from the cache.
    request: (u8, u64, u8),
    /// Writes and flushes are answered from the cache when repeated; reads are done again.
    cache: bool,
}

/// What the target knows of a command, by host and tag.
#[derive(Debug)]
enum Command {
    InProgress,
    /// Done; a copy that matches `request` gets `reply` again.
    Answered {
        request: (u8, u64, u8),
        reply: [u8; ATA_HEADER_LEN],
    },
}

/// One `shelf.slot`'s protocol state.
#[derive(Debug)]
pub struct Export {
    config: ExportConfig,
    config_string: Vec<u8>,
    masks: Vec<Mac>,
    reserved: Vec<Mac>,
    /// Commands in progress, and those answered whose copies would be answered again. One
    /// map: a write costs four lookups, not six (SipHash was 3.6 % of a 4 KiB write).
    commands: HashMap<(Mac, u32), Command>,
    /// The keys of answered commands, oldest first (a key may be here twice, or be in
    /// progress again: a tag the initiator reused).
    answered_order: VecDeque<(Mac, u32)>,
    /// Largest frame we may send (the interface's MTU plus the Ethernet header).
    max_frame: usize,
}

/// The `i`th 16-bit word of `value`, least significant first.
fn word_of(value: u64, i: usize) -> u16 {
    value.to_le_bytes()[2 * i..2 * i + 2]
        .try_into()
        .map(u16::from_le_bytes)
        .expect("two bytes")
}

impl Export {
    pub fn new(config: ExportConfig) -> Self {
        let max_frame = 14 + ATA_HEADER_LEN + usize::from(config.max_sectors) * SECTOR;
        Export {
            config,
            config_string: Vec::new(),
            masks: Vec::new(),
            reserved: Vec::new(),
            commands: HashMap::new(),
            answered_order: VecDeque::new(),
            max_frame,
        }
    }

    pub fn config(&self) -> &ExportConfig {
        &self.config
    }

    /// The disk grew (an online resize): IDENTIFY reports `sectors` from now on.
    pub fn set_sectors(&mut self, sectors: u64) {
        self.config.sectors = sectors;
    }

    /// Commands done but whose copies would still be answered from the cache: a few windows.
    fn answered_capacity(&self) -> usize {
        usize::from(self.config.buffer_count).max(16) * 4
    }

    /// A broadcast config reply, which vblade sends at start so that initiators listening
    /// (Linux's `aoe`) find the target without asking.
    pub fn announcement(&self) -> Vec<u8> {
        let header = Header {
            dst: BROADCAST,
            src: self.config.mac,
            flags: FLAG_RESPONSE,
            error: 0,
            shelf: self.config.shelf,
            slot: self.config.slot,
            command: CMD_CONFIG,
            tag: 0,
        };
        self.config_reply(&header, CONFIG_READ)
    }

    /// What to do with `bytes`, a frame received on the export's interface.
    pub fn handle<'a>(&mut self, bytes: &'a [u8]) -> Action<'a> {
        let parsed = match frame::parse(bytes) {
            Ok(parsed) => parsed,
            Err(frame::FrameError::NotAoe(_)) => return Action::Ignore,
            Err(frame::FrameError::Truncated { .. }) => {
                return self.unless_foreign(bytes, "truncated frame")
            }
            Err(frame::FrameError::Version(_)) => {
                return self.unless_foreign(bytes, "unsupported AoE version")
            }
        };
        let header = *parsed.header();
        if header.flags & FLAG_RESPONSE != 0 || !self.addressed(&header) {
            return Action::Ignore;
        }
        if !self.masks.is_empty() && !self.masks.contains(&header.src) {
            return Action::Ignore;
        }
        match parsed {
            Frame::Ata { arg, data, .. } => {
                // A broadcast must never write every disk on the wire.
                if header.shelf != self.config.shelf || header.slot != self.config.slot {
                    return Action::Ignore;
                }
                self.ata(&header, &arg, data)
            }
            Frame::Config { arg, .. } => self.config_query(&header, &arg),
            Frame::Other(_) => match header.command {
                CMD_MAC_MASK => self.mac_mask(&header, bytes),
                CMD_RESERVE => self.reserve(&header, bytes),
                _ => Action::Reply(self.error_reply(&header, bytes, ERROR_UNRECOGNISED)),
            },
        }
    }

    /// A frame that could not be parsed is ours to complain about only if its header says it
    /// is for us.
    fn unless_foreign(&self, bytes: &[u8], why: &'static str) -> Action<'static> {
        let for_us = frame::header_of(bytes)
            .is_some_and(|h| h.flags & FLAG_RESPONSE == 0 && self.addressed(&h));
        if for_us {
            Action::Malformed(why)
        } else {
            Action::Ignore
        }
    }

    /// Whether the frame is sent to us: our MAC or broadcast, our shelf.slot or the
    /// broadcast shelf and slot.
    fn addressed(&self, h: &Header) -> bool {
        (h.dst == self.config.mac || h.dst == BROADCAST)
            && (h.shelf == self.config.shelf || h.shelf == u16::MAX)
            && (h.slot == self.config.slot || h.slot == u8::MAX)
    }

    /// The reply's common header: the request's, turned round.
    fn reply_header(&self, h: &Header) -> Header {
        Header {
            dst: h.src,
            src: self.config.mac,
            flags: FLAG_RESPONSE,
            error: 0,
            shelf: self.config.shelf,
            slot: self.config.slot,
            command: h.command,
            tag: h.tag,
        }
    }

    /// The request's header (or as much of its argument as `bytes` has, for ATA) sent back
    /// with the E flag and `error`.
    fn error_reply(&self, h: &Header, bytes: &[u8], error: u8) -> Vec<u8> {
        let keep = if h.command == CMD_ATA {
            ATA_HEADER_LEN
        } else {
            HEADER_LEN
        };
        let mut out = bytes[..keep.min(bytes.len())].to_vec();
        out.resize(keep, 0);
        let mut reply = self.reply_header(h);
        reply.flags |= FLAG_ERROR;
        reply.error = error;
        frame::put_header(&mut out, &reply);
        out
    }

    fn ata<'a>(&mut self, h: &Header, arg: &AtaArg, data: &'a [u8]) -> Action<'a> {
        let mut request = [0u8; ATA_HEADER_LEN];
        frame::encode_ata(&mut request, h, arg);
        let aoe_error = |error: u8| Action::Reply(self.error_reply(h, &request, error));
        // The request's argument sent back with the status and error registers set.
        let ata_reply = |status: u8, error: u8| {
            let mut head = [0u8; ATA_HEADER_LEN];
            let arg = AtaArg {
                err_feature: error,
                cmd_status: status,
                ..*arg
            };
            frame::encode_ata(&mut head, &self.reply_header(h), &arg);
            head
        };
        let ata_error =
            |error: u8| Action::Reply(ata_reply(ATA_STATUS_DRDY | ATA_STATUS_ERR, error).to_vec());
        let command = arg.cmd_status;
        if command == ATA_IDENTIFY {
            if arg.sector_count != 1 {
                return aoe_error(ERROR_BAD_ARGUMENT);
            }
            let mut out = ata_reply(ATA_STATUS_DRDY, 0).to_vec();
            out.extend_from_slice(&self.identify());
            return Action::Reply(out);
        }
        if !self.reserved.is_empty() && !self.reserved.contains(&h.src) {
            return aoe_error(ERROR_RESERVED);
        }
        let key = (h.src, h.tag);
        let request = (command, arg.lba, arg.sector_count);
        match self.commands.get(&key) {
            Some(Command::InProgress) => return Action::Duplicate,
            Some(Command::Answered {
                request: done,
                reply,
            }) if *done == request => return Action::Reply(reply.to_vec()),
            Some(Command::Answered { .. }) | None => {}
        }
        let (write, lba48) = match command {
            ATA_READ | ATA_READ_DMA => (false, false),
            ATA_READ_EXT | ATA_READ_DMA_EXT => (false, true),
            ATA_WRITE | ATA_WRITE_DMA => (true, false),
            ATA_WRITE_EXT | ATA_WRITE_DMA_EXT => (true, true),
            ATA_FLUSH_CACHE | ATA_FLUSH_CACHE_EXT if self.config.read_only => {
                // Nothing was written through this export: nothing to make durable.
                return Action::Reply(ata_reply(ATA_STATUS_DRDY, 0).to_vec());
            }
            ATA_FLUSH_CACHE | ATA_FLUSH_CACHE_EXT => {
                let reply = ata_reply(ATA_STATUS_DRDY, 0);
                return self.start(Op::Flush, reply, key, request, true);
            }
            _ => return ata_error(ATA_ERROR_ABRT),
        };
        let count = arg.sector_count;
        let len = usize::from(count) * SECTOR;
        if count > self.config.max_sectors || (write && data.len() < len) {
            return aoe_error(ERROR_BAD_ARGUMENT);
        }
        // Without the E flag only 28 bits of the LBA count (the rest are the device register).
        let lba = if lba48 && arg.aflags & AFLAG_EXTENDED != 0 {
            arg.lba
        } else {
            arg.lba & LBA28_MAX
        };
        if lba
            .checked_add(u64::from(count))
            .map_or(true, |end| end > self.config.sectors)
        {
            return ata_error(ATA_ERROR_IDNF);
        }
        if write && self.config.read_only {
            return ata_error(ATA_ERROR_ABRT);
        }
        let reply = ata_reply(ATA_STATUS_DRDY, 0);
        if count == 0 {
            return Action::Reply(reply.to_vec());
        }
        let offset = lba * SECTOR as u64;
        let op = if write {
            Op::Write {
                offset,
                data: &data[..len],
            }
        } else {
            Op::Read { offset, len }
        };
        self.start(op, reply, key, request, write)
    }

    fn start<'a>(
        &mut self,
        op: Op<'a>,
        reply: [u8; ATA_HEADER_LEN],
        key: (Mac, u32),
        request: (u8, u64, u8),
        cache: bool,
    ) -> Action<'a> {
        self.commands.insert(key, Command::InProgress);
        Action::Io {
            op,
            pending: Pending {
                reply,
                key,
                request,
                cache,
            },
        }
    }

    /// The I/O of `pending` is done (`ok` if it moved every byte): its reply header, to be
    /// sent (with the data read, for a read that succeeded).
    pub fn complete(&mut self, pending: Pending, ok: bool) -> [u8; ATA_HEADER_LEN] {
        let mut reply = pending.reply;
        if !ok {
            reply[25] = ATA_ERROR_ABRT;
            reply[27] = ATA_STATUS_DRDY | ATA_STATUS_ERR;
        }
        if !pending.cache {
            self.commands.remove(&pending.key);
            return reply;
        }
        if self.answered_order.len() >= self.answered_capacity() {
            if let Some(oldest) = self.answered_order.pop_front() {
                // Only an answer is forgotten: a command in progress under a reused tag stays.
                if let Entry::Occupied(entry) = self.commands.entry(oldest) {
                    if matches!(entry.get(), Command::Answered { .. }) {
                        entry.remove();
                    }
                }
            }
        }
        let answered = Command::Answered {
            request: pending.request,
            reply,
        };
        // Every answer's key is in the order at least once, so the answers stay bounded.
        if !matches!(
            self.commands.insert(pending.key, answered),
            Some(Command::Answered { .. })
        ) {
            self.answered_order.push_back(pending.key);
        }
        reply
    }

    /// The command of `pending` will not be done after all (the target had no buffer for it):
    /// forget it, so that the initiator's retransmission is done.
    pub fn abandon(&mut self, pending: Pending) {
        self.commands.remove(&pending.key);
    }

    /// The 512 bytes of IDENTIFY DEVICE: little-endian words, strings two characters a word
    /// with the first in the high byte.
    pub fn identify(&self) -> [u8; SECTOR] {
        let mut id = [0u8; SECTOR];
        let mut put = |word: usize, value: u16| {
            id[2 * word..2 * word + 2].copy_from_slice(&value.to_le_bytes());
        };
        let sectors = self.config.sectors;
        // A fixed, non-removable ATA device.
        put(0, 0x0040);
        // The CHS geometry nobody uses but some tools print: 16 heads, 63 sectors a track.
        let cylinders = (sectors / (16 * 63)).min(16383);
        put(1, u16::try_from(cylinders).unwrap_or(16383));
        put(3, 16);
        put(6, 63);
        put(49, 1 << 9); // LBA supported
        let lba28 = sectors.min(LBA28_MAX);
        put(60, word_of(lba28, 0));
        put(61, word_of(lba28, 1));
        // Word 83 (supported) and 86 (enabled): bit 14 set and 15 clear say the word is valid,
        // bit 13 FLUSH CACHE EXT, 12 FLUSH CACHE, 10 LBA48. Words 84/87: valid, nothing more.
        put(83, 0x7400);
        put(86, 0x3400);
        put(84, 0x4000);
        put(87, 0x4000);
        for i in 0..4 {
            put(100 + i, word_of(sectors, i));
        }
        let mut put_string = |first: usize, words: usize, s: &str| {
            let mut bytes: Vec<u8> = s
                .bytes()
                .filter(|b| b.is_ascii_graphic() || *b == b' ')
                .take(2 * words)
                .collect();
            bytes.resize(2 * words, b' ');
            for (i, pair) in bytes.chunks(2).enumerate() {
                put(first + i, u16::from_be_bytes([pair[0], pair[1]]));
            }
        };
        put_string(10, 10, &self.config.serial);
        put_string(23, 4, env!("CARGO_PKG_VERSION"));
        put_string(27, 20, &self.config.model);
        id
    }

    fn config_reply(&self, reply: &Header, ccmd: u8) -> Vec<u8> {
        let mut head = [0u8; CONFIG_HEADER_LEN];
        frame::encode_config(
            &mut head,
            reply,
            &ConfigArg {
                buffer_count: self.config.buffer_count,
                firmware: FIRMWARE,
                max_sectors: self.config.max_sectors,
                aoe_version: frame::VERSION,
                ccmd,
                config: &self.config_string,
            },
        );
        let mut out = head.to_vec();
        out.extend_from_slice(&self.config_string);
        out
    }

    /// Config query (command 1); the frame's parser made sure the string is all there.
    fn config_query(&mut self, h: &Header, arg: &ConfigArg) -> Action<'static> {
        let string = arg.config;
        let mut reply = self.reply_header(h);
        match arg.ccmd {
            CONFIG_READ => {}
            _ if string.len() > MAX_CONFIG => {
                return Action::Malformed("config string longer than allowed");
            }
            CONFIG_TEST if string != self.config_string.as_slice() => return Action::Ignore,
            CONFIG_PREFIX if !self.config_string.starts_with(string) => return Action::Ignore,
            CONFIG_TEST | CONFIG_PREFIX => {}
            CONFIG_SET if !self.config_string.is_empty() && string != self.config_string => {
                reply.flags |= FLAG_ERROR;
                reply.error = ERROR_CONFIG_STRING;
            }
            CONFIG_SET | CONFIG_FORCE_SET => self.config_string = string.to_vec(),
            _ => {
                reply.flags |= FLAG_ERROR;
                reply.error = ERROR_BAD_ARGUMENT;
            }
        }
        Action::Reply(self.config_reply(&reply, arg.ccmd))
    }

    /// MAC mask list (command 2): 24 reserved, 25 command (0 read, 1 edit), 26 error
    /// (1 unspecified, 2 bad directive, 3 list full), 27 directive count; then directives of
    /// 8 bytes: reserved, command (0 none, 1 add, 2 delete), MAC.
    fn mac_mask(&mut self, h: &Header, bytes: &[u8]) -> Action<'static> {
        const HEADER: usize = 28;
        const DIRECTIVE: usize = 8;
        const ERROR_BAD_DIRECTIVE: u8 = 2;
        const ERROR_FULL: u8 = 3;
        if bytes.len() < HEADER {
            return Action::Malformed("truncated MAC mask frame");
        }
        let (mcmd, count) = (bytes[25], usize::from(bytes[27]));
        let mut mask_error = 0;
        let mut failed_at = 0;
        match mcmd {
            0 => {}
            1 => {
                let Some(directives) = bytes.get(HEADER..HEADER + count * DIRECTIVE) else {
                    return Action::Reply(self.error_reply(h, bytes, ERROR_BAD_ARGUMENT));
                };
                for (i, d) in directives.chunks(DIRECTIVE).enumerate() {
                    let mac: Mac = d[2..8].try_into().expect("8-byte chunks");
                    match d[1] {
                        0 => {}
                        1 if self.masks.contains(&mac) => {}
                        1 if self.masks.len() < MAX_MASKS => self.masks.push(mac),
                        1 => (mask_error, failed_at) = (ERROR_FULL, i),
                        2 => self.masks.retain(|m| *m != mac),
                        _ => (mask_error, failed_at) = (ERROR_BAD_DIRECTIVE, i),
                    }
                    if mask_error != 0 {
                        break;
                    }
                }
            }
            _ => return Action::Reply(self.error_reply(h, bytes, ERROR_BAD_ARGUMENT)),
        }
        let mut out = vec![0u8; HEADER];
        frame::put_header(&mut out, &self.reply_header(h));
        out[25] = mcmd;
        out[26] = mask_error;
        if mask_error != 0 {
            // Which directive failed; the list is not sent.
            out[27] = u8::try_from(failed_at).expect("at most 255 directives");
            return Action::Reply(out);
        }
        out[27] = u8::try_from(self.masks.len()).expect("at most MAX_MASKS masks");
        for mac in &self.masks {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(mac);
        }
        Action::Reply(out)
    }

    /// Reserve/release (command 3): 24 command (0 read, 1 set, 2 force set), 25 MAC count,
    /// then the MACs. Setting needs the sender in the list (or an empty list); an empty list
    /// releases the target.
    fn reserve(&mut self, h: &Header, bytes: &[u8]) -> Action<'static> {
        const HEADER: usize = 26;
        if bytes.len() < HEADER {
            return Action::Malformed("truncated reserve/release frame");
        }
        let (rcmd, count) = (bytes[24], usize::from(bytes[25]));
        match rcmd {
            0 => {}
            1 | 2 => {
                if rcmd == 1 && !self.reserved.is_empty() && !self.reserved.contains(&h.src) {
                    return Action::Reply(self.error_reply(h, bytes, ERROR_RESERVED));
                }
                let list = bytes.get(HEADER..HEADER + count * 6);
                // The reply carries the list: it must fit in a frame.
                match list.filter(|_| HEADER + count * 6 <= self.max_frame.max(60)) {
                    Some(list) => {
                        self.reserved = list
                            .chunks(6)
                            .map(|m| m.try_into().expect("6-byte chunks"))
                            .collect();
                    }
                    None => return Action::Reply(self.error_reply(h, bytes, ERROR_BAD_ARGUMENT)),
                }
            }
            _ => return Action::Reply(self.error_reply(h, bytes, ERROR_BAD_ARGUMENT)),
        }
        let mut out = vec![0u8; HEADER];
        frame::put_header(&mut out, &self.reply_header(h));
        out[24] = rcmd;
        out[25] = u8::try_from(self.reserved.len()).expect("at most 255 MACs");
        for mac in &self.reserved {
            out.extend_from_slice(mac);
        }
        Action::Reply(out)
    }
}

#[cfg(test)]
mod tests;
