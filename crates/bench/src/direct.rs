//! The reference: the same load straight on the file with io_uring and O_DIRECT, submitting
//! and waiting in one `io_uring_enter` per batch, as fio's io_uring engine does. No daemon can
//! beat this; how close one comes is the figure of merit.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use io_uring::{opcode, types, IoUring};

use super::{fill_with_data, BenchError, LoadQueue, Prepared, SharedBuffers, Workload};
use diskio::AlignedBuffer;

struct DirectQueue {
    ring: IoUring,
    fd: i32,
}

impl LoadQueue for DirectQueue {
    fn queue(&mut self, slot: usize, write: bool, offset: u64, buf: *mut u8, len: usize) {
        let fd = types::Fd(self.fd);
        let entry = if write {
            opcode::Write::new(fd, buf, entry_len(len))
                .offset(offset)
                .build()
        } else {
            opcode::Read::new(fd, buf, entry_len(len))
                .offset(offset)
                .build()
        };
        // SAFETY: the buffer belongs to this slot until its completion is reaped; the ring has
        // room for every slot (it is sized to the queue depth), so push cannot fail.
        unsafe { self.ring.submission().push(&entry.user_data(slot as u64)) }
            .expect("ring sized to the queue depth");
    }

    fn complete(&mut self, out: &mut Vec<(usize, bool)>) -> Result<(), BenchError> {
        self.ring
            .submit_and_wait(1)
            .map_err(|e| BenchError::Setup(format!("io_uring_enter: {e}")))?;
        out.extend(
            self.ring
                .completion()
                .map(|c| (slot_of(c.user_data()), c.result() >= 0)),
        );
        Ok(())
    }
}

/// Opens `path` with O_DIRECT and one ring per load thread.
pub(super) fn open(path: &Path, w: &Workload) -> Result<Prepared, BenchError> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|source| BenchError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let capacity = file_size(&file).map_err(|source| BenchError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut buffers = AlignedBuffer::new(w.queues * w.iodepth * w.bs)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    fill_with_data(buffers.as_mut_slice());
    let entries = u32::try_from(w.iodepth)
        .map_err(|_| BenchError::Setup(format!("--iodepth {} is too deep", w.iodepth)))?
        .next_power_of_two();
    let base = buffers.as_mut_slice().as_mut_ptr();
    let queues = (0..w.queues)
        .map(|_| {
            let ring =
                IoUring::new(entries).map_err(|e| BenchError::Setup(format!("io_uring: {e}")))?;
            Ok(Box::new(DirectQueue {
                ring,
                fd: file.as_raw_fd(),
            }) as Box<dyn LoadQueue>)
        })
        .collect::<Result<Vec<_>, BenchError>>()?;
    Ok(Prepared {
        queues,
        capacity,
        buffers: SharedBuffers {
            base,
            _owner: Box::new((file, buffers)),
        },
    })
}

/// Size of a regular file or a block device (seeking to the end works for both).
fn file_size(mut file: &File) -> std::io::Result<u64> {
    file.seek(SeekFrom::End(0))
}

/// A transfer's length as a ring entry holds it; `--bs` is at most [`crate::MAX_BLOCK_SIZE`].
fn entry_len(len: usize) -> u32 {
    u32::try_from(len).expect("block sizes are checked against MAX_BLOCK_SIZE")
}

/// The slot a completion belongs to: the index `queue` put in its user data.
fn slot_of(user_data: u64) -> usize {
    usize::try_from(user_data).expect("user data holds a slot index")
}
