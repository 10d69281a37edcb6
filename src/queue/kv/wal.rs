//! The write-ahead log in front of the engine: what makes an acknowledged write durable.
//!
//! A durable engine commit costs redb several scattered page writes and fsyncs (about 1 ms here); a
//! sequential append to a preallocated file and one `fdatasync` cost a fifth of that. So every batch
//! is applied to the engine *without* waiting for its disk, and the keys and values it wrote are
//! appended to `queue.wal` as one checksummed record; a batch that needs durability is answered after
//! that record's `fdatasync`, which the store's syncer thread runs ([`Flush`]) while the writer applies
//! the next batch. Every so often (every [`CHECKPOINT_EVERY`] under load, when the log is full, and at
//! close) the engine commits durably — a *checkpoint* — and the log starts again from its beginning.
//!
//! # Invariants
//! - Each batch's engine transaction also writes its log sequence number (LSN) under `wal_lsn` in
//!   `Meta`, so the engine always knows which batches it holds, whatever prefix of its own
//!   non-durable commits survived a crash (redb keeps the last durable commit; sled a prefix).
//! - A record is a batch's *absolute* writes (put key = value, delete key), in order: replaying it
//!   over a state that already holds it changes nothing, so recovery may replay from any earlier point.
//! - Records of the current cycle are contiguous from offset 0 with LSNs `checkpoint + 1, + 2, …`;
//!   anything after them is older (LSN ≤ the checkpoint) or a torn tail (bad checksum): reading stops
//!   at the first record that is neither the next LSN nor already applied.
//! - Opening replays every record with an LSN above the engine's, then checkpoints; only then is the
//!   store usable. After a write error on the log the store refuses further writes (fail-stop), since
//!   whether the disk holds the record is unknown.
//!
//! Record layout: `[len u32][crc32 u32][lsn u64][count u32]` then per write
//! `[table u8][op u8 (0 put, 1 delete)][key len u32][key]([value len u32][value])`, little-endian; `len`
//! and the checksum cover everything after the checksum.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::keys::Table;
use super::{Entries, KvEngine, KvRead, KvWrite, ReadFn, StoreError, WriteFn};

pub(crate) const WAL_FILE: &str = "queue.wal";
/// Where the engine keeps the LSN of the last batch it holds.
pub(crate) const WAL_LSN_KEY: &[u8] = b"wal_lsn";
/// Size of the log: a checkpoint comes when it is full. Bounds replay at open to this many bytes.
pub(crate) const CAPACITY: u64 = 8 << 20;
/// A durable batch this long after the last checkpoint checkpoints instead of syncing the log. The
/// engine's durable commit then writes the pages dirtied since — a few milliseconds' worth — rather than
/// those of a whole full log, which stalled every caller for hundreds of milliseconds at once. Measured
/// with 64 producers (docs/BENCHMARKS.md): 100 ms rewrote the same hot index pages ten times a second;
/// 400 ms gave more throughput and a lower p99; 1 s gave neither more.
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(400);
const HEADER: usize = 8;

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(format!("{}: {e}", path.display()))
}

#[derive(Debug)]
struct Log {
    file: File,
    /// Where the next record goes.
    offset: u64,
    /// LSN of the last batch applied to the engine.
    lsn: u64,
    capacity: u64,
    buf: Vec<u8>,
    last_checkpoint: std::time::Instant,
    checkpoint_every: std::time::Duration,
}

#[derive(Debug)]
pub(crate) struct WalEngine {
    inner: Arc<dyn KvEngine>,
    log: Mutex<Log>,
    sync: Arc<LogSync>,
}

