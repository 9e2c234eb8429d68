//! Backups and new clusters made from them: `Maintenance.Snapshot` streamed to
//! `ostrakon snapshot save` and to etcdctl's `snapshot save` while writes go on,
//! `ostrakon snapshot status`, and `ostrakon snapshot restore` into a new cluster that
//! holds exactly the backed-up revision.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::etcdctl::{etcdctls, Etcdctl};
use common::real_etcd::etcd_tool;
use common::TestCluster;

/// The (revision, entry count) that `ostrakon snapshot status -w json` reports (as
/// etcdutl counts: every entry of every bucket).
fn status_of(cluster: &TestCluster, file: &std::path::Path) -> (i64, i64) {
    let (ok, stdout, stderr) =
        cluster.ostrakon(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "snapshot status failed: {stderr}");
    let number = |field: &str| -> i64 {
        let start = stdout.find(&format!("\"{field}\":")).unwrap() + field.len() + 3;
        stdout[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (number("revision"), number("totalKey"))
}

/// A new 3-member cluster's data directories restored from `backup` (not started), each
/// restore reporting `revision`.
fn restore_unstarted(backup: &std::path::Path, revision: i64) -> TestCluster {
    let restored = TestCluster::unstarted(3, &[]);
    for i in 0..3 {
        let data_dir = restored.data_dir(i);
        let peer_url = restored.peer_url(i);
        let name = restored.members[i].name.clone();
        let (ok, stdout, stderr) = restored.ostrakon(&[
            "snapshot",
            "restore",
            backup.to_str().unwrap(),
            "--name",
            &name,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--initial-cluster",
            restored.initial_cluster(),
            "--initial-cluster-token",
            "test",
            "--initial-advertise-peer-urls",
            &peer_url,
        ]);
        assert!(ok, "restore failed: {stderr}");
        assert!(stdout.contains(&format!("revision {revision}")), "{stdout}");
    }
    restored
}

/// Every key, as (key, value, create revision, mod revision, version, lease), at
/// `revision` (0: the current one).
async fn every_key(
    client: &mut etcd_client::Client,
    revision: i64,
) -> Vec<(String, String, i64, i64, i64, i64)> {
    let got = client
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_revision(revision),
            ),
        )
        .await
        .unwrap();
    got.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_keyspace_in_ranges_is_one_consistent_point() {
    let binaries = etcdctls();
    let source = TestCluster::start(3, &[]).await;
    source.wait_for_leader().await;
    let mut client = source.client(0).await;
    for n in 0..20 {
        client.put(format!("a/{n:02}"), "left", None).await.unwrap();
        client
            .put(format!("x/{n:02}"), "right", None)
            .await
            .unwrap();
    }
    common::ranges::split_at_m(&source).await;
    let lease = client.lease_grant(600, None).await.unwrap().id();
    let leased = Some(etcd_client::PutOptions::new().with_lease(lease));
    client.put("y/leased", "v", leased).await.unwrap();
    // While the backups are taken, a writer puts one number to a key in each range in
    // one Txn: every consistent point has both equal.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut client = source.client(1).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 2000 {
                let value = n.to_string();
                let txn = etcd_client::Txn::new().and_then([
                    etcd_client::TxnOp::put("a/pair", value.clone(), None),
                    etcd_client::TxnOp::put("x/pair", value, None),
                ]);
                let _ = client.txn(txn).await;
                n += 1;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ostrakon.db");
    let (ok, stdout, stderr) = source.ostrakon(&[
        "snapshot",
        "save",
        ours.to_str().unwrap(),
        "--endpoints",
        &source.host_port(2),
    ]);
    assert!(ok, "snapshot save failed: {stderr}");
    assert!(stdout.contains("Snapshot saved at"), "{stdout}");
    // etcd's own tools take and read it too (every version keyed once: a transaction's
    // writes in two ranges at one revision get distinct sub-revisions).
    let theirs = dir.path().join("etcdctl.db");
    let etcdctl = Etcdctl {
        binary: binaries.last().unwrap(),
        endpoints: source.host_port(0),
    };
    let saved = etcdctl.ok(&["snapshot", "save", theirs.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let etcdutl = std::process::Command::new(etcd_tool("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        etcdutl.status.success(),
        "{}",
        String::from_utf8_lossy(&etcdutl.stderr)
    );
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    // The backup is the keyspace at one revision: the source read at it, key for key.
    let (revision, _) = status_of(&source, &ours);
    let expected = every_key(&mut source.client(2).await, revision).await;
    assert!(expected.len() >= 41, "{expected:?}");
    let mut restored = restore_unstarted(&ours, revision);
    restored.start_members().await;
    let mut restored_client = restored.client(1).await;
    let got = every_key(&mut restored_client, 0).await;
    assert_eq!(got, expected);
    let value = |key: &str| got.iter().find(|kv| kv.0 == key).map(|kv| kv.1.clone());
    assert_eq!(value("a/pair"), value("x/pair"), "a transaction seen whole");
    let leases = restored_client.leases().await.unwrap();
    assert!(leases.leases().iter().any(|l| l.id() == lease));
    let put = restored_client
        .put("after-restore", "v", None)
        .await
        .unwrap();
    assert!(put.header().unwrap().revision() > revision);

    // The restore made the backup's ranges again, and they go on as ranges do: writes
    // in each and a Txn across both above the backup's revision, and a new split with
    // an id of its own (the restored meta range counts on after the restored ranges').
    if common::splits_eagerly() {
        let listed = common::ranges::ranges(&restored, 0).await.unwrap();
        assert!(
            listed.len() > 1 && listed.iter().any(|range| range.start == b"m"[..]),
            "{listed:?}"
        );
    } else {
        common::ranges::wait_for_spans(&restored, &[("", "m"), ("m", "")]).await;
    }
    let mut last = revision;
    for key in ["a/after", "x/after"] {
        let put = restored_client.put(key, "v", None).await.unwrap();
        let at = put.header().unwrap().revision();
        assert!(at > last, "{key} at {at}, after {last}");
        last = at;
    }
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put("a/pair", "restored", None),
        etcd_client::TxnOp::put("x/pair", "restored", None),
    ]);
    let done = restored_client.txn(txn).await.unwrap();
    assert!(done.header().unwrap().revision() > last);
    if !common::splits_eagerly() {
        let (ok, out, err) =
            restored.ostrakon(&["ranges", "split", "q", "--endpoint", &restored.host_port(2)]);
        assert!(ok, "split failed: {out} {err}");
        common::ranges::wait_for_spans(&restored, &[("", "m"), ("m", "q"), ("q", "")]).await;
        let ids: std::collections::BTreeSet<u64> = common::ranges::ranges(&restored, 0)
            .await
            .unwrap()
            .iter()
            .map(|range| range.range_id)
            .collect();
        assert_eq!(ids.len(), 3, "every range has an id of its own: {ids:?}");
    }
    let got = every_key(&mut restored.client(0).await, 0).await;
    let value = |key: &str| got.iter().find(|kv| kv.0 == key).map(|kv| kv.1.clone());
    assert_eq!(value("a/pair").as_deref(), Some("restored"));
    assert_eq!(value("x/pair").as_deref(), Some("restored"));
    assert_eq!(value("x/after").as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_new_cluster_at_its_revision() {
    let binaries = etcdctls();
    let source = TestCluster::start(3, &[]).await;
    let mut client = source.client(0).await;
    for n in 0..200 {
        client
            .put(format!("before/{n:03}"), vec![b'x'; 100], None)
            .await
            .unwrap();
    }
    let lease = client.lease_grant(600, None).await.unwrap().id();
    client
        .put(
            "leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    client.delete("before/000", None).await.unwrap();
    // Writes go on during the backups.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut client = source.client(1).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 5000 {
                let _ = client.put(format!("during/{n:05}"), "v", None).await;
                n += 1;
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ostrakon.db");
    let (ok, stdout, stderr) = source.ostrakon(&[
        "snapshot",
        "save",
        ours.to_str().unwrap(),
        "--endpoints",
        &source.host_port(2),
    ]);
    assert!(ok, "snapshot save failed: {stderr}");
    assert!(stdout.contains("Snapshot saved at"), "{stdout}");
    for (i, binary) in binaries.iter().enumerate() {
        let file = dir.path().join(format!("etcdctl-{i}.db"));
        let etcdctl = Etcdctl {
            binary,
            endpoints: source.host_port(0),
        };
        let saved = etcdctl.ok(&["snapshot", "save", file.to_str().unwrap()]);
        assert!(saved.contains("Snapshot saved at"), "{saved}");
        let (revision, keys) = status_of(&source, &file);
        assert!(revision > 200 && keys > 200, "{revision} {keys}");
        // Taken under load, it is a whole database that etcd's own tool reads, and
        // describes as ostrakon does.
        let etcdutl = std::process::Command::new(etcd_tool("etcdutl"))
            .args(["snapshot", "status", "-w", "json"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            etcdutl.status.success(),
            "{}",
            String::from_utf8_lossy(&etcdutl.stderr)
        );
        let (_, ours, _) =
            source.ostrakon(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
        assert_eq!(String::from_utf8_lossy(&etcdutl.stdout).trim(), ours.trim());
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    // The backup holds one revision, whole: a new cluster made from it hashes alike.
    let (revision, _) = status_of(&source, &ours);
    let mut source_client = source.client(2).await;
    let source_hash = source_client.hash_kv(revision).await.unwrap().hash();
    let keys = source_client
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_count_only()
                    .with_revision(revision),
            ),
        )
        .await
        .unwrap()
        .count();

    let mut restored = restore_unstarted(&ours, revision);
    // A data directory is never overwritten.
    let (ok, _, stderr) = restored.ostrakon(&[
        "snapshot",
        "restore",
        ours.to_str().unwrap(),
        "--name",
        "m1",
        "--data-dir",
        restored.data_dir(0).to_str().unwrap(),
        "--initial-cluster",
        restored.initial_cluster(),
        "--initial-advertise-peer-urls",
        &restored.peer_url(0),
    ]);
    assert!(!ok && stderr.contains("exists"), "{stderr}");

    restored.start_members().await;
    // (A keyspace split eagerly, and split elsewhere by the restore, hashes alike: the
    // hash is the keyspace's at one revision, however it is split.)
    let source_keys = every_key(&mut source_client, revision).await;
    for i in 0..3 {
        let mut client = restored.client(i).await;
        assert_eq!(every_key(&mut client, 0).await, source_keys, "member {i}");
        let hash = client.hash_kv(revision).await.unwrap();
        assert_eq!(
            hash.hash(),
            source_hash,
            "member {i} of the restored cluster holds the backed-up revision"
        );
        let all = client
            .get(
                "",
                Some(
                    etcd_client::GetOptions::new()
                        .with_all_keys()
                        .with_count_only(),
                ),
            )
            .await
            .unwrap();
        assert_eq!(all.count(), keys, "member {i}");
    }
    let mut client = restored.client(0).await;
    assert!(client
        .get("before/000", None)
        .await
        .unwrap()
        .kvs()
        .is_empty());
    assert_eq!(client.get("before/001", None).await.unwrap().kvs().len(), 1);
    let leases = client.leases().await.unwrap();
    assert!(
        leases.leases().iter().any(|l| l.id() == lease),
        "the lease is restored"
    );
    let put = client.put("after-restore", "v", None).await.unwrap();
    if common::splits_eagerly() {
        assert!(put.header().unwrap().revision() > revision);
    } else {
        assert_eq!(put.header().unwrap().revision(), revision + 1);
    }
    let source_id = source_client
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .cluster_id();
    let restored_id = client
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .cluster_id();
    assert_ne!(source_id, restored_id, "a restore makes a new cluster");
}

/// A backup asked for just before the keyspace's first split applies on the member that
/// takes it holds every key: the member decides whether the keyspace is one range from
/// the state it froze, not from a look taken before (the split, applied in between, left
/// every key past it out of the backup, silently). A pause point holds the backup before
/// it freezes anything while the split applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_racing_the_first_split_holds_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-the-backup");
    let armed = format!("backup-before-freeze:{}", hold.display());
    let source =
        TestCluster::start_with_env(3, &[], &[("OSTRAKON_FAILPOINT_PAUSE", armed.as_str())]).await;
    source.wait_for_leader().await;
    let mut client = source.client(0).await;
    for n in 0..10 {
        client.put(format!("a/{n}"), "left", None).await.unwrap();
        client.put(format!("x/{n}"), "right", None).await.unwrap();
    }
    std::fs::write(&hold, b"").unwrap();
    let backup = {
        let mut client = source.client(0).await;
        tokio::spawn(async move {
            let mut stream = client.snapshot().await.unwrap();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await.unwrap() {
                bytes.extend_from_slice(chunk.blob());
            }
            bytes
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !source.log(0).contains("held at a pause point") {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never reached its pause point"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    common::ranges::split_at_m(&source).await;
    std::fs::remove_file(&hold).unwrap();
    let file = dir.path().join("raced.db");
    std::fs::write(&file, backup.await.unwrap()).unwrap();

    let (revision, _) = status_of(&source, &file);
    let expected = every_key(&mut source.client(1).await, revision).await;
    assert_eq!(
        expected.len(),
        20,
        "the backup is after every put: {expected:?}"
    );
    let mut restored = restore_unstarted(&file, revision);
    restored.start_members().await;
    let got = every_key(&mut restored.client(0).await, 0).await;
    assert_eq!(got, expected, "the backup holds the keys past the split");
}
