//! Point-in-time copies of a group's state machine, as files.
//!
//! A snapshot file is `[magic][header][items][end marker][leases][tables][CRC32C]`: the header records the
//! applied position, the revision and the compacted revision; each item is one stored
//! version (length-prefixed storage key and value). The file is written to a temporary
//! name, synced and renamed, so a crash never leaves a half-written snapshot under the
//! final name. A follower receives the file in chunks and installs it in one batch.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut};
use ostrakon_proto::peer as pb;
use ostrakon_raft::{ConfState, LogIndex, Term};
use prost::Message as _;

use crate::mvcc::{AppliedState, FrozenState, LeaseRecord, MvccStore, Revision};

/// Version 2 added the lease section after the items; version 3 the member registry and
/// the alarms (`SnapshotTables`).
const MAGIC: &[u8; 8] = b"OSTKSNP3";
const END_MARKER: u32 = u32::MAX;

/// Why a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The operating system refused an operation.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The file is not a complete, intact snapshot.
    #[error("snapshot {0} is damaged: {1}")]
    Damaged(PathBuf, &'static str),
    /// The file is not a backup ostrakon can read (an etcd backup that is damaged or of
    /// another kind).
    #[error("{0} is not a backup ostrakon can read: {1}")]
    Unreadable(PathBuf, String),
}

/// The position a snapshot file covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The applied raft position it reflects.
    pub applied: AppliedState,
    /// The store's revision at that point.
    pub revision: Revision,
    /// The compacted revision at that point.
    pub compact_revision: Revision,
    /// The file's size.
    pub file_bytes: u64,
}

/// Writes the store's current state to `path`. Must be called between applies (from the
/// writer), so the applied position matches the data.
pub fn create(store: &MvccStore, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    write(store.freeze(), path)
}

/// Writes a frozen state to `path` (from any thread).
pub fn write(frozen: FrozenState, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let io = |e| SnapshotError::Io(path.to_path_buf(), e);
    let temporary = path.with_extension("tmp");
    let applied = frozen.applied.clone();
    let revision = frozen.revision;
    let compact_revision = frozen.compact_revision;
    // Leases, then the member registry and alarms: small tables after the items.
    let mut lease_section = Vec::new();
    lease_section.put_u32_le(frozen.leases.len() as u32);
    for (id, record) in &frozen.leases {
        lease_section.put_i64_le(*id);
        lease_section.put_i64_le(record.ttl_secs);
        lease_section.put_i64_le(record.remaining_secs);
    }
    let tables = frozen.tables.encode_to_vec();
    lease_section.put_u32_le(tables.len() as u32);
    lease_section.extend_from_slice(&tables);
    let mut header = Vec::new();
    header.extend_from_slice(MAGIC);
    header.put_u64_le(applied.index.0);
    header.put_u64_le(applied.term.0);
    header.put_i64_le(revision.0);
    header.put_i64_le(compact_revision.0);
    let conf = pb::ConfState::from(&applied.conf_state).encode_to_vec();
    header.put_u32_le(conf.len() as u32);
    header.extend_from_slice(&conf);

    let file = File::create(&temporary).map_err(io)?;
    let mut writer = BufWriter::new(file);
    let mut crc = crc32c::crc32c(&header);
    writer.write_all(&header).map_err(io)?;
    let mut file_bytes = header.len() as u64;
    let mut item = Vec::new();
    for (key, value) in frozen.items() {
        item.clear();
        item.put_u32_le(key.len() as u32);
        item.extend_from_slice(&key);
        item.put_u32_le(value.len() as u32);
        item.extend_from_slice(&value);
        crc = crc32c::crc32c_append(crc, &item);
        writer.write_all(&item).map_err(io)?;
        file_bytes += item.len() as u64;
    }
    let end = END_MARKER.to_le_bytes();
    crc = crc32c::crc32c_append(crc, &end);
    writer.write_all(&end).map_err(io)?;
    crc = crc32c::crc32c_append(crc, &lease_section);
    writer.write_all(&lease_section).map_err(io)?;
    writer.write_all(&crc.to_le_bytes()).map_err(io)?;
    file_bytes += 8 + lease_section.len() as u64;
    let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
    if let Err(error) = file.sync_all() {
        crate::fatal::disk_failure("fsync of a snapshot", &error);
    }
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
            crate::fatal::disk_failure("fsync of the snapshot directory", &error);
        }
    }
    Ok(SnapshotInfo {
        applied,
        revision,
        compact_revision,
        file_bytes,
    })
}

