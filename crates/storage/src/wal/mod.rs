//! One write-ahead log per node, shared by every raft group on it.
//!
//! The log is a directory of segment files, `0000000000000001.wal` and so on. Callers
//! stage records from many groups ([`Wal::append_entries`], [`Wal::set_hard_state`],
//! [`Wal::set_snapshot`]) and make them durable together with one write and one
//! `fdatasync` ([`Wal::sync`]): group commit. A segment that grows past
//! `segment_bytes_max` is closed; the next one starts with every group's snapshot and hard
//! state, so that a segment whose entries are all covered by snapshots can be deleted.
//!
//! Recovery ([`Wal::open`]) replays every segment. A torn tail (a frame cut short or
//! garbled at the end of the last segment) is truncated away; damage anywhere else stops
//! the node with [`WalError::Corrupt`], because acknowledged data would be missing.
//! A failed `fsync` ends the process ([`crate::fatal`]).
//!
//! A segment is zero-filled ahead of its writes, a chunk at a time
//! ([`ZERO_CHUNK_BYTES`]), as PostgreSQL fills its WAL segments: a record then lands in
//! blocks the file already has, so its `fdatasync` writes the data and no metadata (the
//! file's size and block map). On this machine's ext4 that makes a sync about 30 %
//! cheaper in both time and CPU (docs/PERFORMANCE.md). The chunk's own zeros go to disk
//! with the next sync. The zeros after the last record are the end of a segment's data,
//! never a record: a frame header of zeros does not decode.

mod record;
mod recover;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ostrakon_raft::{Entry, GroupId, HardState, LogIndex, SnapshotMeta};

pub use record::{Record, FRAME_HEADER_BYTES};
pub use recover::RecoveredGroup;

use crate::fatal;

/// Default segment size, as etcd's.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// How far ahead of its writes a segment is zero-filled, at most (the segment size, if
/// smaller).
pub const ZERO_CHUNK_BYTES: u64 = 1024 * 1024;

/// Zeros written to fill a segment ahead of its records.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Why the WAL cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The operating system refused an operation.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// Acknowledged data is damaged; starting would lose it.
    #[error(
        "WAL segment {segment} is corrupt at byte {offset} ({reason}), before the log's \
         tail; refusing to start because acknowledged writes would be lost. Restore this \
         member from a peer (remove and re-add it) or from a backup"
    )]
    Corrupt {
        /// The damaged file.
        segment: PathBuf,
        /// Where in it.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

/// What the segments held when the WAL was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Each group's durable raft state.
    pub groups: HashMap<GroupId, RecoveredGroup>,
    /// Bytes cut off the end of the last segment (a write that never completed).
    pub torn_bytes_truncated: u64,
}

/// The segments' bookkeeping: which group entries each holds, to know when it can go.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// The highest entry index per group in this segment.
    last_index: HashMap<GroupId, LogIndex>,
}

/// The durable state of a group as the WAL last recorded it.
#[derive(Clone, Debug, Default)]
struct GroupState {
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
}

