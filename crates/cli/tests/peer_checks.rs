//! The peer RPCs other than the raft stream (forwarded writes, membership changes, lease
//! queries, snapshots) make the raft stream's checks: a request from another cluster, or
//! from a member the cluster removed, is refused and changes nothing. Before, only the
//! raft stream checked, so a removed member (or a member of another cluster pointed at
//! the wrong peer URL) could still write through the leader.

mod common;

use common::TestCluster;
use etcd_client::MemberAddOptions;
use ostrakon_proto::etcdserverpb::PutRequest;
use ostrakon_proto::peer::peer_client::PeerClient;
use ostrakon_proto::peer::{
    write_request, ForwardRequest, LeaseQuery, MembershipChangeRequest, WriteRequest,
};

const REMOVED: &str = "the member has been permanently removed from the cluster";

fn forward_put(key: &str, cluster_id: u64, from: u64) -> ForwardRequest {
    ForwardRequest {
        group: 1,
        write: Some(WriteRequest {
            origin: 0,
            id: 0,
            request: Some(write_request::Request::Put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            })),
            auth_revision: 0,
            trace_parent: String::new(),
            revision: 0,
            only_in_term: 0,
        }),
        cluster_id,
        from,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_requests_from_another_cluster_or_a_removed_member_are_refused() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    let header = client.put("warm", "up", None).await.unwrap();
    let cluster_id = header.header().unwrap().cluster_id();
    let member_of = |i: usize| cluster.members[i].name.clone();
    let members = client.member_list().await.unwrap();
    let follower_id = members
        .members()
        .iter()
        .find(|m| m.name() != member_of(leader))
        .unwrap()
        .id();

    // A member that is added (as a learner that never starts) and removed again: the
    // registry keeps its id as removed.
    let added = client
        .member_add(
            ["http://127.0.0.1:1"],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let removed_id = added.member().unwrap().id();
    client.member_remove(removed_id).await.unwrap();

    let mut peer = PeerClient::connect(cluster.peer_url(leader)).await.unwrap();
    let other_cluster = cluster_id ^ 0x5a5a;

    // Forwarded writes.
    let status = peer
        .forward(forward_put(
            "from-another-cluster",
            other_cluster,
            follower_id,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("peer belongs to cluster"),
        "{status:?}"
    );
    let status = peer
        .forward(forward_put("from-a-removed-member", cluster_id, removed_id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), REMOVED);
    // A member of this cluster is served (the checks refuse only what they should).
    peer.forward(forward_put("from-a-member", cluster_id, follower_id))
        .await
        .unwrap();
    for (key, stored) in [
        ("from-another-cluster", false),
        ("from-a-removed-member", false),
        ("from-a-member", true),
    ] {
        let got = client.get(key, None).await.unwrap();
        assert_eq!(got.count() == 1, stored, "{key}");
    }

    // Lease queries and membership changes.
    let lease = |cluster_id: u64, from: u64| LeaseQuery {
        group: 1,
        id: 1,
        renew: true,
        cluster_id,
        from,
    };
    for query in [
        lease(other_cluster, follower_id),
        lease(cluster_id, removed_id),
    ] {
        let status = peer.lease(query).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    }
    peer.lease(lease(cluster_id, follower_id)).await.unwrap();
    let change = |cluster_id: u64, from: u64| MembershipChangeRequest {
        group: 1,
        change: None,
        cluster_id,
        from,
    };
    for request in [
        change(other_cluster, follower_id),
        change(cluster_id, removed_id),
    ] {
        let status = peer.change_membership(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    }
    // From a member, the request itself is then judged (it carries no change).
    let status = peer
        .change_membership(change(cluster_id, follower_id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let listed = client.member_list().await.unwrap().members().len();
    assert_eq!(listed, 3, "no membership changed");
}

/// A snapshot stream from a member of the cluster, with its first chunk of data; the
/// stream stays open (more chunks may follow) while `chunks` lives.
async fn open_snapshot_stream(
    peer_url: String,
    cluster_id: u64,
    from: u64,
    to: u64,
    index: u64,
) -> (
    tokio::sync::mpsc::Sender<ostrakon_proto::peer::SnapshotChunk>,
    tokio::task::JoinHandle<
        Result<tonic::Response<ostrakon_proto::peer::SnapshotAck>, tonic::Status>,
    >,
) {
    use ostrakon_proto::peer::{RaftMessage, SnapshotChunk, SnapshotHeader};
    use ostrakon_raft::{
        ConfState, GroupId, LogIndex, Message, MessageBody, NodeId, SnapshotMeta, Term,
    };
    let message = Message {
        group: GroupId(1),
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: LogIndex(index),
                term: Term(1),
                conf_state: ConfState::default(),
            },
        },
    };
    let (chunks, stream) = tokio::sync::mpsc::channel(4);
    chunks
        .send(SnapshotChunk {
            header: Some(SnapshotHeader {
                cluster_id,
                group: 1,
                from,
                to,
                message: Some(RaftMessage::from(&message)),
            }),
            data: vec![7u8; 4096].into(),
            last: false,
            crc32c: 0,
        })
        .await
        .unwrap();
    let mut client = PeerClient::connect(peer_url).await.unwrap();
    let call = tokio::spawn(async move {
        client
            .snapshot(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
    });
    (chunks, call)
}

/// The received files in member `i`'s snapshot directory (`incoming-*`, partial or not).
fn incoming_files(cluster: &TestCluster, i: usize) -> Vec<String> {
    std::fs::read_dir(cluster.data_dir(i).join("member/snap"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("incoming-"))
        .collect()
}

/// Snapshots are received at most two at a time (a third is refused, and the leader
/// would send it again later), and a stream that breaks off midway leaves no partial
/// file behind. Before, every stream was accepted and an aborted one's file stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_snapshots_are_bounded_and_an_aborted_one_leaves_no_file() {
    let cluster = TestCluster::start(3, &[]).await;
    let mut client = cluster.client(0).await;
    let header = client.put("warm", "up", None).await.unwrap();
    let cluster_id = header.header().unwrap().cluster_id();
    // Member 2 receives; another member sends.
    let receiver = 2;
    let members = client.member_list().await.unwrap();
    let id_of = |name: &str| {
        members
            .members()
            .iter()
            .find(|m| m.name() == name)
            .unwrap()
            .id()
    };
    let to = id_of(&cluster.members[receiver].name);
    let from = id_of(&cluster.members[0].name);
    let url = cluster.peer_url(receiver);

    // Two streams in progress (indexes far ahead, so nothing would install them).
    let first = open_snapshot_stream(url.clone(), cluster_id, from, to, 1_000_001).await;
    let second = open_snapshot_stream(url.clone(), cluster_id, from, to, 1_000_002).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while incoming_files(&cluster, receiver).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two streams did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A third is refused at once.
    let (_third_chunks, third) =
        open_snapshot_stream(url.clone(), cluster_id, from, to, 1_000_003).await;
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), third)
        .await
        .expect("a third concurrent snapshot is refused at once, not received")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Both senders go away midway: their partial files are removed.
    for (chunks, call) in [first, second] {
        drop(chunks);
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = incoming_files(&cluster, receiver);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // And a new stream is accepted again once they ended.
    let (chunks, call) = open_snapshot_stream(url, cluster_id, from, to, 1_000_004).await;
    drop(chunks);
    assert_eq!(
        call.await.unwrap().unwrap_err().code(),
        tonic::Code::Aborted
    );
}

/// A peer that stops reading (SIGSTOP) fills the leader's send queue to it (made tiny
/// here): the leader drops what does not fit, reports the peer unreachable to raft and
/// goes on serving; the peer catches up once it resumes. The first version reported it
/// between raft's ready() and advance(), which raft refuses with a panic: the leader died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_peer_send_queue_drops_messages_and_the_leader_goes_on() {
    let cluster =
        TestCluster::start_with_env(3, &[], &[("OSTRAKON_PEER_QUEUE_MESSAGES_MAX", "2")]).await;
    let leader = cluster.wait_for_leader().await;
    let stopped = (leader + 1) % 3;
    let pid = cluster.pid(stopped);
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let mut client = cluster.client(leader).await;
    // Raft keeps at most 256 appends in flight to a peer: they must outweigh what the
    // HTTP/2 window and the kernel's socket buffers absorb (a few MiB) before the queue
    // fills.
    let value = "v".repeat(64 << 10);
    let keys: Vec<String> = (0..400).map(|i| format!("w{i:04}")).collect();
    let mut dropped = 0.0;
    for (i, key) in keys.iter().enumerate() {
        client
            .put(key.clone(), value.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("put {i} failed: {e}\n{}", cluster.log(leader)));
        if i % 50 == 49 {
            dropped = leader_metric(&cluster, leader, "ostrakon_peer_messages_dropped_total");
        }
    }
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert!(
        dropped > 0.0,
        "the tiny queue to the stopped peer never filled"
    );
    assert!(cluster.is_running(leader));
    let log = cluster.log(leader);
    assert!(!log.contains("panicked"), "{log}");
    // The resumed peer catches up on everything.
    let mut resumed = cluster.client(stopped).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = resumed
            .get(
                "w",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await;
        if got.as_ref().is_ok_and(|g| g.count() == keys.len() as i64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the resumed peer did not catch up: {got:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn leader_metric(cluster: &TestCluster, i: usize, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", cluster.members[i].client_port)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}
