//! The embedded queue backends: one implementation of [`JobStore`] over an ordered key-value engine,
//! with redb and sled as engines.
//!
//! # Layout on disk
//! `<store dir>/STORE` names the backend and the format version; the engine's files sit beside it
//! (`queue.redb`, or `sled/`). The tables and their key layout are described in [`keys`]. `Meta` holds
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
//! [`MAX_BATCH`]), applies them in one engine transaction and commits it durably (the engine's own
//! fsync), then answers their callers in order. Concurrent callers therefore share one commit and one
//! fsync, and nobody hears "ok" before their change is on disk. Readers use the engine's snapshots,
//! which hold only committed — that is, durable — changes. A storage failure fails the whole batch and
//! nothing of it is applied.

mod keys;
mod legacy;
mod ops;
mod overlay;
mod redb;
mod seal;
mod sled;

pub use self::seal::Keyring;

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

/// The on-disk format this build writes. Version 5 has no write-ahead log of its own: every batch is
/// a durable engine commit. Versions 2–4 kept one in front of redb (`queue.wal`, `queue.1.wal`);
/// opening such a store for writing writes the batches the log holds into redb and removes the log
/// files ([`legacy`]). Version 4 introduced the binary job header ([`Job::encode`]); the JSON headers
/// of versions 1–3 are still read until their jobs are next written. A build that knows only older
/// versions refuses a newer store.
pub const FORMAT_VERSION: u32 = 5;

/// Versions this build opens.
fn readable(version: &str) -> bool {
    version
        .parse::<u32>()
        .is_ok_and(|v| (1..=FORMAT_VERSION).contains(&v))
}

/// Page cache of either engine unless `store.cache` says otherwise (both engines default to 1 GiB).
/// The daemon must stay within 64 MiB idle and 256 MiB holding a million jobs; jobs live on disk and
/// only hot index pages need caching. The cache stays full once a large backlog has passed through and
/// costs about 1.3× its size in RSS, so 32 MiB would leave the daemon above 64 MiB when idle again.
pub const CACHE_BYTES: usize = 24 << 20;

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 1024;

/// Key-value pairs as a scan returns them.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The direction of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    Ascending,
    Descending,
}

