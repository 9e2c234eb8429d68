//! etcd's request semantics over the store: Range, Put, DeleteRange, Txn, Compaction.
//!
//! Validation that needs no state (empty keys, too many operations, duplicate keys) is
//! done by the server before a request is proposed; what needs state is done here, at
//! apply time, identically on every member.

use bytes::Bytes;
use ostrakon_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, CompactionResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseCheckpointResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use ostrakon_proto::mvccpb::KeyValue;
use ostrakon_proto::peer::{write_request, write_response, WriteRequest};
use ostrakon_raft::{GroupId, LogIndex, Term};

use super::latest::KeyMeta;
use super::store::{ReadView, WriteTxn};
use super::{MemberChange, MvccError, MvccStore, Revision};

fn header(revision: Revision) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: revision.0,
        ..ResponseHeader::default()
    })
}

/// Where a Range reads from: a read-only view, or a write transaction (which sees its own
/// writes).
trait RangeSource {
    fn view(&self) -> &ReadView;
    /// Whether there are writes not yet in the view (a write transaction's own).
    fn has_own_writes(&self) -> bool;
    fn range_latest(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue>;
    /// The newest live version of one key as of now, without its value.
    fn latest_meta(&self, key: &[u8]) -> Option<KeyMeta>;
    fn response_revision(&self) -> Revision;
}

impl RangeSource for ReadView {
    fn view(&self) -> &ReadView {
        self
    }
    fn has_own_writes(&self) -> bool {
        false
    }
    fn range_latest(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        self.range(key, range_end, self.current_revision())
    }
    fn latest_meta(&self, key: &[u8]) -> Option<KeyMeta> {
        ReadView::latest_meta(self, key)
    }
    fn response_revision(&self) -> Revision {
        self.current_revision()
    }
}

impl RangeSource for WriteTxn<'_> {
    fn view(&self) -> &ReadView {
        WriteTxn::view(self)
    }
    fn has_own_writes(&self) -> bool {
        WriteTxn::has_changes(self)
    }
    fn range_latest(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        WriteTxn::range_latest(self, key, range_end)
    }
    fn latest_meta(&self, key: &[u8]) -> Option<KeyMeta> {
        WriteTxn::latest_meta(self, key)
    }
    fn response_revision(&self) -> Revision {
        WriteTxn::response_revision(self)
    }
}

/// Serves a Range from a consistent view (the header's revision is the view's current
/// revision, whatever revision was read, as in etcd).
pub fn range(view: &ReadView, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
    range_from(view, request)
}

fn range_from(
    source: &impl RangeSource,
    request: &RangeRequest,
) -> Result<RangeResponse, MvccError> {
    let at = source.view().resolve(request.revision)?;
    let (kvs, count) = if !source.has_own_writes() && !needs_every_key(request) {
        // Nothing to sort or filter: copy out only what is returned (plus one, for `more`).
        let materialize = if request.count_only {
            0
        } else if request.limit > 0 {
            request.limit as usize + 1
        } else {
            usize::MAX
        };
        source
            .view()
            .range_counted(&request.key, &request.range_end, at, materialize)
    } else if at == source.view().current_revision() {
        let kvs = source.range_latest(&request.key, &request.range_end);
        let count = kvs.len();
        (kvs, count)
    } else {
        let kvs = source.view().range(&request.key, &request.range_end, at);
        let count = kvs.len();
        (kvs, count)
    };
    let (kvs, more) = shape(kvs, request);
    Ok(RangeResponse {
        header: header(source.response_revision()),
        kvs,
        more,
        count: count as i64,
    })
}

/// Serves a Range across several ranges at one revision `at`: `views` are the ranges'
/// views in key order, together holding every key of the request (each view reads the
/// part of the request in its span). A view whose range has no write above its current
/// revision up to `at` (the caller made sure) is read at its current revision. The
/// response is what one range holding every key would answer at `at`.
pub fn range_across(
    views: &[ReadView],
    request: &RangeRequest,
    at: Revision,
) -> Result<RangeResponse, MvccError> {
    let fast = !needs_every_key(request);
    let materialize_max = if request.count_only {
        0
    } else if request.limit > 0 && fast {
        request.limit as usize + 1
    } else {
        usize::MAX
    };
    let mut kvs = Vec::new();
    let mut count = 0;
    for view in views {
        let read_at = view.resolve(at.min(view.current_revision()).0)?;
        let Some((key, range_end)) = view.span().clip(&request.key, &request.range_end) else {
            continue;
        };
        let (mut part, part_count) = view.range_counted(
            &key,
            &range_end,
            read_at,
            materialize_max.saturating_sub(kvs.len()),
        );
        kvs.append(&mut part);
        count += part_count;
    }
    let (kvs, more) = shape(kvs, request);
    Ok(RangeResponse {
        header: header(at),
        kvs,
        more,
        count: count as i64,
    })
}

