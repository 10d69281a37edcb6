//! The queue against a reference model: random sequences of operations, run on each backend, must
//! lease exactly the jobs the model says are runnable — the due heads of their (lane, key), in
//! (due time, sequence) order — and keep the same counts. The model is deliberately naive: a list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::clock::ManualClock;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue { lane: u8, key: u8 },
    Lease { lane: u8, n: usize },
    Complete(usize),
    FailRetry(usize),
    FailDead(usize),
    RetryDead(usize),
    Discard(usize),
    Advance(u64),
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2, 0u8..3).prop_map(|(lane, key)| Op::Enqueue { lane, key }),
        4 => (0u8..2, 1usize..4).prop_map(|(lane, n)| Op::Lease { lane, n }),
        3 => any::<usize>().prop_map(Op::Complete),
        2 => any::<usize>().prop_map(Op::FailRetry),
        1 => any::<usize>().prop_map(Op::FailDead),
        1 => any::<usize>().prop_map(Op::RetryDead),
        1 => any::<usize>().prop_map(Op::Discard),
        2 => (0u64..3_000).prop_map(Op::Advance),
        1 => Just(Op::Expire),
    ]
}

#[derive(Debug, Clone)]
struct M {
    id: JobId,
    lane: String,
    key: String,
    seq: u64,
    state: JobState,
    next_at: Millis,
    lease_until: Millis,
}

const LEASE_MS: u64 = 10_000;

fn model_eligible(model: &[M], lane: &str, now: Millis) -> Vec<JobId> {
    let mut heads: Vec<&M> = model
        .iter()
        .filter(|m| m.lane == lane && m.state == JobState::Ready && m.next_at <= now)
        .filter(|m| {
            // The head: no unfinished job of its key with a lower sequence.
            !model.iter().any(|o| {
                o.lane == m.lane && o.key == m.key && o.seq < m.seq && !o.state.is_finished()
            })
        })
        .collect();
    heads.sort_by_key(|m| (m.next_at, m.seq));
    heads.into_iter().map(|m| m.id).collect()
}

async fn run(backend: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KvJobStore::open(dir.path(), backend, KvOptions::default()).expect("store");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let policies = RetryPolicies {
        default: RetryPolicy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(2),
            max_attempts: 1_000,
            max_age: Duration::from_secs(86_400),
        },
        per_kind: Default::default(),
    };
    let q = Queue::new(
        Arc::new(store),
        clock.clone(),
        policies,
        Duration::from_millis(LEASE_MS),
    );
    let mut model: Vec<M> = Vec::new();
    let mut leased: Vec<Job> = Vec::new();
    let mut seq = 0u64;
    let lanes = ["a", "b"];
    for op in ops {
        let now = clock.now();
        match op {
            Op::Enqueue { lane, key } => {
                let (lane, key) = (lanes[lane as usize].to_owned(), format!("k{key}"));
                let e = q
                    .enqueue(NewJob::new("t", &lane, &key, vec![]))
                    .await
                    .expect("enqueue");
                model.push(M {
                    id: e.id,
                    lane,
                    key,
                    seq,
                    state: JobState::Ready,
                    next_at: now,
                    lease_until: 0,
                });
                seq += 1;
            }
            Op::Lease { lane, n } => {
                let lane = lanes[lane as usize];
                let expected: Vec<JobId> = model_eligible(&model, lane, now)
                    .into_iter()
                    .take(n)
                    .collect();
                let got = q.lease(lane, n).await.expect("lease").jobs;
                let got_ids: Vec<JobId> = got.iter().map(|j| j.id).collect();
                prop_assert_eq!(&got_ids, &expected, "lease of {} at {}", lane, now);
                for j in got {
                    if let Some(m) = model.iter_mut().find(|m| m.id == j.id) {
                        m.state = JobState::Leased;
                        m.lease_until = now + LEASE_MS;
                    }
                    leased.push(j);
                }
            }
            Op::Complete(i) | Op::FailRetry(i) | Op::FailDead(i) if !leased.is_empty() => {
                let job = leased.remove(i % leased.len());
                let current = model
                    .iter()
                    .find(|m| m.id == job.id)
                    .map(|m| (m.state, m.lease_until));
                let ours = matches!(current, Some((JobState::Leased, until)) if until == job.lease_expires_at.unwrap_or(0));
                let (new_state, outcome) = match op {
                    Op::Complete(_) => (JobState::Done, q.complete(&job).await.expect("complete")),
                    Op::FailRetry(_) => (
                        JobState::Ready,
                        q.fail(&job, &JobError::retryable("x", "y"))
                            .await
                            .expect("fail")
                            .1,
                    ),
                    _ => (
                        JobState::Dead,
                        q.fail(&job, &JobError::permanent("x", "y"))
                            .await
                            .expect("fail")
                            .1,
                    ),
                };
                prop_assert_eq!(
                    outcome == Transition::Applied,
                    ours,
                    "finish of a lease that is ours: {}",
                    ours
                );
                if ours {
                    let stored = q.get(job.id).await.expect("get").expect("job");
                    if let Some(m) = model.iter_mut().find(|m| m.id == job.id) {
                        m.state = new_state;
                        m.next_at = stored.next_attempt_at;
                    }
                }
            }
            Op::RetryDead(i) | Op::Discard(i) if !model.is_empty() => {
                let m = model[i % model.len()].clone();
                let retry = matches!(op, Op::RetryDead(_));
                let out = if retry {
                    q.retry(m.id).await
                } else {
                    q.discard(m.id).await
                }
                .expect("admin");
                let allowed = if retry {
                    m.state == JobState::Dead
                } else {
                    matches!(m.state, JobState::Ready | JobState::Dead)
                };
                prop_assert_eq!(
                    out == AdminOutcome::Applied,
                    allowed,
                    "{:?} on {:?}",
                    op,
                    m.state
                );
                if allowed {
                    let stored = q.get(m.id).await.expect("get").expect("job");
                    if let Some(x) = model.iter_mut().find(|x| x.id == m.id) {
                        x.state = if retry {
                            JobState::Ready
                        } else {
                            JobState::Discarded
                        };
                        x.next_at = stored.next_attempt_at;
                    }
                }
            }
            Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
            Op::Expire => {
                let n = q.expire_leases(1_000).await.expect("expire");
                let mut expected = 0;
                for m in model
                    .iter_mut()
                    .filter(|m| m.state == JobState::Leased && m.lease_until <= now)
                {
                    m.state = JobState::Ready;
                    m.next_at = now;
                    expected += 1;
                }
                prop_assert_eq!(n, expected);
            }
            _ => {}
        }
    }
    let mut expected: HashMap<(String, JobState), u64> = HashMap::new();
    for m in &model {
        *expected.entry((m.lane.clone(), m.state)).or_default() += 1;
    }
    for counts in q.counts().await.expect("counts") {
        for state in JobState::ALL {
            prop_assert_eq!(
                counts.get(state),
                expected
                    .get(&(counts.lane.clone(), state))
                    .copied()
                    .unwrap_or(0)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn redb_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run(Backend::Redb, ops))?;
    }

    #[test]
    fn sled_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run(Backend::Sled, ops))?;
    }
}
