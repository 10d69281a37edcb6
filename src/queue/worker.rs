//! Lane workers: one task per lane leases due jobs (at most `concurrency` at a time), runs each job's
//! handler, and reports the outcome to the queue.
//!
//! A handler that fails with an auth error pauses its lane: the job goes back with its attempt refunded,
//! and the lane tries again (one job, as a probe) after `auth_pause`. On shutdown a lane stops leasing,
//! lets running jobs finish for up to `shutdown_grace`, then releases the leases of any still running.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::job::{ErrorClass, Job, JobError, JobId, Millis};
use super::protection::{Breaker, BreakerSettings, BreakerState, TokenBucket};
use super::schedule::Decision;
use super::{Queue, Transition};

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>>;

/// A delivery that also answers the flow's record writes and follow-up jobs.
pub type DeliveryFuture<'a> =
    Pin<Box<dyn Future<Output = Result<super::Change, JobError>> + Send + 'a>>;

/// Delivers one kind of job. Must be idempotent: a job can run again after a crash or an expired lease.
pub trait JobHandler: Send + Sync + Debug {
    fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a>;

    /// How many jobs of `kind` (same lane and ordering key, consecutive) this handler can deliver in
    /// one call. Above 1, the worker leases the jobs right behind a leased one and calls
    /// [`JobHandler::handle_batch`].
    fn batch(&self, _kind: &str) -> usize {
        1
    }

    /// Delivers consecutive jobs of one key together, in order: all or none. A failed batch is
    /// handed back whole and retried one job at a time, so a bad job is found and fails alone.
    fn handle_batch<'a>(&'a self, jobs: &'a [Job]) -> HandlerFuture<'a> {
        Box::pin(async move {
            for job in jobs {
                self.handle(job).await?;
            }
            Ok(())
        })
    }

    /// What the worker calls: delivers `jobs` (one, or a batch) and answers the flow's change, which
    /// the worker commits **together with the jobs' completion** — one commit instead of two, and no
    /// moment where the upstream has the delivery but the flow's state does not say so. The change
    /// is dropped if a lease was lost meanwhile, so it must only hold writes this lane owns.
    fn deliver<'a>(&'a self, jobs: &'a [Job]) -> DeliveryFuture<'a> {
        Box::pin(async move {
            match jobs {
                [job] => self.handle(job).await?,
                _ => self.handle_batch(jobs).await?,
            }
            Ok(super::Change::default())
        })
    }

    /// Told once the job has been dead-lettered (after the store recorded it), so a flow can record the
    /// failure and tell the portal. Best effort: a crash between the two leaves the job dead and
    /// visible to operators, without this notice.
    fn dead<'a>(&'a self, _job: &'a Job, _error: &'a JobError) -> HandlerFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// Handlers by job kind.
#[derive(Debug, Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn JobHandler>>,
}

impl Handlers {
    pub fn register(&mut self, kind: impl Into<String>, handler: Arc<dyn JobHandler>) {
        self.by_kind.insert(kind.into(), handler);
    }

    pub fn extend(&mut self, other: Handlers) {
        self.by_kind.extend(other.by_kind);
    }

    fn get(&self, kind: &str) -> Option<&Arc<dyn JobHandler>> {
        self.by_kind.get(kind)
    }
}

/// A lane, how many of its jobs may run at once, and how many may start per second.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneSpec {
    pub lane: String,
    pub concurrency: usize,
    /// The upstream's quota; None for no limit.
    pub rate_per_second: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Re-check the lane at least this often even without a wake-up (other instances, clock drift).
    pub idle_poll: Duration,
    pub auth_pause: Duration,
    pub shutdown_grace: Duration,
    pub breaker: BreakerSettings,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            idle_poll: Duration::from_secs(1),
            auth_pause: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            breaker: BreakerSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneState {
    Running,
    /// The upstream keeps failing: the whole lane waits (circuit open), then probes with one job.
    BackingOff,
    /// Stopped by an auth/config error; probes again at `until`.
    Paused,
    Stopped,
}