/// What etcd makes of the live keys a Range read, in key order: filtered, sorted and
/// limited. Returns them and whether more were left out.
fn shape(mut kvs: Vec<KeyValue>, request: &RangeRequest) -> (Vec<KeyValue>, bool) {
    if request.count_only {
        // etcd counts without reading the keys, so nothing is left over for `more`.
        kvs.clear();
    }
    if limits_before_sorting(request) {
        // etcd reads only the first `limit + 1` keys (in key order) when the request
        // names no sort order and no filter, then sorts those by the target: a target
        // without an order sorts a page, not the range.
        kvs.truncate(request.limit as usize + 1);
    }
    prune(&mut kvs, request);
    sort(&mut kvs, request);
    let mut more = false;
    if request.limit > 0 && kvs.len() > request.limit as usize {
        kvs.truncate(request.limit as usize);
        more = true;
    }
    if request.keys_only {
        for kv in &mut kvs {
            kv.value = Default::default();
        }
    }
    (kvs, more)
}

/// Whether etcd applies the limit before sorting (see `range_from`).
fn limits_before_sorting(r: &RangeRequest) -> bool {
    r.limit > 0
        && r.sort_order == range_request::SortOrder::None as i32
        && r.min_mod_revision == 0
        && r.max_mod_revision == 0
        && r.min_create_revision == 0
        && r.max_create_revision == 0
}

/// Whether the request sorts or filters, so every key in the range must be built.
fn needs_every_key(r: &RangeRequest) -> bool {
    use range_request::{SortOrder, SortTarget};
    let sorts = !matches!(
        (
            SortTarget::try_from(r.sort_target),
            SortOrder::try_from(r.sort_order)
        ),
        (Ok(SortTarget::Key), Ok(SortOrder::None | SortOrder::Ascend))
    );
    sorts
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
}

/// etcd filters by mod and create revision after counting.
fn prune(kvs: &mut Vec<KeyValue>, r: &RangeRequest) {
    kvs.retain(|kv| {
        (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
    });
}

fn sort(kvs: &mut [KeyValue], r: &RangeRequest) {
    use range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    // As etcd: a target other than the key with no order means ascending; the store
    // already returns keys ascending.
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    if order == SortOrder::None {
        return;
    }
    // Stable sorts over key-ordered input: ties keep key order.
    match target {
        SortTarget::Key => {}
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        if target == SortTarget::Key {
            kvs.reverse();
        } else {
            reverse_keeping_ties(kvs, target);
        }
    }
}

/// Descending by target; equal targets stay in ascending key order.
fn reverse_keeping_ties(kvs: &mut [KeyValue], target: range_request::SortTarget) {
    use range_request::SortTarget;
    kvs.reverse();
    let same = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key == b.key,
        SortTarget::Version => a.version == b.version,
        SortTarget::Create => a.create_revision == b.create_revision,
        SortTarget::Mod => a.mod_revision == b.mod_revision,
        SortTarget::Value => a.value == b.value,
    };
    let mut start = 0;
    while start < kvs.len() {
        let mut end = start + 1;
        while end < kvs.len() && same(&kvs[start], &kvs[end]) {
            end += 1;
        }
        kvs[start..end].reverse();
        start = end;
    }
}

/// What applying a replicated write produced.
pub type WriteOutcome = write_response::Response;

