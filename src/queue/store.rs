//! The storage seam: what any queue backend must do, at the level of queue operations.
//!
//! The embedded backends (redb, sled) share one implementation over an ordered key-value engine
//! (`kv/`); a shared backend (PostgreSQL, several connector instances) implements this trait directly.
//! Every method is one atomic, durable step: when its future resolves `Ok`, the change is on disk.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use super::job::{DeadReason, Job, JobId, JobState, Millis, NewJob, RecordedError};

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Failures of the store itself (never of a job). The API answers 503 for these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store is closed")]
    Closed,
    #[error("store at {path} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        path: String,
        found: String,
        supported: u32,
    },
    #[error(
        "store at {path} was created by the {found} backend, but the {configured} backend is configured"
    )]
    BackendMismatch {
        path: String,
        found: String,
        configured: String,
    },
    #[error("store at {0} is in use by another process")]
    Locked(String),
    /// Only a writer may recover a store its last writer did not close (it was killed or crashed);
    /// a read-only opener cannot.
    #[error(
        "store at {0} was not closed cleanly (its daemon was killed or crashed); the daemon recovers it when it starts"
    )]
    Unclean(String),
    /// Only the daemon upgrades a store written by an earlier format; a read-only opener cannot.
    #[error(
        "store at {0} was written by an earlier version of dvc-connector; start the daemon once (it upgrades the store), then read it here"
    )]
    NeedsUpgrade(String),
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
}

/// The result of enqueueing one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: JobId,
    /// True when an earlier job had the same idempotency key and was returned instead.
    pub existing: bool,
}

/// Jobs handed to a worker, and when the lane next has something due.
#[derive(Debug, Clone, Default)]
pub struct Leased {
    pub jobs: Vec<Job>,
    /// The earliest `next_attempt_at` among runnable jobs left in the lane, if any.
    pub next_due: Option<Millis>,
}

/// How a leased job ends its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Done,
    RetryAt {
        at: Millis,
        error: RecordedError,
    },
    Dead {
        error: RecordedError,
        reason: DeadReason,
    },
    /// Back to ready without a verdict: shutdown, or a paused lane. `refund` gives the attempt back.
    Release {
        not_before: Millis,
        refund: bool,
        note: Option<RecordedError>,
    },
}

/// Whether a worker's `finish` took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Applied,
    /// The lease expired and the job was given to someone else (or an operator acted); nothing changed.
    LeaseLost,
}

/// Result of an operator action on one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOutcome {
    Applied,
    NotFound,
    /// The action does not apply to a job in this state.
    WrongState(JobState),
}

/// Selects jobs for listing and bulk replay. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub lane: Option<String>,
    pub dossier: Option<DossierJobs>,
    /// [`JobStore::list`] from the newest job back (ids are time-ordered); a cursor then continues
    /// with older jobs. Bulk replay ignores it.
    pub newest_first: bool,
}

impl JobFilter {
    pub fn matches(&self, job: &Job) -> bool {
        self.state.is_none_or(|s| s == job.state)
            && self.kind.as_deref().is_none_or(|k| k == job.kind)
            && self.lane.as_deref().is_none_or(|l| l == job.lane)
            && self
                .dossier
                .as_ref()
                .is_none_or(|d| d.matches(&job.ordering_key))
    }
}

/// The jobs of one dossier, by ordering key: its records and steps and its result shipment (the code
/// itself), its pickups (`{code}-TG{n}`), and the other keys the caller found for it (the identity
/// checks that named the dossier, whose key is the verification id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DossierJobs {
    pub code: String,
    pub also: Vec<String>,
}

impl DossierJobs {
    pub fn new(code: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            also: Vec::new(),
        }
    }

    pub fn matches(&self, ordering_key: &str) -> bool {
        // `~` never occurs in a dossier code: what follows it tells apart the jobs of a shipment that
        // replaced a failed one under the same order number.
        let ordering_key = ordering_key.split('~').next().unwrap_or(ordering_key);
        if ordering_key == self.code {
            return true;
        }
        let pickup = ordering_key
            .strip_prefix(self.code.as_str())
            .and_then(|rest| rest.strip_prefix("-TG"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        pickup || self.also.iter().any(|k| k == ordering_key)
    }
}

/// Jobs per state in one lane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaneCounts {
    pub lane: String,
    pub ready: u64,
    pub leased: u64,
    pub done: u64,
    pub dead: u64,
    pub discarded: u64,
    /// Keys whose head is a dead job: nothing more of theirs runs until it is retried or discarded.
    pub blocked_keys: u64,
    /// Jobs waiting behind those dead heads (ready, not runnable).
    pub blocked_jobs: u64,
}

impl LaneCounts {
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Ready => self.ready,
            JobState::Leased => self.leased,
            JobState::Done => self.done,
            JobState::Dead => self.dead,
            JobState::Discarded => self.discarded,
        }
    }

    pub(crate) fn slot(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Ready => &mut self.ready,
            JobState::Leased => &mut self.leased,
            JobState::Done => &mut self.done,
            JobState::Dead => &mut self.dead,
            JobState::Discarded => &mut self.discarded,
        }
    }
}

/// A flow's record (a verification, a shipment, a dossier's sync state, an idempotency answer) as
/// stored beside the jobs. `version` starts at 1 and grows by one with every write, for compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub value: Vec<u8>,
    /// When the record may be removed (maintenance purges it), if ever.
    pub expires_at: Option<Millis>,
}

/// The condition a record write depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The record must not exist (a natural key claimed for the first time).
    Absent,
    /// The record must be at exactly this version (read, decide, write back).
    Version(u64),
    /// No condition.
    Any,
}

