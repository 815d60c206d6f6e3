//! Each malformed-chain case the daemon must survive, built with virtio-queue's mock queue.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;

const W: u16 = VRING_DESC_F_WRITE as u16;
const HDR: u64 = 0x10_000;
const DATA: u64 = 0x20_000;
const STATUS: u64 = 0x30_000;
/// Guest memory is two adjacent regions, so a buffer can straddle them.
const REGION_SPLIT: u64 = 0x40_000;
const MEM_END: u64 = 0x80_000;

fn memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_SPLIT as usize),
        (
            GuestAddress(REGION_SPLIT),
            (MEM_END - REGION_SPLIT) as usize,
        ),
    ])
    .unwrap()
}

fn limits() -> Limits {
    Limits {
        capacity: 1 << 20,
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
    assert_eq!(err.error.status(), VIRTIO_BLK_S_UNSUPP as u8);
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

const NEXT: u16 = VRING_DESC_F_NEXT as u16;

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
            table.0,
            32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ))],
    );
    assert_eq!(r, rejected(None, RequestError::BrokenChain));

    // A table that nests another indirect table.
    mem.write_obj(
        Descriptor::new(table.0, 16, VRING_DESC_F_INDIRECT as u16, 0),
        table,
    )
    .unwrap();
    let r = parse_raw(
        &mem,
        &[RawDescriptor::from(Descriptor::new(
            table.0,
            16,
            VRING_DESC_F_INDIRECT as u16,
            0,
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
            table.0,
            48,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ))],
    );
    assert_eq!(r.unwrap().data_len, 512);
}