/// Applies one replicated write at `index`. Refused requests change nothing but still
/// advance the applied index.
pub fn apply_write(
    store: &MvccStore,
    index: LogIndex,
    term: Term,
    write: &WriteRequest,
) -> WriteOutcome {
    use write_request::Request;
    let request = write
        .request
        .as_ref()
        .expect("the server proposes only writes with a request");
    if write.only_in_term != 0 && write.only_in_term != term.0 {
        store.set_applied(index, term);
        return error_outcome(MvccError::OtherTerm {
            expected: write.only_in_term,
            entry: term.0,
        });
    }
    match request {
        Request::FreezeRange(freeze) => {
            let left = GroupId(freeze.left_range_id);
            return match store.apply_freeze(index, term, left, freeze.freezer) {
                Ok(mark) => WriteOutcome::RangeFrozen(ostrakon_proto::peer::RangeFrozen {
                    freeze_index: mark.index.0,
                    freeze_term: mark.term.0,
                    left_range_id: mark.left.0,
                    span: Some(store.span().to_record()),
                    conf_state: Some((&store.applied().conf_state).into()),
                }),
                Err(error) => error_outcome(error),
            };
        }
        Request::UnfreezeRange(thaw) => {
            let thawed = store.apply_unfreeze(index, term, LogIndex(thaw.freeze_index));
            return WriteOutcome::RangeUnfrozen(ostrakon_proto::peer::RangeUnfrozen { thawed });
        }
        // A fence applies also in a range frozen itself (it is merged into the range
        // before it meanwhile): it changes nothing a merge takes over, and the range
        // frozen for a merge into this one must be able to thaw.
        Request::RefuseMerge(refuse) => {
            let merged = store.apply_merge_fence(
                index,
                term,
                GroupId(refuse.right_range_id),
                LogIndex(refuse.freeze_index),
            );
            return WriteOutcome::MergeFence(ostrakon_proto::peer::MergeFence { merged });
        }
        _ if store.frozen().is_some() => {
            // Frozen for a merge: every replica stops at the same state, which the left
            // range takes over. The node routes the request again (to the merged range,
            // or here once thawed).
            store.set_applied(index, term);
            return error_outcome(MvccError::Locked);
        }
        _ => {}
    }
    if let Request::WriteGate(gate) = request {
        // Never refused by the rules it carries, nor by locks: it changes no key.
        return WriteOutcome::GateApplied(store.apply_write_gate(index, term, gate));
    }
    if let Request::Compaction(compaction) = request {
        return match apply_compaction(store, index, term, compaction) {
            Ok(response) => WriteOutcome::Compaction(response),
            Err(error) => {
                store.set_applied(index, term);
                error_outcome(error)
            }
        };
    }
    let member_change = match request {
        Request::MemberPeerUrls(update) => Some(MemberChange::PeerUrls(update.clone())),
        Request::MemberAttributes(attributes) => Some(MemberChange::Attributes(attributes.clone())),
        Request::MemberLeaving(leaving) => Some(MemberChange::Leaving(
            ostrakon_raft::NodeId(leaving.id),
            leaving.leaving,
        )),
        _ => None,
    };
    if let Some(change) = member_change {
        store.apply_member_change(index, term, &change);
        return WriteOutcome::MemberUpdated(ostrakon_proto::peer::MemberUpdated {});
    }
    if let Request::AllocateRangeId(_) = request {
        let range_id = store.apply_allocate_range_id(index, term);
        return WriteOutcome::RangeIdAllocated(ostrakon_proto::peer::RangeIdAllocated { range_id });
    }
    if let Request::OracleBound(raise) = request {
        let bound = store.apply_oracle_bound(index, term, raise.bound);
        return WriteOutcome::OracleBound(ostrakon_proto::peer::OracleBound { bound });
    }
    if let Request::Alarm(alarm) = request {
        return WriteOutcome::Alarm(store.apply_alarm(index, term, alarm));
    }
    // A transaction's decision and its resolution are never refused (not by auth, not
    // by the space quota): locks must go. Its prepare is checked as any write.
    match request {
        Request::TxnCommit(decide)
            if store
                .write_rules()
                .refuses_auth_revision(write.auth_revision) =>
        {
            // The permissions the coordinator checked changed before the commit reached
            // the primary's log (an auth change is acknowledged once every range's log
            // holds its gate): the transaction aborts, and its next attempt is refused
            // as a write would be. An abort of a transaction committed already answers
            // its commit.
            let txn = decide.txn.as_ref().expect("a commit names its transaction");
            return WriteOutcome::TxnDecided(store.apply_txn_abort(index, term, txn));
        }
        Request::TxnCommit(decide) => {
            return WriteOutcome::TxnDecided(store.apply_txn_commit(index, term, decide))
        }
        Request::TxnAbort(txn) => {
            return WriteOutcome::TxnDecided(store.apply_txn_abort(index, term, txn))
        }
        Request::TxnResolve(decide) => {
            let held = store.apply_txn_resolve(index, term, decide);
            return WriteOutcome::TxnDone(ostrakon_proto::peer::TxnDone { held });
        }
        Request::TxnRelease(release) => {
            let held = store.apply_txn_release(index, term, release);
            return WriteOutcome::TxnDone(ostrakon_proto::peer::TxnDone { held });
        }
        Request::TxnForget(txn) => {
            store.apply_txn_forget(index, term, txn);
            return WriteOutcome::TxnDone(ostrakon_proto::peer::TxnDone { held: false });
        }
        Request::TxnHorizon(horizon) => {
            store.apply_txn_horizon(index, term, horizon.below);
            return WriteOutcome::TxnDone(ostrakon_proto::peer::TxnDone { held: false });
        }
        Request::TxnFinished(txn) => {
            store.apply_txn_finished(index, term, txn);
            return WriteOutcome::TxnDone(ostrakon_proto::peer::TxnDone { held: false });
        }
        _ => {}
    }
    // The first data range's auth store and alarms, or the gate another range took them
    // in by (`store::gate_apply`).
    let rules = store.write_rules();
    if let Some(refusal) = rules.auth_refusal(write.auth_revision) {
        // The users, roles or permissions changed after the proposer checked them (or
        // auth was enabled).
        store.set_applied(index, term);
        return error_outcome(refusal.into());
    }
    if let Request::Auth(auth) = request {
        return match store.apply_auth(index, term, auth) {
            Ok((revision, token)) => {
                WriteOutcome::Auth(ostrakon_proto::peer::AuthApplied { revision, token })
            }
            Err(error) => {
                store.set_applied(index, term);
                error_outcome(error.into())
            }
        };
    }
    if rules.nospace && adds_data(request) {
        // etcd's "capped" applier: with the space quota reached, nothing that adds data
        // applies, on any member alike, until the alarm is cleared.
        store.set_applied(index, term);
        return error_outcome(MvccError::NoSpace);
    }
    // The keys must be the range's: a split may have moved them after the request was
    // routed (the node routes it again).
    let span = store.span();
    // A revoke deletes its lease's keys wherever they are: on a split keyspace it is a
    // transaction across every range (the node sends it round as one).
    let revoke_outside =
        matches!(request, Request::LeaseRevoke(_)) && *span != super::KeySpan::whole();
    if revoke_outside
        || !super::write_intervals(request)
            .iter()
            .all(|(key, range_end)| span.covers(key, range_end))
    {
        store.set_applied(index, term);
        return error_outcome(MvccError::WrongRange {
            group: store.group().0,
        });
    }
    if let Request::TxnPrepare(prepare) = request {
        return match store.apply_txn_prepare(index, term, prepare, Revision(write.revision)) {
            Ok(prepared) => WriteOutcome::TxnPrepared(prepared),
            Err(error) => {
                store.set_applied(index, term);
                error_outcome(error)
            }
        };
    }
    if held_off_by_locks(store, request) {
        // A transaction across ranges holds keys here: the write waits for it to end.
        store.set_applied(index, term);
        return error_outcome(MvccError::Locked);
    }
    let mut txn = store.write_txn_at(Revision(write.revision));
    let result = match request {
        Request::Put(put) => apply_put(&mut txn, put, PutIn::Request).map(WriteOutcome::Put),
        Request::DeleteRange(delete) => {
            Ok(WriteOutcome::DeleteRange(apply_delete(&mut txn, delete)))
        }
        Request::Txn(request) => {
            // etcd evaluates every compare, nested ones included, before any write, then
            // checks the puts and the reads on that path, then applies.
            let path = txn_path(&txn, request);
            check_txn(&txn, request, &path)
                .and_then(|()| apply_txn(&mut txn, request, &path))
                .map(WriteOutcome::Txn)
        }
        Request::Compaction(_)
        | Request::MemberPeerUrls(_)
        | Request::MemberAttributes(_)
        | Request::MemberLeaving(_)
        | Request::Alarm(_)
        | Request::Auth(_)
        | Request::OracleBound(_)
        | Request::AllocateRangeId(_)
        | Request::WriteGate(_) => {
            unreachable!("handled above")
        }
        Request::Split(_) | Request::MergeRange(_) => {
            unreachable!("the node applies splits and merges")
        }
        Request::FreezeRange(_) | Request::UnfreezeRange(_) | Request::RefuseMerge(_) => {
            unreachable!("merge commands are handled above")
        }
        Request::TxnPrepare(_)
        | Request::TxnCommit(_)
        | Request::TxnResolve(_)
        | Request::TxnAbort(_)
        | Request::TxnRelease(_)
        | Request::TxnForget(_)
        | Request::TxnHorizon(_)
        | Request::TxnFinished(_) => unreachable!("transaction commands are handled above"),
        Request::LeaseGrant(grant) => txn.grant_lease(grant.id, grant.ttl).map(|()| {
            WriteOutcome::LeaseGrant(LeaseGrantResponse {
                header: None,
                id: grant.id,
                ttl: grant.ttl,
                error: String::new(),
            })
        }),
        Request::LeaseRevoke(revoke) => txn
            .revoke_lease(revoke.id)
            .map(|()| WriteOutcome::LeaseRevoke(LeaseRevokeResponse { header: None })),
        Request::LeaseCheckpoint(checkpoints) => {
            for checkpoint in &checkpoints.checkpoints {
                txn.checkpoint_lease(checkpoint.id, checkpoint.remaining_ttl);
            }
            Ok(WriteOutcome::LeaseCheckpoint(LeaseCheckpointResponse {
                header: None,
            }))
        }
    };
    match result.and_then(|outcome| txn.check_revision().map(|()| outcome)) {
        Ok(mut outcome) => {
            let revision = txn.response_revision();
            txn.commit(index, term);
            set_header_revision(&mut outcome, revision);
            outcome
        }
        Err(error) => {
            drop(txn);
            store.set_applied(index, term);
            error_outcome(error)
        }
    }
}

