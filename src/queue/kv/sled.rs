//! The sled engine (0.34): all tables in one tree, each key prefixed by its table's tag.
//!
//! sled's transactions cannot scan ranges, so a write transaction is an [`Overlay`] of the pending
//! changes, applied as one atomic `Batch` followed by `flush` (which fsyncs sled's log) before the
//! commit returns.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use super::keys::Table;
use super::overlay::Overlay;
use super::{Entries, KvEngine, KvRead, Order, ReadFn, StoreError, WriteFn};

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("sled: {e}"))
}

#[derive(Debug)]
pub(crate) struct SledEngine {
    tree: sled::Db,
    path: PathBuf,
    /// Held for writing through a whole write, flush included: one writer at a time, and sled shows an
    /// applied batch to readers before `flush` has synced it, so readers wait for the flush and see
    /// only what is on disk.
    visible: RwLock<()>,
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
            visible: RwLock::new(()),
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
    order: Order,
) -> Result<Entries, StoreError> {
    let (start, end) = full_range(table, from, to);
    if end <= start {
        return Ok(Vec::new());
    }
    let range = tree.range(start..end);
    let range: Box<dyn Iterator<Item = _>> = if order == Order::Descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    let mut out = Vec::new();
    for entry in range.take(limit) {
        let (k, v) = entry.map_err(err)?;
        out.push((k[1..].to_vec(), v.to_vec()));
    }
    Ok(out)
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

    fn scan_in(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError> {
        scan_tree(self.tree, table, from, to, limit, order)
    }
}

impl KvEngine for SledEngine {
    fn write(&self, f: &mut WriteFn<'_>) -> Result<(), StoreError> {
        let _only_writer = self.visible.write().unwrap_or_else(PoisonError::into_inner);
        let mut overlay = Overlay {
            base: &Snapshot { tree: &self.tree },
            pending: Default::default(),
        };
        f(&mut overlay)?;
        if overlay.pending.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for ((table, key), change) in overlay.pending {
            match change {
                Some(value) => batch.insert(full_key(table, &key), value),
                None => batch.remove(full_key(table, &key)),
            }
        }
        self.tree.apply_batch(batch).map_err(err)?;
        self.tree.flush().map_err(err)?;
        Ok(())
    }

    fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError> {
        // sled has no multi-key snapshots; batches are atomic, so each key read is consistent with the
        // batch that wrote it. Reads never feed a write decision (the writer reads through its overlay).
        let _durable = self.visible.read().unwrap_or_else(PoisonError::into_inner);
        f(&Snapshot { tree: &self.tree })
    }

    fn size_on_disk(&self) -> u64 {
        super::disk_usage(&self.path)
    }
}
