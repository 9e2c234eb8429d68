//! One watcher's revisions from several ranges (a watcher whose keys fall in more than
//! one range; docs/RANGES.md, "Watches across ranges").
//!
//! Such a watcher is served from storage, in rounds: each round takes a revision R from
//! the oracle, waits until every range it watches has applied every write at or below R
//! (the read-wait rule, as a read at R), reads each range's history of its keys from the
//! watcher's next revision, and sends what every range covers, merged in revision order:
//! a revision is released only once no range can still produce an event below it. So the
//! watcher gets each revision once, whole, in order, with no gap, as from one range.

use std::collections::BTreeMap;

use ostrakon_proto::mvccpb::Event;
use ostrakon_storage::mvcc::{History, Revision, RevisionEvents};

/// One range's history of a watcher's keys, read from a view of the range.
pub struct RangeHistory {
    /// What the view held from the watcher's next revision on.
    pub history: History,
    /// The view's current revision.
    pub current: Revision,
}

/// The revisions of `histories` (one per range, in key order) that every range covers
/// up to `resolved` (each range has applied every write at or below it), merged in
/// revision order, with the last revision they cover: `resolved`, or less where a
/// history was cut short (read on from the revision after it).
pub fn merge(histories: Vec<RangeHistory>, resolved: Revision) -> (Vec<RevisionEvents>, Revision) {
    let covered = histories
        .iter()
        .map(|range| {
            if range.history.covered >= range.current {
                // The whole history to the view's current revision; the range has no
                // write above it up to `resolved`, or the view is past `resolved`.
                resolved
            } else {
                range.history.covered.min(resolved)
            }
        })
        .min()
        .unwrap_or(resolved);
    let mut by_revision: BTreeMap<Revision, Vec<Event>> = BTreeMap::new();
    for range in histories {
        for revision in range.history.revisions {
            if revision.revision <= covered {
                // Ranges come in key order: a revision's events stay in key order.
                by_revision
                    .entry(revision.revision)
                    .or_default()
                    .extend(revision.events);
            }
        }
    }
    let merged = by_revision
        .into_iter()
        .map(|(revision, events)| RevisionEvents { revision, events })
        .collect();
    (merged, covered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_proto::mvccpb::KeyValue;

    fn revision(revision: i64, keys: &[&str]) -> RevisionEvents {
        let events = keys
            .iter()
            .map(|key| Event {
                kv: Some(KeyValue {
                    key: bytes::Bytes::from(key.to_string()),
                    mod_revision: revision,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        RevisionEvents {
            revision: Revision(revision),
            events,
        }
    }

    fn range(revisions: Vec<RevisionEvents>, covered: i64, current: i64) -> RangeHistory {
        RangeHistory {
            history: History {
                revisions,
                covered: Revision(covered),
            },
            current: Revision(current),
        }
    }

    fn shape(merged: &[RevisionEvents]) -> Vec<(i64, Vec<String>)> {
        merged
            .iter()
            .map(|r| {
                let keys = r
                    .events
                    .iter()
                    .map(|e| String::from_utf8(e.kv.as_ref().unwrap().key.to_vec()).unwrap())
                    .collect();
                (r.revision.0, keys)
            })
            .collect()
    }

    #[test]
    fn revisions_come_in_order_up_to_what_every_range_covers() {
        // The left range is quiet (current 10), the right one has applied past the
        // resolved revision 40: 50 waits for a later round.
        let left = range(vec![revision(5, &["a"])], 10, 10);
        let right = range(
            vec![
                revision(3, &["x"]),
                revision(30, &["y"]),
                revision(50, &["z"]),
            ],
            50,
            50,
        );
        let (merged, covered) = merge(vec![left, right], Revision(40));
        assert_eq!(covered, Revision(40));
        assert_eq!(
            shape(&merged),
            vec![
                (3, vec!["x".to_string()]),
                (5, vec!["a".to_string()]),
                (30, vec!["y".to_string()])
            ]
        );
    }

    #[test]
    fn a_history_cut_short_holds_every_range_back_to_it() {
        let left = range(vec![revision(5, &["a"]), revision(8, &["b"])], 8, 20);
        let right = range(vec![revision(7, &["x"]), revision(9, &["y"])], 30, 30);
        let (merged, covered) = merge(vec![left, right], Revision(40));
        assert_eq!(covered, Revision(8), "the left history stopped at 8");
        assert_eq!(
            shape(&merged),
            vec![
                (5, vec!["a".to_string()]),
                (7, vec!["x".to_string()]),
                (8, vec!["b".to_string()])
            ]
        );
    }

    #[test]
    fn one_revisions_events_from_several_ranges_go_out_together_in_key_order() {
        let left = range(vec![revision(6, &["a", "b"])], 9, 9);
        let right = range(vec![revision(6, &["x"])], 9, 9);
        let (merged, covered) = merge(vec![left, right], Revision(9));
        assert_eq!(covered, Revision(9));
        assert_eq!(
            shape(&merged),
            vec![(6, vec!["a".into(), "b".into(), "x".into()])]
        );
    }
}
