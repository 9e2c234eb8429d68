//! The first data range's write rules (auth, NOSPACE) as other ranges take them in by
//! `WriteGate` entries and enforce them at apply (`store::gate_apply`).

use bytes::Bytes;
use ostrakon_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, AuthEnableRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, DeleteRangeRequest, PutRequest,
};
use ostrakon_proto::peer::{self as pb, auth_write, write_request::Request};
use ostrakon_raft::GroupId;

use super::*;

use super::shared_tests::Range;

impl Range {
    /// Applies `request`, checked against the auth store's revision `auth_revision`.
    fn write_checked(&mut self, request: Request, auth_revision: u64) -> WriteOutcome {
        // Revisions from the oracle once split: a test stands in for it.
        let revision = if self.store.oracle_revisions() {
            Revision(self.store.current_revision().0 + 1_000)
        } else {
            Revision(0)
        };
        self.write_checked_at(request, revision, auth_revision)
    }

    fn auth(&mut self, op: auth_write::Op) {
        match self.write(Request::Auth(pb::AuthWrite { op: Some(op) })) {
            WriteOutcome::Auth(_) => {}
            other => panic!("{other:?}"),
        }
    }

    /// Adds root and enables auth; returns the auth store's revision after.
    fn enable_auth(&mut self) -> u64 {
        self.auth(auth_write::Op::UserAdd(AuthUserAddRequest {
            name: "root".into(),
            hashed_password: "hash".into(),
            ..Default::default()
        }));
        self.auth(auth_write::Op::UserGrantRole(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }));
        self.auth(auth_write::Op::Enable(AuthEnableRequest {}));
        let auth = self.store.auth();
        assert!(auth.enabled());
        auth.revision()
    }

    fn raise_nospace(&mut self) {
        let raised = self.write(Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 42,
            alarm: AlarmType::Nospace as i32,
        }));
        assert!(matches!(raised, WriteOutcome::Alarm(_)), "{raised:?}");
    }

    fn clear_nospace(&mut self) {
        let cleared = self.write(Request::Alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 42,
            alarm: AlarmType::Nospace as i32,
        }));
        assert!(matches!(cleared, WriteOutcome::Alarm(_)), "{cleared:?}");
    }

    fn take_gate(&mut self, gate: &pb::WriteGate) -> bool {
        match self.write(Request::WriteGate(*gate)) {
            WriteOutcome::GateApplied(applied) => applied.raised,
            other => panic!("{other:?}"),
        }
    }

    /// A put whose check says `auth_revision` (`checked_auth`; 0: not checked): whether
    /// it applied, or etcd's error message.
    fn put_checked(&mut self, key: &str, auth_revision: u64) -> Result<(), String> {
        let put = Request::Put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        });
        match self.write_checked(put, auth_revision) {
            WriteOutcome::Put(_) => Ok(()),
            WriteOutcome::Error(error) => Err(error.message),
            other => panic!("{other:?}"),
        }
    }
}

/// What a write checked with auth on at `revision` carries.
fn on(revision: u64) -> u64 {
    checked_auth(revision, true)
}

fn left_span() -> KeySpan {
    KeySpan::new(Vec::new(), Some(b"m".to_vec()))
}

fn right_span() -> KeySpan {
    KeySpan::new(b"m".to_vec(), None)
}

const OLD_AUTH_REVISION: &str = "etcdserver: revision of auth store is old";

