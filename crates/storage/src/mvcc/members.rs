//! The member registry: every member's id, name and URLs, replicated through raft like
//! the data (etcd keeps the same in its `members` bucket). Raft's membership says who
//! votes; the registry says how to reach them and what to call them.

use std::collections::{BTreeMap, BTreeSet};

use ostrakon_proto::peer::{MemberAttributes, MemberPeerUrls, MemberRecord};
use ostrakon_raft::NodeId;
use prost::Message as _;

/// Meta-partition keys of member records: this prefix and the id, big-endian.
pub(crate) const MEMBER_KEY_PREFIX: &[u8] = b"member/";

/// A change to the registry, applied at one log index on every member alike.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberChange {
    /// Creates the member or changes its peer URLs.
    PeerUrls(MemberPeerUrls),
    /// Sets a registered member's name and client URLs (ignored if it is not registered).
    Attributes(MemberAttributes),
    /// Marks members removed (they left the raft membership); their ids never return.
    Remove(BTreeSet<NodeId>),
    /// Marks a registered member as leaving (MemberRemove began), or as staying again
    /// (MemberRemove failed); ignored if it is not registered or already removed.
    Leaving(NodeId, bool),
}

/// The registry as kept in memory; the store persists each record in the range's local state.
/// Invariant: a record marked removed keeps only its id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberRegistry {
    records: BTreeMap<u64, MemberRecord>,
}

impl MemberRegistry {
    /// The registry from stored (key, value) pairs of the range's local state.
    pub fn from_stored<'a>(items: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let records = items
            .into_iter()
            .filter(|(key, _)| key.starts_with(MEMBER_KEY_PREFIX))
            .map(|(_, value)| {
                let record = MemberRecord::decode(value).expect("a stored member record decodes");
                (record.id, record)
            })
            .collect();
        MemberRegistry { records }
    }

    /// A registry of these records.
    pub fn from_records(records: impl IntoIterator<Item = MemberRecord>) -> Self {
        MemberRegistry {
            records: records.into_iter().map(|r| (r.id, r)).collect(),
        }
    }

    /// Every member's record, in id order (removed members are not members).
    pub fn records(&self) -> Vec<MemberRecord> {
        self.records
            .values()
            .filter(|r| !r.removed)
            .cloned()
            .collect()
    }

    /// Every record including the removed members' marks, in id order: what a snapshot
    /// carries.
    pub fn all_records(&self) -> Vec<MemberRecord> {
        self.records.values().cloned().collect()
    }

    /// One member's record.
    pub fn get(&self, id: NodeId) -> Option<&MemberRecord> {
        self.records.get(&id.0).filter(|r| !r.removed)
    }

    /// Whether `id` was a member and has been removed.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.records.get(&id.0).is_some_and(|r| r.removed)
    }

    /// Whether MemberRemove began to take the member out (or did).
    pub fn is_leaving(&self, id: NodeId) -> bool {
        self.records
            .get(&id.0)
            .is_some_and(|r| r.leaving || r.removed)
    }

    /// Applies `change`; returns the records to store (`Some`) or delete (`None`), by
    /// storage key.
    pub fn apply(&mut self, change: &MemberChange) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut touched = Vec::new();
        match change {
            // A removed id never returns (etcd refuses it too); the change is void.
            MemberChange::PeerUrls(update) if self.is_removed(NodeId(update.id)) => {}
            MemberChange::PeerUrls(update) => {
                let record = self
                    .records
                    .entry(update.id)
                    .or_insert_with(|| MemberRecord {
                        id: update.id,
                        ..MemberRecord::default()
                    });
                record.peer_urls = update.peer_urls.clone();
                touched.push(update.id);
            }
            MemberChange::Attributes(attributes) => {
                let live = self.records.get_mut(&attributes.id).filter(|r| !r.removed);
                if let Some(record) = live {
                    record.name = attributes.name.clone();
                    record.client_urls = attributes.client_urls.clone();
                    touched.push(attributes.id);
                }
            }
            MemberChange::Leaving(id, leaving) => {
                let live = self.records.get_mut(&id.0).filter(|r| !r.removed);
                if let Some(record) = live {
                    if record.leaving != *leaving {
                        record.leaving = *leaving;
                        touched.push(id.0);
                    }
                }
            }
            MemberChange::Remove(ids) => {
                for id in ids {
                    let mark = MemberRecord {
                        id: id.0,
                        removed: true,
                        ..MemberRecord::default()
                    };
                    if self.records.insert(id.0, mark.clone()) != Some(mark) {
                        touched.push(id.0);
                    }
                }
            }
        }
        touched
            .into_iter()
            .map(|id| {
                let value = self.records.get(&id).map(|r| r.encode_to_vec());
                (member_key(id), value)
            })
            .collect()
    }
}