/// A snapshot file's content.
pub struct SnapshotContent {
    /// Its position.
    pub info: SnapshotInfo,
    /// Every stored version: (storage key, stored value).
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every lease.
    pub leases: Vec<(i64, LeaseRecord)>,
    /// The member registry and the alarms.
    pub tables: pb::SnapshotTables,
    /// The file's checksum (its last four bytes).
    pub crc32c: u32,
    /// Where each data range after the first began, in key order (none for a keyspace
    /// of one range): a restore makes the same ranges.
    pub range_starts: Vec<RangeStart>,
}

/// The first key of a data range in a backup of a keyspace in ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeStart {
    /// The key (never empty: the first range starts at the keyspace's start).
    pub key: Vec<u8>,
    /// The range began at an operator's split: it is not merged on the node's own
    /// initiative, in the restored keyspace either.
    pub by_hand: bool,
}

/// A backup's content for a keyspace in ranges, from the frozen states of every data
/// range (in key order: the first, which holds the leases, members, auth and alarms,
/// first) taken at one consistent point, `revision` (no range held a write above it, and
/// none can land at or below it). Versions older than the highest compacted revision
/// are kept from ranges compacted less, but a reader of the backup treats them as
/// compacted.
pub fn content_across(frozen: Vec<FrozenState>, revision: Revision) -> SnapshotContent {
    assert!(
        frozen.iter().all(|state| state.revision <= revision),
        "a range's state is past the backup's revision"
    );
    let compact_revision = frozen
        .iter()
        .map(|state| state.compact_revision)
        .max()
        .expect("a keyspace has a range");
    let mut states = frozen.into_iter();
    let first = states.next().expect("a keyspace has a range");
    let info = SnapshotInfo {
        applied: first.applied.clone(),
        revision,
        compact_revision,
        file_bytes: 0,
    };
    let leases = first.leases.clone();
    let tables = pb::SnapshotTables {
        span: Some(crate::mvcc::KeySpan::whole().to_record()),
        // The consistent point's own locks are no part of the data.
        txn_locks: Vec::new(),
        txn_outcomes: Vec::new(),
        ..first.tables.clone()
    };
    let mut items: Vec<(Vec<u8>, Vec<u8>)> = first.items().collect();
    let mut range_starts = Vec::new();
    for state in states {
        let start = state.span().start().to_vec();
        assert!(
            !start.is_empty()
                && range_starts
                    .last()
                    .is_none_or(|last: &RangeStart| last.key < start),
            "the ranges of a backup come in key order, the first first"
        );
        range_starts.push(RangeStart {
            key: start,
            by_hand: state.tables.split_by_hand,
        });
        items.extend(state.items());
    }
    SnapshotContent {
        info,
        items,
        leases,
        tables,
        crc32c: 0,
        range_starts,
    }
}

/// Bytes of the SHA-256 that ended a backup of ostrakon's earlier format.
const BACKUP_TRAILER_BYTES: usize = 32;
/// That format padded the snapshot file to whole 512-byte blocks, as etcdctl expects.
const BACKUP_BLOCK_BYTES: usize = 512;

/// The snapshot file inside a backup of ostrakon's earlier format (`[snapshot file]
/// [padding][u32 padding length][SHA-256 of all before]`, which backups were before they
/// were written in etcd's format), if `data` is one; `None` for anything else.
fn unwrap_backup(data: &[u8]) -> Option<&[u8]> {
    use sha2::Digest;
    if data.len() % BACKUP_BLOCK_BYTES != BACKUP_TRAILER_BYTES || data.len() < 4 + 32 {
        return None;
    }
    let (body, trailer) = data.split_at(data.len() - BACKUP_TRAILER_BYTES);
    if sha2::Sha256::digest(body).as_slice() != trailer {
        return None;
    }
    let padding = u32::from_le_bytes(body[body.len() - 4..].try_into().unwrap()) as usize;
    (padding <= BACKUP_BLOCK_BYTES + 4 && padding <= body.len())
        .then(|| &body[..body.len() - padding])
}