#[test]
fn a_range_refuses_writes_checked_against_auth_older_than_the_gate_it_took_in() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut first = Range::open(&keyspace, 1, left_span());
    let mut other = Range::open(&keyspace, 2, right_span());
    let revision = first.enable_auth();
    assert_eq!(
        first.put_checked("a", on(revision - 1)),
        Err(OLD_AUTH_REVISION.to_string()),
        "the first range holds the auth store itself"
    );
    // Until the gate is in its log, the other range knows nothing of the change: this
    // is the write a member that had not applied it yet could get through.
    assert_eq!(other.put_checked("n", on(revision - 1)), Ok(()));

    let gate = first.store.gate_to_carry();
    assert!(other.store.lacks_gate(&gate));
    assert!(other.take_gate(&gate));
    assert!(!other.store.lacks_gate(&gate));
    assert_eq!(
        other.put_checked("n", on(revision - 1)),
        Err(OLD_AUTH_REVISION.to_string())
    );
    assert_eq!(other.put_checked("n", on(revision)), Ok(()));
    assert_eq!(other.put_checked("n", 0), Ok(()), "writes not checked pass");

    // A gate from an earlier position of the first range (a carrier that read the
    // rules before the change, and proposed late) changes nothing.
    let older = pb::WriteGate {
        source_index: gate.source_index - 1,
        ..Default::default()
    };
    assert!(!other.take_gate(&older));
    assert_eq!(
        other.put_checked("n", on(revision - 1)),
        Err(OLD_AUTH_REVISION.to_string())
    );

    // The gate survives a restart and travels in the range's snapshots.
    other.store.persist();
    let reopened = MvccStore::open(&keyspace, GroupId(2), right_span());
    assert_eq!(reopened.write_rules(), other.store.write_rules());
    drop(reopened);
    let snapshot_dir = tempfile::tempdir().unwrap();
    let path = snapshot_dir.path().join("snap");
    crate::snapshot::create(&other.store, &path).unwrap();
    let elsewhere_dir = tempfile::tempdir().unwrap();
    let elsewhere = fjall::Config::new(elsewhere_dir.path()).open().unwrap();
    let installed = MvccStore::open(&elsewhere, GroupId(2), right_span());
    crate::snapshot::install(&installed, &path).unwrap();
    assert_eq!(installed.write_rules(), other.store.write_rules());
    assert!(installed
        .write_rules()
        .refuses_auth_revision(on(revision - 1)));

    // A replica of the first range that catches up by snapshot names the rules as the
    // others do (the gates it carries are those they would carry).
    crate::snapshot::create(&first.store, &path).unwrap();
    let first_elsewhere = MvccStore::open(&elsewhere, GroupId(1), left_span());
    crate::snapshot::install(&first_elsewhere, &path).unwrap();
    assert_eq!(first_elsewhere.gate_to_carry(), first.store.gate_to_carry());
}

#[test]
fn a_range_refuses_writes_that_add_data_once_a_gate_carries_nospace() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut first = Range::open(&keyspace, 1, left_span());
    let mut other = Range::open(&keyspace, 2, right_span());
    other.put_checked("n", 0).unwrap();
    let before_raise = first.store.gate_to_carry();
    first.raise_nospace();
    assert!(other.take_gate(&first.store.gate_to_carry()));
    assert_eq!(
        other.put_checked("o", 0),
        Err("etcdserver: mvcc: database space exceeded".to_string())
    );
    match other.write(Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"n"),
        ..Default::default()
    })) {
        WriteOutcome::DeleteRange(deleted) => assert_eq!(deleted.deleted, 1),
        other => panic!("deletes still apply: {other:?}"),
    }
    // Cleared in the first range, and carried: puts apply again.
    first.clear_nospace();
    let cleared = first.store.gate_to_carry();
    assert_eq!(
        (cleared.auth_revision, cleared.auth_enabled, cleared.nospace),
        (
            before_raise.auth_revision,
            before_raise.auth_enabled,
            before_raise.nospace
        ),
        "the same rules as before the alarm"
    );
    // A range that holds the alarm's gate lacks the clearing's, though its rules are
    // those of a gate from before the alarm.
    assert!(other.store.lacks_gate(&cleared));
    assert!(other.take_gate(&cleared));
    assert_eq!(other.put_checked("o", 0), Ok(()));
    // Raised again, and carried again.
    first.raise_nospace();
    let raised_again = first.store.gate_to_carry();
    assert!(other.store.lacks_gate(&raised_again));
    assert!(other.take_gate(&raised_again));
    assert!(other.put_checked("p", 0).is_err());
}

#[test]
fn the_first_range_goes_by_its_own_tables_whatever_gate_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut first = Range::open(&keyspace, 1, left_span());
    // A gate with NOSPACE in the first range (as a merge could leave it): its own alarms,
    // none raised, decide.
    let gate = pb::WriteGate {
        source_index: 100,
        nospace: true,
        auth_enabled: true,
        auth_revision: 50,
    };
    assert!(first.take_gate(&gate));
    let rules = first.store.write_rules();
    assert!(!rules.nospace && !rules.auth_enabled, "{rules:?}");
    assert_eq!(rules.auth_revision, first.store.auth().revision());
    assert_eq!(first.put_checked("a", on(3)), Ok(()));
}

#[test]
fn a_range_split_off_starts_with_the_rules_of_the_range_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut whole = Range::open(&keyspace, 1, KeySpan::whole());
    let revision = whole.enable_auth();
    whole.raise_nospace();
    let right = whole.split_off(b"m", 2);
    let rules = right.store.write_rules();
    assert_eq!(rules, whole.store.write_rules());
    assert!(rules.refuses_auth_revision(on(revision - 1)) && rules.nospace);
    assert_eq!(
        right.store.held_gate().source_index,
        whole.index - 1,
        "named by the last change to the rules, NOSPACE's, the entry before the split"
    );

    // A range split off a range that is not the first takes its gate as it is.
    let mut right = right;
    let third = right.split_off(b"t", 3);
    assert_eq!(third.store.held_gate(), right.store.held_gate());
    assert_eq!(third.store.write_rules(), rules);
}