/// The local-state name of member `id`.
pub fn member_key(id: u64) -> Vec<u8> {
    let mut key = MEMBER_KEY_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_urls(id: u64, url: &str) -> MemberChange {
        MemberChange::PeerUrls(MemberPeerUrls {
            id,
            peer_urls: vec![url.to_string()],
        })
    }

    #[test]
    fn a_leaving_member_is_marked_until_it_stays_or_is_removed() {
        let mut registry = MemberRegistry::default();
        registry.apply(&peer_urls(7, "http://a:1"));
        assert!(!registry.is_leaving(NodeId(7)));
        assert_eq!(
            registry
                .apply(&MemberChange::Leaving(NodeId(7), true))
                .len(),
            1
        );
        assert!(registry.is_leaving(NodeId(7)) && !registry.is_removed(NodeId(7)));
        assert!(
            registry
                .apply(&MemberChange::Leaving(NodeId(7), true))
                .is_empty(),
            "already marked"
        );
        registry.apply(&MemberChange::Leaving(NodeId(7), false));
        assert!(
            !registry.is_leaving(NodeId(7)),
            "MemberRemove failed: it stays"
        );
        registry.apply(&MemberChange::Remove([NodeId(7)].into()));
        assert!(registry.is_leaving(NodeId(7)), "a removed member has left");
        assert!(registry
            .apply(&MemberChange::Leaving(NodeId(7), false))
            .is_empty());
        assert!(registry.is_leaving(NodeId(7)) && registry.is_removed(NodeId(7)));
        assert!(registry
            .apply(&MemberChange::Leaving(NodeId(8), true))
            .is_empty());
    }

    #[test]
    fn attributes_of_an_unknown_member_are_ignored() {
        let mut registry = MemberRegistry::default();
        let touched = registry.apply(&MemberChange::Attributes(MemberAttributes {
            id: 7,
            name: "gone".into(),
            client_urls: vec![],
        }));
        assert!(touched.is_empty());
        assert!(registry.records().is_empty());
    }

    #[test]
    fn peer_urls_create_then_attributes_fill_in_then_remove_forgets() {
        let mut registry = MemberRegistry::default();
        registry.apply(&peer_urls(7, "http://a:1"));
        registry.apply(&MemberChange::Attributes(MemberAttributes {
            id: 7,
            name: "a".into(),
            client_urls: vec!["http://a:2".into()],
        }));
        // A later peer URL change keeps the published attributes.
        let touched = registry.apply(&peer_urls(7, "http://a:3"));
        let record = registry.get(NodeId(7)).unwrap().clone();
        assert_eq!(record.name, "a");
        assert_eq!(record.peer_urls, vec!["http://a:3".to_string()]);
        assert_eq!(record.client_urls, vec!["http://a:2".to_string()]);
        assert_eq!(touched, vec![(member_key(7), Some(record.encode_to_vec()))]);
        let stored: Vec<(Vec<u8>, Vec<u8>)> = vec![(member_key(7), record.encode_to_vec())];
        let reloaded =
            MemberRegistry::from_stored(stored.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert_eq!(reloaded, registry);
        let touched = registry.apply(&MemberChange::Remove([NodeId(7)].into()));
        let mark = MemberRecord {
            id: 7,
            removed: true,
            ..MemberRecord::default()
        };
        assert_eq!(touched, vec![(member_key(7), Some(mark.encode_to_vec()))]);
        assert!(registry.records().is_empty());
        assert!(registry.get(NodeId(7)).is_none());
        assert!(registry.is_removed(NodeId(7)));
        assert!(!registry.is_removed(NodeId(8)), "never a member");
        assert_eq!(registry.all_records(), vec![mark]);
    }

    #[test]
    fn a_removed_id_stays_removed_through_reload_and_later_changes() {
        let mut registry = MemberRegistry::default();
        registry.apply(&peer_urls(7, "http://a:1"));
        registry.apply(&MemberChange::Remove([NodeId(7)].into()));
        // Neither new URLs nor attributes bring it back.
        assert!(registry.apply(&peer_urls(7, "http://a:9")).is_empty());
        assert!(registry
            .apply(&MemberChange::Attributes(MemberAttributes {
                id: 7,
                name: "back".into(),
                client_urls: vec![],
            }))
            .is_empty());
        assert!(registry.is_removed(NodeId(7)));
        // Removing again changes nothing to store.
        assert!(registry
            .apply(&MemberChange::Remove([NodeId(7)].into()))
            .is_empty());
        let stored: Vec<(Vec<u8>, Vec<u8>)> = registry
            .all_records()
            .iter()
            .map(|r| (member_key(r.id), r.encode_to_vec()))
            .collect();
        let reloaded =
            MemberRegistry::from_stored(stored.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert!(reloaded.is_removed(NodeId(7)));
        assert_eq!(reloaded, registry);
    }
}
