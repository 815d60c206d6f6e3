//! Each malformed-chain case the daemon must survive, built with virtio-queue's mock queue.

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::blk::layout::status;
use vblkd_test_support::desc::{INDIRECT, NEXT, WRITE as W};

const HDR: u64 = 0x10_000;
const DATA: u64 = 0x20_000;
const STATUS: u64 = 0x30_000;
/// Guest memory is two adjacent regions, so a buffer can straddle them.
const REGION_SPLIT: u64 = 0x40_000;
const MEM_END: u64 = 0x80_000;

fn memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), usize::try_from(REGION_SPLIT).unwrap()),
        (
            GuestAddress(REGION_SPLIT),
            usize::try_from(MEM_END - REGION_SPLIT).unwrap(),
        ),
    ])
    .unwrap()
}

fn limits() -> Limits {
    Limits {
        capacity: std::sync::Arc::new(crate::disk::Capacity::new(1 << 20, 512).unwrap()),
        block_size: 512,
        read_only: false,
        max_data_bytes: 1 << 20,
    }
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

fn header(mem: &GuestMemory, addr: u64, ty: u32, sector: u64) {
    mem.write_obj(ty.to_le(), GuestAddress(addr)).unwrap();
    mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(addr + 8))
        .unwrap();
}

fn parse_chain(
    mem: &GuestMemory,
    descs: &[RawDescriptor],
    limits: &Limits,
) -> (Result<Request, Rejected>, Vec<libc::iovec>) {
    let queue = MockSplitQueue::new(mem, 16);
    let chain = queue.build_desc_chain(descs).unwrap();
    let mut iov = Vec::new();
    let result = parse(chain, mem, limits, &mut Scratch::default(), &mut iov);
    (result, iov)
}

fn rejected(status: Option<u64>, error: RequestError) -> Result<Request, Rejected> {
    Err(Rejected {
        status: status.map(GuestAddress),
        error,
    })
}

#[test]
fn read_request_points_into_guest_memory() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 8);
    let (r, iov) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 4096, W), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(
        r,
        Ok(Request {
            kind: RequestKind::Read { offset: 4096 },
            data_len: 4096,
            status: GuestAddress(STATUS),
        })
    );
    assert_eq!(iov.len(), 1);
    assert_eq!(iov[0].iov_len, 4096);
    assert_eq!(
        iov[0].iov_base as *mut u8,
        mem.get_host_address(GuestAddress(DATA)).unwrap()
    );
}

#[test]
fn header_data_and_status_may_share_descriptors() {
    let mem = memory();
    // Header and data in one readable descriptor, header split over two; status after data.
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    let (r, iov) = parse_chain(
        &mem,
        &[
            desc(HDR, 8, 0),
            desc(HDR + 8, 8 + 1024, 0),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    assert_eq!(r.unwrap().kind, RequestKind::Write { offset: 0 });
    assert_eq!(iov.len(), 1);
    assert_eq!(iov[0].iov_len, 1024);
    assert_eq!(
        iov[0].iov_base as *mut u8,
        mem.get_host_address(GuestAddress(HDR + 16)).unwrap()
    );

    // Read data and status in one writable descriptor.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let (r, iov) = parse_chain(&mem, &[desc(HDR, 16, 0), desc(DATA, 513, W)], &limits());
    let r = r.unwrap();
    assert_eq!(r.status, GuestAddress(DATA + 512));
    assert_eq!(iov[0].iov_len, 512);
}

#[test]
fn buffer_crossing_memory_regions_is_split() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let (r, iov) = parse_chain(
        &mem,
        &[
            desc(HDR, 16, 0),
            desc(REGION_SPLIT - 512, 1024, W),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    assert_eq!(r.unwrap().data_len, 1024);
    assert_eq!(iov.len(), 2);
    assert_eq!(iov[0].iov_len + iov[1].iov_len, 1024);
}

#[test]
fn chain_without_writable_status_gets_no_reply() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let (r, _) = parse_chain(&mem, &[desc(HDR, 16, 0)], &limits());
    assert_eq!(r, rejected(None, RequestError::NoStatus));
    // Status descriptor not writable.
    let (r, _) = parse_chain(&mem, &[desc(HDR, 16, 0), desc(STATUS, 1, 0)], &limits());
    assert_eq!(r, rejected(None, RequestError::NoStatus));
    // A readable descriptor after the writable data, where the status should be.
    let (r, _) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, 0)],
        &limits(),
    );
    assert_eq!(r, rejected(None, RequestError::NoStatus));
    // Zero-length status descriptor.
    let (r, _) = parse_chain(&mem, &[desc(HDR, 16, 0), desc(STATUS, 0, W)], &limits());
    assert_eq!(r, rejected(None, RequestError::NoStatus));
}

