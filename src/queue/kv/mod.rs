//! The embedded queue backends: one implementation of [`JobStore`] over an ordered key-value engine,
//! with redb and sled as engines.
//!
//! # Layout on disk
//! `<store dir>/STORE` names the backend and the format version; the engine's files sit beside it
//! (`queue.redb`, or `sled/`), and for redb so does the write-ahead log (`queue.wal`, `queue.1.wal`). The tables and their key layout are described in [`keys`]. `Meta` holds
//! `format_version`, the next commit sequence number and a counter per (lane, state).
//!
//! # Invariants
//! - Every unfinished job (ready, leased, dead) has exactly one `Keys` entry; finished jobs have none.
//! - A job is in `Ready` iff it is ready and its `Keys` entry is the first of its (lane, key) prefix.
//! - A job is in `Leases` iff it is leased, under its lease expiry.
//! - A finished job is in `Finished` until purged; a dead job is in `ByState`; the counters always
//!   match the states of the stored jobs.
//!
//! # Group commit
//! One writer thread owns all writes. It takes every operation waiting in its channel (up to
//! [`MAX_BATCH`]), applies them as one batch (sled: one engine transaction), and hands its answers to the
//! *syncer* thread together with what the commit still needs to be durable (redb: an `fdatasync` of
//! its write-ahead log record, [`wal`] — the batch itself lands in memory, [`memtable`], and reaches
//! redb at the next checkpoint; sled syncs its own log inside the commit, so nothing). The
//! writer goes on with the next batch while the disk syncs this one; the syncer takes every batch
//! waiting, covers them with one sync, and only then answers their callers, in commit order. Concurrent
//! callers therefore share fsyncs, no caller hears "ok" before its change is on disk, and nobody hears
//! of a change before every change committed ahead of it is on disk too (a lease of a job is never
//! answered before the job's enqueue is durable). A storage failure fails the whole batch and nothing
//! of it is applied; a failed sync fails every batch waiting on it, and the store takes no more writes.

mod keys;
mod memtable;
mod ops;
mod redb;
mod seal;
mod sled;
mod wal;

pub use self::seal::Keyring;

use self::wal::Flush;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use self::keys::Table;
use self::ops::{Op, OpResult};
use super::job::{Job, JobId, Millis, NewJob};
use super::store::{
    AdminOutcome, Change, Committed, Disposition, Enqueued, JobFilter, JobStore, LaneCounts,
    Leased, Record, StoreError, StoreFuture, Transition,
};

/// The on-disk format this build writes. Version 2 added the write-ahead log (`queue.wal`); version 3 its
/// second file (`queue.1.wal`), which holds acknowledged batches the engine does not have yet just as
/// the first does; version 4 writes a job's header in binary instead of JSON ([`Job::encode`]), and
/// reads the JSON headers of earlier versions until their jobs are next written. An older store
/// (version 1: no log; 2: one file; 3: JSON headers) is upgraded in place when opened for writing. A
/// build that knows only older versions refuses a newer store, so it cannot ignore a log file it does
/// not know about or misread a record.
pub const FORMAT_VERSION: u32 = 4;

/// Versions this build opens.
fn readable(version: &str) -> bool {
    matches!(version, "1" | "2" | "3") || version == FORMAT_VERSION.to_string()
}

/// Page cache of either engine unless `store.cache` says otherwise (both engines default to 1 GiB).
/// The daemon must stay within 64 MiB idle and
/// 256 MiB holding a million jobs; jobs live on disk and only hot index pages need caching. The cache
/// stays full once a large backlog has passed through, and costs ≈ 1.3× its size in RSS: idle again
/// after a million-job drain the daemon held 65.8–66.6 MiB with 32 MiB, 55.1–55.4 MiB with 24 MiB. The
/// drain with 24 MiB was 22.5–29.3k events/s against 24.7–27.8k with 32 (docs/BENCHMARKS.md, 2026-12-07).
pub const CACHE_BYTES: usize = 24 << 20;

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 1024;