/// Whether a write may change user keys (and so waits while a transaction across ranges
/// holds a lock in the range).
fn changes_keys(request: &write_request::Request) -> bool {
    use write_request::Request;
    matches!(
        request,
        Request::Put(_) | Request::DeleteRange(_) | Request::Txn(_) | Request::LeaseRevoke(_)
    )
}

/// Whether a transaction's lock in the range holds `request` off: a write that changes
/// keys, or another transaction's prepare. Checked where a write applies (on every
/// replica alike) and, by the range's leader, before it proposes one: a write held off
/// is answered at once instead of going through the log to be refused.
pub fn held_off_by_locks(store: &MvccStore, request: &write_request::Request) -> bool {
    held_off_by_locks_unless_unlocking(store, request, |_| false)
}

/// [`held_off_by_locks`] as the range's leader asks it before it proposes `request`:
/// a prepare is not held off by locks whose transactions' resolve or release it has put
/// in the log already (`unlocking`; `frozen_txn::holds_off_unless_unlocking`).
pub fn held_off_by_locks_unless_unlocking(
    store: &MvccStore,
    request: &write_request::Request,
    unlocking: impl Fn(ostrakon_ranges::txn::TxnId) -> bool,
) -> bool {
    use ostrakon_ranges::frozen_txn::{holds_off_unless_unlocking, RangeWrite};
    if !store.has_txn_locks() {
        return false;
    }
    let write = match request {
        write_request::Request::TxnPrepare(prepare) => RangeWrite::Prepare(
            prepare
                .txn
                .as_ref()
                .map(super::txn_tables::txn_id_of)
                .expect("a prepare names its transaction"),
        ),
        other if changes_keys(other) && !revokes_no_key(store, other) => RangeWrite::ChangesKeys,
        _ => RangeWrite::ChangesNoKey,
    };
    holds_off_unless_unlocking(&store.txn_lock_table(), write, unlocking)
}

