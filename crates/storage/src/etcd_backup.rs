//! Backups in etcd's own format, both ways: a bbolt file with etcd 3.5's buckets and
//! encodings, followed by its SHA-256 (as `Maintenance.Snapshot` streams it and
//! `etcdctl snapshot save` keeps it), so that `etcdutl snapshot status|restore` read
//! ostrakon's backups, and `ostrakon snapshot restore` reads etcd's.
//!
//! The buckets, as etcd 3.5.1 writes them (checked against a real backup in
//! tests/fixtures):
//! - `key`: one entry per stored version, keyed by revision: 8 bytes of main revision
//!   (big-endian), `_`, 8 bytes of sub-revision, and `t` for a delete's tombstone; the
//!   value is an `mvccpb.KeyValue` (only the key, for a tombstone).
//! - `meta`: `consistent_index` and `term` (8 bytes big-endian), `confState` (JSON),
//!   `scheduledCompactRev` and `finishedCompactRev` (revision keys) once compacted.
//! - `lease`: the lease id (8 bytes big-endian) to a `leasepb.Lease` (id, TTL, remaining
//!   TTL).
//! - `members` (id in hex to JSON), `members_removed` (id in hex to "removed").
//! - `auth` (`authEnabled` as one byte, `authRevision` as 8 bytes big-endian),
//!   `authUsers` (`authpb.User` by name), `authRoles` (`authpb.Role` by name).
//! - `alarm`, and `cluster` (`clusterVersion`: "3.5.0").
//!
//! And one of ostrakon's own, in a backup of a keyspace in ranges only:
//! `ostrakon_ranges`, the first key of every data range after the first, to one byte (1:
//! the range began at an operator's split), so that a restore makes the same ranges.
//! etcd's tools keep a bucket they do not know and count it in `snapshot status`.

use std::collections::BTreeMap;
use std::io::{Seek as _, Write as _};
use std::path::Path;

use ostrakon_proto::authpb;
use ostrakon_proto::mvccpb::KeyValue;
use ostrakon_proto::peer as pb;
use prost::Message as _;
use sha2::Digest as _;

use crate::bolt::{self, Bucket};
use crate::mvcc::compaction::classify;
use crate::mvcc::keys::{split_versioned_key, versioned_key};
use crate::mvcc::{LeaseRecord, Revision, StoredVersion, INITIAL_REVISION, NEVER_COMPACTED};
use crate::snapshot::{RangeStart, SnapshotContent, SnapshotError};

/// The cluster version etcd 3.5 records in its `cluster` bucket.
const CLUSTER_VERSION: &[u8] = b"3.5.0";
/// The bucket of the ranges' first keys (a keyspace in ranges only).
const RANGES_BUCKET: &[u8] = b"ostrakon_ranges";
/// Bytes of the SHA-256 that follows the database in a backup.
const HASH_BYTES: usize = 32;

/// `leasepb.Lease`, as etcd stores a lease.
#[derive(Clone, PartialEq, prost::Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// A member as etcd stores it in its `members` bucket.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemberJson {
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(
        rename = "isLearner",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    client_urls: Vec<String>,
}

/// The raft membership as etcd stores it in its `meta` bucket.
#[derive(serde::Serialize)]
struct ConfStateJson {
    voters: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    learners: Vec<u64>,
    auto_leave: bool,
}

/// What an etcd backup holds that a new cluster is made from.
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdBackup {
    /// Every stored version, in ostrakon's storage encoding and order.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every lease.
    pub leases: Vec<(i64, LeaseRecord)>,
    /// Users, roles and whether auth is on.
    pub auth: pb::AuthTables,
    /// The store's revision: the last write's, or the compacted revision if higher.
    pub revision: Revision,
    /// The compacted revision (as scheduled: etcd finishes a compaction it had begun).
    pub compact_revision: Revision,
    /// Where each data range after the first began (none in etcd's own backups).
    pub range_starts: Vec<RangeStart>,
}

/// What `etcdutl snapshot status` reports about a backup, computed as it computes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdStatus {
    /// CRC-32C of every bucket's name, keys and values, in order.
    pub hash: u32,
    /// The main revision of the last entry of the `key` bucket.
    pub revision: i64,
    /// Entries in all buckets.
    pub total_keys: usize,
    /// The database's size (without the SHA-256).
    pub total_bytes: u64,
}

