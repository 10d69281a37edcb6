//! The write-ahead log in front of the engine: what makes an acknowledged write durable.
//!
//! A durable engine commit costs redb several scattered page writes and fsyncs (about 1 ms here), and
//! even a non-durable one copies and checksums every B-tree page it touches; a sequential append to a
//! preallocated file and one `fdatasync` cost a fraction of that. So a batch is not applied to the
//! engine at all: its keys and values are appended to the log as one checksummed record and merged
//! into the in-memory layer of [`memtable`](super::memtable), where readers see them; a batch that
//! needs durability is answered after that record's `fdatasync`, which the store's syncer thread runs
//! ([`Flush`]) while the writer goes on. Every [`CHECKPOINT_EVERY`] (or when a log file is half full)
//! the writer *freezes* the layer and moves to the other of the two log files; the checkpointer thread
//! commits the frozen layer to the engine durably — a *checkpoint* — and drops it.
//!
//! # Invariants
//! - A checkpoint writes, with the layer, the LSN of its last batch under `wal_lsn` in `Meta`, in the
//!   same durable commit: the engine always knows which batches it holds.
//! - A record is a batch's *absolute* writes (put key = value, delete key), in order: replaying it
//!   over a state that already holds it changes nothing, so recovery may replay from any earlier point.
//! - Each log file holds, from offset 0, records with consecutive LSNs; anything after them is older
//!   (an earlier use of the file) or a torn tail (bad checksum). The writer moves to the other file only
//!   after every record in this one is synced and the other file's records are in the engine (the
//!   previous checkpoint finished), so the records the engine lacks are always in the two files, and
//!   recovery takes them in LSN order from the engine's `wal_lsn + 1` while they are consecutive.
//! - Opening replays every record with an LSN above the engine's, then checkpoints; only then is the
//!   store usable. After a write error on the log, or a failed checkpoint, the store refuses further
//!   writes (fail-stop), since what the disk holds is unknown.
//!
//! Record layout: `[len u32][crc32 u32][lsn u64][count u32]` then per write
//! `[table u8][op u8 (0 put, 1 delete)][key len u32][key]([value len u32][value])`, little-endian; `len`
//! and the checksum cover everything after the checksum.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use super::keys::Table;
use super::memtable::{Layer, Memtable};
use super::{KvEngine, ReadFn, StoreError, WriteFn};
use crate::queue::cursor::{Cursor, put_sized};

/// The two log files; the writer moves from one to the other at each checkpoint.
pub(crate) const WAL_FILES: [&str; 2] = ["queue.wal", "queue.1.wal"];
#[cfg(test)]
pub(crate) const WAL_FILE: &str = WAL_FILES[0];
/// Where the engine keeps the LSN of the last batch it holds.
pub(crate) const WAL_LSN_KEY: &[u8] = b"wal_lsn";
/// Size of each log file. A checkpoint starts when the current one is half full, at the latest, and
/// the writer waits for it only if the file fills before it ends. Bounds replay at open.
pub(crate) const CAPACITY: u64 = 8 << 20;
/// How often the writes in memory go to the engine. Each checkpoint rewrites the engine pages the
/// writes since the last one touched; more often rewrites the same hot index pages more times, less
/// often holds more in memory and in the log. Measured with 64 producers (docs/BENCHMARKS.md).
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(400);
/// A checkpoint comes sooner when the writes in memory delete this many keys the engine has: every
/// scan over such a key reads it from the engine and steps over it (leasing from a drained backlog
/// would otherwise read thousands of them per lease). Measured: lease+complete 28–30k jobs/s with
/// 2,048, 33k with 512, 24–27k with none; the million-job drain 17.2k events/s with 2,048, 18.7k with
/// 512 (docs/BENCHMARKS.md).
const HIDING_PER_CHECKPOINT: usize = 512;
/// The checkpointer looks for writes left in memory at most this often.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_millis(10);
const HEADER: usize = 8;

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(format!("{}: {e}", path.display()))
}

