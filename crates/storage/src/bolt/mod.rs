//! bbolt's file format, the one etcd's backups and data files use, written and read by
//! us: no maintained Rust crate reads and writes it without pulling in a database engine
//! we do not use (the Rust port of bbolt is a whole storage engine with its own
//! dependencies), and a backup needs only a writer of fresh files and a reader.
//!
//! A bbolt file is a sequence of pages (4,096 bytes here, as etcd writes them on this
//! platform): two meta pages (0 and 1; a reader takes the valid one with the higher
//! transaction id), a freelist page, and B+tree pages. Every page starts with a 16-byte
//! header: its id (u64), flags (u16: branch 0x01, leaf 0x02, meta 0x04, freelist 0x10),
//! an element count (u16) and how many pages past the first it spans (u32, for nodes
//! larger than a page). Integers are little-endian.
//!
//! - A leaf element is 16 bytes (flags u32, pos u32, key size u32, value size u32), `pos`
//!   counting from the element to its key, which the value follows. Flag 0x01 marks a
//!   nested bucket, whose value is its header (root page u64, sequence u64) and, if the
//!   root is 0, an inline page holding its elements.
//! - A branch element is 16 bytes (pos u32, key size u32, child page u64); its key is the
//!   child's first key.
//! - The meta page holds the magic 0xED0CDAED, version 2, the page size, flags, the root
//!   bucket's header, the freelist's page, the first unused page id, the transaction id,
//!   and an FNV-1a 64 checksum of everything before it.
//!
//! The top-level bucket lists the named buckets; etcd's never nest further.

mod read;
mod write;

pub use read::{read_buckets, BoltError};
pub use write::write_buckets;

/// Page size of the files this writes.
pub const PAGE_BYTES: usize = 4096;
const PAGE_HEADER_BYTES: usize = 16;
const ELEMENT_BYTES: usize = 16;
const BUCKET_HEADER_BYTES: usize = 16;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
/// A leaf element that is a nested bucket.
const ELEMENT_BUCKET: u32 = 0x01;
/// Bytes of the meta fields the checksum covers.
const META_CHECKSUMMED_BYTES: usize = 4 + 4 + 4 + 4 + 16 + 8 + 8 + 8;

/// One named bucket: its keys and values, in key order, keys unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// The bucket's name.
    pub name: Vec<u8>,
    /// Its entries, sorted by key.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Bucket {
    /// A bucket named `name` holding `entries` (sorted here).
    pub fn new(name: &[u8], mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> Bucket {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Bucket {
            name: name.to_vec(),
            entries,
        }
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
            .ok()
            .map(|i| self.entries[i].1.as_slice())
    }
}

/// FNV-1a, 64 bits: bbolt's meta page checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
