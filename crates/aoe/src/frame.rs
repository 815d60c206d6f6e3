//! ATA over Ethernet (AoE r11) frames: encoding requests, parsing replies.
//!
//! Offsets are from the start of the Ethernet frame; multi-byte fields are big-endian except
//! the LBA, which is little-endian as in the ATA task file. Parsing never trusts the wire: a
//! frame too short for what its header claims is an error, never a panic or an out-of-bounds
//! read.
//!
//! ```text
//!  0 dst MAC   6 src MAC   12 ethertype 0x88A2   14 ver<<4|flags   15 error
//! 16 shelf     18 slot     19 command            20 tag
//! ATA (command 0):    24 aflags 25 err/feature 26 sector count 27 cmd/status 28..34 LBA  36 data
//! config (command 1): 24 buffer count 26 firmware 28 max sectors 29 ver<<4|ccmd 30 len 32 string
//! ```

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETHERTYPE: u16 = 0x88A2;
pub const VERSION: u8 = 1;

pub const HEADER_LEN: usize = 24;
pub const ATA_HEADER_LEN: usize = 36;
pub const CONFIG_HEADER_LEN: usize = 32;

pub const FLAG_RESPONSE: u8 = 0x08;
pub const FLAG_ERROR: u8 = 0x04;

pub const CMD_ATA: u8 = 0;
pub const CMD_CONFIG: u8 = 1;

pub const AFLAG_EXTENDED: u8 = 0x40;
pub const AFLAG_DEVICE: u8 = 0x10;
pub const AFLAG_WRITE: u8 = 0x01;

pub const ATA_READ_EXT: u8 = 0x24;
pub const ATA_WRITE_EXT: u8 = 0x34;
pub const ATA_FLUSH_CACHE: u8 = 0xE7;
pub const ATA_IDENTIFY: u8 = 0xEC;

/// ATA status bits that mean the command failed.
pub const ATA_STATUS_ERR: u8 = 0x01;
pub const ATA_STATUS_DF: u8 = 0x20;

/// Sectors are always 512 bytes on the wire.
pub const SECTOR: usize = 512;

/// The common AoE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dst: Mac,
    pub src: Mac,
    /// Low nibble of byte 14: `FLAG_RESPONSE`, `FLAG_ERROR`.
    pub flags: u8,
    pub error: u8,
    pub shelf: u16,
    pub slot: u8,
    pub command: u8,
    pub tag: u32,
}

/// The ATA argument of command 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AtaArg {
    pub aflags: u8,
    /// Error register in replies, feature in requests.
    pub err_feature: u8,
    pub sector_count: u8,
    /// Status register in replies, command in requests.
    pub cmd_status: u8,
    /// 48 bits.
    pub lba: u64,
}

/// The config argument of command 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigArg<'a> {
    pub buffer_count: u16,
    pub firmware: u16,
    /// Sectors per ATA frame the target accepts; 0 means 2 (the original AoE limit).
    pub max_sectors: u8,
    pub aoe_version: u8,
    pub ccmd: u8,
    pub config: &'a [u8],
}

/// A parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Ata {
        header: Header,
        arg: AtaArg,
        data: &'a [u8],
    },
    Config {
        header: Header,
        arg: ConfigArg<'a>,
    },
    /// A well-formed header with a command we do not use.
    Other(Header),
}