/// Reads and checks a snapshot file, or a backup (a snapshot file followed by its
/// SHA-256, as `Maintenance.Snapshot` streams it).
pub fn read(path: &Path) -> Result<SnapshotContent, SnapshotError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| SnapshotError::Io(path.to_path_buf(), e))?;
    parse_backup(path, data)
}

/// Parses a snapshot file, or one wrapped as a backup, already read from `path`.
pub fn parse_backup(path: &Path, mut data: Vec<u8>) -> Result<SnapshotContent, SnapshotError> {
    if let Some(file_bytes) = unwrap_backup(&data).map(<[u8]>::len) {
        data.truncate(file_bytes);
    }
    parse(path, data)
}

fn parse(path: &Path, data: Vec<u8>) -> Result<SnapshotContent, SnapshotError> {
    let damaged = |what| SnapshotError::Damaged(path.to_path_buf(), what);
    if data.len() < MAGIC.len() + 40 || &data[..MAGIC.len()] != MAGIC {
        return Err(damaged("not a snapshot file"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let crc32c = u32::from_le_bytes(crc.try_into().unwrap());
    if crc32c::crc32c(body) != crc32c {
        return Err(damaged("checksum mismatch"));
    }
    let mut cursor = &body[MAGIC.len()..];
    let index = LogIndex(cursor.get_u64_le());
    let term = Term(cursor.get_u64_le());
    let revision = Revision(cursor.get_i64_le());
    let compact_revision = Revision(cursor.get_i64_le());
    let conf_bytes = cursor.get_u32_le() as usize;
    if cursor.len() < conf_bytes {
        return Err(damaged("header cut short"));
    }
    let conf =
        pb::ConfState::decode(&cursor[..conf_bytes]).map_err(|_| damaged("bad membership"))?;
    let conf_state = ConfState::try_from(&conf).map_err(|_| damaged("bad membership"))?;
    cursor.advance(conf_bytes);
    let mut items = Vec::new();
    loop {
        if cursor.len() < 4 {
            return Err(damaged("items cut short"));
        }
        let key_bytes = cursor.get_u32_le();
        if key_bytes == END_MARKER {
            break;
        }
        let key_bytes = key_bytes as usize;
        if cursor.len() < key_bytes + 4 {
            return Err(damaged("item cut short"));
        }
        let key = cursor[..key_bytes].to_vec();
        cursor.advance(key_bytes);
        let value_bytes = cursor.get_u32_le() as usize;
        if cursor.len() < value_bytes {
            return Err(damaged("item cut short"));
        }
        items.push((key, cursor[..value_bytes].to_vec()));
        cursor.advance(value_bytes);
    }
    if cursor.len() < 4 {
        return Err(damaged("leases cut short"));
    }
    let lease_count = cursor.get_u32_le() as usize;
    if cursor.len() < lease_count * 24 {
        return Err(damaged("leases cut short"));
    }
    let leases: Vec<(i64, LeaseRecord)> = (0..lease_count)
        .map(|_| {
            let id = cursor.get_i64_le();
            let record = LeaseRecord {
                ttl_secs: cursor.get_i64_le(),
                remaining_secs: cursor.get_i64_le(),
            };
            (id, record)
        })
        .collect();
    if cursor.len() < 4 {
        return Err(damaged("tables cut short"));
    }
    let tables_bytes = cursor.get_u32_le() as usize;
    if cursor.len() < tables_bytes {
        return Err(damaged("tables cut short"));
    }
    let tables =
        pb::SnapshotTables::decode(&cursor[..tables_bytes]).map_err(|_| damaged("bad tables"))?;
    cursor.advance(tables_bytes);
    if !cursor.is_empty() {
        return Err(damaged("trailing bytes"));
    }
    let info = SnapshotInfo {
        applied: AppliedState {
            index,
            term,
            conf_state,
        },
        revision,
        compact_revision,
        file_bytes: data.len() as u64,
    };
    Ok(SnapshotContent {
        info,
        items,
        leases,
        tables,
        crc32c,
        // This format was written of one range only.
        range_starts: Vec::new(),
    })
}

/// Replaces the store's content with the snapshot at `path`, atomically and durably.
///
/// The file is read twice, never whole into memory: once to check its checksum and
/// structure (and to read its small sections), then its items straight into the store's
/// install batch. A received snapshot can be as large as the store; holding it (and a
/// parsed copy) in memory on top of the batch tripled the memory an install took.
pub fn install(store: &MvccStore, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let checked = check(path)?;
    store.install(
        checked.items(),
        checked.leases.clone(),
        checked.tables.clone(),
        checked.info.revision,
        checked.info.compact_revision,
        checked.info.applied.clone(),
    );
    Ok(checked.info)
}

/// A snapshot file whose checksum and structure were checked, with its small sections
/// read; its items are read from the file again on demand (`items`).
pub struct CheckedSnapshot {
    path: PathBuf,
    /// Its position.
    pub info: SnapshotInfo,
    /// Every lease.
    pub leases: Vec<(i64, LeaseRecord)>,
    /// The member registry, the alarms and the auth store.
    pub tables: pb::SnapshotTables,
    /// Where the first item starts.
    items_offset: u64,
    /// The CRC32C of the items section (the end marker included), to check the second
    /// read against the first.
    items_crc: u32,
}

/// A reader that folds every byte it reads into a CRC32C, and into a second one for a
/// section while `section_crc` is set.
struct CrcReader<R> {
    inner: R,
    crc: u32,
    section_crc: Option<u32>,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..read]);
        if let Some(section) = &mut self.section_crc {
            *section = crc32c::crc32c_append(*section, &buf[..read]);
        }
        Ok(read)
    }
}