#[test]
fn auth_changes_while_auth_is_off_change_no_rule() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut first = Range::open(&keyspace, 1, left_span());
    let before = first.store.gate_to_carry();
    first.auth(auth_write::Op::UserAdd(AuthUserAddRequest {
        name: "bob".into(),
        hashed_password: "hash".into(),
        ..Default::default()
    }));
    assert_eq!(
        first.store.gate_to_carry().source_index,
        before.source_index,
        "a user added while auth is off: nothing to carry"
    );
    first.enable_auth();
    let enabled = first.store.gate_to_carry();
    assert_eq!(
        enabled.source_index, first.index,
        "turning auth on is a change"
    );
    first.auth(auth_write::Op::UserAdd(AuthUserAddRequest {
        name: "carol".into(),
        hashed_password: "hash".into(),
        ..Default::default()
    }));
    assert_eq!(
        first.store.gate_to_carry().source_index,
        first.index,
        "a change while auth is on is one"
    );
}

/// A write its proposer let through while auth was off there (a member behind on the
/// enable) is refused once auth is on where it applies, in the first range and in one
/// that took the enable in by a gate, as etcd refuses a request without a user; the
/// enable does not raise the auth revision, so the revision alone would not tell.
#[test]
fn a_write_checked_while_auth_was_off_is_refused_where_auth_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut first = Range::open(&keyspace, 1, left_span());
    let mut other = Range::open(&keyspace, 2, right_span());
    let off_revision = first.store.auth().revision();
    let checked_off = checked_auth(off_revision, false);
    assert_eq!(first.put_checked("a", checked_off), Ok(()), "auth is off");
    let revision = first.enable_auth();
    assert!(other.take_gate(&first.store.gate_to_carry()));
    const USER_EMPTY: &str = "etcdserver: user name is empty";
    for (range, key) in [(&mut first, "b"), (&mut other, "n")] {
        assert_eq!(
            range.put_checked(key, checked_auth(revision, false)),
            Err(USER_EMPTY.to_string())
        );
        assert_eq!(range.put_checked(key, checked_auth(revision, true)), Ok(()));
    }
}

#[test]
fn a_replica_made_from_a_snapshot_drops_the_tokens_its_peers_dropped() {
    // The leader's replica: a token issued, then the user's password changed (which
    // ends the user's tokens on every replica that applies it).
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut leader = Range::open(&keyspace, 1, KeySpan::whole());
    leader.enable_auth();
    let authenticate = |range: &mut Range| match range.write(Request::Auth(pb::AuthWrite {
        op: Some(auth_write::Op::Authenticate(pb::AuthenticateWrite {
            name: "root".into(),
            token: "prefix".into(),
        })),
    })) {
        WriteOutcome::Auth(applied) => applied.token,
        other => panic!("{other:?}"),
    };
    // A replica at the same position, which applies the Authenticate too and then
    // falls behind.
    let behind_dir = tempfile::tempdir().unwrap();
    let behind_keyspace = fjall::Config::new(behind_dir.path()).open().unwrap();
    let path = dir.path().join("before.snap");
    crate::snapshot::create(&leader.store, &path).unwrap();
    let mut behind = Range::open(&behind_keyspace, 1, KeySpan::whole());
    crate::snapshot::install(&behind.store, &path).unwrap();
    behind.index = behind.store.applied_index().0;
    let token = authenticate(&mut leader);
    assert_eq!(
        authenticate(&mut behind),
        token,
        "the same token on every replica"
    );
    assert_eq!(behind.store.token_user(&token).as_deref(), Some("root"));

    leader.auth(auth_write::Op::UserChangePassword(
        ostrakon_proto::etcdserverpb::AuthUserChangePasswordRequest {
            name: "root".into(),
            hashed_password: "another".into(),
            ..Default::default()
        },
    ));
    assert_eq!(leader.store.token_user(&token), None);
    let path = dir.path().join("after.snap");
    crate::snapshot::create(&leader.store, &path).unwrap();
    crate::snapshot::install(&behind.store, &path).unwrap();
    assert_eq!(
        behind.store.token_user(&token),
        None,
        "a token its peers dropped is dropped here too"
    );
}
