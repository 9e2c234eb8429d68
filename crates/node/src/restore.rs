//! Making a new cluster's member from a backup (`ostrakon snapshot restore`, as etcdutl's
//! `snapshot restore`): the backup's keys, revisions and leases, under the membership,
//! member ids and cluster id of the new `--initial-cluster`. Each member of the new
//! cluster is restored from the same file with its own name and data directory.
//!
//! A backup of a keyspace in ranges names where each range began; the restore makes the
//! same ranges, each with a raft group founded alike on every member (ids 2, 3, ... in
//! key order, as every member restores the same file), and a meta range that hands out
//! later ids and timestamps above the backup's revision.

use std::path::Path;
use std::sync::Arc;

use ostrakon_raft::{GroupId, InitialState};
use ostrakon_storage::backup::{self, RevisionBump};
use ostrakon_storage::mvcc::{AppliedState, MvccStore, FIRST_SPLIT_RANGE_ID};
use ostrakon_storage::snapshot::SnapshotInfo;

use crate::config::NodeConfig;
use crate::error::StartError;
use crate::event_loop::{bootstrap, founder_records, open_storage, seal_bootstrap};
use crate::identity::Identity;
use crate::layout::Layout;
use crate::{DEFAULT_GROUP, META_GROUP};

/// Writes a founding member's data directory from `backup_path` (etcd's format or ostrakon's
/// earlier one), its revision bumped as asked. Refuses a data directory that already
/// holds a member.
pub fn restore_backup(
    config: &NodeConfig,
    backup_path: &Path,
    bump: RevisionBump,
) -> Result<SnapshotInfo, StartError> {
    let layout = Layout::new(&config.data_dir);
    let member_dir = layout.wal.parent().expect("member/").to_path_buf();
    if member_dir.exists() {
        return Err(StartError::Inconsistent(format!(
            "data-dir {:?} exists; restore makes a new member",
            config.data_dir
        )));
    }
    // Check the file before creating anything.
    backup::read(backup_path).map_err(|e| StartError::Inconsistent(e.to_string()))?;
    let (mut wal, recovered, keyspace) = open_storage(&layout, config.store_settings)?;
    assert!(recovered.groups.is_empty(), "a new WAL holds no group");
    let store = Arc::new(MvccStore::open(
        &keyspace,
        DEFAULT_GROUP,
        crate::group_span(DEFAULT_GROUP),
    ));
    let initial = InitialState::bootstrap(config.voters());
    let applied = AppliedState {
        index: initial.snapshot.index,
        term: initial.snapshot.term,
        conf_state: initial.conf_state.clone(),
    };
    let (info, range_starts) = backup::restore(
        &store,
        backup_path,
        applied.clone(),
        founder_records(config),
        bump,
    )
    .map_err(|e| StartError::Inconsistent(e.to_string()))?;
    // The backup's ranges: each split off the last at its first key, at the bootstrap
    // position (the splits are part of the founding state, as the restored data is).
    let mut ranges = vec![(DEFAULT_GROUP, store)];
    for (offset, start) in range_starts.iter().enumerate() {
        let group = GroupId(FIRST_SPLIT_RANGE_ID + offset as u64);
        let (_, last) = ranges.last().expect("the first range");
        let right = last
            .split(
                &start.key,
                applied.index,
                applied.term,
                group,
                applied.clone(),
                start.by_hand,
            )
            .expect("a new cluster holds no state of the ranges split off");
        ranges.push((group, Arc::new(right)));
    }
    for (group, store) in &ranges {
        seal_bootstrap(&layout, &mut wal, store, *group, &initial)?;
    }
    // The meta range is new, as for any new cluster. It hands out ids after the restored
    // ranges', and timestamps above the restored revision: that may be a timestamp even
    // of one range (a keyspace that split and merged back), and this machine's clock
    // may be behind the one that handed it out.
    let meta_store = MvccStore::open(&keyspace, META_GROUP, crate::group_span(META_GROUP));
    let next_range_id = FIRST_SPLIT_RANGE_ID + range_starts.len() as u64;
    let above_revision = u64::try_from(info.revision.0).expect("a revision is positive") + 1;
    meta_store.seed_restored_meta(next_range_id, above_revision);
    bootstrap(config, &layout, &mut wal, &meta_store, META_GROUP)?;
    Identity {
        member_id: config.id,
        cluster_id: config.cluster_id,
        founder: true,
    }
    .store(&config.data_dir)?;
    Ok(info)
}
