//! The order-preserving encoding of (user key, revision) into storage keys.
//!
//! A user key is escaped (0x00 becomes 0x00 0xFF) and terminated by 0x00 0x00, then the
//! revision follows as 8 big-endian bytes. Comparing encoded keys bytewise therefore
//! orders by user key first, then by revision, and no user key's encoding is a prefix of
//! another's.

use super::Revision;

const ESCAPE: u8 = 0xFF;
const REVISION_BYTES: usize = 8;

/// Appends the escaped, terminated form of `user_key`: every version of the key starts
/// with it.
pub fn key_prefix(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 2 + REVISION_BYTES);
    for &byte in user_key {
        out.push(byte);
        if byte == 0 {
            out.push(ESCAPE);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// The storage key of `user_key` at `revision`.
pub fn versioned_key(user_key: &[u8], revision: Revision) -> Vec<u8> {
    assert!(revision.0 >= 0, "revision {revision:?} is negative");
    let mut out = key_prefix(user_key);
    out.extend_from_slice(&(revision.0 as u64).to_be_bytes());
    out
}

/// Splits a storage key into the user key and the revision. Storage keys come only from
/// `versioned_key`, so a malformed one is a broken invariant.
pub fn split_versioned_key(stored: &[u8]) -> (Vec<u8>, Revision) {
    assert!(
        stored.len() >= 2 + REVISION_BYTES,
        "storage key too short: {stored:?}"
    );
    let (escaped, revision) = stored.split_at(stored.len() - REVISION_BYTES);
    let mut user_key = Vec::with_capacity(escaped.len());
    let mut i = 0;
    loop {
        let byte = escaped[i];
        if byte == 0 {
            match escaped[i + 1] {
                ESCAPE => user_key.push(0),
                0 => {
                    assert_eq!(i + 2, escaped.len(), "storage key has bytes after its end");
                    break;
                }
                other => panic!("storage key has a bad escape 0x00 0x{other:02x}"),
            }
            i += 2;
        } else {
            user_key.push(byte);
            i += 1;
        }
    }
    let revision = u64::from_be_bytes(revision.try_into().unwrap());
    (user_key, Revision(revision as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_preserves_the_order_of_keys_then_revisions() {
        let keys: [&[u8]; 7] = [b"", b"\0", b"\0\0", b"\0\x01", b"a", b"a\0", b"ab"];
        let mut encoded = Vec::new();
        for key in keys {
            for revision in [1, 2, 300] {
                encoded.push((versioned_key(key, Revision(revision)), key, revision));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            sorted, encoded,
            "bytewise order must equal (key, revision) order"
        );
        for (stored, key, revision) in encoded {
            assert_eq!(
                split_versioned_key(&stored),
                (key.to_vec(), Revision(revision))
            );
        }
    }

    #[test]
    fn a_key_prefix_bounds_only_its_own_versions() {
        let prefix = key_prefix(b"a");
        assert!(versioned_key(b"a", Revision(7)).starts_with(&prefix));
        assert!(!versioned_key(b"a\0", Revision(7)).starts_with(&prefix));
        assert!(!versioned_key(b"ab", Revision(7)).starts_with(&prefix));
    }
}
