//! The queue's promises, checked against every embedded backend.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::clock::ManualClock;
use super::kv::{CrashAction, CrashPlan, CrashPoint};
use super::*;

const START: Millis = 1_800_000_000_000;

struct Harness {
    queue: Queue,
    clock: Arc<ManualClock>,
}

fn policies() -> RetryPolicies {
    RetryPolicies {
        default: RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
        },
        per_kind: Default::default(),
    }
}

fn open(dir: &Path, backend: Backend, crash: Option<CrashPlan>) -> Harness {
    let store = KvJobStore::open(
        dir,
        backend,
        KvOptions {
            crash,
            ..Default::default()
        },
    )
    .expect("store opens");
    let clock = Arc::new(ManualClock::new(START));
    let queue = Queue::new(
        Arc::new(store),
        clock.clone(),
        policies(),
        Duration::from_secs(30),
    );
    Harness { queue, clock }
}

fn job(lane: &str, key: &str, n: u32) -> NewJob {
    NewJob::new("test.kind", lane, key, format!("{key}#{n}").into_bytes())
}

fn payload(job: &Job) -> String {
    String::from_utf8_lossy(&job.payload).into_owned()
}

async fn lease_payloads(q: &Queue, lane: &str) -> Vec<Job> {
    let mut jobs = q.lease(lane, 100).await.expect("lease").jobs;
    jobs.sort_by_key(|j| j.seq);
    jobs
}

/// Runs one test body against each backend in its own temporary directory.
macro_rules! each_backend {
    ($name:ident, |$h:ident, $dir:ident, $backend:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run($backend: Backend) {
                let tmp = tempfile::tempdir().expect("tempdir");
                let $dir = tmp.path().to_path_buf();
                #[allow(unused_variables, unused_mut)]
                let mut $h = open(&$dir, $backend, None);
                $body
            }
            #[tokio::test]
            async fn redb() {
                run(Backend::Redb).await
            }
            #[tokio::test]
            async fn sled() {
                run(Backend::Sled).await
            }
        }
    };
}

each_backend!(
    an_enqueued_job_is_leased_then_completed,
    |h, dir, backend| {
        let id = h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue").id;
        let leased = lease_payloads(&h.queue, "l").await;
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].id, id);
        assert_eq!(leased[0].state, JobState::Leased);
        assert_eq!(leased[0].attempts, 1);
        assert_eq!(payload(&leased[0]), "A#1");
        assert_eq!(
            h.queue.complete(&leased[0]).await.ok(),
            Some(Transition::Applied)
        );
        let stored = h.queue.get(id).await.expect("get").expect("present");
        assert_eq!(stored.state, JobState::Done);
        assert_eq!(stored.finished_at, Some(START));
        let counts = h.queue.counts().await.expect("counts");
        assert_eq!(counts.len(), 1);
        assert_eq!(
            (counts[0].done, counts[0].ready, counts[0].leased),
            (1, 0, 0)
        );
    }
);

each_backend!(
    only_the_oldest_job_of_a_key_is_runnable,
    |h, dir, backend| {
        for (key, n) in [("A", 1), ("A", 2), ("B", 1), ("A", 3)] {
            h.queue.enqueue(job("l", key, n)).await.expect("enqueue");
        }
        let first = lease_payloads(&h.queue, "l").await;
        assert_eq!(
            first.iter().map(payload).collect::<Vec<_>>(),
            ["A#1", "B#1"]
        );
        assert!(
            lease_payloads(&h.queue, "l").await.is_empty(),
            "A#2 waits for A#1"
        );
        h.queue.complete(&first[0]).await.expect("complete");
        let second = lease_payloads(&h.queue, "l").await;
        assert_eq!(second.iter().map(payload).collect::<Vec<_>>(), ["A#2"]);
        h.queue.complete(&second[0]).await.expect("complete");
        assert_eq!(
            lease_payloads(&h.queue, "l")
                .await
                .iter()
                .map(payload)
                .collect::<Vec<_>>(),
            ["A#3"]
        );
    }
);

each_backend!(lanes_do_not_share_keys_or_work, |h, dir, backend| {
    h.queue
        .enqueue(job("portal:national", "D1", 1))
        .await
        .expect("enqueue");
    h.queue
        .enqueue(job("portal:provincial", "D1", 1))
        .await
        .expect("enqueue");
    assert_eq!(lease_payloads(&h.queue, "portal:national").await.len(), 1);
    assert_eq!(lease_payloads(&h.queue, "portal:provincial").await.len(), 1);
    assert!(lease_payloads(&h.queue, "portal").await.is_empty());
});

