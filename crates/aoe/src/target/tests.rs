use super::*;
use crate::frame::{AFLAG_WRITE, CMD_ATA};

const US: Mac = [2, 0, 0, 0, 0, 1];
const HOST: Mac = [2, 0, 0, 0, 0, 2];
const OTHER_HOST: Mac = [2, 0, 0, 0, 0, 3];

fn export() -> Export {
    Export::new(ExportConfig {
        shelf: 3,
        slot: 7,
        mac: US,
        sectors: 1000,
        read_only: false,
        buffer_count: 16,
        max_sectors: 2,
        serial: "SERIAL-1".into(),
        model: "vblkd test".into(),
    })
}

fn header(command: u8, tag: u32) -> Header {
    Header {
        dst: US,
        src: HOST,
        flags: 0,
        error: 0,
        shelf: 3,
        slot: 7,
        command,
        tag,
    }
}

fn ata_frame(h: &Header, arg: AtaArg, data: &[u8]) -> Vec<u8> {
    let mut head = [0u8; ATA_HEADER_LEN];
    frame::encode_ata(&mut head, h, &arg);
    let mut out = head.to_vec();
    out.extend_from_slice(data);
    out
}

fn read(tag: u32, lba: u64, sectors: u8) -> Vec<u8> {
    let arg = AtaArg {
        aflags: AFLAG_EXTENDED,
        sector_count: sectors,
        cmd_status: ATA_READ_EXT,
        lba,
        ..AtaArg::default()
    };
    ata_frame(&header(CMD_ATA, tag), arg, &[])
}

fn write(tag: u32, lba: u64, data: &[u8]) -> Vec<u8> {
    let arg = AtaArg {
        aflags: AFLAG_EXTENDED | AFLAG_WRITE,
        sector_count: u8::try_from(data.len() / SECTOR).unwrap(),
        cmd_status: ATA_WRITE_EXT,
        lba,
        ..AtaArg::default()
    };
    ata_frame(&header(CMD_ATA, tag), arg, data)
}

fn config_frame(h: &Header, ccmd: u8, string: &[u8]) -> Vec<u8> {
    let mut head = [0u8; CONFIG_HEADER_LEN];
    frame::encode_config(
        &mut head,
        h,
        &ConfigArg {
            buffer_count: 0,
            firmware: 0,
            max_sectors: 0,
            aoe_version: 1,
            ccmd,
            config: string,
        },
    );
    let mut out = head.to_vec();
    out.extend_from_slice(string);
    out
}

