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
//! The rate is the range's on every member: this member's (every write the range
//! applies, as its leader, and the reads it serves), and what the other members report
//! of the reads they serve (`remote_load`): each look, a member sends every range's
//! leader the rate and key sample of the ranges it served without leading them. The
//! cut is at the middle of the members' samples, each weighted by its member's rate.
//!
//! A range past its load splits only while another member's host has CPU to spare
//! (`--range-split-spare-cores`, half a core by default, as `host_cpu` measures it and
//! the peers' batches carry it): a split spreads load only if some member can take
//! half of it. Without one (members sharing one host's busy cores, or every host
//! busy) the two halves would cost more than the whole, each batching its writes apart
//! and every write taking its revision from the oracle, and gain nothing; the range
//! stays whole and the next look asks again (`ostrakon_load_splits_held_total`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ostrakon_proto::peer as pb;
use ostrakon_raft::{GroupId, NodeId};
use ostrakon_storage::mvcc::KeySpan;

use crate::handle::NodeHandle;
use crate::remote_load::weighted_sample;
use crate::DEFAULT_GROUP;

/// How often the node looks at the load of the ranges it leads.
const LOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long a load report to a range's leader may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Ranges in one load report at most (and taken from one at most).
pub(crate) const REPORT_RANGES_MAX: usize = 1_000;

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

/// Whether a member could take half of a range's load: one with at least
/// `min_spare_cores` idle (always at 0), as `most_spare_peer` reports the best of them.
pub fn a_member_could_take_load(
    most_spare_peer: Option<(NodeId, f64)>,
    min_spare_cores: f64,
) -> bool {
    min_spare_cores <= 0.0 || most_spare_peer.is_some_and(|(_, cores)| cores >= min_spare_cores)
}

/// How long a peer may go without a batch and still count as up to take load (its
/// figure stays fresh for longer: a member killed must not count for that long).
const PEER_SILENCE_MAX: Duration = Duration::from_secs(2);

/// The voter of `group` other than this member with the most CPU to spare, among those
/// that may lead it: heard from lately, not draining its leaderships, not being
/// removed (as spreading leaders picks them; the half a split makes may go to any).
fn most_spare_voter(handle: &NodeHandle, group: GroupId) -> Option<(NodeId, f64)> {
    // The incoming voters: one on its way out of a joint configuration takes nothing.
    let voters = handle.store(group).ok()?.applied().conf_state.voters;
    let registry = handle.store(DEFAULT_GROUP).ok();
    let (loads, liveness) = (handle.transport().loads(), handle.transport().liveness());
    let now = Instant::now();
    loads.most_spare_peer(now, |node| {
        voters.contains(&node)
            && node != handle.id()
            && !liveness.is_silent(node, PEER_SILENCE_MAX, now)
            && !loads.peer_draining(node, now)
            && !registry
                .as_ref()
                .is_some_and(|store| store.is_leaving_member(node))
    })
}

/// Looks at the load of the ranges this node leads until the node stops, splitting
/// those past `split_qps` while a peer has `min_spare_cores` to spare.
pub(crate) async fn run(handle: NodeHandle, split_qps: u64, min_spare_cores: f64) {
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
        let mut reports: HashMap<NodeId, Vec<pb::RangeLoad>> = HashMap::new();
        let mut groups = handle.range_work().served.take();
        groups.extend(handle.remote_load().reported());
        for group in groups {
            let (Ok(status), Ok(per_second), Ok(store)) = (
                handle.status(group),
                handle.requests_per_second(group),
                handle.store(group),
            ) else {
                continue;
            };
            let span = store.span();
            if group == crate::META_GROUP || span.is_none() {
                continue;
            }
            if !status.is_leader {
                handle.remote_load().forget(group);
                // Taken whatever happens next: the range's next request notices it again.
                let sample = handle.take_key_sample(group).unwrap_or_default();
                // Served here without leading it: the leader hears of it. (The rate counts
                // whole seconds: the first look after a quiet spell may see none yet.)
                let served = per_second > 0.0 || !sample.is_empty();
                if status.leader != NodeId::NONE && served {
                    reports
                        .entry(status.leader)
                        .or_default()
                        .push(pb::RangeLoad {
                            group: group.0,
                            per_second,
                            sample: sample.into_iter().map(Into::into).collect(),
                        });
                }
                continue;
            }
            // The sample covers the requests since the last look, hot or not (taking it
            // has the range's next request notice it again).
            let local_sample = handle.take_key_sample(group).unwrap_or_default();
            let remote = handle.remote_load().load(group);
            let total_per_second = per_second + remote.per_second;
            if resting.contains_key(&group) || total_per_second <= split_qps as f64 {
                continue;
            }
            let mut samples = remote.samples;
            samples.push((per_second, local_sample));
            let sample = weighted_sample(&samples, crate::request_rate::SAMPLED_KEYS);
            if sample.len() < SAMPLE_MIN {
                continue;
            }
            let Some(key) = split_key(&sample, &span) else {
                continue; // one hot key: no split spreads it
            };
            let most_spare_peer = most_spare_voter(&handle, group);
            if !a_member_could_take_load(most_spare_peer, min_spare_cores) {
                crate::metrics::metrics().load_splits_held.inc();
                tracing::debug!(
                    group = group.0,
                    per_second = total_per_second,
                    ?most_spare_peer,
                    min_spare_cores,
                    "a range past its load stays whole: no member has CPU to spare"
                );
                continue;
            }
            match handle.split_range(&key, false).await {
                Ok((left, right)) => {
                    tracing::info!(
                        left = left.0,
                        right = right.0,
                        per_second = total_per_second,
                        on_this_member = per_second,
                        split_qps,
                        key = %String::from_utf8_lossy(&key),
                        "split a range past its load"
                    );
                    handle.remote_load().forget(left);
                    handle.remote_load().forget(right);
                    resting.insert(left, Instant::now());
                    resting.insert(right, Instant::now());
                }
                Err(error) => {
                    tracing::debug!(group = group.0, %error, "splitting a range past its load failed; will retry")
                }
            }
        }
        // To every leader at once (a lost report only delays a split: the next look
        // reports again), the busiest ranges first and at most `REPORT_RANGES_MAX`.
        let sends = reports.into_iter().map(|(leader, mut ranges)| {
            ranges.sort_by(|a, b| b.per_second.total_cmp(&a.per_second));
            ranges.truncate(REPORT_RANGES_MAX);
            let transport = handle.transport().clone();
            async move {
                let report = transport.report_load(leader, ranges);
                match tokio::time::timeout(REPORT_TIMEOUT, report).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(leader = leader.0, %error, "load report failed")
                    }
                    Err(_) => tracing::debug!(leader = leader.0, "load report timed out"),
                }
            }
        });
        futures_util::future::join_all(sends).await;
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
    fn a_split_by_load_waits_for_a_member_with_cores_to_spare() {
        let peer = |cores: f64| Some((NodeId(2), cores));
        assert!(a_member_could_take_load(peer(0.5), 0.5));
        assert!(a_member_could_take_load(peer(3.0), 0.5));
        assert!(!a_member_could_take_load(peer(0.49), 0.5));
        assert!(
            !a_member_could_take_load(None, 0.5),
            "no figure: none to spare"
        );
        // At 0 the members' CPU is not asked.
        assert!(a_member_could_take_load(None, 0.0));
        assert!(a_member_could_take_load(peer(0.0), 0.0));
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
