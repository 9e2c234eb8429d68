//! Reading a bbolt file: the valid meta page with the higher transaction id, then every
//! named bucket's entries in key order. Every offset is checked, so a damaged or
//! foreign file is refused with a message, never a panic.

use super::{
    fnv1a64, Bucket, BUCKET_HEADER_BYTES, ELEMENT_BUCKET, ELEMENT_BYTES, FLAG_BRANCH, FLAG_LEAF,
    FLAG_META, MAGIC, META_CHECKSUMMED_BYTES, PAGE_HEADER_BYTES, VERSION,
};

/// Why a file is not a readable bbolt database.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a readable bbolt database: {0}")]
pub struct BoltError(pub String);

fn damaged(what: impl Into<String>) -> BoltError {
    BoltError(what.into())
}

/// How deep a tree may be: far beyond any real file, it stops loops in damaged ones.
const DEPTH_MAX: usize = 64;

/// The named buckets of a bbolt file, each with its entries in key order.
pub fn read_buckets(file: &[u8]) -> Result<Vec<Bucket>, BoltError> {
    let meta = best_meta(file)?;
    let db = Db {
        file,
        page_bytes: meta.page_bytes,
    };
    let mut top = Vec::new();
    db.collect(meta.root, 0, &mut top)?;
    let mut buckets = Vec::with_capacity(top.len());
    for (flags, name, value) in top {
        if flags & ELEMENT_BUCKET == 0 {
            return Err(damaged(format!(
                "a plain key {name:?} in the top-level bucket"
            )));
        }
        let mut entries = Vec::new();
        db.collect_bucket(value, &mut entries)?;
        let mut plain = Vec::with_capacity(entries.len());
        for (flags, key, value) in entries {
            if flags & ELEMENT_BUCKET != 0 {
                return Err(damaged(format!(
                    "bucket {:?} nests bucket {key:?} (etcd's never do)",
                    String::from_utf8_lossy(name)
                )));
            }
            plain.push((key.to_vec(), value.to_vec()));
        }
        if plain.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(damaged(format!(
                "bucket {:?}'s keys are out of order",
                String::from_utf8_lossy(name)
            )));
        }
        buckets.push(Bucket {
            name: name.to_vec(),
            entries: plain,
        });
    }
    Ok(buckets)
}

struct Meta {
    page_bytes: usize,
    root: u64,
    txid: u64,
}

fn best_meta(file: &[u8]) -> Result<Meta, BoltError> {
    // The page size is in the meta; read it from the first page's meta to find the
    // second (bbolt does the same, falling back to the second if the first is damaged).
    let first = parse_meta(file, 0);
    let page_bytes = match &first {
        Ok(meta) => meta.page_bytes,
        Err(_) => super::PAGE_BYTES,
    };
    let second = parse_meta(file, page_bytes);
    match (first, second) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(meta), Err(_)) | (Err(_), Ok(meta)) => Ok(meta),
        (Err(error), Err(_)) => Err(error),
    }
}

fn parse_meta(file: &[u8], offset: usize) -> Result<Meta, BoltError> {
    let end = offset + PAGE_HEADER_BYTES + META_CHECKSUMMED_BYTES + 8;
    let page = file
        .get(offset..end)
        .ok_or_else(|| damaged("the file is shorter than its meta pages"))?;
    let flags = u16_at(page, 8);
    let meta = &page[PAGE_HEADER_BYTES..];
    if flags & FLAG_META == 0 || u32_at(meta, 0) != MAGIC {
        return Err(damaged("no bbolt meta page (wrong magic)"));
    }
    if u32_at(meta, 4) != VERSION {
        return Err(damaged(format!(
            "format version {}, not 2",
            u32_at(meta, 4)
        )));
    }
    let checksum = u64_at(meta, META_CHECKSUMMED_BYTES);
    if fnv1a64(&meta[..META_CHECKSUMMED_BYTES]) != checksum {
        return Err(damaged("a meta page's checksum does not match"));
    }
    let page_bytes = u32_at(meta, 8) as usize;
    if !(1024..=1 << 20).contains(&page_bytes) || !page_bytes.is_power_of_two() {
        return Err(damaged(format!("page size {page_bytes}")));
    }
    Ok(Meta {
        page_bytes,
        root: u64_at(meta, 16),
        txid: u64_at(meta, 48),
    })
}

