//! Membership changes on a running cluster of real processes, driven by etcdctl as an
//! operator would: a fourth member added as a learner, joined with
//! `--initial-cluster-state existing`, caught up by snapshot, promoted, then a founding
//! member removed, all under a write load that must lose no acknowledged write.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcdctl::{etcdctls, Etcdctl};
use common::TestCluster;

/// Puts of distinct keys through `endpoints` until told to stop (at most `WRITES_MAX`);
/// returns the keys whose put was acknowledged.
const WRITES_MAX: usize = 20_000;

fn start_writer(
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        let mut client = etcd_client::Client::connect(endpoints, Some(options))
            .await
            .expect("the writer connects");
        let mut acknowledged = Vec::new();
        for n in 0..WRITES_MAX {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let key = format!("load/{n:06}");
            if client.put(key.as_str(), key.as_str(), None).await.is_ok() {
                acknowledged.push(key);
            }
        }
        acknowledged
    })
}

/// The text between `KEY="` and the next quote in etcdctl's `member add` output.
fn env_value(output: &str, key: &str) -> String {
    let start = output
        .find(&format!("{key}=\""))
        .unwrap_or_else(|| panic!("{key} missing from {output}"))
        + key.len()
        + 2;
    output[start..].split('"').next().unwrap().to_string()
}