impl Frame<'_> {
    pub fn header(&self) -> &Header {
        match self {
            Frame::Ata { header, .. } | Frame::Config { header, .. } | Frame::Other(header) => {
                header
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is shorter than the {need} its header needs")]
    Truncated { len: usize, need: usize },
    #[error("ethertype {0:#06x} is not AoE")]
    NotAoe(u16),
    #[error("AoE version {0} is not 1")]
    Version(u8),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn need(frame: &[u8], need: usize) -> Result<(), FrameError> {
    if frame.len() < need {
        Err(FrameError::Truncated {
            len: frame.len(),
            need,
        })
    } else {
        Ok(())
    }
}

fn mac(b: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[..6]);
    m
}

/// The common header of `frame`, whatever its ethertype and version say: to tell who a frame
/// that does not parse was meant for. None if it is shorter than a header.
pub fn header_of(frame: &[u8]) -> Option<Header> {
    let h = frame.get(..HEADER_LEN)?;
    Some(Header {
        dst: mac(&h[0..]),
        src: mac(&h[6..]),
        flags: h[14] & 0x0f,
        error: h[15],
        shelf: be16(h, 16),
        slot: h[18],
        command: h[19],
        tag: u32::from_be_bytes([h[20], h[21], h[22], h[23]]),
    })
}

/// Parses one received Ethernet frame.
pub fn parse(frame: &[u8]) -> Result<Frame<'_>, FrameError> {
    need(frame, HEADER_LEN)?;
    let ethertype = be16(frame, 12);
    if ethertype != ETHERTYPE {
        return Err(FrameError::NotAoe(ethertype));
    }
    let version = frame[14] >> 4;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let header = header_of(frame).expect("checked to be long enough");
    match header.command {
        CMD_ATA => {
            need(frame, ATA_HEADER_LEN)?;
            let mut lba = [0u8; 8];
            lba[..6].copy_from_slice(&frame[28..34]);
            Ok(Frame::Ata {
                header,
                arg: AtaArg {
                    aflags: frame[24],
                    err_feature: frame[25],
                    sector_count: frame[26],
                    cmd_status: frame[27],
                    lba: u64::from_le_bytes(lba),
                },
                data: &frame[ATA_HEADER_LEN..],
            })
        }
        CMD_CONFIG => {
            need(frame, CONFIG_HEADER_LEN)?;
            let len = usize::from(be16(frame, 30));
            need(frame, CONFIG_HEADER_LEN + len)?;
            Ok(Frame::Config {
                header,
                arg: ConfigArg {
                    buffer_count: be16(frame, 24),
                    firmware: be16(frame, 26),
                    max_sectors: frame[28],
                    aoe_version: frame[29] >> 4,
                    ccmd: frame[29] & 0x0f,
                    config: &frame[CONFIG_HEADER_LEN..CONFIG_HEADER_LEN + len],
                },
            })
        }
        _ => Ok(Frame::Other(header)),
    }
}

/// Writes the common 24-byte header at the start of `buf`.
pub fn put_header(buf: &mut [u8], h: &Header) {
    buf[0..6].copy_from_slice(&h.dst);
    buf[6..12].copy_from_slice(&h.src);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[14] = (VERSION << 4) | (h.flags & 0x0f);
    buf[15] = h.error;
    buf[16..18].copy_from_slice(&h.shelf.to_be_bytes());
    buf[18] = h.slot;
    buf[19] = h.command;
    buf[20..24].copy_from_slice(&h.tag.to_be_bytes());
}

/// Writes the 36-byte header of an ATA frame; the caller sends the data (for writes) after it.
pub fn encode_ata(buf: &mut [u8; ATA_HEADER_LEN], h: &Header, a: &AtaArg) {
    put_header(buf, h);
    buf[24] = a.aflags;
    buf[25] = a.err_feature;
    buf[26] = a.sector_count;
    buf[27] = a.cmd_status;
    buf[28..34].copy_from_slice(&a.lba.to_le_bytes()[..6]);
    buf[34] = 0;
    buf[35] = 0;
}

/// Writes a config frame (a query when `h.flags` has no response bit).
///
/// # Panics
/// If `arg.config` is longer than 64 KiB (AoE allows 1 KiB).
pub fn encode_config(buf: &mut [u8; CONFIG_HEADER_LEN], h: &Header, arg: &ConfigArg) {
    put_header(buf, h);
    buf[24..26].copy_from_slice(&arg.buffer_count.to_be_bytes());
    buf[26..28].copy_from_slice(&arg.firmware.to_be_bytes());
    buf[28] = arg.max_sectors;
    buf[29] = (arg.aoe_version << 4) | (arg.ccmd & 0x0f);
    let config_len = u16::try_from(arg.config.len()).expect("AoE config strings are at most 1 KiB");
    buf[30..32].copy_from_slice(&config_len.to_be_bytes());
}

/// What an IDENTIFY DEVICE reply says about the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sectors: u64,
    pub lba48: bool,
    pub flush_cache: bool,
    pub serial: String,
}

