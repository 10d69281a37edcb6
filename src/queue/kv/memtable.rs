//! The writes the engine does not hold yet, in memory: what lets the write-ahead log's engine commit once
//! per checkpoint instead of once per batch.
//!
//! A batch's writes go to the log, for durability, and into the *active* layer here, for readers. The
//! engine sees them only at a checkpoint: the active layer is *frozen*, a fresh one takes the writes
//! that follow, and the checkpointer thread commits the frozen one to the engine in one durable
//! transaction, then drops it. Readers look through the active layer, then the frozen one, then the
//! engine. An engine transaction per batch cost redb its B-tree page copies, checksums and table roots
//! every time (about half of the writer's time, docs/BENCHMARKS.md); once per checkpoint, a hot page
//! is written once instead of hundreds of times.
//!
//! # Invariants
//! - Every entry carries the log sequence number (LSN) of the batch that wrote it. A reader sees exactly
//!   the batches through the LSN it started at, whatever the writer merges meanwhile: a consistent
//!   snapshot, as the engine's own read transactions give.
//! - A layer is frozen only after the previous frozen layer is in the engine: at most two layers.
//! - A reader takes its layers and opens its engine transaction under the `layers` lock; a layer is
//!   frozen, and a frozen one dropped, only under that lock too. So a reader's engine transaction never
//!   lacks a layer the reader does not hold (it may hold a layer the engine has too: the same writes).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use bytes::{Bytes, BytesMut};

use super::keys::Table;
use super::{Entries, KvEngine, KvRead, KvWrite, StoreError};

const TABLES: usize = Table::ALL.len();

/// A value, or `None` where the key was deleted.
type Value = Option<Bytes>;

/// A batch copies its keys and values into shared chunks of this size rather than allocating each
/// one: a row costs the writer no allocation, and freeing a layer drops a reference per row and a
/// chunk per few dozen rows instead of freeing every key and value. A chunk is freed with the last
/// row in it, so a layer holds at most one chunk more than its rows need.
const CHUNK: usize = 64 << 10;

/// Copies `bytes` into the arena's current chunk, starting a new one when it is full.
fn keep(arena: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if arena.capacity() < bytes.len() {
        *arena = BytesMut::with_capacity(CHUNK.max(bytes.len()));
    }
    arena.extend_from_slice(bytes);
    arena.split().freeze()
}

/// The values a key was given in one layer, oldest first, each with the LSN of its batch. Most keys
/// are written once per layer; that value is kept inline, one allocation fewer for the writer to make
/// and the checkpointer to free for every row.
#[derive(Debug)]
enum Versions {
    One(u64, Value),
    Many(Vec<(u64, Value)>),
}

impl Versions {
    fn push(&mut self, lsn: u64, value: Value) {
        let all = match std::mem::replace(self, Versions::Many(Vec::new())) {
            Versions::One(first_lsn, first) => vec![(first_lsn, first), (lsn, value)],
            Versions::Many(mut all) => {
                all.push((lsn, value));
                all
            }
        };
        *self = Versions::Many(all);
    }

    /// The value as of LSN `at`: the newest version at or before it.
    fn newest(&self, at: u64) -> Option<&Value> {
        match self {
            Versions::One(lsn, value) => (*lsn <= at).then_some(value),
            Versions::Many(all) => all
                .iter()
                .rev()
                .find(|(lsn, _)| *lsn <= at)
                .map(|(_, value)| value),
        }
    }

    fn last(&self) -> Option<&Value> {
        match self {
            Versions::One(_, value) => Some(value),
            Versions::Many(all) => all.last().map(|(_, value)| value),
        }
    }
}

/// Told each write of a batch, in order (the log record is encoded from it).
pub(crate) type OnWrite<'a> = dyn FnMut(Table, &[u8], Option<&[u8]>) + 'a;

/// One layer's writes: per table, key → its versions.
#[derive(Debug, Default)]
pub(crate) struct Layer {
    tables: [BTreeMap<Bytes, Versions>; TABLES],
}

type Shared = Arc<RwLock<Layer>>;

