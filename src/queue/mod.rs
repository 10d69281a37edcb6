//! The durable job queue: what the connector has promised to deliver, and how delivery is retried.
//!
//! - [`job`]: the record and its states; [`schedule`]: pure retry decisions;
//! - [`store`]: the storage seam ([`JobStore`]); [`kv`]: the embedded backends (redb, sled);
//! - [`worker`]: per-lane workers that lease jobs and run handlers; [`maintenance`]: lease expiry and
//!   retention.
//!
//! [`Queue`] is the handle the rest of the daemon uses: it stamps times, applies the retry policy to a
//! failed attempt, and wakes a lane's worker when work arrives.

pub mod clock;
pub(crate) mod cursor;
pub mod job;
pub mod kv;
pub mod maintenance;
pub mod observer;
pub mod protection;
pub mod schedule;
pub mod store;
pub mod worker;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

pub use self::clock::{Clock, TokioClock};
pub use self::job::{
    DeadReason, ErrorClass, Job, JobError, JobId, JobState, Millis, NewJob, RecordedError,
};
pub use self::kv::{Backend, KvJobStore, KvOptions};
pub use self::observer::Observer;
pub use self::schedule::{Decision, RetryPolicies, RetryPolicy};
pub use self::store::{
    AdminOutcome, Change, Committed, Disposition, DossierJobs, Enqueued, Expect, JobFilter,
    JobStore, LaneCounts, Leased, Record, RecordWrite, StoreError, Transition,
};

use self::schedule::millis;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The queue handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
    policies: RetryPolicies,
    lease_for: Duration,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    observer: Option<Arc<dyn Observer>>,
}

/// Runs `work` as a task of its own and waits for it: dropping the wait does not stop the work.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, QueueError>> + Send + 'static,
) -> Result<T, QueueError> {
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) => Err(QueueError::Store(StoreError::Io(format!(
            "the store task ended: {e}"
        )))),
    }
}

impl Queue {
    pub fn new(
        store: Arc<dyn JobStore>,
        clock: Arc<dyn Clock>,
        policies: RetryPolicies,
        lease_for: Duration,
    ) -> Self {
        Self::build(store, clock, policies, lease_for, None)
    }

    /// As [`Queue::new`], reporting what it does to `observer`.
    pub fn with_observer(
        store: Arc<dyn JobStore>,
        clock: Arc<dyn Clock>,
        policies: RetryPolicies,
        lease_for: Duration,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self::build(store, clock, policies, lease_for, Some(observer))
    }

