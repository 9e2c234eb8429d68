//! Scenario tests of leader election (Raft paper 5.2, 5.4.1; thesis 9.6 pre-vote, 6.2 check-quorum).

mod common;

use common::{id, Cluster};
use ostrakon_raft::*;

#[test]
fn a_leader_is_elected_by_ticking_and_only_one() {
    // "Raft uses randomized election timeouts to ensure that split votes are rare."
    let mut cluster = Cluster::new(3);
    cluster.tick_all(40);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1, "exactly one leader, got {leaders:?}");
    let term = cluster.node(leaders[0]).term();
    for node in cluster.nodes.values() {
        assert_eq!(node.term(), term);
        assert_eq!(node.leader(), leaders[0]);
    }
}

#[test]
fn votes_are_persisted_before_they_are_sent() {
    // "Each server will vote for at most one candidate in a given term": the vote must be
    // durable before the grant leaves, or a restart could vote twice.
    let mut cluster = Cluster::new(3);
    cluster.node_mut(id(1)).force_campaign();
    cluster.process(id(1));
    let requests: Vec<Message> = cluster.in_flight.drain(..).collect();
    let request_to_2 = requests.into_iter().find(|m| m.to == id(2)).unwrap();
    let voter = cluster.node_mut(id(2));
    voter.step(request_to_2);
    let ready = voter.ready();
    assert!(ready
        .messages
        .iter()
        .all(|m| !matches!(m.body, MessageBody::VoteResponse { .. })));
    let grant = ready
        .persisted_messages
        .iter()
        .find(|m| matches!(m.body, MessageBody::VoteResponse { granted: true, .. }));
    assert!(
        grant.is_some(),
        "the grant waits behind the persistence barrier"
    );
    assert_eq!(
        ready.hard_state.unwrap().vote,
        id(1),
        "the vote is in the hard state to persist"
    );
    voter.advance();
}

#[test]
fn candidate_with_a_stale_log_loses() {
    // 5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the candidate."
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.isolate(id(3));
    cluster.propose(id(1), "x").unwrap();
    cluster.heal();
    cluster.isolate(id(1));
    // Node 3 lacks "x"; node 2 has it and must refuse.
    cluster.node_mut(id(3)).force_campaign();
    cluster.stabilize();
    assert_ne!(cluster.node(id(3)).role(), Role::Leader);
    cluster.elect(id(2));
}

#[test]
fn rejoining_node_does_not_disrupt_a_healthy_leader_with_pre_vote() {
    // Thesis 9.6: a partitioned server must not force the leader to step down when it returns.
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    let term = cluster.node(id(1)).term();
    cluster.isolate(id(3));
    cluster.tick(id(3), 100); // many election timeouts alone
    assert_eq!(
        cluster.node(id(3)).term(),
        term,
        "pre-vote keeps the term of an isolated node"
    );
    cluster.heal();
    cluster.tick_all(30);
    assert_eq!(cluster.node(id(1)).role(), Role::Leader);
    assert_eq!(cluster.node(id(1)).term(), term);
}

#[test]
fn without_pre_vote_a_rejoining_node_bumps_the_term() {
    // The control for the test above: the disruption pre-vote prevents does happen without it.
    let mut cluster = Cluster::with_config(3, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    cluster.elect(id(1));
    let term = cluster.node(id(1)).term();
    cluster.isolate(id(3));
    cluster.tick(id(3), 100);
    assert!(cluster.node(id(3)).term() > term);
    cluster.heal();
    cluster.node_mut(id(1)).propose("y".into()).unwrap();
    cluster.tick_all(30);
    assert!(
        cluster.node(id(1)).term() > term,
        "the leader was deposed by the higher term"
    );
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.isolate(id(1));
    let election_ticks = cluster.config(id(1)).election_ticks;
    cluster.tick(id(1), 2 * election_ticks);
    assert_eq!(cluster.node(id(1)).role(), Role::Follower);
    assert_eq!(
        cluster.node_mut(id(1)).propose("z".into()),
        Err(ProposeError::NoLeader)
    );
}

#[test]
fn followers_in_lease_ignore_vote_requests() {
    // With check-quorum, a follower that heard from its leader within the election timeout
    // does not grant a vote to a disruptive candidate.
    let mut cluster = Cluster::with_config(3, |c| c.pre_vote = false);
    cluster.elect(id(1));
    let term = cluster.node(id(1)).term();
    cluster.node_mut(id(3)).campaign(); // no pre-vote configured: term + 1
    cluster.stabilize();
    assert_eq!(
        cluster.node(id(2)).term(),
        term,
        "node 2 ignored the request"
    );
    assert_ne!(cluster.node(id(3)).role(), Role::Leader);
}

#[test]
fn proposals_are_refused_with_distinct_errors() {
    let mut cluster = Cluster::new(3);
    assert_eq!(
        cluster.node_mut(id(2)).propose("a".into()),
        Err(ProposeError::NoLeader)
    );
    cluster.elect(id(1));
    assert_eq!(
        cluster.node_mut(id(2)).propose("a".into()),
        Err(ProposeError::NotLeader { leader: id(1) })
    );
    cluster.isolate(id(2));
    cluster.node_mut(id(1)).transfer_leader(id(2)).unwrap();
    assert_eq!(
        cluster.node_mut(id(1)).propose("a".into()),
        Err(ProposeError::TransferInProgress { target: id(2) })
    );
}

#[test]
fn split_vote_resolves_by_randomized_timeouts() {
    let mut cluster = Cluster::new(5);
    for round in 0..5 {
        cluster.tick_all(60);
        assert_eq!(cluster.leaders().len(), 1, "round {round}");
        let leader = cluster.leaders()[0];
        cluster.down.insert(leader);
        cluster.tick_all(60);
        cluster.down.remove(&leader);
        cluster.crash_restart(leader);
    }
}

#[test]
fn a_single_voter_leader_replicates_only_after_its_term_is_durable() {
    // A leader elected within one Ready (no vote requests to wait for) must not send
    // entries of a term it could forget in a crash: a learner could keep them and later
    // commit a different entry at the same (index, term).
    let mut cluster = Cluster::new(1);
    cluster.add_empty_node(id(2));
    cluster.elect(id(1));
    cluster
        .node_mut(id(1))
        .propose_conf_change(ConfChange::Change(vec![ConfChangeStep::AddLearner(id(2))]))
        .unwrap();
    cluster.stabilize();
    cluster.tick_all(3);
    assert!(cluster.node(id(1)).conf_state().learners.contains(&id(2)));
    // Restart node 1 into a new term: it re-elects itself in one step.
    cluster.crash_restart(id(1));
    cluster.node_mut(id(1)).campaign();
    let ready = cluster.node_mut(id(1)).ready();
    assert!(
        ready.hard_state.is_some(),
        "the new term is still to be persisted"
    );
    assert!(
        ready.messages.iter().all(|m| !matches!(
            m.body,
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
        )),
        "nothing replicates before the term is durable: {:?}",
        ready.messages
    );
    cluster.node_mut(id(1)).advance();
}
