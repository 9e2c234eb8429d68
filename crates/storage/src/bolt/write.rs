//! Writing a fresh bbolt file: every bucket's entries packed into leaf pages in key
//! order, branch pages above them up to one root per bucket, the top-level bucket
//! listing the buckets, an empty freelist and the two meta pages.

use std::io::{self, Seek, SeekFrom, Write};

use super::{
    fnv1a64, Bucket, BUCKET_HEADER_BYTES, ELEMENT_BUCKET, ELEMENT_BYTES, FLAG_BRANCH,
    FLAG_FREELIST, FLAG_LEAF, FLAG_META, MAGIC, META_CHECKSUMMED_BYTES, PAGE_BYTES,
    PAGE_HEADER_BYTES, VERSION,
};

/// The first page of the trees: 0 and 1 are the meta pages, 2 the freelist.
const FIRST_TREE_PAGE: u64 = 3;
const FREELIST_PAGE: u64 = 2;

/// Writes `buckets` (names unique) as a bbolt file to `out`, from its start. Returns the
/// file's size.
pub fn write_buckets<W: Write + Seek>(buckets: &[Bucket], out: &mut W) -> io::Result<u64> {
    let mut names: Vec<&[u8]> = buckets.iter().map(|b| b.name.as_slice()).collect();
    names.sort();
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "bucket names are unique"
    );
    let mut pages = PageWriter {
        out,
        next_page: FIRST_TREE_PAGE,
    };
    pages
        .out
        .seek(SeekFrom::Start(FIRST_TREE_PAGE * PAGE_BYTES as u64))?;
    let mut headers = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        assert!(
            bucket.entries.windows(2).all(|w| w[0].0 < w[1].0),
            "a bucket's keys are sorted and unique"
        );
        let entries = bucket
            .entries
            .iter()
            .map(|(k, v)| (0, k.as_slice(), v.as_slice()));
        let root = pages.write_tree(entries)?;
        let mut header = Vec::with_capacity(BUCKET_HEADER_BYTES);
        header.extend_from_slice(&root.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes()); // sequence
        headers.push((bucket.name.as_slice(), header));
    }
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let root = pages.write_tree(
        headers
            .iter()
            .map(|(name, header)| (ELEMENT_BUCKET, *name, header.as_slice())),
    )?;
    let high_water = pages.next_page;
    let out = pages.out;
    let mut freelist = page_header(FREELIST_PAGE, FLAG_FREELIST, 0, 0);
    freelist.resize(PAGE_BYTES, 0);
    out.seek(SeekFrom::Start(FREELIST_PAGE * PAGE_BYTES as u64))?;
    out.write_all(&freelist)?;
    // Two meta pages; a reader takes the one with the higher transaction id.
    out.seek(SeekFrom::Start(0))?;
    for (page, txid) in [(0u64, 1u64), (1, 2)] {
        out.write_all(&meta_page(page, root, high_water, txid))?;
    }
    out.flush()?;
    Ok(high_water * PAGE_BYTES as u64)
}

fn page_header(id: u64, flags: u16, count: u16, overflow: u32) -> Vec<u8> {
    let mut page = Vec::with_capacity(PAGE_BYTES);
    page.extend_from_slice(&id.to_le_bytes());
    page.extend_from_slice(&flags.to_le_bytes());
    page.extend_from_slice(&count.to_le_bytes());
    page.extend_from_slice(&overflow.to_le_bytes());
    page
}

fn meta_page(id: u64, root: u64, high_water: u64, txid: u64) -> Vec<u8> {
    let mut page = page_header(id, FLAG_META, 0, 0);
    let meta_start = page.len();
    page.extend_from_slice(&MAGIC.to_le_bytes());
    page.extend_from_slice(&VERSION.to_le_bytes());
    page.extend_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
    page.extend_from_slice(&0u32.to_le_bytes()); // flags
    page.extend_from_slice(&root.to_le_bytes());
    page.extend_from_slice(&0u64.to_le_bytes()); // the root bucket's sequence
    page.extend_from_slice(&FREELIST_PAGE.to_le_bytes());
    page.extend_from_slice(&high_water.to_le_bytes());
    page.extend_from_slice(&txid.to_le_bytes());
    debug_assert_eq!(page.len() - meta_start, META_CHECKSUMMED_BYTES);
    let checksum = fnv1a64(&page[meta_start..]);
    page.extend_from_slice(&checksum.to_le_bytes());
    page.resize(PAGE_BYTES, 0);
    page
}