/// Whether `file` starts like a bbolt database (etcd's format) rather than ostrakon's.
pub fn is_etcd_backup(file: &[u8]) -> bool {
    file.len() >= 24 && file[16..20] == 0xED0C_DAEDu32.to_le_bytes()
}

/// Writes `content` as an etcd backup (bbolt database, then its SHA-256) to `path`.
/// Returns the file's size.
pub fn write(content: &SnapshotContent, path: &Path) -> Result<u64, SnapshotError> {
    let io = |e| SnapshotError::Io(path.to_path_buf(), e);
    let buckets = buckets_of(content);
    let mut file = std::fs::File::create(path).map_err(io)?;
    let db_bytes = bolt::write_buckets(&buckets, &mut file).map_err(io)?;
    // The hash covers the database as written; read it back rather than hashing in
    // the page writer, which seeks.
    let db = std::fs::read(path).map_err(io)?;
    let hash = sha2::Sha256::digest(&db[..db_bytes as usize]);
    file.seek(std::io::SeekFrom::Start(db_bytes)).map_err(io)?;
    file.write_all(&hash).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(db_bytes + HASH_BYTES as u64)
}

/// Reads an etcd backup: a bbolt database, with or without its SHA-256 (checked if
/// present, as etcdutl does; a database copied from a data directory has none).
pub fn read(file: &[u8], path: &Path) -> Result<(EtcdBackup, EtcdStatus), SnapshotError> {
    let unreadable = |why: String| SnapshotError::Unreadable(path.to_path_buf(), why);
    let db = without_hash(file).map_err(unreadable)?;
    let buckets = bolt::read_buckets(db).map_err(|e| unreadable(e.to_string()))?;
    let status = status_of(&buckets, db.len() as u64);
    let backup = from_buckets(&buckets).map_err(unreadable)?;
    Ok((backup, status))
}

/// The database part of a backup, its SHA-256 checked if it has one.
fn without_hash(file: &[u8]) -> Result<&[u8], String> {
    // etcdctl's rule: a file whose size is 32 past a whole number of 512-byte blocks
    // carries a hash.
    if file.len() % 512 != HASH_BYTES {
        return Ok(file);
    }
    let (db, hash) = file.split_at(file.len() - HASH_BYTES);
    if sha2::Sha256::digest(db).as_slice() != hash {
        return Err("its SHA-256 does not match (a damaged or cut-short backup)".into());
    }
    Ok(db)
}

/// etcdutl's status: a CRC-32C of every bucket name, key and value in order, the last
/// revision of the `key` bucket, the number of entries and the size.
fn status_of(buckets: &[Bucket], total_bytes: u64) -> EtcdStatus {
    let mut hash = 0u32;
    let mut revision = 0;
    let mut total_keys = 0;
    for bucket in buckets {
        hash = crc32c::crc32c_append(hash, &bucket.name);
        for (key, value) in &bucket.entries {
            hash = crc32c::crc32c_append(hash, key);
            hash = crc32c::crc32c_append(hash, value);
            total_keys += 1;
        }
        if bucket.name == b"key" {
            if let Some((key, _)) = bucket.entries.last() {
                revision = parse_revision_key(key).map_or(0, |(main, _, _)| main);
            }
        }
    }
    EtcdStatus {
        hash,
        revision,
        total_keys,
        total_bytes,
    }
}

