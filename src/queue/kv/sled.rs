//! The sled engine (0.34): all tables in one tree, each key prefixed by its table's tag.
//!
//! sled's transactions cannot scan ranges, so a write transaction is built here: the writer thread is the
//! only writer (a mutex enforces it), reads go through an overlay of the pending changes, and the changes
//! are applied as one atomic `Batch` followed by `flush` (which fsyncs sled's log) before the commit
//! returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::keys::Table;
use super::{Entries, KvEngine, KvRead, KvWrite, ReadFn, StoreError, WriteFn};

type Entry = (Vec<u8>, Vec<u8>);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("sled: {e}"))
}

#[derive(Debug)]
pub(crate) struct SledEngine {
    tree: sled::Db,
    path: PathBuf,
    write_lock: Mutex<()>,
}

impl SledEngine {
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        // sled releases its file lock from a background thread after the last handle is dropped, so a
        // store reopened within the same process can find it still locked for a moment; a store held
        // by another process stays locked and is reported after the wait.
        let mut waited = std::time::Duration::ZERO;
        let tree = loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes as u64)
                .open()
            {
                Ok(tree) => break tree,
                Err(e) if e.to_string().contains("lock") => {
                    if waited >= std::time::Duration::from_secs(2) {
                        return Err(StoreError::Locked(path.display().to_string()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    waited += std::time::Duration::from_millis(50);
                }
                Err(e) => return Err(err(e)),
            }
        };
        Ok(Self {
            tree,
            path: path.to_owned(),
            write_lock: Mutex::new(()),
        })
    }
}

fn full_key(table: Table, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(table.tag());
    out.extend_from_slice(key);
    out
}

/// `[from, to)` of `table` in the shared tree.
fn full_range(table: Table, from: &[u8], to: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let start = full_key(table, from);
    let end = match to {
        Some(to) => full_key(table, to),
        None => vec![table.tag() + 1],
    };
    (start, end)
}

fn scan_tree(
    tree: &sled::Db,
    table: Table,
    from: &[u8],
    to: Option<&[u8]>,
    limit: usize,
) -> Result<Entries, StoreError> {
    let (start, end) = full_range(table, from, to);
    if end <= start {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in tree.range(start..end).take(limit) {
        let (k, v) = entry.map_err(err)?;
        out.push((k[1..].to_vec(), v.to_vec()));
    }
    Ok(out)
}

struct Overlay<'a> {
    tree: &'a sled::Db,
    /// Pending changes by full key: Some(value) to insert, None to remove.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl KvRead for Overlay<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let full = full_key(table, key);
        if let Some(change) = self.pending.get(&full) {
            return Ok(change.clone());
        }
        Ok(self.tree.get(&full).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let (start, end) = full_range(table, from, to);
        if end <= start {
            return Ok(Vec::new());
        }
        let mut stored = self.tree.range(start.clone()..end.clone());
        let mut next_stored = move || -> Result<Option<Entry>, StoreError> {
            Ok(stored
                .next()
                .transpose()
                .map_err(err)?
                .map(|(k, v)| (k.to_vec(), v.to_vec())))
        };
        let mut pending = self.pending.range(start..end);
        let mut s_next = next_stored()?;
        let mut p_next = pending.next();
        let mut out = Vec::new();
        // Merge two sorted streams; a pending change (insert or removal) wins over the stored value.
        while out.len() < limit {
            let take_pending = match (&s_next, p_next) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((sk, _)), Some((pk, _))) => pk <= sk,
            };
            if take_pending {
                if let Some((pk, change)) = p_next {
                    if s_next.as_ref().is_some_and(|(sk, _)| sk == pk) {
                        s_next = next_stored()?;
                    }
                    if let Some(value) = change {
                        out.push((pk[1..].to_vec(), value.clone()));
                    }
                }
                p_next = pending.next();
            } else if let Some((sk, sv)) = s_next.take() {
                out.push((sk[1..].to_vec(), sv));
                s_next = next_stored()?;
            }
        }
        Ok(out)
    }
}

impl KvWrite for Overlay<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.pending
            .insert(full_key(table, key), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.pending.insert(full_key(table, key), None);
        Ok(())
    }
}

struct Snapshot<'a> {
    tree: &'a sled::Db,
}

impl KvRead for Snapshot<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(full_key(table, key))
            .map_err(err)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        scan_tree(self.tree, table, from, to, limit)
    }
}

impl KvEngine for SledEngine {
    fn write(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<(), StoreError> {
        let _only_writer = self
            .write_lock
            .lock()
            .map_err(|_| StoreError::Io("sled writer lock poisoned".into()))?;
        let mut overlay = Overlay {
            tree: &self.tree,
            pending: BTreeMap::new(),
        };
        f(&mut overlay)?;
        if overlay.pending.is_empty() {
            // Nothing of its own, but a durable answer still covers earlier non-durable batches.
            if durable {
                self.tree.flush().map_err(err)?;
            }
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (key, change) in overlay.pending {
            match change {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree.apply_batch(batch).map_err(err)?;
        if durable {
            self.tree.flush().map_err(err)?;
        }
        Ok(())
    }

    fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError> {
        // sled has no multi-key snapshots; batches are atomic, so each key read is consistent with the
        // batch that wrote it. Reads never feed a write decision (the writer reads through its overlay).
        f(&Snapshot { tree: &self.tree })
    }

    fn size_on_disk(&self) -> u64 {
        super::disk_usage(&self.path)
    }
}