/// The answer to a write a lock holds off (the node tries it again shortly).
pub fn locked_outcome() -> WriteOutcome {
    error_outcome(MvccError::Locked)
}

/// Whether the request revokes a lease with no key attached (it changes no key, so a
/// transaction's lock does not hold it off).
fn revokes_no_key(store: &MvccStore, request: &write_request::Request) -> bool {
    matches!(request, write_request::Request::LeaseRevoke(revoke)
        if store.read_view().lease_keys(revoke.id).is_empty())
}

/// Evaluates a Put, DeleteRange or Txn whose keys fall in several ranges, as one range
/// holding them all would apply it, over `views` (those ranges' views, each taken once
/// the transaction's lock there applied, so no write changes them meanwhile; merged by
/// `MvccStore::merged_view`) at
/// `revision`: the response, with `revision` in its header, and the writes each range
/// then makes at the revision (if it makes none, the ranges' revisions are raised to it
/// as their locks go). `lease_store` is the range holding the leases.
pub fn evaluate_across(
    lease_store: &MvccStore,
    view: ReadView,
    revision: Revision,
    request: &write_request::Request,
) -> Result<(WriteOutcome, ostrakon_proto::peer::TxnWrites), MvccError> {
    use write_request::Request;
    let mut txn = lease_store.write_txn_over(view, revision);
    let mut outcome = match request {
        Request::Put(put) => WriteOutcome::Put(apply_put(&mut txn, put, PutIn::Request)?),
        Request::DeleteRange(delete) => WriteOutcome::DeleteRange(apply_delete(&mut txn, delete)),
        Request::Txn(request) => {
            let path = txn_path(&txn, request);
            check_txn(&txn, request, &path)?;
            WriteOutcome::Txn(apply_txn(&mut txn, request, &path)?)
        }
        other => unreachable!("only Put, DeleteRange and Txn have keys: {other:?}"),
    };
    set_header_revision(&mut outcome, revision);
    Ok((outcome, txn.into_writes()))
}

/// Evaluates the revoke of lease `id` on a keyspace in ranges over `views` (every data
/// range's, each taken once the transaction's lock there applied) at `revision`: the
/// response, and the writes that delete the lease's keys in every range and forget the
/// lease (`TxnWrites::revoked_leases`). Each range is evaluated on its own view: a
/// revoke reads nothing across them. `lease_store` is the range holding the leases.
pub fn evaluate_revoke_across(
    lease_store: &MvccStore,
    views: Vec<ReadView>,
    revision: Revision,
    id: i64,
) -> Result<(WriteOutcome, ostrakon_proto::peer::TxnWrites), MvccError> {
    if lease_store.lease(id).is_none() {
        return Err(MvccError::LeaseNotFound);
    }
    let mut writes = ostrakon_proto::peer::TxnWrites {
        revision: revision.0,
        writes: Vec::new(),
        revoked_leases: vec![id],
        participants: Vec::new(),
    };
    for view in views {
        let mut txn = lease_store.write_txn_over(view, revision);
        txn.revoke_lease(id)?;
        writes.writes.extend(txn.into_writes().writes);
    }
    // Each range's deletes counted their sub-revisions from 0: one count for them all.
    for (sub, write) in writes.writes.iter_mut().enumerate() {
        write.sub = u32::try_from(sub).expect("a revoke deletes below 2^32 keys");
    }
    let mut outcome = WriteOutcome::LeaseRevoke(LeaseRevokeResponse { header: None });
    set_header_revision(&mut outcome, revision);
    Ok((outcome, writes))
}

/// Whether a write may grow the store: puts, Txns that can put, lease grants.
pub fn adds_data(request: &write_request::Request) -> bool {
    use write_request::Request;
    match request {
        Request::Put(_) | Request::LeaseGrant(_) => true,
        Request::TxnPrepare(prepare) => prepare.adds_data,
        Request::Txn(txn) => txn_puts(txn),
        _ => false,
    }
}

fn txn_puts(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_puts(inner),
            _ => false,
        })
}