#[derive(Debug)]
struct Log {
    files: [File; 2],
    /// The file records go to.
    current: usize,
    /// Where the next record goes.
    offset: u64,
    /// LSN of the last batch.
    lsn: u64,
    capacity: u64,
    buf: Vec<u8>,
    last_freeze: std::time::Instant,
}

/// The checkpointer's work: a frozen layer and the LSN of its last batch.
#[derive(Debug, Default)]
struct Checkpoints {
    pending: Option<(Arc<RwLock<Layer>>, u64)>,
    /// A layer is frozen and not yet in the engine.
    busy: bool,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    inner: Arc<dyn KvEngine>,
    log: Mutex<Log>,
    sync: Arc<LogSync>,
    memtable: Memtable,
    /// Lock order: `log` before `checkpoints`.
    checkpoints: Mutex<Checkpoints>,
    changed: Condvar,
    checkpoint_every: std::time::Duration,
}

#[derive(Debug)]
pub(crate) struct WalEngine {
    shared: Arc<Shared>,
    checkpointer: Option<JoinHandle<()>>,
}

/// The log's durability, shared between the writer, which appends records, and whoever finishes a
/// [`Flush`] — the store's syncer thread, so that the writer applies the next batch while the disk
/// syncs the previous one.
#[derive(Debug)]
pub(crate) struct LogSync {
    path: PathBuf,
    /// LSN of the last record written to the log, or held durably by the engine after a checkpoint.
    appended: AtomicU64,
    /// Every batch through this LSN is durable.
    synced: AtomicU64,
    /// The file records go to. One `fdatasync` at a time: a caller waiting here usually finds its LSN
    /// covered by the one ahead.
    syncing: Mutex<File>,
    /// Set after a failed write or sync of the log, or a failed checkpoint: the store takes no more
    /// writes (fail-stop).
    failed: Mutex<Option<String>>,
}

impl LogSync {
    fn new(file: File, path: PathBuf, lsn: u64) -> Self {
        Self {
            path,
            appended: AtomicU64::new(lsn),
            synced: AtomicU64::new(lsn),
            syncing: Mutex::new(file),
            failed: Mutex::new(None),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.failed.lock().map_err(|_| StoreError::Closed)?.as_ref() {
            Some(reason) => Err(StoreError::Io(format!(
                "the write-ahead log failed earlier ({reason}); restart to recover"
            ))),
            None => Ok(()),
        }
    }

    fn fail(&self, error: std::io::Error) -> StoreError {
        self.fail_with(error.to_string());
        io(&self.path)(error)
    }

    fn fail_with(&self, reason: String) {
        if let Ok(mut failed) = self.failed.lock() {
            failed.get_or_insert(reason);
        }
    }

    /// Makes every batch through `lsn` durable. One `fdatasync` covers every record written before
    /// it starts, so concurrent and later callers share it.
    pub(crate) fn sync_through(&self, lsn: u64) -> Result<(), StoreError> {
        if self.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let file = self.syncing.lock().map_err(|_| StoreError::Closed)?;
        if self.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        self.check()?;
        let through = self.appended.load(Ordering::Acquire);
        file.sync_data().map_err(|e| self.fail(e))?;
        self.synced.fetch_max(through, Ordering::AcqRel);
        Ok(())
    }

    /// Syncs what the current file holds, then makes `next` the file records go to.
    fn switch_to(&self, next: &File) -> Result<(), StoreError> {
        let mut file = self.syncing.lock().map_err(|_| StoreError::Closed)?;
        self.check()?;
        let through = self.appended.load(Ordering::Acquire);
        if self.synced.load(Ordering::Acquire) < through {
            file.sync_data().map_err(|e| self.fail(e))?;
            self.synced.fetch_max(through, Ordering::AcqRel);
        }
        *file = next.try_clone().map_err(|e| self.fail(e))?;
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
        let sync = Arc::new(LogSync::new(file, path.to_owned(), 0));
        sync.appended.store(lsn, Ordering::Release);
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
    buf.push(table.index() as u8);
    buf.push(u8::from(value.is_none()));
    put_sized(buf, key);
    if let Some(value) = value {
        put_sized(buf, value);
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
    let mut r = Cursor::new(body);
    let lsn = r.u64()?;
    let count = r.u32()? as usize;
    let mut writes = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let table = *Table::ALL.get(r.u8()? as usize)?;
        let delete = r.u8()? == 1;
        let key = r.sized()?.to_vec();
        let value = if delete {
            None
        } else {
            Some(r.sized()?.to_vec())
        };
        writes.push((table, key, value));
    }
    Some(Decoded {
        lsn,
        writes,
        len: (HEADER + len) as u64,
    })
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

/// Each file's records from offset 0 while their LSNs are consecutive.
fn runs<'a>(files: impl IntoIterator<Item = &'a [u8]>) -> impl Iterator<Item = Decoded> {
    files.into_iter().flat_map(|bytes| {
        let mut pos = 0usize;
        let mut previous: Option<u64> = None;
        std::iter::from_fn(move || {
            let record = bytes.get(pos..).and_then(decode)?;
            if previous.is_some_and(|p| record.lsn != p + 1) {
                return None;
            }
            previous = Some(record.lsn);
            pos += record.len as usize;
            Some(record)
        })
    })
}

/// The records the engine does not hold yet, in order: from `applied + 1`, while consecutive.
fn unapplied<'a>(files: impl IntoIterator<Item = &'a [u8]>, applied: u64) -> Vec<Decoded> {
    let mut by_lsn: BTreeMap<u64, Decoded> = runs(files)
        .filter(|record| record.lsn > applied)
        .map(|record| (record.lsn, record))
        .collect();
    let mut out = Vec::new();
    let mut expected = applied + 1;
    while let Some(record) = by_lsn.remove(&expected) {
        out.push(record);
        expected += 1;
    }
    out
}

fn read_logs(dir: &Path) -> Result<[Vec<u8>; 2], StoreError> {
    let read = |name: &str| {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&path)(e)),
        }
    };
    Ok([read(WAL_FILES[0])?, read(WAL_FILES[1])?])
}

