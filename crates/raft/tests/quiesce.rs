//! Scenario tests of quiescence: idle groups stop ticking and heartbeating, wake on any
//! work, and still replace a leader whose node dies.

mod common;

use common::{id, Cluster};
use ostrakon_raft::*;

fn quiescing(config: &mut Config) {
    config.quiesce = true;
}

fn quiescing_with_lease_reads(config: &mut Config) {
    config.quiesce = true;
    config.read_mode = ReadMode::LeaseBased;
}

/// A 3-member group with node 1 leading, one entry written, and enough ticks for the
/// leader to see every follower caught up and quiesce.
fn quiesced_cluster(configure: fn(&mut Config)) -> Cluster {
    let mut cluster = Cluster::with_config(3, configure);
    cluster.elect(id(1));
    cluster.propose(id(1), "a").unwrap();
    cluster.tick_all(3);
    for n in 1..=3 {
        assert!(
            cluster.node(id(n)).is_quiesced(),
            "node {n} should be quiesced: {:?}",
            cluster.node(id(n)).status()
        );
    }
    cluster
}

#[test]
fn an_idle_group_quiesces_and_then_sends_nothing() {
    let mut cluster = quiesced_cluster(quiescing);
    let term = cluster.node(id(1)).term();
    cluster.delivered.clear();
    // Many election timeouts pass: nobody heartbeats, nobody campaigns.
    cluster.tick_all(100);
    assert!(
        cluster.delivered.is_empty(),
        "a quiesced group sent {:?}",
        cluster.delivered
    );
    assert_eq!(cluster.leaders(), vec![id(1)]);
    assert_eq!(cluster.node(id(2)).term(), term);
}

#[test]
fn without_the_option_an_idle_group_keeps_heartbeating() {
    let mut cluster = Cluster::new(3);
    cluster.elect(id(1));
    cluster.tick_all(3);
    cluster.delivered.clear();
    cluster.tick_all(10);
    assert!(!cluster.node(id(1)).is_quiesced());
    assert!(cluster
        .delivered
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { .. })));
}

#[test]
fn a_proposal_wakes_the_group_and_it_quiesces_again_once_idle() {
    let mut cluster = quiesced_cluster(quiescing);
    cluster.propose(id(1), "b").unwrap();
    assert!(!cluster.node(id(1)).is_quiesced());
    for n in 1..=3 {
        assert_eq!(cluster.applied_data(id(n)), vec!["a", "b"]);
    }
    cluster.tick_all(3);
    for n in 1..=3 {
        assert!(cluster.node(id(n)).is_quiesced(), "node {n}");
    }
}

#[test]
fn a_follower_that_lacks_entries_keeps_the_leader_awake() {
    let mut cluster = Cluster::with_config(3, quiescing);
    cluster.elect(id(1));
    // Node 3 hears nothing from the leader: its match index stays behind.
    cluster.cut.insert((id(1), id(3)));
    cluster.propose(id(1), "a").unwrap();
    cluster.tick(id(1), 10);
    assert!(!cluster.node(id(1)).is_quiesced());
    cluster.heal();
    cluster.tick_all(4);
    assert_eq!(cluster.applied_data(id(3)), vec!["a"]);
    assert!(cluster.node(id(1)).is_quiesced());
}

#[test]
fn a_quiesced_group_elects_a_new_leader_once_the_leaders_node_is_reported_down() {
    let mut cluster = quiesced_cluster(quiescing);
    cluster.down.insert(id(1));
    // Quiesced followers do not time out by themselves: that is what liveness is for.
    cluster.tick_all(50);
    assert_eq!(cluster.node(id(2)).leader(), id(1));
    assert_eq!(cluster.node(id(3)).leader(), id(1));
    // The runtime's node liveness notices that node 1 stopped answering.
    for n in [2, 3] {
        cluster.node_mut(id(n)).report_node_down(id(1));
        assert!(!cluster.node(id(n)).is_quiesced());
    }
    cluster.tick_all(40);
    let leaders = cluster.leaders();
    assert!(
        leaders.iter().any(|&l| l == id(2) || l == id(3)),
        "no new leader: {leaders:?}"
    );
    let leader = *leaders.iter().find(|&&l| l != id(1)).unwrap();
    cluster.propose(leader, "b").unwrap();
    assert_eq!(cluster.applied_data(id(2)), vec!["a", "b"]);
}