each_backend!(
    a_retryable_failure_waits_for_its_backoff,
    |h, dir, backend| {
        h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
        let leased = lease_payloads(&h.queue, "l").await;
        let (decision, _) = h
            .queue
            .fail(&leased[0], &JobError::retryable("http_503", "unavailable"))
            .await
            .expect("fail");
        let Decision::RetryAt(at) = decision else {
            panic!("expected a retry, got {decision:?}")
        };
        assert!(
            (START..=START + 1000).contains(&at),
            "first retry within base: {at}"
        );
        let stored = h
            .queue
            .get(leased[0].id)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(stored.state, JobState::Ready);
        assert_eq!(
            stored.last_error.as_ref().map(|e| e.code.as_str()),
            Some("http_503")
        );
        if at > START {
            assert!(
                lease_payloads(&h.queue, "l").await.is_empty(),
                "not due yet"
            );
        }
        h.clock.advance(Duration::from_secs(1));
        let again = lease_payloads(&h.queue, "l").await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 2);
    }
);

each_backend!(attempts_run_out_into_the_dead_letter, |h, dir, backend| {
    h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
    for _ in 0..3 {
        h.clock.advance(Duration::from_secs(120));
        let leased = lease_payloads(&h.queue, "l").await;
        assert_eq!(leased.len(), 1);
        h.queue
            .fail(&leased[0], &JobError::retryable("timeout", "no answer"))
            .await
            .expect("fail");
    }
    let dead = h
        .queue
        .list(
            JobFilter {
                state: Some(JobState::Dead),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].dead_reason, Some(DeadReason::AttemptsExhausted));
});

each_backend!(
    a_dead_job_holds_its_key_until_retried_or_discarded,
    |h, dir, backend| {
        h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
        h.queue.enqueue(job("l", "A", 2)).await.expect("enqueue");
        let first = lease_payloads(&h.queue, "l").await;
        h.queue
            .fail(&first[0], &JobError::permanent("400", "rejected"))
            .await
            .expect("fail");
        let dead = h
            .queue
            .get(first[0].id)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(dead.state, JobState::Dead);
        assert_eq!(dead.dead_reason, Some(DeadReason::PermanentError));
        assert!(
            lease_payloads(&h.queue, "l").await.is_empty(),
            "A#2 must not overtake dead A#1"
        );

        assert_eq!(
            h.queue.retry(first[0].id).await.ok(),
            Some(AdminOutcome::Applied)
        );
        let retried = lease_payloads(&h.queue, "l").await;
        assert_eq!(retried.iter().map(payload).collect::<Vec<_>>(), ["A#1"]);
        assert_eq!(retried[0].attempts, 1, "manual retry gives a fresh budget");
        h.queue
            .fail(&retried[0], &JobError::permanent("400", "rejected"))
            .await
            .expect("fail");

        assert_eq!(
            h.queue.discard(first[0].id).await.ok(),
            Some(AdminOutcome::Applied)
        );
        assert_eq!(
            lease_payloads(&h.queue, "l")
                .await
                .iter()
                .map(payload)
                .collect::<Vec<_>>(),
            ["A#2"]
        );
        assert_eq!(
            h.queue.retry(first[0].id).await.ok(),
            Some(AdminOutcome::WrongState(JobState::Discarded))
        );
    }
);

