//! `ostrakon-lazyfs BACKING MOUNTPOINT`: a FUSE file system over the directory BACKING
//! that behaves like a disk with a volatile write cache, for the chaos harness's
//! power-loss nemesis (as LazyFS does for etcd's robustness tests).
//!
//! File data written through the mount is kept in this process's memory until the file
//! is fsync'd (or fdatasync'd): only then does it reach BACKING. Reads see the unsynced
//! data. Killing this process is a power cut: everything written since the last fsync of
//! each file is gone, and a new mount shows BACKING as the disk kept it. kill -9 of the
//! processes using the mount, without killing this one, loses nothing: the cache
//! survives them, as the kernel's page cache survives a process.
//!
//! Metadata operations (create, mkdir, rename, unlink, rmdir, truncation by open) go to
//! BACKING at once, as a journaling file system commits them in order: what a power cut
//! loses is file data that was never synced, the failure that breaks databases that
//! rename or append without an fsync.

mod fs;

use std::path::PathBuf;

use anyhow::{bail, Context};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backing, mountpoint] = args.as_slice() else {
        bail!("usage: ostrakon-lazyfs BACKING MOUNTPOINT");
    };
    let backing = PathBuf::from(backing)
        .canonicalize()
        .with_context(|| format!("backing directory {backing}"))?;
    let filesystem = fs::LazyFs::new(backing);
    let options = [
        fuser::MountOption::FSName("ostrakon-lazyfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    fuser::mount2(filesystem, mountpoint, &options)
        .with_context(|| format!("mounting on {mountpoint}"))?;
    Ok(())
}