/// One record write of a [`Change`]; `value: None` deletes the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWrite {
    pub collection: &'static str,
    pub key: String,
    pub expect: Expect,
    pub value: Option<Vec<u8>>,
    pub expires_at: Option<Millis>,
}

impl RecordWrite {
    pub fn put(
        collection: &'static str,
        key: impl Into<String>,
        expect: Expect,
        value: Vec<u8>,
    ) -> Self {
        Self {
            collection,
            key: key.into(),
            expect,
            value: Some(value),
            expires_at: None,
        }
    }

    pub fn expiring(mut self, at: Millis) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// Record writes and new jobs that succeed or fail together: a flow's state change and the deliveries
/// it causes are never half-applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub writes: Vec<RecordWrite>,
    pub jobs: Vec<NewJob>,
}

/// The answer to [`JobStore::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Everything was written: the new version of each write (0 for a delete) and each job.
    Applied {
        versions: Vec<u64>,
        jobs: Vec<Enqueued>,
    },
    /// Write `index` found its record in another state; nothing was written. `current` is that record.
    Conflict {
        index: usize,
        current: Option<Record>,
    },
}

/// Longest record collection name and key, so that keys stay bounded.
pub const MAX_COLLECTION_LEN: usize = 64;
pub const MAX_RECORD_KEY_LEN: usize = 1024;

/// A queue backend.
///
/// Invariants every backend keeps (the tests in `queue::tests` hold each backend to them):
/// - per lane and ordering key, only the unfinished job with the lowest `seq` is runnable; a dead job
///   stays unfinished, so it holds its key until retried or discarded;
/// - a job is leased by at most one worker, and only the holder of the current lease token can finish it;
/// - state, attempts, next attempt time, last error and every index change together, in one transaction.
pub trait JobStore: Send + Sync + Debug {
    /// A short name for logs and benchmarks (`redb`, `sled`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Adds jobs durably, in order; a job whose idempotency key is known returns the earlier job.
    fn enqueue(&self, jobs: Vec<NewJob>, now: Millis) -> StoreFuture<'_, Vec<Enqueued>>;

    /// Leases up to `limit` runnable jobs of `lane` that are due at `now`, until `lease_until`.
    fn lease(
        &self,
        lane: String,
        limit: usize,
        now: Millis,
        lease_until: Millis,
    ) -> StoreFuture<'_, Leased>;

    /// Leases up to `limit` ready jobs right behind the leased `head` in its key, of the same kind and
    /// due at `now`, stopping at the first that is not, so they can be delivered with it in one call.
    fn lease_followers(
        &self,
        head: JobId,
        limit: usize,
        now: Millis,
        lease_until: Millis,
    ) -> StoreFuture<'_, Vec<Job>>;

    /// Ends a lease. Only the holder of `token` can do it.
    fn finish(
        &self,
        id: JobId,
        token: u64,
        disposition: Disposition,
        now: Millis,
    ) -> StoreFuture<'_, Transition>;

    /// Ends several leases as done, in order, in one transaction (a delivered batch), writing the
    /// flow's `change` with them if every lease is still held and its conditions hold. Answers each
    /// job's transition and whether the change was written.
    fn complete_many(
        &self,
        leases: Vec<(JobId, u64)>,
        change: Change,
        now: Millis,
    ) -> StoreFuture<'_, (Vec<Transition>, bool)>;

    /// Returns jobs whose lease ended before `now` to ready. Answers how many.
    fn expire_leases(&self, now: Millis, limit: usize) -> StoreFuture<'_, usize>;

    /// Requeues a dead job with a fresh attempt budget.
    fn retry_dead(&self, id: JobId, now: Millis) -> StoreFuture<'_, AdminOutcome>;

    /// Takes a ready or dead job out of delivery for good.
    fn discard(&self, id: JobId, now: Millis) -> StoreFuture<'_, AdminOutcome>;

    /// Requeues up to `limit` dead jobs matching `filter`. Answers how many.
    fn replay(&self, filter: JobFilter, now: Millis, limit: usize) -> StoreFuture<'_, usize>;

    fn get(&self, id: JobId) -> StoreFuture<'_, Option<Job>>;

    /// Jobs matching `filter` in id order — oldest first, or newest first when `filter.newest_first`
    /// — starting after `after` in that order.
    fn list(
        &self,
        filter: JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Job>>;

    /// The unfinished jobs (ready, leased, dead) of one ordering key in one lane, oldest first.
    fn unfinished(
        &self,
        lane: String,
        ordering_key: String,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Job>>;

    /// Removes up to `limit` finished jobs that finished before `before`. Answers how many.
    fn purge_finished(&self, before: Millis, limit: usize) -> StoreFuture<'_, usize>;

    /// Jobs per state for every lane that has any.
    fn counts(&self) -> StoreFuture<'_, Vec<LaneCounts>>;

    /// The earliest `next_attempt_at` among the runnable (head, ready) jobs of `lane`: how long the most
    /// overdue job has been waiting is `now` minus this.
    fn earliest_due(&self, lane: String) -> StoreFuture<'_, Option<Millis>>;

    /// Checks every write's condition; if all hold, applies the writes and enqueues the jobs in one
    /// durable transaction, else changes nothing and names the first write whose condition failed.
    fn commit(&self, change: Change, now: Millis) -> StoreFuture<'_, Committed>;

    fn get_record(&self, collection: &'static str, key: String) -> StoreFuture<'_, Option<Record>>;

    /// Records of `collection` whose key starts with `prefix`, in key order, after `after`.
    fn scan_records(
        &self,
        collection: &'static str,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(String, Record)>>;

    /// Removes up to `limit` records whose expiry is at or before `now`. Answers how many.
    fn purge_expired_records(&self, now: Millis, limit: usize) -> StoreFuture<'_, usize>;

    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> u64;
}
