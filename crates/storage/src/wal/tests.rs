use super::*;
use bytes::Bytes;
use ostrakon_raft::{ConfState, EntryPayload, NodeId, Term};

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(Bytes::from(format!("value-{index}"))),
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|i| entry(term, i)).collect()
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
        conf_state: ConfState::with_voters([NodeId(1)]),
    }
}

fn hard(term: u64, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: NodeId(1),
        commit: LogIndex(commit),
    }
}

fn data_end(segment: &Path) -> u64 {
    records_end(&std::fs::read(segment).unwrap()) as u64
}

const G1: GroupId = GroupId(1);
const G2: GroupId = GroupId(2);

#[test]
fn two_groups_in_one_sync_are_both_recovered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert!(recovered.groups.is_empty());
        wal.set_snapshot(G1, meta(1, 1));
        wal.append_entries(G1, &entries(1, 2..=5));
        wal.set_hard_state(G1, hard(1, 4));
        wal.append_entries(G2, &entries(3, 1..=2));
        wal.set_hard_state(G2, hard(3, 2));
        assert!(wal.sync() > 0);
    }
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    let g1 = &recovered.groups[&G1];
    assert_eq!(g1.snapshot, Some(meta(1, 1)));
    assert_eq!(g1.entries, entries(1, 2..=5));
    assert_eq!(g1.hard_state, hard(1, 4));
    let g2 = &recovered.groups[&G2];
    assert_eq!(g2.entries, entries(3, 1..=2));
    assert_eq!(recovered.torn_bytes_truncated, 0);
}

#[test]
fn later_entries_overwrite_a_conflicting_suffix() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.append_entries(G1, &entries(1, 1..=5));
        wal.sync();
        // A new leader's log differs from index 3 on.
        wal.append_entries(G1, &entries(2, 3..=4));
        wal.sync();
    }
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    let mut expected = entries(1, 1..=2);
    expected.extend(entries(2, 3..=4));
    assert_eq!(recovered.groups[&G1].entries, expected);
}

#[test]
fn recovery_torn_wal_tail_is_truncated_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.append_entries(G1, &entries(1, 1..=3));
        wal.sync();
        wal.append_entries(G1, &entries(1, 4..=4));
        wal.sync();
    }
    // Cut the last record short, as a crash in the middle of its write would.
    let segment = segment_path(dir.path(), 1);
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(data_end(&segment) - 5).unwrap();
    {
        let (mut wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(recovered.groups[&G1].entries, entries(1, 1..=3));
        assert!(recovered.torn_bytes_truncated > 0);
        wal.append_entries(G1, &entries(1, 4..=5));
        wal.sync();
    }
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(recovered.groups[&G1].entries, entries(1, 1..=5));
    assert_eq!(recovered.torn_bytes_truncated, 0);
}

#[test]
fn garbage_after_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.append_entries(G1, &entries(1, 1..=3));
        wal.sync();
    }
    // Written over the zeros that follow the records, as a write cut off would be.
    let segment = segment_path(dir.path(), 1);
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&[0xAB; 100], data_end(&segment)).unwrap();
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(recovered.groups[&G1].entries, entries(1, 1..=3));
    assert_eq!(recovered.torn_bytes_truncated, 100);
}

#[test]
fn segments_are_zero_filled_ahead_and_written_over_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let segment = segment_path(dir.path(), 1);
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.append_entries(G1, &entries(1, 1..=3));
        wal.set_hard_state(G1, hard(1, 3));
        wal.sync();
    }
    // The file is a chunk of zeros past its records.
    let len = std::fs::metadata(&segment).unwrap().len();
    let end = data_end(&segment);
    assert_eq!(len, ZERO_CHUNK_BYTES, "zero-filled to the chunk's end");
    assert!(end > 0 && end < len);
    assert!(std::fs::read(&segment).unwrap()[end as usize..]
        .iter()
        .all(|&byte| byte == 0));
    {
        // Reopened (a crash leaves the zeros), the log goes on where its records end.
        let (mut wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(recovered.torn_bytes_truncated, 0);
        assert_eq!(recovered.groups[&G1].entries, entries(1, 1..=3));
        wal.append_entries(G1, &entries(1, 4..=6));
        wal.set_hard_state(G1, hard(1, 6));
        wal.sync();
    }
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), ZERO_CHUNK_BYTES);
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(recovered.groups[&G1].entries, entries(1, 1..=6));
    assert_eq!(recovered.groups[&G1].hard_state, hard(1, 6));
}

