//! Crash qualification: producers enqueue through the real process while it is killed with SIGKILL (or
//! aborts itself at a named crash point) at random moments, again and again; then a last run drains.
//!
//! Checked through the ledger the worker delivers to: every acknowledged job was delivered; per ordering
//! key, deliveries follow acknowledgement order with no gap (a job is re-delivered only right after a
//! crash, never after a later job of its key); and the store ends with nothing ready, leased or dead.
//!
//! `QUALIFY_CYCLES` sets the kill count per backend (default 12); `QUALIFY_SEED` replays a run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::helpers::{Ledger, Proc, write_config};

#[test]
fn qualify_redb() {
    qualify("redb");
}

#[test]
fn qualify_sled() {
    qualify("sled");
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Ack {
    key: String,
    n: usize,
    id: String,
}

fn parse_acks(lines: &[String]) -> Vec<Ack> {
    lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.strip_prefix("ACK ")?.split(' ');
            Some(Ack {
                key: parts.next()?.to_owned(),
                n: parts.next()?.parse().ok()?,
                id: parts.next()?.to_owned(),
            })
        })
        .collect()
}

fn qualify(backend: &str) {
    dvc_connector::tls::install_crypto_provider();
    let cycles: u32 = std::env::var("QUALIFY_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("QUALIFY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("qualify {backend}: {cycles} cycles, QUALIFY_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ledger = Ledger::start(&runtime, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), backend, &dir.path().join("store"), "");
    let config = config.to_str().expect("path").to_owned();

    let mut acks = Vec::new();
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
        std::thread::sleep(Duration::from_millis(rng.u64(50..500)));
        child.sigkill();
        let got = parse_acks(&child.out_lines);
        eprintln!("cycle {cycle}: {} acknowledged before the kill", got.len());
        acks.extend(got);
    }
    assert!(
        acks.len() > 100,
        "too little traffic to qualify anything: {}",
        acks.len()
    );

    // Last run: no producers; drain, then stop with SIGTERM.
    let run = cycles.to_string();
    let mut drain = Proc::spawn(&[
        "qualify-child",
        "--config",
        &config,
        "--ledger",
        &ledger.url,
        "--run",
        &run,
        "--producers",
        "0",
    ]);
    drain
        .wait_for("READY", false, Duration::from_secs(30))
        .expect("drain run starts");
    let wanted: HashSet<&str> = acks.iter().map(|a| a.id.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered: HashSet<String> =
            ledger.snapshot().into_iter().map(|(_, _, id)| id).collect();
        let missing = wanted.iter().filter(|id| !delivered.contains(**id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged jobs never delivered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    drain.sigterm();
    let status = drain
        .wait_exit(Duration::from_secs(30))
        .expect("drain run exits");
    assert!(
        status.success(),
        "graceful exit: {status:?} {:?}",
        drain.err_lines
    );
    let counts = drain
        .out_lines
        .iter()
        .find(|l| l.starts_with("COUNTS "))
        .cloned()
        .expect("counts line");

    // Verdict.
    let entries = ledger.snapshot();
    let distinct: HashSet<&str> = entries.iter().map(|(_, _, id)| id.as_str()).collect();
    let mut by_key: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
    for (key, n, id) in &entries {
        by_key.entry(key).or_default().push((*n, id));
    }
    let mut redeliveries = 0;
    for (key, seq) in &by_key {
        let mut expected = 0;
        let mut last: Option<(usize, &str)> = None;
        for &(n, id) in seq {
            if last == Some((n, id)) {
                redeliveries += 1;
                continue;
            }
            assert_eq!(
                n, expected,
                "key {key}: delivered #{n} when #{expected} was next: {seq:?}"
            );
            expected += 1;
            last = Some((n, id));
        }
    }
    let acked_ids: HashMap<&str, &Ack> = acks.iter().map(|a| (a.id.as_str(), a)).collect();
    for (id, ack) in &acked_ids {
        assert!(distinct.contains(id), "acknowledged job lost: {ack:?}");
    }
    assert!(
        counts.contains("ready=0 leased=0") && counts.contains("dead=0"),
        "store not drained: {counts}"
    );
    assert!(
        counts.contains(&format!("done={}", distinct.len())),
        "every delivered job completed exactly once in the store: {counts}, {} delivered",
        distinct.len()
    );
    eprintln!(
        "qualify {backend}: {} acknowledged, {} delivered, {} re-deliveries after crashes, {} named crash points, {counts}",
        acks.len(),
        distinct.len(),
        redeliveries,
        named_crashes
    );
}