/// Key-value pairs as a scan returns them.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Read access within a transaction.
pub(crate) trait KvRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `from <= key < to` (no upper bound when `to` is None), in key order, at most `limit`.
    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError>;
    /// Whether any entry has `from <= key < to`; the layers over the engine answer it without
    /// collecting an entry.
    fn any(&self, table: Table, from: &[u8], to: Option<&[u8]>) -> Result<bool, StoreError> {
        Ok(!self.scan(table, from, to, 1)?.is_empty())
    }
    /// Visits the entries with `from <= key < to` in key order until `visit` answers false. An
    /// engine that can lends its own bytes, so that a caller skipping most entries copies none
    /// (the layers in memory over redb do, for every key a newer layer deleted); this default reads
    /// pages through [`KvRead::scan`].
    fn scan_each(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        const PAGE: usize = 256;
        let mut from = from.to_vec();
        loop {
            let page = self.scan(table, &from, to, PAGE)?;
            for (key, value) in &page {
                if !visit(key, value) {
                    return Ok(());
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == PAGE => {
                    from.clone_from(last);
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }
}

/// Write access within a transaction; reads see the transaction's own writes.
pub(crate) trait KvWrite: KvRead {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError>;
}

type WriteFn<'a> = dyn FnMut(&mut dyn KvWrite) -> Result<(), StoreError> + 'a;
type ReadFn<'a> = dyn FnMut(&dyn KvRead) -> Result<(), StoreError> + 'a;

/// An ordered key-value engine with atomic, durable write transactions.
pub(crate) trait KvEngine: Send + Sync + Debug + 'static {
    /// Runs `f` in one write transaction; commits iff `f` returns Ok, else discards it. A `durable`
    /// commit is on disk (fsync) when this returns, together with every earlier commit; a non-durable
    /// one becomes durable with the next durable commit (and is lost if the process dies first).
    fn write(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<(), StoreError>;
    /// Like [`KvEngine::write`], except that a durable commit may return before it is on disk: the
    /// returned [`Flush`] finishes it. Readers may see the commit before then; nobody may be told it
    /// happened until its flush is finished. An engine that cannot defer finishes it before returning.
    fn write_deferred(&self, durable: bool, f: &mut WriteFn<'_>) -> Result<Flush, StoreError> {
        self.write(durable, f).map(|()| Flush::done())
    }
    /// True when [`KvEngine::write_deferred`] really leaves the sync to the flush. The writer then
    /// has no reason to hold a batch open for stragglers: the syncer covers consecutive batches with
    /// one sync anyway.
    fn defers_sync(&self) -> bool {
        false
    }
    /// Runs `f` over a consistent snapshot.
    fn read(&self, f: &mut ReadFn<'_>) -> Result<(), StoreError>;
    fn size_on_disk(&self) -> u64;
}

/// Which embedded engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Redb,
    Sled,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Redb, Backend::Sled];

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Sled => "sled",
        }
    }

    pub fn parse(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// Where the writer can be made to fail on purpose, to test what a crash at that moment leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The batch is applied but not committed.
    BeforeCommit,
    /// The batch is committed but no caller has been answered.
    AfterCommit,
}

impl CrashPoint {
    pub fn parse(s: &str) -> Option<CrashPoint> {
        match s {
            "before_commit" => Some(CrashPoint::BeforeCommit),
            "after_commit" => Some(CrashPoint::AfterCommit),
            _ => None,
        }
    }
}

/// What happens at a crash point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashAction {
    /// Abort the process (for tests that run the real binary).
    Abort,
    /// Stop the writer as if the process had died: callers get `Closed`, nothing more is written.
    Halt,
}

/// Fire `action` the `nth` time (1-based) the writer reaches `point`.
#[derive(Debug)]
pub struct CrashPlan {
    pub point: CrashPoint,
    pub nth: u64,
    pub action: CrashAction,
    hits: AtomicU64,
}

impl CrashPlan {
    pub fn new(point: CrashPoint, nth: u64, action: CrashAction) -> Self {
        Self {
            point,
            nth,
            action,
            hits: AtomicU64::new(0),
        }
    }

    /// True when the writer must stop here.
    fn hit(&self, point: CrashPoint) -> bool {
        if point != self.point || self.hits.fetch_add(1, Ordering::SeqCst) + 1 != self.nth {
            return false;
        }
        if self.action == CrashAction::Abort {
            std::process::abort();
        }
        true
    }
}

/// Options for opening an embedded store.
#[derive(Debug, Default)]
pub struct KvOptions {
    pub crash: Option<CrashPlan>,
    /// Seal job and record values with these keys (newest first); None stores them as they are.
    pub keys: Option<Arc<Keyring>>,
    /// The engine's page cache in bytes (`store.cache`); None: [`CACHE_BYTES`].
    pub cache_bytes: Option<usize>,
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<OpResult, StoreError>>,
}

/// The embedded store: a writer thread for every change, direct snapshot reads for queries.
pub struct KvJobStore {
    backend: Backend,
    path: PathBuf,
    engine: Arc<dyn KvEngine>,
    sender: Mutex<Option<mpsc::Sender<Pending>>>,
    /// The writer, then the syncer.
    threads: Mutex<Vec<JoinHandle<()>>>,
    unreplayed: usize,
    /// The engine's page cache as opened for writing (None: read-only, the engine's own default).
    cache_bytes: Option<usize>,
}

impl Debug for KvJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvJobStore")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const MARKER: &str = "STORE";