/// The log's durability, shared between the writer, which appends records, and whoever finishes a
/// [`Flush`] — the store's syncer thread, so that the writer applies the next batch while the disk
/// syncs the previous one.
#[derive(Debug)]
pub(crate) struct LogSync {
    /// A second handle on the log file.
    file: File,
    path: PathBuf,
    /// LSN of the last record written to the file, or held durably by the engine after a checkpoint.
    appended: AtomicU64,
    /// Every batch through this LSN is durable.
    synced: AtomicU64,
    /// One `fdatasync` at a time: a caller waiting here usually finds its LSN covered by the one ahead.
    syncing: Mutex<()>,
    /// Set after a failed write or sync of the log: the store takes no more writes (fail-stop).
    failed: Mutex<Option<String>>,
}

impl LogSync {
    fn check(&self) -> Result<(), StoreError> {
        match self.failed.lock().map_err(|_| StoreError::Closed)?.as_ref() {
            Some(reason) => Err(StoreError::Io(format!(
                "the write-ahead log failed earlier ({reason}); restart to recover"
            ))),
            None => Ok(()),
        }
    }

    fn fail(&self, error: std::io::Error) -> StoreError {
        if let Ok(mut failed) = self.failed.lock() {
            failed.get_or_insert_with(|| error.to_string());
        }
        io(&self.path)(error)
    }

    /// Makes every batch through `lsn` durable. One `fdatasync` covers every record written before
    /// it starts, so concurrent and later callers share it.
    pub(crate) fn sync_through(&self, lsn: u64) -> Result<(), StoreError> {
        if self.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let _one = self.syncing.lock().map_err(|_| StoreError::Closed)?;
        if self.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        self.check()?;
        let through = self.appended.load(Ordering::Acquire);
        self.file.sync_data().map_err(|e| self.fail(e))?;
        self.synced.fetch_max(through, Ordering::AcqRel);
        Ok(())
    }

    /// Every batch through this LSN is known durable.
    #[cfg(test)]
    pub(crate) fn synced_through(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// The engine committed durably everything through `lsn` (a checkpoint).
    fn held_by_engine(&self, lsn: u64) {
        self.appended.fetch_max(lsn, Ordering::AcqRel);
        self.synced.fetch_max(lsn, Ordering::AcqRel);
    }
}

/// What a commit still needs before it is durable. Flushes of one store are finished in commit order;
/// finishing a later one finishes every earlier one too.
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct Flush(Option<(Arc<LogSync>, u64)>);

impl Flush {
    /// Nothing left to do: the commit is durable, or was not asked to be.
    pub(crate) fn done() -> Self {
        Self(None)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.0.is_none()
    }

    /// A flush through `lsn` over `file`, as if every record through `lsn` had been written to it.
    #[cfg(test)]
    pub(crate) fn over(file: File, path: &Path, lsn: u64) -> (Self, Arc<LogSync>) {
        let sync = Arc::new(LogSync {
            file,
            path: path.to_owned(),
            appended: AtomicU64::new(lsn),
            synced: AtomicU64::new(0),
            syncing: Mutex::new(()),
            failed: Mutex::new(None),
        });
        (Self(Some((Arc::clone(&sync), lsn))), sync)
    }

    /// Waits until the commit is durable (an `fdatasync` of the log, unless one already covered it).
    pub(crate) fn finish(self) -> Result<(), StoreError> {
        match self.0 {
            Some((sync, lsn)) => sync.sync_through(lsn),
            None => Ok(()),
        }
    }
}

/// Records the writes of a transaction on their way to the engine, encoding each straight into the
/// log record.
struct Recorder<'a> {
    tx: &'a mut dyn KvWrite,
    record: &'a mut Vec<u8>,
    count: &'a mut u32,
}

impl KvRead for Recorder<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tx.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.tx.scan(table, from, to, limit)
    }
}

impl KvWrite for Recorder<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tx.put(table, key, value)?;
        encode_write(self.record, table, key, Some(value));
        *self.count += 1;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.tx.delete(table, key)?;
        encode_write(self.record, table, key, None);
        *self.count += 1;
        Ok(())
    }
}

fn table_index(table: Table) -> u8 {
    Table::ALL.iter().position(|t| *t == table).unwrap_or(0) as u8
}