#[test]
fn status_outside_guest_memory_gets_no_reply() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let (r, _) = parse_chain(&mem, &[desc(HDR, 16, 0), desc(MEM_END, 1, W)], &limits());
    assert_eq!(r, rejected(None, RequestError::OutsideGuestMemory));
    let (r, _) = parse_chain(&mem, &[desc(HDR, 16, 0), desc(u64::MAX, 1, W)], &limits());
    assert_eq!(r, rejected(None, RequestError::OutsideGuestMemory));
}

#[test]
fn data_outside_guest_memory_fails_with_ioerr() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let (r, _) = parse_chain(
        &mem,
        &[
            desc(HDR, 16, 0),
            desc(MEM_END - 512, 1024, W),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    assert_eq!(r, rejected(Some(STATUS), RequestError::OutsideGuestMemory));
    // Header outside memory.
    let (r, _) = parse_chain(&mem, &[desc(MEM_END, 16, 0), desc(STATUS, 1, W)], &limits());
    assert_eq!(r, rejected(Some(STATUS), RequestError::OutsideGuestMemory));
}

#[test]
fn too_short_header_fails() {
    let mem = memory();
    let (r, _) = parse_chain(&mem, &[desc(HDR, 8, 0), desc(STATUS, 1, W)], &limits());
    assert_eq!(r, rejected(Some(STATUS), RequestError::ShortHeader));
    let (r, _) = parse_chain(&mem, &[desc(STATUS, 1, W)], &limits());
    assert_eq!(r, rejected(Some(STATUS), RequestError::ShortHeader));
}

#[test]
fn wrong_direction_fails() {
    let mem = memory();
    // A read whose data buffer is device-readable.
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let (r, _) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(r, rejected(Some(STATUS), RequestError::WrongDirection));
    // A write whose data buffer is device-writable.
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    let (r, _) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(r, rejected(Some(STATUS), RequestError::WrongDirection));
    // A readable descriptor after a writable one.
    let (r, _) = parse_chain(
        &mem,
        &[
            desc(HDR, 16, 0),
            desc(DATA, 512, W),
            desc(DATA, 512, 0),
            desc(STATUS, 1, W),
        ],
        &limits(),
    );
    assert_eq!(
        r,
        rejected(Some(STATUS), RequestError::ReadableAfterWritable)
    );
}

#[test]
fn past_end_and_unaligned_requests_fail() {
    let mem = memory();
    let chain = [desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)];
    let last_sector = (1 << 20) / 512 - 1;
    header(&mem, HDR, VIRTIO_BLK_T_IN, last_sector);
    let (r, _) = parse_chain(&mem, &chain, &limits());
    assert_eq!(r, rejected(Some(STATUS), RequestError::PastEnd));
    header(&mem, HDR, VIRTIO_BLK_T_IN, u64::MAX / 512 + 1);
    let (r, _) = parse_chain(&mem, &chain, &limits());
    assert_eq!(r, rejected(Some(STATUS), RequestError::PastEnd));
    header(&mem, HDR, VIRTIO_BLK_T_IN, u64::MAX);
    let (r, _) = parse_chain(&mem, &chain, &limits());
    assert_eq!(r, rejected(Some(STATUS), RequestError::PastEnd));

    let four_k = Limits {
        block_size: 4096,
        ..limits()
    };
    header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
    let (r, _) = parse_chain(&mem, &chain, &four_k);
    assert_eq!(r, rejected(Some(STATUS), RequestError::Unaligned));
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let (r, _) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 100, W), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(r, rejected(Some(STATUS), RequestError::Unaligned));
}