fn read_u32(reader: &mut impl Read) -> std::io::Result<u32> {
    let mut bytes = [0u8; 4];
    reader.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u64(reader: &mut impl Read) -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    reader.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn read_vec(reader: &mut impl Read, bytes: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(bytes as u64).read_to_end(&mut out)?;
    if out.len() < bytes {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(out)
}

/// Checks a snapshot file end to end, reading it as a stream (no more than a buffer of
/// it in memory at once).
pub fn check(path: &Path) -> Result<CheckedSnapshot, SnapshotError> {
    let damaged = |what| SnapshotError::Damaged(path.to_path_buf(), what);
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => damaged("cut short"),
        _ => SnapshotError::Io(path.to_path_buf(), e),
    };
    let file = File::open(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    if file_bytes < (MAGIC.len() + 40) as u64 {
        return Err(damaged("not a snapshot file"));
    }
    let mut whole = std::io::BufReader::with_capacity(1 << 20, file);
    let mut reader = CrcReader {
        inner: (&mut whole).take(file_bytes - 4),
        crc: 0,
        section_crc: None,
    };
    if read_vec(&mut reader, MAGIC.len()).map_err(io)? != MAGIC {
        return Err(damaged("not a snapshot file"));
    }
    let index = LogIndex(read_u64(&mut reader).map_err(io)?);
    let term = Term(read_u64(&mut reader).map_err(io)?);
    let revision = Revision(read_u64(&mut reader).map_err(io)? as i64);
    let compact_revision = Revision(read_u64(&mut reader).map_err(io)? as i64);
    let conf_bytes = read_u32(&mut reader).map_err(io)? as usize;
    if conf_bytes as u64 > file_bytes {
        return Err(damaged("header cut short"));
    }
    let conf = read_vec(&mut reader, conf_bytes).map_err(io)?;
    let conf = pb::ConfState::decode(conf.as_slice()).map_err(|_| damaged("bad membership"))?;
    let conf_state = ConfState::try_from(&conf).map_err(|_| damaged("bad membership"))?;
    let items_offset = (MAGIC.len() + 36 + conf_bytes) as u64;
    reader.section_crc = Some(0);
    loop {
        let key_bytes = read_u32(&mut reader).map_err(io)?;
        if key_bytes == END_MARKER {
            break;
        }
        let skipped = std::io::copy(
            &mut (&mut reader).take(key_bytes as u64),
            &mut std::io::sink(),
        )
        .map_err(io)?;
        let value_bytes = read_u32(&mut reader).map_err(io)?;
        let skipped_value = std::io::copy(
            &mut (&mut reader).take(value_bytes as u64),
            &mut std::io::sink(),
        )
        .map_err(io)?;
        if skipped < key_bytes as u64 || skipped_value < value_bytes as u64 {
            return Err(damaged("item cut short"));
        }
    }
    let items_crc = reader.section_crc.take().expect("set above");
    let lease_count = read_u32(&mut reader).map_err(io)? as usize;
    if (lease_count as u64).saturating_mul(24) > file_bytes {
        return Err(damaged("leases cut short"));
    }
    let mut leases = Vec::with_capacity(lease_count);
    for _ in 0..lease_count {
        let id = read_u64(&mut reader).map_err(io)? as i64;
        let record = LeaseRecord {
            ttl_secs: read_u64(&mut reader).map_err(io)? as i64,
            remaining_secs: read_u64(&mut reader).map_err(io)? as i64,
        };
        leases.push((id, record));
    }
    let tables_bytes = read_u32(&mut reader).map_err(io)? as usize;
    if tables_bytes as u64 > file_bytes {
        return Err(damaged("tables cut short"));
    }
    let tables = read_vec(&mut reader, tables_bytes).map_err(io)?;
    let tables =
        pb::SnapshotTables::decode(tables.as_slice()).map_err(|_| damaged("bad tables"))?;
    if reader.inner.limit() != 0 {
        return Err(damaged("trailing bytes"));
    }
    let crc = reader.crc;
    if read_u32(&mut whole).map_err(io)? != crc {
        return Err(damaged("checksum mismatch"));
    }
    Ok(CheckedSnapshot {
        path: path.to_path_buf(),
        info: SnapshotInfo {
            applied: AppliedState {
                index,
                term,
                conf_state,
            },
            revision,
            compact_revision,
            file_bytes,
        },
        leases,
        tables,
        items_offset,
        items_crc,
    })
}

impl CheckedSnapshot {
    /// The stored versions, read from the file one at a time. The file was checked: a
    /// read that fails now is the disk failing us, and a file that changed since (its
    /// items' checksum differs at the end marker) a broken invariant: received snapshots
    /// are not written once complete. The install's batch commits only after the last
    /// item, so nothing of a changed file is kept.
    pub fn items(&self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(&self.path)
            .unwrap_or_else(|e| crate::fatal::disk_failure("reopening a checked snapshot", &e));
        file.seek(SeekFrom::Start(self.items_offset))
            .unwrap_or_else(|e| crate::fatal::disk_failure("reading a checked snapshot", &e));
        let mut reader = CrcReader {
            inner: std::io::BufReader::with_capacity(1 << 20, file),
            crc: 0,
            section_crc: None,
        };
        let expected_crc = self.items_crc;
        let path = self.path.clone();
        std::iter::from_fn(move || {
            let read = |reader: &mut CrcReader<std::io::BufReader<File>>| -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
                let key_bytes = read_u32(reader)?;
                if key_bytes == END_MARKER {
                    assert_eq!(
                        reader.crc,
                        expected_crc,
                        "snapshot {} changed after it was checked",
                        path.display()
                    );
                    return Ok(None);
                }
                let key = read_vec(reader, key_bytes as usize)?;
                let value_bytes = read_u32(reader)? as usize;
                Ok(Some((key, read_vec(reader, value_bytes)?)))
            };
            read(&mut reader)
                .unwrap_or_else(|e| crate::fatal::disk_failure("reading a checked snapshot", &e))
        })
    }
}
