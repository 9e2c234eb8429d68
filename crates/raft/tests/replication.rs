//! Scenario tests of log replication and commitment (Raft paper 5.3, 5.4.2, Figures 7 and 8).

mod common;

use common::{id, Cluster};
use ostrakon_raft::*;

#[test]
fn a_proposal_commits_on_a_majority_and_applies_everywhere() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    cluster.propose(id(1), "b").unwrap();
    cluster.tick_all(2); // heartbeats carry the commit index to followers
    for n in 1..=3 {
        assert_eq!(cluster.applied_data(id(n)), vec!["a", "b"], "node {n}");
    }
}

#[test]
fn no_commit_without_a_majority() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.isolate(id(1));
    let proposal = cluster.propose(id(1), "lonely").unwrap();
    assert!(cluster.node(id(1)).commit() < proposal.index);
    assert!(cluster.applied_data(id(1)).is_empty());
}

#[test]
fn new_leader_appends_an_empty_entry_of_its_term() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(2));
    let last = cluster.node(id(2)).last_index();
    let entry = cluster.node(id(2)).log_entry(last).unwrap();
    assert_eq!(entry.payload, EntryPayload::Empty);
    assert_eq!(entry.term, cluster.node(id(2)).term());
    assert_eq!(cluster.node(id(2)).commit(), last, "and commits it at once");
}

#[test]
fn figure_8_a_leader_does_not_commit_an_old_term_entry_by_counting_replicas() {
    // Raft paper, Figure 8 and 5.4.2: "Raft never commits log entries from previous terms
    // by counting replicas. Only log entries from the leader's current term are committed
    // by counting replicas."
    let (mut cluster, x) = figure_8_until_old_entry_on_majority(|c| c.append_entries_max = 1);
    assert!(
        cluster.node(id(1)).commit() < x.index,
        "x must not be committed by counting replicas"
    );
    // (d) S1 crashes again; S5 can still win (its last term 3 beats term 2) and overwrite x,
    // which is safe precisely because x was never committed.
    cluster.down.insert(id(1));
    cluster.down.remove(&id(5));
    cluster.filter = None;
    cluster.crash_restart(id(5));
    cluster.node_mut(id(5)).force_campaign();
    cluster.stabilize();
    if cluster.node(id(5)).role() != Role::Leader {
        cluster.node_mut(id(5)).force_campaign();
        cluster.stabilize();
    }
    assert_eq!(cluster.node(id(5)).role(), Role::Leader);
    cluster.tick_all(3);
    for n in 2..=5 {
        assert_ne!(
            cluster.node(id(n)).log_term(x.index),
            Some(x.term),
            "x was overwritten on node {n}"
        );
        assert!(!cluster.applied_data(id(n)).contains(&"x".to_string()));
    }
}

#[cfg(feature = "planted-bugs")]
#[test]
fn figure_8_with_the_planted_bug_the_old_entry_is_committed_unsafely() {
    // The control: the same script with the Figure 8 mistake commits x, which S5 can
    // later overwrite. This proves the test above can fail.
    let (cluster, x) = figure_8_until_old_entry_on_majority(|c| {
        c.append_entries_max = 1;
        c.planted_bug = Some(PlantedBug::CommitPreviousTerm);
    });
    assert!(cluster.node(id(1)).commit() >= x.index);
}

/// Figure 8 (a)-(c): returns with S1 leading term 4 and x (term 2) on a majority.
fn figure_8_until_old_entry_on_majority(configure: fn(&mut Config)) -> (Cluster, Proposal) {
    let mut cluster = Cluster::with_config(5, configure);
    // (a) S1 leads term 2 and replicates "x" to S2 only.
    cluster.elect(id(1));
    for n in 3..=5 {
        cluster.isolate(id(n));
    }
    let x = cluster.propose(id(1), "x").unwrap();
    assert_eq!(cluster.node(id(2)).log_term(x.index), Some(x.term));
    // (b) S1 crashes; S5 is elected by S3, S4, S5 and appends an entry of its term at the
    // same index, but crashes before replicating it.
    cluster.heal();
    cluster.down.insert(id(1));
    cluster.filter = Some(Box::new(|m| {
        m.from == NodeId(5) && matches!(m.body, MessageBody::Append { .. })
    }));
    cluster.node_mut(id(5)).force_campaign();
    cluster.stabilize();
    assert_eq!(cluster.node(id(5)).role(), Role::Leader);
    assert_ne!(
        cluster.node(id(5)).log_term(x.index),
        Some(x.term),
        "S5 has its own entry at x's index"
    );
    cluster.down.insert(id(5));
    cluster.down.remove(&id(1));
    cluster.filter = None;
    // (c) S1 restarts and is elected for term 4. It replicates "x" (term 2) to S3, so "x"
    // sits on a majority (S1, S2, S3), but S1's own term-4 entry reaches no one.
    cluster.crash_restart(id(1));
    // S3 may see the first probe (it rejects it, lacking x) but no append beyond x; S4
    // sees nothing.
    let x_index = x.index;
    let probes_to_3 = std::cell::Cell::new(0);
    cluster.filter = Some(Box::new(move |m| match &m.body {
        MessageBody::Append { entries, .. }
            if m.to == NodeId(3) && entries.iter().any(|e| e.index > x_index) =>
        {
            probes_to_3.set(probes_to_3.get() + 1);
            probes_to_3.get() > 1
        }
        MessageBody::Append { .. } => m.to == NodeId(4),
        _ => false,
    }));
    cluster.node_mut(id(1)).force_campaign();
    cluster.stabilize();
    if cluster.node(id(1)).role() != Role::Leader {
        // The first campaign may only teach S1 the newer term; campaign again.
        cluster.node_mut(id(1)).force_campaign();
        cluster.stabilize();
    }
    assert_eq!(cluster.node(id(1)).role(), Role::Leader);
    let replicas = (1..=5)
        .filter(|&n| cluster.node(id(n)).log_term(x.index) == Some(x.term))
        .count();
    assert!(replicas >= 3, "x is on a majority ({replicas} nodes)");
    (cluster, x)
}

