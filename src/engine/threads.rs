//! `aio=threads`: a fixed pool of threads doing blocking `preadv2`/`pwritev2`/`fdatasync`/
//! `fallocate`, the portable engine that works on every file and kernel.
//!
//! The pool is also the helper the asynchronous engines lean on for operations their kernel
//! interface lacks, so it can be built around an eventfd that belongs to someone else.
//!
//! A batch is handed over under one lock, waking one thread per job (not the whole pool);
//! finished jobs come back through a [`Handoff`]: a second lock, and an eventfd the queue
//! worker polls beside its vring kick, written once per batch of completions.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::handoff::Handoff;
use super::{blocking, Completion, Engine, IoOp};

struct Job {
    token: u64,
    op: IoOp,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    stopping: bool,
}

struct Shared {
    file: Arc<File>,
    queue: Mutex<Queue>,
    wake: Condvar,
    done: Handoff<Completion>,
}

/// A fixed-size pool of blocking I/O threads for one queue.
pub struct ThreadPool {
    shared: Arc<Shared>,
    batch: Vec<Job>,
    threads: Vec<JoinHandle<()>>,
    /// The fd [`Engine::completion_fd`] reports: ours, or the owning engine's.
    completion_fd: RawFd,
}

impl ThreadPool {
    /// A pool of `threads` threads doing I/O on `file` and signalling `notify` when a job
    /// finishes.
    pub fn new(file: Arc<File>, threads: usize, notify: EventFd) -> io::Result<Self> {
        let done = Handoff::new(notify);
        let completion_fd = done.fd();
        let shared = Arc::new(Shared {
            file,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            done,
        });
        let threads = (0..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("vblkd-io-{i}"))
                    .spawn(move || {
                        crate::sandbox::enter(crate::sandbox::Role::Pool);
                        run(&shared)
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ThreadPool {
            shared,
            batch: Vec::new(),
            threads,
            completion_fd,
        })
    }

    /// A stand-alone `aio=threads` engine with its own eventfd.
    pub fn engine(file: Arc<File>, threads: usize) -> io::Result<Self> {
        Self::new(
            file,
            threads,
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        )
    }
}

fn run(shared: &Shared) {
    loop {
        let job = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                if queue.stopping {
                    return;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = blocking::execute(&shared.file, &job.op);
        shared.done.push(Completion::new(job.token, job.op, result));
    }
}

impl Engine for ThreadPool {
    fn completion_fd(&self) -> RawFd {
        self.completion_fd
    }

    fn push(&mut self, token: u64, op: IoOp) {
        self.batch.push(Job { token, op });
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let n = self.batch.len();
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.jobs.extend(self.batch.drain(..));
        }
        for _ in 0..n.min(self.threads.len()) {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.shared.done.take(out);
        Ok(())
    }

    fn arm(&mut self) -> io::Result<()> {
        self.shared.done.reset()
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopping = true;
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
