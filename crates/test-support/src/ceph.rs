//! A throwaway single-node Ceph cluster for the RBD tests: one monitor on 127.0.0.1 and one
//! OSD keeping everything in memory (memstore), no authentication, pools of one replica, no
//! manager. Tuned to start in about a second (../shared/REFERENCE.md has the facts); killed
//! when dropped, and with the test process if that dies first.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const POOL: &str = "rbd";

pub struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    mon: Child,
    osd: Option<Child>,
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn uuid() -> String {
    let mut bytes = [0u8; 16];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = u64::try_from(nanos & u128::from(u64::MAX)).unwrap();
    let mut rng = super::Rng::new(seed ^ u64::from(std::process::id()));
    rng.fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Runs a Ceph tool to completion; fails the test with its output if it fails.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let mut cmd = vec![program];
    cmd.extend_from_slice(args);
    super::run_tool(
        &cmd,
        "the Ceph tools come with ceph-mon ceph-osd ceph-common, which scripts/setup installs",
    )
}

/// Starts a Ceph daemon in the foreground, killed if the test process dies.
fn spawn(program: &str, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} ({e}); install ceph-mon and ceph-osd"))
}

/// Where the OSD keeps its data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// In memory: starts in about a second, and is lost if the OSD is killed.
    Memory,
    /// BlueStore on a sparse file: about 7 s to start, and survives a killed OSD.
    Durable,
}

impl Cluster {
    /// A running cluster (memstore) with pool [`POOL`] ready for images, its files under
    /// `dir`.
    pub fn start(dir: &Path) -> Cluster {
        Self::start_with(dir, Store::Memory)
    }

    pub fn start_with(dir: &Path, store: Store) -> Cluster {
        let dir = dir.join("ceph");
        for sub in ["mon", "osd", "run"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let port = free_port();
        let fsid = uuid();
        let d = dir.display();
        let conf = dir.join("ceph.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{port}/0
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
{store}
osd crush chooseleaf type = 0
paxos propose interval = 0.05
paxos min wait = 0.01
mon osd crush smoke test = false
ms bind ipv6 = false
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/$name.log
mon data = {d}/mon
osd data = {d}/osd
rbd cache = false
",
                store = match store {
                    Store::Memory =>
                        "osd objectstore = memstore\nmemstore page set = true".to_owned(),
                    // The block file must sit outside the OSD's data directory.
                    Store::Durable => format!(
                        "osd objectstore = bluestore\nbluestore block path = {d}/block\n\
                         bluestore block create = true\nbluestore block size = 2147483648\n\
                         bluestore fsck on mount = false"
                    ),
                }
            ),
        )
        .unwrap();
        let conf_s = conf.to_str().unwrap().to_owned();
        let monmap = dir.join("monmap");
        let addr = format!("[v2:127.0.0.1:{port}]");
        run(
            "monmaptool",
            &[
                "--create",
                "--clobber",
                "--fsid",
                &fsid,
                "--addv",
                "a",
                &addr,
                monmap.to_str().unwrap(),
            ],
        );
        run(
            "ceph-mon",
            &[
                "-c",
                &conf_s,
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                monmap.to_str().unwrap(),
            ],
        );
        let mon = spawn(
            "ceph-mon",
            &["-c", &conf_s, "-i", "a", "-f"],
            &dir.join("mon.out"),
        );
        let mut cluster = Cluster {
            dir,
            conf,
            mon,
            osd: None,
        };
        // Waits for the monitor (the client retries until it answers or times out).
        cluster.ceph(&["osd", "create"]);
        run(
            "ceph-osd",
            &["-c", &conf_s, "-i", "0", "--mkfs", "--osd-uuid", &uuid()],
        );
        cluster.start_osd();
        cluster.ceph(&["osd", "pool", "create", POOL, "8"]);
        // Writes to the pool: returns once the OSD is up and serving.
        cluster.rbd(&["pool", "init", POOL]);
        cluster
    }

    /// The configuration file a client (vblkd's `:conf=`) uses.
    pub fn conf(&self) -> &str {
        self.conf.to_str().unwrap()
    }

    /// `rbd:POOL/IMAGE:conf=...` for vblkd's `--disk`.
    pub fn disk(&self, image: &str) -> String {
        format!("rbd:{POOL}/{image}:conf={}", self.conf())
    }

    pub fn ceph(&self, args: &[&str]) -> Vec<u8> {
        let mut all = vec!["-c", self.conf(), "--connect-timeout", "30"];
        all.extend_from_slice(args);
        run("ceph", &all)
    }

    pub fn rbd(&self, args: &[&str]) -> Vec<u8> {
        let mut all = vec!["-c", self.conf()];
        all.extend_from_slice(args);
        run("rbd", &all)
    }

    /// Creates image `name` of `bytes`.
    pub fn create_image(&self, name: &str, bytes: u64) {
        let image = format!("{POOL}/{name}");
        self.rbd(&["create", "--size", &format!("{}K", bytes >> 10), &image]);
    }

    /// The whole image, as `rbd export` reads it (independently of vblkd).
    pub fn export(&self, name: &str) -> Vec<u8> {
        let image = format!("{POOL}/{name}");
        self.rbd(&["export", "--no-progress", &image, "-"])
    }

    /// Kills the OSD at once, as a crash would.
    pub fn kill_osd(&mut self) {
        if let Some(mut osd) = self.osd.take() {
            osd.kill().unwrap();
            osd.wait().unwrap();
        }
    }

    /// Starts the OSD (again).
    pub fn start_osd(&mut self) {
        let args = ["-c", self.conf.to_str().unwrap(), "-i", "0", "-f"];
        self.osd = Some(spawn("ceph-osd", &args, &self.dir.join("osd.out")));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_osd();
        let _ = self.mon.kill();
        let _ = self.mon.wait();
    }
}
