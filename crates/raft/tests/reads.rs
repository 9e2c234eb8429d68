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
fn lease_reads_answer_without_a_round_trip_while_the_lease_holds() {
    let mut cluster = Cluster::with_config(3, |c| c.read_mode = ReadMode::LeaseBased);
    cluster.elect(id(1));
    cluster.tick(id(1), 2); // a heartbeat round acknowledged by a quorum starts the lease
    cluster.delivered.clear();
    cluster.node_mut(id(1)).read_index(5).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.read_states[&id(1)].len(), 1);
    assert!(cluster.delivered.is_empty(), "no messages for a lease read");
}

#[test]
fn a_lease_expires_before_followers_would_elect_someone_else() {
    // Thesis 6.4: the lease runs from when the acknowledged heartbeat was sent, and must
    // end before the followers' own election timeout can elect another leader.
    let mut cluster = Cluster::with_config(3, |c| c.read_mode = ReadMode::LeaseBased);
    cluster.elect(id(1));
    cluster.tick(id(1), 2);
    cluster.isolate(id(1));
    let election_ticks = cluster.config(id(1)).election_ticks;
    cluster.tick(id(1), election_ticks - 1); // still leader: check-quorum has not fired yet
    assert_eq!(cluster.node(id(1)).role(), Role::Leader);
    cluster.node_mut(id(1)).read_index(6).unwrap();
    cluster.stabilize();
    assert!(
        cluster.read_states[&id(1)].is_empty(),
        "an expired lease falls back to a heartbeat round"
    );
}

#[test]
fn a_leader_that_sent_timeout_now_holds_no_lease() {
    let mut cluster = Cluster::with_config(3, |c| c.read_mode = ReadMode::LeaseBased);
    cluster.elect(id(1));
    cluster.tick(id(1), 2);
    // The target campaigns ignoring leases; cut it off from the old leader so the old
    // leader does not learn of the new term.
    cluster.filter = Some(Box::new(|m| {
        m.from == NodeId(2) && m.to == NodeId(1) || m.from == NodeId(3) && m.to == NodeId(1)
    }));
    cluster.node_mut(id(1)).transfer_leader(id(2)).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(id(2)).role(), Role::Leader);
    assert_eq!(
        cluster.node(id(1)).role(),
        Role::Leader,
        "the old leader has not heard yet"
    );
    cluster.node_mut(id(1)).read_index(8).unwrap();
    cluster.stabilize();
    assert!(
        cluster.read_states[&id(1)].is_empty(),
        "no lease read after TimeoutNow"
    );
}

#[test]
fn a_forwarded_read_refused_in_an_older_term_still_gets_its_answer() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    // Node 2 forwards a read; node 1 steps down (to a higher term) before answering.
    cluster.node_mut(id(2)).read_index(11).unwrap();
    cluster.process(id(2));
    let forwarded: Vec<Message> = cluster.in_flight.drain(..).collect();
    let higher = Message {
        group: GroupId(1),
        from: id(3),
        to: id(1),
        term: Term(99),
        body: MessageBody::AppendResponse {
            index: LogIndex(0),
            reject: None,
        },
    };
    cluster.node_mut(id(1)).step(higher);
    for m in forwarded {
        cluster.node_mut(id(1)).step(m);
    }
    cluster.process(id(1));
    let answers: Vec<Message> = cluster
        .in_flight
        .drain(..)
        .filter(|m| m.to == id(2))
        .collect();
    assert!(answers
        .iter()
        .any(|m| matches!(m.body, MessageBody::ReadIndexResponse { index: None, .. })));
    for m in answers {
        cluster.node_mut(id(2)).step(m);
    }
    cluster.process(id(2));
    assert_eq!(
        cluster.read_states[&id(2)],
        vec![ReadState {
            request_id: 11,
            index: None
        }]
    );
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

#[test]
fn a_members_word_in_the_leaders_term_confirms_a_read_without_a_round() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    let written = cluster.propose(id(1), "a").unwrap();
    cluster.stabilize();
    let term = cluster.node(id(1)).term();
    cluster.delivered.clear();
    let confirmed = cluster
        .node_mut(id(1))
        .read_index_confirmed_by(4, id(2), term)
        .unwrap();
    assert!(confirmed);
    cluster.stabilize();
    assert_eq!(
        cluster.read_states[&id(1)],
        vec![ReadState {
            request_id: 4,
            index: Some(written.index)
        }]
    );
    assert!(
        cluster.delivered.is_empty(),
        "no heartbeat round: {:?}",
        cluster.delivered
    );
}

