//! The queue operations as transactions over an ordered key-value engine.
//!
//! Each function reads and writes through one `KvWrite`; the caller commits (or aborts) the whole batch.
//! Functions check their preconditions before writing anything, so an operation that answers "not applied"
//! (lease lost, wrong state) leaves no partial change behind in the shared transaction.

use ulid::Ulid;

use super::keys::{self, Table};
use super::{KvRead, KvWrite};
use crate::queue::job::{Job, JobError, JobId, JobState, Millis, NewJob, RecordedError};
use crate::queue::store::{
    AdminOutcome, Change, Committed, Disposition, Enqueued, Expect, JobFilter, LaneCounts, Leased,
    Record, StoreError, Transition,
};

/// One queued request to the writer.
#[derive(Debug)]
pub(crate) enum Op {
    Enqueue {
        jobs: Vec<NewJob>,
        now: Millis,
    },
    Lease {
        lane: String,
        limit: usize,
        now: Millis,
        until: Millis,
    },
    Finish {
        id: JobId,
        token: u64,
        disposition: Disposition,
        now: Millis,
    },
    /// Leases that expired at or before `cutoff` go back to ready, due at `now`.
    ExpireLeases {
        cutoff: Millis,
        now: Millis,
        limit: usize,
    },
    RetryDead {
        id: JobId,
        now: Millis,
    },
    Discard {
        id: JobId,
        now: Millis,
    },
    Replay {
        filter: JobFilter,
        now: Millis,
        limit: usize,
    },
    Purge {
        before: Millis,
        limit: usize,
    },
    Commit {
        change: Change,
        now: Millis,
    },
    /// Several jobs done at once (a delivered batch), in order.
    CompleteMany {
        leases: Vec<(JobId, u64)>,
        change: Change,
        now: Millis,
    },
    LeaseFollowers {
        head: JobId,
        limit: usize,
        now: Millis,
        until: Millis,
    },
    PurgeRecords {
        now: Millis,
        limit: usize,
    },
}

#[derive(Debug)]
pub(crate) enum OpResult {
    Enqueued(Vec<Enqueued>),
    Leased(Leased),
    Transition(Transition),
    Count(usize),
    Admin(AdminOutcome),
    Committed(Committed),
    Completed(Completed),
}

/// The answer to completing delivered jobs with the flow's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completed {
    pub transitions: Vec<Transition>,
    /// False when a lease was lost or a condition failed: the change was not written.
    pub change_applied: bool,
}

/// Completes delivered jobs and writes the flow's change with them, all or (for the change) nothing:
/// the change goes in only if every lease is still held and its conditions hold.
fn complete_many(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    seq: &mut u64,
    leases: &[(JobId, u64)],
    change: &Change,
    now: Millis,
) -> Result<Completed, StoreError> {
    // Each job is read once: the lease check and the finish share it (the change cannot touch these
    // jobs: it writes records and adds new jobs).
    let mut loaded = Vec::with_capacity(leases.len());
    let mut held = true;
    for (id, token) in leases {
        let job = load(tx, *id)?;
        held &= job
            .as_ref()
            .is_some_and(|j| j.state == JobState::Leased && j.lease_token == Some(*token));
        loaded.push(job);
    }
    let change_applied = held
        && (change.writes.is_empty() && change.jobs.is_empty()
            || matches!(commit(tx, d, seq, change, now)?, Committed::Applied { .. }));
    let mut transitions = Vec::with_capacity(leases.len());
    let mut jobs = loaded.into_iter().zip(leases).peekable();
    while let Some((job, (_, token))) = jobs.next() {
        // When the next job of the batch is the next of the same key and still leased, promoting
        // after this one would only read it and find it leased: skip that read.
        let promote = !matches!(
            (&job, jobs.peek()),
            (Some(this), Some((Some(next), _)))
                if next.state == JobState::Leased
                    && next.lane == this.lane
                    && next.ordering_key == this.ordering_key
                    && next.seq > this.seq
        );
        transitions.push(finish_loaded(
            tx,
            d,
            job,
            *token,
            &Disposition::Done,
            now,
            promote,
        )?);
    }
    Ok(Completed {
        transitions,
        change_applied,
    })
}

/// Counter changes of one batch, written once at its end instead of once per job.
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    /// (lane, state, change). A batch touches a few lanes and states, so a list searched in place
    /// beats a map whose key would be allocated for every operation.
    counters: Vec<(String, JobState, i64)>,
}

