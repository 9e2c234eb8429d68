//! A queue of owners under a key prefix, ordered by create revision: what etcd's Lock and
//! Election services are built on. Each member of the queue is a key attached to its
//! owner's lease; the owner at the head is the one with the smallest create revision.

use std::sync::Arc;

use bytes::Bytes;
use ostrakon_node::NodeHandle;
use ostrakon_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use ostrakon_proto::mvccpb::event::EventType;
use ostrakon_proto::mvccpb::KeyValue;
use ostrakon_proto::peer::write_request::Request as Write;
use ostrakon_storage::mvcc::{self, RevisionEvents, WriteOutcome};
use tokio::sync::broadcast;

use crate::errors::ApiError;
use crate::routed::RoutedRead;

/// The queue's key for an owner: `<name>/<lease in hex>`.
pub fn owner_key(name: &[u8], lease: i64) -> (Bytes, Bytes) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let key = format!("{}{:x}", String::from_utf8_lossy(&prefix), lease);
    (Bytes::from(prefix), Bytes::from(key))
}

/// Creates the owner's key with `value` unless it exists (the same lease joining twice is
/// one place in the queue); returns the key as stored.
pub async fn enqueue(
    node: &NodeHandle,
    key: &Bytes,
    value: Bytes,
    lease: i64,
    caller: &crate::auth::Caller,
    check: impl Fn(&crate::auth::Caller) -> Result<(), ApiError>,
) -> Result<KeyValue, ApiError> {
    let read_key = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..RangeRequest::default()
        })),
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            key: key.clone(),
            target: compare::CompareTarget::Create as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            range_end: Bytes::new(),
        }],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value,
                    lease,
                    ..PutRequest::default()
                })),
            },
            read_key.clone(),
        ],
        failure: vec![read_key],
    };
    // Refused at apply if the caller's permissions changed since they were checked, and
    // then checked again (`check`) against the auth store as it stands.
    let WriteOutcome::Txn(response) =
        crate::auth::write_rechecked(node, caller, Write::Txn(txn), |caller, _| check(caller))
            .await?
    else {
        panic!("a queue's txn answered with another kind of outcome");
    };
    Ok(response
        .responses
        .iter()
        .find_map(|r| match &r.response {
            Some(response_op::Response::ResponseRange(range)) => range.kvs.first().cloned(),
            _ => None,
        })
        .expect("the queue key exists right after its txn"))
}

/// One key under `prefix` at a linearizable point: the newest created before
/// `created_before` (`Descend`), or the oldest (`Ascend`, with `created_before` 0).
async fn one_key(
    node: &NodeHandle,
    prefix: &Bytes,
    created_before: i64,
    order: range_request::SortOrder,
) -> Result<Option<KeyValue>, ApiError> {
    let end = prefix_end(prefix);
    let routed = crate::routed::read_at(node, &[(&prefix[..], &end[..])], true, 0).await?;
    let request = RangeRequest {
        key: prefix.clone(),
        range_end: end,
        max_create_revision: (created_before - 1).max(0),
        sort_order: order as i32,
        sort_target: range_request::SortTarget::Create as i32,
        limit: 1,
        ..RangeRequest::default()
    };
    let response = tokio::task::spawn_blocking(move || match routed {
        RoutedRead::One(view) => mvcc::range(&view, &request),
        RoutedRead::Across { views, at, .. } => mvcc::range_across(&views, &request, at),
    })
    .await
    .expect("a queue's range panicked")?;
    Ok(response.kvs.into_iter().next())
}

/// The owner at the head of the queue, if any.
pub async fn head(node: &NodeHandle, prefix: &Bytes) -> Result<Option<KeyValue>, ApiError> {
    one_key(node, prefix, 0, range_request::SortOrder::Ascend).await
}

/// Waits until no key under `prefix` was created before `created`: the owner whose key
/// was created at `created` is then at the head.
pub async fn wait_for_turn(
    node: &NodeHandle,
    prefix: &Bytes,
    created: i64,
) -> Result<(), ApiError> {
    loop {
        // Subscribe before looking, so a delete between the two is not missed: to the
        // range holding the queue's first key, where the predecessor most likely is.
        // The wait is bounded, so a predecessor in another range, or moved by a split,
        // is looked for again.
        let mut events = prefix_events(node, prefix).await?;
        match one_key(node, prefix, created, range_request::SortOrder::Descend).await? {
            None => return Ok(()),
            Some(predecessor) => {
                let _ = tokio::time::timeout(TURN_RECHECK, deleted(&mut events, &predecessor.key))
                    .await;
            }
        }
    }
}

/// How long a queue member waits for its predecessor's delete (or an election observer
/// for a change under its prefix) before it looks again.
pub const TURN_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// The events of the range holding the queue's first keys (where its members most
/// likely are: a queue's keys share a prefix). Callers look again after `TURN_RECHECK`
/// as well, for members in another range or moved by a split.
pub async fn prefix_events(
    node: &NodeHandle,
    prefix: &Bytes,
) -> Result<broadcast::Receiver<Arc<RevisionEvents>>, ApiError> {
    let end = prefix_end(prefix);
    let holder = node.ranges_touched(&[(&prefix[..], &end[..])]).await?[0];
    Ok(node.subscribe_events(holder)?)
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// Waits until `key` is deleted (or the event stream lagged, so the caller looks again).
pub async fn deleted(events: &mut broadcast::Receiver<Arc<RevisionEvents>>, key: &[u8]) {
    loop {
        match events.recv().await {
            Ok(revision) => {
                let gone = revision.events.iter().any(|e| {
                    e.r#type == EventType::Delete as i32
                        && e.kv.as_ref().is_some_and(|kv| kv.key == key)
                });
                if gone {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"lock/"), Bytes::from_static(b"lock0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
    }
}
