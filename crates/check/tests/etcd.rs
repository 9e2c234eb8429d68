//! The etcd model: store revisions couple every key.

mod common;

use std::time::Duration;

use common::{ok, unknown};
use ostrakon_check::{
    check, CheckResult, EtcdInput as I, EtcdKvModel, EtcdOutput as O, KeyValue, Operation,
};

type Op = Operation<I, O>;

const BUDGET: Duration = Duration::from_secs(10);

fn verdict(ops: &[Op]) -> CheckResult {
    check(&EtcdKvModel, ops, BUDGET)
}

fn put(client: u64, key: u64, value: u64, times: (u64, u64), revision: u64) -> Op {
    ok(
        client,
        I::Put { key, value },
        times.0,
        times.1,
        O::Put { revision },
    )
}

fn get(client: u64, key: u64, kv: Option<KeyValue>, times: (u64, u64), revision: u64) -> Op {
    ok(
        client,
        I::Get { key },
        times.0,
        times.1,
        O::Get { kv, revision },
    )
}

fn delete(client: u64, key: u64, deleted: u64, times: (u64, u64), revision: u64) -> Op {
    let output = O::Delete { deleted, revision };
    ok(client, I::Delete { key }, times.0, times.1, output)
}

fn kv(value: u64, create_revision: u64, mod_revision: u64, version: u64) -> KeyValue {
    KeyValue {
        value,
        create_revision,
        mod_revision,
        version,
    }
}

#[test]
fn revisions_must_match() {
    let ops = vec![
        put(1, 1, 10, (0, 10), 2),
        put(1, 2, 20, (20, 30), 3),
        get(2, 1, Some(kv(10, 2, 2, 1)), (40, 50), 3),
    ];
    assert_eq!(verdict(&ops), CheckResult::Linearizable);

    let mut wrong_put = ops.clone();
    wrong_put[1] = put(1, 2, 20, (20, 30), 4);
    assert!(verdict(&wrong_put).is_not_linearizable());

    let mut wrong_mod_revision = ops.clone();
    wrong_mod_revision[2] = get(2, 1, Some(kv(10, 2, 3, 1)), (40, 50), 3);
    assert!(verdict(&wrong_mod_revision).is_not_linearizable());
}

#[test]
fn get_header_revision_is_the_current_store_revision() {
    let before = put(1, 1, 10, (0, 10), 2);
    let other_key = put(1, 2, 20, (20, 30), 3);
    // A read of key 1 after the put to key 2 must report revision 3 even though key 1
    // last changed at revision 2.
    let stale_header = get(2, 1, Some(kv(10, 2, 2, 1)), (40, 50), 2);
    assert!(verdict(&[before.clone(), other_key.clone(), stale_header]).is_not_linearizable());
    // Concurrent with the put to key 2 either header is possible.
    for revision in [2, 3] {
        let concurrent = get(2, 1, Some(kv(10, 2, 2, 1)), (25, 35), revision);
        let ops = [before.clone(), other_key.clone(), concurrent];
        assert_eq!(verdict(&ops), CheckResult::Linearizable);
    }
}

#[test]
fn lost_update_is_not_linearizable() {
    // Two concurrent puts cannot both create revision 2.
    let ops = [put(1, 1, 10, (0, 10), 2), put(2, 2, 20, (5, 15), 2)];
    let CheckResult::NotLinearizable(explanation) = verdict(&ops) else {
        panic!("two puts returned the same revision");
    };
    assert_eq!(explanation.partition, "all");
    assert_eq!(explanation.linearized.len(), 1, "{explanation}");
    // Either order of distinct revisions is fine.
    let ops = [put(1, 1, 10, (0, 10), 3), put(2, 2, 20, (5, 15), 2)];
    assert_eq!(verdict(&ops), CheckResult::Linearizable);
}

#[test]
fn delete_of_absent_key_does_not_bump_revision() {
    let ops = [delete(1, 9, 0, (0, 10), 1), put(1, 1, 10, (20, 30), 2)];
    assert_eq!(verdict(&ops), CheckResult::Linearizable);
    let ops = [delete(1, 9, 0, (0, 10), 2)];
    assert!(verdict(&ops).is_not_linearizable());
    let ops = [
        put(1, 9, 10, (0, 10), 2),
        delete(1, 9, 1, (20, 30), 3),
        get(1, 9, None, (40, 50), 3),
    ];
    assert_eq!(verdict(&ops), CheckResult::Linearizable);
}

#[test]
fn txn_cas_compares_mod_revision() {
    let cas = |expected_mod_revision, succeeded, revision| {
        let input = I::TxnCas {
            key: 1,
            expected_mod_revision,
            value: 11,
        };
        ok(
            2,
            input,
            20,
            30,
            O::TxnCas {
                succeeded,
                revision,
            },
        )
    };
    let first = put(1, 1, 10, (0, 10), 2);
    assert_eq!(
        verdict(&[first.clone(), cas(2, true, 3)]),
        CheckResult::Linearizable
    );
    assert_eq!(
        verdict(&[first.clone(), cas(0, false, 2)]),
        CheckResult::Linearizable
    );
    assert!(verdict(&[first.clone(), cas(2, false, 2)]).is_not_linearizable());
    assert!(verdict(&[first, cas(0, true, 3)]).is_not_linearizable());
}

#[test]
fn unknown_put_may_take_effect_later() {
    let ops = [
        unknown(1, I::Put { key: 1, value: 10 }, 0),
        get(2, 1, None, (10, 20), 1),
        get(2, 1, Some(kv(10, 2, 2, 1)), (30, 40), 2),
    ];
    assert_eq!(verdict(&ops), CheckResult::Linearizable);
    // But it shifts every later revision once it has taken effect.
    let ops = [
        unknown(1, I::Put { key: 1, value: 10 }, 0),
        get(2, 1, Some(kv(10, 2, 2, 1)), (10, 20), 2),
        put(2, 2, 20, (30, 40), 2),
    ];
    assert!(verdict(&ops).is_not_linearizable());
}