    fn build(
        store: Arc<dyn JobStore>,
        clock: Arc<dyn Clock>,
        policies: RetryPolicies,
        lease_for: Duration,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                policies,
                lease_for,
                wakers: Mutex::new(HashMap::new()),
                observer,
            }),
        }
    }

    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.inner.observer.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    pub fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    pub fn lease_duration(&self) -> Duration {
        self.inner.lease_for
    }

    /// The notifier a lane's worker waits on; enqueues into that lane wake it.
    pub fn waker(&self, lane: &str) -> Arc<Notify> {
        let mut wakers = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(waker) = wakers.get(lane) {
            return Arc::clone(waker);
        }
        Arc::clone(wakers.entry(lane.to_owned()).or_default())
    }

    /// Durably adds one job. When this returns Ok, the job is on disk.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        let mut out = self.enqueue_all(vec![job]).await?;
        out.pop()
            .ok_or_else(|| QueueError::Store(StoreError::Corrupt("empty enqueue answer".into())))
    }

    /// Durably adds jobs in one atomic write: all of them or none.
    pub async fn enqueue_all(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        for job in &jobs {
            job.validate().map_err(QueueError::InvalidJob)?;
        }
        let labels: Vec<(String, String)> = jobs
            .iter()
            .map(|j| (j.kind.clone(), j.lane.clone()))
            .collect();
        // The write and what follows it (counters, wake-ups) run to the end even when the caller
        // stops waiting — a client that hung up after its request was committed: what was committed
        // is counted.
        let queue = self.clone();
        let now = self.now();
        detached(async move {
            let out = queue.inner.store.enqueue(jobs, now).await?;
            for ((kind, lane), enqueued) in labels.iter().zip(&out) {
                if let (Some(o), false) = (&queue.inner.observer, enqueued.existing) {
                    o.enqueued(kind, lane);
                }
                queue.waker(lane).notify_one();
            }
            Ok(out)
        })
        .await
    }

    /// Applies a flow's record writes and enqueues its jobs atomically (see [`JobStore::commit`]).
    pub async fn commit(&self, change: Change) -> Result<Committed, QueueError> {
        for job in &change.jobs {
            job.validate().map_err(QueueError::InvalidJob)?;
        }
        for w in &change.writes {
            if w.collection.is_empty() || w.collection.len() > store::MAX_COLLECTION_LEN {
                return Err(QueueError::InvalidJob(format!(
                    "record collection `{}` must be 1 to {} bytes",
                    w.collection,
                    store::MAX_COLLECTION_LEN
                )));
            }
            if w.key.len() > store::MAX_RECORD_KEY_LEN {
                return Err(QueueError::InvalidJob(format!(
                    "record key longer than {} bytes",
                    store::MAX_RECORD_KEY_LEN
                )));
            }
        }
        // The jobs move into the store; their labels are what the counters and the wake-ups need.
        let labels: Vec<(String, String)> = change
            .jobs
            .iter()
            .map(|j| (j.kind.clone(), j.lane.clone()))
            .collect();
        let queue = self.clone();
        let now = self.now();
        detached(async move {
            let out = queue.inner.store.commit(change, now).await?;
            if let Committed::Applied { jobs, .. } = &out {
                for ((kind, lane), enqueued) in labels.iter().zip(jobs) {
                    if let (Some(o), false) = (&queue.inner.observer, enqueued.existing) {
                        o.enqueued(kind, lane);
                    }
                    queue.waker(lane).notify_one();
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn record(
        &self,
        collection: &'static str,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        self.inner
            .store
            .get_record(collection, key.to_owned())
            .await
    }

    pub async fn records(
        &self,
        collection: &'static str,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Record)>, StoreError> {
        self.inner
            .store
            .scan_records(collection, prefix.to_owned(), after, limit)
            .await
    }

    pub async fn lease(&self, lane: &str, limit: usize) -> Result<Leased, StoreError> {
        let now = self.now();
        let until = now.saturating_add(millis(self.inner.lease_for));
        self.inner
            .store
            .lease(lane.to_owned(), limit, now, until)
            .await
    }

    /// Leases up to `limit` jobs right behind `head` (same key and kind, ready and due), to deliver
    /// together with it.
    pub async fn lease_followers(&self, head: &Job, limit: usize) -> Result<Vec<Job>, StoreError> {
        let now = self.now();
        let until = now.saturating_add(millis(self.inner.lease_for));
        self.inner
            .store
            .lease_followers(head.id, limit, now, until)
            .await
    }

    /// Completes delivered jobs together, in order, with one commit, and writes the flow's `change`
    /// in the same commit (unless a lease was lost). Answers whether the change was written.
    pub async fn complete_all(&self, jobs: &[Job], change: Change) -> Result<bool, StoreError> {
        let leases: Vec<(JobId, u64)> = jobs
            .iter()
            .filter_map(|j| j.lease_token.map(|t| (j.id, t)))
            .collect();
        let lanes: Vec<String> = change.jobs.iter().map(|j| j.lane.clone()).collect();
        let (out, applied) = self
            .inner
            .store
            .complete_many(leases, change, self.now())
            .await?;
        if applied {
            for lane in lanes {
                self.waker(&lane).notify_one();
            }
        }
        if let Some(o) = &self.inner.observer {
            // A batch is one kind in one lane: count each run of equal labels with one lookup.
            let mut done = jobs
                .iter()
                .zip(&out)
                .filter(|(_, t)| matches!(t, Transition::Applied))
                .map(|(job, _)| job)
                .peekable();
            while let Some(first) = done.next() {
                let mut n = 1;
                while done
                    .next_if(|j| j.kind == first.kind && j.lane == first.lane)
                    .is_some()
                {
                    n += 1;
                }
                o.completed(&first.kind, &first.lane, n);
            }
        }
        if let Some(job) = jobs.first() {
            self.waker(&job.lane).notify_one();
        }
        Ok(applied)
    }

    pub async fn complete(&self, job: &Job) -> Result<Transition, StoreError> {
        let out = self.finish(job, Disposition::Done).await?;
        if let (Some(o), Transition::Applied) = (&self.inner.observer, out) {
            o.completed(&job.kind, &job.lane, 1);
        }
        Ok(out)
    }

    /// Applies the retry policy of the job's kind to a failed attempt.
    pub async fn fail(
        &self,
        job: &Job,
        error: &JobError,
    ) -> Result<(Decision, Transition), StoreError> {
        let now = self.now();
        let policy = self.inner.policies.for_kind(&job.kind);
        let decision = schedule::decide(
            policy,
            job.attempts,
            job.queued_at,
            now,
            error,
            fastrand::f64(),
        );
        let disposition = match decision {
            Decision::RetryAt(at) => Disposition::RetryAt {
                at,
                error: RecordedError::of(error, now),
            },
            Decision::Dead(reason) => Disposition::Dead {
                error: RecordedError::of(error, now),
                reason,
            },
            Decision::PauseLane => Disposition::Release {
                not_before: now,
                refund: true,
                note: Some(RecordedError::of(error, now)),
            },
        };
        let out = self.finish(job, disposition).await?;
        if let (Some(o), Transition::Applied) = (&self.inner.observer, out) {
            match decision {
                Decision::Dead(reason) => o.dead_lettered(&job.kind, &job.lane, reason.as_str()),
                Decision::RetryAt(_) | Decision::PauseLane => {
                    o.retried(&job.kind, &job.lane, error.class.as_str())
                }
            }
        }
        Ok((decision, out))
    }

    /// Gives a leased job back without a verdict (shutdown, paused lane).
    pub async fn release(&self, job: &Job, refund: bool) -> Result<Transition, StoreError> {
        let now = self.now();
        self.finish(
            job,
            Disposition::Release {
                not_before: now,
                refund,
                note: None,
            },
        )
        .await
    }

    async fn finish(&self, job: &Job, disposition: Disposition) -> Result<Transition, StoreError> {
        let Some(token) = job.lease_token else {
            return Ok(Transition::LeaseLost);
        };
        let lane = job.lane.clone();
        let out = self
            .inner
            .store
            .finish(job.id, token, disposition, self.now())
            .await?;
        // A finished head may have made the next job of its key runnable.
        self.waker(&lane).notify_one();
        Ok(out)
    }

    /// Operator: requeue a dead job with a fresh attempt budget.
    pub async fn retry(&self, id: JobId) -> Result<AdminOutcome, StoreError> {
        let out = self.inner.store.retry_dead(id, self.now()).await?;
        self.wake_job_lane(id).await;
        Ok(out)
    }

    /// Operator: take a ready or dead job out of delivery.
    pub async fn discard(&self, id: JobId) -> Result<AdminOutcome, StoreError> {
        let out = self.inner.store.discard(id, self.now()).await?;
        self.wake_job_lane(id).await;
        Ok(out)
    }

    /// Operator: requeue up to `limit` dead jobs matching `filter`; answers how many.
    pub async fn replay(&self, filter: JobFilter, limit: usize) -> Result<usize, StoreError> {
        let lane = filter.lane.clone();
        let n = self.inner.store.replay(filter, self.now(), limit).await?;
        match lane {
            Some(lane) => self.waker(&lane).notify_one(),
            None => self.wake_all(),
        }
        Ok(n)
    }

    pub async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.store.get(id).await
    }

    pub async fn list(
        &self,
        filter: JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.store.list(filter, after, limit).await
    }

    /// Unfinished jobs of one ordering key in one lane, oldest first.
    pub async fn unfinished(
        &self,
        lane: &str,
        ordering_key: &str,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner
            .store
            .unfinished(lane.to_owned(), ordering_key.to_owned(), limit)
            .await
    }

    pub async fn counts(&self) -> Result<Vec<LaneCounts>, StoreError> {
        self.inner.store.counts().await
    }

    /// How long the most overdue runnable job of `lane` has been waiting (zero when none is overdue).
    pub async fn overdue(&self, lane: &str) -> Result<Duration, StoreError> {
        let due = self.inner.store.earliest_due(lane.to_owned()).await?;
        Ok(due.map_or(Duration::ZERO, |d| {
            Duration::from_millis(self.now().saturating_sub(d))
        }))
    }

    /// Returns jobs whose lease has run out to ready; answers how many.
    pub async fn expire_leases(&self, limit: usize) -> Result<usize, StoreError> {
        let n = self.inner.store.expire_leases(self.now(), limit).await?;
        if n > 0 {
            self.wake_all();
        }
        Ok(n)
    }

    /// Removes up to `limit` jobs that finished more than `retention` ago; answers how many.
    pub async fn purge_finished(
        &self,
        retention: Duration,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let before = self.now().saturating_sub(millis(retention));
        self.inner.store.purge_finished(before, limit).await
    }

    async fn wake_job_lane(&self, id: JobId) {
        if let Ok(Some(job)) = self.get(id).await {
            self.waker(&job.lane).notify_one();
        }
    }

    fn wake_all(&self) {
        let wakers = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for waker in wakers.values() {
            waker.notify_one();
        }
    }
}

#[cfg(test)]
mod counting_tests {
    use std::future::Future as _;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use super::*;

    /// A request whose client hung up after its commit had started is still counted: the enqueued
    /// counter counts commits, not answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_committed_for_a_caller_that_stopped_waiting_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tally = Arc::new(observer::Tally::default());
        let q = Queue::with_observer(
            Arc::new(
                KvJobStore::open(dir.path(), Backend::Redb, KvOptions::default()).expect("store"),
            ),
            Arc::new(clock::TokioClock::new()),
            RetryPolicies::default(),
            Duration::from_secs(60),
            tally.clone(),
        );
        // Polled once — the write is under way — then dropped, as axum drops a handler whose client
        // went away.
        {
            let mut pending = Box::pin(q.enqueue(NewJob::new("k", "l", "A", "A0")));
            let polled = pending
                .as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()));
            assert!(matches!(polled, Poll::Pending), "the write takes a moment");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while q
            .counts()
            .await
            .expect("counts")
            .iter()
            .map(|c| c.ready)
            .sum::<u64>()
            == 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job was never committed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let counted = || tally.get("enqueued", "k", "l");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while counted() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "committed, never counted"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(counted(), 1);
    }
}