struct PageWriter<'a, W> {
    out: &'a mut W,
    next_page: u64,
}

/// A node's elements: (element flags, key, value) for a leaf, (0, key, child page id as
/// 8 bytes) for a branch.
type Element<'e> = (u32, &'e [u8], &'e [u8]);

impl<W: Write + Seek> PageWriter<'_, W> {
    /// Writes a B+tree of `entries` (in key order) and returns its root page.
    fn write_tree<'e>(&mut self, entries: impl Iterator<Item = Element<'e>>) -> io::Result<u64> {
        let mut level = self.write_level(FLAG_LEAF, entries)?;
        while level.len() > 1 {
            let children: Vec<(Vec<u8>, [u8; 8])> = level
                .into_iter()
                .map(|(first_key, page)| (first_key, page.to_le_bytes()))
                .collect();
            level = self.write_level(
                FLAG_BRANCH,
                children
                    .iter()
                    .map(|(key, page)| (0, key.as_slice(), &page[..])),
            )?;
        }
        Ok(level[0].1)
    }

    /// Packs `elements` into nodes of one level, each at most a page unless one element
    /// alone is larger; returns each node's first key and page (one empty leaf if there
    /// are no elements).
    fn write_level<'e>(
        &mut self,
        flags: u16,
        elements: impl Iterator<Item = Element<'e>>,
    ) -> io::Result<Vec<(Vec<u8>, u64)>> {
        let mut nodes = Vec::new();
        let mut node: Vec<Element<'e>> = Vec::new();
        let mut node_bytes = PAGE_HEADER_BYTES;
        for element in elements {
            let element_bytes = ELEMENT_BYTES + element.1.len() + data_bytes(flags, element);
            if !node.is_empty() && node_bytes + element_bytes > PAGE_BYTES {
                nodes.push(self.write_node(flags, &node)?);
                node.clear();
                node_bytes = PAGE_HEADER_BYTES;
            }
            node.push(element);
            node_bytes += element_bytes;
        }
        if !node.is_empty() || nodes.is_empty() {
            nodes.push(self.write_node(flags, &node)?);
        }
        Ok(nodes)
    }

    fn write_node(&mut self, flags: u16, elements: &[Element<'_>]) -> io::Result<(Vec<u8>, u64)> {
        let id = self.next_page;
        let count = u16::try_from(elements.len()).expect("a page holds fewer than 65,536 elements");
        let data_start = PAGE_HEADER_BYTES + elements.len() * ELEMENT_BYTES;
        let mut element_area = Vec::with_capacity(elements.len() * ELEMENT_BYTES);
        let mut data = Vec::new();
        for (i, &(element_flags, key, value)) in elements.iter().enumerate() {
            let element_at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
            let pos = (data_start + data.len() - element_at) as u32;
            if flags == FLAG_LEAF {
                element_area.extend_from_slice(&element_flags.to_le_bytes());
                element_area.extend_from_slice(&pos.to_le_bytes());
                element_area.extend_from_slice(&(key.len() as u32).to_le_bytes());
                element_area.extend_from_slice(&(value.len() as u32).to_le_bytes());
                data.extend_from_slice(key);
                data.extend_from_slice(value);
            } else {
                element_area.extend_from_slice(&pos.to_le_bytes());
                element_area.extend_from_slice(&(key.len() as u32).to_le_bytes());
                element_area.extend_from_slice(value); // the child's page id
                data.extend_from_slice(key);
            }
        }
        let total = data_start + data.len();
        let pages = total.div_ceil(PAGE_BYTES).max(1);
        let overflow = u32::try_from(pages - 1).expect("a node under 16 TiB");
        let mut page = page_header(id, flags, count, overflow);
        page.extend_from_slice(&element_area);
        page.extend_from_slice(&data);
        page.resize(pages * PAGE_BYTES, 0);
        self.out.write_all(&page)?;
        self.next_page += pages as u64;
        let first_key = elements.first().map_or_else(Vec::new, |e| e.1.to_vec());
        Ok((first_key, id))
    }
}

/// Bytes an element's node holds besides its 16-byte element and its key: the value of
/// a leaf element, nothing for a branch element (its child id is in the element).
fn data_bytes(flags: u16, element: Element<'_>) -> usize {
    if flags == FLAG_LEAF {
        element.2.len()
    } else {
        0
    }
}
