//! The fjall engine (an LSM tree: journal, memtables, compaction, all fjall's own): one keyspace per
//! table. A write transaction is an [`Overlay`] of the pending changes, committed as one atomic fjall
//! batch and made durable with one `persist` (fsync of fjall's journal) before the commit returns.
//! Readers share the snapshot taken after the last persist, so they see only what is on disk.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};

use super::keys::Table;
use super::overlay::Overlay;
use super::{Entries, KvEngine, KvRead, ReadFn, StoreError, WriteFn};

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("fjall: {e}"))
}

pub(crate) struct FjallEngine {
    db: Database,
    tables: Vec<Keyspace>,
    /// The snapshot after the last durable commit, shared by readers.
    latest: Mutex<Snapshot>,
    /// One writer at a time (the store's writer thread, and opening).
    writing: Mutex<()>,
    path: PathBuf,
}

impl std::fmt::Debug for FjallEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallEngine")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FjallEngine {
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = Database::builder(path)
            .cache_size(cache_bytes as u64)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => StoreError::Locked(path.display().to_string()),
                other => err(other),
            })?;
        let tables = Table::ALL
            .iter()
            .map(|t| db.keyspace(t.name(), KeyspaceCreateOptions::default))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(Self {
            latest: Mutex::new(db.snapshot()),
            db,
            tables,
            writing: Mutex::new(()),
            path: path.to_owned(),
        })
    }
}

struct Read<'a> {
    snapshot: &'a Snapshot,
    tables: &'a [Keyspace],
}

impl KvRead for Read<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .snapshot
            .get(&self.tables[table.index()], key)
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
        let keyspace = &self.tables[table.index()];
        let range = match to {
            Some(to) if to <= from => return Ok(Vec::new()),
            Some(to) => self.snapshot.range(keyspace, from..to),
            None => self.snapshot.range(keyspace, from..),
        };
        range
            .take(limit)
            .map(|guard| {
                let (k, v) = guard.into_inner().map_err(err)?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }
}

impl KvEngine for FjallEngine {
    fn write(&self, f: &mut WriteFn<'_>) -> Result<(), StoreError> {
        let _only_writer = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = self.db.snapshot();
        let mut overlay = Overlay {
            base: &Read {
                snapshot: &snapshot,
                tables: &self.tables,
            },
            pending: Default::default(),
        };
        f(&mut overlay)?;
        if overlay.pending.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for ((table, key), change) in overlay.pending {
            let keyspace = &self.tables[table.index()];
            match change {
                Some(value) => batch.insert(keyspace, key, value),
                None => batch.remove(keyspace, key),
            }
        }
        batch.commit().map_err(err)?;
        self.db.persist(PersistMode::SyncData).map_err(err)?;
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = self.db.snapshot();
        Ok(())
    }

    fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError> {
        let snapshot = self
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        f(&Read {
            snapshot: &snapshot,
            tables: &self.tables,
        })
    }

    fn size_on_disk(&self) -> u64 {
        super::disk_usage(&self.path)
    }
}
