//! Fan-out of committed revisions' events to watchers.
//!
//! The store publishes each revision's events into one bounded broadcast channel per
//! group, shared by every watcher on the node: memory for buffered events is bounded by
//! the channel, whatever the number of watchers. A watcher that falls more than the bound
//! behind loses its place in the channel and catches up by reading the history back from
//! storage (see `ReadView::history`), so a slow watcher neither slows the others nor grows
//! the server's memory.

use std::sync::Arc;

use ostrakon_storage::mvcc::{EventSink, RevisionEvents};
use tokio::sync::broadcast;

/// Revisions buffered for watchers that are behind.
pub const REVISIONS_BUFFERED: usize = 1024;

/// Publishes a group's events into its broadcast channel.
pub struct BroadcastSink(pub broadcast::Sender<Arc<RevisionEvents>>);

impl EventSink for BroadcastSink {
    fn wants_events(&self) -> bool {
        self.0.receiver_count() > 0
    }

    fn publish(&self, events: RevisionEvents) {
        // No receiver left between the check and now: nothing to do.
        let _ = self.0.send(Arc::new(events));
    }
}