each_backend!(an_auth_failure_refunds_the_attempt, |h, dir, backend| {
    h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
    let leased = lease_payloads(&h.queue, "l").await;
    let (decision, _) = h
        .queue
        .fail(&leased[0], &JobError::auth("401", "token refused"))
        .await
        .expect("fail");
    assert_eq!(decision, Decision::PauseLane);
    let stored = h
        .queue
        .get(leased[0].id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!((stored.state, stored.attempts), (JobState::Ready, 0));
    assert_eq!(lease_payloads(&h.queue, "l").await.len(), 1);
});

each_backend!(
    an_expired_lease_returns_the_job_and_fences_the_old_worker,
    |h, dir, backend| {
        h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
        let stale = lease_payloads(&h.queue, "l").await.remove(0);
        assert_eq!(
            h.queue.expire_leases(100).await.ok(),
            Some(0),
            "not expired yet"
        );
        h.clock.advance(Duration::from_secs(31));
        assert_eq!(h.queue.expire_leases(100).await.ok(), Some(1));
        let fresh = lease_payloads(&h.queue, "l").await.remove(0);
        assert_eq!(fresh.attempts, 2);
        assert_eq!(
            h.queue.complete(&stale).await.ok(),
            Some(Transition::LeaseLost)
        );
        assert_eq!(
            h.queue.complete(&fresh).await.ok(),
            Some(Transition::Applied)
        );
    }
);

each_backend!(
    an_idempotency_key_returns_the_first_job,
    |h, dir, backend| {
        let a = h
            .queue
            .enqueue(job("l", "A", 1).with_idempotency_key("req-1"))
            .await
            .expect("enqueue");
        let b = h
            .queue
            .enqueue(job("l", "A", 2).with_idempotency_key("req-1"))
            .await
            .expect("enqueue");
        assert!(!a.existing && b.existing);
        assert_eq!(a.id, b.id);
        // Two in one atomic batch are deduplicated too.
        let both = h
            .queue
            .enqueue_all(vec![
                job("l", "B", 1).with_idempotency_key("req-2"),
                job("l", "B", 2).with_idempotency_key("req-2"),
            ])
            .await
            .expect("enqueue");
        assert_eq!(both[0].id, both[1].id);
        assert_eq!(h.queue.counts().await.expect("counts")[0].ready, 2);
    }
);

each_backend!(
    replay_requeues_dead_jobs_matching_the_filter,
    |h, dir, backend| {
        for lane in ["x", "y", "x"] {
            let key = format!("{lane}-{}", fastrand::u32(..));
            h.queue.enqueue(job(lane, &key, 1)).await.expect("enqueue");
        }
        for lane in ["x", "y"] {
            for j in lease_payloads(&h.queue, lane).await {
                h.queue
                    .fail(&j, &JobError::permanent("bad", "no"))
                    .await
                    .expect("fail");
            }
        }
        let filter = JobFilter {
            lane: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            h.queue.replay(filter.clone(), 1).await.ok(),
            Some(1),
            "limit respected"
        );
        assert_eq!(h.queue.replay(filter, 100).await.ok(), Some(1));
        let counts = h.queue.counts().await.expect("counts");
        let x = counts.iter().find(|c| c.lane == "x").expect("lane x");
        let y = counts.iter().find(|c| c.lane == "y").expect("lane y");
        assert_eq!((x.ready, x.dead, y.dead), (2, 0, 1));
    }
);

each_backend!(
    finished_jobs_are_purged_after_retention,
    |h, dir, backend| {
        for n in 0..5 {
            h.queue
                .enqueue(job("l", &format!("K{n}"), n).with_idempotency_key(format!("idem-{n}")))
                .await
                .expect("enqueue");
        }
        for j in lease_payloads(&h.queue, "l").await {
            h.queue.complete(&j).await.expect("complete");
        }
        let retention = Duration::from_secs(3600);
        assert_eq!(
            h.queue.purge_finished(retention, 2).await.ok(),
            Some(0),
            "too young"
        );
        h.clock.advance(retention + Duration::from_secs(1));
        assert_eq!(h.queue.purge_finished(retention, 2).await.ok(), Some(2));
        assert_eq!(h.queue.purge_finished(retention, 10).await.ok(), Some(3));
        assert!(
            h.queue
                .list(JobFilter::default(), None, 10)
                .await
                .expect("list")
                .is_empty()
        );
        assert!(h.queue.counts().await.expect("counts").is_empty());
        // The idempotency key is free again once its job is gone.
        let again = h
            .queue
            .enqueue(job("l", "K0", 0).with_idempotency_key("idem-0"))
            .await
            .expect("enqueue");
        assert!(!again.existing);
    }
);

each_backend!(listing_filters_and_pages_in_id_order, |h, dir, backend| {
    for n in 0..7 {
        h.clock.advance(Duration::from_millis(1));
        let kind = if n % 2 == 0 { "even" } else { "odd" };
        h.queue
            .enqueue(NewJob::new(kind, "l", format!("K{n}"), vec![]))
            .await
            .expect("enqueue");
    }
    let evens = h
        .queue
        .list(
            JobFilter {
                kind: Some("even".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(evens.len(), 4);
    let page1 = h
        .queue
        .list(JobFilter::default(), None, 3)
        .await
        .expect("list");
    let page2 = h
        .queue
        .list(JobFilter::default(), Some(page1[2].id), 10)
        .await
        .expect("list");
    assert_eq!((page1.len(), page2.len()), (3, 4));
    assert!(page1[2].id < page2[0].id);
    let ready = h
        .queue
        .list(
            JobFilter {
                state: Some(JobState::Ready),
                ..Default::default()
            },
            Some(page1[0].id),
            10,
        )
        .await
        .expect("list");
    assert_eq!(ready.len(), 6);
});

each_backend!(
    listing_newest_first_pages_back_to_the_oldest,
    |h, dir, backend| {
        let mut ids = Vec::new();
        for n in 0..7 {
            h.clock.advance(Duration::from_millis(1));
            ids.push(
                h.queue
                    .enqueue(NewJob::new("k", "l", format!("K{n}"), vec![]))
                    .await
                    .expect("enqueue")
                    .id,
            );
        }
        // Two dead jobs, so that the dead-letter index is listed newest first too.
        for _ in 0..2 {
            let job = h.queue.lease("l", 1).await.expect("lease").jobs.remove(0);
            h.queue
                .fail(&job, &JobError::permanent("http_400", "refused"))
                .await
                .expect("dead");
        }
        let newest = |after, limit, state| {
            h.queue.list(
                JobFilter {
                    state,
                    newest_first: true,
                    ..Default::default()
                },
                after,
                limit,
            )
        };
        let page1 = newest(None, 3, None).await.expect("list");
        let page2 = newest(Some(page1[2].id), 10, None).await.expect("list");
        let listed: Vec<JobId> = page1.iter().chain(&page2).map(|j| j.id).collect();
        let mut expected = ids.clone();
        expected.reverse();
        assert_eq!(
            listed, expected,
            "every job once, newest first, across pages"
        );
        let dead = newest(None, 10, Some(JobState::Dead)).await.expect("list");
        assert_eq!(
            dead.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![ids[1], ids[0]]
        );
        let older = newest(Some(ids[1]), 10, Some(JobState::Dead))
            .await
            .expect("list");
        assert_eq!(older.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[0]]);
    }
);

each_backend!(
    concurrent_producers_keep_every_job_and_per_key_order,
    |h, dir, backend| {
        let producers = 32;
        let per = 20;
        let mut tasks = Vec::new();
        for p in 0..producers {
            let q = h.queue.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..per {
                    q.enqueue(job("l", &format!("P{p}"), n))
                        .await
                        .expect("enqueue");
                }
            }));
        }
        for t in tasks {
            t.await.expect("producer");
        }
        let mut seen: std::collections::HashMap<String, u32> = Default::default();
        let mut total = 0;
        loop {
            let batch = h.queue.lease("l", 64).await.expect("lease").jobs;
            if batch.is_empty() {
                break;
            }
            for j in batch {
                let text = payload(&j);
                let (key, n) = text.split_once('#').expect("payload");
                let n: u32 = n.parse().expect("number");
                let expected = seen.entry(key.to_owned()).or_insert(0);
                assert_eq!(n, *expected, "{key} out of order");
                *expected += 1;
                total += 1;
                h.queue.complete(&j).await.expect("complete");
            }
        }
        assert_eq!(total, producers * per);
    }
);