/// The node's write-ahead log.
pub struct Wal {
    dir: PathBuf,
    segment_bytes_max: u64,
    /// Oldest first; the last one is being written. Invariant: never empty.
    segments: BTreeMap<u64, Segment>,
    file: File,
    /// Where the current segment's records end (the next record goes there).
    file_bytes: u64,
    /// The current segment's length: zeros from `file_bytes` on.
    zeroed_bytes: u64,
    /// Framed records staged since the last sync, after a `Sync` record numbered
    /// `next_sync`.
    staged: Vec<u8>,
    /// The number of the next write's `Sync` record: above every one in the log.
    next_sync: u64,
    staged_last_index: HashMap<GroupId, LogIndex>,
    groups: HashMap<GroupId, GroupState>,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and recovers every group's state.
    pub fn open(dir: &Path, segment_bytes_max: u64) -> Result<(Wal, Recovered), WalError> {
        assert!(segment_bytes_max > 0);
        std::fs::create_dir_all(dir).map_err(|e| WalError::Io(dir.to_path_buf(), e))?;
        let listed = recover::list_segments(dir)?;
        let mut recovered = Recovered::default();
        let mut segments = BTreeMap::new();
        let mut last_valid_bytes = 0;
        let mut next_sync = 1;
        let count = listed.len();
        for (position, (seq, path)) in listed.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let scan = recover::scan_segment(&path, is_last)?;
            if scan.torn {
                recovered.torn_bytes_truncated = scan.torn_bytes;
                truncate(&path, scan.valid_bytes)?;
                tracing::warn!(
                    segment = %path.display(),
                    bytes = recovered.torn_bytes_truncated,
                    "truncated a torn WAL tail (a write that never completed)"
                );
            }
            let mut last_index = HashMap::new();
            for record in &scan.records {
                if let Record::Sync(number) = record {
                    next_sync = next_sync.max(number + 1);
                }
                if let Record::Entries(group, entries) = record {
                    if let Some(last) = entries.last() {
                        let slot = last_index.entry(*group).or_insert(last.index);
                        *slot = (*slot).max(last.index);
                    }
                }
            }
            recover::replay(&mut recovered.groups, scan.records);
            last_valid_bytes = scan.valid_bytes;
            segments.insert(seq, Segment { path, last_index });
        }
        // A forgotten group's entries keep no segment.
        for segment in segments.values_mut() {
            segment
                .last_index
                .retain(|group, _| recovered.groups.contains_key(group));
        }
        for (group, state) in &recovered.groups {
            state.finish(*group, dir)?;
        }
        let groups = recovered
            .groups
            .iter()
            .map(|(id, g)| {
                let state = GroupState {
                    hard_state: g.hard_state,
                    snapshot: g.snapshot.clone(),
                };
                (*id, state)
            })
            .collect();
        let (file, file_bytes, zeroed_bytes) = match segments.iter().next_back() {
            Some((_, last)) => {
                let (file, len) = open_segment(&last.path)?;
                (file, last_valid_bytes, len)
            }
            None => {
                let path = segment_path(dir, 1);
                let (file, len) = open_segment(&path)?;
                sync_dir(dir);
                segments.insert(
                    1,
                    Segment {
                        path,
                        last_index: HashMap::new(),
                    },
                );
                (file, 0, len)
            }
        };
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segments,
            file,
            file_bytes,
            zeroed_bytes,
            staged: Vec::new(),
            next_sync,
            staged_last_index: HashMap::new(),
            groups,
        };
        // What was recovered may never have been synced (the process was killed between
        // a write and its sync; the page cache kept it): synced before the node acts on
        // any of it, and before a write numbered above it could reach the disk first
        // (recovery would then read the unsynced write, if torn, as acknowledged data
        // lost). And a crash in the middle of a rotation can leave the current segment
        // without the opening records that let the older ones go: every group's state
        // is written again.
        let current = wal.current_segment().path.clone();
        fdatasync(&wal.file, &current);
        wal.stage_every_group();
        wal.write_staged();
        Ok((wal, recovered))
    }

    /// Stages entries of `group`; they replace any staged or durable entries at the same
    /// or later indexes once synced.
    pub fn append_entries(&mut self, group: GroupId, entries: &[Entry]) {
        let Some(last) = entries.last() else { return };
        let slot = self.staged_last_index.entry(group).or_insert(last.index);
        *slot = (*slot).max(last.index);
        record::encode(&Record::Entries(group, entries.to_vec()), self.stage());
    }

    /// Stages the group's hard state.
    pub fn set_hard_state(&mut self, group: GroupId, state: HardState) {
        self.groups.entry(group).or_default().hard_state = state;
        record::encode(&Record::HardState(group, state), self.stage());
    }

    /// Stages a snapshot record: the group's log now starts after `meta.index`. The
    /// snapshot's data must already be durable.
    pub fn set_snapshot(&mut self, group: GroupId, meta: SnapshotMeta) {
        record::encode(&Record::Snapshot(group, meta.clone()), self.stage());
        self.groups.entry(group).or_default().snapshot = Some(meta);
    }

    /// Forgets a group gone from this node for good (a range merged into another): its
    /// records no longer keep segments, and recovery drops them. The group's state must
    /// be gone from the state machine first (durably), and it must write no more.
    pub fn forget_group(&mut self, group: GroupId) {
        record::encode(&Record::Forget(group), self.stage());
        self.groups.remove(&group);
        self.staged_last_index.remove(&group);
        for segment in self.segments.values_mut() {
            segment.last_index.remove(&group);
        }
    }

    /// The buffer to stage a record in: a write begins with its `Sync` record.
    fn stage(&mut self) -> &mut Vec<u8> {
        if self.staged.is_empty() {
            record::encode(&Record::Sync(self.next_sync), &mut self.staged);
        }
        &mut self.staged
    }

    /// Stages every group's snapshot and hard state (a segment's opening records).
    fn stage_every_group(&mut self) {
        let mut groups: Vec<_> = self.groups.iter().map(|(g, s)| (*g, s.clone())).collect();
        groups.sort_by_key(|(g, _)| *g);
        for (group, state) in groups {
            if let Some(meta) = state.snapshot {
                record::encode(&Record::Snapshot(group, meta), self.stage());
            }
            record::encode(&Record::HardState(group, state.hard_state), self.stage());
        }
    }

    /// Whether anything is staged.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Writes everything staged and makes it durable with one `fdatasync`. Exits the
    /// process if the disk fails: see [`crate::fatal`]. Returns the bytes written.
    pub fn sync(&mut self) -> u64 {
        let written = self.write_staged();
        if self.file_bytes >= self.segment_bytes_max {
            self.rotate();
        }
        self.delete_covered_segments();
        written
    }

    fn write_staged(&mut self) -> u64 {
        if self.staged.is_empty() {
            return 0;
        }
        let written = self.staged.len() as u64;
        let path = self.current_segment().path.clone();
        self.zero_fill_past(self.file_bytes + written, &path);
        if let Err(error) = self.file.write_all_at(&self.staged, self.file_bytes) {
            fatal::disk_failure(&format!("write to {}", path.display()), &error);
        }
        self.staged.clear();
        self.next_sync += 1;
        self.file_bytes += written;
        for (group, index) in self.staged_last_index.drain() {
            let segment = self.segments.values_mut().next_back().expect("never empty");
            let slot = segment.last_index.entry(group).or_insert(index);
            *slot = (*slot).max(index);
        }
        fdatasync(&self.file, &path);
        written
    }

    /// Zero-fills the segment up to the chunk boundary past `end`, if it is not that long
    /// yet. Not synced here: the sync that follows makes the zeros durable with the
    /// records written over them.
    fn zero_fill_past(&mut self, end: u64, path: &Path) {
        if end <= self.zeroed_bytes {
            return;
        }
        let chunk = ZERO_CHUNK_BYTES.min(self.segment_bytes_max).max(1);
        let target = end.div_ceil(chunk) * chunk;
        while self.zeroed_bytes < target {
            let bytes = (target - self.zeroed_bytes).min(ZEROS.len() as u64) as usize;
            if let Err(error) = self.file.write_all_at(&ZEROS[..bytes], self.zeroed_bytes) {
                fatal::disk_failure(&format!("zero-filling {}", path.display()), &error);
            }
            self.zeroed_bytes += bytes as u64;
        }
    }

    fn current_segment(&self) -> &Segment {
        self.segments.values().next_back().expect("never empty")
    }

    /// Starts a new segment that begins with every group's snapshot and hard state, so
    /// that older segments are needed only for their entries.
    fn rotate(&mut self) {
        let seq = self.segments.keys().next_back().expect("never empty") + 1;
        // The closed segment loses its zeros (not synced: recovery reads zeros after a
        // segment's records as its end either way).
        if let Err(error) = self.file.set_len(self.file_bytes) {
            tracing::warn!(%error, "could not trim a closed WAL segment's zeros");
        }
        let path = segment_path(&self.dir, seq);
        let (file, len) = open_segment(&path).unwrap_or_else(|e| match e {
            WalError::Io(_, io) => fatal::disk_failure("creating a WAL segment", &io),
            WalError::Corrupt { .. } => unreachable!("opening never reports corruption"),
        });
        sync_dir(&self.dir);
        self.file = file;
        self.file_bytes = 0;
        self.zeroed_bytes = len;
        self.segments.insert(
            seq,
            Segment {
                path,
                last_index: HashMap::new(),
            },
        );
        self.stage_every_group();
        self.write_staged();
    }

    /// Deletes the oldest closed segments whose entries every group has compacted away.
    fn delete_covered_segments(&mut self) {
        while self.segments.len() > 1 {
            let (&seq, oldest) = self.segments.iter().next().expect("len > 1");
            let covered = oldest.last_index.iter().all(|(group, index)| {
                self.groups
                    .get(group)
                    .and_then(|g| g.snapshot.as_ref())
                    .is_some_and(|s| s.index >= *index)
            });
            if !covered {
                return;
            }
            let path = oldest.path.clone();
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(%error, segment = %path.display(), "could not delete a WAL segment");
                return;
            }
            tracing::debug!(segment = %path.display(), "deleted a compacted WAL segment");
            self.segments.remove(&seq);
        }
    }

    /// How many segment files the WAL has.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Where the records of a segment's bytes end, walking their frames' lengths: the zeros
