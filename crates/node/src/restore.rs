//! Making a new cluster's member from a backup (`ostrakon snapshot restore`, as etcdutl's
//! `snapshot restore`): the backup's keys, revisions and leases, under the membership,
//! member ids and cluster id of the new `--initial-cluster`. Each member of the new
//! cluster is restored from the same file with its own name and data directory.

use std::path::Path;
use std::sync::Arc;

use ostrakon_raft::InitialState;
use ostrakon_storage::backup::{self, RevisionBump};
use ostrakon_storage::mvcc::{AppliedState, MvccStore};
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
    let (mut wal, recovered, keyspace) = open_storage(&layout, config.store_memory)?;
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
    let info = backup::restore(&store, backup_path, applied, founder_records(config), bump)
        .map_err(|e| StartError::Inconsistent(e.to_string()))?;
    seal_bootstrap(&layout, &mut wal, &store, DEFAULT_GROUP, &initial)?;
    // The meta range is new, as for any new cluster.
    let meta_store = MvccStore::open(&keyspace, META_GROUP, crate::group_span(META_GROUP));
    bootstrap(config, &layout, &mut wal, &meta_store, META_GROUP)?;
    Identity {
        member_id: config.id,
        cluster_id: config.cluster_id,
        founder: true,
    }
    .store(&config.data_dir)?;
    Ok(info)
}