#[test]
fn oversized_request_fails() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let small = Limits {
        max_data_bytes: 512,
        ..limits()
    };
    let (r, _) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 1024, W), desc(STATUS, 1, W)],
        &small,
    );
    assert_eq!(r, rejected(Some(STATUS), RequestError::TooLarge));
}

#[test]
fn writes_to_read_only_disk_fail() {
    let mem = memory();
    let ro = Limits {
        read_only: true,
        ..limits()
    };
    for ty in [
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
    ] {
        header(&mem, HDR, ty, 0);
        let (r, _) = parse_chain(
            &mem,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
            &ro,
        );
        assert_eq!(
            r,
            rejected(Some(STATUS), RequestError::ReadOnly),
            "type {ty}"
        );
    }
}

#[test]
fn unknown_type_is_unsupported() {
    let mem = memory();
    header(&mem, HDR, 0x1234, 0);
    let (r, _) = parse_chain(&mem, &[desc(HDR, 16, 0), desc(STATUS, 1, W)], &limits());
    let err = r.unwrap_err();
    assert_eq!(err.error, RequestError::Unsupported(0x1234));
    assert_eq!(err.error.status(), status::UNSUPP);
}

fn discard_segment(mem: &GuestMemory, sector: u64, sectors: u32, flags: u32) {
    mem.write_obj(sector.to_le(), GuestAddress(DATA)).unwrap();
    mem.write_obj(sectors.to_le(), GuestAddress(DATA + 8))
        .unwrap();
    mem.write_obj(flags.to_le(), GuestAddress(DATA + 12))
        .unwrap();
}

#[test]
fn discard_and_write_zeroes_are_checked() {
    let mem = memory();
    let chain = [desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)];
    header(&mem, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    discard_segment(&mem, 2, 4, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let (r, _) = parse_chain(&mem, &chain, &limits());
    assert_eq!(
        r.unwrap().kind,
        RequestKind::WriteZeroes {
            offset: 1024,
            len: 2048,
            unmap: true
        }
    );

    header(&mem, HDR, VIRTIO_BLK_T_DISCARD, 0);
    let (r, _) = parse_chain(&mem, &chain, &limits());
    assert_eq!(r, rejected(Some(STATUS), RequestError::UnsupportedDiscard));
    discard_segment(&mem, 2, 4, 0);
    let (r, _) = parse_chain(&mem, &chain, &limits());
    assert_eq!(
        r.unwrap().kind,
        RequestKind::Discard {
            offset: 1024,
            len: 2048
        }
    );

    discard_segment(&mem, (1 << 20) / 512, 1, 0);
    let (r, _) = parse_chain(&mem, &chain, &limits());
    assert_eq!(r, rejected(Some(STATUS), RequestError::PastEnd));

    let (r, _) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 10, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(r, rejected(Some(STATUS), RequestError::BadDiscardPayload));
    let (r, _) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 32, 0), desc(STATUS, 1, W)],
        &limits(),
    );
    assert_eq!(r, rejected(Some(STATUS), RequestError::UnsupportedDiscard));
}

#[test]
fn get_id_returns_its_buffer() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let (r, iov) = parse_chain(
        &mem,
        &[desc(HDR, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)],
        &limits(),
    );
    let r = r.unwrap();
    assert_eq!((r.kind, r.data_len), (RequestKind::GetId, 20));
    assert_eq!(iov.len(), 1);
}

/// Builds a chain whose descriptors are stored exactly as given (next pointers included).
fn parse_raw(mem: &GuestMemory, descs: &[RawDescriptor]) -> Result<Request, Rejected> {
    let queue = MockSplitQueue::new(mem, 16);
    let chain = queue.build_multiple_desc_chains(descs).unwrap();
    parse(
        chain,
        mem,
        &limits(),
        &mut Scratch::default(),
        &mut Vec::new(),
    )
}

#[test]
fn looping_chain_is_dropped() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...: the iterator gives up after queue-size descriptors.
    let r = parse_raw(
        &mem,
        &[
            RawDescriptor::from(Descriptor::new(HDR, 16, NEXT, 1)),
            RawDescriptor::from(Descriptor::new(STATUS, 1, NEXT | W, 0)),
        ],
    );
    assert_eq!(r, rejected(None, RequestError::BrokenChain));
}

