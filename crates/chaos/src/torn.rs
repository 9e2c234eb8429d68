//! Torn WAL tails: what a crash in the middle of a log write leaves behind. The last
//! segment of a killed member's WAL gets a record that was only partly written (its
//! header promises more bytes than follow) or whose bytes were only partly replaced (a
//! checksum mismatch). Recovery must discard it and lose nothing that was acknowledged:
//! a record cut short was never synced, so never acknowledged.

use std::io::Write;
use std::path::Path;

use rand::Rng;

/// Bytes of a frame header: payload length and CRC, both u32 little-endian.
const FRAME_HEADER_BYTES: usize = 8;

/// Appends a torn record to the newest segment in `wal_dir`; says what it did.
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
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .and_then(|mut file| file.write_all(&frame));
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
