//! Change events for watchers: what each revision changed, as the store publishes it when
//! it commits (`history.rs` reads the same events back from the stored versions).
//!
//! Within a revision, events are in key order, both live and read back, so a watcher sees
//! the same sequence whichever way its events reach it.

use bytes::Bytes;
use ostrakon_proto::mvccpb::{event::EventType, Event, KeyValue};

use super::Revision;

/// The events of one revision, each with the key's previous version where there was one.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionEvents {
    /// The revision.
    pub revision: Revision,
    /// The range's revision before this one, as the store publishes it live: a receiver
    /// that has seen less missed the revisions in between (a snapshot installed, say).
    /// `Revision(0)` when read back from history, where it is not known.
    pub previous: Revision,
    /// Its events, in key order.
    pub events: Vec<Event>,
}

/// Where a store publishes the events of each revision it commits.
pub trait EventSink: Send + Sync {
    /// Whether anybody listens (building events costs a read per changed key).
    fn wants_events(&self) -> bool;
    /// Called by the writer after the revision is committed and readable.
    fn publish(&self, events: RevisionEvents);
}

/// The event of a put: the new version and the one it replaced.
pub(crate) fn put_event(kv: KeyValue, prev_kv: Option<KeyValue>) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(kv),
        prev_kv,
    }
}

/// The event of a delete: etcd gives only the key and the deleting revision.
pub(crate) fn delete_event(key: Bytes, revision: Revision, prev_kv: Option<KeyValue>) -> Event {
    Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key,
            mod_revision: revision.0,
            ..KeyValue::default()
        }),
        prev_kv,
    }
}

/// Events read back from storage: every revision from the requested one up to `covered`.
#[derive(Debug, Default)]
pub struct History {
    /// Revisions with events in the range, ascending.
    pub revisions: Vec<RevisionEvents>,
    /// The last revision the history covers: the view's current one, unless `events_max`
    /// cut it short (then read on from `covered + 1`).
    pub covered: Revision,
}