impl LaneState {
    pub fn as_str(self) -> &'static str {
        match self {
            LaneState::Running => "running",
            LaneState::BackingOff => "backing_off",
            LaneState::Paused => "paused",
            LaneState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaneStatus {
    pub state: LaneState,
    pub in_flight: usize,
    /// Error code that paused the lane.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<Millis>,
}

/// What each lane worker is doing, shared with readiness and status reporting.
#[derive(Debug, Clone, Default)]
pub struct LaneBoard {
    lanes: Arc<Mutex<BTreeMap<String, LaneStatus>>>,
}

impl LaneBoard {
    pub fn snapshot(&self) -> BTreeMap<String, LaneStatus> {
        self.lanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, lane: &str, status: LaneStatus) {
        self.lanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(lane.to_owned(), status);
    }
}

/// Starts the worker of one lane. It runs until `shutdown` turns true, then drains.
pub fn spawn_lane(
    queue: Queue,
    spec: LaneSpec,
    handlers: Handlers,
    settings: WorkerSettings,
    board: LaneBoard,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run_lane(queue, spec, handlers, settings, board, shutdown))
}

/// Outcome of one job run, as the lane loop needs it.
enum RunEnd {
    Delivered,
    Failed(ErrorClass),
    PausedLane,
    /// Dead-lettered just now (only inside `run_job`, which reports it as `Failed`).
    Dead,
    /// The store could not record the outcome; it says nothing about the upstream.
    Unrecorded,
}

/// A lane's pause: until when, and the error code that caused it. Shared between the lane loop and its
/// running jobs, because a job must pause the lane *before* it hands itself back to the queue; otherwise
/// the loop, woken by that hand-back, could lease it again straight into the same refusal.
type Pause = Arc<Mutex<Option<(Instant, String)>>>;

/// Jobs whose batch failed: their next attempt runs alone.
type Alone = Arc<Mutex<std::collections::HashSet<JobId>>>;

fn current_pause(pause: &Pause) -> Option<(Instant, String)> {
    pause
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

async fn run_lane(
    queue: Queue,
    spec: LaneSpec,
    handlers: Handlers,
    settings: WorkerSettings,
    board: LaneBoard,
    mut shutdown: watch::Receiver<bool>,
) {
    let waker = queue.waker(&spec.lane);
    let concurrency = spec.concurrency.max(1);
    let mut running: JoinSet<(JobId, RunEnd)> = JoinSet::new();
    let mut in_flight: HashMap<JobId, Job> = HashMap::new();
    let pause: Pause = Arc::default();
    let alone: Alone = Arc::default();
    let mut breaker = Breaker::new(settings.breaker.clone());
    let mut bucket = spec
        .rate_per_second
        .map(|rate| TokenBucket::new(rate, rate.max(1.0), Instant::now()));
    let mut next_due: Option<Millis> = None;
    let publish = |in_flight: usize, paused: &Option<(Instant, String)>, breaker: &mut Breaker| {
        let now = queue.now();
        let until_ms = |until: &Instant| {
            now.saturating_add(super::schedule::millis(
                until.saturating_duration_since(Instant::now()),
            ))
        };
        let (state, reason, paused_until) = match (paused, breaker.state(Instant::now())) {
            (Some((until, reason)), _) => (
                LaneState::Paused,
                Some(reason.clone()),
                Some(until_ms(until)),
            ),
            (None, BreakerState::Open { until }) => (
                LaneState::BackingOff,
                Some("circuit_open".to_owned()),
                Some(until_ms(&until)),
            ),
            (None, _) => (LaneState::Running, None, None),
        };
        board.set(
            &spec.lane,
            LaneStatus {
                state,
                in_flight,
                reason,
                paused_until,
            },
        );
    };
    publish(0, &None, &mut breaker);

    while !*shutdown.borrow() {
        let now = Instant::now();
        let mut paused_until = current_pause(&pause);
        if let Some((until, _)) = &paused_until
            && now >= *until
        {
            *pause.lock().unwrap_or_else(|p| p.into_inner()) = None;
            paused_until = None;
            publish(in_flight.len(), &paused_until, &mut breaker);
        }
        // Paused (auth) or backing off (breaker open): nothing new is leased; half-open: one probe.
        let cap = if paused_until.is_some() {
            0
        } else {
            breaker.allowed(now, concurrency)
        };
        let mut free = cap.saturating_sub(in_flight.len());
        if let Some(bucket) = &mut bucket {
            free = free.min(bucket.available(now));
        }
        if free > 0 && next_due.is_none_or(|due| due <= queue.now()) {
            match queue.lease(&spec.lane, free).await {
                Ok(leased) if current_pause(&pause).is_some() => {
                    // A running job paused the lane while this lease was on its way: hand the jobs
                    // back untouched rather than send them into the same refusal.
                    for job in &leased.jobs {
                        let _ = queue.release(job, true).await;
                    }
                }
                Ok(leased) => {
                    next_due = leased.next_due;
                    if let Some(bucket) = &mut bucket {
                        bucket.take(leased.jobs.len(), now);
                    }
                    for job in leased.jobs {
                        in_flight.insert(job.id, job.clone());
                        let handler = handlers.get(&job.kind).cloned();
                        let q = queue.clone();
                        let lane_pause = (pause.clone(), settings.auth_pause);
                        let alone = alone.clone();
                        // Every line logged while the job runs (here, in the flows, in the adapters)
                        // carries its id, kind, lane and ordering key, the key's digit runs masked.
                        let span = tracing::info_span!(
                            "job",
                            job_id = %job.id,
                            kind = %job.kind,
                            lane = %job.lane,
                            key = %dvc_upstream::http::mask_digit_runs(&job.ordering_key),
                            attempt = job.attempts,
                        );
                        running.spawn(
                            async move {
                                let id = job.id;
                                (id, run_job(&q, handler, job, lane_pause, alone).await)
                            }
                            .instrument(span),
                        );
                    }
                    publish(in_flight.len(), &paused_until, &mut breaker);
                }
                Err(error) => {
                    tracing::error!(lane = %spec.lane, %error, "leasing failed; retrying shortly");
                    next_due = Some(queue.now().saturating_add(1000));
                }
            }
        }
        let mut wait = wake_delay(&queue, next_due, &paused_until, settings.idle_poll);
        if let BreakerState::Open { until } = breaker.state(now) {
            wait = wait.min(until.saturating_duration_since(now));
        }
        if let Some(bucket) = &mut bucket
            && free == 0
            && cap > in_flight.len()
        {
            wait = wait.min(bucket.wait(now).max(Duration::from_millis(1)));
        }
        tokio::select! {
            Some(joined) = running.join_next(), if !running.is_empty() => {
                // Reap every job that has ended, not just this one: the next lease then fills all
                // the free slots in one round trip to the store instead of one slot per round trip
                // (which held a 32-wide lane to about one job in flight).
                let mut joined = Some(joined);
                while let Some(result) = joined.take().or_else(|| running.try_join_next()) {
                    let Ok((id, end)) = result else { continue };
                    in_flight.remove(&id);
                    match end {
                        RunEnd::Delivered | RunEnd::Failed(ErrorClass::Permanent) => breaker.success(),
                        RunEnd::Failed(_) => {
                            if breaker.failure(Instant::now()) {
                                tracing::warn!(lane = %spec.lane, failures = settings.breaker.failures,
                                    "lane backing off: its upstream keeps failing");
                            }
                        }
                        RunEnd::PausedLane => {
                            if let Some((_, reason)) = current_pause(&pause) {
                                tracing::warn!(lane = %spec.lane, %reason, pause = ?settings.auth_pause,
                                    "lane paused: upstream refused our credentials or configuration");
                            }
                        }
                        RunEnd::Unrecorded | RunEnd::Dead => {}
                    }
                }
                next_due = None;
                publish(in_flight.len(), &current_pause(&pause), &mut breaker);
            }
            _ = waker.notified() => { next_due = None; }
            _ = tokio::time::sleep(wait) => {
                next_due = None;
                publish(in_flight.len(), &current_pause(&pause), &mut breaker);
            }
            _ = shutdown.changed() => {}
        }
    }

    drain(
        &queue,
        &spec.lane,
        running,
        in_flight,
        settings.shutdown_grace,
    )
    .await;
    board.set(
        &spec.lane,
        LaneStatus {
            state: LaneState::Stopped,
            in_flight: 0,
            reason: None,
            paused_until: None,
        },
    );
}

fn wake_delay(
    queue: &Queue,
    next_due: Option<Millis>,
    paused: &Option<(Instant, String)>,
    idle_poll: Duration,
) -> Duration {
    let mut wait = idle_poll;
    if let Some(due) = next_due {
        wait = wait.min(Duration::from_millis(due.saturating_sub(queue.now())));
    }
    if let Some((until, _)) = paused {
        wait = wait.min(until.saturating_duration_since(Instant::now()));
    }
    wait
}

async fn drain(
    queue: &Queue,
    lane: &str,
    mut running: JoinSet<(JobId, RunEnd)>,
    mut in_flight: HashMap<JobId, Job>,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    while !running.is_empty() {
        match tokio::time::timeout_at(deadline, running.join_next()).await {
            Ok(Some(Ok((id, _)))) => {
                in_flight.remove(&id);
            }
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                running.abort_all();
                break;
            }
        }
    }
    // Jobs whose handler did not finish in time go back to ready now instead of after their lease.
    for job in in_flight.values() {
        match queue.release(job, true).await {
            Ok(_) => tracing::info!(lane, job_id = %job.id, "released unfinished job at shutdown"),
            Err(error) => {
                tracing::warn!(lane, job_id = %job.id, %error, "could not release job at shutdown; its lease will expire")
            }
        }
    }
}

async fn run_job(
    queue: &Queue,
    handler: Option<Arc<dyn JobHandler>>,
    job: Job,
    (pause, auth_pause): (Pause, Duration),
    alone: Alone,
) -> RunEnd {
    // The handler must end before the lease does, or a second worker could run the same job.
    let budget = queue.lease_duration().mul_f64(0.8);
    let started = tokio::time::Instant::now();
    if let Some(h) = &handler {
        let size = h.batch(&job.kind);
        let single = alone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.id);
        if size > 1 && !single {
            match queue.lease_followers(&job, size - 1).await {
                Ok(followers) if !followers.is_empty() => {
                    return run_batch(queue, h.clone(), job, followers, budget, alone).await;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(job_id = %job.id, %error, "could not lease a batch; delivering alone");
                }
            }
        }
    }
    let handler_for_dead = handler.clone();
    let result = match handler {
        None => Err(JobError::permanent(
            "no_handler",
            format!("no handler for job kind {}", job.kind),
        )),
        Some(handler) => {
            match tokio::time::timeout(budget, handler.deliver(std::slice::from_ref(&job))).await {
                Ok(result) => result,
                Err(_) => Err(JobError::retryable(
                    "handler_timeout",
                    format!("no answer within {budget:?}"),
                )),
            }
        }
    };
    if let Some(o) = queue.observer() {
        o.attempted(&job.kind, &job.lane, started.elapsed().as_secs_f64());
    }
    match result {
        Ok(change) if !change.writes.is_empty() || !change.jobs.is_empty() => {
            match queue.complete_all(std::slice::from_ref(&job), change).await {
                Ok(true) => RunEnd::Delivered,
                Ok(false) => {
                    tracing::warn!(job_id = %job.id, kind = %job.kind, lane = %job.lane,
                        "job delivered after its lease was lost; it may be delivered again");
                    RunEnd::Delivered
                }
                Err(error) => {
                    tracing::error!(job_id = %job.id, %error, "could not record completion; the job will run again");
                    RunEnd::Unrecorded
                }
            }
        }
        Ok(_) => match queue.complete(&job).await {
            Ok(Transition::Applied) => RunEnd::Delivered,
            Ok(Transition::LeaseLost) => {
                tracing::warn!(job_id = %job.id, kind = %job.kind, lane = %job.lane,
                    "job delivered after its lease was lost; it may be delivered again");
                RunEnd::Delivered
            }
            Err(error) => {
                tracing::error!(job_id = %job.id, %error, "could not record completion; the job will run again");
                RunEnd::Unrecorded
            }
        },
        Err(error) => {
            if error.class == ErrorClass::Auth {
                *pause.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now() + auth_pause, error.code.clone()));
            }
            let end = fail(queue, &job, &error).await;
            if let (RunEnd::Dead, Some(handler)) = (&end, handler_for_dead)
                && let Err(e) = handler.dead(&job, &error).await
            {
                tracing::warn!(job_id = %job.id, kind = %job.kind, code = %e.code,
                        "could not record a dead-lettered job in its flow");
            }
            match end {
                RunEnd::Dead => RunEnd::Failed(error.class),
                other => other,
            }
        }
    }
}