fn set_header_revision(outcome: &mut WriteOutcome, revision: Revision) {
    let header = match outcome {
        WriteOutcome::Put(r) => &mut r.header,
        WriteOutcome::DeleteRange(r) => &mut r.header,
        WriteOutcome::Txn(r) => &mut r.header,
        WriteOutcome::Compaction(r) => &mut r.header,
        WriteOutcome::LeaseGrant(r) => &mut r.header,
        WriteOutcome::LeaseRevoke(r) => &mut r.header,
        WriteOutcome::LeaseCheckpoint(r) => &mut r.header,
        WriteOutcome::Error(_)
        | WriteOutcome::MemberUpdated(_)
        | WriteOutcome::Alarm(_)
        | WriteOutcome::Auth(_)
        | WriteOutcome::OracleBound(_)
        | WriteOutcome::RangeIdAllocated(_)
        | WriteOutcome::RangeSplit(_)
        | WriteOutcome::RangeFrozen(_)
        | WriteOutcome::RangeUnfrozen(_)
        | WriteOutcome::RangesMerged(_)
        | WriteOutcome::MergeFence(_)
        | WriteOutcome::GateApplied(_)
        | WriteOutcome::TxnPrepared(_)
        | WriteOutcome::TxnDecided(_)
        | WriteOutcome::TxnDone(_) => return,
    };
    *header = self::header(revision);
}

/// The outcome of a refused write: the error in etcd's terms (a gRPC code and message).
fn error_outcome(error: MvccError) -> WriteOutcome {
    use ostrakon_proto::peer::Retry;
    let (code, message) = etcd_status(&error);
    let retry = match error {
        MvccError::StaleRevision { .. } => Retry::StaleRevision,
        MvccError::WrongRange { .. } => Retry::WrongRange,
        MvccError::Locked => Retry::Locked,
        _ => Retry::None,
    };
    WriteOutcome::Error(ostrakon_proto::peer::Error {
        code,
        message,
        retry: retry as i32,
    })
}

/// etcd's gRPC status code and message for a state-machine error.
pub fn etcd_status(error: &MvccError) -> (i32, String) {
    if let MvccError::Auth(auth) = error {
        return (auth.code(), auth.to_string());
    }
    let (code, message) = etcd_status_static(error);
    (code, message.to_string())
}

fn etcd_status_static(error: &MvccError) -> (i32, &'static str) {
    // gRPC codes: InvalidArgument 3, NotFound 5, OutOfRange 11.
    match error {
        MvccError::Compacted { .. } => {
            (11, "etcdserver: mvcc: required revision has been compacted")
        }
        MvccError::FutureRevision => (
            11,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        MvccError::KeyNotFound => (3, "etcdserver: key not found"),
        MvccError::LeaseNotFound => (5, "etcdserver: requested lease not found"),
        MvccError::LeaseExists => (9, "etcdserver: lease already exists"),
        // ResourceExhausted.
        MvccError::NoSpace => (8, "etcdserver: mvcc: database space exceeded"),
        // Unavailable: the node retries it; a client that sees it may too.
        MvccError::StaleRevision { .. } => (14, "ostrakon: the write's revision is stale"),
        // FailedPrecondition; the node routes it again.
        MvccError::WrongRange { .. } => {
            (9, "ostrakon: a key of the request moved to another range")
        }
        // Unavailable: the node retries it until the request's deadline.
        MvccError::Locked => (
            14,
            "ostrakon: keys are locked by a transaction across ranges; retry",
        ),
        // Unavailable: the leadership it was for ended (the node's own writes only).
        MvccError::OtherTerm { .. } => (
            14,
            "ostrakon: the write's leadership ended before it was proposed",
        ),
        MvccError::Auth(_) => unreachable!("handled by etcd_status"),
    }
}

fn apply_compaction(
    store: &MvccStore,
    index: LogIndex,
    term: Term,
    request: &CompactionRequest,
) -> Result<CompactionResponse, MvccError> {
    store.compact(Revision(request.revision), index, term)?;
    Ok(CompactionResponse {
        header: header(store.current_revision()),
    })
}

/// Where a put comes from: etcd checks a plain put's lease before the key an
/// `ignore_value`/`ignore_lease` put needs, and a Txn's put the other way round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PutIn {
    Request,
    Txn,
}

fn apply_put(
    txn: &mut WriteTxn<'_>,
    put: &PutRequest,
    put_in: PutIn,
) -> Result<PutResponse, MvccError> {
    if put_in == PutIn::Request && put.lease != 0 && txn.lease(put.lease).is_none() {
        return Err(MvccError::LeaseNotFound);
    }
    // The index has all a plain put needs; the stored version (its value) is read only
    // for prev_kv or ignore_value.
    let previous_meta = txn.latest_meta(&put.key);
    if (put.ignore_value || put.ignore_lease) && previous_meta.is_none() {
        return Err(MvccError::KeyNotFound);
    }
    let previous = if put.prev_kv || put.ignore_value {
        txn.range_latest(&put.key, b"").pop()
    } else {
        None
    };
    let value = match (&previous, put.ignore_value) {
        (Some(previous), true) => previous.value.clone(),
        _ => put.value.clone(),
    };
    let lease = match (&previous_meta, put.ignore_lease) {
        (Some(previous), true) => previous.lease,
        _ => put.lease,
    };
    if lease != 0 && txn.lease(lease).is_none() {
        return Err(MvccError::LeaseNotFound);
    }
    txn.put(put.key.clone(), value, lease);
    Ok(PutResponse {
        header: None,
        prev_kv: if put.prev_kv { previous } else { None },
    })
}