impl Deltas {
    fn add(&mut self, lane: &str, state: JobState, delta: i64) {
        match self
            .counters
            .iter_mut()
            .find(|(l, s, _)| *s == state && l == lane)
        {
            Some((_, _, sum)) => *sum += delta,
            None => self.counters.push((lane.to_owned(), state, delta)),
        }
    }

    /// Writes the accumulated counters and the next sequence number.
    pub(crate) fn flush(self, tx: &mut dyn KvWrite, seq: u64) -> Result<(), StoreError> {
        for (lane, state, delta) in self.counters {
            if delta == 0 {
                continue;
            }
            let key = keys::counter_key(&lane, state);
            let value = read_u64(tx, Table::Meta, &key)?.saturating_add_signed(delta);
            if value == 0 {
                tx.delete(Table::Meta, &key)?;
            } else {
                tx.put(Table::Meta, &key, &value.to_be_bytes())?;
            }
        }
        tx.put(Table::Meta, keys::SEQ_KEY, &seq.to_be_bytes())
    }
}

pub(crate) fn apply(
    tx: &mut dyn KvWrite,
    seq: &mut u64,
    d: &mut Deltas,
    op: &Op,
) -> Result<OpResult, StoreError> {
    Ok(match op {
        Op::Enqueue { jobs, now } => OpResult::Enqueued(enqueue(tx, d, seq, jobs, *now)?),
        Op::Lease {
            lane,
            limit,
            now,
            until,
        } => OpResult::Leased(lease(tx, d, lane, *limit, *now, *until)?),
        Op::Finish {
            id,
            token,
            disposition,
            now,
        } => OpResult::Transition(finish(tx, d, *id, *token, disposition, *now)?),
        Op::ExpireLeases { cutoff, now, limit } => {
            OpResult::Count(expire_leases(tx, d, *cutoff, *now, *limit)?)
        }
        Op::RetryDead { id, now } => OpResult::Admin(retry_dead(tx, d, *id, *now)?),
        Op::Discard { id, now } => OpResult::Admin(discard(tx, d, *id, *now)?),
        Op::Replay { filter, now, limit } => OpResult::Count(replay(tx, d, filter, *now, *limit)?),
        Op::Purge { before, limit } => OpResult::Count(purge(tx, d, *before, *limit)?),
        Op::CompleteMany {
            leases,
            change,
            now,
        } => OpResult::Completed(complete_many(tx, d, seq, leases, change, *now)?),
        Op::LeaseFollowers {
            head,
            limit,
            now,
            until,
        } => OpResult::Leased(Leased {
            jobs: lease_followers(tx, d, *head, *limit, *now, *until)?,
            next_due: None,
        }),
        Op::Commit { change, now } => OpResult::Committed(commit(tx, d, seq, change, *now)?),
        Op::PurgeRecords { now, limit } => OpResult::Count(purge_records(tx, *now, *limit)?),
    })
}

pub(crate) fn load(tx: &dyn KvRead, id: JobId) -> Result<Option<Job>, StoreError> {
    tx.get(Table::Jobs, &keys::id_key(id))?
        .map(|bytes| Job::decode(&bytes).map_err(StoreError::Corrupt))
        .transpose()
}

fn load_existing(tx: &dyn KvRead, id: JobId) -> Result<Job, StoreError> {
    load(tx, id)?.ok_or_else(|| StoreError::Corrupt(format!("index names missing job {id}")))
}

fn save(tx: &mut dyn KvWrite, job: &Job) -> Result<(), StoreError> {
    tx.put(Table::Jobs, &keys::id_key(job.id), &job.encode())
}

fn read_u64(tx: &dyn KvRead, table: Table, key: &[u8]) -> Result<u64, StoreError> {
    match tx.get(table, key)? {
        None => Ok(0),
        Some(bytes) => bytes
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("counter of wrong size".into())),
    }
}

/// Moves a job to `new`, keeping the state index and counters in step.
fn set_state(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    job: &mut Job,
    new: JobState,
) -> Result<(), StoreError> {
    if job.state == new {
        return Ok(());
    }
    d.add(&job.lane, job.state, -1);
    d.add(&job.lane, new, 1);
    // Only dead jobs are indexed by state: the dead-letter list and replay need them fast; other
    // states are counted by the counters and listed by scanning, which keeps the hot path short.
    if job.state == JobState::Dead {
        tx.delete(Table::ByState, &keys::state_key(JobState::Dead, job.id))?;
    }
    if new == JobState::Dead {
        tx.put(
            Table::ByState,
            &keys::state_key(JobState::Dead, job.id),
            &[],
        )?;
    }
    job.state = new;
    Ok(())
}