/// etcd's buckets for `content`. Versions a compaction made garbage (present until the
/// compactor removes them) are left out, as etcd's own compaction leaves them out.
pub fn buckets_of(content: &SnapshotContent) -> Vec<Bucket> {
    let mut key = Vec::with_capacity(content.items.len());
    let compacted = content.info.compact_revision;
    let _ = classify(
        content.items.iter().map(|(k, v)| (k, v)),
        compacted,
        |k, v, garbage| {
            if !garbage {
                key.push(key_entry(k, v));
            }
            std::ops::ControlFlow::Continue(())
        },
    );
    let mut meta = vec![
        (
            b"consistent_index".to_vec(),
            content.info.applied.index.0.to_be_bytes().to_vec(),
        ),
        (
            b"term".to_vec(),
            content.info.applied.term.0.to_be_bytes().to_vec(),
        ),
        (
            b"confState".to_vec(),
            conf_state_json(&content.info.applied.conf_state),
        ),
    ];
    if compacted != NEVER_COMPACTED {
        let rev = revision_key(compacted.0, 0, false);
        meta.push((b"scheduledCompactRev".to_vec(), rev.clone()));
        meta.push((b"finishedCompactRev".to_vec(), rev));
    }
    let lease = content
        .leases
        .iter()
        .map(|(id, record)| {
            let stored = LeasePb {
                id: *id,
                ttl: record.ttl_secs,
                remaining_ttl: record.remaining_secs,
            };
            (id.to_be_bytes().to_vec(), stored.encode_to_vec())
        })
        .collect();
    let learners = &content.info.applied.conf_state.learners;
    let (removed, members): (Vec<_>, Vec<_>) =
        content.tables.members.iter().partition(|m| m.removed);
    let members = members
        .into_iter()
        .map(|m| {
            let json = MemberJson {
                id: m.id,
                peer_urls: m.peer_urls.clone(),
                is_learner: learners.contains(&ostrakon_raft::NodeId(m.id)),
                name: m.name.clone(),
                client_urls: m.client_urls.clone(),
            };
            let value = serde_json::to_vec(&json).expect("a member serializes");
            (format!("{:016x}", m.id).into_bytes(), value)
        })
        .collect();
    let removed = removed
        .into_iter()
        .map(|m| (format!("{:016x}", m.id).into_bytes(), b"removed".to_vec()))
        .collect();
    let auth = content.tables.auth.clone().unwrap_or_default();
    let mut auth_entries = vec![(
        b"authRevision".to_vec(),
        auth.revision.to_be_bytes().to_vec(),
    )];
    if auth.enabled {
        auth_entries.push((b"authEnabled".to_vec(), vec![1]));
    }
    let users = auth
        .users
        .iter()
        .map(|u| (u.name.to_vec(), u.encode_to_vec()))
        .collect();
    let roles = auth
        .roles
        .iter()
        .map(|r| (r.name.to_vec(), r.encode_to_vec()))
        .collect();
    let mut buckets = vec![
        Bucket::new(b"alarm", Vec::new()),
        Bucket::new(b"auth", auth_entries),
        Bucket::new(b"authRoles", roles),
        Bucket::new(b"authUsers", users),
        Bucket::new(
            b"cluster",
            vec![(b"clusterVersion".to_vec(), CLUSTER_VERSION.to_vec())],
        ),
        Bucket::new(b"key", key),
        Bucket::new(b"lease", lease),
        Bucket::new(b"members", members),
        Bucket::new(b"members_removed", removed),
        Bucket::new(b"meta", meta),
    ];
    if !content.range_starts.is_empty() {
        let starts = content
            .range_starts
            .iter()
            .map(|start| (start.key.clone(), vec![u8::from(start.by_hand)]))
            .collect();
        buckets.push(Bucket::new(RANGES_BUCKET, starts));
    }
    buckets
}

fn conf_state_json(conf: &ostrakon_raft::ConfState) -> Vec<u8> {
    let json = ConfStateJson {
        voters: conf.voters.iter().map(|id| id.0).collect(),
        learners: conf.learners.iter().map(|id| id.0).collect(),
        auto_leave: false,
    };
    serde_json::to_vec(&json).expect("a membership serializes")
}

/// One stored version as an entry of etcd's `key` bucket.
fn key_entry(stored_key: &[u8], stored_value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (user_key, revision) = split_versioned_key(stored_key);
    let version = StoredVersion::decode(stored_value);
    let kv = if version.tombstone {
        KeyValue {
            key: user_key.into(),
            ..KeyValue::default()
        }
    } else {
        KeyValue {
            key: user_key.into(),
            create_revision: version.create_revision.0,
            mod_revision: revision.0,
            version: version.version,
            value: version.value.clone(),
            lease: version.lease,
        }
    };
    let key = revision_key(revision.0, i64::from(version.sub), version.tombstone);
    (key, kv.encode_to_vec())
}