#[test]
fn one_voter_picked_by_the_group_campaigns_within_a_few_ticks_of_the_leaders_death() {
    let mut cluster = quiesced_cluster(quiescing);
    cluster.down.insert(id(1));
    for n in [2, 3] {
        cluster.node_mut(id(n)).report_node_down(id(1));
    }
    // Group 1 of the voters up, [2, 3]: node 3 campaigns after two heartbeats (2 ticks
    // here), not after a whole randomized election timeout (10 to 19 ticks here).
    cluster.tick_all(5);
    let leaders: Vec<_> = cluster
        .leaders()
        .into_iter()
        .filter(|&l| l != id(1))
        .collect();
    assert_eq!(leaders, vec![id(3)]);
    cluster.propose(id(3), "b").unwrap();
    assert_eq!(cluster.applied_data(id(2)), vec!["a", "b"]);
}

#[test]
fn the_voter_picked_to_campaign_first_refused_by_one_not_yet_told_the_leader_died() {
    let mut cluster = quiesced_cluster(quiescing);
    cluster.down.insert(id(1));
    // Only node 3, the one picked, hears that node 1 died: node 2 keeps its promise not
    // to vote while quiesced under a leader, and nobody wins early.
    cluster.node_mut(id(3)).report_node_down(id(1));
    cluster.tick_all(5);
    assert!(cluster.leaders().iter().all(|&l| l == id(1)));
    // Node 3's pre-vote woke node 2, which still names node 1 its leader.
    assert!(!cluster.node(id(2)).is_quiesced());
    assert_eq!(cluster.node(id(2)).leader(), id(1));
    // Told late, node 2 forgets the dead leader at once, although the pre-vote woke it
    // (it has not heard from node 1 since): it no longer refuses votes for a whole
    // election timeout, and the usual timeouts elect.
    cluster.node_mut(id(2)).report_node_down(id(1));
    assert_eq!(cluster.node(id(2)).leader(), NodeId::NONE);
    cluster.tick_all(40);
    assert!(
        cluster.leaders().iter().any(|&l| l == id(2) || l == id(3)),
        "no new leader"
    );
}

#[test]
fn a_report_about_another_node_leaves_a_quiesced_follower_asleep() {
    let mut cluster = quiesced_cluster(quiescing);
    cluster.node_mut(id(2)).report_node_down(id(3));
    assert!(cluster.node(id(2)).is_quiesced());
    assert_eq!(cluster.node(id(2)).leader(), id(1));
}

#[test]
fn a_quiesced_leader_cut_off_while_asleep_serves_no_lease_read_when_woken() {
    // Thesis 6.4's lease assumes followers refuse to vote for an election timeout after
    // a heartbeat. The quiesced leader's clock stood still while its followers, told
    // that its node was down, elected another leader: its old acknowledgements prove
    // nothing.
    let mut cluster = quiesced_cluster(quiescing_with_lease_reads);
    cluster.isolate(id(1));
    for n in [2, 3] {
        cluster.node_mut(id(n)).report_node_down(id(1));
    }
    cluster.tick_all(40);
    let new_leader = cluster
        .leaders()
        .into_iter()
        .find(|&l| l != id(1))
        .expect("a new leader");
    cluster.propose(new_leader, "b").unwrap();
    cluster.node_mut(id(1)).read_index(9).unwrap();
    cluster.stabilize();
    assert!(
        cluster.read_states.get(&id(1)).is_none_or(|r| r.is_empty()),
        "the deposed leader answered a read from a stale lease: {:?}",
        cluster.read_states[&id(1)]
    );
}

