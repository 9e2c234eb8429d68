//! Splits by size (`--range-max-bytes`): every few seconds the node looks at the data
//! ranges it leads that were past the limit after a change (`range_work`), and a range
//! whose live keys and values still hold more than the limit is split where the bytes
//! before the key are about half (`MvccStore`'s `middle_key`), through the same split
//! command an operator's `ostrakon ranges split` proposes. One task per node, not per
//! range; a range is looked at only while this node leads it.
//!
//! On by default (64 MiB; 0 turns it off).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::handle::NodeHandle;
use crate::DEFAULT_GROUP;

/// How often the node looks at the sizes of the ranges it leads.
const SIZE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Looks at the ranges this node leads until the node stops, splitting those past
/// `range_max_bytes`.
pub(crate) async fn run(handle: NodeHandle, range_max_bytes: u64) {
    assert!(range_max_bytes > 0, "splits by size are off at 0");
    let mut check = tokio::time::interval(SIZE_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ranges whose split failed: looked at again without a new change.
    let mut retry = BTreeSet::new();
    loop {
        check.tick().await;
        if handle.status(DEFAULT_GROUP).is_err() {
            return; // the node stopped
        }
        let mut noticed = handle.range_work().past_size.take();
        noticed.append(&mut retry);
        for group in noticed {
            let (Ok(status), Ok(store)) = (handle.status(group), handle.store(group)) else {
                continue;
            };
            // A range led elsewhere now is that node's to split (one led here again is
            // noticed again).
            if !status.is_leader || store.live_bytes() <= range_max_bytes {
                continue;
            }
            let view = store.read_view();
            let live_bytes = view.live_bytes();
            let Some(key) = view.middle_key() else {
                continue; // one key, larger than the limit: nothing to split
            };
            match handle.split_range(&key, false).await {
                Ok((left, right)) => tracing::info!(
                    left = left.0,
                    right = right.0,
                    live_bytes,
                    range_max_bytes,
                    "split a range past its size"
                ),
                Err(error) => {
                    tracing::debug!(group = group.0, %error, "splitting a range past its size failed; will retry");
                    retry.insert(group);
                }
            }
        }
    }
}