fn apply_delete(txn: &mut WriteTxn<'_>, delete: &DeleteRangeRequest) -> DeleteRangeResponse {
    let deleted = txn.delete_range(&delete.key, &delete.range_end);
    DeleteRangeResponse {
        header: None,
        deleted: deleted.len() as i64,
        prev_kvs: if delete.prev_kv { deleted } else { Vec::new() },
    }
}

/// Which branch a Txn takes, and, in order, which branch each Txn nested in that branch
/// takes: decided from the state before the Txn writes anything (etcd's
/// `compareToPath`), so a nested compare does not see the writes made before it.
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

fn txn_path(source: &impl RangeSource, request: &TxnRequest) -> TxnPath {
    let succeeded = request.compare.iter().all(|c| compare_holds(source, c));
    let ops = if succeeded {
        &request.success
    } else {
        &request.failure
    };
    let nested = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestTxn(inner)) => Some(txn_path(source, inner)),
            _ => None,
        })
        .collect();
    TxnPath { succeeded, nested }
}

/// Calls `f` on every operation on the Txn's path, depth first in order (etcd's
/// `checkRequests`); the first error stops it.
fn for_each_op_on_path(
    request: &TxnRequest,
    path: &TxnPath,
    f: &mut impl FnMut(&RequestOp) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    let ops = if path.succeeded {
        &request.success
    } else {
        &request.failure
    };
    let mut nested_paths = path.nested.iter();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestTxn(nested)) => {
                let nested_path = nested_paths.next().expect("a path for every nested Txn");
                for_each_op_on_path(nested, nested_path, f)?;
            }
            _ => f(op)?,
        }
    }
    Ok(())
}

/// etcd's checks before a Txn writes, against the state before it: first every put on
/// the path (a key that `ignore_value`/`ignore_lease` needs, then the lease), then every
/// read (its revision neither compacted nor in the future). So an error is the one etcd
/// reports, whatever order the operations come in.
fn check_txn(txn: &WriteTxn<'_>, request: &TxnRequest, path: &TxnPath) -> Result<(), MvccError> {
    for_each_op_on_path(request, path, &mut |op| {
        let Some(request_op::Request::RequestPut(put)) = &op.request else {
            return Ok(());
        };
        if (put.ignore_value || put.ignore_lease) && txn.latest_meta(&put.key).is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if put.lease != 0 && txn.lease(put.lease).is_none() {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    })?;
    for_each_op_on_path(request, path, &mut |op| {
        let Some(request_op::Request::RequestRange(range)) = &op.request else {
            return Ok(());
        };
        txn.view().resolve(range.revision).map(|_| ())
    })
}

fn apply_txn(
    txn: &mut WriteTxn<'_>,
    request: &TxnRequest,
    path: &TxnPath,
) -> Result<TxnResponse, MvccError> {
    let succeeded = path.succeeded;
    let ops = if succeeded {
        &request.success
    } else {
        &request.failure
    };
    let mut nested_paths = path.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let nested_path = match &op.request {
            Some(request_op::Request::RequestTxn(_)) => {
                Some(nested_paths.next().expect("a path for every nested Txn"))
            }
            _ => None,
        };
        responses.push(apply_op(txn, op, nested_path)?);
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

fn apply_op(
    txn: &mut WriteTxn<'_>,
    op: &RequestOp,
    nested_path: Option<&TxnPath>,
) -> Result<ResponseOp, MvccError> {
    use request_op::Request;
    use response_op::Response;
    let response = match &op.request {
        Some(Request::RequestRange(range)) => Response::ResponseRange(range_from(txn, range)?),
        Some(Request::RequestPut(put)) => Response::ResponsePut(apply_put(txn, put, PutIn::Txn)?),
        Some(Request::RequestDeleteRange(delete)) => {
            Response::ResponseDeleteRange(apply_delete(txn, delete))
        }
        Some(Request::RequestTxn(nested)) => {
            let path = nested_path.expect("a nested Txn comes with its path");
            Response::ResponseTxn(apply_txn(txn, nested, path)?)
        }
        None => return Ok(ResponseOp { response: None }),
    };
    let mut response = response;
    let revision = txn.response_revision();
    match &mut response {
        Response::ResponsePut(r) => r.header = header(revision),
        Response::ResponseDeleteRange(r) => r.header = header(revision),
        // etcd answers a nested Txn with an empty header (revision 0).
        Response::ResponseTxn(r) => r.header = Some(ResponseHeader::default()),
        Response::ResponseRange(_) => {}
    }
    Ok(ResponseOp {
        response: Some(response),
    })
}

/// Whether a Txn only reads, in both branches and every nested Txn: it can then be
/// served from a consistent view without going through raft, as etcd serves it.
pub fn txn_is_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_is_read_only(inner),
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => false,
        })
}