#[test]
fn a_woken_leader_earns_a_new_lease_from_fresh_acknowledgements() {
    let mut cluster = quiesced_cluster(quiescing_with_lease_reads);
    // A read wakes the leader; it is confirmed by a heartbeat round, not a lease.
    cluster.delivered.clear();
    cluster.node_mut(id(1)).read_index(1).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.read_states[&id(1)].len(), 1);
    assert!(cluster.read_states[&id(1)][0].index.is_some());
    assert!(cluster
        .delivered
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { read_round, .. } if read_round > 0)));
    // That round's acknowledgements were sent after waking: the lease answers at once.
    cluster.node_mut(id(1)).read_index(2).unwrap();
    cluster.process(id(1));
    assert_eq!(
        cluster.read_states[&id(1)].len(),
        2,
        "served from the lease"
    );
    // Once idle again the leader quiesces, and its lease ends with it.
    cluster.tick_all(2);
    assert!(cluster.node(id(1)).is_quiesced());
}

#[test]
fn a_restarted_follower_wakes_the_group_and_follows_the_same_leader() {
    let mut cluster = quiesced_cluster(quiescing);
    let term = cluster.node(id(1)).term();
    cluster.crash_restart(id(3));
    // The restarted member knows no leader, times out and asks for pre-votes; the
    // message wakes the leader, whose heartbeats bring it back.
    cluster.tick_all(40);
    assert_eq!(cluster.leaders(), vec![id(1)]);
    assert_eq!(cluster.node(id(3)).leader(), id(1));
    assert_eq!(cluster.node(id(3)).term(), term);
    cluster.tick_all(4);
    for n in 1..=3 {
        assert!(cluster.node(id(n)).is_quiesced(), "node {n}");
    }
}

#[test]
fn the_leader_quiesces_only_once_every_member_has_the_commit_index() {
    // A member that missed the quiescing heartbeat would keep a stale commit index (and
    // a learner never times out to ask for a newer one): the leader goes on sending it
    // quiescing heartbeats until it answers.
    let mut cluster = Cluster::with_config(3, quiescing);
    cluster.elect(id(1));
    cluster.tick_all(3);
    cluster.filter = Some(Box::new(|m: &Message| {
        m.to == id(3)
            && !matches!(m.body, MessageBody::Append { ref entries, .. } if !entries.is_empty())
    }));
    cluster.propose(id(1), "a").unwrap();
    cluster.tick_all(10);
    assert!(!cluster.node(id(1)).is_quiesced());
    assert!(cluster.node(id(3)).commit() < cluster.node(id(1)).commit());
    cluster.heal();
    cluster.tick_all(2);
    assert_eq!(cluster.node(id(3)).commit(), cluster.node(id(1)).commit());
    assert_eq!(cluster.applied_data(id(3)), vec!["a"]);
    for n in 1..=3 {
        assert!(cluster.node(id(n)).is_quiesced(), "node {n}");
    }
}

#[test]
fn a_leader_quiesces_without_a_member_reported_down_and_catches_it_up_once_back() {
    let mut cluster = quiesced_cluster(quiescing);
    cluster.down.insert(id(3));
    cluster.node_mut(id(1)).report_node_down(id(3));
    assert!(!cluster.node(id(1)).is_quiesced(), "it wakes to see");
    cluster.propose(id(1), "b").unwrap();
    cluster.tick_all(3);
    assert!(
        cluster.node(id(1)).is_quiesced(),
        "idle again, without waiting for the member that is down"
    );
    assert!(cluster.node(id(2)).is_quiesced());
    // Node 3 comes back having missed "b": the leader wakes and brings it up to date.
    cluster.down.remove(&id(3));
    cluster.node_mut(id(1)).report_node_up(id(3));
    assert!(!cluster.node(id(1)).is_quiesced());
    cluster.tick_all(3);
    assert_eq!(cluster.applied_data(id(3)), vec!["a", "b"]);
    for n in 1..=3 {
        assert!(cluster.node(id(n)).is_quiesced(), "node {n}");
    }
}

#[test]
fn a_quiesced_leader_whose_quorum_is_reported_down_wakes_and_steps_down() {
    // Cut off while asleep, it must not go on claiming leadership forever.
    let mut cluster = quiesced_cluster(quiescing);
    cluster.isolate(id(1));
    cluster.node_mut(id(1)).report_node_down(id(2));
    cluster.node_mut(id(1)).report_node_down(id(3));
    let election_ticks = cluster.config(id(1)).election_ticks;
    cluster.tick(id(1), 2 * election_ticks + 1);
    assert!(!cluster.node(id(1)).is_quiesced());
    assert_ne!(cluster.node(id(1)).role(), Role::Leader);
}