/// One write of a batch, as read back from the log.
type Logged = (Table, Vec<u8>, Option<Vec<u8>>);

/// Starts a record in `buf`: header and count are filled in by [`end_record`].
fn begin_record(buf: &mut Vec<u8>, lsn: u64) {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
}

fn encode_write(buf: &mut Vec<u8>, table: Table, key: &[u8], value: Option<&[u8]>) {
    buf.push(table_index(table));
    buf.push(u8::from(value.is_none()));
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    if let Some(value) = value {
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(value);
    }
}

fn end_record(buf: &mut [u8], count: u32) {
    buf[HEADER + 8..HEADER + 12].copy_from_slice(&count.to_le_bytes());
    let body_len = (buf.len() - HEADER) as u32;
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[..4].copy_from_slice(&body_len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
fn encode(buf: &mut Vec<u8>, lsn: u64, writes: &[Logged]) {
    begin_record(buf, lsn);
    for (table, key, value) in writes {
        encode_write(buf, *table, key, value.as_deref());
    }
    end_record(buf, writes.len() as u32);
}

/// A record read back: its LSN, writes, and length in the file.
struct Decoded {
    lsn: u64,
    writes: Vec<Logged>,
    len: u64,
}

/// Reads the record at the start of `bytes`; `None` for zeros, a torn or corrupt record.
fn decode(bytes: &[u8]) -> Option<Decoded> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len < 12 {
        return None;
    }
    let body = bytes.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut r = Reader { bytes: body };
    let lsn = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let count = r.u32()? as usize;
    let mut writes = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let table = *Table::ALL.get(r.take(1)?[0] as usize)?;
        let delete = r.take(1)?[0] == 1;
        let key_len = r.u32()? as usize;
        let key = r.take(key_len)?.to_vec();
        let value = if delete {
            None
        } else {
            let value_len = r.u32()? as usize;
            Some(r.take(value_len)?.to_vec())
        };
        writes.push((table, key, value));
    }
    Some(Decoded {
        lsn,
        writes,
        len: (HEADER + len) as u64,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The LSN the engine holds (0 for a store that never had a log).
fn engine_lsn(engine: &dyn KvEngine) -> Result<u64, StoreError> {
    let mut lsn = 0;
    engine.read(&mut |tx| {
        if let Some(bytes) = tx.get(Table::Meta, WAL_LSN_KEY)? {
            lsn = bytes
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("wal_lsn".into()))?;
        }
        Ok(())
    })?;
    Ok(lsn)
}

/// The records of the current cycle the engine does not hold yet, in order.
fn unapplied(bytes: &[u8], applied: u64) -> Vec<Decoded> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut expected = applied + 1;
    while let Some(record) = bytes.get(pos..).and_then(decode) {
        pos += record.len as usize;
        if record.lsn <= applied {
            continue;
        }
        if record.lsn != expected {
            break;
        }
        expected += 1;
        out.push(record);
    }
    out
}

/// How many logged batches a stopped store's engine does not hold yet (for read-only tools, which do
/// not replay).
pub(crate) fn pending(dir: &Path, engine: &dyn KvEngine) -> Result<usize, StoreError> {
    let path = dir.join(WAL_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(&path)(e)),
    };
    Ok(unapplied(&bytes, engine_lsn(engine)?).len())
}

impl WalEngine {
    /// Opens (creating and preallocating) the log in `dir`, replays what the engine lacks, and
    /// checkpoints.
    pub(crate) fn open(inner: Arc<dyn KvEngine>, dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(inner, dir, CAPACITY, CHECKPOINT_EVERY)
    }

