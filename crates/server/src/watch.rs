//! etcd's Watch service: many watchers on one bidirectional stream.
//!
//! Each stream is one task. A watcher of keys in one range follows that range: the
//! stream subscribes to the committed revisions of every such range (a bounded
//! broadcast per range, shared by every watcher of the node), and every watcher
//! remembers the next revision it owes the client. When a split moves a watcher's keys
//! to another range, the watcher follows them there and reads what it missed from
//! storage (the new range holds the keys' whole history: a split moves no data); one
//! whose keys fall in several ranges is served from their histories, merged by revision
//! (`watch_merge`). A revision is delivered whole, in order, once: a watcher
//! that starts in the past, or finds a gap (it fell behind the broadcast, or a snapshot
//! moved the store on), first reads the missing revisions back from storage in bounded
//! chunks. While the client does not read, the task waits on its bounded response queue
//! and the broadcast simply moves on without it, so a stalled client costs a bounded
//! amount of memory (etcd issue 16839 is what this avoids).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ostrakon_node::routing::Route;
use ostrakon_node::{NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::watch_create_request::FilterType;
use ostrakon_proto::etcdserverpb::watch_request::RequestUnion;
use ostrakon_proto::etcdserverpb::watch_server::Watch;
use ostrakon_proto::etcdserverpb::{
    ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use ostrakon_proto::mvccpb::{event::EventType, Event};
use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::{MvccError, MvccStore, Revision, RevisionEvents};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_stream::{StreamExt as _, StreamMap};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Caller};
use crate::common;
use crate::errors::ApiError;
use ostrakon_storage::mvcc::auth::Access;

/// Responses queued for a client before its stream task waits for it to read.
const RESPONSES_QUEUED_MAX: usize = 16;
/// Events read back from storage at a time by a watcher catching up.
const CATCH_UP_EVENTS_MAX: usize = 1000;
/// The id of a response that concerns the whole stream (etcd's `InvalidWatchID`).
const STREAM_WATCH_ID: i64 = -1;

/// etcd's cancel reasons (`mvcc` package errors).
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// How often a stream checks whether a split moved its watchers' keys.
const SPLIT_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// `SPLIT_CHECK_INTERVAL`, or `OSTRAKON_FAILPOINT_WATCH_SPLIT_CHECK_MS` from the
/// environment: a slow check lets tests hold a watcher on a range that split under it,
/// as a new range not yet ready on its member does.
fn split_check_interval() -> Duration {
    std::env::var("OSTRAKON_FAILPOINT_WATCH_SPLIT_CHECK_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(SPLIT_CHECK_INTERVAL)
}

/// How often a stream serves its watchers of keys in several ranges (a round costs a
/// timestamp and a read barrier per range, and only runs while a range has applied
/// something a watcher is owed).
const MERGE_INTERVAL: Duration = Duration::from_millis(20);
/// How long a merge round waits for its ranges before trying again in the next round
/// (a range without a leader holds up every watcher of the stream meanwhile).
const MERGE_WAIT_MAX: Duration = Duration::from_secs(1);

/// Serves Watch for the node's ranges.
pub struct WatchService {
    node: NodeHandle,
    /// Fragments are cut below this size, as etcd cuts them at `--max-request-bytes`.
    fragment_bytes_max: usize,
    /// `--experimental-watch-progress-notify-interval`.
    progress_interval: Duration,
}

impl WatchService {
    pub fn new(
        node: NodeHandle,
        fragment_bytes_max: usize,
        progress_interval: Duration,
    ) -> WatchService {
        WatchService {
            node,
            fragment_bytes_max,
            progress_interval,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = auth::caller(&self.node, request.metadata())
            .await
            .map_err(Status::from);
        let (responses, receiver) = mpsc::channel(RESPONSES_QUEUED_MAX);
        let stream = WatchStream {
            caller,
            node: self.node.clone(),
            ranges: HashMap::new(),
            events: StreamMap::new(),
            live: crate::watch_merge::LiveRanges::default(),
            responses,
            watchers: BTreeMap::new(),
            next_auto_id: 0,
            fragment_bytes_max: self.fragment_bytes_max,
        };
        tokio::spawn(stream.run(request.into_inner(), self.progress_interval));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// The client went away: the stream ends.
struct Gone;

/// Which ranges a watcher's revisions come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Follows {
    /// The one range holding its keys: its committed revisions as they come.
    One(GroupId),
    /// Several ranges hold its keys: their histories, merged (`watch_merge`).
    Several,
}

/// Which watchers of several ranges a merge round serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    /// Those a range has applied a revision for (the rounds every 20 ms).
    Owed,
    /// Every one: a client asked how far its watchers are.
    Every,
}

struct Watcher {
    /// The ranges whose revisions it gets.
    follows: Follows,
    /// Following several ranges: their events received, until every range resolved them.
    pending: Option<crate::watch_merge::Pending>,
    key: Bytes,
    /// Empty: just `key`; `"\0"`: every key from `key` on.
    range_end: Bytes,
    /// The next revision this watcher owes the client.
    next: Revision,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
}

impl Watcher {
    fn covers(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key
        } else {
            key >= &self.key[..] && (self.range_end[..] == [0] || key < &self.range_end[..])
        }
    }

    /// This watcher's view of a revision's events.
    fn select(&self, revision: &RevisionEvents) -> Vec<Event> {
        revision
            .events
            .iter()
            .filter(|event| {
                let key = event.kv.as_ref().map(|kv| &kv.key[..]).unwrap_or_default();
                let filtered = match EventType::try_from(event.r#type) {
                    Ok(EventType::Put) => self.no_put,
                    Ok(EventType::Delete) => self.no_delete,
                    Err(_) => false,
                };
                !filtered && self.covers(key)
            })
            .map(|event| {
                let mut event = event.clone();
                if !self.prev_kv {
                    event.prev_kv = None;
                }
                event
            })
            .collect()
    }
}

struct WatchStream {
    /// Who opened the stream (or why their token was refused); each watcher created on it
    /// needs read permission on its range.
    caller: Result<Caller, Status>,
    node: NodeHandle,
    /// The stores of the ranges its watchers watch.
    ranges: HashMap<GroupId, Arc<MvccStore>>,
    /// Their committed revisions.
    events: StreamMap<GroupId, BroadcastStream<Arc<RevisionEvents>>>,
    /// How far each of them has been received.
    live: crate::watch_merge::LiveRanges,
    responses: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
    fragment_bytes_max: usize,
}

impl WatchStream {
    async fn run(mut self, mut requests: Streaming<WatchRequest>, progress_interval: Duration) {
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + progress_interval,
            progress_interval,
        );
        let mut split_check = tokio::time::interval(split_check_interval());
        let mut merge = tokio::time::interval(MERGE_INTERVAL);
        merge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        split_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A client that closes its sending side still gets its events, as from etcd; the
        // stream ends when the client goes away.
        let mut requests_open = true;
        let client_side = self.responses.clone();
        loop {
            let step = tokio::select! {
                request = requests.message(), if requests_open => match request {
                    Ok(Some(request)) => self.on_request(request).await,
                    Ok(None) => {
                        requests_open = false;
                        Ok(())
                    }
                    Err(_) => Err(Gone),
                },
                Some((group, revision)) = self.events.next() => match revision {
                    Ok(revision) => self.on_revision(group, &revision).await,
                    Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                        tracing::info!(skipped, "a watch stream fell behind; catching up from storage");
                        self.catch_up_range(group).await
                    }
                },
                _ = progress.tick() => self.notify_progress().await,
                _ = split_check.tick() => self.follow_splits().await,
                _ = merge.tick(), if self.has_merged() => {
                    self.serve_merged(Round::Owed).await.map(drop)
                }
                _ = client_side.closed() => Err(Gone),
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// Whether a watcher's keys fall in several ranges.
    fn has_merged(&self) -> bool {
        self.watchers
            .values()
            .any(|w| w.follows == Follows::Several)
    }

    fn header(&self, revision: Revision) -> Option<ResponseHeader> {
        common::header(&self.node, revision)
    }

    /// The store of a range a watcher watches.
    fn store(&self, group: GroupId) -> &Arc<MvccStore> {
        &self.ranges[&group]
    }

    /// Follows the range's revisions from now on (if not already): subscribed before
    /// its current revision is read, so nothing committed after that is missed.
    fn subscribe(&mut self, group: GroupId) -> Result<Arc<MvccStore>, ApiError> {
        if let Some(store) = self.ranges.get(&group) {
            return Ok(store.clone());
        }
        let events = self.node.subscribe_events(group)?;
        let store = self.node.store(group)?;
        self.events.insert(group, BroadcastStream::new(events));
        self.ranges.insert(group, store.clone());
        self.live.subscribed(group, store.current_revision());
        Ok(store)
    }

    /// Subscribes to every range of `groups`: the revision above which the stream
    /// receives every event of all of them.
    fn subscribe_all(&mut self, groups: &[GroupId]) -> Result<Revision, ApiError> {
        let mut from = Revision(0);
        for &group in groups {
            self.subscribe(group)?;
            from = from.max(self.live.from(group).expect("subscribed above"));
        }
        Ok(from)
    }

    /// The highest revision the stream received from any of `groups` (all subscribed):
    /// a watcher new to them starts keeping their live events above it, as those up to
    /// it went by before it existed and come from the histories.
    fn received_to(&self, groups: &[GroupId]) -> Revision {
        groups
            .iter()
            .filter_map(|&group| self.live.seen(group))
            .fold(Revision(0), Revision::max)
    }

    /// Moves every watcher whose keys a split moved to the range now holding them; it
    /// reads what it missed there from storage. One whose keys now fall in several
    /// ranges is cancelled.
    async fn follow_splits(&mut self) -> Result<(), Gone> {
        let moved: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| match w.follows {
                Follows::One(group) => !self.ranges[&group].span().covers(&w.key, &w.range_end),
                Follows::Several => false,
            })
            .map(|(id, _)| *id)
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        let ranges = self.node.directory();
        for id in moved {
            let watcher = &self.watchers[&id];
            let Follows::One(old) = watcher.follows else {
                unreachable!("only watchers of one range are moved");
            };
            // Since the split, `on_revision` dropped the revisions of its old range it
            // received (they were not the range's to give); the store holds them.
            let dropped_to = self.store(old).current_revision();
            let route =
                ostrakon_node::routing::route(&ranges, &[(&watcher.key, &watcher.range_end)]);
            match route {
                Route::One(group) => {
                    if self.subscribe(group).is_err() {
                        continue; // the range is not ready here yet: try again later
                    }
                    self.watchers.get_mut(&id).expect("listed above").follows = Follows::One(group);
                    self.catch_up(id).await?;
                    self.drop_if_merged_away(old);
                }
                // Its keys now fall in several ranges: the merge rounds serve it from its
                // next revision on.
                Route::Several => {
                    let groups = ostrakon_node::routing::touched(
                        &ranges,
                        &[(&watcher.key, &watcher.range_end)],
                    );
                    let Some((from, groups)) =
                        groups.and_then(|g| Some((self.subscribe_all(&g).ok()?, g)))
                    else {
                        continue; // a range is not ready here yet: try again later
                    };
                    let from = from.max(self.received_to(&groups));
                    let watcher = self.watchers.get_mut(&id).expect("listed above");
                    watcher.follows = Follows::Several;
                    // What the old range's broadcast brought and was dropped comes from
                    // the histories.
                    let from = from.max(dropped_to);
                    watcher.pending = Some(crate::watch_merge::Pending::new(from));
                }
                Route::Unknown => {}
            }
        }
        Ok(())
    }

    /// Stops following a range merged away (no keys) that a watcher of its keys alone
    /// kept until `follow_splits` moved it, once none is left: its broadcast would
    /// otherwise stay open for the stream's life.
    fn drop_if_merged_away(&mut self, group: GroupId) {
        let merged_away = self
            .ranges
            .get(&group)
            .is_some_and(|store| store.span().is_none());
        let followed = self
            .watchers
            .values()
            .any(|w| w.follows == Follows::One(group));
        if merged_away && !followed {
            // Still followed live (the merge round has not seen the merge yet): its
            // broadcast may hold revisions not received, dropped with it below; the
            // watchers of several ranges read them from the histories (found by review:
            // they skipped them for good).
            if self.live.from(group).is_some() {
                self.mark_merged_away(group);
            }
            self.ranges.remove(&group);
            self.events.remove(&group);
            self.live.forget(group);
        }
    }

    /// Tells the live ranges that `group` merged away: every other range followed is
    /// read from its history up to its current revision (`LiveRanges::merged_away`).
    fn mark_merged_away(&mut self, group: GroupId) {
        let followed: Vec<(GroupId, Revision)> = self
            .ranges
            .iter()
            // Another range merged away but kept for a watcher of its keys alone is not
            // followed live any more.
            .filter(|(other, store)| **other != group && !store.span().is_none())
            .map(|(other, store)| (*other, store.current_revision()))
            .collect();
        self.live.merged_away(group, followed);
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Gone> {
        self.responses.send(Ok(response)).await.map_err(|_| Gone)
    }

    async fn on_request(&mut self, request: WatchRequest) -> Result<(), Gone> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let response = WatchResponse {
                        header: self.header(self.node.current_revision()),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..WatchResponse::default()
                    };
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Everything up to this revision has been sent to every watcher.
                let delivered = self.delivered_to_every_watcher().await?;
                let response = WatchResponse {
                    header: self.header(delivered),
                    watch_id: STREAM_WATCH_ID,
                    ..WatchResponse::default()
                };
                self.send(response).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Gone> {
        let refuse_header = self.header(self.node.current_revision());
        let refuse = |reason: &str| WatchResponse {
            header: refuse_header,
            watch_id: STREAM_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..WatchResponse::default()
        };
        let range_end = create.range_end.clone();
        // Checked against the auth store as it stands now, as etcd checks each create:
        // the stream's caller was made when it opened, and changes since hold (a revoke,
        // an enable).
        let permitted = match &self.caller {
            Ok(caller) => match caller.at_read_point(&self.node, &[DEFAULT_GROUP]).await {
                Ok(caller) => caller.check(&create.key, &range_end, Access::Read).is_ok(),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !permitted {
            // etcd cancels the watch with "permission denied" as its reason, whatever
            // kept it from the keys (a token that is not valid included), under the id
            // the client asked for (not the stream's, as its other refusals). Both found
            // by the differential test with auth on.
            let reason = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
            let response = WatchResponse {
                watch_id: create.watch_id,
                ..refuse(reason)
            };
            return self.send(response).await;
        }
        // After the permission check, as etcd orders them.
        if !range_end.is_empty() && range_end[..] != [0] && range_end <= create.key {
            return self.send(refuse(EMPTY_RANGE)).await;
        }
        if self.watchers.contains_key(&create.watch_id) && create.watch_id != 0 {
            return self.send(refuse(DUPLICATE_ID)).await;
        }
        let interval = [(&create.key[..], &range_end[..])];
        let (follows, current, pending) = match self.follow(&interval).await {
            Ok(followed) => followed,
            Err(error) => {
                let reason = tonic::Status::from(error).message().to_string();
                return self.send(refuse(&reason)).await;
            }
        };
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id += 1;
            self.next_auto_id - 1
        };
        let next = if create.start_revision > 0 {
            Revision(create.start_revision)
        } else {
            Revision(current.0 + 1)
        };
        let filters = |filter: FilterType| create.filters.contains(&(filter as i32));
        let watcher = Watcher {
            follows,
            pending,
            key: create.key.clone(),
            range_end,
            next,
            prev_kv: create.prev_kv,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            progress_notify: create.progress_notify,
            fragment: create.fragment,
        };
        self.watchers.insert(id, watcher);
        let created = WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..WatchResponse::default()
        };
        self.send(created).await?;
        if next <= current {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Which ranges a new watcher of `interval` follows, and the revision it starts
    /// after: its range's current one, or, across ranges, the keyspace's from the oracle
    /// (as a read across ranges answers).
    async fn follow(
        &mut self,
        interval: &[(&[u8], &[u8]); 1],
    ) -> Result<(Follows, Revision, Option<crate::watch_merge::Pending>), ApiError> {
        let groups = self.node.ranges_touched(interval).await?;
        if let [group] = groups[..] {
            let store = self.subscribe(group)?;
            return Ok((Follows::One(group), store.current_revision(), None));
        }
        let from = self.subscribe_all(&groups)?.max(self.received_to(&groups));
        let now = self.node.current_timestamp().await?;
        let now = Revision(i64::try_from(now).expect("timestamps stay below 2^63"));
        let pending = crate::watch_merge::Pending::new(from);
        Ok((Follows::Several, now, Some(pending)))
    }

    /// Serves the watchers of keys in several ranges a round (`watch_merge`): if a range
    /// of theirs has applied a revision one of them is owed (or for every one of them,
    /// `Round::Every`), a revision from the oracle, every range of theirs caught up to
    /// it, and each sent what its ranges' histories hold up to it. A watcher served so
    /// has been sent everything up to that revision: its `next` moves past it, written
    /// or not. Returns the oracle's revision the round was served at, if it was.
    async fn serve_merged(&mut self, round: Round) -> Result<Option<Revision>, Gone> {
        let ranges = self.node.directory();
        let mut due = Vec::new();
        let mut groups = std::collections::BTreeSet::new();
        // Once a round, for every range the stream follows.
        let followed: Vec<GroupId> = self.ranges.keys().copied().collect();
        for group in followed {
            let current = self.store(group).current_revision();
            self.live.check_stalled(group, current);
        }
        let merged: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.follows == Follows::Several)
            .map(|(id, _)| *id)
            .collect();
        for id in merged {
            let watcher = &self.watchers[&id];
            let interval = [(&watcher.key[..], &watcher.range_end[..])];
            let Some(touched) = ostrakon_node::routing::touched(&ranges, &interval) else {
                continue; // a range being created here: the next round
            };
            // A range new to the stream (a split): its events from now on come live,
            // those before from the histories.
            let Ok(from) = self.subscribe_all(&touched) else {
                continue;
            };
            let watcher = self.watchers.get_mut(&id).expect("listed above");
            let pending = watcher.pending.as_mut().expect("a merged watcher");
            pending.from = pending.from.max(from);
            let owed = round == Round::Every
                || !pending.is_empty()
                || touched.iter().any(|&group| {
                    self.node
                        .store(group)
                        .is_ok_and(|store| store.current_revision() >= watcher.next)
                });
            if owed {
                groups.extend(touched.iter().copied());
                due.push((id, touched));
            }
        }
        if due.is_empty() {
            return Ok(None);
        }
        let resolved = async {
            let now = self.node.current_timestamp().await?;
            let now = Revision(i64::try_from(now).expect("timestamps stay below 2^63"));
            let mut waits = tokio::task::JoinSet::new();
            for &group in &groups {
                let node = self.node.clone();
                waits.spawn(async move { node.read_point_at(group, now).await });
            }
            while let Some(done) = waits.join_next().await {
                done.expect("a read barrier panicked")?;
            }
            // A transaction across ranges still holding a lock will write at or above
            // the lock's revision: each range is final only below its lowest lock
            // (every lock at or below `now` has applied by now).
            let mut lowest_locks = Vec::new();
            for &group in &groups {
                let lowest_lock = self.node.store(group)?.read_view().lowest_lock_revision();
                lowest_locks.extend(lowest_lock);
            }
            let resolved = crate::watch_merge::resolved(now, lowest_locks);
            Ok::<_, ostrakon_node::NodeError>((now, resolved))
        };
        let (now, resolved) = match tokio::time::timeout(MERGE_WAIT_MAX, resolved).await {
            Ok(Ok(answer)) => answer,
            // No oracle or a range without a leader: the next round tries again.
            _ => return Ok(None),
        };
        // After the wait, so that a merge applied meanwhile is seen: a watcher whose
        // ranges (`touched`, read before it) no longer list the range merged away had
        // its keys' range absorb it by then.
        self.forget_merged_away();
        for (id, touched) in due {
            let Some(watcher) = self.watchers.get(&id) else {
                continue;
            };
            if touched.iter().any(|&group| self.live.from(group).is_none()) {
                continue; // a range of its merged away meanwhile: the next round routes again
            }
            // Below or at a range's `from`, the stream may not have received its events.
            let from = touched
                .iter()
                .filter_map(|&group| self.live.from(group))
                .fold(
                    watcher.pending.as_ref().expect("a merged watcher").from,
                    Revision::max,
                );
            if watcher.next <= from {
                self.catch_up_merged(id, &touched, resolved).await?;
            } else {
                self.release_pending(id, &touched, resolved).await?;
            }
        }
        Ok(Some(now))
    }

    /// Stops following the ranges merged into another (`LiveRanges::merged_away`): the
    /// watchers of several ranges read what is left of them from the merged ranges'
    /// histories.
    fn forget_merged_away(&mut self) {
        let gone: Vec<GroupId> = self
            .ranges
            .iter()
            .filter(|(group, store)| store.span().is_none() && self.live.from(**group).is_some())
            .map(|(group, _)| *group)
            .collect();
        for group in gone {
            self.mark_merged_away(group);
            // A watcher of its keys alone keeps it until `follow_splits` moves it to the
            // range that absorbed it.
            if !self
                .watchers
                .values()
                .any(|w| w.follows == Follows::One(group))
            {
                self.ranges.remove(&group);
                self.events.remove(&group);
            }
        }
    }

    /// Sends a merged watcher the events it received live up to what every range of
    /// its (`touched`) has been received to, at most `resolved`.
    async fn release_pending(
        &mut self,
        id: i64,
        touched: &[GroupId],
        resolved: Revision,
    ) -> Result<(), Gone> {
        // A range of its split during the round's wait: the new range, which the stream
        // does not follow yet, may hold revisions at or below `resolved`; the next round
        // routes again. (Split after the wait, it only gets revisions above.)
        let watcher = &self.watchers[&id];
        let spans: Vec<_> = touched
            .iter()
            .map(|&group| self.store(group).span())
            .collect();
        let spans: Vec<&ostrakon_storage::mvcc::KeySpan> = spans.iter().map(|s| &**s).collect();
        if !ostrakon_storage::mvcc::spans_cover(&spans, &watcher.key, &watcher.range_end) {
            return Ok(());
        }
        let mut covered = resolved;
        for &group in touched {
            let current = self.store(group).current_revision();
            covered = covered.min(self.live.complete_to(group, current, resolved));
        }
        let watcher = self.watchers.get_mut(&id).expect("a due watcher");
        if covered < watcher.next {
            return Ok(());
        }
        let next = watcher.next;
        let pending = watcher.pending.as_mut().expect("a merged watcher");
        let revisions = pending.take(next, covered);
        self.deliver(id, &revisions).await?;
        if let Some(watcher) = self.watchers.get_mut(&id) {
            watcher.next = watcher.next.max(Revision(covered.0 + 1));
        }
        Ok(())
    }

    /// Sends a watcher of keys in several ranges (`touched`, in key order) every
    /// revision from its next one up to `resolved`, which each of them has applied every
    /// write at or below, read back from their histories in bounded chunks; cancels it
    /// if that history is compacted in any of them.
    async fn catch_up_merged(
        &mut self,
        id: i64,
        touched: &[GroupId],
        resolved: Revision,
    ) -> Result<(), Gone> {
        loop {
            let Some(watcher) = self.watchers.get(&id) else {
                return Ok(());
            };
            if watcher.follows != Follows::Several || watcher.next > resolved {
                return Ok(());
            }
            let mut views = Vec::new();
            for &group in touched {
                match self.node.store(group) {
                    Ok(store) => views.push(store.read_view()),
                    Err(_) => return Ok(()), // gone by now: the next round routes again
                }
            }
            let spans: Vec<_> = views.iter().map(|view| view.span()).collect();
            if !ostrakon_storage::mvcc::spans_cover(&spans, &watcher.key, &watcher.range_end) {
                return Ok(()); // a split moved some keys: the next round routes again
            }
            let (key, range_end, from) =
                (watcher.key.clone(), watcher.range_end.clone(), watcher.next);
            let histories = tokio::task::spawn_blocking(move || {
                let mut histories = Vec::new();
                for view in &views {
                    let Some((key, range_end)) = view.span().clip(&key, &range_end) else {
                        continue;
                    };
                    let history = view.history(&key, &range_end, from, CATCH_UP_EVENTS_MAX)?;
                    histories.push(crate::watch_merge::RangeHistory {
                        history,
                        current: view.current_revision(),
                    });
                }
                Ok::<_, MvccError>(histories)
            })
            .await
            .expect("reading watch history panicked");
            match histories {
                Ok(histories) => {
                    let (merged, covered) = crate::watch_merge::merge(histories, resolved);
                    self.deliver(id, &merged).await?;
                    if let Some(watcher) = self.watchers.get_mut(&id) {
                        watcher.next = watcher.next.max(Revision(covered.0 + 1));
                    }
                }
                Err(MvccError::Compacted { compacted }) => {
                    self.watchers.remove(&id);
                    let response = WatchResponse {
                        header: self.header(Revision(0)),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compacted.0,
                        ..WatchResponse::default()
                    };
                    return self.send(response).await;
                }
                Err(other) => panic!("reading watch history failed: {other}"),
            }
        }
    }

    /// A committed revision of a range, for every watcher of it that is due it.
    async fn on_revision(&mut self, group: GroupId, revision: &RevisionEvents) -> Result<(), Gone> {
        self.live
            .received(group, revision.revision, revision.previous);
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(watcher) = self.watchers.get(&id) else {
                continue;
            };
            if watcher.follows == Follows::Several {
                // Kept until every range of the watcher resolved the revision.
                if revision.revision >= watcher.next {
                    let events = watcher.select(revision);
                    if !events.is_empty() {
                        let current = self.node.current_revision();
                        let watcher = self.watchers.get_mut(&id).expect("looked up above");
                        let pending = watcher.pending.as_mut().expect("a merged watcher");
                        pending.push(revision.revision, events, current);
                    }
                }
                continue;
            }
            if watcher.follows != Follows::One(group) {
                continue;
            }
            if !self
                .store(group)
                .span()
                .covers(&watcher.key, &watcher.range_end)
            {
                // A split moved its keys: the range's later revisions are not its
                // (`follow_splits` moves it to its keys' range, which holds their whole
                // history).
                continue;
            }
            if revision.revision < watcher.next {
                continue;
            }
            if revision.previous >= watcher.next {
                // A gap (the range had revisions since the watcher's last that it did not
                // get: revisions of ranges that split are sparse, so only the range's
                // previous one tells): the revisions in between come from storage first.
                self.catch_up(id).await?;
                // Only once the gap is filled: a range frozen for a merge (its view holds
                // no keys) or split meanwhile reads nothing, and the revisions skipped
                // would be lost; they come from the history later (the next revision's
                // gap, or the range that takes the keys).
                match self.watchers.get(&id) {
                    Some(watcher)
                        if watcher.next > revision.previous
                            && revision.revision >= watcher.next => {}
                    _ => continue,
                }
            }
            self.deliver(id, std::slice::from_ref(revision)).await?;
        }
        Ok(())
    }

    /// A range's broadcast moved on without this stream: every watcher of it reads what
    /// it missed from storage.
    async fn catch_up_range(&mut self, group: GroupId) -> Result<(), Gone> {
        // Watchers of several ranges read what the broadcast dropped from the histories.
        let current = self.store(group).current_revision();
        self.live.lagged(group, current);
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.follows == Follows::One(group))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    /// Sends a watcher every revision from its next one up to the store's current one,
    /// read back from storage in bounded chunks; cancels it if that history is compacted.
    async fn catch_up(&mut self, id: i64) -> Result<(), Gone> {
        loop {
            let Some(watcher) = self.watchers.get(&id) else {
                return Ok(());
            };
            let Follows::One(group) = watcher.follows else {
                return Ok(()); // the merge rounds serve it
            };
            let view = self.store(group).read_view();
            if watcher.next > view.current_revision() {
                return Ok(());
            }
            if !view.span().covers(&watcher.key, &watcher.range_end) {
                // A split moved its keys: `follow_splits` moves it, then it catches up.
                return Ok(());
            }
            let (key, range_end, from) =
                (watcher.key.clone(), watcher.range_end.clone(), watcher.next);
            let history = tokio::task::spawn_blocking(move || {
                view.history(&key, &range_end, from, CATCH_UP_EVENTS_MAX)
            })
            .await
            .expect("reading watch history panicked");
            match history {
                Ok(history) => {
                    // The history read at once goes out in one response, as etcd's
                    // catch-up sends it (a live watcher gets one response per revision).
                    self.deliver(id, &history.revisions).await?;
                    if let Some(watcher) = self.watchers.get_mut(&id) {
                        watcher.next = watcher.next.max(Revision(history.covered.0 + 1));
                    }
                }
                Err(MvccError::Compacted { compacted }) => {
                    self.watchers.remove(&id);
                    // As etcd 3.5 answers it: the header's revision is 0 and there is no
                    // cancel reason; clients read the compacted revision.
                    let response = WatchResponse {
                        header: self.header(Revision(0)),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compacted.0,
                        ..WatchResponse::default()
                    };
                    return self.send(response).await;
                }
                Err(other) => panic!("reading watch history failed: {other}"),
            }
        }
    }

    /// Sends the events of `revisions` (ascending) to a watcher in one response (split
    /// into fragments if it asked for them and they are too large) and moves it past
    /// them.
    async fn deliver(&mut self, id: i64, revisions: &[RevisionEvents]) -> Result<(), Gone> {
        let Some(follows) = self.watchers.get(&id).map(|w| w.follows) else {
            return Ok(());
        };
        let current = match follows {
            Follows::One(group) => self.store(group).current_revision(),
            // What it was resolved to is the revision of its last event or above.
            Follows::Several => Revision(0),
        };
        let watcher = self.watchers.get_mut(&id).expect("looked up above");
        let mut events = Vec::new();
        let mut last = Revision(0);
        for revision in revisions {
            assert!(
                revision.revision >= watcher.next,
                "watcher {id} would get revision {:?} again",
                revision.revision
            );
            watcher.next = Revision(revision.revision.0 + 1);
            last = revision.revision;
            events.extend(watcher.select(revision));
        }
        if events.is_empty() {
            return Ok(());
        }
        let fragment = watcher.fragment;
        let header = self.header(current.max(last));
        let parts = if fragment {
            split_by_size(events, self.fragment_bytes_max)
        } else {
            vec![events]
        };
        let last = parts.len() - 1;
        for (i, events) in parts.into_iter().enumerate() {
            let response = WatchResponse {
                header,
                watch_id: id,
                fragment: i < last,
                events,
                ..WatchResponse::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }

    /// The revision up to which every watcher of the stream has been sent every event
    /// (a `ProgressRequest`'s answer). On a keyspace in ranges this reaches the oracle's
    /// present when no event is on its way: the watchers of several ranges are served a
    /// round first, and those of one range ask it (`delivered_in`). So a client that read
    /// at R and waits for progress at R or above (Kubernetes' consistent reads from its
    /// watch cache) gets it without a write to its keys. With no watcher: the member's
    /// current revision, as etcd answers.
    async fn delivered_to_every_watcher(&mut self) -> Result<Revision, Gone> {
        let round_at = if self.has_merged() {
            self.serve_merged(Round::Every).await?
        } else {
            None
        };
        let followed: Vec<(Follows, Revision, Bytes, Bytes)> = self
            .watchers
            .values()
            .map(|w| (w.follows, w.next, w.key.clone(), w.range_end.clone()))
            .collect();
        if followed.is_empty() {
            return Ok(self.node.current_revision());
        }
        let mut delivered = Revision(i64::MAX);
        // The ranges are asked all at once: one without a leader costs the answer its
        // wait once, not once per watcher.
        let mut asks = tokio::task::JoinSet::new();
        for (follows, next, key, range_end) in followed {
            match follows {
                Follows::One(group) => {
                    let (node, store) = (self.node.clone(), self.store(group).clone());
                    asks.spawn(
                        async move { delivered_in(node, store, next, (&key, &range_end)).await },
                    );
                }
                Follows::Several => delivered = delivered.min(merged_progress(next, round_at)),
            }
        }
        while let Some(answer) = asks.join_next().await {
            delivered = delivered.min(answer.expect("a progress ask panicked"));
        }
        Ok(delivered)
    }

    /// Tells every watcher that asked for progress notifications and has nothing pending
    /// how far it is.
    async fn notify_progress(&mut self) -> Result<(), Gone> {
        let asking: Vec<(i64, Follows, Revision, Bytes, Bytes)> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(id, w)| (*id, w.follows, w.next, w.key.clone(), w.range_end.clone()))
            .collect();
        let several = asking
            .iter()
            .any(|(_, follows, ..)| *follows == Follows::Several);
        let round_at = if several {
            self.serve_merged(Round::Every).await?
        } else {
            None
        };
        let mut due = Vec::with_capacity(asking.len());
        // The ranges of the watchers of one range are asked all at once.
        let mut asks = tokio::task::JoinSet::new();
        for (id, follows, _, key, range_end) in asking {
            // The watcher's next revision after the round above.
            let Some(next) = self.watchers.get(&id).map(|w| w.next) else {
                continue; // canceled by the round (its history compacted)
            };
            match follows {
                Follows::One(group) if next > self.store(group).current_revision() => {
                    let (node, store) = (self.node.clone(), self.store(group).clone());
                    asks.spawn(async move {
                        (
                            id,
                            delivered_in(node, store, next, (&key, &range_end)).await,
                        )
                    });
                }
                Follows::One(_) => continue, // events still on their way to it
                Follows::Several => due.push((id, merged_progress(next, round_at))),
            }
        }
        while let Some(answer) = asks.join_next().await {
            due.push(answer.expect("a progress ask panicked"));
        }
        // In the watchers' order, as before the asks ran at once.
        due.sort_unstable_by_key(|(id, _)| *id);
        for (id, current) in due {
            let response = WatchResponse {
                header: self.header(current),
                watch_id: id,
                ..WatchResponse::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }
}

/// Up to which revision every event of `store`'s range has been sent to a watcher that expects
/// `next` next. On a keyspace of one range: the range's current revision, once sent.
/// On a keyspace in ranges, where the range's own revision can stay far below the
/// keyspace's: as far as the oracle's present, once the range has applied every
/// write up to it (the read-wait rule) and below its lowest lock (a transaction's
/// write still to come), so that a client waiting for progress past a write in
/// another range (Kubernetes' consistent reads from its watch cache) gets it.
/// A watcher whose keys (`interval`) a split moved partly out of the range, and that
/// has not followed them yet, gets no more than `sent`: the other range's events
/// are still to come to it.
async fn delivered_in(
    node: NodeHandle,
    store: Arc<MvccStore>,
    next: Revision,
    interval: (&[u8], &[u8]),
) -> Revision {
    let group = store.group();
    let sent = Revision(next.0 - 1).min(store.current_revision());
    // A range frozen for a merge holds no keys in its view: the merged range may take
    // writes to them before this replica applies the merge.
    if !store.oracle_revisions() || !store.read_view().span().covers(interval.0, interval.1) {
        return sent;
    }
    let resolved = async {
        // A revision from the range leader's next oracle fetch, with its barrier.
        let now = node.fresh_read_point(group).await?;
        let view = store.read_view();
        let below_locks = view
            .lowest_lock_revision()
            .map_or(now, |lock| now.min(Revision(lock.0 - 1)));
        let covers = view.span().covers(interval.0, interval.1);
        Ok::<_, ostrakon_node::NodeError>((below_locks, view.current_revision(), covers))
    };
    match tokio::time::timeout(MERGE_WAIT_MAX, resolved).await {
        // Every event up to the range's current revision was sent, and the range
        // holds none between it and the resolved one (and still holds the keys).
        Ok(Ok((resolved, current, true))) if next > current => resolved.max(sent),
        _ => sent,
    }
}

/// How far a watcher of several ranges whose next revision is `next` has been sent every
/// event, after a round served at the oracle's revision `round_at`: up to `next - 1`,
/// but not above the round's revision (a watcher that starts in the future has been
/// sent nothing owed up to the present, and etcd answers its present revision).
fn merged_progress(next: Revision, round_at: Option<Revision>) -> Revision {
    let sent = Revision(next.0 - 1);
    round_at.map_or(sent, |at| sent.min(at))
}

/// Splits events into groups of at most `bytes_max` encoded bytes each (an event larger
/// than that goes alone).
fn split_by_size(events: Vec<Event>, bytes_max: usize) -> Vec<Vec<Event>> {
    let mut parts: Vec<Vec<Event>> = vec![Vec::new()];
    let mut part_bytes = 0;
    for event in events {
        let event_bytes = event.encoded_len();
        let part = parts.last_mut().expect("one part at least");
        if !part.is_empty() && part_bytes + event_bytes > bytes_max {
            parts.push(vec![event]);
            part_bytes = event_bytes;
        } else {
            part.push(event);
            part_bytes += event_bytes;
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_proto::mvccpb::KeyValue;

    #[test]
    fn a_merged_watchers_progress_stops_at_the_rounds_revision() {
        assert_eq!(
            merged_progress(Revision(10), Some(Revision(20))),
            Revision(9)
        );
        assert_eq!(
            merged_progress(Revision(50), Some(Revision(20))),
            Revision(20)
        );
        assert_eq!(merged_progress(Revision(50), None), Revision(49));
    }

    fn event(key: &str, value_bytes: usize) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(vec![b'v'; value_bytes]),
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_stay_under_the_limit_and_keep_every_event_in_order() {
        let events: Vec<Event> = (0..10).map(|i| event(&format!("k{i}"), 100)).collect();
        let one = events[0].encoded_len();
        let parts = split_by_size(events.clone(), one * 3);
        assert_eq!(parts.len(), 4);
        assert!(parts
            .iter()
            .all(|p| p.iter().map(|e| e.encoded_len()).sum::<usize>() <= one * 3));
        assert_eq!(parts.concat(), events);
        let big = vec![event("a", 10), event("b", 5000), event("c", 10)];
        let parts = split_by_size(big.clone(), 1000);
        assert_eq!(parts.len(), 3, "an oversized event goes alone");
        assert_eq!(parts.concat(), big);
    }

    #[test]
    fn a_watcher_selects_its_range_and_filters() {
        let watcher = Watcher {
            follows: Follows::One(GroupId(1)),
            pending: None,
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"c"),
            next: Revision(1),
            prev_kv: false,
            no_put: false,
            no_delete: true,
            progress_notify: false,
            fragment: false,
        };
        let mut delete = event("b", 0);
        delete.r#type = EventType::Delete as i32;
        let mut with_prev = event("a", 1);
        with_prev.prev_kv = Some(KeyValue::default());
        let revision = RevisionEvents {
            revision: Revision(5),
            previous: Revision(4),
            events: vec![with_prev, delete, event("c", 1), event("bz", 1)],
        };
        let selected = watcher.select(&revision);
        let keys: Vec<_> = selected
            .iter()
            .map(|e| e.kv.as_ref().unwrap().key.clone())
            .collect();
        assert_eq!(
            keys,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"bz")]
        );
        assert!(selected[0].prev_kv.is_none(), "prev_kv only when asked");
    }
}
