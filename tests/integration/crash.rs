//! Crash qualification: producers enqueue through the real process while it is killed with SIGKILL (or
//! aborts itself at a named crash point) at random moments, again and again; then a last run drains.
//!
//! Checked through the ledger the worker delivers to, each delivery tagged with the process life (run)
//! that made it ([`judge`]): every acknowledged job was delivered; per ordering key, deliveries follow
//! acknowledgement order with no gap; a job is delivered again only by a later run after the run that
//! first delivered it was killed — then its key carries on in order from there — never twice by one
//! run, and no more than [`REPEATS_PER_KILL`] times a kill; the store ends with nothing ready, leased or
//! dead. Two planted bugs must fail it: jobs of a key no longer kept in order, and every delivery made
//! twice.
//!
//! `QUALIFY_CYCLES` sets the kill count per backend (default 12); `QUALIFY_SEED` replays a run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::helpers::{Ledger, Proc, write_config};

/// At most this many repeated deliveries per kill: what a lane can have in flight (the test
/// configuration's `lane_concurrency` of 8, each with a batch of followers of its kind) bounds it.
const REPEATS_PER_KILL: usize = 64;

#[test]
fn qualify_redb() {
    let summary = qualify("redb", None).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{summary}");
}

#[test]
fn qualify_sled() {
    let summary = qualify("sled", None).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{summary}");
}

#[test]
fn a_planted_fifo_bug_fails_the_qualification() {
    let verdict = qualify("redb", Some("fifo"));
    let error = verdict.expect_err("jobs of a key delivered out of order must fail");
    assert!(
        error.contains("when #") || error.contains("delivered again"),
        "{error}"
    );
}

#[test]
fn a_planted_double_delivery_fails_the_qualification() {
    let verdict = qualify("redb", Some("double"));
    let error = verdict.expect_err("a job delivered twice in one run must fail");
    assert!(error.contains("twice by run"), "{error}");
}

/// One delivery as the ledger received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub run: u32,
    pub key: String,
    pub n: usize,
    pub id: String,
}

/// Checks the deliveries (in arrival order) against the acknowledged jobs; `killed`: the runs that
/// ended with a kill. Answers how many deliveries were repeats.
pub(crate) fn judge(
    deliveries: &[Delivered],
    acknowledged: &[(String, usize, String)],
    killed: &HashSet<u32>,
) -> Result<usize, String> {
    let mut by_key: BTreeMap<&str, Vec<&Delivered>> = BTreeMap::new();
    for d in deliveries {
        by_key.entry(&d.key).or_default().push(d);
    }
    let mut repeats = 0;
    for (key, seq) in &by_key {
        let mut next = 0usize;
        // n → the run that delivered it first.
        let mut first_run: HashMap<usize, u32> = HashMap::new();
        // (n, run) delivered, to find a run delivering the same job twice.
        let mut by_run: HashSet<(usize, u32)> = HashSet::new();
        for d in seq {
            if !by_run.insert((d.n, d.run)) {
                return Err(format!(
                    "key {key}: #{} delivered twice by run {} (no crash in between)",
                    d.n, d.run
                ));
            }
            if d.n > next {
                return Err(format!(
                    "key {key}: delivered #{} when #{next} was next (run {})",
                    d.n, d.run
                ));
            }
            match first_run.get(&d.n).copied() {
                // A repeat: only by a later run, after the run that delivered it was killed; the key
                // then carries on in order from there.
                Some(earlier) => {
                    if earlier >= d.run || !killed.contains(&earlier) {
                        return Err(format!(
                            "key {key}: #{} delivered again by run {} after run {earlier}, which was not killed",
                            d.n, d.run
                        ));
                    }
                    repeats += 1;
                }
                None => {
                    first_run.insert(d.n, d.run);
                }
            }
            next = d.n + 1;
        }
    }
    let cap = killed.len() * REPEATS_PER_KILL;
    if repeats > cap {
        return Err(format!(
            "{repeats} repeated deliveries for {} kills: more than a lane can have in flight ({cap})",
            killed.len()
        ));
    }
    let delivered: HashSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    for (key, n, id) in acknowledged {
        if !delivered.contains(id.as_str()) {
            return Err(format!("acknowledged job lost: key {key} #{n} ({id})"));
        }
    }
    Ok(repeats)
}

fn parse_acks(lines: &[String]) -> Vec<(String, usize, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.strip_prefix("ACK ")?.split(' ');
            Some((
                parts.next()?.to_owned(),
                parts.next()?.parse().ok()?,
                parts.next()?.to_owned(),
            ))
        })
        .collect()
}