#[test]
fn a_word_from_another_term_or_too_small_a_quorum_takes_a_heartbeat_round() {
    // An earlier term: the member may have voted for a later leader since.
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    cluster.stabilize();
    let term = cluster.node(id(1)).term();
    cluster.isolate(id(1));
    cluster
        .node_mut(id(1))
        .read_index_confirmed_by(5, id(2), Term(term.0 - 1))
        .unwrap();
    cluster.stabilize();
    assert!(
        cluster.read_states.get(&id(1)).is_none_or(|s| s.is_empty()),
        "an isolated leader took a word of an earlier term"
    );
    // A later term: the member voted for another leader, whom the deposed one has not
    // heard of.
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    cluster.stabilize();
    cluster.isolate(id(1));
    cluster.node_mut(id(2)).force_campaign();
    cluster.stabilize();
    assert_eq!(cluster.node(id(2)).role(), Role::Leader);
    assert_eq!(
        cluster.node(id(1)).role(),
        Role::Leader,
        "deposed, not told"
    );
    let later = cluster.node(id(2)).term();
    let confirmed = cluster
        .node_mut(id(1))
        .read_index_confirmed_by(9, id(2), later)
        .unwrap();
    cluster.stabilize();
    assert!(!confirmed);
    assert!(
        cluster.read_states.get(&id(1)).is_none_or(|s| s.is_empty()),
        "a deposed leader took a word of its successor's term"
    );
    // Five voters: the leader and one member are not a quorum.
    let mut cluster = Cluster::new(5);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    cluster.stabilize();
    let term = cluster.node(id(1)).term();
    cluster.isolate(id(1));
    cluster
        .node_mut(id(1))
        .read_index_confirmed_by(6, id(2), term)
        .unwrap();
    cluster.stabilize();
    assert!(
        cluster.read_states.get(&id(1)).is_none_or(|s| s.is_empty()),
        "one member's word stood for a quorum of five"
    );
    // Its own word does not count.
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.stabilize();
    let term = cluster.node(id(1)).term();
    cluster.isolate(id(1));
    cluster
        .node_mut(id(1))
        .read_index_confirmed_by(7, id(1), term)
        .unwrap();
    cluster.stabilize();
    assert!(cluster.read_states.get(&id(1)).is_none_or(|s| s.is_empty()));
}

#[test]
fn a_word_waits_for_the_new_leaders_first_commit() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    // Node 2 wins, but no append of its own gets through: its empty entry stays
    // uncommitted.
    cluster.filter = Some(Box::new(|m: &Message| {
        m.from == NodeId(2) && matches!(m.body, MessageBody::Append { .. })
    }));
    cluster.node_mut(id(2)).force_campaign();
    cluster.stabilize();
    assert_eq!(cluster.node(id(2)).role(), Role::Leader);
    let own_entry = cluster.node(id(2)).last_index();
    assert!(cluster.node(id(2)).commit() < own_entry);
    let term = cluster.node(id(2)).term();
    cluster
        .node_mut(id(2))
        .read_index_confirmed_by(8, id(3), term)
        .unwrap();
    cluster.stabilize();
    assert!(
        cluster.read_states.get(&id(2)).is_none_or(|s| s.is_empty()),
        "answered before the leader's commit index could cover every acknowledged write"
    );
    cluster.heal();
    cluster.tick_all(2);
    let state = cluster.read_states[&id(2)].last().copied().unwrap();
    assert_eq!(state.request_id, 8);
    assert!(state.index.unwrap() >= own_entry);
}

/// A read a voter forwards is answered at once where the leader and that voter are a
/// quorum (its message, of the leader's term and sent after the read began, is its word):
/// no heartbeat round. With five voters the two are not a quorum, and a round confirms it.
#[test]
fn a_read_forwarded_by_a_voter_of_a_quorum_pair_takes_no_heartbeat_round() {
    for (voters, round_expected) in [(3, false), (5, true)] {
        let mut cluster = Cluster::new(voters);
        cluster.elect(id(1));
        let written = cluster.propose(id(1), "a").unwrap();
        cluster.stabilize();
        cluster.delivered.clear();
        cluster.node_mut(id(2)).read_index(9).unwrap();
        cluster.stabilize();
        assert_eq!(
            cluster.read_states[&id(2)],
            vec![ReadState {
                request_id: 9,
                index: Some(written.index)
            }],
            "{voters} voters"
        );
        let round = cluster
            .delivered
            .iter()
            .any(|m| matches!(m.body, MessageBody::Heartbeat { read_round, .. } if read_round > 0));
        assert_eq!(round, round_expected, "{voters} voters: a read round sent");
    }
}

/// A follower takes a forwarded read's index only from its leader in its term: an
/// answer to a message it sent before a restart, under a read id it reuses now, was
/// confirmed by its word of that time (a leader now answers forwarded reads on that
/// word), not the new read's. A refusal counts from anyone.
#[test]
fn a_forwarded_reads_index_counts_only_from_the_leader_in_its_term() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    cluster.stabilize();
    let term = cluster.node(id(2)).term();
    cluster.isolate(id(2));
    cluster.node_mut(id(2)).read_index(5).unwrap();
    let group = GroupId(1);
    let answer = |from: NodeId, term: Term, index: Option<LogIndex>| Message {
        group,
        from,
        to: id(2),
        term,
        body: MessageBody::ReadIndexResponse {
            request_id: 5,
            index,
        },
    };
    for stale in [
        answer(id(1), Term(term.0 - 1), Some(LogIndex(1))),
        answer(id(3), term, Some(LogIndex(1))),
    ] {
        cluster.node_mut(id(2)).step(stale);
    }
    cluster.stabilize();
    assert!(
        cluster.read_states.get(&id(2)).is_none_or(|s| s.is_empty()),
        "an index from another member or term was taken"
    );
    cluster
        .node_mut(id(2))
        .step(answer(id(3), Term(term.0 - 1), None));
    cluster.stabilize();
    assert_eq!(
        cluster.read_states[&id(2)],
        vec![ReadState {
            request_id: 5,
            index: None
        }],
        "a refusal counts from anyone"
    );
}
