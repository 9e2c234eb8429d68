//! Checks that need no state, done once before a request is proposed or served.

use std::collections::HashSet;

use bytes::Bytes;
use ostrakon_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::errors::ApiError;

/// Limits from the server's flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `--max-txn-ops`: operations per Txn list (compare, success, failure).
    pub txn_ops_max: usize,
    /// `--max-request-bytes`: the largest write request.
    pub request_bytes_max: usize,
}

/// A Range request.
pub fn range(request: &RangeRequest) -> Result<(), ApiError> {
    if request.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

/// A Put request.
pub fn put(request: &PutRequest) -> Result<(), ApiError> {
    if request.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    Ok(())
}

/// A DeleteRange request.
pub fn delete_range(request: &DeleteRangeRequest) -> Result<(), ApiError> {
    if request.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

/// A Txn request: limits, each operation, and no key written twice on any path.
pub fn txn(request: &TxnRequest, limits: &Limits) -> Result<(), ApiError> {
    check_txn_ops(request, limits)?;
    check_intervals(&request.success)?;
    check_intervals(&request.failure)?;
    Ok(())
}

fn check_txn_ops(request: &TxnRequest, limits: &Limits) -> Result<(), ApiError> {
    let max = limits.txn_ops_max;
    if request.compare.len() > max || request.success.len() > max || request.failure.len() > max {
        return Err(ApiError::TooManyOps);
    }
    for compare in &request.compare {
        if compare.key.is_empty() {
            return Err(ApiError::EmptyKey);
        }
    }
    for op in request.success.iter().chain(&request.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => range(r)?,
            Some(request_op::Request::RequestPut(p)) => put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => delete_range(d)?,
            Some(request_op::Request::RequestTxn(t)) => check_txn_ops(t, limits)?,
            None => {}
        }
    }
    Ok(())
}

/// A deleted range as etcd's duplicate check sees it: `[key, end)` compared bytewise, a
/// single key when `end` is empty. etcd takes an `end` of "\0" literally here (not as
/// "every key from `key` on", as the delete itself does), so such a delete conflicts
/// with no put but one of the empty key; a Txn that etcd accepts must be accepted.
struct Deleted {
    key: Bytes,
    end: Bytes,
}

impl Deleted {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            return k == self.key.as_ref();
        }
        k >= self.key.as_ref() && k < self.end.as_ref()
    }
}

/// etcd's rule (`checkIntervals`): within one list of operations and the lists nested in
/// it, no key may be put twice, and no key may be both put and deleted. The success and
/// failure lists of a nested Txn are alternatives, so the same key may be put in both.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<Deleted>), ApiError> {
    let mut deletes: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Deleted {
                key: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = check_intervals(&nested.success)?;
        let (puts_else, deletes_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deletes.iter().any(|d| d.contains(key)) {
                return Err(ApiError::DuplicateKey);
            }
        }
        for key in &puts_else {
            let from_then = puts_then.contains(key);
            if (puts.contains(key) && !from_then) || deletes.iter().any(|d| d.contains(key)) {
                return Err(ApiError::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || deletes.iter().any(|d| d.contains(&put.key)) {
            return Err(ApiError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deletes))
}

/// The write's encoded size against `--max-request-bytes`.
pub fn size(encoded_bytes: usize, limits: &Limits) -> Result<(), ApiError> {
    if encoded_bytes > limits.request_bytes_max {
        return Err(ApiError::RequestTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &'static str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from_static(key.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn delete_op(key: &'static str, end: &'static str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: Bytes::from_static(key.as_bytes()),
                    range_end: Bytes::from_static(end.as_bytes()),
                    prev_kv: false,
                },
            )),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    const LIMITS: Limits = Limits {
        txn_ops_max: 128,
        request_bytes_max: 1 << 20,
    };

    fn check(success: Vec<RequestOp>) -> Result<(), ApiError> {
        txn(
            &TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            &LIMITS,
        )
    }

    #[test]
    fn one_key_written_twice_is_refused_as_etcd_does() {
        assert_eq!(
            check(vec![put_op("a"), put_op("a")]),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check(vec![put_op("b"), delete_op("a", "c")]),
            Err(ApiError::DuplicateKey)
        );
        // etcd's check takes an end of "\0" literally (an empty interval after "a"), so
        // it accepts this, and so must ostrakon (found by the differential test).
        assert_eq!(check(vec![put_op("z"), delete_op("a", "\0")]), Ok(()));
        assert_eq!(
            check(vec![put_op("a"), nested(vec![put_op("a")], vec![])]),
            Err(ApiError::DuplicateKey)
        );
        // Two deletes may overlap, and the two branches of a nested txn are alternatives.
        assert_eq!(
            check(vec![delete_op("a", "c"), delete_op("b", "d")]),
            Ok(())
        );
        assert_eq!(
            check(vec![nested(vec![put_op("a")], vec![put_op("a")])]),
            Ok(())
        );
        assert_eq!(check(vec![put_op("a"), put_op("b")]), Ok(()));
        assert_eq!(
            check(vec![put_op("c"), delete_op("a", "c")]),
            Ok(()),
            "range ends are exclusive"
        );
    }

    #[test]
    fn too_many_operations_and_empty_keys_are_refused() {
        let many: Vec<RequestOp> = (0..129).map(|_| delete_op("a", "")).collect();
        assert_eq!(check(many), Err(ApiError::TooManyOps));
        assert_eq!(check(vec![put_op("")]), Err(ApiError::EmptyKey));
        let deep = nested(
            vec![nested(
                (0..129).map(|_| delete_op("a", "")).collect(),
                vec![],
            )],
            vec![],
        );
        assert_eq!(check(vec![deep]), Err(ApiError::TooManyOps));
    }
}
