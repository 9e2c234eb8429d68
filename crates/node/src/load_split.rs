//! Splits by load (`--range-split-qps`, as CockroachDB splits a range by load): every few
//! seconds the node looks at the data ranges it leads that served requests since it last
//! looked (`range_work`); one that served more requests per
//! second on this member than the limit, averaged over the last 10 s (`request_rate`),
//! is split at the middle of the keys its requests were sampled at
//! (`RequestRate::take_key_sample`), so that each half takes about half of them. A
//! sample that cannot cut the range (every sampled request on its first key, say: one
//! hot key) leaves it whole. A range split by load, and the range it made, are left
//! alone for a window, while their rates are measured anew. One task per node.
//!
//! The rate is this member's: every write the range applies, as its leader, and the
//! reads this member serves. Reads served by the other members are not counted here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::KeySpan;

use crate::handle::NodeHandle;
use crate::DEFAULT_GROUP;

/// How often the node looks at the load of the ranges it leads.
const LOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long a range that split by load is left alone: its rate's window (the rate of the
/// range it kept still counts the half it gave away until then).
const SPLIT_COOLDOWN: Duration = Duration::from_secs(crate::request_rate::WINDOW_SECONDS);

/// Where to cut a range (`span`) whose requests were sampled at `sample` (sorted): the
/// median key, or the nearest sampled key after it, then before it, that falls strictly
/// inside the range (not its first key; a key sampled before a split moved it out does
/// not count). None if no sampled key can cut it.
///
/// A key that leaves less than a quarter of the sample on one side would not spread the
/// load: the range is left whole.
pub fn split_key(sample: &[Vec<u8>], span: &KeySpan) -> Option<Vec<u8>> {
    let middle = sample.len() / 2;
    let key = sample[middle..]
        .iter()
        .chain(sample[..middle].iter().rev())
        .find(|key| key.as_slice() > span.start() && span.contains(key))?;
    let below = sample.iter().filter(|sampled| *sampled < key).count();
    let balanced = below * 4 >= sample.len() && below * 4 <= sample.len() * 3;
    balanced.then(|| key.clone())
}

/// Fewer sampled requests than this say too little about where a range's load falls.
const SAMPLE_MIN: usize = 16;

/// Looks at the load of the ranges this node leads until the node stops, splitting
/// those past `split_qps`.
pub(crate) async fn run(handle: NodeHandle, split_qps: u64) {
    assert!(split_qps > 0, "splits by load are off at 0");
    let mut check = tokio::time::interval(LOAD_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resting: HashMap<GroupId, Instant> = HashMap::new();
    loop {
        check.tick().await;
        if handle.status(DEFAULT_GROUP).is_err() {
            return; // the node stopped
        }
        resting.retain(|_, since| since.elapsed() < SPLIT_COOLDOWN);
        for group in handle.range_work().served.take() {
            // The sample covers the requests since the last look, hot or not (taking it
            // has the range's next request notice it again).
            let (Ok(status), Ok(sample), Ok(per_second), Ok(store)) = (
                handle.status(group),
                handle.take_key_sample(group),
                handle.requests_per_second(group),
                handle.store(group),
            ) else {
                continue;
            };
            let span = store.span();
            if group == crate::META_GROUP || span.is_none() {
                continue;
            }
            if !status.is_leader || resting.contains_key(&group) || per_second <= split_qps as f64 {
                continue;
            }
            if sample.len() < SAMPLE_MIN {
                continue;
            }
            let Some(key) = split_key(&sample, &span) else {
                continue; // one hot key: no split spreads it
            };
            match handle.split_range(&key, false).await {
                Ok((left, right)) => {
                    tracing::info!(
                        left = left.0,
                        right = right.0,
                        per_second,
                        split_qps,
                        key = %String::from_utf8_lossy(&key),
                        "split a range past its load"
                    );
                    resting.insert(left, Instant::now());
                    resting.insert(right, Instant::now());
                }
                Err(error) => {
                    tracing::debug!(group = group.0, %error, "splitting a range past its load failed; will retry")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|name| name.as_bytes().to_vec()).collect()
    }

    fn from(start: &str) -> KeySpan {
        KeySpan::new(start.as_bytes().to_vec(), None)
    }

    #[test]
    fn the_split_key_is_the_sampled_median_strictly_inside_the_range() {
        let sample = keys(&["a", "b", "c", "d", "e"]);
        assert_eq!(split_key(&sample, &KeySpan::whole()), Some(b"c".to_vec()));
        // Never the range's first key: the next sampled key after the median instead.
        let sample = keys(&["m", "m", "m", "n", "p"]);
        assert_eq!(split_key(&sample, &from("m")), Some(b"n".to_vec()));
        // Before the median if nothing after it can cut.
        let sample = keys(&["m", "n", "q", "q", "q"]);
        assert_eq!(split_key(&sample, &from("q")), None);
        assert_eq!(split_key(&sample, &from("m")), Some(b"q".to_vec()));
        let sample = keys(&["k", "m", "m", "m"]);
        assert_eq!(split_key(&sample, &from("k")), Some(b"m".to_vec()));
        // Keys a split moved out of the range do not count.
        let narrowed = KeySpan::new(b"k".to_vec(), Some(b"n".to_vec()));
        assert_eq!(
            split_key(&keys(&["k", "l", "p", "q"]), &narrowed),
            Some(b"l".to_vec())
        );
        // A key leaving less than a quarter on one side spreads nothing.
        let lopsided = keys(&["m", "n", "n", "n", "n", "z"]);
        assert_eq!(split_key(&lopsided, &from("m")), None);
        // One hot key at the range's start, or no sample: no split.
        assert_eq!(split_key(&keys(&["m", "m"]), &from("m")), None);
        assert_eq!(split_key(&[], &KeySpan::whole()), None);
    }
}