fn head_of(tx: &dyn KvRead, lane: &str, ordering_key: &str) -> Result<Option<JobId>, StoreError> {
    let prefix = keys::keys_prefix(lane, ordering_key);
    let end = keys::prefix_end(&prefix);
    tx.scan(Table::Keys, &prefix, end.as_deref(), 1)?
        .first()
        .map(|(_, v)| keys::id_from(v))
        .transpose()
}

/// Whether the key has an unfinished job in the lane (cheaper than finding which).
fn has_unfinished(tx: &dyn KvRead, lane: &str, ordering_key: &str) -> Result<bool, StoreError> {
    let prefix = keys::keys_prefix(lane, ordering_key);
    let end = keys::prefix_end(&prefix);
    tx.any(Table::Keys, &prefix, end.as_deref())
}

/// Indexes a ready job as runnable, but only if it heads its key: a job released behind a leased or
/// dead head (a batch follower) waits until the head finishes and `promote_next` reaches it.
fn ready_if_head(tx: &mut dyn KvWrite, job: &Job) -> Result<(), StoreError> {
    if head_of(tx, &job.lane, &job.ordering_key)? == Some(job.id) {
        tx.put(
            Table::Ready,
            &keys::ready_key(&job.lane, job.next_attempt_at, job.seq),
            &keys::id_key(job.id),
        )?;
    }
    Ok(())
}

/// After the head of a key finished, the next job of that key becomes runnable (if it is ready).
fn promote_next(tx: &mut dyn KvWrite, lane: &str, ordering_key: &str) -> Result<(), StoreError> {
    if let Some(next) = head_of(tx, lane, ordering_key)? {
        let job = load_existing(tx, next)?;
        if job.state == JobState::Ready {
            tx.put(
                Table::Ready,
                &keys::ready_key(lane, job.next_attempt_at, job.seq),
                &keys::id_key(job.id),
            )?;
        }
    }
    Ok(())
}

fn enqueue(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    seq: &mut u64,
    jobs: &[NewJob],
    now: Millis,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut out = Vec::with_capacity(jobs.len());
    for new in jobs {
        if let Some(key) = &new.idempotency_key
            && let Some(existing) = tx.get(Table::Idem, key.as_bytes())?
        {
            out.push(Enqueued {
                id: keys::id_from(&existing)?,
                existing: true,
            });
            continue;
        }
        let id = Ulid::from_parts(now, fastrand::u128(..));
        let job_seq = *seq;
        *seq += 1;
        let is_head = !has_unfinished(tx, &new.lane, &new.ordering_key)?;
        tx.put(
            Table::Keys,
            &keys::keys_key(&new.lane, &new.ordering_key, job_seq),
            &keys::id_key(id),
        )?;
        if is_head {
            tx.put(
                Table::Ready,
                &keys::ready_key(&new.lane, now, job_seq),
                &keys::id_key(id),
            )?;
        }
        let job = Job {
            id,
            seq: job_seq,
            kind: new.kind.clone(),
            lane: new.lane.clone(),
            ordering_key: new.ordering_key.clone(),
            idempotency_key: new.idempotency_key.clone(),
            state: JobState::Ready,
            attempts: 0,
            next_attempt_at: now,
            lease_token: None,
            lease_expires_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            queued_at: now,
            finished_at: None,
            dead_reason: None,
            payload: new.payload.clone(),
        };
        d.add(&job.lane, JobState::Ready, 1);
        save(tx, &job)?;
        if let Some(key) = &new.idempotency_key {
            tx.put(Table::Idem, key.as_bytes(), &keys::id_key(id))?;
        }
        out.push(Enqueued {
            id,
            existing: false,
        });
    }
    Ok(out)
}

