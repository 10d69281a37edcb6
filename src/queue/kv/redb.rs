//! The redb engine: one redb table per logical table; every write transaction commits with redb's
//! default durability, so a successful commit is on disk.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::keys::Table;
use super::{Entries, KvEngine, KvRead, KvWrite, Order, ReadFn, StoreError, WriteFn};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn def(table: Table) -> Def {
    TableDefinition::new(table.name())
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("redb: {e}"))
}

enum Db {
    ReadWrite(Database),
    /// For operators' tools while the daemon is stopped: never written.
    ReadOnly(redb::ReadOnlyDatabase),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::ReadWrite(_) => "ReadWrite",
            Db::ReadOnly(_) => "ReadOnly",
        })
    }
}

#[derive(Debug)]
pub(crate) struct RedbEngine {
    db: Db,
    path: PathBuf,
}

impl RedbEngine {
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        // redb's default page cache is 1 GiB: far beyond the daemon's memory budget (≤ 256 MiB with a
        // million jobs queued). Jobs stay on disk; the cache holds the hot index pages.
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::Locked(path.display().to_string())
                }
                other => err(other),
            })?;
        let txn = db.begin_write().map_err(err)?;
        for table in Table::ALL {
            txn.open_table(def(table)).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Self {
            db: Db::ReadWrite(db),
            path: path.to_owned(),
        })
    }

    pub(crate) fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let db = redb::ReadOnlyDatabase::open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::Locked(path.display().to_string())
            }
            // The file needs the repair that opening it for writing does.
            redb::DatabaseError::RepairAborted => StoreError::Unclean(path.display().to_string()),
            other => err(other),
        })?;
        Ok(Self {
            db: Db::ReadOnly(db),
            path: path.to_owned(),
        })
    }
}

fn scan_table(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    from: &[u8],
    to: Option<&[u8]>,
    limit: usize,
    order: Order,
) -> Result<Entries, StoreError> {
    let range = match to {
        Some(to) if to <= from => return Ok(Vec::new()),
        Some(to) => table.range::<&[u8]>(from..to),
        None => table.range::<&[u8]>(from..),
    }
    .map_err(err)?;
    let range: Box<dyn Iterator<Item = _>> = if order == Order::Descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    range
        .take(limit)
        .map(|entry| {
            let (k, v) = entry.map_err(err)?;
            Ok((k.value().to_vec(), v.value().to_vec()))
        })
        .collect()
}

struct Transaction<'t> {
    tables: Vec<redb::Table<'t, &'static [u8], &'static [u8]>>,
}

impl Transaction<'_> {
    fn table(&self, table: Table) -> &redb::Table<'_, &'static [u8], &'static [u8]> {
        &self.tables[table.index()]
    }
}

impl KvRead for Transaction<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .table(table)
            .get(key)
            .map_err(err)?
            .map(|v| v.value().to_vec()))
    }

    fn scan_in(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError> {
        scan_table(self.table(table), from, to, limit, order)
    }
}

impl KvWrite for Transaction<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tables[table.index()].insert(key, value).map_err(err)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.tables[table.index()].remove(key).map_err(err)?;
        Ok(())
    }
}

struct Snapshot {
    txn: redb::ReadTransaction,
}

impl Snapshot {
    fn table(
        &self,
        table: Table,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        self.txn.open_table(def(table)).map_err(err)
    }
}

impl KvRead for Snapshot {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .table(table)?
            .get(key)
            .map_err(err)?
            .map(|v| v.value().to_vec()))
    }

    fn scan_in(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError> {
        scan_table(&self.table(table)?, from, to, limit, order)
    }
}

impl KvEngine for RedbEngine {
    fn write(&self, f: &mut WriteFn<'_>) -> Result<(), StoreError> {
        let Db::ReadWrite(db) = &self.db else {
            return Err(StoreError::Io("the store is open read-only".into()));
        };
        let txn = db.begin_write().map_err(err)?;
        let result = {
            let mut tables = Vec::with_capacity(Table::ALL.len());
            for table in Table::ALL {
                tables.push(txn.open_table(def(table)).map_err(err)?);
            }
            let mut w = Transaction { tables };
            f(&mut w)
        };
        match result {
            Ok(()) => {
                // redb's default durability: on disk when `commit` returns, and only then visible to
                // readers.
                txn.commit().map_err(err)
            }
            Err(e) => {
                txn.abort().map_err(err)?;
                Err(e)
            }
        }
    }

    /// Each reader gets its own read transaction: a snapshot of the last commit.
    fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError> {
        let txn = match &self.db {
            Db::ReadWrite(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
        .map_err(err)?;
        f(&Snapshot { txn })
    }

    fn size_on_disk(&self) -> u64 {
        super::disk_usage(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(engine: &RedbEngine, key: &[u8]) -> Option<Vec<u8>> {
        let mut found = None;
        engine
            .read(&mut |r| {
                found = r.get(Table::Jobs, key)?;
                Ok(())
            })
            .expect("read");
        found
    }

    fn put(engine: &RedbEngine, key: &[u8], value: &[u8]) {
        engine
            .write(&mut |w| w.put(Table::Jobs, key, value))
            .expect("write");
    }

    #[test]
    fn a_read_after_a_commit_sees_it_and_a_read_begun_before_keeps_its_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = RedbEngine::open(&dir.path().join("store.redb"), 1 << 20).expect("open");
        put(&engine, b"a", b"1");
        assert_eq!(get(&engine, b"a").as_deref(), Some(&b"1"[..]));

        engine
            .read(&mut |before| {
                put(&engine, b"a", b"2");
                // The snapshot begun before the commit still answers as it was...
                assert_eq!(before.get(Table::Jobs, b"a")?.as_deref(), Some(&b"1"[..]));
                // ...while a reader starting after it sees the commit.
                assert_eq!(get(&engine, b"a").as_deref(), Some(&b"2"[..]));
                Ok(())
            })
            .expect("read");
        assert_eq!(get(&engine, b"a").as_deref(), Some(&b"2"[..]));

        // A write that fails commits nothing, and the readers still see the last commit.
        let failed = engine.write(&mut |w| {
            w.put(Table::Jobs, b"a", b"3")?;
            Err(StoreError::Closed)
        });
        assert!(failed.is_err());
        assert_eq!(get(&engine, b"a").as_deref(), Some(&b"2"[..]));
    }
}
