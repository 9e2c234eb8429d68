//! The load other members serve for the ranges this member leads: each member reports,
//! every few seconds, the requests per second and a sample of the keys of the ranges
//! it served requests for without leading them (`load_split`), to their leader, which
//! keeps the latest report per member and range here. A split by load then reads the
//! range's rate on every member, not only on its leader: with clients spread over the
//! members, the leader alone sees a third of a three-member range's reads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ostrakon_raft::{GroupId, NodeId};

/// A report older than this no longer counts (a member that stopped serving the range,
/// or stopped reporting, adds nothing).
pub const REPORT_FRESH_FOR: Duration = Duration::from_secs(6);

struct Report {
    at: Instant,
    per_second: f64,
    sample: Vec<Vec<u8>>,
}

/// The latest reports, by range and member.
#[derive(Default)]
pub struct RemoteLoad {
    reports: Mutex<HashMap<GroupId, HashMap<NodeId, Report>>>,
}

/// A range's load on the other members, as their fresh reports say.
#[derive(Debug, Default, PartialEq)]
pub struct Load {
    /// Requests per second, summed over the members.
    pub per_second: f64,
    /// Each member's requests per second and key sample (the requests since its
    /// report before).
    pub samples: Vec<(f64, Vec<Vec<u8>>)>,
}

impl RemoteLoad {
    /// `from` served `per_second` requests of `group`, at the keys of `sample`.
    pub fn record(&self, from: NodeId, group: GroupId, per_second: f64, sample: Vec<Vec<u8>>) {
        let mut reports = self.reports.lock().unwrap();
        let report = Report {
            at: Instant::now(),
            per_second,
            sample,
        };
        reports.entry(group).or_default().insert(from, report);
    }

    /// The ranges with a fresh report (stale reports are forgotten).
    pub fn reported(&self) -> Vec<GroupId> {
        let mut reports = self.reports.lock().unwrap();
        reports.retain(|_, members| {
            members.retain(|_, report| report.at.elapsed() < REPORT_FRESH_FOR);
            !members.is_empty()
        });
        reports.keys().copied().collect()
    }

    /// `group`'s load on the other members, as their latest fresh reports say (each
    /// look of the leader reads them, until newer ones replace them).
    pub fn load(&self, group: GroupId) -> Load {
        let reports = self.reports.lock().unwrap();
        let mut load = Load::default();
        for report in reports.get(&group).into_iter().flat_map(|m| m.values()) {
            if report.at.elapsed() < REPORT_FRESH_FOR {
                load.per_second += report.per_second;
                load.samples
                    .push((report.per_second, report.sample.clone()));
            }
        }
        load
    }

    /// Forgets `group` (it split, or this member no longer leads it).
    pub fn forget(&self, group: GroupId) {
        self.reports.lock().unwrap().remove(&group);
    }
}

/// One sample of about `size` keys, sorted, from samples of members serving the given
/// rates: each member's share of it is its share of the rate, so a member with more
/// load weighs more where the range is cut.
pub fn weighted_sample(samples: &[(f64, Vec<Vec<u8>>)], size: usize) -> Vec<Vec<u8>> {
    let total: f64 = samples.iter().map(|(rate, _)| rate.max(0.0)).sum();
    let mut merged = Vec::new();
    if total <= 0.0 {
        return merged;
    }
    for (rate, keys) in samples {
        let share = ((rate.max(0.0) / total) * size as f64).round() as usize;
        // Evenly spaced picks from a uniform sample are a uniform sample.
        let take = share.min(keys.len());
        for i in 0..take {
            merged.push(keys[i * keys.len() / take].clone());
        }
    }
    merged.sort();
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|name| name.as_bytes().to_vec()).collect()
    }

    #[test]
    fn reports_sum_over_members_until_replaced_or_forgotten() {
        let load = RemoteLoad::default();
        let group = GroupId(7);
        load.record(NodeId(2), group, 100.0, keys(&["a", "b"]));
        load.record(NodeId(3), group, 50.0, keys(&["c"]));
        // A newer report replaces the member's last.
        load.record(NodeId(3), group, 60.0, keys(&["d"]));
        assert_eq!(load.reported(), vec![group]);
        let seen = load.load(group);
        assert_eq!(seen.per_second, 160.0);
        let mut samples = seen.samples;
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(
            samples,
            vec![(60.0, keys(&["d"])), (100.0, keys(&["a", "b"]))]
        );
        // Each look reads the same reports until newer ones come.
        assert_eq!(load.load(group).per_second, 160.0);
        load.forget(group);
        assert_eq!(load.load(group), Load::default());
        assert!(load.reported().is_empty());
    }

    #[test]
    fn a_busier_member_weighs_more_in_the_merged_sample() {
        let busy: Vec<Vec<u8>> = (0..64).map(|i| format!("b{i:02}").into_bytes()).collect();
        let quiet: Vec<Vec<u8>> = (0..64).map(|i| format!("q{i:02}").into_bytes()).collect();
        let merged = weighted_sample(&[(300.0, busy), (100.0, quiet)], 64);
        let from_busy = merged.iter().filter(|key| key[0] == b'b').count();
        assert_eq!(merged.len(), 64);
        assert_eq!(from_busy, 48, "three quarters of the load, of the sample");
        assert!(merged.windows(2).all(|pair| pair[0] <= pair[1]), "sorted");
        assert!(weighted_sample(&[(0.0, keys(&["a"]))], 64).is_empty());
    }
}