fn lease(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    lane: &str,
    limit: usize,
    now: Millis,
    until: Millis,
) -> Result<Leased, StoreError> {
    let (from, to) = keys::ready_due_range(lane, now);
    let due = tx.scan(Table::Ready, &from, Some(&to), limit)?;
    let mut jobs = Vec::with_capacity(due.len());
    for (key, value) in &due {
        tx.delete(Table::Ready, key)?;
        let mut job = load_existing(tx, keys::id_from(value)?)?;
        if job.state != JobState::Ready {
            // Only ready jobs are indexed here; a stale entry is dropped rather than handed out twice.
            continue;
        }
        set_state(tx, d, &mut job, JobState::Leased)?;
        job.attempts = job.attempts.saturating_add(1);
        job.lease_token = Some(fastrand::u64(1..));
        job.lease_expires_at = Some(until);
        job.updated_at = now;
        tx.put(Table::Leases, &keys::time_id_key(until, job.id), &[])?;
        save(tx, &job)?;
        jobs.push(job);
    }
    let next_due = if due.len() == limit {
        Some(now)
    } else {
        let prefix = keys::lane_prefix(lane);
        let end = keys::prefix_end(&prefix);
        match tx.scan(Table::Ready, &prefix, end.as_deref(), 1)?.first() {
            Some((key, _)) => Some(keys::ready_key_time(lane, key)?),
            None => None,
        }
    };
    Ok(Leased { jobs, next_due })
}

/// Leases the ready jobs right behind a leased head, of the head's kind, due now, stopping at the first
/// that is not: they are delivered together with the head, in order.
fn lease_followers(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    head: JobId,
    limit: usize,
    now: Millis,
    until: Millis,
) -> Result<Vec<Job>, StoreError> {
    let Some(head) = load(tx, head)? else {
        return Ok(vec![]);
    };
    if head.state != JobState::Leased || limit == 0 {
        return Ok(vec![]);
    }
    let from = keys::keys_key(&head.lane, &head.ordering_key, head.seq + 1);
    let end = keys::prefix_end(&keys::keys_prefix(&head.lane, &head.ordering_key));
    let mut out = Vec::new();
    for (_, value) in tx.scan(Table::Keys, &from, end.as_deref(), limit)? {
        let mut job = load_existing(tx, keys::id_from(&value)?)?;
        if job.state != JobState::Ready || job.kind != head.kind || job.next_attempt_at > now {
            break;
        }
        set_state(tx, d, &mut job, JobState::Leased)?;
        job.attempts = job.attempts.saturating_add(1);
        job.lease_token = Some(fastrand::u64(1..));
        job.lease_expires_at = Some(until);
        job.updated_at = now;
        tx.put(Table::Leases, &keys::time_id_key(until, job.id), &[])?;
        save(tx, &job)?;
        out.push(job);
    }
    Ok(out)
}

fn finish(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    id: JobId,
    token: u64,
    disposition: &Disposition,
    now: Millis,
) -> Result<Transition, StoreError> {
    let job = load(tx, id)?;
    finish_loaded(tx, d, job, token, disposition, now, true)
}

/// [`finish`] of a job already read in this transaction; `promote`: make the key's next job runnable
/// (callers skip it only when that next job is known to be leased).
fn finish_loaded(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    job: Option<Job>,
    token: u64,
    disposition: &Disposition,
    now: Millis,
    promote: bool,
) -> Result<Transition, StoreError> {
    let Some(mut job) = job else {
        return Ok(Transition::LeaseLost);
    };
    let id = job.id;
    if job.state != JobState::Leased || job.lease_token != Some(token) {
        return Ok(Transition::LeaseLost);
    }
    if let Some(expires) = job.lease_expires_at {
        tx.delete(Table::Leases, &keys::time_id_key(expires, id))?;
    }
    job.lease_token = None;
    job.lease_expires_at = None;
    job.updated_at = now;
    match disposition {
        Disposition::Done => {
            set_state(tx, d, &mut job, JobState::Done)?;
            job.finished_at = Some(now);
            tx.delete(
                Table::Keys,
                &keys::keys_key(&job.lane, &job.ordering_key, job.seq),
            )?;
            tx.put(Table::Finished, &keys::time_id_key(now, id), &[])?;
            if promote {
                promote_next(tx, &job.lane, &job.ordering_key)?;
            }
        }
        Disposition::RetryAt { at, error } => {
            set_state(tx, d, &mut job, JobState::Ready)?;
            job.next_attempt_at = *at;
            job.last_error = Some(error.clone());
            ready_if_head(tx, &job)?;
        }
        Disposition::Dead { error, reason } => {
            set_state(tx, d, &mut job, JobState::Dead)?;
            job.last_error = Some(error.clone());
            job.dead_reason = Some(*reason);
        }
        Disposition::Release {
            not_before,
            refund,
            note,
        } => {
            set_state(tx, d, &mut job, JobState::Ready)?;
            if *refund {
                job.attempts = job.attempts.saturating_sub(1);
            }
            if let Some(note) = note {
                job.last_error = Some(note.clone());
            }
            job.next_attempt_at = (*not_before).max(now);
            ready_if_head(tx, &job)?;
        }
    }
    save(tx, &job)?;
    Ok(Transition::Applied)
}

