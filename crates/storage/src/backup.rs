//! Backup files of either kind, as `ostrakon snapshot status|restore` reads them: etcd's
//! (a bbolt database and its SHA-256, what `Maintenance.Snapshot` streams and etcd's own
//! backups are) and ostrakon's earlier format (a snapshot file, padded, and its SHA-256).

use std::path::Path;

use ostrakon_proto::peer as pb;

use crate::etcd_backup;
use crate::mvcc::{AppliedState, MvccStore, Revision};
use crate::snapshot::{self, RangeStart, SnapshotContent, SnapshotError, SnapshotInfo};

/// etcdutl's `--bump-revision` and `--mark-compacted`: a cluster restored from a backup
/// starts this many revisions past it, so that clients that saw later revisions before
/// the restore (Kubernetes' watch caches) never see revisions go backwards, and marks
/// everything before as compacted, so that they relist rather than watch from a
/// revision whose history is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevisionBump {
    /// Revisions added to the backup's.
    pub revisions: u64,
    /// Compact at the restored revision.
    pub mark_compacted: bool,
}

/// A revision at or above this is one of the oracle's timestamps (milliseconds since
/// 1970 shifted left by 18 bits: today's are near 2^58), never a count of writes.
pub const TIMESTAMP_REVISIONS_FROM: i64 = 1 << 50;

fn read_file(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    std::fs::read(path).map_err(|e| SnapshotError::Io(path.to_path_buf(), e))
}

/// Reads and checks a backup of either kind.
pub fn read(path: &Path) -> Result<SnapshotContent, SnapshotError> {
    let file = read_file(path)?;
    if etcd_backup::is_etcd_backup(&file) {
        let file_bytes = file.len() as u64;
        let (backup, status) = etcd_backup::read(&file, path)?;
        return Ok(SnapshotContent {
            info: SnapshotInfo {
                applied: AppliedState::default(),
                revision: backup.revision,
                compact_revision: backup.compact_revision,
                file_bytes,
            },
            items: backup.items,
            leases: backup.leases,
            tables: pb::SnapshotTables {
                members: Vec::new(),
                alarms: Vec::new(),
                auth: Some(backup.auth),
                oracle_bound: 0,
                span: None,
                oracle_revisions: false,
                txn_locks: Vec::new(),
                txn_outcomes: Vec::new(),
                ..Default::default()
            },
            crc32c: status.hash,
            range_starts: backup.range_starts,
        });
    }
    snapshot::parse_backup(path, file)
}

/// Replaces the store's content with a backup's data under a new identity: the applied
/// position, the membership and the member registry are the new cluster's (as etcdutl's
/// `snapshot restore` does); users and roles are kept, alarms are not. Returns what was
/// restored and where the backup's ranges after the first began (the caller splits the
/// store there: `MvccStore::split`).
pub fn restore(
    store: &MvccStore,
    path: &Path,
    applied: AppliedState,
    members: Vec<pb::MemberRecord>,
    bump: RevisionBump,
) -> Result<(SnapshotInfo, Vec<RangeStart>), SnapshotError> {
    let SnapshotContent {
        mut info,
        items,
        leases,
        tables,
        range_starts,
        ..
    } = read(path)?;
    if bump.revisions > 0 {
        info.revision = Revision(info.revision.0 + bump.revisions as i64);
    }
    if bump.mark_compacted {
        info.compact_revision = info.revision;
    }
    store.install(
        items,
        leases,
        pb::SnapshotTables {
            members,
            alarms: Vec::new(),
            auth: tables.auth,
            oracle_bound: 0,
            // The store's own span: a backup is restored into a new cluster's range.
            span: None,
            // One range, whose revisions count on from the backup's, until it is split
            // where the backup's ranges began (from then on from the oracle's); from the
            // oracle at once if the backup's revision is already one of its timestamps
            // (a keyspace that split and merged back): counted on from there, its
            // revisions would run ahead of a restored cluster's oracle, whose later
            // timestamps would then fall below them (found by review).
            oracle_revisions: info.revision.0 >= TIMESTAMP_REVISIONS_FROM,
            // A backup is of one range that never split: no transaction across ranges.
            txn_locks: Vec::new(),
            txn_outcomes: Vec::new(),
            ..Default::default()
        },
        info.revision,
        info.compact_revision,
        applied.clone(),
    );
    info.applied = applied;
    Ok((info, range_starts))
}

/// What `ostrakon snapshot status` reports about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// The file's CRC32C (its last four bytes).
    pub hash: u32,
    /// The store's revision in it.
    pub revision: i64,
    /// Stored versions (every revision of every key, up to compaction).
    pub total_versions: usize,
    /// Distinct live keys at the revision.
    pub total_keys: usize,
    /// The file's size.
    pub file_bytes: u64,
}

/// Reads and checks a backup (or snapshot file) and describes it; an etcd backup as
/// `etcdutl snapshot status` does.
pub fn status(path: &Path) -> Result<SnapshotStatus, SnapshotError> {
    let file = read_file(path)?;
    if etcd_backup::is_etcd_backup(&file) {
        let (backup, status) = etcd_backup::read(&file, path)?;
        return Ok(SnapshotStatus {
            hash: status.hash,
            revision: status.revision,
            total_versions: backup.items.len(),
            total_keys: status.total_keys,
            file_bytes: status.total_bytes,
        });
    }
    let content = snapshot::parse_backup(path, file)?;
    let hash = content.crc32c;
    let latest = crate::mvcc::latest::LatestIndex::build(
        content.info.revision,
        content.items.iter().map(|(k, v)| (k, v)),
    );
    Ok(SnapshotStatus {
        hash,
        revision: content.info.revision.0,
        total_versions: content.items.len(),
        total_keys: latest.live_keys(),
        file_bytes: content.info.file_bytes,
    })
}
