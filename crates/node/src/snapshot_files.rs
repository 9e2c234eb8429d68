//! The snapshot files a node keeps, per range, known without listing the snapshot
//! directory: the directory is listed once at start, and the index follows every file
//! the event loop keeps or removes. A listing per snapshot taken or received, of a
//! directory holding a file or two per range, was a large part of a node's work at tens
//! of thousands of ranges.
//!
//! A file the index does not know (none should exist) is only never removed: the index
//! decides what to delete, never what to read.

use std::collections::{BTreeSet, HashMap};

use ostrakon_raft::{GroupId, LogIndex};

use crate::layout::Layout;

/// The snapshot files of every range here, by range.
pub struct SnapshotFiles {
    layout: Layout,
    held: HashMap<GroupId, BTreeSet<LogIndex>>,
}

impl SnapshotFiles {
    /// The files under `layout`'s snapshot directory now (`g<range>-<index>.snap`).
    pub fn scan(layout: &Layout) -> SnapshotFiles {
        let mut held: HashMap<GroupId, BTreeSet<LogIndex>> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&layout.snap) {
            for entry in entries.filter_map(|entry| entry.ok()) {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if let Some((group, index)) = parse_name(&name) {
                    held.entry(group).or_default().insert(index);
                }
            }
        }
        SnapshotFiles {
            layout: layout.clone(),
            held,
        }
    }

    /// `group`'s snapshot at `index` is on disk now (written or received): the newest
    /// file below it stays too (a stream of it may still be running), older ones go.
    pub fn kept(&mut self, group: GroupId, index: LogIndex) {
        let files = self.held.entry(group).or_default();
        files.insert(index);
        let below: Vec<LogIndex> = files.range(..index).copied().collect();
        for old in below.iter().rev().skip(1) {
            files.remove(old);
            let _ = std::fs::remove_file(self.layout.snapshot_file(group, *old));
        }
    }

    /// The index of `group`'s newest snapshot file here.
    pub fn newest(&self, group: GroupId) -> Option<LogIndex> {
        self.held.get(&group)?.last().copied()
    }

    /// `group` is gone from this node: every file of it goes.
    pub fn remove_all(&mut self, group: GroupId) {
        for index in self.held.remove(&group).unwrap_or_default() {
            let _ = std::fs::remove_file(self.layout.snapshot_file(group, index));
        }
    }
}

/// The range and index of a snapshot file's name, as `Layout::snapshot_file` makes it.
fn parse_name(name: &str) -> Option<(GroupId, LogIndex)> {
    let (group, index) = name
        .strip_prefix('g')?
        .strip_suffix(".snap")?
        .split_once('-')?;
    Some((GroupId(group.parse().ok()?), LogIndex(index.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_on_disk(layout: &Layout) -> BTreeSet<String> {
        std::fs::read_dir(&layout.snap)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn the_newest_snapshot_and_the_one_before_stay_and_the_rest_go() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(&layout.snap).unwrap();
        let (one, two) = (GroupId(1), GroupId(2));
        for (group, index) in [(one, 5), (one, 9), (two, 3)] {
            std::fs::write(layout.snapshot_file(group, LogIndex(index)), b"x").unwrap();
        }
        // Not a snapshot file: left alone.
        std::fs::write(layout.snap.join("incoming-g1-7.part"), b"x").unwrap();
        let mut files = SnapshotFiles::scan(&layout);
        std::fs::write(layout.snapshot_file(one, LogIndex(12)), b"x").unwrap();
        files.kept(one, LogIndex(12));
        let name = |group: GroupId, index: u64| {
            layout
                .snapshot_file(group, LogIndex(index))
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let expected: BTreeSet<String> = [
            name(one, 9),
            name(one, 12),
            name(two, 3),
            "incoming-g1-7.part".to_string(),
        ]
        .into_iter()
        .collect();
        assert_eq!(files_on_disk(&layout), expected);
        assert_eq!(files.newest(one), Some(LogIndex(12)));
        assert_eq!(files.newest(two), Some(LogIndex(3)));
        files.remove_all(one);
        assert_eq!(files.newest(one), None);
        let expected: BTreeSet<String> = [name(two, 3), "incoming-g1-7.part".to_string()]
            .into_iter()
            .collect();
        assert_eq!(files_on_disk(&layout), expected);
    }
}