fn expire_leases(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    cutoff: Millis,
    now: Millis,
    limit: usize,
) -> Result<usize, StoreError> {
    let expired = tx.scan(Table::Leases, &[], Some(&keys::time_upto(cutoff)), limit)?;
    let mut count = 0;
    for (key, _) in &expired {
        tx.delete(Table::Leases, key)?;
        let mut job = load_existing(tx, keys::id_suffix(key)?)?;
        if job.state != JobState::Leased {
            continue;
        }
        set_state(tx, d, &mut job, JobState::Ready)?;
        job.lease_token = None;
        job.lease_expires_at = None;
        job.next_attempt_at = now;
        job.updated_at = now;
        job.last_error = Some(RecordedError::of(
            &JobError::retryable(
                "lease_expired",
                "the worker holding this job stopped or did not finish within its lease",
            ),
            now,
        ));
        ready_if_head(tx, &job)?;
        save(tx, &job)?;
        count += 1;
    }
    Ok(count)
}

fn retry_dead(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    id: JobId,
    now: Millis,
) -> Result<AdminOutcome, StoreError> {
    let Some(mut job) = load(tx, id)? else {
        return Ok(AdminOutcome::NotFound);
    };
    if job.state != JobState::Dead {
        return Ok(AdminOutcome::WrongState(job.state));
    }
    set_state(tx, d, &mut job, JobState::Ready)?;
    job.dead_reason = None;
    job.attempts = 0;
    job.queued_at = now;
    job.next_attempt_at = now;
    job.updated_at = now;
    if head_of(tx, &job.lane, &job.ordering_key)? == Some(id) {
        tx.put(
            Table::Ready,
            &keys::ready_key(&job.lane, now, job.seq),
            &keys::id_key(id),
        )?;
    }
    save(tx, &job)?;
    Ok(AdminOutcome::Applied)
}

fn discard(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    id: JobId,
    now: Millis,
) -> Result<AdminOutcome, StoreError> {
    let Some(mut job) = load(tx, id)? else {
        return Ok(AdminOutcome::NotFound);
    };
    match job.state {
        JobState::Ready => tx.delete(
            Table::Ready,
            &keys::ready_key(&job.lane, job.next_attempt_at, job.seq),
        )?,
        JobState::Dead => {}
        other => return Ok(AdminOutcome::WrongState(other)),
    }
    tx.delete(
        Table::Keys,
        &keys::keys_key(&job.lane, &job.ordering_key, job.seq),
    )?;
    set_state(tx, d, &mut job, JobState::Discarded)?;
    job.finished_at = Some(now);
    job.updated_at = now;
    tx.put(Table::Finished, &keys::time_id_key(now, id), &[])?;
    save(tx, &job)?;
    promote_next(tx, &job.lane, &job.ordering_key)?;
    Ok(AdminOutcome::Applied)
}

const SCAN_CHUNK: usize = 256;

fn replay(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    filter: &JobFilter,
    now: Millis,
    limit: usize,
) -> Result<usize, StoreError> {
    let prefix = [JobState::Dead.code()];
    let end = keys::prefix_end(&prefix);
    let mut from = prefix.to_vec();
    let mut count = 0;
    while count < limit {
        let chunk = tx.scan(Table::ByState, &from, end.as_deref(), SCAN_CHUNK)?;
        let Some((last, _)) = chunk.last() else { break };
        from = last.clone();
        from.push(0);
        for (key, _) in &chunk {
            let job = load_existing(tx, keys::id_suffix(key)?)?;
            if filter.matches(&job)
                && count < limit
                && retry_dead(tx, d, job.id, now)? == AdminOutcome::Applied
            {
                count += 1;
            }
        }
        if chunk.len() < SCAN_CHUNK {
            break;
        }
    }
    Ok(count)
}