/// The entries of `map` with `from <= key < to`. Only the lower bound is searched for: `range` with
/// both bounds descends the tree twice, comparing keys all the way down for each, and the writer asks
/// most often about ranges that hold nothing (is there an unfinished job of this ordering key?).
fn within<'a, V>(
    map: &'a BTreeMap<Bytes, V>,
    from: &[u8],
    to: Option<&'a [u8]>,
) -> impl Iterator<Item = (&'a Bytes, &'a V)> + 'a {
    map.range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
        .take_while(move |(key, _)| to.is_none_or(|to| key[..] < *to))
}

impl Layer {
    fn get(&self, table: Table, key: &[u8], at: u64) -> Option<&Value> {
        self.tables[table.index()]
            .get(key)
            .and_then(|versions| versions.newest(at))
    }

    fn range<'a>(
        &'a self,
        table: Table,
        from: &'a [u8],
        to: Option<&'a [u8]>,
        at: u64,
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        within(&self.tables[table.index()], from, to).filter_map(move |(key, versions)| {
            versions
                .newest(at)
                .map(|value| (&key[..], value.as_deref()))
        })
    }

    /// Adds a batch's writes; returns how many deleted a key this layer did not have (most likely one
    /// the engine has: a tombstone every scan over it must step over until the next checkpoint).
    fn merge(&mut self, lsn: u64, writes: Scratch) -> usize {
        let mut hiding = 0;
        for (table, writes) in self.tables.iter_mut().zip(writes.tables) {
            for (key, value) in writes {
                match table.entry(key) {
                    Entry::Occupied(mut versions) => versions.get_mut().push(lsn, value),
                    Entry::Vacant(slot) => {
                        hiding += usize::from(value.is_none());
                        slot.insert(Versions::One(lsn, value));
                    }
                }
            }
        }
        hiding
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tables.iter().all(BTreeMap::is_empty)
    }

    /// Writes the layer's newest value of every key into an engine transaction.
    pub(crate) fn write_to(&self, tx: &mut dyn KvWrite) -> Result<(), StoreError> {
        for (table, entries) in Table::ALL.iter().zip(&self.tables) {
            for (key, versions) in entries {
                match versions.last() {
                    Some(Some(value)) => tx.put(*table, key, value)?,
                    Some(None) => tx.delete(*table, key)?,
                    None => {}
                }
            }
        }
        Ok(())
    }
}

fn read(layer: &RwLock<Layer>) -> Result<RwLockReadGuard<'_, Layer>, StoreError> {
    layer.read().map_err(|_| StoreError::Closed)
}

/// The writes of one batch while it runs: the batch reads its own writes, and nothing of it is seen
/// (or kept) unless it succeeds.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    tables: [BTreeMap<Bytes, Value>; TABLES],
}

#[derive(Debug, Clone)]
struct Layers {
    active: Shared,
    frozen: Option<Shared>,
}

/// The layers and how far readers may see into them.
pub(crate) struct Memtable {
    layers: RwLock<Layers>,
    /// LSN of the last batch merged into the active layer.
    visible: AtomicU64,
    /// Deletions in the active layer of keys it did not have.
    hiding: AtomicUsize,
    /// The chunk the writer's batches copy their rows into (see [`CHUNK`]).
    arena: Mutex<BytesMut>,
}