/// Read access within a transaction.
pub(crate) trait KvRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `from <= key < to` (no upper bound when `to` is None), at most `limit`, in key
    /// order or, `Descending`, from the highest key down.
    fn scan_in(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError>;
    /// [`KvRead::scan_in`] in key order.
    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.scan_in(table, from, to, limit, Order::Ascending)
    }
    /// [`KvRead::scan_in`] from the highest key down: the `limit` highest keys below `to`.
    fn scan_rev(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.scan_in(table, from, to, limit, Order::Descending)
    }
    /// Whether any entry has `from <= key < to`.
    fn any(&self, table: Table, from: &[u8], to: Option<&[u8]>) -> Result<bool, StoreError> {
        Ok(!self.scan(table, from, to, 1)?.is_empty())
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
    /// Runs `f` in one write transaction; commits iff `f` returns Ok, else discards it. The commit is
    /// on disk (fsync) when this returns, together with every earlier one.
    fn write(&self, f: &mut WriteFn<'_>) -> Result<(), StoreError>;
    /// Runs `f` over a consistent snapshot of what has been committed.
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
    writer: Mutex<Option<JoinHandle<()>>>,
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
    /// Refuses a store made by another backend or with a newer format version, and upgrades an older
    /// one. Leases left by a previous process are returned to ready: the engine's file lock guarantees
    /// no other process holds them. The directory is made 0700 and the files in it 0600: they hold
    /// citizen data (sealed or not) that no other account on the machine has any business with.
    pub fn open(dir: &Path, backend: Backend, options: KvOptions) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        restrict(dir).map_err(io)?;
        if let Some(older) = check_or_write_marker(dir, backend, true)? {
            tracing::warn!(
                store = %dir.display(),
                from = %older,
                to = FORMAT_VERSION,
                "upgrading the queue store's format; builds before this one will refuse it afterwards, so \
                 keep a copy of the stopped store directory (taken before this start) if you may roll back"
            );
        }
        let cache = options.cache_bytes.unwrap_or(CACHE_BYTES);
        let engine: Arc<dyn KvEngine> = match backend {
            Backend::Redb => Arc::new(redb::RedbEngine::open(&dir.join("queue.redb"), cache)?),
            Backend::Sled => Arc::new(sled::SledEngine::open(&dir.join("sled"), cache)?),
        };
        // Formats 2-4 kept a log of their own in front of redb; what it holds goes into redb first.
        // Below the sealing layer: the log holds sealed values.
        if backend == Backend::Redb && legacy::has_log(dir) {
            let batches = legacy::upgrade(dir, engine.as_ref())?;
            tracing::info!(
                batches,
                "wrote the batches of the old write-ahead log into the store and removed the log"
            );
        }
        let engine: Arc<dyn KvEngine> = match &options.keys {
            Some(keys) => Arc::new(seal::SealedEngine {
                inner: engine,
                keys: Arc::clone(keys),
            }),
            None => engine,
        };
        let mut seq = 0;
        let display = dir.display().to_string();
        engine.write(&mut |tx| {
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
        engine.write(&mut |tx| {
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
        let writer_engine = Arc::clone(&engine);
        let crash = options.crash;
        let writer = std::thread::Builder::new()
            .name(format!("queue-writer-{}", backend.as_str()))
            .spawn(move || run_writer(writer_engine, receiver, seq, crash))
            .map_err(io)?;
        Ok(Self {
            backend,
            path: dir.to_owned(),
            engine,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
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
        if legacy::has_log(dir) {
            return Err(StoreError::NeedsUpgrade(display));
        }
        let engine: Arc<dyn KvEngine> = match backend {
            Backend::Redb => Arc::new(redb::RedbEngine::open_read_only(&dir.join("queue.redb"))?),
            Backend::Sled => {
                return Err(StoreError::Io(format!(
                    "the {} backend cannot be opened read-only; use the running daemon's API",
                    backend.as_str()
                )));
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
        Ok(Self {
            backend,
            path: dir.to_owned(),
            engine,
            sender: Mutex::new(None),
            writer: Mutex::new(None),
            cache_bytes: None,
        })
    }

    /// The page cache the engine was opened with (`store.cache`); None for a read-only store.
    pub fn cache_bytes(&self) -> Option<usize> {
        self.cache_bytes
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
        // The writer ends when its channel closes.
        if let Ok(mut writer) = self.writer.lock()
            && let Some(handle) = writer.take()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for KvJobStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Checks `STORE` against `backend` and the versions this build reads, writing it for a new store.
/// When `upgrade` is set and the store has an older format, rewrites it and answers the older version.
fn check_or_write_marker(
    dir: &Path,
    backend: Backend,
    upgrade: bool,
) -> Result<Option<String>, StoreError> {
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
                return Ok(Some(version));
            }
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_marker(dir, backend).map(|()| None)
        }
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

/// Applies batches in order: each is one durable engine commit, and its callers are answered once it
/// has returned.
fn run_writer(
    engine: Arc<dyn KvEngine>,
    receiver: mpsc::Receiver<Pending>,
    mut seq: u64,
    crash: Option<CrashPlan>,
) {
    let crashed = |point| crash.as_ref().is_some_and(|plan| plan.hit(point));
    let mut last_batch = 1;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        gather(&receiver, &mut batch, last_batch);
        last_batch = batch.len();
        let mut results = Vec::with_capacity(batch.len());
        let mut next_seq = seq;
        let outcome = engine.write(&mut |tx| {
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
        match outcome {
            Ok(()) => {
                seq = next_seq;
                if crashed(CrashPoint::AfterCommit) {
                    halt(batch, receiver);
                    return;
                }
                for (pending, result) in batch.into_iter().zip(results.drain(..)) {
                    let _ = pending.reply.send(Ok(result));
                }
            }
            Err(StoreError::Closed) => {
                halt(batch, receiver);
                return;
            }
            Err(error) => {
                tracing::error!(%error, operations = batch.len(), "queue store write failed");
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Under concurrent load, the writer keeps collecting until no operation has arrived for `GATHER_QUIET`,
/// for at most `GATHER_WINDOW` in all, so that the callers of the previous commit, back with their next
/// operation, share the next one.
const GATHER_QUIET: std::time::Duration = std::time::Duration::from_micros(40);
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_micros(400);

/// Collects what is waiting. When the previous batch had several callers, it waits briefly for the
/// rest of them to come back, so concurrent callers share one commit instead of splitting into several
/// half-full ones; a lone caller never waits (the idea of PostgreSQL's `commit_delay` with
/// `commit_siblings`).
fn gather(receiver: &mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, last_batch: usize) {
    let deadline = std::time::Instant::now() + GATHER_WINDOW;
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

/// The writer's answer to `$op`, as the variant `$answer` of [`OpResult`] it must be.
macro_rules! answer {
    ($store:ident, $op:expr, $answer:path) => {
        Box::pin(async move {
            match $store.submit($op).await? {
                $answer(out) => Ok(out),
                other => Err(unexpected(other)),
            }
        })
    };
}

impl JobStore for KvJobStore {
    fn backend(&self) -> &'static str {
        self.backend.as_str()
    }

    fn enqueue(&self, jobs: Vec<NewJob>, now: Millis) -> StoreFuture<'_, Vec<Enqueued>> {
        answer!(self, Op::Enqueue { jobs, now }, OpResult::Enqueued)
    }

    fn lease(
        &self,
        lane: String,
        limit: usize,
        now: Millis,
        until: Millis,
    ) -> StoreFuture<'_, Leased> {
        answer!(
            self,
            Op::Lease {
                lane,
                limit,
                now,
                until
            },
            OpResult::Leased
        )
    }

    fn complete_many(
        &self,
        leases: Vec<(JobId, u64)>,
        change: Change,
        now: Millis,
    ) -> StoreFuture<'_, (Vec<Transition>, bool)> {
        Box::pin(async move {
            let fut: StoreFuture<'_, ops::Completed> = answer!(
                self,
                Op::CompleteMany {
                    leases,
                    change,
                    now
                },
                OpResult::Completed
            );
            fut.await.map(|c| (c.transitions, c.change_applied))
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
            let fut: StoreFuture<'_, Leased> = answer!(
                self,
                Op::LeaseFollowers {
                    head,
                    limit,
                    now,
                    until
                },
                OpResult::Leased
            );
            fut.await.map(|leased| leased.jobs)
        })
    }

    fn finish(
        &self,
        id: JobId,
        token: u64,
        disposition: Disposition,
        now: Millis,
    ) -> StoreFuture<'_, Transition> {
        answer!(
            self,
            Op::Finish {
                id,
                token,
                disposition,
                now
            },
            OpResult::Transition
        )
    }

    fn expire_leases(&self, now: Millis, limit: usize) -> StoreFuture<'_, usize> {
        answer!(
            self,
            Op::ExpireLeases {
                cutoff: now,
                now,
                limit
            },
            OpResult::Count
        )
    }

    fn retry_dead(&self, id: JobId, now: Millis) -> StoreFuture<'_, AdminOutcome> {
        answer!(self, Op::RetryDead { id, now }, OpResult::Admin)
    }

    fn discard(&self, id: JobId, now: Millis) -> StoreFuture<'_, AdminOutcome> {
        answer!(self, Op::Discard { id, now }, OpResult::Admin)
    }

    fn replay(&self, filter: JobFilter, now: Millis, limit: usize) -> StoreFuture<'_, usize> {
        answer!(self, Op::Replay { filter, now, limit }, OpResult::Count)
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
        answer!(self, Op::Purge { before, limit }, OpResult::Count)
    }

    fn counts(&self) -> StoreFuture<'_, Vec<LaneCounts>> {
        Box::pin(self.read(ops::counts))
    }

    fn earliest_due(&self, lane: String) -> StoreFuture<'_, Option<Millis>> {
        let out = self.read_now(|tx| ops::earliest_due(tx, &lane));
        Box::pin(async move { out })
    }

    fn commit(&self, change: Change, now: Millis) -> StoreFuture<'_, Committed> {
        answer!(self, Op::Commit { change, now }, OpResult::Committed)
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
        answer!(self, Op::PurgeRecords { now, limit }, OpResult::Count)
    }

    fn size_on_disk(&self) -> u64 {
        self.engine.size_on_disk()
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
                all = tx.scan(Table::Jobs, &[], None, usize::MAX)?;
                Ok(())
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
                        redb::RedbEngine::open(&tmp.path().join("queue.redb"), CACHE_BYTES)
                            .expect("redb"),
                    ),
                    Backend::Sled => Arc::new(
                        sled::SledEngine::open(&tmp.path().join("sled"), CACHE_BYTES)
                            .expect("sled"),
                    ),
                };
                let rows = raw_jobs(&*engine);
                assert_eq!(rows.len(), 4);
                engine
                    .write(&mut |tx| {
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
                text.replace(
                    &format!("format_version = {FORMAT_VERSION}"),
                    "format_version = 3",
                ),
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

#[cfg(test)]
mod log_upgrade_tests {
    use super::*;
    use crate::queue::job::JobState;

    /// Copies a store the previous format left (`fixtures/store-format-4/<name>`, made by the build
    /// before the log was retired) into a fresh directory.
    fn fixture(name: &str) -> tempfile::TempDir {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/store-format-4")
            .join(name);
        let tmp = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(&from).expect("fixture") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).expect("copy");
        }
        tmp
    }

    async fn states(store: &KvJobStore) -> Vec<(String, JobState)> {
        let mut out: Vec<_> = store
            .list(JobFilter::default(), None, 100)
            .await
            .expect("list")
            .into_iter()
            .map(|j| (j.idempotency_key.clone().unwrap_or_default(), j.state))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[tokio::test]
    async fn a_format_4_store_keeps_every_job_and_record_its_log_held_and_loses_the_log() {
        // `clean` was stopped cleanly: redb held everything. `unclean` was copied as a crash would
        // leave it, with its last two batches (three jobs, a record's second version) only in the log.
        for (name, jobs, version) in [("clean", 5, 1), ("unclean", 8, 2)] {
            let tmp = fixture(name);
            assert!(
                KvJobStore::open_read_only(tmp.path(), Backend::Redb, None)
                    .is_err_and(|e| matches!(e, StoreError::NeedsUpgrade(_))),
                "{name}: an offline reader refuses what only the daemon can upgrade"
            );
            let store =
                KvJobStore::open(tmp.path(), Backend::Redb, KvOptions::default()).expect("opens");
            let found = states(&store).await;
            let expected: Vec<_> = (0..jobs)
                .map(|i| {
                    let state = if i == 0 {
                        JobState::Done
                    } else {
                        JobState::Ready
                    };
                    (format!("step-{i}"), state)
                })
                .collect();
            assert_eq!(found, expected, "{name}: every job, in its state");
            let record = store
                .get_record("dossier", "H56-0000".into())
                .await
                .expect("read")
                .expect("record");
            assert_eq!(record.version, version, "{name}");
            assert!(
                !legacy::has_log(tmp.path()),
                "{name}: the log files are gone"
            );
            assert!(
                std::fs::read_to_string(tmp.path().join(MARKER))
                    .expect("marker")
                    .contains(&format!("format_version = {FORMAT_VERSION}"))
            );
            // Leasing follows the keys' order as before: H56-0000's next job is step-3.
            let leased = store
                .lease("portal.step".into(), 10, 10_000, 20_000)
                .await
                .expect("lease")
                .jobs;
            assert!(
                leased
                    .iter()
                    .any(|j| j.idempotency_key.as_deref() == Some("step-3"))
            );
            assert!(
                !leased
                    .iter()
                    .any(|j| j.idempotency_key.as_deref() == Some("step-6"))
            );
            store.close();
            drop(store);
            // Upgraded once: it reopens as a current store, offline readers included.
            KvJobStore::open_read_only(tmp.path(), Backend::Redb, None).expect("reads offline");
        }
    }
}