fn purge(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    before: Millis,
    limit: usize,
) -> Result<usize, StoreError> {
    let old = tx.scan(
        Table::Finished,
        &[],
        Some(&keys::time_upto(before.saturating_sub(1))),
        limit,
    )?;
    for (key, _) in &old {
        tx.delete(Table::Finished, key)?;
        let id = keys::id_suffix(key)?;
        let Some(job) = load(tx, id)? else { continue };
        if !job.state.is_finished() {
            continue;
        }
        d.add(&job.lane, job.state, -1);
        tx.delete(Table::Jobs, &keys::id_key(id))?;
        if let Some(idem) = &job.idempotency_key
            && tx.get(Table::Idem, idem.as_bytes())?.as_deref() == Some(&keys::id_key(id)[..])
        {
            tx.delete(Table::Idem, idem.as_bytes())?;
        }
    }
    Ok(old.len())
}

pub(crate) fn unfinished(
    tx: &dyn KvRead,
    lane: &str,
    ordering_key: &str,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let prefix = keys::keys_prefix(lane, ordering_key);
    let end = keys::prefix_end(&prefix);
    tx.scan(Table::Keys, &prefix, end.as_deref(), limit)?
        .into_iter()
        .map(|(_, id)| load_existing(tx, keys::id_from(&id)?))
        .collect()
}

pub(crate) fn get_record(
    tx: &dyn KvRead,
    collection: &str,
    key: &str,
) -> Result<Option<Record>, StoreError> {
    tx.get(Table::Records, &keys::record_key(collection, key))?
        .map(|bytes| keys::decode_record(&bytes))
        .transpose()
}

pub(crate) fn scan_records(
    tx: &dyn KvRead,
    collection: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, Record)>, StoreError> {
    let start = keys::record_key(collection, prefix);
    let end = keys::prefix_end(&start);
    let from = match after {
        // The first key after `after`: itself followed by the smallest byte.
        Some(a) if a.as_bytes() >= prefix.as_bytes() => {
            let mut k = keys::record_key(collection, a);
            k.push(0);
            k
        }
        _ => start,
    };
    tx.scan(Table::Records, &from, end.as_deref(), limit)?
        .into_iter()
        .map(|(k, v)| {
            Ok((
                keys::record_key_name(collection, &k)?,
                keys::decode_record(&v)?,
            ))
        })
        .collect()
}

/// Checks every condition before writing anything, so a conflict leaves the transaction untouched.
fn commit(
    tx: &mut dyn KvWrite,
    d: &mut Deltas,
    seq: &mut u64,
    change: &Change,
    now: Millis,
) -> Result<Committed, StoreError> {
    let mut current = Vec::with_capacity(change.writes.len());
    for (index, w) in change.writes.iter().enumerate() {
        let found = get_record(tx, w.collection, &w.key)?;
        let holds = match w.expect {
            Expect::Absent => found.is_none(),
            Expect::Version(v) => found.as_ref().is_some_and(|r| r.version == v),
            Expect::Any => true,
        };
        if !holds {
            return Ok(Committed::Conflict {
                index,
                current: found,
            });
        }
        current.push(found);
    }
    let mut versions = Vec::with_capacity(change.writes.len());
    for (w, found) in change.writes.iter().zip(current) {
        let key = keys::record_key(w.collection, &w.key);
        if let Some(at) = found.as_ref().and_then(|r| r.expires_at) {
            tx.delete(Table::Expiry, &keys::expiry_key(at, &key))?;
        }
        match &w.value {
            None => {
                tx.delete(Table::Records, &key)?;
                versions.push(0);
            }
            Some(value) => {
                let version = found.map_or(1, |r| r.version + 1);
                tx.put(
                    Table::Records,
                    &key,
                    &keys::encode_record(version, w.expires_at, value),
                )?;
                if let Some(at) = w.expires_at {
                    tx.put(Table::Expiry, &keys::expiry_key(at, &key), &[])?;
                }
                versions.push(version);
            }
        }
    }
    let jobs = enqueue(tx, d, seq, &change.jobs, now)?;
    Ok(Committed::Applied { versions, jobs })
}

fn purge_records(tx: &mut dyn KvWrite, now: Millis, limit: usize) -> Result<usize, StoreError> {
    let old = tx.scan(Table::Expiry, &[], Some(&keys::time_upto(now)), limit)?;
    for (key, _) in &old {
        tx.delete(Table::Expiry, key)?;
        tx.delete(Table::Records, &key[8..])?;
    }
    Ok(old.len())
}