/// Mode 0700 for the store directory and 0600 for the files directly in it (the engines' own
/// subdirectories are made under the process's umask, 077 while the daemon runs).
fn restrict(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let mode = if entry.file_type()?.is_dir() {
            0o700
        } else {
            0o600
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

impl KvJobStore {
    /// Opens (creating if needed) the store in directory `dir`.
    ///
    /// Refuses a store made by another backend or with another format version. Leases left by a previous
    /// process are returned to ready: the engine's file lock guarantees no other process holds them.
    /// Opens (creating) the store in `dir`. The directory is made 0700 and the files in it 0600: they
    /// hold citizen data (sealed or not) that no other account on the machine has any business with.
    pub fn open(dir: &Path, backend: Backend, options: KvOptions) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        restrict(dir).map_err(io)?;
        check_or_write_marker(dir, backend, true)?;
        let cache = options.cache_bytes.unwrap_or(CACHE_BYTES);
        let engine: Arc<dyn KvEngine> = match backend {
            Backend::Redb => Arc::new(redb::RedbEngine::open(&dir.join("queue.redb"), cache)?),
            Backend::Sled => Arc::new(sled::SledEngine::open(&dir.join("sled"), cache)?),
        };
        // redb's durable commit rewrites scattered pages, so redb gets the write-ahead log; sled is
        // log-structured already and syncs its own log (with ours too it was slower: docs/STORE.md).
        // Below the sealing layer, so the log holds sealed values only.
        let engine: Arc<dyn KvEngine> = match backend {
            Backend::Redb => Arc::new(wal::WalEngine::open(engine, dir)?),
            Backend::Sled => engine,
        };
        let engine: Arc<dyn KvEngine> = match &options.keys {
            Some(keys) => Arc::new(seal::SealedEngine {
                inner: engine,
                keys: Arc::clone(keys),
            }),
            None => engine,
        };
        let mut seq = 0;
        let display = dir.display().to_string();
        engine.write(true, &mut |tx| {
            match tx.get(Table::Meta, keys::FORMAT_VERSION_KEY)? {
                Some(v) if v == FORMAT_VERSION.to_string().as_bytes() => {}
                Some(v) if readable(&String::from_utf8_lossy(&v)) => tx.put(
                    Table::Meta,
                    keys::FORMAT_VERSION_KEY,
                    FORMAT_VERSION.to_string().as_bytes(),
                )?,
                Some(v) => {
                    return Err(StoreError::UnsupportedVersion {
                        path: display.clone(),
                        found: String::from_utf8_lossy(&v).into_owned(),
                        supported: FORMAT_VERSION,
                    });
                }
                None => tx.put(
                    Table::Meta,
                    keys::FORMAT_VERSION_KEY,
                    FORMAT_VERSION.to_string().as_bytes(),
                )?,
            }
            seq = match tx.get(Table::Meta, keys::SEQ_KEY)? {
                Some(bytes) => bytes
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("sequence counter".into()))?,
                None => 0,
            };
            Ok(())
        })?;
        // Orphaned leases from a previous process.
        let mut recovered = 0;
        engine.write(true, &mut |tx| {
            let mut s = seq;
            let mut deltas = ops::Deltas::default();
            if let OpResult::Count(n) = ops::apply(
                tx,
                &mut s,
                &mut deltas,
                &Op::ExpireLeases {
                    cutoff: Millis::MAX - 1,
                    now: super::clock::wall_now(),
                    limit: usize::MAX,
                },
            )? {
                recovered = n;
            }
            deltas.flush(tx, s)
        })?;
        if recovered > 0 {
            tracing::info!(
                jobs = recovered,
                "returned jobs leased by a previous process to ready"
            );
        }
        let (sender, receiver) = mpsc::channel();
        let (answers, inbox) = mpsc::channel();
        let syncer = std::thread::Builder::new()
            .name(format!("queue-syncer-{}", backend.as_str()))
            .spawn(move || run_syncer(inbox))
            .map_err(io)?;
        let writer_engine = Arc::clone(&engine);
        let crash = options.crash;
        let writer = std::thread::Builder::new()
            .name(format!("queue-writer-{}", backend.as_str()))
            .spawn(move || run_writer(writer_engine, receiver, answers, seq, crash))
            .map_err(io)?;
        Ok(Self {
            backend,
            path: dir.to_owned(),
            engine,
            sender: Mutex::new(Some(sender)),
            threads: Mutex::new(vec![writer, syncer]),
            unreplayed: 0,
            cache_bytes: Some(cache),
        })
    }

    /// Opens an existing store for reading only — no writer, no lease recovery, nothing written — for
    /// operators' tools while the daemon is stopped. Only the redb backend can be opened this way.
    pub fn open_read_only(
        dir: &Path,
        backend: Backend,
        keys: Option<Arc<Keyring>>,
    ) -> Result<Self, StoreError> {
        let display = dir.display().to_string();
        if !dir.join(MARKER).is_file() {
            return Err(StoreError::Io(format!("{display}: no queue store here")));
        }
        check_or_write_marker(dir, backend, false)?;
        let engine: Arc<dyn KvEngine> = match backend {
            Backend::Redb => Arc::new(redb::RedbEngine::open_read_only(&dir.join("queue.redb"))?),
            Backend::Sled => {
                return Err(StoreError::Io(
                    "the sled backend cannot be opened read-only; use the running daemon's API"
                        .into(),
                ));
            }
        };
        let engine: Arc<dyn KvEngine> = match keys {
            Some(keys) => Arc::new(seal::SealedEngine {
                inner: engine,
                keys,
            }),
            None => engine,
        };
        let mut version = None;
        engine.read(&mut |tx| {
            version = tx.get(Table::Meta, keys::FORMAT_VERSION_KEY)?;
            Ok(())
        })?;
        if !version
            .as_deref()
            .is_some_and(|v| readable(&String::from_utf8_lossy(v)))
        {
            return Err(StoreError::UnsupportedVersion {
                path: display,
                found: version
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default(),
                supported: FORMAT_VERSION,
            });
        }
        let unreplayed = wal::pending(dir, engine.as_ref())?;
        Ok(Self {
            backend,
            path: dir.to_owned(),
            engine,
            sender: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            unreplayed,
            cache_bytes: None,
        })
    }

    /// The page cache the engine was opened with (`store.cache`); None for a read-only store.
    pub fn cache_bytes(&self) -> Option<usize> {
        self.cache_bytes
    }

    /// Batches in the write-ahead log that a read-only store cannot see (only the daemon replays the
    /// log); 0 for a store opened for writing, which replays it at open.
    pub fn unreplayed_batches(&self) -> usize {
        self.unreplayed
    }

    async fn submit(&self, op: Op) -> Result<OpResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        {
            let guard = self.sender.lock().map_err(|_| StoreError::Closed)?;
            let sender = guard.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Pending { op, reply })
                .map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn KvRead) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || {
            let mut f = Some(f);
            let mut out = None;
            engine.read(&mut |tx| {
                if let Some(f) = f.take() {
                    out = Some(f(tx)?);
                }
                Ok(())
            })?;
            out.ok_or(StoreError::Closed)
        })
        .await
        .map_err(|e| StoreError::Io(format!("read task failed: {e}")))?
    }

    /// A short point read (one key or a handful), done on the calling thread: a redb or sled read of a
    /// few pages takes microseconds, far less than handing the work to the blocking pool and back.
    /// Scans of unbounded size go through [`KvJobStore::read`] instead.
    fn read_now<T>(
        &self,
        f: impl FnOnce(&dyn KvRead) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut f = Some(f);
        let mut out = None;
        self.engine.read(&mut |tx| {
            if let Some(f) = f.take() {
                out = Some(f(tx)?);
            }
            Ok(())
        })?;
        out.ok_or(StoreError::Closed)
    }

    /// Stops the writer after the operations already queued. Later calls answer `Closed`.
    pub fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        // The writer ends when its channel closes and drops the syncer's, which then ends in turn.
        if let Ok(mut threads) = self.threads.lock() {
            for handle in threads.drain(..) {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for KvJobStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn check_or_write_marker(dir: &Path, backend: Backend, upgrade: bool) -> Result<(), StoreError> {
    let path = dir.join(MARKER);
    let display = dir.display().to_string();
    let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_owned())
            };
            let version = field("format_version").unwrap_or_default();
            if !readable(&version) {
                return Err(StoreError::UnsupportedVersion {
                    path: display,
                    found: version,
                    supported: FORMAT_VERSION,
                });
            }
            let found = field("backend").unwrap_or_default();
            if found != backend.as_str() {
                return Err(StoreError::BackendMismatch {
                    path: display,
                    found,
                    configured: backend.as_str().to_owned(),
                });
            }
            if upgrade && version != FORMAT_VERSION.to_string() {
                write_marker(dir, backend)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_marker(dir, backend),
        Err(e) => Err(io(e)),
    }
}