    pub(crate) fn open_with(
        inner: Arc<dyn KvEngine>,
        dir: &Path,
        capacity: u64,
        checkpoint_every: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let path = dir.join(WAL_FILE);
        let err = io(&path);
        let existed = path.exists();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(&err)?;
        let applied = engine_lsn(inner.as_ref())?;
        let bytes = std::fs::read(&path).map_err(&err)?;
        let replay = unapplied(&bytes, applied);
        let mut lsn = applied;
        if !replay.is_empty() {
            let records = replay.len();
            inner.write(false, &mut |tx| {
                for record in &replay {
                    for (table, key, value) in &record.writes {
                        match value {
                            Some(value) => tx.put(*table, key, value)?,
                            None => tx.delete(*table, key)?,
                        }
                    }
                }
                Ok(())
            })?;
            lsn = replay.last().map_or(applied, |r| r.lsn);
            tracing::info!(
                records,
                through = lsn,
                "replayed the write-ahead log into the store"
            );
        }
        // Checkpoint: the engine holds everything durably, the log can start again from offset 0.
        inner.write(true, &mut |tx| {
            tx.put(Table::Meta, WAL_LSN_KEY, &lsn.to_be_bytes())
        })?;
        // Written zeros, not a sparse file: overwriting allocated blocks keeps `fdatasync` to the data.
        let len = file.metadata().map_err(&err)?.len();
        if len < capacity {
            file.set_len(0).map_err(&err)?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = capacity;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n]).map_err(&err)?;
                left -= n as u64;
            }
            file.sync_all().map_err(&err)?;
            if !existed && let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let sync = Arc::new(LogSync {
            file: file.try_clone().map_err(&err)?,
            path: path.clone(),
            appended: AtomicU64::new(lsn),
            synced: AtomicU64::new(lsn),
            syncing: Mutex::new(()),
            failed: Mutex::new(None),
        });
        drop(err);
        Ok(Self {
            inner,
            log: Mutex::new(Log {
                file,
                offset: 0,
                lsn,
                capacity,
                buf: Vec::with_capacity(64 << 10),
                last_checkpoint: std::time::Instant::now(),
                checkpoint_every,
            }),
            sync,
        })
    }

    fn checkpoint(&self, log: &mut Log) -> Result<(), StoreError> {
        let lsn = log.lsn;
        self.inner.write(true, &mut |tx| {
            tx.put(Table::Meta, WAL_LSN_KEY, &lsn.to_be_bytes())
        })?;
        self.sync.held_by_engine(lsn);
        log.offset = 0;
        log.last_checkpoint = std::time::Instant::now();
        Ok(())
    }
}

