//! Disks that lose power: each host's data directory on its own `ostrakon-lazyfs` mount
//! (crates/lazyfs), which keeps file data written and not yet synced in the memory of
//! its process. A power cut kills that process too: the unsynced data is gone, and the
//! members restart from what their disks really hold.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ChaosError;

/// How long a mount may take to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// One host's disk.
pub struct LazyDisk {
    binary: PathBuf,
    backing: PathBuf,
    /// Where the host's data directories live.
    pub mountpoint: PathBuf,
    process: Option<Child>,
}

/// Why power-loss cannot run here, if it cannot.
pub fn unavailable_reason(lazyfs: &Path) -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("power-loss needs FUSE (/dev/fuse)".into());
    }
    let fusermount = Command::new("fusermount3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !fusermount.is_ok_and(|s| s.success()) {
        return Some(
            "power-loss needs fusermount3: install Debian's fuse3 (scripts/install-test-tools.sh does)"
                .into(),
        );
    }
    if !lazyfs.exists() {
        return Some(format!(
            "power-loss needs {} next to the ostrakon binary: cargo build -p ostrakon-lazyfs",
            lazyfs.display()
        ));
    }
    None
}

impl LazyDisk {
    /// Mounts a fresh disk for `host` under `dir`.
    pub fn start(binary: &Path, dir: &Path, host: usize) -> Result<LazyDisk, ChaosError> {
        let root = dir.join(format!("disk{host}"));
        let backing = root.join("backing");
        let mountpoint = root.join("mnt");
        for path in [&backing, &mountpoint] {
            std::fs::create_dir_all(path).map_err(|e| ChaosError::Cluster(e.to_string()))?;
        }
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| ChaosError::Cluster(e.to_string()))?;
        let mut disk = LazyDisk {
            binary: binary.to_path_buf(),
            backing,
            mountpoint,
            process: None,
        };
        disk.mount()?;
        Ok(disk)
    }

    fn mount(&mut self) -> Result<(), ChaosError> {
        let process = Command::new(&self.binary)
            .arg(&self.backing)
            .arg(&self.mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ChaosError::Cluster(format!("{}: {e}", self.binary.display())))?;
        self.process = Some(process);
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while !is_mounted(&self.mountpoint) {
            if Instant::now() > deadline {
                return Err(ChaosError::Cluster(format!(
                    "{} was not mounted within {MOUNT_TIMEOUT:?}",
                    self.mountpoint.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn unmount(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The power fails and comes back: what was written and not synced is gone (the
    /// members using the disk must be dead already: their files are cut off).
    pub fn cut_power(&mut self) -> Result<(), ChaosError> {
        self.unmount();
        self.mount()
    }
}

impl Drop for LazyDisk {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(wanted) = mountpoint.to_str() else {
        return false;
    };
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted) && line.contains("ostrakon-lazyfs"))
}
