//! Real block devices for tests: a loop device over a file, and a slow disk made from one by
//! the kernel's block I/O throttling (a blkio cgroup), so that requests stay in flight long
//! enough for a test to stop, swap or kill the daemon under them. Both need root; a missing
//! prerequisite fails the test with a message saying what to do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A loop device (direct I/O) over a file, detached on drop.
pub struct Loop(PathBuf);

impl Loop {
    pub fn attach(file: &Path, sector_size: u32) -> Loop {
        let out = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--direct-io=on",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(file)
            .output()
            .expect("losetup (util-linux) runs");
        assert!(
            out.status.success(),
            "losetup failed (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// "MAJOR:MINOR", as the cgroup files name devices.
    fn device_number(&self) -> String {
        let name = self.0.file_name().unwrap().to_str().unwrap();
        std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("--detach")
            .arg(&self.0)
            .status();
    }
}

/// A cgroup that limits the I/O operations per second its processes may do on one device.
/// Processes left in it are moved back to the root group on drop, and the group removed.
pub struct Throttle {
    dir: PathBuf,
    root: PathBuf,
}

const V1_ROOT: &str = "/sys/fs/cgroup/blkio";
const V2_ROOT: &str = "/sys/fs/cgroup";

impl Throttle {
    pub fn new(dev: &Loop, iops: u32) -> Throttle {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vblkd-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let devno = dev.device_number();
        let v2 = std::fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "io"));
        let root = PathBuf::from(if v2 { V2_ROOT } else { V1_ROOT });
        assert!(
            root.exists(),
            "block I/O throttling needs the cgroup v1 blkio controller ({V1_ROOT}) or cgroup v2 \
             with the io controller; run the tests as root on a kernel with CONFIG_BLK_DEV_THROTTLING"
        );
        let dir = root.join(name);
        std::fs::create_dir(&dir).expect("create a blkio cgroup (needs root)");
        let throttle = Throttle { dir, root };
        if v2 {
            throttle.write("io.max", &format!("{devno} riops={iops} wiops={iops}"));
        } else {
            throttle.write(
                "blkio.throttle.read_iops_device",
                &format!("{devno} {iops}"),
            );
            throttle.write(
                "blkio.throttle.write_iops_device",
                &format!("{devno} {iops}"),
            );
        }
        throttle
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.dir.join(file), value)
            .unwrap_or_else(|e| panic!("cannot write {value:?} to {file}: {e}"));
    }

    /// Puts process `pid` (all its threads, and what they start later) under the limit.
    pub fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A file of `bytes` zeroes behind a loop device whose I/O is limited to `iops`, for a daemon
/// to serve with O_DIRECT. Keep the returned values alive as long as the disk is used.
pub struct SlowDisk {
    pub file: PathBuf,
    pub throttle: Throttle,
    pub dev: Loop,
}

impl SlowDisk {
    pub fn new(dir: &Path, bytes: u64, iops: u32) -> SlowDisk {
        let file = dir.join("slow.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let dev = Loop::attach(&file, 512);
        let throttle = Throttle::new(&dev, iops);
        SlowDisk {
            file,
            throttle,
            dev,
        }
    }

    pub fn path(&self) -> &str {
        self.dev.path()
    }
}
