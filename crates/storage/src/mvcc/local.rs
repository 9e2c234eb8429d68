//! A range's local state: its applied position, revision counters, membership, leases
//! and the cluster-wide tables it holds, as keys of the node's one `local` partition
//! under a prefix of the range's id.
//!
//! One partition for every range, not one per range: a fjall partition has its own
//! memtable, journal share and files, which a node holding many thousands of ranges
//! cannot afford (TiKV and CockroachDB keep range-local state under a key prefix for the
//! same reason). The prefix is the range's id, big-endian, so a range's keys are
//! contiguous and a snapshot's install replaces exactly them.

use fjall::{Batch, Keyspace, PartitionCreateOptions, PartitionHandle, Slice};
use ostrakon_raft::GroupId;

use crate::fatal::engine;

/// The partition every range's local state shares.
pub const LOCAL_PARTITION: &str = "local";

/// One range's keys in the `local` partition; each is addressed by a name that is unique
/// within the range.
pub(crate) struct LocalState {
    partition: PartitionHandle,
    prefix: [u8; 8],
}

impl LocalState {
    pub(crate) fn open(keyspace: &Keyspace, group: GroupId) -> LocalState {
        let partition = engine(
            "opening a partition",
            keyspace.open_partition(LOCAL_PARTITION, PartitionCreateOptions::default()),
        );
        LocalState {
            partition,
            prefix: group.0.to_be_bytes(),
        }
    }

    fn key(&self, name: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + name.len());
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(name);
        key
    }

    pub(crate) fn get(&self, name: impl AsRef<[u8]>) -> Option<Slice> {
        engine(
            "reading local state",
            self.partition.get(self.key(name.as_ref())),
        )
    }

    pub(crate) fn insert(
        &self,
        batch: &mut Batch,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) {
        batch.insert(&self.partition, self.key(name.as_ref()), value.as_ref());
    }

    pub(crate) fn remove(&self, batch: &mut Batch, name: impl AsRef<[u8]>) {
        batch.remove(&self.partition, self.key(name.as_ref()));
    }

    /// Every (name, value) whose name starts with `name_prefix`, in name order.
    pub(crate) fn scan(&self, name_prefix: &[u8]) -> Vec<(Vec<u8>, Slice)> {
        self.partition
            .snapshot()
            .prefix(self.key(name_prefix))
            .map(|item| {
                let (key, value) = engine("reading local state", item);
                (key[self.prefix.len()..].to_vec(), value)
            })
            .collect()
    }

    /// Every group with state in the keyspace's local partition, in id order: one seek
    /// per group, not a scan of every key.
    pub(crate) fn stored_groups(keyspace: &Keyspace) -> Vec<GroupId> {
        let partition = engine(
            "opening a partition",
            keyspace.open_partition(LOCAL_PARTITION, PartitionCreateOptions::default()),
        );
        let snapshot = partition.snapshot();
        let mut groups = Vec::new();
        let mut from = 0u64;
        loop {
            let next = snapshot
                .range(from.to_be_bytes().to_vec()..)
                .next()
                .map(|item| engine("reading local state", item).0);
            let Some(key) = next else {
                return groups;
            };
            let id = u64::from_be_bytes(key[..8].try_into().expect("an 8-byte prefix"));
            groups.push(GroupId(id));
            match id.checked_add(1) {
                Some(after) => from = after,
                None => return groups,
            }
        }
    }

    /// The partition, for what concerns it whole (its size, its compaction).
    pub(crate) fn partition(&self) -> &PartitionHandle {
        &self.partition
    }
}
