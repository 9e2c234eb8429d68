//! Scenario tests of snapshots, membership changes and leadership transfer.

mod common;

use common::{id, Cluster};
use ostrakon_raft::*;

fn change(steps: Vec<ConfChangeStep>) -> ConfChange {
    ConfChange::Change(steps)
}

#[test]
fn a_follower_behind_the_compaction_point_receives_a_snapshot() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.isolate(id(3));
    for k in 0..10 {
        cluster.propose(id(1), &format!("v{k}")).unwrap();
    }
    let commit = cluster.node(id(1)).commit();
    let conf = cluster.node(id(1)).conf_state().clone();
    cluster.node_mut(id(1)).compact(commit, conf);
    assert_eq!(cluster.node(id(1)).first_index(), commit.next());
    cluster.heal();
    cluster.delivered.clear();
    cluster.tick_all(3);
    assert!(cluster
        .delivered
        .iter()
        .any(|m| m.to == id(3) && matches!(m.body, MessageBody::InstallSnapshot { .. })));
    assert_eq!(
        cluster.disks[&id(3)].snapshot.index,
        commit,
        "node 3 installed the snapshot"
    );
    cluster.propose(id(1), "after").unwrap();
    cluster.tick_all(2);
    assert_eq!(
        cluster.applied_data(id(3)),
        vec!["after"],
        "and replicates normally after it"
    );
}

#[test]
fn a_learner_catches_up_then_is_promoted_through_joint_consensus() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "before").unwrap();
    cluster.add_empty_node(id(4));
    cluster
        .node_mut(id(1))
        .propose_conf_change(change(vec![ConfChangeStep::AddLearner(id(4))]))
        .unwrap();
    cluster.stabilize();
    cluster.tick_all(3);
    assert!(cluster.node(id(1)).conf_state().learners.contains(&id(4)));
    assert_eq!(
        cluster.node(id(4)).commit(),
        cluster.node(id(1)).commit(),
        "the learner caught up"
    );
    // A learner never campaigns.
    cluster.tick(id(4), 50);
    assert_eq!(cluster.node(id(4)).role(), Role::Follower);
    // Promote: enters and then automatically leaves the joint configuration.
    cluster
        .node_mut(id(1))
        .propose_conf_change(change(vec![ConfChangeStep::AddVoter(id(4))]))
        .unwrap();
    cluster.stabilize();
    cluster.tick_all(3);
    let conf = cluster.node(id(1)).conf_state().clone();
    assert!(!conf.is_joint(), "left the joint configuration: {conf:?}");
    assert!(conf.voters.contains(&id(4)));
    assert_eq!(
        cluster.node(id(4)).conf_state(),
        &conf,
        "every member agrees"
    );
}

#[test]
fn only_one_membership_change_at_a_time() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.isolate(id(2));
    cluster.isolate(id(3));
    cluster
        .node_mut(id(1))
        .propose_conf_change(change(vec![ConfChangeStep::AddLearner(id(4))]))
        .unwrap();
    assert_eq!(
        cluster
            .node_mut(id(1))
            .propose_conf_change(change(vec![ConfChangeStep::AddLearner(id(5))])),
        Err(ProposeError::ConfChangePending)
    );
}

#[test]
fn the_leader_can_remove_itself_and_the_rest_elect_a_new_one() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster
        .node_mut(id(1))
        .propose_conf_change(change(vec![ConfChangeStep::Remove(id(1))]))
        .unwrap();
    cluster.stabilize();
    cluster.tick_all(3);
    assert_ne!(
        cluster.node(id(1)).role(),
        Role::Leader,
        "the removed leader stepped down"
    );
    cluster.tick_all(60);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], id(1));
    let conf = cluster.node(leaders[0]).conf_state().clone();
    assert_eq!(conf.voters.len(), 2);
    assert!(!conf.is_voter(id(1)));
    cluster.propose(leaders[0], "still works").unwrap();
    cluster.tick_all(2);
    assert_eq!(cluster.applied_data(leaders[0]), vec!["still works"]);
}