/// How many logged batches a stopped store's engine does not hold yet (for read-only tools, which do
/// not replay).
pub(crate) fn pending(dir: &Path, engine: &dyn KvEngine) -> Result<usize, StoreError> {
    let logs = read_logs(dir)?;
    Ok(unapplied(logs.iter().map(Vec::as_slice), engine_lsn(engine)?).len())
}

/// Opens a log file, creating it preallocated with written zeros (not a sparse file: overwriting
/// allocated blocks keeps `fdatasync` to the data).
fn open_log(path: &Path, capacity: u64) -> Result<(File, bool), StoreError> {
    let err = io(path);
    let created = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(&err)?;
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
    }
    Ok((file, created))
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
        let applied = engine_lsn(inner.as_ref())?;
        let logs = read_logs(dir)?;
        let replay = unapplied(logs.iter().map(Vec::as_slice), applied);
        drop(logs);
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
        drop(replay);
        // Checkpoint: the engine holds everything durably; both files hold only what it has.
        inner.write(true, &mut |tx| {
            tx.put(Table::Meta, WAL_LSN_KEY, &lsn.to_be_bytes())
        })?;
        let paths = WAL_FILES.map(|name| dir.join(name));
        let (first, created_first) = open_log(&paths[0], capacity)?;
        let (second, created_second) = open_log(&paths[1], capacity)?;
        if (created_first || created_second)
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        let sync = Arc::new(LogSync::new(
            first.try_clone().map_err(io(&paths[0]))?,
            paths[0].clone(),
            lsn,
        ));
        let shared = Arc::new(Shared {
            inner,
            log: Mutex::new(Log {
                files: [first, second],
                current: 0,
                offset: 0,
                lsn,
                capacity,
                buf: Vec::with_capacity(64 << 10),
                last_freeze: std::time::Instant::now(),
            }),
            sync,
            memtable: Memtable::new(lsn),
            checkpoints: Mutex::new(Checkpoints::default()),
            changed: Condvar::new(),
            checkpoint_every,
        });
        let checkpointer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("queue-checkpoint".into())
                .spawn(move || shared.run_checkpointer())
                .map_err(|e| StoreError::Io(format!("checkpointer thread: {e}")))?
        };
        Ok(Self {
            shared,
            checkpointer: Some(checkpointer),
        })
    }

    /// Waits until no checkpoint is running (tests).
    #[cfg(test)]
    fn settle(&self) -> Result<(), StoreError> {
        self.shared.wait_for_checkpoint()
    }
}

