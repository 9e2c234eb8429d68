//! Scenario tests of linearizable reads (thesis 6.4: ReadIndex and leases).

mod common;

use common::{id, Cluster};
use ostrakon_raft::*;

#[test]
fn read_index_is_confirmed_by_a_heartbeat_round() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    let written = cluster.propose(id(1), "a").unwrap();
    cluster.delivered.clear();
    cluster.node_mut(id(1)).read_index(7).unwrap();
    cluster.stabilize();
    let states = &cluster.read_states[&id(1)];
    assert_eq!(
        states,
        &vec![ReadState {
            request_id: 7,
            index: Some(written.index)
        }]
    );
    assert!(
        cluster
            .delivered
            .iter()
            .any(|m| matches!(m.body, MessageBody::Heartbeat { read_round, .. } if read_round > 0)),
        "leadership was confirmed with a heartbeat round"
    );
}

#[test]
fn an_isolated_leader_cannot_confirm_a_read() {
    // Thesis 6.4: "the leader must check whether it has been deposed before processing a
    // read-only request".
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.isolate(id(1));
    cluster.node_mut(id(1)).read_index(1).unwrap();
    cluster.stabilize();
    assert!(
        cluster.read_states[&id(1)].is_empty(),
        "no answer without a quorum"
    );
    // When it steps down (check-quorum), the read fails instead of hanging forever.
    let election_ticks = cluster.config(id(1)).election_ticks;
    cluster.tick(id(1), 2 * election_ticks);
    assert_eq!(
        cluster.read_states[&id(1)],
        vec![ReadState {
            request_id: 1,
            index: None
        }]
    );
}

#[test]
fn a_follower_read_is_forwarded_and_answered_with_the_leaders_commit() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    let written = cluster.propose(id(1), "a").unwrap();
    cluster.node_mut(id(2)).read_index(9).unwrap();
    cluster.stabilize();
    assert_eq!(
        cluster.read_states[&id(2)],
        vec![ReadState {
            request_id: 9,
            index: Some(written.index)
        }]
    );
}

#[test]
fn a_new_leader_answers_reads_only_after_committing_in_its_term() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    // Node 2 wins, but its empty entry cannot commit while the others are cut off.
    cluster.node_mut(id(2)).force_campaign();
    cluster.process(id(2));
    cluster.stabilize();
    assert_eq!(cluster.node(id(2)).role(), Role::Leader);
    let own_entry = cluster.node(id(2)).last_index();
    cluster.isolate(id(2));
    cluster.node_mut(id(2)).propose("b".into()).unwrap();
    cluster.node_mut(id(2)).read_index(3).unwrap();
    cluster.stabilize();
    assert!(cluster.read_states.get(&id(2)).is_none_or(|s| s.is_empty()));
    cluster.heal();
    cluster.tick_all(2);
    let state = cluster.read_states[&id(2)].last().copied().unwrap();
    assert_eq!(state.request_id, 3);
    assert!(
        state.index.unwrap() >= own_entry,
        "the read index covers the new leader's own entry"
    );
}

#[test]
fn lease_reads_answer_without_a_round_trip() {
    let mut cluster = Cluster::with_config(3, |c| c.read_mode = ReadMode::LeaseBased);
    cluster.elect(id(1));
    cluster.delivered.clear();
    cluster.node_mut(id(1)).read_index(5).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.read_states[&id(1)].len(), 1);
    assert!(cluster.delivered.is_empty(), "no messages for a lease read");
}

#[test]
fn reads_are_batched_into_one_round() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.delivered.clear();
    for request_id in 0..100 {
        cluster.node_mut(id(1)).read_index(request_id).unwrap();
    }
    cluster.stabilize();
    assert_eq!(cluster.read_states[&id(1)].len(), 100);
    let heartbeats = cluster
        .delivered
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
        .count();
    assert_eq!(heartbeats, 2, "one heartbeat per follower for 100 reads");
}
