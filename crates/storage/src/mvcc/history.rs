//! Change events read back from the stored versions, for a watcher that starts in the
//! past or falls behind: the same events, in the same order, as were published live.

use bytes::Bytes;
use ostrakon_proto::mvccpb::{Event, KeyValue};

use super::events::{delete_event, put_event, History, RevisionEvents};
use super::keys::{key_prefix, split_versioned_key};
use super::store::{key_value, ReadView};
use super::value::StoredVersion;
use super::{MvccError, Revision};
use crate::fatal::engine;

impl ReadView {
    /// The events on keys in `[key, range_end)` (`range_end` empty: just `key`; `"\0"`: no
    /// upper bound) from revision `from` on, at most about `events_max` of them (whole
    /// revisions only, at least one).
    pub fn history(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: Revision,
        events_max: usize,
    ) -> Result<History, MvccError> {
        if from < self.compacted {
            return Err(MvccError::Compacted {
                compacted: self.compacted,
            });
        }
        let mut history = History {
            revisions: Vec::new(),
            covered: self.current,
        };
        if from > self.current || (!range_end.is_empty() && range_end != [0] && range_end <= key) {
            return Ok(history);
        }
        let low = key_prefix(key);
        let high = if range_end.is_empty() {
            let mut just_key = key_prefix(key);
            just_key.extend_from_slice(&[0xFF; 9]);
            std::ops::Bound::Included(just_key)
        } else if range_end == [0] {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(key_prefix(range_end))
        };
        // Each revision's events with their sub-revisions, put in write order at the end.
        let mut by_revision: std::collections::BTreeMap<Revision, Vec<(u32, Event)>> =
            Default::default();
        let mut events_held = 0usize;
        let mut limit = self.current;
        // The previous version of the key being scanned, while it is live.
        let mut previous: Option<(Vec<u8>, Option<KeyValue>)> = None;
        for item in self
            .kv
            .range::<Vec<u8>, _>((std::ops::Bound::Included(low), high))
        {
            let (stored_key, stored_value) = engine("reading history", item);
            let (user_key, revision) = split_versioned_key(&stored_key);
            if revision > self.current {
                // Written after the view's index was copied.
                continue;
            }
            let stored = StoredVersion::decode(&stored_value);
            let sub = stored.sub;
            let prev_kv = match previous.take() {
                Some((previous_key, live)) if previous_key == user_key => live,
                _ => None,
            };
            let user_key = Bytes::from(user_key);
            let live = (!stored.tombstone).then(|| key_value(user_key.clone(), revision, stored));
            if revision >= from && revision <= limit {
                let event = match &live {
                    Some(kv) => put_event(kv.clone(), prev_kv),
                    None => delete_event(user_key.clone(), revision, prev_kv),
                };
                by_revision.entry(revision).or_default().push((sub, event));
                events_held += 1;
                while events_held > events_max && by_revision.len() > 1 {
                    let (_, dropped) = by_revision.pop_last().expect("more than one revision");
                    events_held -= dropped.len();
                    limit = *by_revision.keys().next_back().expect("one revision left");
                    history.covered = limit;
                }
            }
            previous = Some((user_key.to_vec(), live));
        }
        history.revisions = by_revision
            .into_iter()
            .map(|(revision, mut events)| {
                events.sort_by_key(|(sub, _)| *sub);
                RevisionEvents {
                    revision,
                    previous: Revision(0),
                    events: events.into_iter().map(|(_, event)| event).collect(),
                }
            })
            .collect();
        Ok(history)
    }
}