/// Writes `STORE` atomically (temporary file, fsync, rename, fsync of the directory).
fn write_marker(dir: &Path, backend: Backend) -> Result<(), StoreError> {
    use std::io::Write;
    let path = dir.join(MARKER);
    let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", path.display()));
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let text = format!(
        "# dvc-connector queue store; do not edit\nbackend = \"{}\"\nformat_version = {}\n",
        backend.as_str(),
        FORMAT_VERSION
    );
    {
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

type Reply = oneshot::Sender<Result<OpResult, StoreError>>;

/// A batch's answers, on their way from the writer to the syncer.
struct Answers {
    flush: Flush,
    replies: Vec<(Reply, Result<OpResult, StoreError>)>,
}

/// Applies batches in order. A batch's answers go to the syncer with what its commit still needs to be
/// durable, and the writer goes on with the next batch while the disk syncs this one.
fn run_writer(
    engine: Arc<dyn KvEngine>,
    receiver: mpsc::Receiver<Pending>,
    answers: mpsc::Sender<Answers>,
    mut seq: u64,
    crash: Option<CrashPlan>,
) {
    let crashed = |point| crash.as_ref().is_some_and(|plan| plan.hit(point));
    let window = if engine.defers_sync() {
        std::time::Duration::ZERO
    } else {
        GATHER_WINDOW
    };
    let mut last_batch = 1;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        gather(&receiver, &mut batch, last_batch, window);
        last_batch = batch.len();
        let mut results = Vec::with_capacity(batch.len());
        let mut next_seq = seq;
        // Leasing alone need not wait for the disk: a lease lost in a crash leaves the job ready,
        // exactly as recovery at open would (it returns every lease). Anything else is fsynced.
        let durable = batch.iter().any(|p| p.op.needs_durability());
        let outcome = engine.write_deferred(durable, &mut |tx| {
            results.clear();
            next_seq = seq;
            let mut deltas = ops::Deltas::default();
            for pending in &batch {
                results.push(ops::apply(tx, &mut next_seq, &mut deltas, &pending.op)?);
            }
            deltas.flush(tx, next_seq)?;
            if crashed(CrashPoint::BeforeCommit) {
                return Err(StoreError::Closed);
            }
            Ok(())
        });
        let answer = match outcome {
            Ok(flush) => {
                seq = next_seq;
                if crashed(CrashPoint::AfterCommit) {
                    halt(batch, receiver);
                    return;
                }
                Answers {
                    flush,
                    replies: batch
                        .into_iter()
                        .zip(results.drain(..))
                        .map(|(pending, result)| (pending.reply, Ok(result)))
                        .collect(),
                }
            }
            Err(StoreError::Closed) => {
                halt(batch, receiver);
                return;
            }
            Err(error) => {
                tracing::error!(%error, operations = batch.len(), "queue store write failed");
                Answers {
                    flush: Flush::done(),
                    replies: batch
                        .into_iter()
                        .map(|pending| (pending.reply, Err(error.clone())))
                        .collect(),
                }
            }
        };
        // Answers leave in commit order, even those that need no sync, so nobody hears of a change
        // that depends on an earlier one before that one is durable.
        if answers.send(answer).is_err() {
            return;
        }
    }
}

/// Finishes the flushes of what the writer sends, in order, then answers. Everything waiting is taken
/// at once and covered by one sync: the last flush covers all before it.
fn run_syncer(inbox: mpsc::Receiver<Answers>) {
    while let Ok(first) = inbox.recv() {
        let mut group = vec![first];
        group.extend(inbox.try_iter());
        let flush = group
            .iter_mut()
            .map(|answers| std::mem::take(&mut answers.flush))
            .filter(|flush| !flush.is_done())
            .last();
        let synced = flush.map_or(Ok(()), Flush::finish);
        for (reply, result) in group.into_iter().flat_map(|answers| answers.replies) {
            let result = match &synced {
                Ok(()) => result,
                Err(error) => Err(error.clone()),
            };
            let _ = reply.send(result);
        }
    }
}

/// Under concurrent load, the writer keeps collecting until no operation has arrived for `GATHER_QUIET`,
/// for at most `GATHER_WINDOW` in all — when each commit syncs the disk itself (sled). In front of the
/// write-ahead log (redb) it takes only what is waiting: waiting for more bought nothing once the
/// syncer shared the fsyncs, and cost the writer a sixth of its time (docs/BENCHMARKS.md).
const GATHER_QUIET: std::time::Duration = std::time::Duration::from_micros(40);
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_micros(400);

/// Collects what is waiting. When the previous batch had several callers, it waits briefly for the
/// rest of them to come back, so concurrent callers share one commit instead of splitting into several
/// half-full ones; a lone caller never waits (the idea of PostgreSQL's `commit_delay` with
/// `commit_siblings`).
fn gather(
    receiver: &mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    last_batch: usize,
    window: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + window;
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(next) => batch.push(next),
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {
                let now = std::time::Instant::now();
                if last_batch <= 1 || now >= deadline {
                    return;
                }
                match receiver.recv_timeout(GATHER_QUIET.min(deadline - now)) {
                    Ok(next) => batch.push(next),
                    Err(_) => return,
                }
            }
        }
    }
}

