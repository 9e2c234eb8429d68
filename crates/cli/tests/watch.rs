//! etcd's Watch API against a real 3-member cluster, through the etcd-client crate and a
//! raw gRPC stream: events in order with prev_kv, history from a past revision on any
//! member, filters, several watchers on one stream, cancellation, compaction, progress,
//! and a watcher that stops reading while writes go on and later gets every revision.

mod common;

use std::time::Duration;

use common::TestCluster;
use etcd_client::{CompactionOptions, EventType, WatchFilterType, WatchOptions, WatchStream};

async fn next(stream: &mut WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response within 10 s")
        .expect("the watch stream works")
        .expect("the watch stream stays open")
}

/// (type, key, value, mod revision, previous value) of each event in `response`.
fn events(
    response: &etcd_client::WatchResponse,
) -> Vec<(EventType, String, String, i64, Option<String>)> {
    response
        .events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_history_filters_cancel_and_compaction_match_etcd() {
    let cluster =
        TestCluster::start(3, &["--experimental-watch-progress-notify-interval", "1s"]).await;
    let mut c0 = cluster.client(0).await;
    let mut c1 = cluster.client(1).await;

    // From now, on a prefix, with previous values; writes go through another member.
    let (mut watcher, mut stream) = c1
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(
        watcher.watch_id(),
        0,
        "etcd's first automatic watch id is 0"
    );
    let revision_of = |header: Option<&etcd_client::ResponseHeader>| header.unwrap().revision();
    let r2 = revision_of(c0.put("w/a", "1", None).await.unwrap().header());
    let r3 = revision_of(c0.put("other", "x", None).await.unwrap().header()); // outside
    let r4 = revision_of(c0.put("w/a", "2", None).await.unwrap().header());
    let r5 = revision_of(c0.delete("w/a", None).await.unwrap().header());
    if !common::splits_eagerly() {
        // etcd's dense revisions on a keyspace of one range (sparse ones in ranges).
        assert_eq!((r2, r3, r4, r5), (2, 3, 4, 5));
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(events(&next(&mut stream).await));
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, "w/a".into(), "1".into(), r2, None),
            (
                EventType::Put,
                "w/a".into(),
                "2".into(),
                r4,
                Some("1".into())
            ),
            (
                EventType::Delete,
                "w/a".into(),
                "".into(),
                r5,
                Some("2".into())
            ),
        ]
    );

    // A second watcher on the same stream, with a chosen id, from a past revision, with
    // deletes filtered out: the history from storage.
    watcher
        .watch(
            "w/a",
            Some(
                WatchOptions::new()
                    .with_start_revision(r2)
                    .with_watch_id(7)
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await
        .unwrap();
    let created = next(&mut stream).await;
    assert!(created.created() && created.watch_id() == 7);
    let mut history = Vec::new();
    while history.len() < 2 {
        let response = next(&mut stream).await;
        assert_eq!(response.watch_id(), 7);
        history.extend(events(&response));
    }
    assert_eq!(
        history,
        vec![
            (EventType::Put, "w/a".into(), "1".into(), r2, None),
            (EventType::Put, "w/a".into(), "2".into(), r4, None),
        ]
    );

    // A duplicate id is refused as etcd refuses it.
    watcher
        .watch("w/b", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let refused = next(&mut stream).await;
    assert!(refused.created() && refused.canceled());
    assert_eq!(
        refused.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    // Cancel the first watcher: it is confirmed, and its events stop.
    watcher.cancel_by_id(0).await.unwrap();
    let canceled = next(&mut stream).await;
    assert!(canceled.canceled() && canceled.watch_id() == 0);
    let r6 = revision_of(c0.put("w/a", "3", None).await.unwrap().header());
    let response = next(&mut stream).await;
    assert_eq!(
        response.watch_id(),
        7,
        "only the remaining watcher gets events"
    );
    assert_eq!(events(&response)[0].3, r6);

    // Progress: a stream-wide response (watch id -1) at the revision delivered so far.
    watcher.request_progress().await.unwrap();
    let progress = next(&mut stream).await;
    assert_eq!(progress.watch_id(), -1);
    common::assert_header_reached(progress.header().unwrap().revision(), r6);

    // A watcher from a compacted revision is created, then canceled with the compacted
    // revision, as etcd 3.5 does it: no cancel reason, revision 0 in the header.
    c0.compact(r5, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    // A watch is served from its member's own store: a linearizable read through c1 first
    // makes c1 apply the compaction (the compaction answered once c0 had applied it).
    c1.get("w/", None).await.unwrap();
    let (_w, mut compacted) = c1
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(r3)),
        )
        .await
        .unwrap();
    let canceled = next(&mut compacted).await;
    assert!(canceled.canceled());
    assert_eq!(canceled.compact_revision(), r5);
    assert_eq!(canceled.cancel_reason(), "");
    assert_eq!(canceled.header().unwrap().revision(), 0);

    // Periodic progress notifications for a watcher that asked for them.
    let (_w, mut quiet) = c0
        .watch("quiet", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let notification = next(&mut quiet).await;
    assert!(notification.events().is_empty() && !notification.canceled());
    common::assert_header_reached(notification.header().unwrap().revision(), r6);
}

/// A client that creates a watch and stops reading while 3,000 revisions are written
/// (three times what the server buffers): the server moves on without it, and when it
/// reads again it gets every revision exactly once, in order, read back from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_later_gets_every_revision_once_in_order() {
    let cluster = TestCluster::start(3, &[]).await;
    let mut writer = cluster.client(0).await;
    let mut reader = cluster.client(2).await;
    let (_watcher, mut stream) = reader
        .watch("slow/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let value = "v".repeat(1024);
    let writes = 3000;
    let first = writer.put("slow/0", value.clone(), None).await.unwrap();
    let first_revision = first.header().unwrap().revision();
    for i in 1..writes {
        writer
            .put(format!("slow/{}", i % 50), value.clone(), None)
            .await
            .unwrap();
    }
    // Every write's revision once, in order: on one range they are dense; on a
    // keyspace in ranges (sparse revisions) they rise and none is missed (counted).
    let mut seen = 0;
    let mut last = first_revision - 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen < writes {
        assert!(
            tokio::time::Instant::now() < deadline,
            "caught up within 60 s"
        );
        let response = next(&mut stream).await;
        assert!(!response.canceled());
        for event in response.events() {
            let revision = event.kv().unwrap().mod_revision();
            if common::splits_eagerly() {
                assert!(revision > last, "revisions arrive once each, in order");
            } else {
                assert_eq!(revision, last + 1, "revisions arrive once each, in order");
            }
            last = revision;
            seen += 1;
        }
    }
    assert_eq!(seen, writes);
    // (On a keyspace split eagerly, the watcher's keys soon span ranges, and a watcher
    // of several ranges is served from their histories, never from a broadcast.)
    assert!(
        common::splits_eagerly()
            || cluster
                .log(2)
                .contains("a watch stream fell behind; catching up from storage"),
        "the server let the stalled watcher fall behind instead of buffering for it"
    );
}

/// A revision whose events exceed `--max-request-bytes` reaches a watcher that asked for
/// fragments in several responses, all but the last marked `fragment`, and whole (in one
/// response) to one that did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_revision_is_fragmented_only_for_watchers_that_ask() {
    use ostrakon_proto::etcdserverpb::watch_client::WatchClient;
    use ostrakon_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};

    let cluster = TestCluster::start(3, &["--max-request-bytes", "10000"]).await;
    let mut kv = cluster.client(0).await;
    let mut last_put = 0;
    for i in 0..10 {
        let put = kv
            .put(format!("big/{i}"), "x".repeat(3000), None)
            .await
            .unwrap();
        last_put = put.header().unwrap().revision();
    }
    // The watchers start past the last put: one started at member 1's current revision
    // could see that put as an event if member 1 had not applied it yet.
    let create = |watch_id: i64, fragment: bool| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: bytes::Bytes::from_static(b"big/"),
                range_end: bytes::Bytes::from_static(b"big0"),
                prev_kv: true,
                watch_id,
                fragment,
                start_revision: last_put + 1,
                ..WatchCreateRequest::default()
            },
        )),
    };
    let mut client = WatchClient::connect(cluster.endpoint(1)).await.unwrap();
    let requests = tokio_stream::iter(vec![create(1, true), create(2, false)]);
    let mut responses = client.watch(requests).await.unwrap().into_inner();
    let mut created = 0;
    while created < 2 {
        let response = responses.message().await.unwrap().unwrap();
        assert!(response.created);
        created += 1;
    }
    // One revision: ten deletions, each carrying its 3,000-byte previous value.
    kv.delete(
        "big/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    let mut fragments = Vec::new();
    let mut whole = None;
    while whole.is_none()
        || fragments
            .last()
            .is_none_or(|(more, _): &(bool, usize)| *more)
    {
        let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match response.watch_id {
            1 => fragments.push((response.fragment, response.events.len())),
            2 => whole = Some((response.fragment, response.events.len())),
            other => panic!("watch id {other}"),
        }
    }
    assert_eq!(
        whole,
        Some((false, 10)),
        "unfragmented for the watcher that did not ask"
    );
    assert!(fragments.len() >= 3, "{fragments:?}");
    let (last, rest) = fragments.split_last().unwrap();
    assert!(
        !last.0 && rest.iter().all(|(more, _)| *more),
        "{fragments:?}"
    );
    assert_eq!(fragments.iter().map(|(_, n)| n).sum::<usize>(), 10);
}