#[test]
fn a_record_ending_in_zero_bytes_is_kept_whole() {
    // A hard state's last bytes are the high bytes of its commit index: zeros.
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.set_hard_state(G1, hard(1, 1));
        wal.sync();
    }
    let (mut wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(recovered.groups[&G1].hard_state, hard(1, 1));
    wal.set_hard_state(G1, hard(2, 1));
    wal.sync();
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(recovered.groups[&G1].hard_state, hard(2, 1));
}

#[test]
fn a_closed_segment_that_kept_its_zeros_is_read_to_its_records_end() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = 1024;
    {
        let (mut wal, _) = Wal::open(dir.path(), segment_bytes_max).unwrap();
        for i in 1..=60 {
            wal.append_entries(G1, &entries(1, i..=i));
            wal.sync();
        }
        assert!(wal.segment_count() >= 3);
    }
    // Closed segments are trimmed without a sync: a crash can leave their zeros.
    let first = segment_path(dir.path(), 1);
    let file = OpenOptions::new().write(true).open(&first).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len + 4096).unwrap();
    let (_, recovered) = Wal::open(dir.path(), segment_bytes_max).unwrap();
    assert_eq!(recovered.groups[&G1].entries, entries(1, 1..=60));
    assert_eq!(recovered.torn_bytes_truncated, 0);
}

#[test]
fn corruption_before_the_tail_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.append_entries(G1, &entries(1, 1..=3));
        wal.sync();
        wal.append_entries(G1, &entries(1, 4..=6));
        wal.sync();
    }
    let segment = segment_path(dir.path(), 1);
    let mut data = std::fs::read(&segment).unwrap();
    data[20] ^= 0xFF; // inside the first record
    std::fs::write(&segment, &data).unwrap();
    let error = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT)
        .err()
        .expect("must refuse");
    let message = error.to_string();
    assert!(message.contains("corrupt at byte 0"), "{message}");
    assert!(message.contains("refusing to start"), "{message}");
    // Nothing was truncated: the operator can still inspect the damage.
    assert_eq!(std::fs::read(&segment).unwrap(), data);
}

#[test]
fn segments_rotate_and_compacted_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = 1024;
    {
        let (mut wal, _) = Wal::open(dir.path(), segment_bytes_max).unwrap();
        wal.set_snapshot(G1, meta(1, 1));
        for i in 2..=100 {
            wal.append_entries(G1, &entries(1, i..=i));
            wal.set_hard_state(G1, hard(1, i));
            wal.sync();
        }
        assert!(wal.segment_count() > 3, "{} segments", wal.segment_count());
        // Compacting up to 90 frees every segment whose entries all lie at or below 90.
        wal.set_snapshot(G1, meta(90, 1));
        wal.sync();
        assert!(wal.segment_count() <= 3, "{} segments", wal.segment_count());
    }
    let (_, recovered) = Wal::open(dir.path(), segment_bytes_max).unwrap();
    let g1 = &recovered.groups[&G1];
    assert_eq!(g1.snapshot, Some(meta(90, 1)));
    assert_eq!(g1.entries, entries(1, 91..=100));
    assert_eq!(g1.hard_state, hard(1, 100));
}

#[test]
fn a_snapshot_beyond_the_log_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.append_entries(G1, &entries(1, 1..=3));
        wal.set_snapshot(G1, meta(10, 2));
        wal.append_entries(G1, &entries(2, 11..=12));
        wal.sync();
    }
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    assert_eq!(recovered.groups[&G1].entries, entries(2, 11..=12));
}

#[test]
fn a_lost_segment_in_the_middle_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), 512).unwrap();
        wal.set_snapshot(G1, meta(1, 1));
        for i in 2..=60 {
            wal.append_entries(G1, &entries(1, i..=i));
            wal.sync();
        }
        assert!(wal.segment_count() >= 3);
    }
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let error = Wal::open(dir.path(), 512).err().expect("must refuse");
    assert!(error.to_string().contains("missing entries"), "{error}");
}

