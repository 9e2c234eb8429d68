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
    /// The write's place among the writes of its revision (etcd's sub-revision): events
    /// of one revision go out in this order, the order the Txn wrote them.
    pub sub: u32,
}

const FLAG_TOMBSTONE: u8 = 1;
/// A sub-revision follows the header (absent in versions written before sub-revisions
/// were kept, and when 0).
const FLAG_SUB: u8 = 2;
const HEADER_BYTES: usize = 1 + 8 + 8 + 8;
const SUB_BYTES: usize = 4;

impl StoredVersion {
    /// The tombstone of a delete.
    pub fn tombstone() -> StoredVersion {
        StoredVersion {
            tombstone: true,
            create_revision: Revision(0),
            version: 0,
            lease: 0,
            value: Bytes::new(),
            sub: 0,
        }
    }

    /// The bytes stored under the versioned key.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + SUB_BYTES + self.value.len());
        let mut flags = if self.tombstone { FLAG_TOMBSTONE } else { 0 };
        if self.sub != 0 {
            flags |= FLAG_SUB;
        }
        out.put_u8(flags);
        out.put_i64_le(self.create_revision.0);
        out.put_i64_le(self.version);
        out.put_i64_le(self.lease);
        if self.sub != 0 {
            out.put_u32_le(self.sub);
        }
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
        let (sub, value_at) = if flags & FLAG_SUB != 0 {
            assert!(
                stored.len() >= HEADER_BYTES + SUB_BYTES,
                "stored version too short"
            );
            let mut sub = &stored[HEADER_BYTES..HEADER_BYTES + SUB_BYTES];
            (sub.get_u32_le(), HEADER_BYTES + SUB_BYTES)
        } else {
            (0, HEADER_BYTES)
        };
        StoredVersion {
            tombstone: flags & FLAG_TOMBSTONE != 0,
            create_revision: Revision(header.get_i64_le()),
            version: header.get_i64_le(),
            lease: header.get_i64_le(),
            value: Bytes::copy_from_slice(&stored[value_at..]),
            sub,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_with_and_without_a_sub_revision() {
        for sub in [0, 1, 77] {
            for tombstone in [false, true] {
                let version = StoredVersion {
                    tombstone,
                    create_revision: Revision(3),
                    version: 2,
                    lease: 9,
                    value: Bytes::from_static(b"value"),
                    sub,
                };
                let encoded = version.encode();
                assert_eq!(StoredVersion::decode(&encoded), version);
                assert_eq!(StoredVersion::is_tombstone(&encoded), tombstone);
            }
        }
        // A version written before sub-revisions were kept reads as sub-revision 0.
        let old = StoredVersion {
            sub: 0,
            ..StoredVersion::tombstone()
        };
        assert_eq!(old.encode().len(), HEADER_BYTES);
    }
}