impl fmt::Debug for Memtable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memtable")
            .field("visible", &self.visible.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What one reader sees: its layers, newest first, through LSN `at`.
struct Snapshot {
    layers: Vec<Shared>,
    at: u64,
}

impl Memtable {
    pub(crate) fn new(visible: u64) -> Self {
        Self {
            layers: RwLock::new(Layers {
                active: Shared::default(),
                frozen: None,
            }),
            visible: AtomicU64::new(visible),
            hiding: AtomicUsize::new(0),
            arena: Mutex::new(BytesMut::new()),
        }
    }

    /// Runs `f` over the layers and an engine read transaction, as of the last merged batch (or every
    /// merged batch, `latest`, for the writer, which merges them itself).
    fn with_view(
        &self,
        engine: &dyn KvEngine,
        latest: bool,
        f: &mut dyn FnMut(&View<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut pinned = Some(self.layers.read().map_err(|_| StoreError::Closed)?);
        engine.read(&mut |base| {
            // The engine's transaction is open: the layers may change again.
            let layers = pinned.take().ok_or(StoreError::Closed)?;
            let snapshot = Snapshot {
                layers: std::iter::once(Arc::clone(&layers.active))
                    .chain(layers.frozen.clone())
                    .collect(),
                at: if latest {
                    u64::MAX
                } else {
                    self.visible.load(Ordering::Acquire)
                },
            };
            drop(layers);
            f(&View {
                snapshot: &snapshot,
                base,
            })
        })
    }

    /// A reader's consistent snapshot.
    pub(crate) fn read(
        &self,
        engine: &dyn KvEngine,
        f: &mut super::ReadFn<'_>,
    ) -> Result<(), StoreError> {
        self.with_view(engine, false, &mut |view| f(view))
    }

    /// Runs one batch over the newest state; `record` is told each write in order. Returns the
    /// batch's writes for [`Memtable::merge`], or nothing of them if `f` failed.
    pub(crate) fn batch(
        &self,
        engine: &dyn KvEngine,
        record: &mut OnWrite<'_>,
        f: &mut super::WriteFn<'_>,
    ) -> Result<Scratch, StoreError> {
        let mut scratch = Scratch::default();
        let mut arena = std::mem::take(&mut *self.arena.lock().map_err(|_| StoreError::Closed)?);
        let outcome = self.with_view(engine, true, &mut |view| {
            let mut batch = Batch {
                view,
                scratch: Scratch::default(),
                arena: std::mem::take(&mut arena),
                record: &mut *record,
            };
            let outcome = f(&mut batch);
            arena = batch.arena;
            scratch = batch.scratch;
            outcome
        });
        *self.arena.lock().map_err(|_| StoreError::Closed)? = arena;
        outcome.map(|()| scratch)
    }

    /// Makes a batch's writes visible to readers.
    pub(crate) fn merge(&self, lsn: u64, writes: Scratch) -> Result<(), StoreError> {
        let active = Arc::clone(&self.layers.read().map_err(|_| StoreError::Closed)?.active);
        let hiding = active
            .write()
            .map_err(|_| StoreError::Closed)?
            .merge(lsn, writes);
        self.hiding.fetch_add(hiding, Ordering::Relaxed);
        self.visible.store(lsn, Ordering::Release);
        Ok(())
    }

    /// How many keys of the engine the active layer may hide (see [`Layer::merge`]).
    pub(crate) fn hiding(&self) -> usize {
        self.hiding.load(Ordering::Relaxed)
    }

    /// Freezes the active layer for a checkpoint, unless it is empty. The caller makes sure no
    /// earlier frozen layer is left ([`Memtable::release`] was called for it).
    pub(crate) fn freeze(&self) -> Result<Option<Arc<RwLock<Layer>>>, StoreError> {
        let mut layers = self.layers.write().map_err(|_| StoreError::Closed)?;
        if read(&layers.active)?.is_empty() {
            return Ok(None);
        }
        let frozen = std::mem::take(&mut layers.active);
        layers.frozen = Some(Arc::clone(&frozen));
        self.hiding.store(0, Ordering::Relaxed);
        Ok(Some(frozen))
    }

    /// The frozen layer is in the engine now.
    pub(crate) fn release(&self) -> Result<(), StoreError> {
        self.layers.write().map_err(|_| StoreError::Closed)?.frozen = None;
        Ok(())
    }
}

/// The layers of a snapshot over an engine read transaction.
pub(crate) struct View<'a> {
    snapshot: &'a Snapshot,
    base: &'a dyn KvRead,
}

impl KvRead for View<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        for layer in &self.snapshot.layers {
            if let Some(value) = read(layer)?.get(table, key, self.snapshot.at) {
                return Ok(value.as_deref().map(<[u8]>::to_vec));
            }
        }
        self.base.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.scan_over(None, table, from, to, limit)
    }

    fn any(&self, table: Table, from: &[u8], to: Option<&[u8]>) -> Result<bool, StoreError> {
        self.any_over(None, table, from, to)
    }
}