impl Shared {
    fn checkpoints(&self) -> MutexGuard<'_, Checkpoints> {
        self.checkpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the frozen layer, if any, is in the engine.
    fn wait_for_checkpoint(&self) -> Result<(), StoreError> {
        let mut checkpoints = self.checkpoints();
        while checkpoints.busy {
            checkpoints = self
                .changed
                .wait(checkpoints)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(checkpoints);
        self.sync.check()
    }

    /// Freezes the active layer for the checkpointer and moves the log to the other file — unless
    /// the previous checkpoint has not ended: the other file still holds what it is writing to the
    /// engine. (Only a caller holding `log` freezes, so after [`Shared::wait_for_checkpoint`] under
    /// that lock this always goes ahead.)
    fn freeze(&self, log: &mut Log) -> Result<(), StoreError> {
        if self.checkpoints().busy {
            return Ok(());
        }
        let next = 1 - log.current;
        self.sync.switch_to(&log.files[next])?;
        if let Some(layer) = self.memtable.freeze()? {
            let mut checkpoints = self.checkpoints();
            checkpoints.pending = Some((layer, log.lsn));
            checkpoints.busy = true;
            self.changed.notify_all();
        }
        log.current = next;
        log.offset = 0;
        log.last_freeze = std::time::Instant::now();
        Ok(())
    }

    /// Commits a frozen layer to the engine durably, with the LSN of its last batch.
    fn checkpoint(&self, layer: &RwLock<Layer>, through: u64) -> Result<(), StoreError> {
        self.inner.write(true, &mut |tx| {
            layer.read().map_err(|_| StoreError::Closed)?.write_to(tx)?;
            tx.put(Table::Meta, WAL_LSN_KEY, &through.to_be_bytes())
        })?;
        self.sync.held_by_engine(through);
        self.memtable.release()
    }

    /// Checkpoints what the writer freezes; when the writer has been quiet for a checkpoint interval,
    /// freezes what it left itself, so memory is given back when the daemon is idle.
    fn run_checkpointer(&self) {
        loop {
            let work = {
                let mut checkpoints = self.checkpoints();
                loop {
                    if let Some(work) = checkpoints.pending.take() {
                        break Some(work);
                    }
                    if checkpoints.stop {
                        return;
                    }
                    let (next, waited) = self
                        .changed
                        .wait_timeout(checkpoints, self.checkpoint_every.max(IDLE_CHECK))
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    checkpoints = next;
                    if waited.timed_out() && checkpoints.pending.is_none() && !checkpoints.busy {
                        break None;
                    }
                }
            };
            match work {
                Some((layer, through)) => {
                    if let Err(error) = self.checkpoint(&layer, through) {
                        tracing::error!(%error, "checkpoint failed; the store takes no more writes");
                        self.sync.fail_with(format!("checkpoint: {error}"));
                    }
                    self.checkpoints().busy = false;
                    self.changed.notify_all();
                }
                None => {
                    if let Ok(mut log) = self.log.lock()
                        && log.offset > 0
                        && log.last_freeze.elapsed() >= self.checkpoint_every
                        && self.sync.check().is_ok()
                        && let Err(error) = self.freeze(&mut log)
                    {
                        tracing::error!(%error, "freezing the writes in memory failed");
                    }
                }
            }
        }
    }
}

impl KvEngine for WalEngine {
    fn write(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<(), StoreError> {
        self.write_deferred(durable, f)?.finish()
    }

    fn defers_sync(&self) -> bool {
        true
    }

    /// Logs the batch and merges it into the layer readers see, without waiting for the disk: a
    /// durable batch comes back with the [`Flush`] that syncs the log through its LSN.
    fn write_deferred(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<Flush, StoreError> {
        let shared = &*self.shared;
        let mut log = shared.log.lock().map_err(|_| StoreError::Closed)?;
        shared.sync.check()?;
        let log = &mut *log;
        let lsn = log.lsn + 1;
        let mut count = 0u32;
        let writes = {
            let record = &mut log.buf;
            begin_record(record, lsn);
            shared.memtable.batch(
                shared.inner.as_ref(),
                &mut |table, key, value| {
                    encode_write(record, table, key, value);
                    count += 1;
                },
                f,
            )?
        };
        let through = |lsn| {
            if durable {
                Flush(Some((Arc::clone(&shared.sync), lsn)))
            } else {
                Flush::done()
            }
        };
        if count == 0 {
            // Nothing of its own; a durable answer must still cover earlier non-durable batches,
            // which are in the log already.
            return Ok(through(log.lsn));
        }
        end_record(&mut log.buf, count);
        let len = log.buf.len() as u64;
        if log.offset + len > log.capacity {
            // The file is full: the other one is free once the checkpoint running ends.
            shared.wait_for_checkpoint()?;
            if len > log.capacity {
                // Too big for any file: the engine takes this batch itself, durably, and its answer
                // waits for that.
                log.lsn = lsn;
                shared.memtable.merge(lsn, writes)?;
                shared.freeze(log)?;
                shared.wait_for_checkpoint()?;
                return Ok(Flush::done());
            }
            shared.freeze(log)?;
        }
        if let Err(e) = log.files[log.current].write_all_at(&log.buf, log.offset) {
            return Err(shared.sync.fail(e));
        }
        log.offset += len;
        log.lsn = lsn;
        shared.sync.appended.store(lsn, Ordering::Release);
        shared.memtable.merge(lsn, writes)?;
        if log.offset >= log.capacity / 2
            || log.last_freeze.elapsed() >= shared.checkpoint_every
            || shared.memtable.hiding() >= HIDING_PER_CHECKPOINT
        {
            shared.freeze(log)?;
        }
        Ok(through(lsn))
    }

    fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError> {
        self.shared.memtable.read(self.shared.inner.as_ref(), f)
    }

    fn size_on_disk(&self) -> u64 {
        let dir = self.shared.sync.path.parent().unwrap_or(Path::new("."));
        self.shared.inner.size_on_disk()
            + WAL_FILES
                .iter()
                .map(|name| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len()))
                .sum::<u64>()
    }
}

impl Drop for WalEngine {
    /// A clean close leaves nothing to replay: the checkpointer finishes, then what is left in
    /// memory goes to the engine.
    fn drop(&mut self) {
        let shared = &self.shared;
        {
            shared.checkpoints().stop = true;
            shared.changed.notify_all();
        }
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
        let Ok(log) = shared.log.lock() else {
            return;
        };
        if shared.sync.check().is_err() {
            return;
        }
        let frozen = match shared.memtable.freeze() {
            Ok(frozen) => frozen,
            Err(_) => return,
        };
        if let Some(layer) = frozen
            && let Err(error) = shared.checkpoint(&layer, log.lsn)
        {
            tracing::warn!(%error, "checkpoint at close failed; the log will be replayed at open");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Entries, KvRead, KvWrite};
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
            live.get(&((table.index() as u8), key.to_vec())).cloned()
        }
    }

