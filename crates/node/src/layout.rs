//! Where a node keeps its data under `--data-dir`.

use std::path::{Path, PathBuf};

use ostrakon_raft::{GroupId, LogIndex};

/// Paths under the data directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The write-ahead log.
    pub wal: PathBuf,
    /// The fjall keyspace of the state machines.
    pub kv: PathBuf,
    /// Snapshot files.
    pub snap: PathBuf,
}

impl Layout {
    /// The layout under `data_dir` (as etcd, everything is under `member/`).
    pub fn new(data_dir: &Path) -> Layout {
        let member = data_dir.join("member");
        Layout {
            wal: member.join("wal"),
            kv: member.join("kv"),
            snap: member.join("snap"),
        }
    }

    /// The snapshot file of `group` at `index`.
    pub fn snapshot_file(&self, group: GroupId, index: LogIndex) -> PathBuf {
        self.snap.join(format!("g{}-{:016}.snap", group.0, index.0))
    }
}