/// Delivers a head and its followers in one handler call. Success completes them in order; a failure
/// hands all back (attempts refunded, the error noted on the head) and marks the head to run alone.
async fn run_batch(
    queue: &Queue,
    handler: Arc<dyn JobHandler>,
    head: Job,
    followers: Vec<Job>,
    budget: Duration,
    alone: Alone,
) -> RunEnd {
    let mut jobs = Vec::with_capacity(1 + followers.len());
    jobs.push(head);
    jobs.extend(followers);
    let result = match tokio::time::timeout(budget, handler.deliver(&jobs)).await {
        Ok(result) => result,
        Err(_) => Err(JobError::retryable(
            "handler_timeout",
            format!("no answer within {budget:?}"),
        )),
    };
    match result {
        Ok(change) => match queue.complete_all(&jobs, change).await {
            Ok(_) => RunEnd::Delivered,
            Err(error) => {
                tracing::error!(job_id = %jobs[0].id, batch = jobs.len(), %error,
                    "could not record completion; the batch will run again");
                RunEnd::Unrecorded
            }
        },
        Err(error) => {
            tracing::debug!(job_id = %jobs[0].id, batch = jobs.len(), code = %error.code,
                "batch failed; its jobs will be retried one at a time");
            alone
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(jobs[0].id);
            // Followers first: released behind a leased head, they stay out of the runnable index.
            for job in jobs.iter().skip(1) {
                let _ = queue.release(job, true).await;
            }
            let _ = queue.release(&jobs[0], true).await;
            RunEnd::Failed(error.class)
        }
    }
}