each_backend!(
    what_was_acknowledged_survives_a_reopen,
    |h, dir, backend| {
        let kept = h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue").id;
        h.queue.enqueue(job("l", "B", 1)).await.expect("enqueue");
        let leased = lease_payloads(&h.queue, "l").await;
        assert_eq!(leased.len(), 2);
        h.queue.complete(&leased[1]).await.expect("complete");
        drop(h);
        let h = open(&dir, backend, None);
        let job = h.queue.get(kept).await.expect("get").expect("still there");
        assert_eq!(
            job.state,
            JobState::Ready,
            "an orphaned lease is returned at open"
        );
        assert_eq!(
            job.last_error.map(|e| e.code),
            Some("lease_expired".to_owned())
        );
        // The sequence continues after the reopen: a new job of key A runs after the old one.
        h.queue.enqueue(job_after("A")).await.expect("enqueue");
        let order = lease_payloads(&h.queue, "l").await;
        assert_eq!(order.iter().map(payload).collect::<Vec<_>>(), ["A#1"]);
    }
);

fn job_after(key: &str) -> NewJob {
    job("l", key, 2)
}

each_backend!(
    a_crash_before_commit_loses_only_the_unacknowledged,
    |h, dir, backend| {
        h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
        drop(h);
        let h = open(
            &dir,
            backend,
            Some(CrashPlan::new(
                CrashPoint::BeforeCommit,
                1,
                CrashAction::Halt,
            )),
        );
        let err = h.queue.enqueue(job("l", "A", 2)).await;
        assert!(
            matches!(err, Err(QueueError::Store(StoreError::Closed))),
            "{err:?}"
        );
        assert!(
            h.queue.enqueue(job("l", "A", 3)).await.is_err(),
            "a crashed writer takes nothing more"
        );
        drop(h);
        let h = open(&dir, backend, None);
        let all = h
            .queue
            .list(JobFilter::default(), None, 10)
            .await
            .expect("list");
        assert_eq!(all.iter().map(payload).collect::<Vec<_>>(), ["A#1"]);
    }
);

each_backend!(
    a_crash_after_commit_keeps_the_job_and_a_retry_does_not_duplicate_it,
    |h, dir, backend| {
        drop(h);
        let h = open(
            &dir,
            backend,
            Some(CrashPlan::new(
                CrashPoint::AfterCommit,
                1,
                CrashAction::Halt,
            )),
        );
        let first = job("l", "A", 1).with_idempotency_key("portal-req-7");
        assert!(
            h.queue.enqueue(first.clone()).await.is_err(),
            "the caller never heard yes"
        );
        drop(h);
        let h = open(&dir, backend, None);
        let again = h.queue.enqueue(first).await.expect("retry by the caller");
        assert!(
            again.existing,
            "the committed job is found, not created twice"
        );
        assert_eq!(
            h.queue
                .list(JobFilter::default(), None, 10)
                .await
                .expect("list")
                .len(),
            1
        );
    }
);