/// etcd's revision key: main and sub revision, big-endian, joined by `_`, and `t` for a
/// tombstone.
fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// (main, sub, tombstone) of a revision key.
fn parse_revision_key(key: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// Reads etcd's buckets into what ostrakon installs.
pub fn from_buckets(buckets: &[Bucket]) -> Result<EtcdBackup, String> {
    let empty = Bucket::default();
    let bucket = |name: &[u8]| buckets.iter().find(|b| b.name == name).unwrap_or(&empty);
    if !buckets.iter().any(|b| b.name == b"key") || !buckets.iter().any(|b| b.name == b"meta") {
        return Err("it has no `key` or no `meta` bucket: not an etcd v3 backup".into());
    }
    let mut items = BTreeMap::new();
    let mut last_revision = 0;
    for (key, value) in &bucket(b"key").entries {
        let (main, sub, tombstone) = parse_revision_key(key)
            .ok_or_else(|| format!("a `key` entry with a malformed revision key {key:?}"))?;
        let kv = KeyValue::decode(value.as_slice())
            .map_err(|e| format!("a version at revision {main} does not decode: {e}"))?;
        if kv.key.is_empty() || main < 1 || !(0..=i64::from(u32::MAX)).contains(&sub) {
            return Err(format!("a version at revision {main} is malformed"));
        }
        let stored = if tombstone {
            StoredVersion {
                sub: sub as u32,
                ..StoredVersion::tombstone()
            }
        } else {
            StoredVersion {
                tombstone: false,
                create_revision: Revision(kv.create_revision),
                version: kv.version,
                lease: kv.lease,
                value: kv.value.clone(),
                sub: sub as u32,
            }
        };
        let storage_key = versioned_key(&kv.key, Revision(main));
        if items.insert(storage_key, stored.encode()).is_some() {
            return Err(format!("two versions of one key at revision {main}"));
        }
        last_revision = last_revision.max(main);
    }
    let meta = bucket(b"meta");
    let compact_revision = match meta.get(b"scheduledCompactRev") {
        Some(key) => Revision(
            parse_revision_key(key)
                .ok_or("a malformed scheduledCompactRev")?
                .0,
        ),
        None => NEVER_COMPACTED,
    };
    let revision = Revision(
        last_revision
            .max(compact_revision.0)
            .max(INITIAL_REVISION.0),
    );
    let mut leases = Vec::new();
    for (key, value) in &bucket(b"lease").entries {
        let lease = LeasePb::decode(value.as_slice())
            .map_err(|e| format!("a lease does not decode: {e}"))?;
        if key.as_slice() != lease.id.to_be_bytes() || lease.id == 0 {
            return Err(format!("lease {} is stored under another id", lease.id));
        }
        let record = LeaseRecord {
            ttl_secs: lease.ttl,
            remaining_secs: lease.remaining_ttl,
        };
        leases.push((lease.id, record));
    }
    let auth_bucket = bucket(b"auth");
    let auth_revision = match auth_bucket.get(b"authRevision") {
        Some(bytes) => {
            u64::from_be_bytes(bytes.try_into().map_err(|_| "a malformed authRevision")?)
        }
        None => 0,
    };
    let users = decode_all::<authpb::User>(bucket(b"authUsers"), "user")?;
    let roles = decode_all::<authpb::Role>(bucket(b"authRoles"), "role")?;
    let auth = pb::AuthTables {
        enabled: auth_bucket.get(b"authEnabled") == Some(&[1][..]),
        revision: auth_revision,
        users,
        roles,
    };
    let mut range_starts = Vec::new();
    for (key, value) in &bucket(RANGES_BUCKET).entries {
        let by_hand = match value.as_slice() {
            [0] => false,
            [1] => true,
            _ => {
                return Err(format!(
                    "range start {key:?} has a malformed mark {value:?}"
                ))
            }
        };
        if key.is_empty() {
            return Err("a range starts at the empty key, where the first one does".into());
        }
        range_starts.push(RangeStart {
            key: key.clone(),
            by_hand,
        });
    }
    Ok(EtcdBackup {
        items: items.into_iter().collect(),
        leases,
        auth,
        revision,
        compact_revision,
        range_starts,
    })
}

/// Every value of `bucket` decoded as an `M` (a `what`, for the message).
fn decode_all<M: prost::Message + Default>(bucket: &Bucket, what: &str) -> Result<Vec<M>, String> {
    bucket
        .entries
        .iter()
        .map(|(name, value)| {
            M::decode(value.as_slice()).map_err(|e| {
                format!(
                    "{what} {:?} does not decode: {e}",
                    String::from_utf8_lossy(name)
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
