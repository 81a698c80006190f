//! A small B+tree key-value table on the encrypted page store: how an engine that manages
//! its own pages embeds tde.
//!
//! The tree knows nothing about encryption. It asks the tablespace for pages by number,
//! reads and writes plain bytes through pinned guards, and calls `sync` to commit. The
//! tablespace seals every page on its way to disk and opens it on its way into the
//! shared buffer pool.
//!
//! Run it with `cargo run --release --example btree`; its tests run with `cargo test`.
//!
//! Page layout (the engine's logical pages):
//!
//! ```text
//! page 0   meta: magic "BTREE\0\0\x01", root page number (u64 LE)
//! leaf     kind 1 (u8), entry count (u16 LE), next leaf (u64 LE, 0 = none),
//!          entries: key length (u16), value length (u16), key, value; sorted by key
//! inner    kind 2 (u8), entry count (u16 LE), leftmost child (u64 LE),
//!          entries: key length (u16), key, child (u64); child holds keys >= key
//! ```

use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use tde::page::{BufferPool, Tablespace, TablespaceOptions};

const META_MAGIC: &[u8; 8] = b"BTREE\0\0\x01";
const LEAF: u8 = 1;
const INNER: u8 = 2;
const HEAD: usize = 1 + 2 + 8;

/// One node, decoded.
#[derive(Debug, Clone)]
enum Node {
    Leaf {
        next: u64,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Inner {
        first: u64,
        entries: Vec<(Vec<u8>, u64)>,
    },
}

impl Node {
    fn encoded_len(&self) -> usize {
        HEAD + match self {
            Node::Leaf { entries, .. } => entries.iter().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>(),
            Node::Inner { entries, .. } => entries.iter().map(|(k, _)| 10 + k.len()).sum::<usize>(),
        }
    }

    fn encode(&self, page: &mut [u8]) {
        page.fill(0);
        let mut at = HEAD;
        let mut put = |bytes: &[u8]| {
            page[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        let (kind, count, link) = match self {
            Node::Leaf { next, entries } => {
                for (k, v) in entries {
                    put(&(k.len() as u16).to_le_bytes());
                    put(&(v.len() as u16).to_le_bytes());
                    put(k);
                    put(v);
                }
                (LEAF, entries.len(), *next)
            }
            Node::Inner { first, entries } => {
                for (k, child) in entries {
                    put(&(k.len() as u16).to_le_bytes());
                    put(k);
                    put(&child.to_le_bytes());
                }
                (INNER, entries.len(), *first)
            }
        };
        page[0] = kind;
        page[1..3].copy_from_slice(&(count as u16).to_le_bytes());
        page[3..11].copy_from_slice(&link.to_le_bytes());
    }

    fn decode(page: &[u8]) -> Node {
        let u16_at = |at: usize| u16::from_le_bytes([page[at], page[at + 1]]) as usize;
        let u64_at = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().expect("8 bytes"));
        let (count, link) = (u16_at(1), u64_at(3));
        let mut at = HEAD;
        match page[0] {
            LEAF => {
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let (kl, vl) = (u16_at(at), u16_at(at + 2));
                    at += 4;
                    entries.push((page[at..at + kl].to_vec(), page[at + kl..at + kl + vl].to_vec()));
                    at += kl + vl;
                }
                Node::Leaf { next: link, entries }
            }
            INNER => {
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let kl = u16_at(at);
                    at += 2;
                    entries.push((page[at..at + kl].to_vec(), u64_at(at + kl)));
                    at += kl + 8;
                }
                Node::Inner { first: link, entries }
            }
            other => panic!("page is not a B+tree node (kind {other})"),
        }
    }
}

/// A B+tree over one tablespace.
pub struct BTree {
    ts: Tablespace,
}

impl BTree {
    /// Opens the tree in `ts`, creating it if the tablespace is empty.
    pub fn open(ts: Tablespace) -> tde::Result<BTree> {
        let tree = BTree { ts };
        if tree.ts.page_count() == 0 {
            let (meta, mut page) = tree.ts.allocate()?;
            assert_eq!(meta, 0);
            let (root, mut root_page) = tree.ts.allocate()?;
            Node::Leaf {
                next: 0,
                entries: Vec::new(),
            }
            .encode(&mut root_page);
            page[..8].copy_from_slice(META_MAGIC);
            page[8..16].copy_from_slice(&root.to_le_bytes());
        }
        assert_eq!(&tree.ts.read(0)?[..8], META_MAGIC, "not a B+tree tablespace");
        Ok(tree)
    }

    /// The largest key plus value this tree accepts.
    pub fn max_entry(&self) -> usize {
        (self.ts.page_size() - HEAD) / 4 - 4
    }

    fn root(&self) -> tde::Result<u64> {
        Ok(u64::from_le_bytes(
            self.ts.read(0)?[8..16].try_into().expect("8 bytes"),
        ))
    }