#[test]
fn a_store_of_another_format_version_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("STORE"),
        "backend = \"redb\"\nformat_version = 99\n",
    )
    .expect("write marker");
    let err = KvJobStore::open(tmp.path(), Backend::Redb, KvOptions::default()).map(|_| ());
    assert!(
        matches!(&err, Err(StoreError::UnsupportedVersion { found, .. }) if found == "99"),
        "{err:?}"
    );
}

#[test]
fn an_older_store_from_before_the_log_or_its_second_file_is_upgraded_in_place() {
    for old in ["1", "2"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        drop(KvJobStore::open(tmp.path(), Backend::Redb, KvOptions::default()).expect("create"));
        let marker = tmp.path().join("STORE");
        std::fs::write(
            &marker,
            format!("backend = \"redb\"\nformat_version = {old}\n"),
        )
        .expect("write marker");
        drop(KvJobStore::open(tmp.path(), Backend::Redb, KvOptions::default()).expect("opens"));
        let text = std::fs::read_to_string(&marker).expect("marker");
        assert!(
            text.contains(&format!("format_version = {}", super::kv::FORMAT_VERSION)),
            "version {old}: {text}"
        );
    }
}

#[test]
fn a_store_of_another_backend_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(KvJobStore::open(tmp.path(), Backend::Sled, KvOptions::default()).expect("create"));
    let err = KvJobStore::open(tmp.path(), Backend::Redb, KvOptions::default()).map(|_| ());
    assert!(
        matches!(err, Err(StoreError::BackendMismatch { .. })),
        "{err:?}"
    );
}

#[test]
fn a_store_in_use_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _first = KvJobStore::open(tmp.path(), Backend::Redb, KvOptions::default()).expect("open");
    let second = KvJobStore::open(tmp.path(), Backend::Redb, KvOptions::default()).map(|_| ());
    assert!(matches!(second, Err(StoreError::Locked(_))), "{second:?}");
}

each_backend!(
    counters_match_the_stored_states_after_a_mixed_workload,
    |h, dir, backend| {
        let mut rng = fastrand::Rng::with_seed(7);
        let lanes = ["a", "b"];
        for round in 0..40 {
            let batch: Vec<NewJob> = (0..rng.usize(1..6))
                .map(|i| {
                    job(
                        lanes[rng.usize(..2)],
                        &format!("K{}", rng.u32(0..5)),
                        round * 10 + i as u32,
                    )
                })
                .collect();
            h.queue.enqueue_all(batch).await.expect("enqueue");
            for lane in lanes {
                for j in h
                    .queue
                    .lease(lane, rng.usize(1..4))
                    .await
                    .expect("lease")
                    .jobs
                {
                    match rng.u32(0..4) {
                        0 => drop(h.queue.complete(&j).await.expect("complete")),
                        1 => drop(
                            h.queue
                                .fail(&j, &JobError::retryable("x", "y"))
                                .await
                                .expect("fail"),
                        ),
                        2 => drop(
                            h.queue
                                .fail(&j, &JobError::permanent("x", "y"))
                                .await
                                .expect("fail"),
                        ),
                        _ => {}
                    }
                }
            }
            if round % 7 == 0 {
                let dead = h
                    .queue
                    .list(
                        JobFilter {
                            state: Some(JobState::Dead),
                            ..Default::default()
                        },
                        None,
                        1,
                    )
                    .await
                    .expect("list");
                if let Some(d) = dead.first() {
                    h.queue.discard(d.id).await.expect("discard");
                }
            }
            h.clock.advance(Duration::from_secs(2));
        }
        let all = h
            .queue
            .list(JobFilter::default(), None, 10_000)
            .await
            .expect("list");
        for counts in h.queue.counts().await.expect("counts") {
            for state in JobState::ALL {
                let stored = all
                    .iter()
                    .filter(|j| j.lane == counts.lane && j.state == state)
                    .count();
                assert_eq!(
                    counts.get(state),
                    stored as u64,
                    "{} {state:?}",
                    counts.lane
                );
            }
        }
        let dead_listed = h
            .queue
            .list(
                JobFilter {
                    state: Some(JobState::Dead),
                    ..Default::default()
                },
                None,
                10_000,
            )
            .await
            .expect("list");
        assert_eq!(
            dead_listed.len(),
            all.iter().filter(|j| j.state == JobState::Dead).count()
        );
    }
);

