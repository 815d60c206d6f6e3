//! What a matrix measured: each cell's configuration, workload and result, and lookups of the
//! rows a report compares. The matrix produces these, the report and the charts read them.

use serde::{Deserialize, Serialize};

use super::{RunResult, Rw, Workload};

/// Which program serves the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    /// io_uring + O_DIRECT straight on the file, no daemon.
    #[serde(alias = "Native")]
    Direct,
    Vblkd,
    Qsd,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Vblkd => "vblkd",
            Peer::Qsd => "qemu-storage-daemon",
        }
    }
}

/// One daemon configuration. `aio` is None for the null disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub peer: Peer,
    pub aio: Option<String>,
    pub cache: String,
    /// vblkd's --poll-us when the matrix set one; `None`: the daemon's default.
    #[serde(default)]
    pub poll_us: Option<u32>,
}

impl Config {
    /// "io_uring/none", "null", ...: the mode rows of different peers are compared in.
    pub fn base_mode(&self) -> String {
        match &self.aio {
            Some(aio) => format!("{aio}/{}", self.cache),
            None => "null".into(),
        }
    }

    /// The base mode, marked "+poll" or "+nopoll" for a vblkd with its polling set.
    pub fn mode(&self) -> String {
        match self.poll_us {
            None => self.base_mode(),
            Some(0) => format!("{}+nopoll", self.base_mode()),
            Some(_) => format!("{}+poll", self.base_mode()),
        }
    }

    pub fn label(&self) -> String {
        format!("{} {}", self.peer.name(), self.mode())
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub config: Config,
    pub workload: Workload,
    pub result: Result<RunResult, String>,
}

/// Looks results up by configuration and workload.
pub struct Results<'a> {
    rows: &'a [Row],
}

impl<'a> Results<'a> {
    pub fn new(rows: &'a [Row]) -> Self {
        Results { rows }
    }

    pub fn get(&self, peer: Peer, mode: &str, w: &Workload) -> Option<&'a RunResult> {
        self.rows
            .iter()
            .find(|r| {
                r.config.peer == peer && r.config.mode() == mode && same_shape(&r.workload, w)
            })
            .and_then(|r| r.result.as_ref().ok())
    }

    pub fn direct(&self, w: &Workload) -> Option<&'a RunResult> {
        self.get(Peer::Direct, "io_uring/none", w)
    }

    /// The qemu-storage-daemon row a vblkd row is compared with.
    pub fn qsd_peer(&self, config: &Config, w: &Workload) -> Option<&'a RunResult> {
        (config.peer == Peer::Vblkd)
            .then(|| self.get(Peer::Qsd, &config.base_mode(), w))
            .flatten()
    }
}

/// Workloads match on what they do, not on how long they ran.
pub fn same_shape(a: &Workload, b: &Workload) -> bool {
    (a.rw, a.bs, a.iodepth, a.queues) == (b.rw, b.bs, b.iodepth, b.queues)
}

pub fn workload(rw: Rw, bs: usize, iodepth: usize, queues: usize) -> Workload {
    Workload {
        rw,
        bs,
        iodepth,
        queues,
        seconds: 0.0,
        ramp: 0.0,
        rate: None,
    }
}
