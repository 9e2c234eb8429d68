//! The key intervals a request touches, in etcd's `(key, range_end)` form: what a range
//! checks before a write takes effect, and what the router maps to ranges.

use ostrakon_proto::etcdserverpb::{request_op, TxnRequest};
use ostrakon_proto::peer::write_request;

/// An etcd key interval: `range_end` empty is `key` alone, `"\0"` every key from `key`.
pub type KeyInterval<'a> = (&'a [u8], &'a [u8]);

/// Every interval a write reads or changes; empty for writes that touch no user key
/// (leases, members, auth, alarms, compaction).
pub fn write_intervals(request: &write_request::Request) -> Vec<KeyInterval<'_>> {
    use write_request::Request;
    let mut out = Vec::new();
    match request {
        Request::Put(put) => out.push((put.key.as_ref(), &[][..])),
        Request::DeleteRange(delete) => out.push((delete.key.as_ref(), delete.range_end.as_ref())),
        Request::Txn(txn) => txn_intervals(txn, &mut out),
        _ => {}
    }
    out
}

/// Every interval a Txn compares, reads or changes, nested Txns included (both branches:
/// which runs is decided at apply).
pub fn txn_intervals<'a>(txn: &'a TxnRequest, out: &mut Vec<KeyInterval<'a>>) {
    for compare in &txn.compare {
        out.push((compare.key.as_ref(), compare.range_end.as_ref()));
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(range)) => {
                out.push((range.key.as_ref(), range.range_end.as_ref()))
            }
            Some(request_op::Request::RequestPut(put)) => out.push((put.key.as_ref(), &[][..])),
            Some(request_op::Request::RequestDeleteRange(delete)) => {
                out.push((delete.key.as_ref(), delete.range_end.as_ref()))
            }
            Some(request_op::Request::RequestTxn(nested)) => txn_intervals(nested, out),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_proto::etcdserverpb::{
        Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    };

    fn op(request: request_op::Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    #[test]
    fn a_txn_touches_its_compares_and_both_branches_nested_ones_included() {
        let nested = TxnRequest {
            success: vec![op(request_op::Request::RequestPut(PutRequest {
                key: "n".into(),
                ..Default::default()
            }))],
            ..Default::default()
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                key: "c".into(),
                range_end: "d".into(),
                ..Default::default()
            }],
            success: vec![op(request_op::Request::RequestRange(RangeRequest {
                key: "r".into(),
                ..Default::default()
            }))],
            failure: vec![
                op(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: "x".into(),
                        range_end: "\0".into(),
                        ..Default::default()
                    },
                )),
                op(request_op::Request::RequestTxn(nested)),
            ],
        };
        let request = write_request::Request::Txn(txn);
        let intervals = write_intervals(&request);
        let expected: Vec<KeyInterval> =
            vec![(b"c", b"d"), (b"r", b""), (b"x", b"\0"), (b"n", b"")];
        assert_eq!(intervals, expected);
    }
}