#[test]
fn next_index_beyond_queue_is_dropped() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let r = parse_raw(
        &mem,
        &[RawDescriptor::from(Descriptor::new(HDR, 16, NEXT, 999))],
    );
    assert_eq!(r, rejected(None, RequestError::BrokenChain));
}

#[test]
fn looping_indirect_table_is_dropped() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let table = GuestAddress(0x50_000);
    // An indirect table of two descriptors that point at each other.
    let entries = [
        Descriptor::new(HDR, 16, NEXT, 1),
        Descriptor::new(STATUS, 1, NEXT | W, 0),
    ];
    for (i, d) in entries.iter().enumerate() {
        mem.write_obj(*d, table.unchecked_add(16 * i as u64))
            .unwrap();
    }
    let r = parse_raw(
        &mem,
        &[RawDescriptor::from(Descriptor::new(
            table.0, 32, INDIRECT, 0,
        ))],
    );
    assert_eq!(r, rejected(None, RequestError::BrokenChain));

    // A table that nests another indirect table.
    mem.write_obj(Descriptor::new(table.0, 16, INDIRECT, 0), table)
        .unwrap();
    let r = parse_raw(
        &mem,
        &[RawDescriptor::from(Descriptor::new(
            table.0, 16, INDIRECT, 0,
        ))],
    );
    assert_eq!(r, rejected(None, RequestError::BrokenChain));
}

#[test]
fn well_formed_indirect_chain_parses() {
    let mem = memory();
    header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let table = GuestAddress(0x50_000);
    let entries = [
        Descriptor::new(HDR, 16, NEXT, 1),
        Descriptor::new(DATA, 512, NEXT | W, 2),
        Descriptor::new(STATUS, 1, W, 0),
    ];
    for (i, d) in entries.iter().enumerate() {
        mem.write_obj(*d, table.unchecked_add(16 * i as u64))
            .unwrap();
    }
    let r = parse_raw(
        &mem,
        &[RawDescriptor::from(Descriptor::new(
            table.0, 48, INDIRECT, 0,
        ))],
    );
    assert_eq!(r.unwrap().data_len, 512);
}

/// The parser against arbitrary descriptor chains: loops, indirect tables, addresses and
/// lengths anywhere (in memory, across its end, near `u64::MAX`), any flags, any request type
/// and sector. Whatever it returns, it must not panic, and every byte it lets the engine touch
/// must be guest memory. Runs `PROPTEST_CASES` cases (5000 by default); for a long run:
/// `PROPTEST_CASES=2000000 cargo test --release --lib any_chain`.
mod property {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use virtio_queue::DescriptorChain;
    use vm_memory::GuestMemoryBackend;

    use super::*;