/// The first entry of the lane's ready index.
pub(crate) fn earliest_due(tx: &dyn KvRead, lane: &str) -> Result<Option<Millis>, StoreError> {
    let prefix = keys::lane_prefix(lane);
    let end = keys::prefix_end(&prefix);
    match tx.scan(Table::Ready, &prefix, end.as_deref(), 1)?.first() {
        Some((key, _)) => Ok(Some(keys::ready_key_time(lane, key)?)),
        None => Ok(None),
    }
}

/// Per-lane counts from the counters kept in `Meta`.
pub(crate) fn counts(tx: &dyn KvRead) -> Result<Vec<LaneCounts>, StoreError> {
    let prefix = keys::counter_prefix();
    let end = keys::prefix_end(&prefix);
    let mut by_lane: std::collections::BTreeMap<String, LaneCounts> = Default::default();
    for (key, value) in tx.scan(Table::Meta, &prefix, end.as_deref(), usize::MAX)? {
        let (lane, state) = keys::counter_parts(&key)?;
        let n = value
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("counter of wrong size".into()))?;
        let entry = by_lane.entry(lane.clone()).or_insert_with(|| LaneCounts {
            lane,
            ..Default::default()
        });
        *entry.slot(state) = n;
    }
    // Jobs held behind a dead letter: per-key FIFO keeps a key's later jobs waiting while its head is
    // dead, so a lane can look healthy (ready jobs, nothing overdue) while those never run.
    let prefix = [JobState::Dead.code()];
    let end = keys::prefix_end(&prefix);
    let mut from = prefix.to_vec();
    loop {
        let chunk = tx.scan(Table::ByState, &from, end.as_deref(), SCAN_CHUNK)?;
        let Some((last, _)) = chunk.last() else { break };
        from = last.clone();
        from.push(0);
        for (key, _) in &chunk {
            let job = load_existing(tx, keys::id_suffix(key)?)?;
            if head_of(tx, &job.lane, &job.ordering_key)? != Some(job.id) {
                continue;
            }
            let key_prefix = keys::keys_prefix(&job.lane, &job.ordering_key);
            let key_end = keys::prefix_end(&key_prefix);
            let queued = tx
                .scan(Table::Keys, &key_prefix, key_end.as_deref(), usize::MAX)?
                .len() as u64;
            if queued > 1
                && let Some(entry) = by_lane.get_mut(&job.lane)
            {
                entry.blocked_keys += 1;
                entry.blocked_jobs += queued - 1;
            }
        }
        if chunk.len() < SCAN_CHUNK {
            break;
        }
    }
    Ok(by_lane.into_values().collect())
}

/// Lists jobs in id order after `after`, using the state index when the filter names a state.
pub(crate) fn list(
    tx: &dyn KvRead,
    filter: &JobFilter,
    after: Option<JobId>,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let (table, prefix) = match filter.state {
        Some(JobState::Dead) => (Table::ByState, vec![JobState::Dead.code()]),
        _ => (Table::Jobs, Vec::new()),
    };
    let mut from = prefix.clone();
    let mut to = keys::prefix_end(&prefix);
    let cursor = |id| [prefix.as_slice(), &keys::id_key(id)].concat();
    match after {
        Some(after) if filter.newest_first => to = Some(cursor(after)),
        Some(after) => {
            from = cursor(after);
            from.push(0);
        }
        None => {}
    }
    loop {
        let chunk = if filter.newest_first {
            tx.scan_rev(table, &from, to.as_deref(), SCAN_CHUNK)?
        } else {
            tx.scan(table, &from, to.as_deref(), SCAN_CHUNK)?
        };
        let Some((last, _)) = chunk.last() else { break };
        if filter.newest_first {
            to = Some(last.clone());
        } else {
            from = last.clone();
            from.push(0);
        }
        for (key, value) in &chunk {
            let job = if table == Table::Jobs {
                Job::decode(value).map_err(StoreError::Corrupt)?
            } else {
                load_existing(tx, keys::id_suffix(key)?)?
            };
            if filter.matches(&job) {
                out.push(job);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        if chunk.len() < SCAN_CHUNK {
            break;
        }
    }
    Ok(out)
}