/// Runs the qualification (with a planted bug, if any) and answers its summary or what failed.
fn qualify(backend: &str, plant: Option<&str>) -> Result<String, String> {
    dvc_connector::tls::install_crypto_provider();
    let cycles: u32 = match plant {
        Some(_) => 3,
        None => std::env::var("QUALIFY_CYCLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(12),
    };
    let seed: u64 = std::env::var("QUALIFY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("qualify {backend}: {cycles} cycles, plant {plant:?}, QUALIFY_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ledger = Ledger::start(&runtime, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), backend, &dir.path().join("store"), "");
    let config = config.to_str().expect("path").to_owned();

    let mut acks = Vec::new();
    let mut killed = HashSet::new();
    let mut named_crashes = 0;
    for cycle in 0..cycles {
        let run = cycle.to_string();
        let mut args = vec![
            "qualify-child",
            "--config",
            &config,
            "--ledger",
            &ledger.url,
            "--run",
            &run,
            "--producers",
            "4",
            "--keys",
            "3",
            "--jobs",
            "1000000",
        ];
        if let Some(plant) = plant {
            args.extend(["--plant", plant]);
        }
        // Every third cycle the process aborts itself at a named point of the commit path.
        let crash_at;
        if cycle % 3 == 2 {
            let point = if rng.bool() {
                "before_commit"
            } else {
                "after_commit"
            };
            crash_at = format!("{point}:{}", rng.u32(5..300));
            args.extend(["--crash-at", &crash_at]);
            named_crashes += 1;
        }
        let mut child = Proc::spawn(&args);
        child
            .wait_for("READY", false, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("child did not start: {:?}", child.err_lines));
        // How long the run lives before the kill (a random moment of its work, not a wait for it).
        std::thread::sleep(Duration::from_millis(rng.u64(50..500)));
        child.sigkill();
        killed.insert(cycle);
        let got = parse_acks(&child.out_lines);
        eprintln!("cycle {cycle}: {} acknowledged before the kill", got.len());
        acks.extend(got);
    }
    if acks.len() <= 100 {
        return Err(format!(
            "too little traffic to qualify anything: {}",
            acks.len()
        ));
    }

    // Last run: no producers; drain, then stop with SIGTERM.
    let run = cycles.to_string();
    let mut drain_args = vec![
        "qualify-child",
        "--config",
        &config,
        "--ledger",
        &ledger.url,
        "--run",
        &run,
        "--producers",
        "0",
    ];
    if let Some(plant) = plant {
        drain_args.extend(["--plant", plant]);
    }
    let mut drain = Proc::spawn(&drain_args);
    drain
        .wait_for("READY", false, Duration::from_secs(30))
        .expect("drain run starts");
    let wanted: HashSet<&str> = acks.iter().map(|a| a.2.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered: HashSet<String> = ledger.deliveries().into_iter().map(|d| d.id).collect();
        let missing = wanted.iter().filter(|id| !delivered.contains(**id)).count();
        if missing == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("{missing} acknowledged jobs never delivered"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drain.sigterm();
    let status = drain
        .wait_exit(Duration::from_secs(30))
        .expect("drain run exits");
    if !status.success() {
        return Err(format!("graceful exit: {status:?} {:?}", drain.err_lines));
    }
    let counts = drain
        .out_lines
        .iter()
        .find(|l| l.starts_with("COUNTS "))
        .cloned()
        .expect("counts line");

    // Verdict.
    let deliveries: Vec<Delivered> = ledger
        .deliveries()
        .into_iter()
        .map(|d| Delivered {
            run: d.run,
            key: d.key,
            n: d.n,
            id: d.id,
        })
        .collect();
    let repeats = judge(&deliveries, &acks, &killed)?;
    let distinct: HashSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    if !(counts.contains("ready=0 leased=0") && counts.contains("dead=0")) {
        return Err(format!("store not drained: {counts}"));
    }
    if !counts.contains(&format!("done={}", distinct.len())) {
        return Err(format!(
            "every delivered job completed exactly once in the store: {counts}, {} delivered",
            distinct.len()
        ));
    }
    Ok(format!(
        "qualify {backend}: {} acknowledged, {} delivered, {repeats} re-deliveries after crashes, {} kills ({named_crashes} at named crash points), {counts}",
        acks.len(),
        distinct.len(),
        killed.len(),
    ))
}

#[cfg(test)]
mod judge_tests {
    use super::*;

    fn d(run: u32, key: &str, n: usize) -> Delivered {
        Delivered {
            run,
            key: key.into(),
            n,
            id: format!("{key}-{n}"),
        }
    }

    fn acked(ds: &[Delivered]) -> Vec<(String, usize, String)> {
        ds.iter()
            .map(|d| (d.key.clone(), d.n, d.id.clone()))
            .collect()
    }

    #[test]
    fn a_batch_repeated_by_the_run_after_a_kill_passes() {
        let ds = [
            d(0, "k", 0),
            d(0, "k", 1),
            d(0, "k", 2),
            d(1, "k", 1),
            d(1, "k", 2),
            d(1, "k", 3),
        ];
        assert_eq!(judge(&ds, &acked(&ds), &HashSet::from([0])), Ok(2));
    }

    #[test]
    fn a_repeat_without_a_kill_a_repeat_in_one_run_and_a_gap_fail() {
        let ds = [d(0, "k", 0), d(1, "k", 0)];
        assert!(
            judge(&ds, &acked(&ds), &HashSet::new()).is_err(),
            "run 0 was not killed"
        );
        let ds = [d(0, "k", 0), d(0, "k", 0)];
        assert!(
            judge(&ds, &acked(&ds), &HashSet::from([0])).is_err(),
            "twice by one run"
        );
        let ds = [d(0, "k", 1), d(0, "k", 0)];
        assert!(
            judge(&ds, &acked(&ds), &HashSet::new()).is_err(),
            "out of order"
        );
        let ds = [d(0, "k", 0)];
        let mut acks = acked(&ds);
        acks.push(("k".into(), 1, "k-1".into()));
        assert!(judge(&ds, &acks, &HashSet::new()).is_err(), "lost");
    }
}