#[test]
fn a_forgotten_group_keeps_no_segment_and_is_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = 1024;
    {
        let (mut wal, _) = Wal::open(dir.path(), segment_bytes_max).unwrap();
        wal.set_snapshot(G1, meta(1, 1));
        wal.set_snapshot(G2, meta(1, 1));
        // G2's entries sit in the first segments, then it goes quiet.
        for i in 2..=30 {
            wal.append_entries(G2, &entries(1, i..=i));
            wal.sync();
        }
        for i in 2..=100 {
            wal.append_entries(G1, &entries(1, i..=i));
            wal.set_hard_state(G1, hard(1, i));
            wal.sync();
        }
        wal.set_snapshot(G1, meta(90, 1));
        wal.sync();
        let kept = wal.segment_count();
        assert!(kept > 3, "G2's entries keep {kept} segments");
        wal.forget_group(G2);
        wal.sync();
        assert!(wal.segment_count() <= 3, "{} segments", wal.segment_count());
    }
    let (_, recovered) = Wal::open(dir.path(), segment_bytes_max).unwrap();
    assert!(!recovered.groups.contains_key(&G2));
    assert_eq!(recovered.groups[&G1].entries, entries(1, 91..=100));
}

/// Zeroes `range` of `segment`, as pages of a write that never reached the disk.
fn zero(segment: &Path, range: std::ops::Range<u64>) {
    let file = OpenOptions::new().write(true).open(segment).unwrap();
    let zeros = vec![0u8; (range.end - range.start) as usize];
    file.write_all_at(&zeros, range.start).unwrap();
}

#[test]
fn a_write_whose_later_pages_reached_the_disk_first_is_a_torn_tail() {
    // A write over zeros may reach the disk in any order: here its first records were
    // lost and its last one kept, and it was never synced, so never acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let segment = segment_path(dir.path(), 1);
    let first_write_end;
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.append_entries(G1, &entries(1, 1..=3));
        wal.sync();
        first_write_end = data_end(&segment);
        wal.append_entries(G1, &entries(1, 4..=4));
        wal.append_entries(G1, &entries(1, 5..=5));
        wal.sync();
    }
    let end = data_end(&segment);
    zero(
        &segment,
        first_write_end..first_write_end + (end - first_write_end) / 2,
    );
    {
        let (mut wal, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        assert_eq!(recovered.groups[&G1].entries, entries(1, 1..=3));
        assert!(recovered.torn_bytes_truncated > 0);
        wal.append_entries(G1, &entries(2, 4..=4));
        wal.sync();
    }
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
    let mut expected = entries(1, 1..=3);
    expected.extend(entries(2, 4..=4));
    assert_eq!(recovered.groups[&G1].entries, expected);
}

#[test]
fn damage_to_a_synced_write_with_a_later_write_after_it_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let segment = segment_path(dir.path(), 1);
    let (second_start, second_end);
    {
        let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT).unwrap();
        wal.append_entries(G1, &entries(1, 1..=3));
        wal.sync();
        second_start = data_end(&segment);
        wal.append_entries(G1, &entries(1, 4..=6));
        wal.sync();
        second_end = data_end(&segment);
        wal.append_entries(G1, &entries(1, 7..=7));
        wal.sync();
    }
    // The second write was synced before the third began: losing it is losing
    // acknowledged data, not a torn write.
    zero(&segment, second_start..second_end);
    let error = Wal::open(dir.path(), SEGMENT_BYTES_DEFAULT)
        .err()
        .expect("must refuse");
    assert!(error.to_string().contains("refusing to start"), "{error}");
}

#[test]
fn a_crash_in_the_middle_of_a_rotation_loses_no_idle_groups_state() {
    // G2 only ever records its hard state, in the first segment; a crash after the next
    // segment was created and before its opening records were synced leaves it empty.
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = 1024;
    {
        let (mut wal, _) = Wal::open(dir.path(), segment_bytes_max).unwrap();
        wal.set_hard_state(G2, hard(7, 0));
        wal.set_snapshot(G1, meta(1, 1));
        wal.sync();
    }
    let next = segment_path(dir.path(), 2);
    std::fs::File::create(&next).unwrap();
    {
        let (mut wal, recovered) = Wal::open(dir.path(), segment_bytes_max).unwrap();
        assert_eq!(recovered.groups[&G2].hard_state, hard(7, 0));
        // The first segment holds no entries a snapshot does not cover: the next sync
        // deletes it.
        wal.set_hard_state(G1, hard(1, 1));
        wal.sync();
        assert!(
            !segment_path(dir.path(), 1).exists(),
            "the first segment went"
        );
    }
    let (_, recovered) = Wal::open(dir.path(), segment_bytes_max).unwrap();
    assert_eq!(recovered.groups[&G2].hard_state, hard(7, 0));
}
