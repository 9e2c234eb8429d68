//! Torn WAL tails: what a crash in the middle of a log write leaves behind. The last
//! segment of a killed member's WAL gets a record that was only partly written (its
//! header promises more bytes than follow) or whose bytes were only partly replaced (a
//! checksum mismatch). Recovery must discard it and lose nothing that was acknowledged:
//! a record cut short was never synced, so never acknowledged.

use std::os::unix::fs::FileExt;
use std::path::Path;

use ostrakon_storage::wal::{records_end, FRAME_HEADER_BYTES};
use rand::Rng;

/// Writes a torn record where the records of the newest segment in `wal_dir` end (over
/// the zeros a segment is filled with ahead of its writes); says what it did.
pub fn tear_wal_tail(wal_dir: &Path) -> String {
    let newest = std::fs::read_dir(wal_dir).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .max()
    });
    let Some(segment) = newest else {
        return format!("no WAL segment in {}", wal_dir.display());
    };
    let mut rng = rand::thread_rng();
    let promised_bytes: u32 = rng.gen_range(64..4096);
    let mut frame = Vec::new();
    frame.extend_from_slice(&promised_bytes.to_le_bytes());
    frame.extend_from_slice(&rng.gen::<u32>().to_le_bytes());
    let (written, how) = if rng.gen_bool(0.5) {
        let cut = rng.gen_range(0..promised_bytes as usize);
        (cut, "cut short")
    } else {
        (promised_bytes as usize, "checksum mismatch")
    };
    frame.extend((0..written).map(|_| rng.gen::<u8>()));
    let appended = std::fs::read(&segment).and_then(|data| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)?
            .write_all_at(&frame, records_end(&data) as u64)
    });
    match appended {
        Ok(()) => format!(
            "{} + {} bytes, {how}",
            segment
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            FRAME_HEADER_BYTES + written
        ),
        Err(error) => format!("could not tear {}: {error}", segment.display()),
    }
}