impl View<'_> {
    /// A scan through `scratch` (a running batch's own writes, newest of all), the layers and the engine.
    fn scan_over(
        &self,
        scratch: Option<&BTreeMap<Bytes, Value>>,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let guards = self
            .snapshot
            .layers
            .iter()
            .map(|layer| read(layer))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sources: Vec<Source<'_>> = Vec::with_capacity(guards.len() + 1);
        if let Some(scratch) = scratch {
            sources.push(Box::new(
                within(scratch, from, to).map(|(key, value)| (&key[..], value.as_deref())),
            ));
        }
        for guard in &guards {
            sources.push(Box::new(guard.range(table, from, to, self.snapshot.at)));
        }
        merge_scan(sources, self.base, table, from, to, limit)
    }

    /// Whether any live entry is in the range, through `scratch`, the layers and the engine, newest
    /// first: a value in one source counts unless a newer one deleted its key. Only the engine's
    /// first entries past those deletions are read, and nothing is merged or collected.
    fn any_over(
        &self,
        scratch: Option<&BTreeMap<Bytes, Value>>,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let mut deleted: Vec<Vec<u8>> = Vec::new();
        let mut seen = |key: &[u8], value: Option<&[u8]>| match value {
            Some(_) => !deleted.iter().any(|d| d.as_slice() == key),
            None => {
                deleted.push(key.to_vec());
                false
            }
        };
        if let Some(scratch) = scratch {
            for (key, value) in within(scratch, from, to) {
                if seen(key, value.as_deref()) {
                    return Ok(true);
                }
            }
        }
        for layer in &self.snapshot.layers {
            for (key, value) in read(layer)?.range(table, from, to, self.snapshot.at) {
                if seen(key, value) {
                    return Ok(true);
                }
            }
        }
        // The engine's first entry not deleted above is live; at most `deleted + 1` are visited.
        let mut live = false;
        self.base.scan_each(table, from, to, &mut |key, _| {
            live = !deleted.iter().any(|d| d.as_slice() == key);
            !live
        })?;
        Ok(live)
    }
}

/// Entries of one layer in key order; `None` values are deletions.
type Source<'a> = Box<dyn Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a>;

/// Merges layers (newest first) over the engine's entries: for each key the newest layer that has it
/// wins, a deletion hides it. The engine's entries are visited in place, as far as `limit` live
/// entries need, and only those returned are copied.
fn merge_scan(
    sources: Vec<Source<'_>>,
    base: &dyn KvRead,
    table: Table,
    from: &[u8],
    to: Option<&[u8]>,
    limit: usize,
) -> Result<Entries, StoreError> {
    let mut sources: Vec<_> = sources.into_iter().map(Iterator::peekable).collect();
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    base.scan_each(table, from, to, &mut |key, value| {
        if merge_layers(&mut sources, Some(key), &mut out, limit) {
            return false;
        }
        // The newest layer that has the engine's key decides; without one, the engine's value stands.
        if let Some(value) = take_newest(&mut sources, key).unwrap_or(Some(value)) {
            out.push((key.to_vec(), value.to_vec()));
        }
        out.len() < limit
    })?;
    if out.len() < limit {
        merge_layers(&mut sources, None, &mut out, limit);
    }
    Ok(out)
}

/// Moves the layers' entries with keys below `below` (all, when None) to `out`, each key once from
/// the newest layer that has it, deletions dropped; true once `out` holds `limit`.
fn merge_layers<'a>(
    sources: &mut [std::iter::Peekable<Source<'a>>],
    below: Option<&[u8]>,
    out: &mut Entries,
    limit: usize,
) -> bool {
    loop {
        if out.len() >= limit {
            return true;
        }
        let mut smallest: Option<&'a [u8]> = None;
        for source in sources.iter_mut() {
            if let Some(&(key, _)) = source.peek()
                && below.is_none_or(|b| key < b)
                && smallest.is_none_or(|s| key < s)
            {
                smallest = Some(key);
            }
        }
        let Some(smallest) = smallest else {
            return false;
        };
        if let Some(Some(value)) = take_newest(sources, smallest) {
            out.push((smallest.to_vec(), value.to_vec()));
        }
    }
}

/// Moves every layer past `key` where it stands next; the newest layer's value (`None`: deleted), or
/// `None` when no layer has the key.
fn take_newest<'a>(
    sources: &mut [std::iter::Peekable<Source<'a>>],
    key: &[u8],
) -> Option<Option<&'a [u8]>> {
    let mut newest = None;
    for source in sources.iter_mut() {
        if source.peek().is_some_and(|(k, _)| *k == key)
            && let Some((_, value)) = source.next()
        {
            newest.get_or_insert(value);
        }
    }
    newest
}