    fn node(&self, page: u64) -> tde::Result<Node> {
        Ok(Node::decode(&self.ts.read(page)?))
    }

    fn child_for(entries: &[(Vec<u8>, u64)], first: u64, key: &[u8]) -> u64 {
        let i = entries.partition_point(|(k, _)| k.as_slice() <= key);
        if i == 0 { first } else { entries[i - 1].1 }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> tde::Result<Option<Vec<u8>>> {
        let mut page = self.root()?;
        loop {
            match self.node(page)? {
                Node::Inner { first, entries } => page = BTree::child_for(&entries, first, key),
                Node::Leaf { entries, .. } => {
                    return Ok(entries
                        .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                        .ok()
                        .map(|i| entries[i].1.clone()));
                }
            }
        }
    }

    /// Inserts or replaces `key`.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> tde::Result<()> {
        assert!(key.len() + value.len() <= self.max_entry(), "entry too large");
        let root = self.root()?;
        if let Some((separator, right)) = self.insert_into(root, key, value)? {
            let (new_root, mut page) = self.ts.allocate()?;
            Node::Inner {
                first: root,
                entries: vec![(separator, right)],
            }
            .encode(&mut page);
            drop(page);
            self.ts.write(0)?[8..16].copy_from_slice(&new_root.to_le_bytes());
        }
        Ok(())
    }

    /// Inserts below `page`; returns the separator and new right sibling if it split.
    fn insert_into(&self, page: u64, key: &[u8], value: &[u8]) -> tde::Result<Option<(Vec<u8>, u64)>> {
        let mut node = self.node(page)?;
        match &mut node {
            Node::Leaf { entries, .. } => match entries.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                Ok(i) => entries[i].1 = value.to_vec(),
                Err(i) => entries.insert(i, (key.to_vec(), value.to_vec())),
            },
            Node::Inner { first, entries } => {
                let child = BTree::child_for(entries, *first, key);
                match self.insert_into(child, key, value)? {
                    Some((separator, right)) => {
                        let i = entries.partition_point(|(k, _)| k.as_slice() <= separator.as_slice());
                        entries.insert(i, (separator, right));
                    }
                    None => return Ok(None),
                }
            }
        }
        if node.encoded_len() <= self.ts.page_size() {
            node.encode(&mut self.ts.write(page)?);
            return Ok(None);
        }
        // Split in two halves; the right half goes to a new page.
        let (right_no, mut right_page) = self.ts.allocate()?;
        let (left, right, separator) = match node {
            Node::Leaf { next, mut entries } => {
                let tail = entries.split_off(entries.len() / 2);
                let separator = tail[0].0.clone();
                (
                    Node::Leaf {
                        next: right_no,
                        entries,
                    },
                    Node::Leaf { next, entries: tail },
                    separator,
                )
            }
            Node::Inner { first, mut entries } => {
                let mut tail = entries.split_off(entries.len() / 2);
                let (separator, middle) = tail.remove(0);
                (
                    Node::Inner { first, entries },
                    Node::Inner {
                        first: middle,
                        entries: tail,
                    },
                    separator,
                )
            }
        };
        right.encode(&mut right_page);
        drop(right_page);
        left.encode(&mut self.ts.write(page)?);
        Ok(Some((separator, right_no)))
    }

    /// Entries with keys in `range`, in key order.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> tde::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let from: &[u8] = match start {
            Bound::Included(k) | Bound::Excluded(k) => k,
            Bound::Unbounded => &[],
        };
        let mut page = self.root()?;
        while let Node::Inner { first, entries } = self.node(page)? {
            page = BTree::child_for(&entries, first, from);
        }
        let mut out = Vec::new();
        loop {
            let Node::Leaf { next, entries } = self.node(page)? else {
                unreachable!("leaves link to leaves")
            };
            for (k, v) in entries {
                if !RangeBounds::<[u8]>::contains(&(start, end), k.as_slice()) {
                    let past_end = match end {
                        Bound::Included(e) => k.as_slice() > e,
                        Bound::Excluded(e) => k.as_slice() >= e,
                        Bound::Unbounded => false,
                    };
                    if past_end {
                        return Ok(out);
                    }
                    continue;
                }
                out.push((k, v));
            }
            if next == 0 {
                return Ok(out);
            }
            page = next;
        }
    }

    /// Commits every change so far (one journal fsync).
    pub fn sync(&self) -> tde::Result<()> {
        self.ts.sync()
    }

    /// Commits and closes.
    pub fn close(self) -> tde::Result<()> {
        self.ts.close()
    }
}