    struct Tx<'a> {
        tables: &'a mut Tables,
    }

    impl KvRead for Tx<'_> {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self
                .tables
                .get(&((table.index() as u8), key.to_vec()))
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
                .insert(((table.index() as u8), key.to_vec()), value.to_vec());
            Ok(())
        }

        fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
            self.tables.remove(&((table.index() as u8), key.to_vec()));
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

    /// Holds durable commits (checkpoints) until opened.
    #[derive(Debug)]
    struct Gated {
        inner: Arc<Volatile>,
        open: Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Gated {
        fn set(&self, open: bool) {
            *self.open.lock().expect("lock") = open;
            self.opened.notify_all();
        }
    }

    impl KvEngine for Gated {
        fn write(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<(), StoreError> {
            let mut open = self.open.lock().expect("lock");
            while durable && !*open {
                open = self.opened.wait(open).expect("lock");
            }
            drop(open);
            self.inner.write(durable, f)
        }

        fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError> {
            self.inner.read(f)
        }

        fn size_on_disk(&self) -> u64 {
            0
        }
    }

    #[test]
    fn while_a_checkpoint_runs_the_log_keeps_its_file_and_a_crash_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Volatile::default());
        let gated = Arc::new(Gated {
            inner: Arc::clone(&engine),
            open: Mutex::new(true),
            opened: std::sync::Condvar::new(),
        });
        let wal = WalEngine::open_with(gated.clone(), dir.path(), CAPACITY, NEVER).expect("open");
        gated.set(false);
        // A failed assertion drops the engine, which waits for its checkpointer: let it finish.
        struct OpenOnDrop(Arc<Gated>);
        impl Drop for OpenOnDrop {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let _release = OpenOnDrop(gated.clone());
        let freeze = |wal: &WalEngine| {
            let mut log = wal.shared.log.lock().expect("lock");
            wal.shared.freeze(&mut log).expect("freeze");
            log.current
        };
        put(&wal, true, "a", "1");
        assert_eq!(freeze(&wal), 1, "the first freeze moves to the other file");
        put(&wal, true, "b", "1");
        // The checkpoint of "a" cannot end: file 0 still holds its only durable copy.
        assert_eq!(freeze(&wal), 1, "no second freeze while the first runs");
        put(&wal, true, "c", "1");
        let survivor = crash(wal, &engine);
        assert_eq!(
            value(&survivor, "a"),
            None,
            "the checkpoint never reached the engine"
        );
        WalEngine::open_with(survivor.clone(), dir.path(), CAPACITY, NEVER).expect("recover");
        for key in ["a", "b", "c"] {
            assert_eq!(value(&survivor, key).as_deref(), Some("1"), "{key}");
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
    fn a_batch_too_big_for_a_log_file_is_in_the_engine_before_it_is_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Volatile::default());
        let wal = WalEngine::open_with(engine.clone(), dir.path(), 256, NEVER).expect("open");
        put(&wal, true, "small", "1");
        let big = "x".repeat(1000);
        put(&wal, true, "big", &big);
        assert_eq!(
            value(&engine.after_crash(), "big").as_deref(),
            Some(big.as_str()),
            "durable in the engine itself, with the batch before it"
        );
        assert_eq!(value(&engine.after_crash(), "small").as_deref(), Some("1"));
        put(&wal, true, "after", "1");
        let survivor = crash(wal, &engine);
        WalEngine::open_with(survivor.clone(), dir.path(), 256, NEVER).expect("recover");
        for (key, expected) in [("small", "1"), ("big", big.as_str()), ("after", "1")] {
            assert_eq!(value(&survivor, key).as_deref(), Some(expected), "{key}");
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
            let log = wal.shared.log.lock().expect("lock");
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
        let lsns: Vec<u64> = unapplied([file.as_slice()], 5)
            .iter()
            .map(|r| r.lsn)
            .collect();
        assert_eq!(lsns, [6, 7]);
        assert!(unapplied([file.as_slice()], 7).is_empty());
        assert!(decode(&file[..buf.len() - 1]).is_none(), "truncated");

        // Two files: the older one's records, then the current one's, whichever file is which.
        let mut log = |lsns: &[u64]| {
            let mut out = Vec::new();
            for &lsn in lsns {
                encode(&mut buf, lsn, &writes);
                out.extend_from_slice(&buf);
            }
            out
        };
        // File 0 was reused for 20..21 over an older cycle (8, 9); file 1 holds 12..19.
        let (current, previous) = (log(&[20, 21, 8, 9]), log(&[12, 13, 14, 15, 16, 17, 18, 19]));
        let lsns = |applied| -> Vec<u64> {
            unapplied([current.as_slice(), previous.as_slice()], applied)
                .iter()
                .map(|r| r.lsn)
                .collect()
        };
        assert_eq!(lsns(11), (12..=21).collect::<Vec<_>>());
        assert_eq!(lsns(19), [20, 21]);
        assert_eq!(
            lsns(5),
            Vec::<u64>::new(),
            "6 and 7 are gone: nothing follows 5"
        );
        assert!(decode(&[0; 64]).is_none(), "zeros");
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    #[test]
    fn after_the_interval_the_writes_in_memory_go_to_the_engine_and_the_log_moves_to_the_other_file()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, wal) = open_redb(dir.path(), std::time::Duration::ZERO);
        wal.write(true, &mut |tx| tx.put(Table::Jobs, b"k", b"v"))
            .expect("write");
        wal.settle().expect("checkpoint");
        {
            let log = wal.shared.log.lock().expect("lock");
            assert_eq!(
                (log.current, log.offset),
                (1, 0),
                "the next record starts the other file"
            );
            assert_eq!(log.lsn, 1);
        }
        assert_eq!(wal.shared.sync.synced_through(), 1);
        let mut held = None;
        engine
            .read(&mut |tx| {
                held = tx.get(Table::Jobs, b"k")?;
                Ok(())
            })
            .expect("read");
        assert_eq!(
            held.as_deref(),
            Some(&b"v"[..]),
            "the engine holds it itself"
        );
        assert_eq!(engine_lsn(engine.as_ref()).expect("lsn"), 1);
    }

    #[test]
    fn an_idle_store_hands_what_it_holds_in_memory_to_the_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, wal) = open_redb(dir.path(), std::time::Duration::from_millis(500));
        wal.write(true, &mut |tx| tx.put(Table::Jobs, b"k", b"v"))
            .expect("write");
        assert_eq!(
            engine_lsn(engine.as_ref()).expect("lsn"),
            0,
            "in memory and the log only"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while engine_lsn(engine.as_ref()).expect("lsn") < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint without further writes"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        wal.settle().expect("checkpoint");
        let log = wal.shared.log.lock().expect("lock");
        assert_eq!((log.current, log.offset), (1, 0));
    }

    #[test]
    fn a_clean_close_leaves_the_engine_holding_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open_never(dir.path());
        wal.write(true, &mut |tx| tx.put(Table::Jobs, b"a", b"1"))
            .expect("write");
        wal.write(true, &mut |tx| tx.put(Table::Jobs, b"b", b"1"))
            .expect("write");
        let engine = Arc::clone(&wal.shared.inner);
        drop(wal);
        assert_eq!(engine_lsn(engine.as_ref()).expect("lsn"), 2);
        assert_eq!(pending(dir.path(), engine.as_ref()).expect("pending"), 0);
    }

    /// A log over a redb engine in `dir`, checkpointing every `every`.
    fn open_redb(dir: &Path, every: std::time::Duration) -> (Arc<dyn KvEngine>, WalEngine) {
        let engine: Arc<dyn KvEngine> = Arc::new(
            super::super::redb::RedbEngine::open(
                &dir.join("queue.redb"),
                super::super::CACHE_BYTES,
            )
            .expect("redb"),
        );
        let wal = WalEngine::open_with(Arc::clone(&engine), dir, CAPACITY, every).expect("open");
        (engine, wal)
    }

    fn open_never(dir: &Path) -> WalEngine {
        open_redb(dir, std::time::Duration::from_secs(3600)).1
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
        assert_eq!(wal.shared.sync.appended.load(Ordering::Acquire), 2);
        assert_eq!(wal.shared.sync.synced_through(), 0, "not synced yet");
        // A batch with no writes of its own still waits for the ones before it.
        let empty = wal.write_deferred(true, &mut |_| Ok(())).expect("write");
        assert!(!empty.is_done());
        flush.finish().expect("sync");
        assert_eq!(wal.shared.sync.synced_through(), 2);
        empty.finish().expect("already covered");
    }

    #[test]
    fn after_a_failed_log_the_store_takes_no_more_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open_never(dir.path());
        let _ = wal.shared.sync.fail(std::io::Error::other("disk gone"));
        let refused = wal.write_deferred(true, &mut |tx| tx.put(Table::Jobs, b"a", b"1"));
        assert!(
            matches!(&refused, Err(StoreError::Io(m)) if m.contains("disk gone")),
            "{refused:?}"
        );
    }
}