/// The writer stops as a crashed process would: no caller of this batch or after it hears "ok".
fn halt(batch: Vec<Pending>, receiver: mpsc::Receiver<Pending>) {
    for pending in batch {
        let _ = pending.reply.send(Err(StoreError::Closed));
    }
    drop(receiver);
}

fn unexpected(result: OpResult) -> StoreError {
    StoreError::Corrupt(format!("writer answered with {result:?}"))
}

impl JobStore for KvJobStore {
    fn backend(&self) -> &'static str {
        self.backend.as_str()
    }

    fn enqueue(&self, jobs: Vec<NewJob>, now: Millis) -> StoreFuture<'_, Vec<Enqueued>> {
        Box::pin(async move {
            match self.submit(Op::Enqueue { jobs, now }).await? {
                OpResult::Enqueued(out) => Ok(out),
                other => Err(unexpected(other)),
            }
        })
    }

    fn lease(
        &self,
        lane: String,
        limit: usize,
        now: Millis,
        until: Millis,
    ) -> StoreFuture<'_, Leased> {
        Box::pin(async move {
            match self
                .submit(Op::Lease {
                    lane,
                    limit,
                    now,
                    until,
                })
                .await?
            {
                OpResult::Leased(out) => Ok(out),
                other => Err(unexpected(other)),
            }
        })
    }

    fn complete_many(
        &self,
        leases: Vec<(JobId, u64)>,
        change: Change,
        now: Millis,
    ) -> StoreFuture<'_, (Vec<Transition>, bool)> {
        Box::pin(async move {
            match self
                .submit(Op::CompleteMany {
                    leases,
                    change,
                    now,
                })
                .await?
            {
                OpResult::Completed(c) => Ok((c.transitions, c.change_applied)),
                other => Err(unexpected(other)),
            }
        })
    }

    fn lease_followers(
        &self,
        head: JobId,
        limit: usize,
        now: Millis,
        until: Millis,
    ) -> StoreFuture<'_, Vec<Job>> {
        Box::pin(async move {
            match self
                .submit(Op::LeaseFollowers {
                    head,
                    limit,
                    now,
                    until,
                })
                .await?
            {
                OpResult::Leased(out) => Ok(out.jobs),
                other => Err(unexpected(other)),
            }
        })
    }

    fn finish(
        &self,
        id: JobId,
        token: u64,
        disposition: Disposition,
        now: Millis,
    ) -> StoreFuture<'_, Transition> {
        Box::pin(async move {
            match self
                .submit(Op::Finish {
                    id,
                    token,
                    disposition,
                    now,
                })
                .await?
            {
                OpResult::Transition(t) => Ok(t),
                other => Err(unexpected(other)),
            }
        })
    }

    fn expire_leases(&self, now: Millis, limit: usize) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            match self
                .submit(Op::ExpireLeases {
                    cutoff: now,
                    now,
                    limit,
                })
                .await?
            {
                OpResult::Count(n) => Ok(n),
                other => Err(unexpected(other)),
            }
        })
    }

    fn retry_dead(&self, id: JobId, now: Millis) -> StoreFuture<'_, AdminOutcome> {
        Box::pin(async move {
            match self.submit(Op::RetryDead { id, now }).await? {
                OpResult::Admin(a) => Ok(a),
                other => Err(unexpected(other)),
            }
        })
    }

    fn discard(&self, id: JobId, now: Millis) -> StoreFuture<'_, AdminOutcome> {
        Box::pin(async move {
            match self.submit(Op::Discard { id, now }).await? {
                OpResult::Admin(a) => Ok(a),
                other => Err(unexpected(other)),
            }
        })
    }

    fn replay(&self, filter: JobFilter, now: Millis, limit: usize) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            match self.submit(Op::Replay { filter, now, limit }).await? {
                OpResult::Count(n) => Ok(n),
                other => Err(unexpected(other)),
            }
        })
    }

    fn get(&self, id: JobId) -> StoreFuture<'_, Option<Job>> {
        let out = self.read_now(|tx| ops::load(tx, id));
        Box::pin(async move { out })
    }

    fn list(
        &self,
        filter: JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Job>> {
        Box::pin(self.read(move |tx| ops::list(tx, &filter, after, limit)))
    }

    fn unfinished(
        &self,
        lane: String,
        ordering_key: String,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Job>> {
        Box::pin(self.read(move |tx| ops::unfinished(tx, &lane, &ordering_key, limit)))
    }

    fn purge_finished(&self, before: Millis, limit: usize) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            match self.submit(Op::Purge { before, limit }).await? {
                OpResult::Count(n) => Ok(n),
                other => Err(unexpected(other)),
            }
        })
    }

    fn counts(&self) -> StoreFuture<'_, Vec<LaneCounts>> {
        Box::pin(self.read(ops::counts))
    }

    fn earliest_due(&self, lane: String) -> StoreFuture<'_, Option<Millis>> {
        let out = self.read_now(|tx| ops::earliest_due(tx, &lane));
        Box::pin(async move { out })
    }

    fn commit(&self, change: Change, now: Millis) -> StoreFuture<'_, Committed> {
        Box::pin(async move {
            match self.submit(Op::Commit { change, now }).await? {
                OpResult::Committed(c) => Ok(c),
                other => Err(unexpected(other)),
            }
        })
    }

    fn get_record(&self, collection: &'static str, key: String) -> StoreFuture<'_, Option<Record>> {
        let out = self.read_now(|tx| ops::get_record(tx, collection, &key));
        Box::pin(async move { out })
    }

    fn scan_records(
        &self,
        collection: &'static str,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(String, Record)>> {
        Box::pin(
            self.read(move |tx| {
                ops::scan_records(tx, collection, &prefix, after.as_deref(), limit)
            }),
        )
    }

    fn purge_expired_records(&self, now: Millis, limit: usize) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            match self.submit(Op::PurgeRecords { now, limit }).await? {
                OpResult::Count(n) => Ok(n),
                other => Err(unexpected(other)),
            }
        })
    }

    fn size_on_disk(&self) -> u64 {
        self.engine.size_on_disk()
    }

    fn barrier(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.submit(Op::Barrier).await.map(|_| ()) })
    }
}