fn main() -> tde::Result<()> {
    let dir = tempfile::tempdir().map_err(|e| tde::Error::InvalidArgument(e.to_string()))?;
    let kms = Arc::new(tde::kms::local::LocalKms::create(dir.path().join("kms"))?);
    let options = TablespaceOptions::new(kms);
    // One pool for every tablespace the engine opens; 4 MiB here.
    let pool = BufferPool::new(4 << 20);
    let path = dir.path().join("patients.tdb");

    let tree = BTree::open(Tablespace::create(&path, &options, &pool)?)?;
    for i in 0..20_000u32 {
        let key = format!("patient-{i:06}");
        tree.insert(
            key.as_bytes(),
            format!("record of patient {i}: blood type O+").as_bytes(),
        )?;
    }
    tree.sync()?;
    tree.close()?;
    println!(
        "inserted 20000 records; {} is {} KiB of ciphertext",
        path.display(),
        std::fs::metadata(&path).map_or(0, |m| m.len() >> 10)
    );

    let tree = BTree::open(Tablespace::open(&path, &options, &pool)?)?;
    let hit = tree.get(b"patient-012345")?.unwrap_or_default();
    println!("get patient-012345 -> {}", String::from_utf8_lossy(&hit));
    let some = tree.range(
        Bound::Included(b"patient-000100"),
        Bound::Excluded(b"patient-000103"),
    )?;
    for (k, v) in some {
        println!(
            "range {} -> {}",
            String::from_utf8_lossy(&k),
            String::from_utf8_lossy(&v)
        );
    }
    let stats = pool.stats();
    println!("buffer pool: {} hits, {} misses", stats.hits, stats.misses);
    let file = std::fs::read(&path).map_err(|e| tde::Error::InvalidArgument(e.to_string()))?;
    let leaked = file.windows(8).any(|w| w == b"patient-");
    println!("plaintext in the file: {}", if leaked { "FOUND" } else { "none" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use tde::page::PageSize;

    fn setup(size: PageSize) -> (tempfile::TempDir, TablespaceOptions) {
        let dir = tempfile::tempdir().unwrap();
        let kms = Arc::new(tde::kms::local::LocalKms::create(dir.path().join("kms")).unwrap());
        (dir, TablespaceOptions::new(kms).page_size(size))
    }

    fn key(i: u64) -> Vec<u8> {
        format!("k{:08}", (i * 7919) % 100_000).into_bytes()
    }

    #[test]
    fn the_tree_matches_a_model_across_splits_and_reopen() {
        let (dir, options) = setup(PageSize::K4);
        let pool = BufferPool::new(64 * 4096);
        let path = dir.path().join("t.tdb");
        let tree = BTree::open(Tablespace::create(&path, &options, &pool).unwrap()).unwrap();
        let mut model = BTreeMap::new();
        for i in 0..6000u64 {
            let value = format!("SECRET-VALUE-{i}")
                .repeat(1 + (i % 5) as usize)
                .into_bytes();
            tree.insert(&key(i), &value).unwrap();
            model.insert(key(i), value);
            if i % 1000 == 0 {
                tree.sync().unwrap();
            }
        }
        tree.close().unwrap();
        assert!(pool.stats().evictions > 0, "the pool was smaller than the tree");

        let tree = BTree::open(Tablespace::open(&path, &options, &pool).unwrap()).unwrap();
        for (k, v) in model.iter().step_by(13) {
            assert_eq!(tree.get(k).unwrap().as_ref(), Some(v));
        }
        assert_eq!(tree.get(b"absent").unwrap(), None);
        let all = tree.range(Bound::Unbounded, Bound::Unbounded).unwrap();
        assert_eq!(all.len(), model.len());
        assert!(
            all.iter()
                .zip(&model)
                .all(|((k, v), (mk, mv))| k == mk && v == mv)
        );
        let (lo, hi) = (b"k00010000".as_slice(), b"k00020000".as_slice());
        let got = tree.range(Bound::Included(lo), Bound::Excluded(hi)).unwrap();
        let want: Vec<_> = model
            .range(lo.to_vec()..hi.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, want);
        tree.close().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(12).any(|w| w == b"SECRET-VALUE"),
            "plaintext in the tablespace"
        );
    }

    #[test]
    fn replacing_values_and_every_page_size() {
        for size in PageSize::ALL {
            let (dir, options) = setup(size);
            let pool = BufferPool::new(1 << 20);
            let tree =
                BTree::open(Tablespace::create(dir.path().join("t"), &options, &pool).unwrap()).unwrap();
            for round in 0..3u64 {
                for i in 0..800u64 {
                    tree.insert(&key(i), format!("{round}-{i}").as_bytes()).unwrap();
                }
            }
            for i in 0..800u64 {
                assert_eq!(tree.get(&key(i)).unwrap().unwrap(), format!("2-{i}").into_bytes());
            }
            assert_eq!(tree.range(Bound::Unbounded, Bound::Unbounded).unwrap().len(), 800);
        }
    }
}