#[test]
fn figure_8_e_once_the_current_term_entry_commits_the_old_one_does_too() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.isolate(id(3));
    cluster.isolate(id(2));
    let x = cluster.propose(id(1), "x").unwrap();
    cluster.heal();
    cluster.isolate(id(3));
    // S1 re-elected in a later term replicates x and its own empty entry: both commit.
    cluster.crash_restart(id(1));
    cluster.elect(id(1));
    assert!(cluster.node(id(1)).commit() > x.index);
    assert_eq!(cluster.applied_data(id(1)), vec!["x"]);
}

#[test]
fn figure_7_followers_with_missing_and_extra_entries_converge() {
    // Figure 7: followers may lack entries, have extra uncommitted ones, or both; the
    // leader's consistency check finds the last match and overwrites the rest.
    let mut cluster = Cluster::new(5);
    cluster.elect(id(1));
    cluster.propose(id(1), "c1").unwrap();
    // Node 2 falls behind.
    cluster.isolate(id(2));
    for k in 0..5 {
        cluster.propose(id(1), &format!("behind{k}")).unwrap();
    }
    // Node 3 is elected by 3, 4, 5 and then cut off with extra entries no one else gets.
    cluster.isolate(id(1));
    cluster.elect(id(3));
    cluster.isolate(id(3));
    for k in 0..4 {
        cluster
            .node_mut(id(3))
            .propose(format!("extra{k}").into())
            .unwrap();
        cluster.stabilize();
    }
    // Node 4 is elected by 1, 2, 4, 5 while 3 is down, and writes more.
    cluster.heal();
    cluster.down.insert(id(3));
    cluster.elect(id(4));
    cluster.propose(id(4), "final").unwrap();
    cluster.down.remove(&id(3));
    cluster.tick_all(5);
    let reference = cluster.applied_data(id(4));
    assert!(reference.ends_with(&["final".to_string()]));
    assert!(!reference.iter().any(|d| d.starts_with("extra")));
    for n in 1..=5 {
        assert_eq!(cluster.applied_data(id(n)), reference, "node {n} converged");
        assert_eq!(
            cluster.node(id(n)).last_index(),
            cluster.node(id(4)).last_index()
        );
    }
}

#[test]
fn fast_backtracking_skips_a_whole_term_per_round_trip() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.isolate(id(1));
    for k in 0..50 {
        cluster
            .node_mut(id(1))
            .propose(format!("stale{k}").into())
            .unwrap();
        cluster.stabilize();
    }
    cluster.heal();
    cluster.isolate(id(1));
    cluster.elect(id(2));
    cluster.heal();
    cluster.delivered.clear();
    cluster.tick_all(3);
    let rejections = cluster
        .delivered
        .iter()
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::AppendResponse {
                    reject: Some(_),
                    ..
                }
            )
        })
        .count();
    assert!(
        rejections <= 2,
        "one term of 50 conflicting entries costs {rejections} rejections"
    );
    assert!(cluster
        .applied_data(id(1))
        .iter()
        .all(|d| !d.starts_with("stale")));
}