/// filled ahead of writes follow (what a tool that tears a tail must write over). Checks
/// no checksum; recovery does.
pub fn records_end(data: &[u8]) -> usize {
    let mut offset = 0;
    while let Some(header) = data.get(offset..offset + FRAME_HEADER_BYTES) {
        let payload_bytes = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        if payload_bytes == 0 {
            break;
        }
        offset += FRAME_HEADER_BYTES + payload_bytes as usize;
    }
    offset.min(data.len())
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.wal"))
}

/// Opens a segment for positional writes; returns it and its length.
fn open_segment(path: &Path) -> Result<(File, u64), WalError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| WalError::Io(path.to_path_buf(), e))?;
    let len = file
        .metadata()
        .map_err(|e| WalError::Io(path.to_path_buf(), e))?
        .len();
    Ok((file, len))
}

fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::Io(path.to_path_buf(), e))?;
    file.set_len(len)
        .map_err(|e| WalError::Io(path.to_path_buf(), e))?;
    fdatasync(&file, path);
    Ok(())
}

fn fdatasync(file: &File, path: &Path) {
    if fatal::fsync_failpoint_armed() {
        let error = std::io::Error::other("failpoint OSTRAKON_FAILPOINT_FSYNC");
        fatal::disk_failure(&format!("fdatasync of {}", path.display()), &error);
    }
    if fatal::planted_wal_skips_fsync() {
        return;
    }
    if let Err(error) = file.sync_data() {
        fatal::disk_failure(&format!("fdatasync of {}", path.display()), &error);
    }
}

/// Makes a created or deleted file name durable.
fn sync_dir(dir: &Path) {
    match File::open(dir) {
        Ok(handle) => {
            if let Err(error) = handle.sync_all() {
                fatal::disk_failure(&format!("fsync of directory {}", dir.display()), &error);
            }
        }
        Err(error) => fatal::disk_failure(&format!("open of directory {}", dir.display()), &error),
    }
}

#[cfg(test)]
mod tests;