/// The reply of a frame that needs no I/O, parsed.
fn reply(export: &mut Export, frame: &[u8]) -> Vec<u8> {
    match export.handle(frame) {
        Action::Reply(bytes) => bytes,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ata_reply_of(bytes: &[u8]) -> (Header, AtaArg, Vec<u8>) {
    match frame::parse(bytes).unwrap() {
        Frame::Ata { header, arg, data } => (header, arg, data.to_vec()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_read_becomes_io_and_its_reply_is_the_request_turned_round() {
    let mut e = export();
    let frame = read(0x0102_0304, 10, 2);
    let Action::Io { op, pending } = e.handle(&frame) else {
        panic!()
    };
    assert_eq!(
        op,
        Op::Read {
            offset: 5120,
            len: 1024
        }
    );
    let head = e.complete(pending, true);
    let (h, arg, _) = ata_reply_of(&head);
    assert_eq!(
        (h.dst, h.src, h.flags, h.tag, h.shelf, h.slot),
        (HOST, US, FLAG_RESPONSE, 0x0102_0304, 3, 7)
    );
    assert_eq!(
        (arg.cmd_status, arg.err_feature, arg.lba),
        (ATA_STATUS_DRDY, 0, 10)
    );

    // A failed I/O is an ATA error.
    let Action::Io { pending, .. } = e.handle(&read(5, 0, 1)) else {
        panic!()
    };
    let (_, arg, _) = ata_reply_of(&e.complete(pending, false));
    assert_eq!((arg.cmd_status, arg.err_feature), (0x41, ATA_ERROR_ABRT));
}

#[test]
fn writes_carry_their_data_and_lba28_commands_use_28_bits() {
    let mut e = export();
    let data = [0xabu8; 1024];
    let frame = write(1, 998, &data);
    let Action::Io { op, .. } = e.handle(&frame) else {
        panic!()
    };
    assert_eq!(
        op,
        Op::Write {
            offset: 998 * 512,
            data: &data[..]
        }
    );
    // WRITE DMA (LBA28): the top bits of the LBA field are the device register, not address.
    let arg = AtaArg {
        aflags: AFLAG_WRITE,
        sector_count: 1,
        cmd_status: 0xCA,
        lba: 0xE000_0005,
        ..AtaArg::default()
    };
    let frame = ata_frame(&header(CMD_ATA, 2), arg, &data[..512]);
    let Action::Io { op, .. } = e.handle(&frame) else {
        panic!()
    };
    assert!(matches!(op, Op::Write { offset: 2560, .. }));
    // READ SECTORS and READ DMA EXT.
    for (cmd, aflags) in [(0x20, 0), (0x25, AFLAG_EXTENDED), (0xC8, 0)] {
        let arg = AtaArg {
            aflags,
            sector_count: 1,
            cmd_status: cmd,
            lba: 4,
            ..AtaArg::default()
        };
        let frame = ata_frame(&header(CMD_ATA, 100 + u32::from(cmd)), arg, &[]);
        assert!(
            matches!(
                e.handle(&frame),
                Action::Io {
                    op: Op::Read {
                        offset: 2048,
                        len: 512
                    },
                    ..
                }
            ),
            "{cmd:#x}"
        );
    }
}

#[test]
fn bad_ata_commands_get_the_errors_vblade_gives() {
    let mut e = export();
    // Past the end: IDNF.
    let (_, arg, _) = ata_reply_of(&reply(&mut e, &read(1, 999, 2)));
    assert_eq!((arg.cmd_status, arg.err_feature), (0x41, ATA_ERROR_IDNF));
    let (_, arg, _) = ata_reply_of(&reply(&mut e, &read(2, u64::MAX >> 16, 1)));
    assert_eq!(arg.err_feature, ATA_ERROR_IDNF);
    // More sectors than a frame holds: AoE error 2.
    let (h, ..) = ata_reply_of(&reply(&mut e, &read(3, 0, 3)));
    assert_eq!(
        (h.flags, h.error),
        (FLAG_RESPONSE | FLAG_ERROR, ERROR_BAD_ARGUMENT)
    );
    // A write whose data is shorter than its count.
    let mut short = write(4, 0, &[1; 1024]);
    short.truncate(ATA_HEADER_LEN + 1000);
    let (h, ..) = ata_reply_of(&reply(&mut e, &short));
    assert_eq!(h.error, ERROR_BAD_ARGUMENT);
    // An ATA command we do not do: ABRT.
    let arg = AtaArg {
        cmd_status: 0xB0, // SMART
        ..AtaArg::default()
    };
    let (_, arg, _) = ata_reply_of(&reply(&mut e, &ata_frame(&header(CMD_ATA, 5), arg, &[])));
    assert_eq!((arg.cmd_status, arg.err_feature), (0x41, ATA_ERROR_ABRT));
    // An AoE command nobody defined: error 1.
    let unknown = ata_frame(&header(0x42, 6), AtaArg::default(), &[]);
    let bytes = reply(&mut e, &unknown);
    assert_eq!(
        (bytes[14], bytes[15]),
        (0x10 | FLAG_RESPONSE | FLAG_ERROR, ERROR_UNRECOGNISED)
    );
    // IDENTIFY with a count other than one.
    let arg = AtaArg {
        sector_count: 2,
        cmd_status: ATA_IDENTIFY,
        ..AtaArg::default()
    };
    let (h, ..) = ata_reply_of(&reply(&mut e, &ata_frame(&header(CMD_ATA, 7), arg, &[])));
    assert_eq!(h.error, ERROR_BAD_ARGUMENT);
}

#[test]
fn a_read_only_export_refuses_writes_and_has_nothing_to_flush() {
    let mut e = Export::new(ExportConfig {
        read_only: true,
        ..export().config().clone()
    });
    let (_, arg, _) = ata_reply_of(&reply(&mut e, &write(1, 0, &[0; 512])));
    assert_eq!((arg.cmd_status, arg.err_feature), (0x41, ATA_ERROR_ABRT));
    let flush = AtaArg {
        cmd_status: ATA_FLUSH_CACHE,
        ..AtaArg::default()
    };
    let (_, arg, _) = ata_reply_of(&reply(&mut e, &ata_frame(&header(CMD_ATA, 2), flush, &[])));
    assert_eq!(arg.cmd_status, ATA_STATUS_DRDY);
    assert!(matches!(e.handle(&read(3, 0, 1)), Action::Io { .. }));
}

#[test]
fn flushes_are_io_on_a_writable_export() {
    let mut e = export();
    for (tag, cmd) in [(1, ATA_FLUSH_CACHE), (2, 0xEA)] {
        let arg = AtaArg {
            cmd_status: cmd,
            ..AtaArg::default()
        };
        assert!(matches!(
            e.handle(&ata_frame(&header(CMD_ATA, tag), arg, &[])),
            Action::Io { op: Op::Flush, .. }
        ));
    }
}

#[test]
fn identify_reports_lba48_capacity_flush_and_the_strings() {
    let mut e = export();
    e.set_sectors(0x1_2345_6789);
    let arg = AtaArg {
        sector_count: 1,
        cmd_status: ATA_IDENTIFY,
        ..AtaArg::default()
    };
    let (h, arg, data) = ata_reply_of(&reply(&mut e, &ata_frame(&header(CMD_ATA, 9), arg, &[])));
    assert_eq!((h.flags, arg.cmd_status), (FLAG_RESPONSE, ATA_STATUS_DRDY));
    // The initiator's own decoder reads it back.
    let id = frame::parse_identify(&data).unwrap();
    assert_eq!(
        id,
        frame::Identity {
            sectors: 0x1_2345_6789,
            lba48: true,
            flush_cache: true,
            serial: "SERIAL-1".into()
        }
    );
    let word = |i: usize| u16::from_le_bytes([data[2 * i], data[2 * i + 1]]);
    // LBA28 capacity capped; model in words 27-46.
    assert_eq!((word(60), word(61)), (0xffff, 0x0fff));
    assert_eq!(word(27).to_be_bytes(), *b"vb");
    assert_eq!(word(46).to_be_bytes(), *b"  ");
    // IDENTIFY is answered even to a host outside the reserve list.
    let mut set = vec![0u8; 26];
    frame::put_header(&mut set, &header(CMD_RESERVE, 1));
    set[24] = 1;
    set[25] = 1;
    set.extend_from_slice(&OTHER_HOST);
    reply(&mut e, &set);
    let arg = AtaArg {
        sector_count: 1,
        cmd_status: ATA_IDENTIFY,
        ..AtaArg::default()
    };
    let (h, ..) = ata_reply_of(&reply(&mut e, &ata_frame(&header(CMD_ATA, 10), arg, &[])));
    assert_eq!(h.flags & FLAG_ERROR, 0);
}

#[test]
fn frames_for_others_are_ignored_and_broadcast_only_queries() {
    let mut e = export();
    let mut wrong_slot = read(1, 0, 1);
    wrong_slot[18] = 8;
    let mut wrong_shelf = read(2, 0, 1);
    wrong_shelf[16..18].copy_from_slice(&4u16.to_be_bytes());
    let mut wrong_mac = read(3, 0, 1);
    wrong_mac[5] = 9;
    let mut a_reply = read(4, 0, 1);
    a_reply[14] |= FLAG_RESPONSE;
    let mut broadcast_read = read(5, 0, 1);
    broadcast_read[..6].copy_from_slice(&BROADCAST);
    broadcast_read[16..19].copy_from_slice(&[0xff, 0xff, 0xff]);
    let mut not_aoe = read(6, 0, 1);
    not_aoe[12] = 8;
    for frame in [
        wrong_slot,
        wrong_shelf,
        wrong_mac,
        a_reply,
        broadcast_read,
        not_aoe,
    ] {
        assert_eq!(e.handle(&frame), Action::Ignore);
    }
    // A read sent to the broadcast MAC but our shelf.slot is served (the initiator may not
    // know our MAC yet).
    let mut to_broadcast_mac = read(7, 0, 1);
    to_broadcast_mac[..6].copy_from_slice(&BROADCAST);
    assert!(matches!(e.handle(&to_broadcast_mac), Action::Io { .. }));

    // Discovery: the broadcast config query is answered with what the export holds.
    let query = Header {
        dst: BROADCAST,
        shelf: u16::MAX,
        slot: u8::MAX,
        ..header(CMD_CONFIG, 0x77)
    };
    let bytes = reply(&mut e, &config_frame(&query, 0, b""));
    let Ok(Frame::Config { header: h, arg }) = frame::parse(&bytes) else {
        panic!()
    };
    assert_eq!(
        (h.dst, h.src, h.shelf, h.slot, h.tag),
        (HOST, US, 3, 7, 0x77)
    );
    assert_eq!(
        (
            arg.buffer_count,
            arg.max_sectors,
            arg.aoe_version,
            arg.firmware
        ),
        (16, 2, 1, FIRMWARE)
    );
    // The announcement is the same reply, broadcast.
    let announcement = e.announcement();
    let Ok(Frame::Config { header: h, .. }) = frame::parse(&announcement) else {
        panic!()
    };
    assert_eq!(
        (h.dst, h.flags, h.shelf, h.slot),
        (BROADCAST, FLAG_RESPONSE, 3, 7)
    );
}

#[test]
fn malformed_frames_for_us_are_reported_and_never_answered() {
    let mut e = export();
    let frame = read(1, 0, 1);
    for len in HEADER_LEN..ATA_HEADER_LEN {
        assert!(
            matches!(e.handle(&frame[..len]), Action::Malformed(_)),
            "{len}"
        );
    }
    for len in 0..HEADER_LEN {
        assert_eq!(e.handle(&frame[..len]), Action::Ignore);
    }
    let mut wrong_version = frame.clone();
    wrong_version[14] = 0x20;
    assert!(matches!(e.handle(&wrong_version), Action::Malformed(_)));
    let mut lying_config = config_frame(&header(CMD_CONFIG, 2), 3, b"abc");
    lying_config[30..32].copy_from_slice(&9u16.to_be_bytes());
    assert!(matches!(e.handle(&lying_config), Action::Malformed(_)));
    let too_long = config_frame(&header(CMD_CONFIG, 3), 4, &[b'x'; 1025]);
    assert!(matches!(e.handle(&too_long), Action::Malformed(_)));
}

#[test]
fn config_strings_are_read_tested_set_and_forced_as_vblade_does() {
    let mut e = export();
    let h = header(CMD_CONFIG, 1);
    let string_of = |bytes: &[u8]| match frame::parse(bytes).unwrap() {
        Frame::Config { header, arg } => {
            (header.flags & FLAG_ERROR, header.error, arg.config.to_vec())
        }
        other => panic!("{other:?}"),
    };
    // Set on an empty string, then again with the same string: both fine.
    assert_eq!(
        string_of(&reply(&mut e, &config_frame(&h, 3, b"host-a"))),
        (0, 0, b"host-a".to_vec())
    );
    assert_eq!(
        string_of(&reply(&mut e, &config_frame(&h, 3, b"host-a"))),
        (0, 0, b"host-a".to_vec())
    );
    // Another string: refused with error 4, and the reply carries the one in place.
    assert_eq!(
        string_of(&reply(&mut e, &config_frame(&h, 3, b"host-b"))),
        (FLAG_ERROR, ERROR_CONFIG_STRING, b"host-a".to_vec())
    );
    // Test: only an exact match is answered; prefix: any prefix.
    assert_eq!(e.handle(&config_frame(&h, 1, b"host-")), Action::Ignore);
    assert!(matches!(
        e.handle(&config_frame(&h, 1, b"host-a")),
        Action::Reply(_)
    ));
    assert!(matches!(
        e.handle(&config_frame(&h, 2, b"host-")),
        Action::Reply(_)
    ));
    assert_eq!(e.handle(&config_frame(&h, 2, b"host-ab")), Action::Ignore);
    // Force set replaces it; read returns it.
    reply(&mut e, &config_frame(&h, 4, b"host-b"));
    assert_eq!(
        string_of(&reply(&mut e, &config_frame(&h, 0, b""))),
        (0, 0, b"host-b".to_vec())
    );
    // An unknown subcommand: error 2.
    assert_eq!(
        string_of(&reply(&mut e, &config_frame(&h, 9, b""))).1,
        ERROR_BAD_ARGUMENT
    );
}

fn mask_frame(mcmd: u8, directives: &[(u8, Mac)]) -> Vec<u8> {
    let mut out = vec![0u8; 28];
    frame::put_header(&mut out, &header(CMD_MAC_MASK, 1));
    out[25] = mcmd;
    out[27] = u8::try_from(directives.len()).unwrap();
    for (dcmd, mac) in directives {
        out.extend_from_slice(&[0, *dcmd]);
        out.extend_from_slice(mac);
    }
    out
}

#[test]
fn a_mac_mask_list_hides_the_target_from_everyone_else() {
    let mut e = export();
    let listed = reply(
        &mut e,
        &mask_frame(1, &[(1, HOST), (1, [9; 6]), (2, [9; 6])]),
    );
    assert_eq!((listed[26], listed[27]), (0, 1));
    assert_eq!(&listed[28..36], &[0, 0, 2, 0, 0, 0, 0, 2]);
    // HOST is served; OTHER_HOST no longer sees the target at all.
    assert!(matches!(e.handle(&read(1, 0, 1)), Action::Io { .. }));
    let mut from_other = read(2, 0, 1);
    from_other[6..12].copy_from_slice(&OTHER_HOST);
    assert_eq!(e.handle(&from_other), Action::Ignore);
    // A bad directive stops the edit there and says where.
    let bad = reply(&mut e, &mask_frame(1, &[(0, HOST), (7, HOST)]));
    assert_eq!((bad[26], bad[27]), (2, 1));
    // The list is full at 32.
    let many: Vec<(u8, Mac)> = (0..40).map(|i| (1, [4, 0, 0, 0, 0, i])).collect();
    let full = reply(&mut e, &mask_frame(1, &many));
    assert_eq!((full[26], full[27]), (3, 31));
    // A directive count beyond the frame: error 2, list unchanged.
    let mut lying = mask_frame(1, &[(2, HOST)]);
    lying[27] = 5;
    assert_eq!(reply(&mut e, &lying)[15], ERROR_BAD_ARGUMENT);
    assert_eq!(reply(&mut e, &mask_frame(0, &[]))[27], 32);
}

fn reserve_frame(src: Mac, rcmd: u8, macs: &[Mac]) -> Vec<u8> {
    let mut out = vec![0u8; 26];
    frame::put_header(
        &mut out,
        &Header {
            src,
            ..header(CMD_RESERVE, 1)
        },
    );
    out[24] = rcmd;
    out[25] = u8::try_from(macs.len()).unwrap();
    for mac in macs {
        out.extend_from_slice(mac);
    }
    out
}

#[test]
fn a_reservation_keeps_other_hosts_to_identify() {
    let mut e = export();
    let reserved = reply(&mut e, &reserve_frame(HOST, 1, &[HOST]));
    assert_eq!(
        (reserved[15], reserved[25], &reserved[26..32]),
        (0, 1, &HOST[..])
    );
    let mut from_other = read(2, 0, 1);
    from_other[6..12].copy_from_slice(&OTHER_HOST);
    let (h, ..) = ata_reply_of(&reply(&mut e, &from_other));
    assert_eq!(
        (h.flags & FLAG_ERROR, h.error, h.dst),
        (FLAG_ERROR, ERROR_RESERVED, OTHER_HOST)
    );
    // The other host may not take it over, but may force it.
    assert_eq!(
        reply(&mut e, &reserve_frame(OTHER_HOST, 1, &[OTHER_HOST]))[15],
        ERROR_RESERVED
    );
    assert_eq!(
        reply(&mut e, &reserve_frame(OTHER_HOST, 2, &[OTHER_HOST]))[15],
        0
    );
    assert!(matches!(e.handle(&from_other), Action::Io { .. }));
    // An empty list releases it; a list longer than the frame is an error.
    assert_eq!(reply(&mut e, &reserve_frame(OTHER_HOST, 1, &[]))[25], 0);
    let mut lying = reserve_frame(HOST, 1, &[HOST]);
    lying[25] = 3;
    assert_eq!(reply(&mut e, &lying)[15], ERROR_BAD_ARGUMENT);
    assert_eq!(
        reply(&mut e, &reserve_frame(HOST, 7, &[]))[15],
        ERROR_BAD_ARGUMENT
    );
}

#[test]
fn a_copy_of_a_write_is_never_done_twice() {
    let mut e = export();
    let first = write(0x55, 10, &[7; 512]);
    let Action::Io { pending, .. } = e.handle(&first) else {
        panic!()
    };
    // A copy while it is in progress: dropped.
    assert_eq!(e.handle(&first), Action::Duplicate);
    let done = e.complete(pending, true);
    // A copy after: the same reply, without I/O.
    assert_eq!(e.handle(&first), Action::Reply(done.to_vec()));
    // Same tag, another command (a tag that came round): done.
    assert!(matches!(
        e.handle(&write(0x55, 11, &[7; 512])),
        Action::Io { .. }
    ));
    // A read copy is done again.
    let r = read(0x66, 0, 1);
    let Action::Io { pending, .. } = e.handle(&r) else {
        panic!()
    };
    e.complete(pending, true);
    assert!(matches!(e.handle(&r), Action::Io { .. }));
    // An abandoned command is done when it comes again.
    let w = write(0x77, 0, &[1; 512]);
    let Action::Io { pending, .. } = e.handle(&w) else {
        panic!()
    };
    e.abandon(pending);
    assert!(matches!(e.handle(&w), Action::Io { .. }));
}

/// The commands `e` has in progress, and those it would answer again.
fn in_progress_and_answered(e: &Export) -> (usize, usize) {
    let busy = e
        .commands
        .values()
        .filter(|c| matches!(c, Command::InProgress))
        .count();
    (busy, e.commands.len() - busy)
}

#[test]
fn the_answered_cache_stays_bounded() {
    let mut e = export();
    for tag in 0..1000 {
        let Action::Io { pending, .. } = e.handle(&write(tag, 0, &[0; 512])) else {
            panic!()
        };
        e.complete(pending, true);
    }
    assert_eq!(in_progress_and_answered(&e), (0, e.answered_capacity()));
    assert_eq!(e.answered_order.len(), e.answered_capacity());
    // The oldest were forgotten: their copies are done again.
    assert!(matches!(
        e.handle(&write(0, 0, &[0; 512])),
        Action::Io { .. }
    ));
}

/// The target's frame handling against arbitrary frames that look like AoE requests to it,
/// and damaged valid ones: no panic, no reply larger than a frame, no I/O outside the disk
/// or larger than a frame allows, every reply a response from us. `PROPTEST_CASES` cases.
mod property {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn request() -> impl Strategy<Value = Vec<u8>> {
        (
            vec(any::<u8>(), 0..1200),
            prop_oneof![Just(0u8), Just(1), Just(2), Just(3), any::<u8>()],
            prop_oneof![
                Just(ATA_READ_EXT),
                Just(ATA_WRITE_EXT),
                Just(0x20),
                Just(0x30),
                Just(ATA_IDENTIFY),
                Just(ATA_FLUSH_CACHE),
                any::<u8>()
            ],
            any::<bool>(),
        )
            .prop_map(|(mut bytes, command, ata, aoe_shaped)| {
                if aoe_shaped && bytes.len() >= ATA_HEADER_LEN {
                    bytes[..6].copy_from_slice(&US);
                    bytes[12..14].copy_from_slice(&frame::ETHERTYPE.to_be_bytes());
                    bytes[14] = 0x10 | (bytes[14] & 0x07);
                    bytes[16..19].copy_from_slice(&[0, 3, 7]);
                    bytes[19] = command;
                    bytes[27] = ata;
                    bytes[26] %= 4;
                    bytes[30] = 0;
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases()))]

        #[test]
        fn any_frame_is_handled_safely(frames in vec(request(), 1..8)) {
            let mut e = export();
            let limit = 14 + ATA_HEADER_LEN + 2 * SECTOR;
            for bytes in &frames {
                match e.handle(bytes) {
                    Action::Ignore | Action::Malformed(_) | Action::Duplicate => {}
                    Action::Reply(out) => {
                        prop_assert!(out.len() <= limit.max(60), "{} bytes", out.len());
                        prop_assert!(out.len() >= HEADER_LEN);
                        prop_assert_eq!(out[14] & FLAG_RESPONSE, FLAG_RESPONSE);
                        prop_assert_eq!(&out[6..12], &US[..]);
                    }
                    Action::Io { op, pending } => {
                        match op {
                            Op::Read { offset, len } => {
                                prop_assert!(len <= 2 * SECTOR);
                                prop_assert!(offset + len as u64 <= 1000 * 512);
                            }
                            Op::Write { offset, data } => {
                                prop_assert!(data.len() <= 2 * SECTOR);
                                prop_assert!(offset + data.len() as u64 <= 1000 * 512);
                            }
                            Op::Flush => {}
                        }
                        let head = e.complete(pending, true);
                        prop_assert_eq!(&head[..6], &bytes[6..12]);
                    }
                }
            }
            prop_assert_eq!(in_progress_and_answered(&e).0, 0);
        }
    }
}

#[test]
fn a_reused_tag_in_progress_outlives_its_old_answer() {
    let mut e = export();
    let first = write(5, 0, &[1; 512]);
    let Action::Io { pending, .. } = e.handle(&first) else {
        panic!()
    };
    e.complete(pending, true);
    // Tag 5 again, for other sectors: a new command, in progress while its old answer is
    // pushed out of the cache by others.
    let again = write(5, 8, &[2; 512]);
    let Action::Io { pending: busy, .. } = e.handle(&again) else {
        panic!()
    };
    for tag in 100..100 + u32::try_from(e.answered_capacity()).unwrap() {
        let Action::Io { pending, .. } = e.handle(&write(tag, 0, &[0; 512])) else {
            panic!()
        };
        e.complete(pending, true);
    }
    assert!(matches!(e.handle(&again), Action::Duplicate));
    e.complete(busy, true);
    assert!(matches!(e.handle(&again), Action::Reply(_)));
    assert_eq!(in_progress_and_answered(&e), (0, e.answered_capacity()));
}