/// Decodes the 512-byte IDENTIFY DEVICE data (little-endian 16-bit words).
pub fn parse_identify(data: &[u8]) -> Option<Identity> {
    if data.len() < SECTOR {
        return None;
    }
    let word = |i: usize| u16::from_le_bytes([data[2 * i], data[2 * i + 1]]);
    let lba48 = (word(83) | word(86)) & (1 << 10) != 0;
    let sectors = if lba48 {
        (0..4).fold(0u64, |acc, i| acc | (u64::from(word(100 + i)) << (16 * i)))
    } else {
        u64::from(word(60)) | (u64::from(word(61)) << 16)
    };
    // ATA strings hold two characters per word, the first in the high byte.
    let serial: String = (10..20)
        .flat_map(|i| word(i).to_be_bytes())
        .map(char::from)
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    Some(Identity {
        sectors,
        lba48,
        flush_cache: (word(83) | word(86)) & (1 << 12) != 0,
        serial: serial.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(command: u8, flags: u8) -> Header {
        Header {
            dst: [2, 0, 0, 0, 0, 1],
            src: [2, 0, 0, 0, 0, 2],
            flags,
            error: 0,
            shelf: 0x0102,
            slot: 7,
            command,
            tag: 0xdead_beef,
        }
    }

    #[test]
    fn ata_frame_round_trips_with_the_documented_layout() {
        let h = header(CMD_ATA, FLAG_RESPONSE);
        let a = AtaArg {
            aflags: AFLAG_EXTENDED | AFLAG_WRITE,
            err_feature: 0,
            sector_count: 17,
            cmd_status: ATA_WRITE_EXT,
            lba: 0x0000_1234_5678_9abc,
        };
        let mut buf = [0u8; ATA_HEADER_LEN];
        encode_ata(&mut buf, &h, &a);
        assert_eq!(&buf[12..16], &[0x88, 0xA2, 0x18, 0]);
        assert_eq!(&buf[16..24], &[0x01, 0x02, 7, 0, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&buf[24..28], &[0x41, 0, 17, 0x34]);
        assert_eq!(
            &buf[28..34],
            &[0xbc, 0x9a, 0x78, 0x56, 0x34, 0x12],
            "LBA is little-endian"
        );
        let mut frame = buf.to_vec();
        frame.extend_from_slice(&[0xaa; 1024]);
        match parse(&frame).unwrap() {
            Frame::Ata { header, arg, data } => {
                assert_eq!((header, arg), (h, a));
                assert_eq!(data.len(), 1024);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_frame_round_trips() {
        let h = header(CMD_CONFIG, FLAG_RESPONSE);
        let arg = ConfigArg {
            buffer_count: 16,
            firmware: 0x4019,
            max_sectors: 17,
            aoe_version: 1,
            ccmd: 0,
            config: b"",
        };
        let mut buf = [0u8; CONFIG_HEADER_LEN];
        encode_config(&mut buf, &h, &arg);
        let mut frame = buf.to_vec();
        frame[30..32].copy_from_slice(&3u16.to_be_bytes());
        frame.extend_from_slice(b"abc");
        match parse(&frame).unwrap() {
            Frame::Config { header, arg: got } => {
                assert_eq!(header, h);
                assert_eq!(
                    (
                        got.buffer_count,
                        got.max_sectors,
                        got.aoe_version,
                        got.config
                    ),
                    (16, 17, 1, &b"abc"[..])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors_not_panics() {
        let mut ata = [0u8; ATA_HEADER_LEN];
        encode_ata(
            &mut ata,
            &header(CMD_ATA, FLAG_RESPONSE),
            &AtaArg::default(),
        );
        for len in 0..ATA_HEADER_LEN {
            assert!(
                matches!(parse(&ata[..len]), Err(FrameError::Truncated { .. })),
                "len {len}"
            );
        }
        let mut cfg = [0u8; CONFIG_HEADER_LEN];
        encode_config(
            &mut cfg,
            &header(CMD_CONFIG, FLAG_RESPONSE),
            &ConfigArg {
                buffer_count: 1,
                firmware: 0,
                max_sectors: 0,
                aoe_version: 1,
                ccmd: 0,
                config: b"",
            },
        );
        // A config string length pointing past the end.
        let mut lying = cfg.to_vec();
        lying[30..32].copy_from_slice(&500u16.to_be_bytes());
        assert!(matches!(
            parse(&lying),
            Err(FrameError::Truncated { need: 532, .. })
        ));

        let mut wrong_type = ata;
        wrong_type[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(parse(&wrong_type), Err(FrameError::NotAoe(0x0800)));
        let mut wrong_version = ata;
        wrong_version[14] = 0x28;
        assert_eq!(parse(&wrong_version), Err(FrameError::Version(2)));

        // Pseudo-random garbage of every length: any result but a panic.
        let mut x = 0x1234_5678_u32;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if (12..15).contains(&i) {
                        [0x88, 0xA2, 0x10][i - 12]
                    } else {
                        x.to_le_bytes()[0]
                    }
                })
                .collect();
            let _ = parse(&junk);
        }
        let mut other = ata;
        other[19] = 3;
        assert!(matches!(parse(&other), Ok(Frame::Other(_))));
    }

    #[test]
    fn identify_reads_lba48_capacity_flush_and_serial() {
        fn put(id: &mut [u8; 512], w: usize, v: u16) {
            id[2 * w..2 * w + 2].copy_from_slice(&v.to_le_bytes());
        }
        let mut id = [0u8; 512];
        let mut set = |w: usize, v: u16| put(&mut id, w, v);
        set(83, 0x5400); // as vblade: LBA48 and FLUSH CACHE
        set(100, 0x8000);
        set(101, 0x0001); // 0x1_8000 sectors
        set(60, 0xffff);
        for (i, pair) in b"VB12 3456".chunks(2).enumerate() {
            let hi = pair[0];
            let lo = *pair.get(1).unwrap_or(&b' ');
            set(10 + i, u16::from_be_bytes([hi, lo]));
        }
        for w in 15..20 {
            set(w, 0x2020);
        }
        let got = parse_identify(&id).unwrap();
        assert_eq!(
            got,
            Identity {
                sectors: 0x1_8000,
                lba48: true,
                flush_cache: true,
                serial: "VB12 3456".into()
            }
        );

        // Without LBA48, words 60-61.
        put(&mut id, 83, 0);
        put(&mut id, 61, 0x0002);
        let got = parse_identify(&id).unwrap();
        assert_eq!(
            (got.sectors, got.lba48, got.flush_cache),
            (0x2_ffff, false, false)
        );
        assert!(parse_identify(&id[..100]).is_none());
    }

    /// The decoder against arbitrary frames (mostly AoE-shaped, some garbage) and mutations of
    /// valid ones: it must not panic, must not read past the frame, and must hand back what
    /// the frame says. `PROPTEST_CASES` cases (5000 by default); a long run:
    /// `PROPTEST_CASES=2000000 cargo test --release --lib aoe::frame`.
    mod property {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;

        /// Bytes that start like an AoE frame (ethertype and version right, or nearly) far
        /// more often than chance would have them.
        fn frame() -> impl Strategy<Value = Vec<u8>> {
            (
                vec(any::<u8>(), 0..1100),
                prop_oneof![Just(ETHERTYPE), any::<u16>()],
                prop_oneof![Just(VERSION << 4 | FLAG_RESPONSE), any::<u8>()],
                prop_oneof![Just(CMD_ATA), Just(CMD_CONFIG), any::<u8>()],
                any::<u16>(),
            )
                .prop_map(|(mut bytes, ethertype, version, command, config_len)| {
                    if bytes.len() >= CONFIG_HEADER_LEN {
                        bytes[12..14].copy_from_slice(&ethertype.to_be_bytes());
                        bytes[14] = version;
                        bytes[19] = command;
                        bytes[30..32].copy_from_slice(&(config_len % 1100).to_be_bytes());
                    }
                    bytes
                })
        }

        fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
            match parse(bytes) {
                Ok(Frame::Ata { header, data, .. }) => {
                    prop_assert_eq!(header.command, CMD_ATA);
                    prop_assert_eq!(data.len(), bytes.len() - ATA_HEADER_LEN);
                }
                Ok(Frame::Config { header, arg }) => {
                    prop_assert_eq!(header.command, CMD_CONFIG);
                    prop_assert_eq!(arg.config.len(), usize::from(be16(bytes, 30)));
                }
                Ok(Frame::Other(header)) => {
                    prop_assert!(header.command != CMD_ATA && header.command != CMD_CONFIG);
                }
                Err(FrameError::Truncated { len, need }) => {
                    prop_assert_eq!(len, bytes.len());
                    prop_assert!(need > len);
                }
                Err(FrameError::NotAoe(_) | FrameError::Version(_)) => {}
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases()))]

            #[test]
            fn any_frame_is_decoded_safely(bytes in frame()) {
                check(&bytes)?;
            }

            #[test]
            fn a_damaged_ata_reply_is_decoded_safely(
                tag in any::<u32>(),
                arg in (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), 0..1u64 << 48),
                data in vec(any::<u8>(), 0..1024),
                damage in vec((any::<usize>(), any::<u8>()), 0..6),
                cut in any::<usize>(),
            ) {
                let h = Header { tag, ..header(CMD_ATA, FLAG_RESPONSE) };
                let a = AtaArg {
                    aflags: arg.0,
                    err_feature: arg.1,
                    sector_count: arg.2,
                    cmd_status: arg.3,
                    lba: arg.4,
                };
                let mut head = [0u8; ATA_HEADER_LEN];
                encode_ata(&mut head, &h, &a);
                let mut bytes = head.to_vec();
                bytes.extend_from_slice(&data);
                // Undamaged, it decodes to what was encoded.
                prop_assert_eq!(
                    parse(&bytes),
                    Ok(Frame::Ata { header: h, arg: a, data: &data[..] })
                );
                for (at, value) in damage {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
                bytes.truncate(cut % (bytes.len() + 1));
                check(&bytes)?;
            }

            #[test]
            fn any_identify_data_is_decoded_safely(data in vec(any::<u8>(), 0..1100)) {
                let id = parse_identify(&data);
                prop_assert_eq!(id.is_some(), data.len() >= SECTOR);
                if let Some(id) = id {
                    prop_assert!(id.serial.len() <= 20);
                }
            }
        }
    }
}
