//! Fan-out of committed revisions' events to watchers.
//!
//! The store publishes each revision's events into one bounded broadcast channel per
//! group, shared by every watcher on the node: memory for buffered events is bounded by
//! the channel, whatever the number of watchers. A watcher that falls more than the bound
//! behind loses its place in the channel and catches up by reading the history back from
//! storage (see `ReadView::history`), so a slow watcher neither slows the others nor grows
//! the server's memory.
//!
//! A range's channel is made when its first watcher subscribes: its buffer is allocated
//! whole (tens of KiB), and a node holds many ranges that nobody watches.

use std::sync::{Arc, OnceLock};

use ostrakon_storage::mvcc::{EventSink, RevisionEvents};
use tokio::sync::broadcast;

/// Revisions buffered for watchers that are behind.
pub const REVISIONS_BUFFERED: usize = 1024;

/// A group's channel of committed revisions' events, made on first subscription.
#[derive(Default)]
pub struct RevisionChannel(OnceLock<broadcast::Sender<Arc<RevisionEvents>>>);

impl RevisionChannel {
    /// A receiver of every revision committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevisionEvents>> {
        self.0
            .get_or_init(|| broadcast::channel(REVISIONS_BUFFERED).0)
            .subscribe()
    }

    /// Whether its channel was ever made (a watcher subscribed).
    pub fn made(&self) -> bool {
        self.0.get().is_some()
    }
}

/// Publishes a group's events into its channel.
pub struct BroadcastSink(pub Arc<RevisionChannel>);

impl EventSink for BroadcastSink {
    fn wants_events(&self) -> bool {
        self.0
             .0
            .get()
            .is_some_and(|sender| sender.receiver_count() > 0)
    }

    fn publish(&self, events: RevisionEvents) {
        if let Some(sender) = self.0 .0.get() {
            // No receiver left between the check and now: nothing to do.
            let _ = sender.send(Arc::new(events));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_storage::mvcc::Revision;

    fn revision(at: i64) -> RevisionEvents {
        RevisionEvents {
            revision: Revision(at),
            previous: Revision(at - 1),
            events: Vec::new(),
        }
    }

    /// A range nobody watches has no channel (its buffer is never allocated) and asks
    /// for no events; its first watcher gets every revision from then on.
    #[test]
    fn the_channel_is_made_by_the_first_watcher() {
        let channel = Arc::new(RevisionChannel::default());
        let sink = BroadcastSink(channel.clone());
        assert!(!sink.wants_events());
        sink.publish(revision(2));
        assert!(!channel.made());
        let mut watcher = channel.subscribe();
        assert!(channel.made());
        assert!(sink.wants_events());
        sink.publish(revision(3));
        assert_eq!(watcher.try_recv().unwrap().revision, Revision(3));
        assert!(
            watcher.try_recv().is_err(),
            "nothing from before it subscribed"
        );
        drop(watcher);
        assert!(!sink.wants_events(), "no receiver left");
    }
}