each_backend!(
    the_most_overdue_job_of_a_lane_is_measured,
    |h, dir, backend| {
        assert_eq!(h.queue.overdue("l").await.ok(), Some(Duration::ZERO));
        h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
        h.clock.advance(Duration::from_secs(90));
        h.queue.enqueue(job("l", "B", 1)).await.expect("enqueue");
        assert_eq!(
            h.queue.overdue("l").await.ok(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(h.queue.overdue("other").await.ok(), Some(Duration::ZERO));
        let leased = lease_payloads(&h.queue, "l").await;
        assert_eq!(leased.len(), 2);
        assert_eq!(
            h.queue.overdue("l").await.ok(),
            Some(Duration::ZERO),
            "leased jobs are being worked on"
        );
    }
);

#[tokio::test]
async fn a_stopped_store_can_be_read_but_not_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let h = open(tmp.path(), Backend::Redb, None);
    let id = h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue").id;
    drop(h);
    let store =
        KvJobStore::open_read_only(tmp.path(), Backend::Redb, None).expect("read-only open");
    let q = Queue::new(
        Arc::new(store),
        Arc::new(ManualClock::new(START)),
        policies(),
        Duration::from_secs(30),
    );
    assert_eq!(
        q.get(id).await.expect("get").map(|j| j.state),
        Some(JobState::Ready)
    );
    assert_eq!(q.counts().await.expect("counts")[0].ready, 1);
    assert!(
        q.enqueue(job("l", "B", 1)).await.is_err(),
        "nothing can be written"
    );
    assert!(KvJobStore::open_read_only(&tmp.path().join("nothing"), Backend::Redb, None).is_err());
}

fn put(collection: &'static str, key: &str, expect: Expect, value: &str) -> RecordWrite {
    RecordWrite::put(collection, key, expect, value.as_bytes().to_vec())
}

each_backend!(
    records_and_jobs_of_a_change_are_written_together,
    |h, dir, backend| {
        let change = Change {
            writes: vec![put("shipment", "S1", Expect::Absent, "queued")],
            jobs: vec![job("postal", "H1", 1)],
        };
        let Committed::Applied { versions, jobs } = h.queue.commit(change).await.expect("commit")
        else {
            panic!("a first claim of a natural key applies");
        };
        assert_eq!(versions, vec![1]);
        assert_eq!(jobs.len(), 1);
        let stored = h
            .queue
            .record("shipment", "S1")
            .await
            .expect("read")
            .expect("present");
        assert_eq!(
            (stored.version, stored.value.as_slice()),
            (1, &b"queued"[..])
        );
        assert_eq!(lease_payloads(&h.queue, "postal").await.len(), 1);
    }
);

each_backend!(
    a_failed_condition_writes_nothing_and_enqueues_nothing,
    |h, dir, backend| {
        let first = Change {
            writes: vec![put("shipment", "S1", Expect::Absent, "v1")],
            jobs: vec![],
        };
        h.queue.commit(first).await.expect("commit");
        // The second write's condition fails: the first write and the job must not happen either.
        let second = Change {
            writes: vec![
                put("shipment", "S2", Expect::Absent, "new"),
                put("shipment", "S1", Expect::Absent, "again"),
            ],
            jobs: vec![job("postal", "H1", 1)],
        };
        match h.queue.commit(second).await.expect("commit") {
            Committed::Conflict { index, current } => {
                assert_eq!(index, 1);
                assert_eq!(current.map(|r| r.value), Some(b"v1".to_vec()));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(h.queue.record("shipment", "S2").await.expect("read"), None);
        assert!(lease_payloads(&h.queue, "postal").await.is_empty());
        let counts = h.queue.counts().await.expect("counts");
        assert!(counts.iter().all(|c| c.ready == 0));
    }
);

each_backend!(
    compare_and_set_refuses_a_stale_version,
    |h, dir, backend| {
        h.queue
            .commit(Change {
                writes: vec![put("dossier", "H1", Expect::Absent, "a")],
                jobs: vec![],
            })
            .await
            .expect("commit");
        let ok = h
            .queue
            .commit(Change {
                writes: vec![put("dossier", "H1", Expect::Version(1), "b")],
                jobs: vec![],
            })
            .await
            .expect("commit");
        assert!(matches!(ok, Committed::Applied { ref versions, .. } if versions == &vec![2]));
        let stale = h
            .queue
            .commit(Change {
                writes: vec![put("dossier", "H1", Expect::Version(1), "c")],
                jobs: vec![],
            })
            .await
            .expect("commit");
        assert!(matches!(stale, Committed::Conflict { index: 0, .. }));
        let stored = h.queue.record("dossier", "H1").await.expect("read");
        assert_eq!(stored.map(|r| r.value), Some(b"b".to_vec()));
    }
);

each_backend!(
    records_are_scanned_by_prefix_in_key_order_and_survive_a_reopen,
    |h, dir, backend| {
        let writes = ["H1/3", "H1/1", "H2/1", "H1/2"]
            .into_iter()
            .map(|k| put("event", k, Expect::Any, k))
            .collect();
        h.queue
            .commit(Change {
                writes,
                jobs: vec![],
            })
            .await
            .expect("commit");
        drop(h);
        let h = open(&dir, backend, None);
        let keys =
            |rows: Vec<(String, Record)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let all = h
            .queue
            .records("event", "H1/", None, 10)
            .await
            .expect("scan");
        assert_eq!(keys(all), vec!["H1/1", "H1/2", "H1/3"]);
        let page = h
            .queue
            .records("event", "H1/", Some("H1/1".into()), 1)
            .await
            .expect("scan");
        assert_eq!(keys(page), vec!["H1/2"]);
        // Another collection with the same keys is separate.
        assert!(
            h.queue
                .records("even", "", None, 10)
                .await
                .expect("scan")
                .is_empty()
        );
    }
);

each_backend!(
    expired_records_are_purged_and_others_kept,
    |h, dir, backend| {
        h.queue
            .commit(Change {
                writes: vec![
                    put("idem", "old", Expect::Absent, "x").expiring(START + 10),
                    put("idem", "new", Expect::Absent, "y").expiring(START + 1000),
                    put("idem", "kept", Expect::Absent, "z"),
                ],
                jobs: vec![],
            })
            .await
            .expect("commit");
        // Rewriting a record moves its expiry: the old expiry entry must not remove the new value.
        h.queue
            .commit(Change {
                writes: vec![put("idem", "new", Expect::Version(1), "y2").expiring(START + 5000)],
                jobs: vec![],
            })
            .await
            .expect("commit");
        let purged = h
            .queue
            .store()
            .purge_expired_records(START + 1000, 100)
            .await
            .expect("purge");
        assert_eq!(purged, 1);
        assert_eq!(h.queue.record("idem", "old").await.expect("read"), None);
        assert!(h.queue.record("idem", "new").await.expect("read").is_some());
        assert!(
            h.queue
                .record("idem", "kept")
                .await
                .expect("read")
                .is_some()
        );
    }
);

each_backend!(
    followers_are_leased_behind_their_head_and_released_ones_wait_for_it,
    |h, dir, backend| {
        for n in 1..=3 {
            h.queue.enqueue(job("l", "A", n)).await.expect("enqueue");
        }
        h.queue
            .enqueue(NewJob::new("other.kind", "l", "A", b"A#4".to_vec()))
            .await
            .expect("enqueue");
        let head = lease_payloads(&h.queue, "l").await;
        assert_eq!(head.len(), 1);
        let followers = h
            .queue
            .lease_followers(&head[0], 10)
            .await
            .expect("followers");
        let names: Vec<String> = followers.iter().map(payload).collect();
        assert_eq!(
            names,
            vec!["A#2", "A#3"],
            "same kind only, stopping at another kind"
        );
        // A follower handed back while its head is leased is not runnable.
        h.queue.release(&followers[1], true).await.expect("release");
        h.queue.release(&followers[0], true).await.expect("release");
        assert!(lease_payloads(&h.queue, "l").await.is_empty());
        h.queue.complete(&head[0]).await.expect("complete");
        let next = lease_payloads(&h.queue, "l").await;
        assert_eq!(next.iter().map(payload).collect::<Vec<_>>(), vec!["A#2"]);
    }
);

each_backend!(
    completing_a_batch_makes_the_next_job_of_its_key_runnable_and_nothing_in_between,
    |h, dir, backend| {
        for n in 1..=4 {
            h.queue.enqueue(job("l", "A", n)).await.expect("enqueue");
        }
        h.queue
            .enqueue(NewJob::new("other.kind", "l", "A", b"A#5".to_vec()))
            .await
            .expect("enqueue");
        let head = lease_payloads(&h.queue, "l").await;
        let followers = h
            .queue
            .lease_followers(&head[0], 2)
            .await
            .expect("followers");
        assert_eq!(followers.len(), 2, "A#2 and A#3 behind A#1");
        let mut batch = head.clone();
        batch.extend(followers);
        assert!(
            h.queue
                .complete_all(&batch, Change::default())
                .await
                .expect("complete")
        );
        // Promotion skipped inside the run must still leave the key's next job runnable once.
        let next = lease_payloads(&h.queue, "l").await;
        assert_eq!(next.iter().map(payload).collect::<Vec<_>>(), vec!["A#4"]);
        h.queue.complete(&next[0]).await.expect("complete");
        let last = lease_payloads(&h.queue, "l").await;
        assert_eq!(last.iter().map(payload).collect::<Vec<_>>(), vec!["A#5"]);
    }
);

each_backend!(
    a_flow_change_is_written_with_the_completion_only_while_the_lease_is_held,
    |h, dir, backend| {
        h.queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
        let leased = lease_payloads(&h.queue, "l").await;
        let change = Change {
            writes: vec![put("state", "A", Expect::Any, "synced")],
            jobs: vec![job("callbacks", "A", 9)],
        };
        assert!(
            h.queue
                .complete_all(&leased, change.clone())
                .await
                .expect("complete")
        );
        assert_eq!(
            h.queue
                .record("state", "A")
                .await
                .expect("read")
                .map(|r| r.value),
            Some(b"synced".to_vec())
        );
        assert_eq!(lease_payloads(&h.queue, "callbacks").await.len(), 1);
        // A stale holder (its lease expired and the job went to someone else) writes nothing.
        h.queue.enqueue(job("l", "B", 1)).await.expect("enqueue");
        let mut stale = lease_payloads(&h.queue, "l").await;
        stale[0].lease_token = stale[0].lease_token.map(|t| t ^ 1);
        let other = Change {
            writes: vec![put("state", "B", Expect::Any, "stale")],
            jobs: vec![],
        };
        assert!(!h.queue.complete_all(&stale, other).await.expect("complete"));
        assert_eq!(h.queue.record("state", "B").await.expect("read"), None);
    }
);

each_backend!(
    a_sealed_store_round_trips_jobs_and_records_and_reads_them_after_a_key_rotation,
    |h, dir, backend| {
        drop(h);
        let sealed_dir = dir.join("sealed");
        let open_with = |keys: &[[u8; 32]]| {
            let store = KvJobStore::open(
                &sealed_dir,
                backend,
                KvOptions {
                    keys: kv::Keyring::new(keys).map(Arc::new),
                    ..Default::default()
                },
            )
            .expect("store opens");
            Queue::new(
                Arc::new(store),
                Arc::new(ManualClock::new(START)),
                policies(),
                Duration::from_secs(30),
            )
        };
        let q = open_with(&[[1; 32]]);
        let id = q.enqueue(job("l", "A", 1)).await.expect("enqueue").id;
        // Behind the first of its key: not runnable while the first is unfinished, sealed or not.
        q.enqueue(job("l", "A", 2)).await.expect("enqueue");
        q.commit(Change {
            writes: vec![put("verification", "V1", Expect::Absent, "verdict")],
            jobs: vec![],
        })
        .await
        .expect("commit");
        drop(q);
        // Rotated: a new key in front, the old one kept for what it sealed.
        let q = open_with(&[[2; 32], [1; 32]]);
        let leased = lease_payloads(&q, "l").await;
        assert_eq!(
            leased.iter().map(payload).collect::<Vec<_>>(),
            vec!["A#1"],
            "only the head of the key is runnable"
        );
        assert_eq!(leased[0].id, id);
        let v = q.record("verification", "V1").await.expect("read");
        assert_eq!(v.map(|r| r.value), Some(b"verdict".to_vec()));
        drop(q);
        // Without the old key, what it sealed is refused, not misread.
        let q = open_with(&[[2; 32]]);
        assert!(q.record("verification", "V1").await.is_err());
    }
);

#[tokio::test]
async fn the_observer_hears_every_job_enqueued_and_completed_by_kind_and_lane() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = KvJobStore::open(tmp.path(), Backend::Redb, KvOptions::default()).expect("store");
    let tally = Arc::new(super::observer::Tally::default());
    let queue = Queue::with_observer(
        Arc::new(store),
        Arc::new(ManualClock::new(START)),
        policies(),
        Duration::from_secs(30),
        tally.clone(),
    );
    // Four heads of four keys; the kinds alternate in commit order (test, other, test, test).
    queue.enqueue(job("l", "A", 1)).await.expect("enqueue");
    queue
        .enqueue(NewJob::new("other.kind", "l", "D", b"D#1".to_vec()))
        .await
        .expect("enqueue");
    queue
        .commit(Change {
            writes: vec![],
            jobs: vec![job("l", "B", 1), job("l", "C", 1)],
        })
        .await
        .expect("commit");
    let leased = lease_payloads(&queue, "l").await;
    assert_eq!(leased.len(), 4);
    assert!(
        queue
            .complete_all(&leased, Change::default())
            .await
            .expect("complete")
    );
    assert_eq!(tally.get("enqueued", "test.kind", "l"), 3);
    assert_eq!(tally.get("enqueued", "other.kind", "l"), 1);
    assert_eq!(tally.get("completed", "test.kind", "l"), 3);
    assert_eq!(tally.get("completed", "other.kind", "l"), 1);
}