/// A running batch: its own writes over a view of the newest state.
struct Batch<'a, 'v> {
    view: &'a View<'v>,
    scratch: Scratch,
    arena: BytesMut,
    record: &'a mut OnWrite<'a>,
}

impl KvRead for Batch<'_, '_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.scratch.tables[table.index()].get(key) {
            Some(value) => Ok(value.as_deref().map(<[u8]>::to_vec)),
            None => self.view.get(table, key),
        }
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.view.scan_over(
            Some(&self.scratch.tables[table.index()]),
            table,
            from,
            to,
            limit,
        )
    }

    fn any(&self, table: Table, from: &[u8], to: Option<&[u8]>) -> Result<bool, StoreError> {
        self.view
            .any_over(Some(&self.scratch.tables[table.index()]), table, from, to)
    }
}

impl KvWrite for Batch<'_, '_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        (self.record)(table, key, Some(value));
        let (key, value) = (keep(&mut self.arena, key), keep(&mut self.arena, value));
        self.scratch.tables[table.index()].insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        (self.record)(table, key, None);
        let key = keep(&mut self.arena, key);
        self.scratch.tables[table.index()].insert(key, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::kv::redb::RedbEngine;

    fn engine(dir: &std::path::Path) -> RedbEngine {
        RedbEngine::open(&dir.join("queue.redb"), super::super::CACHE_BYTES).expect("redb")
    }

    /// Applies one batch at `lsn` and makes it visible.
    fn batch(
        memtable: &Memtable,
        engine: &RedbEngine,
        lsn: u64,
        f: &mut super::super::WriteFn<'_>,
    ) {
        let writes = memtable.batch(engine, &mut |_, _, _| {}, f).expect("batch");
        memtable.merge(lsn, writes).expect("merge");
    }

    fn key(i: usize) -> Vec<u8> {
        format!("k{i:03}").into_bytes()
    }

    fn keys(entries: &Entries) -> Vec<String> {
        entries
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect()
    }

    #[test]
    fn a_reader_sees_exactly_the_batches_through_the_one_it_started_at() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(dir.path());
        engine
            .write(true, &mut |tx| tx.put(Table::Jobs, b"a", b"0"))
            .expect("base");
        let memtable = Memtable::new(0);
        batch(&memtable, &engine, 1, &mut |tx| {
            tx.put(Table::Jobs, b"a", b"1")
        });
        let mut seen = Vec::new();
        memtable
            .read(&engine, &mut |tx| {
                seen.push(tx.get(Table::Jobs, b"a")?);
                // The writer goes on meanwhile: a change and a new key.
                batch(&memtable, &engine, 2, &mut |tx| {
                    tx.put(Table::Jobs, b"a", b"2")?;
                    tx.put(Table::Jobs, b"b", b"2")
                });
                seen.push(tx.get(Table::Jobs, b"a")?);
                seen.push(tx.get(Table::Jobs, b"b")?);
                seen.push(Some(
                    keys(&tx.scan(Table::Jobs, b"", None, 10)?)
                        .join(",")
                        .into_bytes(),
                ));
                Ok(())
            })
            .expect("read");
        let seen: Vec<_> = seen
            .into_iter()
            .map(|v| v.map(|v| String::from_utf8(v).expect("utf8")))
            .collect();
        assert_eq!(
            seen,
            [Some("1".into()), Some("1".into()), None, Some("a=1".into())],
            "one snapshot throughout"
        );
        let mut after = None;
        memtable
            .read(&engine, &mut |tx| {
                after = tx.get(Table::Jobs, b"a")?;
                Ok(())
            })
            .expect("read");
        assert_eq!(after.as_deref(), Some(&b"2"[..]), "a new reader sees it");
    }

    #[test]
    fn scans_take_each_key_from_the_newest_layer_and_deletions_hide_what_is_below() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(dir.path());
        // The engine holds k000..k399.
        engine
            .write(true, &mut |tx| {
                for i in 0..400 {
                    tx.put(Table::Jobs, &key(i), b"e")?;
                }
                Ok(())
            })
            .expect("base");
        let memtable = Memtable::new(0);
        // Frozen: k001 deleted, k005 = f.
        batch(&memtable, &engine, 1, &mut |tx| {
            tx.delete(Table::Jobs, &key(1))?;
            tx.put(Table::Jobs, &key(5), b"f")
        });
        assert!(memtable.freeze().expect("freeze").is_some());
        // Active: k005 = a, k002 deleted, k400 new; then 300 deletions in a row (more than a page
        // of the engine's entries).
        batch(&memtable, &engine, 2, &mut |tx| {
            tx.put(Table::Jobs, &key(5), b"a")?;
            tx.delete(Table::Jobs, &key(2))?;
            tx.put(Table::Jobs, &key(400), b"a")?;
            for i in 10..310 {
                tx.delete(Table::Jobs, &key(i))?;
            }
            Ok(())
        });
        let mut scans = Vec::new();
        let writes = memtable
            .batch(&engine, &mut |_, _, _| {}, &mut |tx| {
                // The batch's own writes are newest of all.
                tx.delete(Table::Jobs, &key(0))?;
                tx.put(Table::Jobs, &key(3), b"s")?;
                scans.push(keys(&tx.scan(Table::Jobs, &key(0), None, 5)?));
                scans.push(keys(&tx.scan(Table::Jobs, &key(8), None, 3)?));
                scans.push(keys(&tx.scan(Table::Jobs, &key(398), None, 10)?));
                scans.push(keys(&tx.scan(Table::Jobs, &key(3), Some(&key(6)), 10)?));
                // `any` agrees with the merged scan: for each key alone, and across runs of
                // deletions in every source (k010..k309 are all deleted: none there).
                let mut ranges: Vec<_> = (0..=401).map(|i| (key(i), key(i + 1))).collect();
                ranges.extend(
                    [(0, 3), (0, 2), (10, 310), (9, 311), (10, 311), (401, 500)]
                        .map(|(a, b)| (key(a), key(b))),
                );
                for (from, to) in &ranges {
                    let any = tx.any(Table::Jobs, from, Some(to))?;
                    let first = tx.scan(Table::Jobs, from, Some(to), 1)?;
                    assert_eq!(any, !first.is_empty(), "{from:?}..{to:?}");
                }
                assert!(!tx.any(Table::Jobs, &key(10), Some(&key(310)))?);
                assert!(tx.any(Table::Jobs, &key(300), Some(&key(311)))?);
                Ok(())
            })
            .expect("batch");
        assert_eq!(
            scans,
            [
                vec!["k003=s", "k004=e", "k005=a", "k006=e", "k007=e"],
                vec!["k008=e", "k009=e", "k310=e"],
                vec!["k398=e", "k399=e", "k400=a"],
                vec!["k003=s", "k004=e", "k005=a"],
            ]
        );
        drop(writes);
        // A reader does not see the batch that was never merged.
        let mut seen = Vec::new();
        memtable
            .read(&engine, &mut |tx| {
                seen = keys(&tx.scan(Table::Jobs, b"", None, 3)?);
                Ok(())
            })
            .expect("read");
        assert_eq!(seen, ["k000=e", "k003=e", "k004=e"]);
    }

    #[test]
    fn a_frozen_layer_written_to_the_engine_reads_the_same_and_is_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(dir.path());
        let memtable = Memtable::new(0);
        batch(&memtable, &engine, 1, &mut |tx| {
            tx.put(Table::Jobs, b"a", b"1")?;
            tx.put(Table::Ready, b"r", b"1")
        });
        batch(&memtable, &engine, 2, &mut |tx| {
            tx.put(Table::Jobs, b"a", b"2")?;
            tx.delete(Table::Ready, b"r")
        });
        let frozen = memtable.freeze().expect("freeze").expect("a layer");
        assert!(memtable.freeze().expect("freeze").is_none(), "nothing new");
        engine
            .write(true, &mut |tx| frozen.read().expect("lock").write_to(tx))
            .expect("checkpoint");
        memtable.release().expect("release");
        let mut seen = (None, None);
        memtable
            .read(&engine, &mut |tx| {
                seen = (tx.get(Table::Jobs, b"a")?, tx.get(Table::Ready, b"r")?);
                Ok(())
            })
            .expect("read");
        assert_eq!(seen, (Some(b"2".to_vec()), None), "the newest of each key");
    }
}