#[test]
fn replacing_a_voter_needs_both_majorities_while_joint() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.add_empty_node(id(4));
    cluster.add_empty_node(id(5));
    // Joint: old {1,2,3}, new {1,4,5}; with 4 and 5 cut off, the new half has no majority.
    cluster.isolate(id(4));
    cluster.isolate(id(5));
    cluster
        .node_mut(id(1))
        .propose_conf_change(change(vec![
            ConfChangeStep::AddVoter(id(4)),
            ConfChangeStep::AddVoter(id(5)),
            ConfChangeStep::Remove(id(2)),
            ConfChangeStep::Remove(id(3)),
        ]))
        .unwrap();
    cluster.stabilize();
    assert!(cluster.node(id(1)).conf_state().is_joint());
    let blocked = cluster.propose(id(1), "needs both halves").unwrap();
    assert!(cluster.node(id(1)).commit() < blocked.index);
    cluster.heal();
    cluster.tick_all(5);
    assert!(cluster.node(id(1)).commit() >= blocked.index);
    assert!(!cluster.node(id(1)).conf_state().is_joint());
}

#[test]
fn leadership_transfer_hands_over_and_times_out_when_the_target_is_unreachable() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    cluster.node_mut(id(1)).transfer_leader(id(2)).unwrap();
    cluster.stabilize();
    assert_eq!(
        cluster.node(id(2)).role(),
        Role::Leader,
        "TimeoutNow made node 2 campaign at once"
    );
    assert_eq!(cluster.node(id(1)).role(), Role::Follower);
    // Now towards an unreachable node: proposals are refused until the time limit.
    cluster.isolate(id(3));
    cluster.node_mut(id(2)).transfer_leader(id(3)).unwrap();
    assert!(matches!(
        cluster.node_mut(id(2)).propose("b".into()),
        Err(ProposeError::TransferInProgress { .. })
    ));
    let limit = cluster.config(id(2)).transfer_timeout_ticks;
    cluster.tick(id(2), limit);
    assert_eq!(cluster.node(id(2)).role(), Role::Leader);
    assert!(
        cluster.node_mut(id(2)).propose("b".into()).is_ok(),
        "transfer abandoned after the time limit"
    );
}

#[test]
fn transfer_to_a_non_voter_is_refused() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    assert_eq!(
        cluster.node_mut(id(1)).transfer_leader(id(9)),
        Err(ProposeError::NotAVoter { node: id(9) })
    );
}

#[test]
fn a_restarted_node_recovers_its_term_vote_and_log() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "durable").unwrap();
    cluster.tick_all(2);
    let before = cluster.node(id(2)).status();
    cluster.crash_restart(id(2));
    let after = cluster.node(id(2)).status();
    assert_eq!(after.term, before.term);
    assert_eq!(after.vote, before.vote);
    assert_eq!(after.last_index, before.last_index);
    assert_eq!(after.commit, before.commit);
}

#[test]
fn the_leader_knows_which_members_it_heard_from_recently() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    assert_eq!(
        cluster.node(id(1)).recently_active(3),
        [id(1), id(2), id(3)].into(),
        "a new leader hears from its followers before its first heartbeat"
    );
    cluster.tick(id(1), 2);
    assert_eq!(
        cluster.node(id(1)).recently_active(3),
        [id(1), id(2), id(3)].into()
    );
    assert!(
        cluster.node(id(2)).recently_active(3).is_empty(),
        "only a leader knows who is up"
    );
    cluster.isolate(id(3));
    cluster.tick(id(1), 5);
    assert_eq!(
        cluster.node(id(1)).recently_active(3),
        [id(1), id(2)].into(),
        "node 3 sent nothing in the last 3 ticks"
    );
    cluster.heal();
    cluster.tick(id(1), 1);
    assert_eq!(
        cluster.node(id(1)).recently_active(3),
        [id(1), id(2), id(3)].into()
    );
}
