//! Rebuilding each group's durable raft state from the segments, and repairing a torn tail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ostrakon_raft::{Entry, GroupId, HardState, LogIndex, SnapshotMeta};

use super::record::{decode, Frame, Record, FRAME_HEADER_BYTES};
use super::WalError;

/// One group's state as the WAL holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoveredGroup {
    /// The last persisted term, vote and commit.
    pub hard_state: HardState,
    /// The latest snapshot the log starts after, if any was recorded.
    pub snapshot: Option<SnapshotMeta>,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Set when entries resumed after a hole (their predecessors were in deleted
    /// segments): a later snapshot record must cover everything below this index.
    missing_below: Option<LogIndex>,
}

impl RecoveredGroup {
    fn last_index(&self) -> LogIndex {
        self.entries
            .last()
            .map(|e| e.index)
            .or(self.snapshot.as_ref().map(|s| s.index))
            .unwrap_or(LogIndex(0))
    }

    /// Applies one record in log order.
    pub(super) fn apply(&mut self, record: Record) {
        match record {
            Record::HardState(_, state) => self.hard_state = state,
            Record::Snapshot(_, meta) => {
                if self
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| s.index >= meta.index)
                {
                    // A segment's opening repeat of a snapshot already applied.
                    return;
                }
                // Raft's rule on installing a snapshot: keep the suffix only if the log
                // matches at the snapshot's index (or resumes right after it, where the
                // entries before were in deleted segments); otherwise discard the log.
                let matches = self
                    .entries
                    .iter()
                    .any(|e| e.index == meta.index && e.term == meta.term)
                    || self
                        .entries
                        .first()
                        .is_some_and(|e| e.index.0 == meta.index.0 + 1);
                if matches {
                    self.entries.retain(|e| e.index > meta.index);
                } else {
                    self.entries.clear();
                }
                self.snapshot = Some(meta);
            }
            Record::Entries(_, mut entries) => {
                let Some(first) = entries.first().map(|e| e.index) else {
                    return;
                };
                if first.0 > self.last_index().0 + 1 {
                    // The segments holding the entries in between were deleted, which is
                    // only allowed once a snapshot covers them; `finish` checks that.
                    self.entries.clear();
                    self.missing_below = Some(self.missing_below.map_or(first, |m| m.max(first)));
                }
                let snapshot_index = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.index);
                entries.retain(|e| e.index > snapshot_index);
                if let Some(first) = entries.first().map(|e| e.index) {
                    self.entries.retain(|e| e.index < first);
                    self.entries.extend(entries);
                }
            }
            Record::Forget(_) | Record::Sync(_) => {
                unreachable!("`replay` keeps them from groups")
            }
        }
    }

    /// Checks, after every segment was replayed, that no hole is left in the log.
    pub(super) fn finish(&self, group: GroupId, dir: &Path) -> Result<(), WalError> {
        let Some(missing_below) = self.missing_below else {
            return Ok(());
        };
        let snapshot_index = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.index);
        if snapshot_index.0 + 1 >= missing_below.0 {
            return Ok(());
        }
        Err(WalError::Corrupt {
            segment: dir.to_path_buf(),
            offset: 0,
            reason: format!(
                "group {group} is missing entries {}..{missing_below}: a segment was lost",
                snapshot_index.0 + 1
            ),
        })
    }
}

/// What reading one segment found.
pub(super) struct SegmentScan {
    /// The valid records, in log order.
    pub records: Vec<Record>,
    /// Bytes of valid frames: where the segment's records end (zeros may follow, filled
    /// ahead of writes); the file is truncated to this if the tail was torn.
    pub valid_bytes: u64,
    /// Whether bytes after `valid_bytes` were discarded.
    pub torn: bool,
    /// The torn bytes: from `valid_bytes` to the last byte that is not zero.
    pub torn_bytes: u64,
}

/// Reads a segment. Zeros after the last record are the end of its data (a segment is
/// zero-filled ahead of its writes). A bad frame is a torn tail only in the last segment,
/// and only if what follows it can be the rest of the write that was in flight:
///
/// - The write in flight was not synced, so never acknowledged. Written over zeros in
///   place, its pages may reach the disk in any order: valid frames of that write can
///   follow a bad one. They cannot be of a later write, which starts only once the one
///   before is synced. So in a segment whose writes begin with a [`Record::Sync`], the
///   tail is torn unless a valid `Sync` numbered above the last one before the bad frame
///   follows it: then the bad frame was synced, and the disk lost acknowledged data.
/// - Before any `Sync` (a segment written by an earlier version, appended to the file's
///   end), any valid frame after a bad one means lost acknowledged data.
pub(super) fn scan_segment(path: &Path, is_last: bool) -> Result<SegmentScan, WalError> {
    let data = std::fs::read(path).map_err(|e| WalError::Io(path.to_path_buf(), e))?;
    // Nothing is written past the last byte that is not zero.
    let written = data
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1);
    let mut offset = 0usize;
    let mut records = Vec::new();
    let mut last_sync = None;
    while offset < written {
        match decode(&data[offset..]) {
            Frame::Record(record, len) => {
                if let Record::Sync(number) = record {
                    last_sync = Some(number);
                }
                records.push(record);
                offset += len;
            }
            Frame::Truncated | Frame::Corrupt(_)
                if is_last && !synced_frame_after(&data, offset, written, last_sync) =>
            {
                return Ok(SegmentScan {
                    records,
                    valid_bytes: offset as u64,
                    torn: true,
                    torn_bytes: (written - offset) as u64,
                });
            }
            Frame::Truncated => {
                return Err(corrupt(
                    path,
                    offset,
                    "a record is cut short before the log's end",
                ))
            }
            Frame::Corrupt(reason) => return Err(corrupt(path, offset, reason)),
        }
    }
    Ok(SegmentScan {
        records,
        // A record may end in zero bytes: its frame says where it ends.
        valid_bytes: offset as u64,
        torn: false,
        torn_bytes: 0,
    })
}

fn corrupt(path: &Path, offset: usize, reason: &str) -> WalError {
    WalError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
    }
}

/// Whether a frame after the bad one at `offset` shows that it was synced: a valid `Sync`
/// numbered above `last_sync` (a later write), or, before any `Sync`, any valid frame.
/// Frames start before `written` (a frame starts with its length, which is not zero).
/// Quadratic in the worst case, but it runs only once, on a damaged segment, at startup.
fn synced_frame_after(data: &[u8], offset: usize, written: usize, last_sync: Option<u64>) -> bool {
    (offset + 1..written.min(data.len().saturating_sub(FRAME_HEADER_BYTES))).any(|start| {
        match (decode(&data[start..]), last_sync) {
            (Frame::Record(Record::Sync(number), _), Some(last)) => number > last,
            (Frame::Record(..), None) => true,
            _ => false,
        }
    })
}

/// The segment files in `dir`, oldest first, with their sequence numbers.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::Io(dir.to_path_buf(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::Io(dir.to_path_buf(), e))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((seq, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Every group's state after replaying `records`.
pub(super) fn replay(groups: &mut HashMap<GroupId, RecoveredGroup>, records: Vec<Record>) {
    for record in records {
        let group = match &record {
            Record::Entries(g, _) | Record::HardState(g, _) | Record::Snapshot(g, _) => *g,
            Record::Forget(g) => {
                groups.remove(g);
                continue;
            }
            Record::Sync(_) => continue,
        };
        groups.entry(group).or_default().apply(record);
    }
}