#[test]
fn pipelining_is_bounded_by_the_inflight_window() {
    let mut cluster = Cluster::with_config(3, |c| {
        c.inflight_msgs_max = 4;
        c.append_entries_max = 1;
    });
    cluster.elect(id(1));
    // Hold every append response so nothing frees the window.
    cluster.filter = Some(Box::new(|m| {
        matches!(m.body, MessageBody::AppendResponse { .. })
    }));
    cluster.delivered.clear();
    for k in 0..20 {
        cluster
            .node_mut(id(1))
            .propose(format!("p{k}").into())
            .unwrap();
    }
    cluster.stabilize();
    let appends_to_2 = cluster
        .delivered
        .iter()
        .filter(|m| {
            m.to == id(2)
                && matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty())
        })
        .count();
    assert_eq!(
        appends_to_2,
        4,
        "at most inflight_msgs_max appends in flight: {:?}",
        cluster.node(id(1)).status()
    );
    cluster.heal();
    cluster.tick_all(5);
    assert_eq!(cluster.applied_data(id(2)).len(), 20);
}

#[test]
fn leader_sends_appends_before_its_own_write_is_durable_but_counts_itself_after() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    let leader = cluster.node_mut(id(1));
    let proposal = leader.propose("a".into()).unwrap();
    let ready = leader.ready();
    assert!(ready
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Append { .. })));
    assert_eq!(ready.entries.last().unwrap().index, proposal.index);
    leader.advance();
    assert!(
        cluster.node(id(1)).commit() < proposal.index,
        "one durable copy is not a majority"
    );
}

#[test]
fn a_lost_rejection_of_an_empty_probe_is_retried_at_the_next_heartbeat() {
    // A learner added to an idle group gets an empty probe at the leader's last index;
    // it refuses (it has nothing), and that refusal is lost. The heartbeat's answer
    // must bring another probe, or the learner waits forever (found by the simulator,
    // seed 5459 once quiescence made idle groups common).
    use std::cell::Cell;
    use std::rc::Rc;
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "before").unwrap();
    cluster.add_empty_node(id(4));
    let dropped = Rc::new(Cell::new(false));
    let dropped_in_filter = dropped.clone();
    cluster.filter = Some(Box::new(move |m: &Message| {
        let refusal = m.from == id(4)
            && matches!(
                m.body,
                MessageBody::AppendResponse {
                    reject: Some(_),
                    ..
                }
            );
        if refusal && !dropped_in_filter.get() {
            dropped_in_filter.set(true);
            return true;
        }
        false
    }));
    cluster
        .node_mut(id(1))
        .propose_conf_change(ConfChange::Change(vec![ConfChangeStep::AddLearner(id(4))]))
        .unwrap();
    cluster.stabilize();
    assert!(dropped.get(), "the learner's first refusal was dropped");
    cluster.tick_all(3);
    assert_eq!(cluster.node(id(4)).commit(), cluster.node(id(1)).commit());
    assert_eq!(cluster.applied_data(id(4)), vec!["before"]);
}

#[test]
fn a_commit_known_elsewhere_applies_the_entries_a_follower_holds() {
    // A follower that holds an entry but never heard it committed (its leader is gone):
    // told of the commit by the application (a merge's left range), it applies up to
    // it; told of an entry it does not hold, or of another term's, it ignores it.
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    let commit_before = cluster.node(id(2)).commit();
    cluster.filter = Some(Box::new(|m: &Message| {
        m.to == id(2)
            && match &m.body {
                MessageBody::Append { entries, .. } => entries.is_empty(),
                _ => true,
            }
    }));
    let proposal = cluster.propose(id(1), "frozen").unwrap();
    cluster.stabilize();
    assert!(cluster.node(id(1)).commit() >= proposal.index);
    let follower = cluster.node_mut(id(2));
    assert!(
        follower.last_index() >= proposal.index,
        "it holds the entry"
    );
    assert_eq!(
        follower.commit(),
        commit_before,
        "but never heard it committed"
    );
    cluster.down.insert(id(1));
    let follower = cluster.node_mut(id(2));
    assert!(!follower.commit_known(proposal.index, Term(proposal.term.0 + 1)));
    assert!(!follower.commit_known(LogIndex(proposal.index.0 + 5), proposal.term));
    assert!(follower.commit_known(proposal.index, proposal.term));
    cluster.process(id(2));
    assert_eq!(cluster.applied_data(id(2)), vec!["frozen"]);
}

#[test]
fn the_compaction_floor_is_the_lowest_match_of_the_followers_that_keep_up() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    cluster.stabilize();
    let last = cluster.node(id(1)).last_index();
    // Every follower holds everything: the whole log may go.
    assert_eq!(cluster.node(id(1)).compaction_floor(10), last);
    // A follower is cut off: while it was heard from lately, the floor waits for it.
    cluster.isolate(id(3));
    cluster.propose(id(1), "b").unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(id(1)).compaction_floor(10), last);
    // Once silent for longer than the window, it no longer holds the log back (it
    // would be sent a snapshot).
    cluster.tick_all(12);
    assert_eq!(
        cluster.node(id(1)).compaction_floor(10),
        cluster.node(id(1)).last_index()
    );
    // A follower's floor is not its business: no limit.
    assert_eq!(cluster.node(id(2)).compaction_floor(10), LogIndex(u64::MAX));
}
