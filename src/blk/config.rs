//! The virtio-blk feature bits and configuration space this device offers.
//!
//! Every limit advertised here is one the request parser enforces, and none is zero where the
//! feature that uses it is offered (Windows guests crash on zero discard limits).

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::layout::ConfigSpace;
use crate::disk::DiskInfo;

/// Largest data segment (one descriptor) the guest may use.
pub const SIZE_MAX: u32 = 1 << 20;
/// Discard and write-zeroes accept one range per request, as QEMU does.
pub const MAX_DISCARD_SEGMENTS: u32 = 1;
/// Largest discard / write-zeroes range, in 512-byte sectors (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;

/// Byte offset of the `writeback` (WCE) field, the only field a driver may write (checked
/// against the layout at compile time).
pub const WRITEBACK_OFFSET: u32 = 32;
const _: () = assert!(std::mem::offset_of!(ConfigSpace, writeback) == WRITEBACK_OFFSET as usize);
/// Bytes of `struct virtio_blk_config` up to and including the write-zeroes fields.
pub const CONFIG_LEN: usize = std::mem::size_of::<ConfigSpace>();

/// Segments per request: bounded by the queue (less header and status), as QEMU bounds it.
pub fn seg_max(queue_size: u16) -> u32 {
    u32::from(queue_size).saturating_sub(2).max(1)
}

/// Largest data transfer of one request, in bytes.
pub fn max_request_bytes(queue_size: u16) -> u64 {
    u64::from(seg_max(queue_size)) * u64::from(SIZE_MAX)
}

/// Device feature bits for `info`.
pub fn device_features(info: &DiskInfo) -> u64 {
    let mut bits = [
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_MQ,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_F_VERSION_1,
    ]
    .iter()
    .fold(0u64, |acc, &bit| acc | (1u64 << bit));
    if info.read_only {
        bits |= 1 << VIRTIO_BLK_F_RO;
    }
    if info.discard {
        bits |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
    }
    bits
}

/// The configuration space, little-endian as virtio 1.x requires.
pub fn config_space(info: &DiskInfo, num_queues: u16, queue_size: u16, wce: bool) -> ConfigSpace {
    let mut c = ConfigSpace {
        capacity: (info.capacity.bytes() / 512).into(),
        size_max: SIZE_MAX.into(),
        seg_max: seg_max(queue_size).into(),
        blk_size: info.logical_block_size.into(),
        // log2(physical / logical block size), at most 31: the conversion cannot fail.
        physical_block_exp: u8::try_from(
            (info.physical_block_size / info.logical_block_size)
                .max(1)
                .trailing_zeros(),
        )
        .unwrap_or(0),
        min_io_size: 1u16.into(),
        writeback: u8::from(wce),
        num_queues: num_queues.into(),
        ..ConfigSpace::default()
    };
    if info.discard {
        c.max_discard_sectors = MAX_DISCARD_SECTORS.into();
        c.max_discard_seg = MAX_DISCARD_SEGMENTS.into();
        c.discard_sector_alignment = (info.logical_block_size / 512).into();
        c.max_write_zeroes_sectors = MAX_DISCARD_SECTORS.into();
        c.max_write_zeroes_seg = MAX_DISCARD_SEGMENTS.into();
        c.write_zeroes_may_unmap = 1;
    }
    c
}

#[cfg(test)]
mod tests {
    use vm_memory::ByteValued;

    use super::*;

    fn info(read_only: bool) -> DiskInfo {
        DiskInfo {
            capacity: std::sync::Arc::new(crate::disk::Capacity::new(1 << 30, 4096).unwrap()),
            logical_block_size: 4096,
            physical_block_size: 4096,
            read_only,
            serial: b"x".to_vec(),
            write_cache: true,
            honours_flush: true,
            discard: !read_only,
            buffer_alignment: 512,
        }
    }

    #[test]
    fn config_fields_land_at_their_virtio_offsets() {
        let space = config_space(&info(false), 2, 256, true);
        let c = space.as_slice();
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            (1 << 30) / 512
        );
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
        assert_eq!(c[32], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
        for off in [36, 40, 48, 52] {
            assert_ne!(
                u32::from_le_bytes(c[off..off + 4].try_into().unwrap()),
                0,
                "{off}"
            );
        }
    }

    #[test]
    fn read_only_disk_offers_ro_and_no_discard() {
        let f = device_features(&info(true));
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        let c = config_space(&info(true), 1, 256, true);
        assert!(c.as_slice()[36..60].iter().all(|&b| b == 0));
    }
}
