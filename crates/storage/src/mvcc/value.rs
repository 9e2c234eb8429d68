//! The stored form of one version of a key.

use bytes::{Buf, BufMut, Bytes};

use super::Revision;

/// One version of a key as stored: a put, or the tombstone a delete leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVersion {
    /// A delete: the key does not exist from this revision on.
    pub tombstone: bool,
    /// The revision of the put that created this generation of the key.
    pub create_revision: Revision,
    /// Puts since creation, counting this one (0 for a tombstone).
    pub version: i64,
    /// The lease the key is attached to, or 0.
    pub lease: i64,
    /// The value (empty for a tombstone).
    pub value: Bytes,
}

const FLAG_TOMBSTONE: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 + 8 + 8;

impl StoredVersion {
    /// The tombstone of a delete.
    pub fn tombstone() -> StoredVersion {
        StoredVersion {
            tombstone: true,
            create_revision: Revision(0),
            version: 0,
            lease: 0,
            value: Bytes::new(),
        }
    }

    /// The bytes stored under the versioned key.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.value.len());
        out.put_u8(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.put_i64_le(self.create_revision.0);
        out.put_i64_le(self.version);
        out.put_i64_le(self.lease);
        out.extend_from_slice(&self.value);
        out
    }

    /// Whether stored bytes are a tombstone, without decoding the rest.
    pub fn is_tombstone(stored: &[u8]) -> bool {
        assert!(!stored.is_empty(), "stored version is empty");
        stored[0] & FLAG_TOMBSTONE != 0
    }

    /// Reads what `encode` wrote; anything else is a broken invariant of the store.
    pub fn decode(stored: &[u8]) -> StoredVersion {
        assert!(stored.len() >= HEADER_BYTES, "stored version too short");
        let mut header = &stored[..HEADER_BYTES];
        let flags = header.get_u8();
        StoredVersion {
            tombstone: flags & FLAG_TOMBSTONE != 0,
            create_revision: Revision(header.get_i64_le()),
            version: header.get_i64_le(),
            lease: header.get_i64_le(),
            value: Bytes::copy_from_slice(&stored[HEADER_BYTES..]),
        }
    }
}