    const INDIRECT_TABLE: u64 = 0x7000;

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000)
    }

    fn addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0..MEM_END / 0x1000).prop_map(|page| page * 0x1000),
            (0..MEM_END / 0x1000).prop_map(|page| page * 0x1000 + 16),
            Just(INDIRECT_TABLE),
            0..MEM_END,
            (REGION_SPLIT - 0x1000)..(REGION_SPLIT + 0x1000),
            (MEM_END - 0x1000)..(MEM_END + 0x1000),
            (u64::MAX - 0x1000)..=u64::MAX,
            any::<u64>(),
        ]
    }

    fn len() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(1u32),
            Just(16),
            Just(32),
            Just(512),
            Just(4096),
            0..64u32,
            0..0x2_0000u32,
            any::<u32>(),
        ]
    }

    fn flags() -> impl Strategy<Value = u16> {
        // NEXT, WRITE and INDIRECT in every combination, and garbage.
        prop_oneof![0..8u16, any::<u16>()]
    }

    fn descriptor() -> impl Strategy<Value = Descriptor> {
        (addr(), len(), flags(), prop_oneof![0..24u16, any::<u16>()])
            .prop_map(|(a, l, f, n)| Descriptor::new(a, l, f, n))
    }

    fn request_type() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(VIRTIO_BLK_T_IN),
            Just(VIRTIO_BLK_T_OUT),
            Just(VIRTIO_BLK_T_FLUSH),
            Just(VIRTIO_BLK_T_GET_ID),
            Just(VIRTIO_BLK_T_DISCARD),
            Just(VIRTIO_BLK_T_WRITE_ZEROES),
            any::<u32>(),
        ]
    }

    fn sector() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..4096u64,
            (1u64 << 20) / 512 - 8..(1u64 << 20) / 512 + 8,
            any::<u64>()
        ]
    }

    /// Whether `[base, base + len)` lies within one mapped region of `mem`.
    fn is_guest_memory(mem: &GuestMemory, base: usize, len: usize) -> bool {
        mem.iter().any(|region| {
            let start = region.as_ptr() as usize;
            let end = start + region.size();
            base >= start && base.checked_add(len).is_some_and(|e| e <= end)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn any_chain_is_parsed_safely(
            table in vec(descriptor(), 1..24),
            indirect in vec(descriptor(), 0..8),
            headers in vec((request_type(), sector(), sector(), any::<u32>(), 0..4u32), 16),
            head in prop_oneof![0..24u16, any::<u16>()],
            queue_size in prop_oneof![Just(16u16), Just(256)],
            read_only in any::<bool>(),
        ) {
            thread_local!(static MEM: GuestMemory = memory());
            let mem = MEM.with(|m| m.clone());
            // Fresh descriptor tables; the rest of memory may keep earlier cases' bytes.
            mem.write_slice(&[0u8; 0x8000], GuestAddress(0)).unwrap();
            for (i, d) in table.iter().enumerate() {
                mem.write_obj(*d, GuestAddress(16 * i as u64)).unwrap();
            }
            for (i, d) in indirect.iter().enumerate() {
                mem.write_obj(*d, GuestAddress(INDIRECT_TABLE + 16 * i as u64)).unwrap();
            }
            // A request header (and a discard segment after it) at the start of pages that
            // descriptors are likely to point at.
            for (page, &(ty, sector, seg_sector, seg_count, seg_flags)) in headers.iter().enumerate() {
                let at = 0x8000 + 0x1000 * page as u64;
                header(&mem, at, ty, sector);
                mem.write_obj(seg_sector.to_le(), GuestAddress(at + 16)).unwrap();
                mem.write_obj(seg_count.to_le(), GuestAddress(at + 24)).unwrap();
                mem.write_obj(seg_flags.to_le(), GuestAddress(at + 28)).unwrap();
            }
            let limits = Limits { read_only, ..limits() };
            let chain = DescriptorChain::new(&mem, GuestAddress(0), queue_size, head);
            let mut iov = Vec::new();
            match parse(chain, &mem, &limits, &mut Scratch::default(), &mut iov) {
                Ok(req) => {
                    prop_assert!(mem.check_range(req.status, 1));
                    for v in &iov {
                        let inside = is_guest_memory(&mem, v.iov_base as usize, v.iov_len);
                        prop_assert!(inside, "iovec outside guest memory for {:?}", req);
                    }
                    let total: usize = iov.iter().map(|v| v.iov_len).sum();
                    match req.kind {
                        RequestKind::Read { offset } | RequestKind::Write { offset } => {
                            prop_assert_eq!(total, req.data_len);
                            prop_assert_eq!(offset % 512, 0);
                            prop_assert!(offset + req.data_len as u64 <= limits.capacity.bytes());
                            prop_assert!(req.data_len as u64 <= limits.max_data_bytes);
                            let is_read = matches!(req.kind, RequestKind::Read { .. });
                            prop_assert!(!read_only || is_read, "a write to a read-only disk");
                        }
                        RequestKind::GetId => prop_assert_eq!(total, req.data_len),
                        RequestKind::Discard { offset, len }
                        | RequestKind::WriteZeroes { offset, len, .. } => {
                            prop_assert!(!read_only);
                            prop_assert!(offset.checked_add(len).is_some_and(|e| e <= limits.capacity.bytes()));
                        }
                        RequestKind::Flush => {}
                    }
                }
                Err(Rejected { status: Some(status), .. }) => {
                    prop_assert!(mem.check_range(status, 1));
                }
                Err(Rejected { status: None, .. }) => {}
            }
        }
    }
}
