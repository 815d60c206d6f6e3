//! The load as a VM would send it: the `blkio` crate's `virtio-blk-vhost-user` driver, one
//! virtqueue per load thread, buffers in a memory region shared with the daemon.

use std::mem::MaybeUninit;
use std::path::Path;

use blkio::{Blkio, Blkioq, ReqFlags};

use super::{fill_with_data, BenchError, LoadQueue, Prepared, SharedBuffers, Workload};

struct ClientQueue {
    queue: Blkioq,
    completions: Vec<MaybeUninit<blkio::Completion>>,
}

// SAFETY: a Blkioq is used by exactly one load thread at a time; the raw pointers its
// requests carry point into the shared region, which outlives the run.
unsafe impl Send for ClientQueue {}

impl LoadQueue for ClientQueue {
    fn queue(&mut self, slot: usize, write: bool, offset: u64, buf: *mut u8, len: usize) {
        if write {
            self.queue.write(offset, buf, len, slot, ReqFlags::empty());
        } else {
            self.queue.read(offset, buf, len, slot, ReqFlags::empty());
        }
    }

    fn complete(&mut self, out: &mut Vec<(usize, bool)>) -> Result<(), BenchError> {
        let n = self
            .queue
            .do_io(&mut self.completions, 1, None, None)
            .map_err(|e| BenchError::Setup(format!("do_io: {}", e.message())))?;
        for c in &self.completions[..n] {
            // SAFETY: do_io initialised the first `n` entries.
            let c = unsafe { c.assume_init_ref() };
            out.push((c.user_data, c.ret == 0));
        }
        Ok(())
    }
}

/// Connects to the daemon at `path` with `w.queues` queues and a buffer region for the run.
pub(super) fn connect(path: &Path, w: &Workload) -> Result<Prepared, BenchError> {
    let err = |e: blkio::Error| BenchError::Connect {
        path: path.to_path_buf(),
        message: e.message().to_owned(),
    };
    let mut blkio = Blkio::new("virtio-blk-vhost-user").map_err(err)?;
    blkio
        .set_str("path", &path.to_string_lossy())
        .map_err(err)?;
    blkio.connect().map_err(err)?;
    let num_queues = i32::try_from(w.queues).map_err(|_| BenchError::Connect {
        path: path.to_path_buf(),
        message: format!("{} queues are too many", w.queues),
    })?;
    blkio.set_i32("num-queues", num_queues).map_err(err)?;
    let queues = blkio.start().map_err(err)?.queues;
    let capacity = blkio.get_u64("capacity").map_err(err)?;
    let region = blkio
        .alloc_mem_region(w.queues * w.iodepth * w.bs)
        .map_err(err)?;
    blkio.map_mem_region(&region).map_err(err)?;
    let base = region.addr as *mut u8;
    // SAFETY: the region is mapped and `len` bytes long.
    fill_with_data(unsafe { std::slice::from_raw_parts_mut(base, region.len) });

    let queues = queues
        .into_iter()
        .map(|queue| {
            Box::new(ClientQueue {
                queue,
                completions: (0..w.iodepth).map(|_| MaybeUninit::uninit()).collect(),
            }) as Box<dyn LoadQueue>
        })
        .collect();
    Ok(Prepared {
        queues,
        capacity,
        buffers: SharedBuffers {
            base,
            _owner: Box::new((blkio, region)),
        },
    })
}