async fn fail(queue: &Queue, job: &Job, error: &JobError) -> RunEnd {
    match queue.fail(job, error).await {
        Ok((Decision::PauseLane, _)) => RunEnd::PausedLane,
        Ok((Decision::Dead(reason), Transition::Applied)) => {
            tracing::warn!(job_id = %job.id, kind = %job.kind, lane = %job.lane,
                class = error.class.as_str(), code = %error.code, reason = reason.as_str(),
                "job dead-lettered");
            RunEnd::Dead
        }
        Ok((decision, _)) => {
            tracing::debug!(job_id = %job.id, kind = %job.kind, lane = %job.lane,
                    class = error.class.as_str(), code = %error.code, ?decision, "attempt failed");
            RunEnd::Failed(error.class)
        }
        Err(store_error) => {
            tracing::error!(job_id = %job.id, error = %store_error, "could not record a failed attempt");
            RunEnd::Unrecorded
        }
    }
}

/// What the flows contribute: a handler per job kind and the lanes to run.
#[derive(Debug, Default)]
pub struct Wiring {
    pub handlers: Handlers,
    pub lanes: Vec<String>,
}

impl Wiring {
    /// Adds `other`'s handlers and lanes (a lane named twice runs once).
    pub fn merge(&mut self, other: Wiring) {
        self.handlers.extend(other.handlers);
        for lane in other.lanes {
            if !self.lanes.contains(&lane) {
                self.lanes.push(lane);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::queue::{
        Backend, JobFilter, JobState, KvJobStore, KvOptions, NewJob, RetryPolicies, RetryPolicy,
        TokioClock,
    };

    /// Records what it delivered; fails with `fail` (if any) for the first `fail_times` calls; sleeps
    /// `delay` per job.
    #[derive(Debug)]
    struct Recorder {
        seen: Mutex<Vec<String>>,
        calls: Mutex<Vec<Instant>>,
        fail: Option<JobError>,
        fail_times: AtomicU32,
        delay: Duration,
    }

    impl Recorder {
        fn new(fail: Option<JobError>, fail_times: u32, delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                seen: Mutex::new(Vec::new()),
                calls: Mutex::new(Vec::new()),
                fail,
                fail_times: AtomicU32::new(fail_times),
                delay,
            })
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }

    impl JobHandler for Recorder {
        fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a> {
            Box::pin(async move {
                if let Ok(mut calls) = self.calls.lock() {
                    calls.push(Instant::now());
                }
                tokio::time::sleep(self.delay).await;
                if let Some(error) = &self.fail
                    && self
                        .fail_times
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    return Err(error.clone());
                }
                if let Ok(mut seen) = self.seen.lock() {
                    seen.push(String::from_utf8_lossy(&job.payload).into_owned());
                }
                Ok(())
            })
        }
    }

    fn queue(dir: &std::path::Path, lease: Duration) -> Queue {
        let store = KvJobStore::open(dir, Backend::Redb, KvOptions::default()).expect("store");
        Queue::new(
            Arc::new(store),
            Arc::new(TokioClock::new()),
            RetryPolicies {
                default: RetryPolicy {
                    base: Duration::from_millis(10),
                    cap: Duration::from_millis(50),
                    max_attempts: 10,
                    max_age: Duration::from_secs(60),
                },
                per_kind: Default::default(),
            },
            lease,
        )
    }

    fn start(
        q: &Queue,
        handler: Arc<Recorder>,
        settings: WorkerSettings,
    ) -> (LaneBoard, watch::Sender<bool>, JoinHandle<()>) {
        start_lane(q, handler, settings, 4, None)
    }

    fn start_lane(
        q: &Queue,
        handler: Arc<Recorder>,
        settings: WorkerSettings,
        concurrency: usize,
        rate_per_second: Option<f64>,
    ) -> (LaneBoard, watch::Sender<bool>, JoinHandle<()>) {
        let mut handlers = Handlers::default();
        handlers.register("k", handler);
        let board = LaneBoard::default();
        let (stop, stopped) = watch::channel(false);
        let task = spawn_lane(
            q.clone(),
            LaneSpec {
                lane: "l".into(),
                concurrency,
                rate_per_second,
            },
            handlers,
            settings,
            board.clone(),
            stopped,
        );
        (board, stop, task)
    }

    async fn wait_until(mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached in 5 s");
    }

    /// Delivers up to ten jobs per call; fails its first batch call once.
    #[derive(Debug, Default)]
    struct Batcher {
        calls: Mutex<Vec<Vec<String>>>,
        failed_once: std::sync::atomic::AtomicBool,
    }

    impl JobHandler for Batcher {
        fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a> {
            self.handle_batch(std::slice::from_ref(job))
        }

        fn batch(&self, _kind: &str) -> usize {
            10
        }

        fn handle_batch<'a>(&'a self, jobs: &'a [Job]) -> HandlerFuture<'a> {
            Box::pin(async move {
                let names: Vec<String> = jobs
                    .iter()
                    .map(|j| String::from_utf8_lossy(&j.payload).into_owned())
                    .collect();
                let fail = jobs.len() > 1 && !self.failed_once.swap(true, Ordering::SeqCst);
                if let Ok(mut calls) = self.calls.lock() {
                    calls.push(if fail { vec![] } else { names });
                }
                if fail {
                    return Err(JobError::retryable("http_503", "busy"));
                }
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consecutive_jobs_of_a_key_are_delivered_in_batches_in_order_and_a_failed_batch_one_by_one()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), Duration::from_secs(10));
        for n in 0..25 {
            q.enqueue(NewJob::new("k", "l", "A", format!("{n:02}")))
                .await
                .expect("enqueue");
        }
        let handler = Arc::new(Batcher::default());
        let mut handlers = Handlers::default();
        handlers.register("k", handler.clone());
        let (stop, stopped) = watch::channel(false);
        let task = spawn_lane(
            q.clone(),
            LaneSpec {
                lane: "l".into(),
                concurrency: 4,
                rate_per_second: None,
            },
            handlers,
            WorkerSettings::default(),
            LaneBoard::default(),
            stopped,
        );
        let delivered = || -> Vec<String> {
            handler
                .calls
                .lock()
                .map(|c| c.iter().flatten().cloned().collect())
                .unwrap_or_default()
        };
        wait_until(|| delivered().len() >= 25).await;
        let calls = handler.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let expected: Vec<String> = (0..25).map(|n| format!("{n:02}")).collect();
        assert_eq!(delivered(), expected, "each once, in order");
        assert!(calls.iter().all(|c| c.len() <= 10));
        // calls[0] is the failed batch; the head then runs alone, and batches resume.
        assert!(calls[0].is_empty());
        assert_eq!(calls[1], vec!["00".to_owned()]);
        assert!(calls.iter().skip(2).any(|c| c.len() == 10), "{calls:?}");
        for _ in 0..500 {
            let c = q.counts().await.expect("counts");
            if c[0].done == 25 {
                assert_eq!((c[0].ready, c[0].leased), (0, 0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(q.counts().await.expect("counts")[0].done, 25);
        let _ = stop.send(true);
        task.await.expect("lane stops");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_delivers_every_job_in_key_order_through_retries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), Duration::from_secs(10));
        let handler = Recorder::new(Some(JobError::retryable("503", "busy")), 3, Duration::ZERO);
        let (_board, stop, task) = start(&q, handler.clone(), WorkerSettings::default());
        for n in 0..5 {
            for key in ["A", "B"] {
                q.enqueue(NewJob::new("k", "l", key, format!("{key}{n}")))
                    .await
                    .expect("enqueue");
            }
        }
        wait_until(|| handler.seen().len() == 10).await;
        for key in ["A", "B"] {
            let order: Vec<String> = handler
                .seen()
                .into_iter()
                .filter(|s| s.starts_with(key))
                .collect();
            let expected: Vec<String> = (0..5).map(|n| format!("{key}{n}")).collect();
            assert_eq!(order, expected);
        }
        let _ = stop.send(true);
        task.await.expect("lane stops");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_auth_failure_pauses_the_lane_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), Duration::from_secs(10));
        let handler = Recorder::new(Some(JobError::auth("401", "refused")), 1, Duration::ZERO);
        let settings = WorkerSettings {
            auth_pause: Duration::from_secs(2),
            ..WorkerSettings::default()
        };
        let (board, stop, task) = start(&q, handler.clone(), settings);
        let id = q
            .enqueue(NewJob::new("k", "l", "A", "A0"))
            .await
            .expect("enqueue")
            .id;
        wait_until(|| {
            board
                .snapshot()
                .get("l")
                .is_some_and(|s| s.state == LaneState::Paused)
        })
        .await;
        let status = board.snapshot()["l"].clone();
        assert_eq!(status.reason.as_deref(), Some("401"));
        assert!(handler.seen().is_empty(), "nothing delivered while paused");
        let job = q.get(id).await.expect("get").expect("job");
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Ready, 0),
            "attempt refunded"
        );
        // After the pause the lane probes again and the job goes through.
        wait_until(|| handler.seen() == ["A0"]).await;
        wait_until(|| board.snapshot()["l"].state == LaneState::Running).await;
        let _ = stop.send(true);
        task.await.expect("lane stops");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_releases_a_job_that_outlives_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), Duration::from_secs(30));
        let handler = Recorder::new(None, 0, Duration::from_secs(20));
        let settings = WorkerSettings {
            shutdown_grace: Duration::from_millis(100),
            ..WorkerSettings::default()
        };
        let (_board, stop, task) = start(&q, handler, settings);
        let id = q
            .enqueue(NewJob::new("k", "l", "A", "A0"))
            .await
            .expect("enqueue")
            .id;
        let mut leased = false;
        for _ in 0..500 {
            let job = q.get(id).await.expect("get").expect("job");
            if job.state == JobState::Leased {
                leased = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            leased,
            "the job was never leased: nothing here would be tested"
        );
        let started = tokio::time::Instant::now();
        let _ = stop.send(true);
        task.await.expect("lane stops");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "did not wait for the handler"
        );
        let job = q.get(id).await.expect("get").expect("job");
        assert_eq!((job.state, job.attempts), (JobState::Ready, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_that_outlasts_its_lease_budget_is_cut_off_and_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), Duration::from_millis(250));
        let handler = Recorder::new(None, 0, Duration::from_secs(5));
        let (_board, stop, task) = start(&q, handler, WorkerSettings::default());
        let id = q
            .enqueue(NewJob::new("k", "l", "A", "A0"))
            .await
            .expect("enqueue")
            .id;
        let mut last_code = None;
        for _ in 0..500 {
            let job = q.get(id).await.expect("get").expect("job");
            last_code = job.last_error.map(|e| e.code);
            if last_code.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(last_code.as_deref(), Some("handler_timeout"));
        let _ = stop.send(true);
        task.await.expect("lane stops");
        let all = q.list(JobFilter::default(), None, 10).await.expect("list");
        assert_eq!(all.len(), 1);
        assert_ne!(
            all[0].state,
            JobState::Done,
            "a cut-off attempt never counts as delivered"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_upstream_makes_the_lane_back_off_then_a_probe_reopens_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), Duration::from_secs(10));
        let handler = Recorder::new(Some(JobError::retryable("503", "down")), 3, Duration::ZERO);
        let settings = WorkerSettings {
            breaker: BreakerSettings {
                failures: 3,
                cooldown: Duration::from_millis(600),
                max_cooldown: Duration::from_secs(5),
            },
            ..WorkerSettings::default()
        };
        let (board, stop, task) = start_lane(&q, handler.clone(), settings, 1, None);
        for key in ["A", "B", "C"] {
            q.enqueue(NewJob::new("k", "l", key, key))
                .await
                .expect("enqueue");
        }
        wait_until(|| {
            board
                .snapshot()
                .get("l")
                .is_some_and(|s| s.state == LaneState::BackingOff)
        })
        .await;
        assert_eq!(
            board.snapshot()["l"].reason.as_deref(),
            Some("circuit_open")
        );
        let calls_when_opened = handler.calls.lock().map(|c| c.len()).unwrap_or(0);
        assert_eq!(calls_when_opened, 3);
        // No call while backing off: the fourth (the probe) comes a cooldown after the third.
        wait_until(|| handler.seen().len() == 3).await;
        let calls = handler.calls.lock().map(|c| c.clone()).unwrap_or_default();
        assert!(
            calls[3] - calls[2] >= Duration::from_millis(550),
            "the probe waited for the cooldown"
        );
        wait_until(|| board.snapshot()["l"].state == LaneState::Running).await;
        let _ = stop.send(true);
        task.await.expect("lane stops");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rate_limit_spreads_deliveries_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path(), Duration::from_secs(10));
        let handler = Recorder::new(None, 0, Duration::ZERO);
        // All 25 are runnable before the lane starts, in one commit: without the limit they would all
        // start at once, so the spacing below can only come from the token bucket.
        q.enqueue_all(
            (0..25)
                .map(|n| NewJob::new("k", "l", format!("K{n}"), format!("{n}")))
                .collect(),
        )
        .await
        .expect("enqueue");
        let (_board, stop, task) = start_lane(
            &q,
            handler.clone(),
            WorkerSettings::default(),
            8,
            Some(10.0),
        );
        wait_until(|| handler.seen().len() == 25).await;
        // The token bucket's promise, whatever the enqueue pace: the i-th start comes no sooner than
        // (i + 1 - burst) / rate seconds after the first (burst 10, rate 10/s), less scheduling slack.
        let calls = handler.calls.lock().map(|c| c.clone()).unwrap_or_default();
        for (i, at) in calls.iter().enumerate() {
            let earliest = Duration::from_secs_f64(((i + 1).saturating_sub(10)) as f64 / 10.0);
            let slack = Duration::from_millis(60);
            assert!(
                *at - calls[0] + slack >= earliest,
                "call {i} after {:?}, limit {earliest:?}",
                *at - calls[0]
            );
        }
        assert!(calls[24] - calls[0] >= Duration::from_millis(1400));
        let _ = stop.send(true);
        task.await.expect("lane stops");
    }
}
