//! The file system on a real FUSE mount (as root, as CI runs): data written and synced
//! survives a power cut (kill -9 of the file system's process and a new mount), data
//! written and not synced does not, and metadata changes do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Mount {
    child: Child,
    mountpoint: PathBuf,
}

impl Mount {
    fn start(backing: &Path, mountpoint: &Path) -> Mount {
        let child = Command::new(env!("CARGO_BIN_EXE_ostrakon-lazyfs"))
            .arg(backing)
            .arg(mountpoint)
            .spawn()
            .expect("ostrakon-lazyfs starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(mountpoint) {
            assert!(
                Instant::now() < deadline,
                "not mounted within 10 s (is /dev/fuse there?)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount {
            child,
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    /// A power cut: the process holding the unsynced data dies.
    fn cut_power(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount(&self.mountpoint);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount(&self.mountpoint);
    }
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = mountpoint.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted) && line.contains("ostrakon-lazyfs"))
}

/// A backing directory and a mountpoint in a new temporary directory.
fn directories() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mountpoint).unwrap();
    let mountpoint = mountpoint.canonicalize().unwrap();
    (dir, backing, mountpoint)
}

fn unmount(mountpoint: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .stderr(std::process::Stdio::null())
        .status();
}

#[test]
fn a_power_cut_loses_what_was_not_synced_and_keeps_what_was() {
    let (_dir, backing, mountpoint) = directories();
    let mount = Mount::start(&backing, &mountpoint);

    let synced_data = vec![7u8; 10_000];
    let mut synced = std::fs::File::create(mountpoint.join("synced")).unwrap();
    synced.write_all(&synced_data).unwrap();
    synced.sync_data().unwrap();
    drop(synced);
    let mut unsynced = std::fs::File::create(mountpoint.join("unsynced")).unwrap();
    unsynced.write_all(b"gone after the cut").unwrap();
    drop(unsynced);
    let mut partly = std::fs::File::create(mountpoint.join("partly")).unwrap();
    partly.write_all(b"kept;").unwrap();
    partly.sync_all().unwrap();
    partly.write_all(b"lost").unwrap();
    drop(partly);
    std::fs::create_dir(mountpoint.join("dir")).unwrap();
    std::fs::rename(mountpoint.join("synced"), mountpoint.join("dir/moved")).unwrap();
    // Until the cut, every write reads back.
    assert_eq!(
        std::fs::read(mountpoint.join("dir/moved")).unwrap(),
        synced_data
    );
    assert_eq!(
        std::fs::read(mountpoint.join("unsynced")).unwrap(),
        b"gone after the cut"
    );
    assert_eq!(
        std::fs::read(mountpoint.join("partly")).unwrap(),
        b"kept;lost"
    );
    // The disk holds only what was synced.
    assert_eq!(std::fs::read(backing.join("unsynced")).unwrap(), b"");
    assert_eq!(std::fs::read(backing.join("partly")).unwrap(), b"kept;");

    mount.cut_power();
    let _mount = Mount::start(&backing, &mountpoint);
    assert_eq!(
        std::fs::read(mountpoint.join("dir/moved")).unwrap(),
        synced_data
    );
    assert_eq!(std::fs::read(mountpoint.join("unsynced")).unwrap(), b"");
    assert_eq!(std::fs::read(mountpoint.join("partly")).unwrap(), b"kept;");
}

#[test]
fn truncation_and_overwrites_are_cached_like_writes() {
    let (_dir, backing, mountpoint) = directories();
    std::fs::write(backing.join("file"), vec![1u8; 9000]).unwrap();
    let mount = Mount::start(&backing, &mountpoint);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(mountpoint.join("file"))
        .unwrap();
    file.set_len(100).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"xy", 8000).unwrap();
    drop(file);
    let now = std::fs::read(mountpoint.join("file")).unwrap();
    assert_eq!(now.len(), 8002);
    assert_eq!(&now[..100], &[1u8; 100][..]);
    assert!(
        now[100..8000].iter().all(|&b| b == 0),
        "truncated, then extended with zeros"
    );
    mount.cut_power();
    let _mount = Mount::start(&backing, &mountpoint);
    assert_eq!(
        std::fs::read(mountpoint.join("file")).unwrap(),
        vec![1u8; 9000]
    );
}