/// Whether every Range of a read-only Txn, in both branches, asks for a serializable
/// read (etcd's `isTxnSerializable`): then no read index is needed.
pub fn txn_is_serializable(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(range)) => range.serializable,
            Some(request_op::Request::RequestTxn(inner)) => txn_is_serializable(inner),
            _ => true,
        })
}

/// Serves a read-only Txn (`txn_is_read_only`) from one consistent view: its compares
/// and reads all see the view's revision, which the header carries, exactly as if it had
/// been applied as a write that changed nothing.
pub fn read_txn(view: &ReadView, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
    assert!(
        txn_is_read_only(request),
        "read_txn is given only Txns without writes"
    );
    let revision = view.current_revision();
    let succeeded = request.compare.iter().all(|c| compare_holds(view, c));
    let ops = if succeeded {
        &request.success
    } else {
        &request.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        use request_op::Request;
        use response_op::Response;
        let response = match &op.request {
            Some(Request::RequestRange(range)) => {
                Some(Response::ResponseRange(range_from(view, range)?))
            }
            Some(Request::RequestTxn(nested)) => {
                let mut nested = read_txn(view, nested)?;
                // etcd answers a nested Txn with an empty header (revision 0).
                nested.header = Some(ResponseHeader::default());
                Some(Response::ResponseTxn(nested))
            }
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => {
                unreachable!("checked read-only above")
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: header(revision),
        succeeded,
        responses,
    })
}

/// Serves a read-only Txn (`txn_is_read_only`) across several ranges' views at one
/// revision `at`, as `range_across` serves a Range: its compares and reads see the
/// keyspace at `at`, which the header carries.
pub fn read_txn_across(
    views: &[ReadView],
    request: &TxnRequest,
    at: Revision,
) -> Result<TxnResponse, MvccError> {
    assert!(
        txn_is_read_only(request),
        "read_txn_across is given only Txns without writes"
    );
    let mut succeeded = true;
    for compare in &request.compare {
        let mut kvs = Vec::new();
        for view in views {
            let Some((key, range_end)) = view.span().clip(&compare.key, &compare.range_end) else {
                continue;
            };
            let read_at = view.resolve(at.min(view.current_revision()).0)?;
            kvs.extend(view.range(&key, &range_end, read_at));
        }
        if !compare_kvs(compare, &kvs) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &request.success
    } else {
        &request.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        use request_op::Request;
        use response_op::Response;
        let response = match &op.request {
            Some(Request::RequestRange(range)) => {
                // A Range in a Txn may name its own revision, up to the Txn's.
                if range.revision > at.0 {
                    return Err(MvccError::FutureRevision);
                }
                let range_at = if range.revision > 0 {
                    Revision(range.revision)
                } else {
                    at
                };
                let mut response = range_across(views, range, range_at)?;
                response.header = header(at);
                Some(Response::ResponseRange(response))
            }
            Some(Request::RequestTxn(nested)) => {
                let mut nested = read_txn_across(views, nested, at)?;
                // etcd answers a nested Txn with an empty header (revision 0).
                nested.header = Some(ResponseHeader::default());
                Some(Response::ResponseTxn(nested))
            }
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => {
                unreachable!("checked read-only above")
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: header(at),
        succeeded,
        responses,
    })
}

/// etcd's compare: every key in the range must satisfy it; over no keys, a VALUE
/// compare fails and the others compare against a zero-valued key.
fn compare_holds(source: &impl RangeSource, c: &Compare) -> bool {
    if c.range_end.is_empty() && c.target != compare::CompareTarget::Value as i32 {
        // One key's version, revisions or lease: the index has them, no value is read.
        let kvs: Vec<KeyValue> = source
            .latest_meta(&c.key)
            .map(|meta| meta.without_value(Bytes::new()))
            .into_iter()
            .collect();
        return compare_kvs(c, &kvs);
    }
    compare_kvs(c, &source.range_latest(&c.key, &c.range_end))
}

/// `compare_holds` over the live keys of the compare's range.
fn compare_kvs(c: &Compare, kvs: &[KeyValue]) -> bool {
    if kvs.is_empty() {
        if c.target == compare::CompareTarget::Value as i32 {
            return false;
        }
        return compare_one(c, &KeyValue::default());
    }
    kvs.iter().all(|kv| compare_one(c, kv))
}

fn compare_one(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    use std::cmp::Ordering;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let ordering = match target {
        CompareTarget::Value => {
            let wanted: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => b"",
            };
            kv.value.as_ref().cmp(wanted)
        }
        _ => {
            let wanted = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version) => *v,
                (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => *v,
                (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => *v,
                (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            let actual = match target {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                CompareTarget::Lease => kv.lease,
                CompareTarget::Value => unreachable!(),
            };
            actual.cmp(&wanted)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}