struct Db<'f> {
    file: &'f [u8],
    page_bytes: usize,
}

type Element<'f> = (u32, &'f [u8], &'f [u8]);

impl<'f> Db<'f> {
    /// A bucket's entries, from its header (and inline page) in its parent's value.
    fn collect_bucket(&self, value: &'f [u8], out: &mut Vec<Element<'f>>) -> Result<(), BoltError> {
        if value.len() < BUCKET_HEADER_BYTES {
            return Err(damaged("a bucket header is cut short"));
        }
        let root = u64_at(value, 0);
        if root == 0 {
            // Inline: the bucket's only page follows its header.
            let inline = &value[BUCKET_HEADER_BYTES..];
            return leaf_elements(inline, out);
        }
        self.collect(root, 0, out)
    }

    /// Every leaf element under page `id`, in order.
    fn collect(&self, id: u64, depth: usize, out: &mut Vec<Element<'f>>) -> Result<(), BoltError> {
        if depth > DEPTH_MAX {
            return Err(damaged("the tree is deeper than any real file's (a loop?)"));
        }
        let start = usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_mul(self.page_bytes))
            .filter(|&start| id >= 2 && start + PAGE_HEADER_BYTES <= self.file.len())
            .ok_or_else(|| damaged(format!("page {id} is outside the file")))?;
        let overflow = u32_at(self.file, start + 12) as usize;
        let end = overflow
            .checked_add(1)
            .and_then(|pages| pages.checked_mul(self.page_bytes))
            .and_then(|bytes| bytes.checked_add(start))
            .filter(|&end| end <= self.file.len())
            .ok_or_else(|| damaged(format!("page {id} runs past the end of the file")))?;
        let page = &self.file[start..end];
        let flags = u16_at(page, 8);
        if flags & FLAG_LEAF != 0 {
            leaf_elements(page, out)
        } else if flags & FLAG_BRANCH != 0 {
            let count = u16_at(page, 10) as usize;
            for i in 0..count {
                let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
                if at + ELEMENT_BYTES > page.len() {
                    return Err(damaged(format!("page {id}'s elements run past it")));
                }
                self.collect(u64_at(page, at + 8), depth + 1, out)?;
            }
            Ok(())
        } else {
            Err(damaged(format!("page {id} is neither a branch nor a leaf")))
        }
    }
}

/// The elements of the leaf `page`.
fn leaf_elements<'f>(page: &'f [u8], out: &mut Vec<Element<'f>>) -> Result<(), BoltError> {
    if page.len() < PAGE_HEADER_BYTES {
        return Err(damaged("a leaf page is cut short"));
    }
    if u16_at(page, 8) & FLAG_LEAF == 0 {
        return Err(damaged("an inline bucket's page is not a leaf"));
    }
    let count = u16_at(page, 10) as usize;
    for i in 0..count {
        let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
        if at + ELEMENT_BYTES > page.len() {
            return Err(damaged("a leaf's elements run past it"));
        }
        let flags = u32_at(page, at);
        let pos = u32_at(page, at + 4) as usize;
        let key_bytes = u32_at(page, at + 8) as usize;
        let value_bytes = u32_at(page, at + 12) as usize;
        let key_at = at + pos;
        let value_end = key_at
            .checked_add(key_bytes)
            .and_then(|v| v.checked_add(value_bytes))
            .filter(|&end| end <= page.len())
            .ok_or_else(|| damaged("a leaf element's key or value runs past its page"))?;
        let key = &page[key_at..key_at + key_bytes];
        let value = &page[key_at + key_bytes..value_end];
        out.push((flags, key, value));
    }
    Ok(())
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}