/// Total size of the files under `path` (a file or a directory).
pub(crate) fn disk_usage(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| disk_usage(&e.path()))
                    .sum()
            })
            .unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod syncer_tests {
    use super::*;

    type Answer = oneshot::Receiver<Result<OpResult, StoreError>>;

    fn answers(flush: Flush, n: usize) -> (Answers, Answer) {
        let (reply, answer) = oneshot::channel();
        let answers = Answers {
            flush,
            replies: vec![(reply, Ok(OpResult::Count(n)))],
        };
        (answers, answer)
    }

    fn heard(answer: Answer) -> Result<usize, StoreError> {
        match answer.blocking_recv().expect("answered") {
            Ok(OpResult::Count(n)) => Ok(n),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn answers_are_given_once_the_log_holds_them_and_one_sync_serves_all_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let file = std::fs::File::create(&path).expect("file");
        let (first, sync) = wal::Flush::over(file.try_clone().expect("clone"), &path, 2);
        let (inbox_tx, inbox) = mpsc::channel();
        let (a, ra) = answers(Flush::done(), 1);
        let (b, rb) = answers(first, 2);
        let (c, rc) = answers(Flush::done(), 3);
        for x in [a, b, c] {
            inbox_tx.send(x).expect("send");
        }
        drop(inbox_tx);
        run_syncer(inbox);
        assert_eq!(heard(ra).expect("ok"), 1);
        assert_eq!(heard(rb).expect("ok"), 2);
        assert_eq!(heard(rc).expect("ok"), 3);
        assert_eq!(
            sync.synced_through(),
            2,
            "the log was synced through the flush's LSN before anyone was answered"
        );
    }

    #[test]
    fn a_failed_sync_fails_every_answer_behind_it_and_stops_the_log() {
        // fdatasync of a character device fails (EINVAL): a stand-in for a disk that stopped syncing.
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        let (failing, sync) = wal::Flush::over(null, Path::new("/dev/null"), 1);
        let (inbox_tx, inbox) = mpsc::channel();
        let (a, ra) = answers(failing, 1);
        // Committed after it and needing no sync of its own — but it must not be heard of as done
        // while the commit before it is not durable.
        let (b, rb) = answers(Flush::done(), 2);
        inbox_tx.send(a).expect("send");
        inbox_tx.send(b).expect("send");
        drop(inbox_tx);
        run_syncer(inbox);
        assert!(matches!(heard(ra), Err(StoreError::Io(_))));
        assert!(matches!(heard(rb), Err(StoreError::Io(_))));
        assert!(
            sync.sync_through(1).is_err(),
            "the log stays failed (fail-stop)"
        );
    }
}

#[cfg(test)]
mod scan_each_tests {
    use std::collections::BTreeMap;

    use super::*;

    /// An engine that only knows `scan`, so that `scan_each` is the trait's paged default.
    struct Pages(BTreeMap<Vec<u8>, Vec<u8>>);

    impl KvRead for Pages {
        fn get(&self, _: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.get(key).cloned())
        }

        fn scan(
            &self,
            _: Table,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> Result<Entries, StoreError> {
            Ok(self
                .0
                .range(from.to_vec()..)
                .take_while(|(k, _)| to.is_none_or(|to| k.as_slice() < to))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
    }

    fn key(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    #[test]
    fn the_paged_default_visits_every_entry_in_range_once_in_order_and_stops_when_told() {
        let engine = Pages((0..700).map(|i| (key(i), key(i * 2))).collect());
        let mut seen = Vec::new();
        engine
            .scan_each(Table::Jobs, &key(10), Some(&key(650)), &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                true
            })
            .expect("scan");
        let expected: Vec<_> = (10..650).map(|i| (key(i), key(i * 2))).collect();
        assert_eq!(seen, expected, "640 entries over three pages, none twice");

        let mut visited = 0;
        engine
            .scan_each(Table::Jobs, &key(0), None, &mut |_, _| {
                visited += 1;
                visited < 300
            })
            .expect("scan");
        assert_eq!(
            visited, 300,
            "stops at the first false, past a page boundary"
        );

        let mut any = false;
        engine
            .scan_each(Table::Jobs, &key(5), Some(&key(5)), &mut |_, _| {
                any = true;
                true
            })
            .expect("scan");
        assert!(!any, "an empty range visits nothing");
    }
}

#[cfg(test)]
mod format_upgrade_tests {
    use super::*;
    use crate::queue::job::{JobError, JobState, RecordedError};
    use crate::queue::store::Disposition;

    /// A job as store formats 1–3 wrote it: `[u32 BE header length][JSON header][payload]`.
    fn as_format_3(job: &Job) -> Vec<u8> {
        let header = serde_json::to_vec(job).expect("header");
        let mut out = (header.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&job.payload);
        out
    }

    fn open(dir: &Path, backend: Backend) -> KvJobStore {
        KvJobStore::open(dir, backend, KvOptions::default()).expect("store opens")
    }

    fn raw_jobs(engine: &dyn KvEngine) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        engine
            .read(&mut |tx| {
                tx.scan_each(Table::Jobs, &[], None, &mut |k, v| {
                    all.push((k.to_vec(), v.to_vec()));
                    true
                })
            })
            .expect("read");
        all
    }

    #[tokio::test]
    async fn a_format_3_store_opens_and_its_json_jobs_are_read_delivered_and_rewritten_in_binary() {
        for backend in [Backend::Redb, Backend::Sled] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let store = open(tmp.path(), backend);
            let jobs = (0..4)
                .map(|i| {
                    NewJob::new("k", "lane", format!("K{}", i % 2), vec![i, 0, 255])
                        .with_idempotency_key(format!("i{i}"))
                })
                .collect();
            let ids: Vec<JobId> = (store.enqueue(jobs, 1_000).await.expect("enqueue"))
                .into_iter()
                .map(|e| e.id)
                .collect();
            // One job carries a last error and a lease history, the fields a header holds only sometimes.
            let first = store
                .lease("lane".into(), 1, 1_000, 2_000)
                .await
                .expect("lease")
                .jobs
                .remove(0);
            let error = RecordedError::of(&JobError::retryable("http_503", "busy"), 1_500);
            store
                .finish(
                    first.id,
                    first.lease_token.expect("token"),
                    Disposition::RetryAt { at: 1_600, error },
                    1_500,
                )
                .await
                .expect("retry");
            let mut before = Vec::new();
            for id in &ids {
                before.push(store.get(*id).await.expect("get").expect("stored"));
            }
            assert!(before[0].last_error.is_some() && before[0].attempts == 1);
            store.close();
            drop(store);

            // Rewrite it as format 3 left it: every job's header in JSON, version 3 in the engine and
            // in the marker.
            {
                let engine: Arc<dyn KvEngine> = match backend {
                    Backend::Redb => Arc::new(
                        wal::WalEngine::open(
                            Arc::new(
                                redb::RedbEngine::open(&tmp.path().join("queue.redb"), CACHE_BYTES)
                                    .expect("redb"),
                            ),
                            tmp.path(),
                        )
                        .expect("log"),
                    ),
                    Backend::Sled => Arc::new(
                        sled::SledEngine::open(&tmp.path().join("sled"), CACHE_BYTES)
                            .expect("sled"),
                    ),
                };
                let rows = raw_jobs(&*engine);
                assert_eq!(rows.len(), 4);
                engine
                    .write(true, &mut |tx| {
                        for (key, value) in &rows {
                            let job = Job::decode(value).map_err(StoreError::Corrupt)?;
                            tx.put(Table::Jobs, key, &as_format_3(&job))?;
                        }
                        tx.put(Table::Meta, keys::FORMAT_VERSION_KEY, b"3")
                    })
                    .expect("rewrite");
                assert!(raw_jobs(&*engine).iter().all(|(_, v)| v[0] == 0));
            }
            let marker = tmp.path().join(MARKER);
            let text = std::fs::read_to_string(&marker).expect("marker");
            std::fs::write(
                &marker,
                text.replace("format_version = 4", "format_version = 3"),
            )
            .expect("marker");

            let store = open(tmp.path(), backend);
            for (id, was) in ids.iter().zip(&before) {
                assert_eq!(
                    store.get(*id).await.expect("get").as_ref(),
                    Some(was),
                    "{backend:?}: a JSON header reads back as it was written"
                );
            }
            let mut delivered = 0;
            for _ in 0..4 {
                for job in store
                    .lease("lane".into(), 4, 2_000, 3_000)
                    .await
                    .expect("lease")
                    .jobs
                {
                    let done = store
                        .finish(
                            job.id,
                            job.lease_token.expect("token"),
                            Disposition::Done,
                            2_000,
                        )
                        .await
                        .expect("complete");
                    assert_eq!(done, crate::queue::store::Transition::Applied);
                    delivered += 1;
                }
            }
            assert_eq!(
                delivered, 4,
                "{backend:?}: every job of the old store is delivered"
            );
            for id in &ids {
                let job = store.get(*id).await.expect("get").expect("kept");
                assert_eq!(job.state, JobState::Done);
            }
            let rows = raw_jobs(&*store.engine);
            assert!(
                rows.iter().all(|(_, v)| v[0] == 1),
                "{backend:?}: a job written again is written in binary"
            );
            assert!(
                std::fs::read_to_string(&marker)
                    .expect("marker")
                    .contains(&format!("format_version = {FORMAT_VERSION}"))
            );
        }
    }
}
