//! The on-disk form of WAL records.
//!
//! A frame is `[payload length: u32 LE][CRC32C of payload: u32 LE][payload]`. The payload
//! starts with a kind byte and the group id (u64 LE); the rest depends on the kind.

use bytes::{Buf, BufMut};
use ostrakon_proto::peer as pb;
use ostrakon_raft::{Entry, GroupId, HardState, LogIndex, NodeId, SnapshotMeta, Term};
use prost::Message as _;

/// Bytes in a frame header.
pub const FRAME_HEADER_BYTES: usize = 8;
/// No record is larger; a length field above it can only be corruption.
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_FORGET: u8 = 4;
const KIND_SYNC: u8 = 5;

/// One logical WAL record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Entries appended to a group's log; they replace any entries at the same or later
    /// indexes (raft overwrites a conflicting suffix).
    Entries(GroupId, Vec<Entry>),
    /// The group's latest term, vote and commit index.
    HardState(GroupId, HardState),
    /// The group's log now starts after this snapshot, whose data is durable elsewhere.
    Snapshot(GroupId, SnapshotMeta),
    /// The group is gone from this node for good (a range merged into another): its
    /// earlier records mean nothing any more.
    Forget(GroupId),
    /// The start of one write and its `fdatasync`, numbered in the order they were
    /// made: recovery tells a write torn in flight from damage to synced data by it.
    Sync(u64),
}

/// Appends the framed record to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    match record {
        Record::Entries(group, entries) => {
            out.put_u8(KIND_ENTRIES);
            out.put_u64_le(group.0);
            out.put_u32_le(entries.len() as u32);
            for entry in entries {
                pb::Entry::from(entry)
                    .encode_length_delimited(out)
                    .expect("a Vec grows as needed");
            }
        }
        Record::HardState(group, state) => {
            out.put_u8(KIND_HARD_STATE);
            out.put_u64_le(group.0);
            out.put_u64_le(state.term.0);
            out.put_u64_le(state.vote.0);
            out.put_u64_le(state.commit.0);
        }
        Record::Snapshot(group, meta) => {
            out.put_u8(KIND_SNAPSHOT);
            out.put_u64_le(group.0);
            pb::SnapshotMeta::from(meta)
                .encode(out)
                .expect("a Vec grows as needed");
        }
        Record::Forget(group) => {
            out.put_u8(KIND_FORGET);
            out.put_u64_le(group.0);
        }
        Record::Sync(number) => {
            out.put_u8(KIND_SYNC);
            // No group: the field keeps every payload's layout.
            out.put_u64_le(0);
            out.put_u64_le(*number);
        }
    }
    let payload_bytes = out.len() - start - FRAME_HEADER_BYTES;
    assert!(
        payload_bytes <= RECORD_BYTES_MAX,
        "WAL record of {payload_bytes} bytes"
    );
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What reading a frame at some offset found.
#[derive(Debug)]
pub enum Frame {
    /// A valid record and the frame's total length.
    Record(Record, usize),
    /// The frame runs past the end of the data: a write that did not finish.
    Truncated,
    /// The checksum or the content is wrong.
    Corrupt(&'static str),
}

/// Reads the frame at the start of `data`.
pub fn decode(data: &[u8]) -> Frame {
    if data.len() < FRAME_HEADER_BYTES {
        return Frame::Truncated;
    }
    let payload_bytes = u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().unwrap());
    if payload_bytes > RECORD_BYTES_MAX {
        return Frame::Corrupt("record length out of bounds");
    }
    let Some(payload) = data.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_bytes) else {
        return Frame::Truncated;
    };
    if crc32c::crc32c(payload) != crc {
        return Frame::Corrupt("checksum mismatch");
    }
    match decode_payload(payload) {
        Ok(record) => Frame::Record(record, FRAME_HEADER_BYTES + payload_bytes),
        Err(what) => Frame::Corrupt(what),
    }
}

fn decode_payload(mut payload: &[u8]) -> Result<Record, &'static str> {
    if payload.len() < 9 {
        return Err("record too short");
    }
    let kind = payload.get_u8();
    let group = GroupId(payload.get_u64_le());
    match kind {
        KIND_ENTRIES => {
            if payload.len() < 4 {
                return Err("entries record too short");
            }
            let count = payload.get_u32_le() as usize;
            let mut entries = Vec::with_capacity(count.min(1 << 16));
            for _ in 0..count {
                let entry = pb::Entry::decode_length_delimited(&mut payload)
                    .map_err(|_| "undecodable entry")?;
                entries.push(Entry::try_from(entry).map_err(|_| "invalid entry")?);
            }
            if entries.windows(2).any(|w| w[1].index.0 != w[0].index.0 + 1) {
                return Err("entries not contiguous");
            }
            Ok(Record::Entries(group, entries))
        }
        KIND_HARD_STATE => {
            if payload.len() != 24 {
                return Err("hard state record of the wrong size");
            }
            Ok(Record::HardState(
                group,
                HardState {
                    term: Term(payload.get_u64_le()),
                    vote: NodeId(payload.get_u64_le()),
                    commit: LogIndex(payload.get_u64_le()),
                },
            ))
        }
        KIND_SNAPSHOT => {
            let meta = pb::SnapshotMeta::decode(payload).map_err(|_| "undecodable snapshot")?;
            let meta = SnapshotMeta::try_from(&meta).map_err(|_| "invalid snapshot")?;
            Ok(Record::Snapshot(group, meta))
        }
        KIND_FORGET if payload.is_empty() => Ok(Record::Forget(group)),
        KIND_SYNC if payload.len() == 8 && group == GroupId(0) => {
            Ok(Record::Sync(payload.get_u64_le()))
        }
        _ => Err("unknown record kind"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ostrakon_raft::{ConfState, EntryPayload};

    fn records() -> Vec<Record> {
        vec![
            Record::Entries(
                GroupId(1),
                vec![
                    Entry {
                        term: Term(2),
                        index: LogIndex(3),
                        payload: EntryPayload::Empty,
                    },
                    Entry {
                        term: Term(2),
                        index: LogIndex(4),
                        payload: EntryPayload::Normal(Bytes::from_static(b"x")),
                    },
                ],
            ),
            Record::HardState(
                GroupId(1),
                HardState {
                    term: Term(2),
                    vote: NodeId(3),
                    commit: LogIndex(4),
                },
            ),
            Record::Snapshot(
                GroupId(7),
                SnapshotMeta {
                    index: LogIndex(9),
                    term: Term(2),
                    conf_state: ConfState::with_voters([NodeId(1), NodeId(2)]),
                },
            ),
            Record::Forget(GroupId(8)),
            Record::Sync(42),
        ]
    }

    #[test]
    fn records_round_trip() {
        for record in records() {
            let mut out = Vec::new();
            encode(&record, &mut out);
            match decode(&out) {
                Frame::Record(back, len) => {
                    assert_eq!(back, record);
                    assert_eq!(len, out.len());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_short_frame_is_truncated_and_a_flipped_bit_is_corrupt() {
        let mut out = Vec::new();
        encode(&records()[0], &mut out);
        assert!(matches!(decode(&out[..out.len() - 1]), Frame::Truncated));
        out[12] ^= 1;
        assert!(matches!(decode(&out), Frame::Corrupt("checksum mismatch")));
    }
}