/// Member list lines (etcdctl's simple format) as (id, status, name, peer URL, learner).
fn member_lines(list: &str) -> Vec<Vec<String>> {
    list.lines()
        .map(|l| l.split(", ").map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The member list, and the line of member `id` in it.
fn member_line(etcdctl: &Etcdctl, id: &str) -> (String, Vec<String>) {
    let list = etcdctl.ok(&["member", "list"]);
    let line = member_lines(&list)
        .into_iter()
        .find(|l| l[0] == id)
        .unwrap_or_else(|| panic!("{id} missing from {list}"));
    (list, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_is_promoted_and_a_founder_is_removed_under_load_losing_no_write() {
    learner_joins_is_promoted_and_a_founder_is_removed(&[]).await;
}

/// The same on a keyspace split in three ranges: every range's group follows the
/// membership (the load moves from the first range to the second halfway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_split_keyspace_every_range_follows_the_membership() {
    learner_joins_is_promoted_and_a_founder_is_removed(&["load/001000", "m"]).await;
}

async fn learner_joins_is_promoted_and_a_founder_is_removed(split_keys: &[&str]) {
    let binary = &etcdctls()[1];
    // Snapshots every 200 entries: the log the learner needs is gone by the time it
    // joins, so it must be caught up by a snapshot.
    let mut cluster = TestCluster::start(3, &["--snapshot-count", "200"]).await;
    let victim = cluster.wait_for_leader().await;
    for key in split_keys {
        let split = [
            "ranges",
            "split",
            key,
            "--endpoint",
            &cluster.host_port(victim),
        ];
        let (ok, out, err) = cluster.ostrakon(&split);
        assert!(ok, "split at {key} failed: {out} {err}");
    }
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(
        survivors.iter().map(|i| cluster.endpoint(*i)).collect(),
        stop.clone(),
    );
    let etcdctl = Etcdctl {
        binary,
        endpoints: survivors
            .iter()
            .map(|i| cluster.host_port(*i))
            .collect::<Vec<_>>()
            .join(","),
    };
    // Let the load build up a compacted log first (600 writes: the first range's log
    // alone on a keyspace of one range).
    let mut client = cluster.client(survivors[0]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let written = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    while client
        .get("load/", Some(written.clone()))
        .await
        .unwrap()
        .count()
        < 600
    {
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let newcomer = cluster.new_member("m4");
    let peer_url = cluster.peer_url(newcomer);
    let added = etcdctl.ok(&[
        "member",
        "add",
        "m4",
        &format!("--peer-urls={peer_url}"),
        "--learner",
    ]);
    let id = added
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{added}"))
        .to_string();
    assert!(added.contains("added to cluster"), "{added}");
    assert_eq!(env_value(&added, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    let initial_cluster = env_value(&added, "ETCD_INITIAL_CLUSTER");
    assert!(
        initial_cluster.contains(&format!("m4={peer_url}")),
        "{initial_cluster}"
    );
    let (list, line) = member_line(&etcdctl, &id);
    assert_eq!(
        (line[1].as_str(), line[5].as_str()),
        ("unstarted", "true"),
        "{list}"
    );

    cluster.join(newcomer, &initial_cluster);
    // Promotion is refused until the learner has caught up; etcd's operators retry.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refusals = 0;
    loop {
        let (ok, stdout, stderr) = etcdctl.run(&["member", "promote", &id], None);
        if ok {
            assert!(stdout.contains("promoted"), "{stdout}");
            break;
        }
        assert!(
            stderr.contains("can only promote a learner member which is in sync with leader"),
            "{stderr}"
        );
        refusals += 1;
        assert!(Instant::now() < deadline, "the learner never caught up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A member publishes its name through raft once it serves, which may come just
    // after its promotion (it can be in sync before that entry commits).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (list, line) = loop {
        let (list, line) = member_line(&etcdctl, &id);
        if line[1] == "started" || Instant::now() > deadline {
            break (list, line);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (line[1].as_str(), line[2].as_str(), line[5].as_str()),
        ("started", "m4", "false"),
        "the newcomer published its name and is a voter now: {list}"
    );
    assert!(
        cluster
            .log(newcomer)
            .contains("installed a snapshot from the leader"),
        "the learner should have been caught up by snapshot"
    );

    // Remove the member that led when the load started.
    let victim_url = format!("http://{}", cluster.host_port(victim));
    let victim_id = member_lines(&list)
        .into_iter()
        .find(|l| l[4] == victim_url)
        .unwrap_or_else(|| panic!("{victim_url} missing from {list}"))[0]
        .clone();
    let removed = etcdctl.ok(&["member", "remove", &victim_id]);
    assert!(removed.contains("removed from cluster"), "{removed}");
    assert!(
        cluster.wait_for_exit(victim, Duration::from_secs(20)),
        "a removed member stops by itself"
    );
    assert!(cluster.log(victim).contains("removed from the cluster"));

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() > 600,
        "only {} writes",
        acknowledged.len()
    );

    // Every acknowledged write is on the newcomer, read linearizably through it.
    let mut newcomer_client = cluster.client(newcomer).await;
    let stored = newcomer_client
        .get(
            "load/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = stored
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    let list = etcdctl.ok(&["member", "list"]);
    let lines = member_lines(&list);
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines.iter().all(|l| l[0] != victim_id && l[1] == "started"),
        "{list}"
    );
    eprintln!(
        "{} acknowledged writes kept; promotion refused {refusals} times before the learner caught up",
        acknowledged.len()
    );

    // The newcomer keeps its identity across a restart (its data directory wins over
    // the flags it was started with).
    cluster.terminate(newcomer);
    cluster.restart(newcomer);
    cluster.wait_member_knows_leader(newcomer).await;
    let mut newcomer_client = cluster.client(newcomer).await;
    newcomer_client
        .put("after-restart", "yes", None)
        .await
        .unwrap();
    let status = newcomer_client.status().await.unwrap();
    assert_eq!(
        format!("{:x}", status.header().unwrap().member_id()),
        id,
        "the restarted newcomer has the id it was added with"
    );

    // The meta range and every data range followed the membership (a learner that was
    // promoted, a founder removed): with one more founder down, the newcomer and the last
    // founder still make their quorums, serve timestamps and take writes in every range.
    // A range still counting the removed founder's vote, or without the newcomer's,
    // could not.
    cluster.kill(survivors[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in ["a", "load/999999", "z"] {
        loop {
            match newcomer_client.put(key, "two of three", None).await {
                Ok(_) => break,
                Err(error) if Instant::now() > deadline => {
                    cluster.dump_logs();
                    panic!("no quorum for {key} with two of three members up: {error}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match common::timestamps(&cluster.endpoint(newcomer), 4).await {
            Ok((_, count)) => {
                assert_eq!(count, 4);
                break;
            }
            Err(error) if Instant::now() > deadline => {
                cluster.dump_logs();
                panic!(
                    "the meta range lost its quorum with two of its three members up: {error:?}"
                );
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// etcd's errors for membership requests that cannot be carried out, from both etcdctls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_requests_that_cannot_apply_get_etcds_errors() {
    let binaries = etcdctls();
    let mut cluster = TestCluster::start(3, &[]).await;
    let spare = cluster.new_member("spare");
    for binary in &binaries {
        let etcdctl = Etcdctl {
            binary,
            endpoints: cluster.host_port(0),
        };
        let list = etcdctl.ok(&["member", "list"]);
        // A voter other than member 1, whose peer URL it will try to take.
        let voter = member_lines(&list)
            .into_iter()
            .find(|l| l[3] != cluster.peer_url(1))
            .unwrap()[0]
            .clone();
        let refused = |args: &[&str], expected: &str| {
            let (ok, _, stderr) = etcdctl.run(args, None);
            assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
        };
        refused(
            &["member", "promote", &voter],
            "can only promote a learner member",
        );
        refused(&["member", "remove", "1234"], "member not found");
        refused(
            &["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"],
            "member not found",
        );
        let taken = format!("--peer-urls={}", cluster.peer_url(1));
        refused(&["member", "add", "x", &taken], "Peer URLs already exists");
        refused(
            &["member", "update", &voter, &taken],
            "Peer URLs already exists",
        );
    }
    // etcdctl checks URLs itself; the server checks them for every other client.
    let mut client = cluster.client(0).await;
    let invalid = client
        .member_add(["not-a-url"], None)
        .await
        .expect_err("an invalid URL is refused");
    assert!(
        invalid
            .to_string()
            .contains("etcdserver: given member URLs are invalid"),
        "{invalid}"
    );
    // A learner that never starts: a second one is refused, and it can be removed.
    let etcdctl = Etcdctl {
        binary: &binaries[1],
        endpoints: cluster.host_port(0),
    };
    let spare_url = format!("--peer-urls={}", cluster.peer_url(spare));
    let added = etcdctl.ok(&["member", "add", "spare", &spare_url, "--learner"]);
    let id = added.split_whitespace().nth(1).unwrap().to_string();
    let (ok, _, stderr) = etcdctl.run(
        &[
            "member",
            "add",
            "y",
            "--peer-urls=http://127.0.0.1:2",
            "--learner",
        ],
        None,
    );
    assert!(
        !ok && stderr.contains("too many learner members"),
        "{stderr}"
    );
    let (ok, _, stderr) = etcdctl.run(&["member", "promote", &id], None);
    assert!(!ok && stderr.contains("in sync with leader"), "{stderr}");
    // A member's peer URLs can be changed (here the unstarted learner's).
    let moved = "http://127.0.0.1:3";
    let updated = etcdctl.ok(&["member", "update", &id, &format!("--peer-urls={moved}")]);
    assert!(updated.contains("updated in cluster"), "{updated}");
    let list = etcdctl.ok(&["member", "list"]);
    assert!(list.contains(moved), "{list}");
    etcdctl.ok(&["member", "remove", &id]);
    let list = etcdctl.ok(&["member", "list"]);
    assert_eq!(member_lines(&list).len(), 3, "{list}");
    // Writes still commit with the three voters.
    client.put("still", "writable", None).await.unwrap();
}

/// A member removed while it was down learns it from the first peer it talks to when it
/// comes back, and stops, as etcd's does ("the member has been permanently removed from
/// the cluster"); it can no longer learn it from its log, which the leader stopped feeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_down_stops_when_it_comes_back() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let down = (leader + 1) % 3;
    let mut client = cluster.client(leader).await;
    let members = client.member_list().await.unwrap();
    let id = members
        .members()
        .iter()
        .find(|m| m.name() == cluster.members[down].name)
        .expect("the member is listed")
        .id();
    cluster.terminate(down);
    client.member_remove(id).await.unwrap();
    for i in 0..10 {
        client.put(format!("after/{i}"), "v", None).await.unwrap();
    }

    cluster.restart(down);
    assert!(
        cluster.wait_for_exit(down, Duration::from_secs(30)),
        "the removed member went on running: {}",
        cluster.log(down)
    );
    assert!(
        cluster
            .log(down)
            .contains("a peer reports that this member has been removed from the cluster"),
        "{}",
        cluster.log(down)
    );
    // The two that remain go on, and do not list it.
    client.put("after/last", "v", None).await.unwrap();
    let members = client.member_list().await.unwrap();
    assert_eq!(members.members().len(), 2);
    assert!(members.members().iter().all(|m| m.id() != id));
}

/// etcd's `--strict-reconfig-check`, on by default: a voter change after which the
/// members that are up could not form a quorum is refused, since the group would stop
/// committing until the missing members came back; removing a member that is down is
/// allowed, and learners, which do not vote, are never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_would_leave_too_few_members_up_is_refused() {
    let mut cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_published_members().await;
    let leader = cluster.wait_for_leader().await;
    let (down, live) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut client = cluster.client(leader).await;
    let members = client.member_list().await.unwrap();
    let id_of = |i: usize| {
        members
            .members()
            .iter()
            .find(|m| m.name() == cluster.members[i].name)
            .expect("the member is listed")
            .id()
    };
    let (down_id, live_id) = (id_of(down), id_of(live));

    // Three voters started and up: two voters that never start may join (three of five
    // is a quorum), a third may not (three of six is not).
    let never = |port: u16| format!("http://127.0.0.1:{port}");
    let mut unstarted = Vec::new();
    for port in [1, 2] {
        let added = client.member_add([never(port)], None).await.unwrap();
        unstarted.push(added.member().unwrap().id());
    }
    let refused = client
        .member_add([never(3)], None)
        .await
        .expect_err("a sixth voter with three started is refused");
    let status = common::status_of(refused);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.message(),
        "etcdserver: re-configuration failed due to not enough started members"
    );
    for id in unstarted {
        client.member_remove(id).await.unwrap();
    }

    // One of three down: after an election timeout the leader no longer counts it.
    cluster.kill(down);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (what, outcome) in [
        (
            "removing a live member",
            client.member_remove(live_id).await.map(drop),
        ),
        (
            "adding a fourth voter",
            client.member_add([never(4)], None).await.map(drop),
        ),
    ] {
        let status = common::status_of(outcome.expect_err(what));
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{what}: {status:?}"
        );
        assert_eq!(status.message(), "etcdserver: unhealthy cluster", "{what}");
    }
    // A learner does not vote: it may come and go.
    let options = etcd_client::MemberAddOptions::new().with_is_learner();
    let learner = client.member_add([never(5)], Some(options)).await.unwrap();
    client
        .member_remove(learner.member().unwrap().id())
        .await
        .unwrap();
    // Removing the member that is down leaves two of two up.
    client.member_remove(down_id).await.unwrap();
    let members = client.member_list().await.unwrap();
    assert_eq!(members.members().len(), 2);
    client.put("still", "writable", None).await.unwrap();
}

/// MemberRemove of a member that is down and led the meta range: the meta range elects
/// another leader first (its followers learn of the death through node liveness), and the
/// removal goes on without the client seeing "leader changed" (CI once saw it, when the
/// removal was forwarded to the dead leader and not retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_down_member_that_led_the_meta_range() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let data_leader = cluster.wait_for_leader().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let meta_leader = loop {
        let leaders: Vec<usize> = (0..3)
            .filter(|&i| {
                common::metrics(cluster.members[i].client_port)["ostrakon_oracle_is_leader"] == 1.0
            })
            .collect();
        if let [leader] = leaders[..] {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "no meta range leader: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut client = cluster.client((meta_leader + 1) % 3).await;
    let ids: Vec<u64> = {
        let members = client.member_list().await.unwrap();
        (0..3)
            .map(|i| {
                members
                    .members()
                    .iter()
                    .find(|m| m.name() == cluster.members[i].name)
                    .expect("every member is listed")
                    .id()
            })
            .collect()
    };
    if data_leader == meta_leader {
        // Only the meta range's leader should go down: move the data range's away.
        let target = ids[(meta_leader + 1) % 3];
        let mut leader_client = cluster.client(data_leader).await;
        leader_client.move_leader(target).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.leader().await != Some((meta_leader + 1) % 3) {
            assert!(
                Instant::now() < deadline,
                "the data range's leadership did not move"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.terminate(meta_leader);
    client.member_remove(ids[meta_leader]).await.unwrap();
    client.put("after-removal", "v", None).await.unwrap();
    let (_, count) = common::timestamps(&cluster.endpoint((meta_leader + 1) % 3), 2)
        .await
        .expect("the two members left serve the oracle");
    assert_eq!(count, 2);
}