impl KvEngine for WalEngine {
    fn write(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<(), StoreError> {
        self.write_deferred(durable, f)?.finish()
    }

    fn defers_sync(&self) -> bool {
        true
    }

    /// Applies the batch to the engine and writes its record, without waiting for the disk: a
    /// durable batch comes back with the [`Flush`] that syncs the log through its LSN.
    fn write_deferred(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<Flush, StoreError> {
        let mut log = self.log.lock().map_err(|_| StoreError::Closed)?;
        self.sync.check()?;
        let log = &mut *log;
        let lsn = log.lsn + 1;
        let mut count = 0u32;
        let record = &mut log.buf;
        self.inner.write(false, &mut |tx| {
            begin_record(record, lsn);
            count = 0;
            let mut recorder = Recorder {
                tx,
                record,
                count: &mut count,
            };
            f(&mut recorder)?;
            if count > 0 {
                tx.put(Table::Meta, WAL_LSN_KEY, &lsn.to_be_bytes())?;
            }
            Ok(())
        })?;
        let through = |lsn| {
            if durable {
                Flush(Some((Arc::clone(&self.sync), lsn)))
            } else {
                Flush::done()
            }
        };
        if count == 0 {
            // Nothing of its own; a durable answer must still cover earlier non-durable batches,
            // which are in the log already.
            return Ok(through(log.lsn));
        }
        log.lsn = lsn;
        end_record(&mut log.buf, count);
        let len = log.buf.len() as u64;
        if log.offset + len > log.capacity
            || (durable && log.last_checkpoint.elapsed() >= log.checkpoint_every)
        {
            // No room, or time for a small checkpoint: a durable engine commit holds this batch and
            // every earlier one, so its record need not be written.
            self.checkpoint(log)?;
            return Ok(Flush::done());
        }
        if let Err(e) = log.file.write_all_at(&log.buf, log.offset) {
            return Err(self.sync.fail(e));
        }
        log.offset += len;
        self.sync.appended.store(lsn, Ordering::Release);
        Ok(through(lsn))
    }

    fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError> {
        self.inner.read(f)
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk() + std::fs::metadata(&self.sync.path).map_or(0, |m| m.len())
    }
}

impl Drop for WalEngine {
    /// A clean close leaves nothing to replay.
    fn drop(&mut self) {
        if let Ok(mut log) = self.log.lock()
            && self.sync.check().is_ok()
            && log.offset > 0
        {
            let log = &mut *log;
            if let Err(e) = self.checkpoint(log) {
                tracing::warn!(error = %e, "checkpoint at close failed; the log will be replayed at open");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Tables = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

    /// Tests that need records in the log turn the timed checkpoint off (a slow machine would
    /// otherwise checkpoint them away).
    const NEVER: std::time::Duration = std::time::Duration::from_secs(3600);

    /// An engine that forgets non-durable commits at a "crash": `durable` is what a power cut or
    /// kill -9 leaves (redb's behaviour), `live` what readers see.
    #[derive(Debug, Default)]
    struct Volatile {
        live: Mutex<Tables>,
        durable: Mutex<Tables>,
    }

    impl Volatile {
        fn after_crash(&self) -> Arc<Volatile> {
            let durable = self.durable.lock().expect("lock").clone();
            Arc::new(Volatile {
                live: Mutex::new(durable.clone()),
                durable: Mutex::new(durable),
            })
        }

        fn get(&self, table: Table, key: &[u8]) -> Option<Vec<u8>> {
            let live = self.live.lock().expect("lock");
            live.get(&(table_index(table), key.to_vec())).cloned()
        }
    }

    struct Tx<'a> {
        tables: &'a mut Tables,
    }

    impl KvRead for Tx<'_> {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self
                .tables
                .get(&(table_index(table), key.to_vec()))
                .cloned())
        }

        fn scan(
            &self,
            _: Table,
            _: &[u8],
            _: Option<&[u8]>,
            _: usize,
        ) -> Result<Entries, StoreError> {
            Ok(Vec::new())
        }
    }

    impl KvWrite for Tx<'_> {
        fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
            self.tables
                .insert((table_index(table), key.to_vec()), value.to_vec());
            Ok(())
        }

        fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
            self.tables.remove(&(table_index(table), key.to_vec()));
            Ok(())
        }
    }

    impl KvEngine for Volatile {
        fn write(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<(), StoreError> {
            let mut live = self.live.lock().expect("lock");
            let mut draft = live.clone();
            f(&mut Tx { tables: &mut draft })?;
            *live = draft;
            if durable {
                *self.durable.lock().expect("lock") = live.clone();
            }
            Ok(())
        }

        fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError> {
            let mut live = self.live.lock().expect("lock").clone();
            f(&Tx { tables: &mut live })
        }

        fn size_on_disk(&self) -> u64 {
            0
        }
    }

    fn put(wal: &WalEngine, durable: bool, key: &str, value: &str) {
        wal.write(durable, &mut |tx| {
            tx.put(Table::Jobs, key.as_bytes(), value.as_bytes())
        })
        .expect("write");
    }

    fn delete(wal: &WalEngine, key: &str) {
        wal.write(true, &mut |tx| tx.delete(Table::Jobs, key.as_bytes()))
            .expect("write");
    }

    fn value(engine: &Volatile, key: &str) -> Option<String> {
        engine
            .get(Table::Jobs, key.as_bytes())
            .map(|v| String::from_utf8(v).expect("utf8"))
    }

    /// Kills the "process": the engine keeps only its durable state, the log file stays as written.
    fn crash(wal: WalEngine, engine: &Volatile) -> Arc<Volatile> {
        std::mem::forget(wal);
        engine.after_crash()
    }

    #[test]
    fn what_the_engine_lost_in_a_crash_comes_back_from_the_log_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Volatile::default());
        let wal = WalEngine::open_with(engine.clone(), dir.path(), CAPACITY, NEVER).expect("open");
        put(&wal, true, "a", "1");
        put(&wal, true, "b", "1");
        put(&wal, false, "a", "2");
        delete(&wal, "b");
        put(&wal, true, "c", "1");
        assert_eq!(
            value(&engine.after_crash(), "a"),
            None,
            "the engine alone lost it all"
        );

        let survivor = crash(wal, &engine);
        let wal =
            WalEngine::open_with(survivor.clone(), dir.path(), CAPACITY, NEVER).expect("recover");
        assert_eq!(value(&survivor, "a").as_deref(), Some("2"));
        assert_eq!(
            value(&survivor, "b"),
            None,
            "the delete replayed after the put"
        );
        assert_eq!(value(&survivor, "c").as_deref(), Some("1"));

        // After the recovery's checkpoint, a second crash loses nothing either.
        put(&wal, true, "d", "1");
        let survivor = crash(wal, &survivor);
        WalEngine::open_with(survivor.clone(), dir.path(), CAPACITY, NEVER).expect("recover again");
        for (key, expected) in [
            ("a", Some("2")),
            ("b", None),
            ("c", Some("1")),
            ("d", Some("1")),
        ] {
            assert_eq!(value(&survivor, key).as_deref(), expected, "{key}");
        }
    }

    #[test]
    fn a_reader_that_does_not_replay_is_told_how_many_batches_it_cannot_see() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Volatile::default());
        let wal = WalEngine::open_with(engine.clone(), dir.path(), CAPACITY, NEVER).expect("open");
        put(&wal, true, "a", "1");
        put(&wal, true, "b", "1");
        let survivor = crash(wal, &engine);
        assert_eq!(pending(dir.path(), survivor.as_ref()).expect("pending"), 2);
        WalEngine::open_with(survivor.clone(), dir.path(), CAPACITY, NEVER).expect("recover");
        assert_eq!(pending(dir.path(), survivor.as_ref()).expect("pending"), 0);
    }

    #[test]
    fn a_full_log_checkpoints_and_starts_again_and_recovery_ignores_the_older_cycle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Volatile::default());
        // Room for a few records only: writes wrap around many times.
        let wal = WalEngine::open_with(engine.clone(), dir.path(), 256, NEVER).expect("open");
        for i in 0..100 {
            put(&wal, true, &format!("k{}", i % 7), &format!("v{i}"));
        }
        let survivor = crash(wal, &engine);
        WalEngine::open_with(survivor.clone(), dir.path(), 256, NEVER).expect("recover");
        for k in 0..7 {
            let last = (0..100).rev().find(|i| i % 7 == k).expect("some");
            assert_eq!(
                value(&survivor, &format!("k{k}")),
                Some(format!("v{last}")),
                "k{k}"
            );
        }
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_replay_and_earlier_records_still_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Volatile::default());
        let wal = WalEngine::open_with(engine.clone(), dir.path(), CAPACITY, NEVER).expect("open");
        put(&wal, true, "a", "1");
        put(&wal, true, "b", "1");
        let second = {
            let log = wal.log.lock().expect("lock");
            log.offset
        };
        put(&wal, true, "c", "1");
        let survivor = crash(wal, &engine);
        // Flip a byte inside the third record, as a torn write would leave it.
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[second as usize + 20] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        WalEngine::open_with(survivor.clone(), dir.path(), CAPACITY, NEVER).expect("recover");
        assert_eq!(value(&survivor, "a").as_deref(), Some("1"));
        assert_eq!(value(&survivor, "b").as_deref(), Some("1"));
        assert_eq!(
            value(&survivor, "c"),
            None,
            "the corrupt record is not applied"
        );
    }

    #[test]
    fn records_round_trip_and_reading_stops_at_gaps_and_garbage() {
        let mut buf = Vec::new();
        let writes = vec![
            (Table::Jobs, b"k".to_vec(), Some(b"v".to_vec())),
            (Table::Ready, b"r".to_vec(), None),
        ];
        let mut file = Vec::new();
        for lsn in [6, 7, 3, 9] {
            encode(&mut buf, lsn, &writes);
            file.extend_from_slice(&buf);
        }
        file.extend_from_slice(&[0xAB; 40]);
        let decoded = decode(&file).expect("first record");
        assert_eq!((decoded.lsn, decoded.writes), (6, writes.clone()));
        // Applied through 5: 6 and 7 are next, 3 is an older cycle's, 9 is not the next one.
        let lsns: Vec<u64> = unapplied(&file, 5).iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, [6, 7]);
        assert!(unapplied(&file, 7).is_empty());
        assert!(decode(&file[..buf.len() - 1]).is_none(), "truncated");
        assert!(decode(&[0; 64]).is_none(), "zeros");
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    #[test]
    fn a_durable_batch_after_the_interval_checkpoints_instead_of_logging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine: Arc<dyn KvEngine> = Arc::new(
            super::super::redb::RedbEngine::open(&dir.path().join("queue.redb")).expect("redb"),
        );
        let wal = WalEngine::open_with(engine, dir.path(), CAPACITY, std::time::Duration::ZERO)
            .expect("open");
        wal.write(true, &mut |tx| tx.put(Table::Jobs, b"k", b"v"))
            .expect("write");
        let log = wal.log.lock().expect("lock");
        assert_eq!(log.offset, 0, "checkpointed: nothing left in the log");
        assert_eq!(log.lsn, 1);
        assert_eq!(
            wal.sync.synced.load(Ordering::Acquire),
            1,
            "the checkpoint made it durable"
        );
    }

    fn open_never(dir: &Path) -> WalEngine {
        let engine: Arc<dyn KvEngine> =
            Arc::new(super::super::redb::RedbEngine::open(&dir.join("queue.redb")).expect("redb"));
        WalEngine::open_with(engine, dir, CAPACITY, std::time::Duration::from_secs(3600))
            .expect("open")
    }

    #[test]
    fn a_durable_batch_is_durable_only_once_its_flush_is_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open_never(dir.path());
        let lazy = wal
            .write_deferred(false, &mut |tx| tx.put(Table::Jobs, b"a", b"1"))
            .expect("write");
        assert!(
            lazy.is_done(),
            "a non-durable batch has nothing to wait for"
        );
        let flush = wal
            .write_deferred(true, &mut |tx| tx.put(Table::Jobs, b"b", b"2"))
            .expect("write");
        assert!(!flush.is_done());
        assert_eq!(wal.sync.appended.load(Ordering::Acquire), 2);
        assert_eq!(wal.sync.synced.load(Ordering::Acquire), 0, "not synced yet");
        // A batch with no writes of its own still waits for the ones before it.
        let empty = wal.write_deferred(true, &mut |_| Ok(())).expect("write");
        assert!(!empty.is_done());
        flush.finish().expect("sync");
        assert_eq!(wal.sync.synced.load(Ordering::Acquire), 2);
        empty.finish().expect("already covered");
    }

    #[test]
    fn after_a_failed_log_the_store_takes_no_more_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open_never(dir.path());
        let _ = wal.sync.fail(std::io::Error::other("disk gone"));
        let refused = wal.write_deferred(true, &mut |tx| tx.put(Table::Jobs, b"a", b"1"));
        assert!(
            matches!(&refused, Err(StoreError::Io(m)) if m.contains("disk gone")),
            "{refused:?}"
        );
    }
}
