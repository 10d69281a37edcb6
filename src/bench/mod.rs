//! `dvc-connector bench queue`: durable enqueue throughput and latency with 1, 8 and 64 concurrent
//! producers, and lease+complete throughput, for each backend — next to the disk's own rate of
//! `4 KiB write + fdatasync`, measured in the same run so the figures can be compared.

pub mod e2e;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::cli::QueueBenchArgs;
use crate::queue::{Backend, KvJobStore, KvOptions, NewJob, Queue, RetryPolicies, TokioClock};

struct EnqueueResult {
    backend: Backend,
    producers: usize,
    jobs: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

struct DrainResult {
    backend: Backend,
    jobs: usize,
    rate: f64,
}

pub async fn queue(args: QueueBenchArgs) -> anyhow::Result<()> {
    let backends = args
        .backend
        .iter()
        .map(|b| Backend::parse(b).with_context(|| format!("unknown backend {b}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    println!("machine: {}", machine());
    println!("store directory: {}", args.dir.display());

    let (fsync_rate, fsync_p50) = fsync_baseline(&args.dir, Duration::from_secs(3))?;
    println!(
        "disk: 4 KiB write + fdatasync, one after another: {fsync_rate:.0}/s (p50 {fsync_p50:.3} ms)"
    );

    let mut enqueues = Vec::new();
    let mut drains = Vec::new();
    for &backend in &backends {
        for &producers in &args.producers {
            let r = enqueue_run(&args, backend, producers).await?;
            println!(
                "{:>5} {:>3} producers: {:>8.0} enqueues/s  p50 {:.2} ms  p99 {:.2} ms  ({} jobs)",
                backend.as_str(),
                producers,
                r.rate,
                r.p50_ms,
                r.p99_ms,
                r.jobs
            );
            enqueues.push(r);
        }
        let d = drain_run(&args, backend).await?;
        println!(
            "{:>5} lease+complete: {:>8.0} jobs/s ({} jobs)",
            backend.as_str(),
            d.rate,
            d.jobs
        );
        drains.push(d);
    }

    println!();
    println!(
        "| backend | producers | durable enqueues/s | p50 ms | p99 ms | × 1 producer | × disk fsync rate |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &enqueues {
        let single = enqueues
            .iter()
            .find(|s| s.backend == r.backend && s.producers == 1)
            .map(|s| s.rate);
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} |",
            r.backend.as_str(),
            r.producers,
            r.rate,
            r.p50_ms,
            r.p99_ms,
            single.map_or("–".to_owned(), |s| format!("{:.1}", r.rate / s)),
            r.rate / fsync_rate
        );
    }
    println!();
    println!("| backend | lease+complete jobs/s |");
    println!("|---|---|");
    for d in &drains {
        println!("| {} | {:.0} |", d.backend.as_str(), d.rate);
    }
    Ok(())
}

fn open_queue(dir: &Path, backend: Backend) -> anyhow::Result<(Queue, tempfile::TempDir)> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{}-", backend.as_str()))
        .tempdir_in(dir)?;
    let store = KvJobStore::open(tmp.path(), backend, KvOptions::default())?;
    let queue = Queue::new(
        Arc::new(store),
        Arc::new(TokioClock::new()),
        RetryPolicies::default(),
        Duration::from_secs(60),
    );
    Ok((queue, tmp))
}

fn progress(label: String, duration: Duration) -> ProgressBar {
    let bar = ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(label);
    bar
}

async fn enqueue_run(
    args: &QueueBenchArgs,
    backend: Backend,
    producers: usize,
) -> anyhow::Result<EnqueueResult> {
    let (queue, _tmp) = open_queue(&args.dir, backend)?;
    let payload = vec![b'x'; args.payload];
    let bar = progress(
        format!("{} {producers} producers", backend.as_str()),
        args.duration,
    );
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut tasks = JoinSet::new();
    for p in 0..producers {
        let queue = queue.clone();
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let job = NewJob::new("bench.event", "bench", format!("D{p}-{n}"), payload.clone());
                let t = Instant::now();
                queue.enqueue(job).await?;
                latencies.push(t.elapsed());
                n += 1;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => latencies.extend(result??),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                bar.set_position(start.elapsed().as_millis() as u64);
            }
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(EnqueueResult {
        backend,
        producers,
        jobs: latencies.len(),
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

async fn drain_run(args: &QueueBenchArgs, backend: Backend) -> anyhow::Result<DrainResult> {
    let (queue, _tmp) = open_queue(&args.dir, backend)?;
    let jobs = 20_000;
    let payload = vec![b'x'; args.payload];
    for chunk in 0..jobs / 500 {
        let batch = (0..500)
            .map(|i| {
                NewJob::new(
                    "bench.event",
                    "bench",
                    format!("D{chunk}-{i}"),
                    payload.clone(),
                )
            })
            .collect();
        queue.enqueue_all(batch).await?;
    }
    let bar = ProgressBar::new(jobs as u64);
    bar.set_message(format!("{} lease+complete", backend.as_str()));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..8 {
        let queue = queue.clone();
        let bar = bar.clone();
        workers.spawn(async move {
            loop {
                let leased = queue.lease("bench", 64).await?.jobs;
                if leased.is_empty() {
                    return anyhow::Ok(());
                }
                let mut completes = JoinSet::new();
                for job in leased {
                    let queue = queue.clone();
                    completes.spawn(async move { queue.complete(&job).await });
                }
                while let Some(done) = completes.join_next().await {
                    done??;
                    bar.inc(1);
                }
            }
        });
    }
    while let Some(w) = workers.join_next().await {
        w??;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let done: u64 = queue.counts().await?.iter().map(|c| c.done).sum();
    anyhow::ensure!(done == jobs as u64, "drained {done} of {jobs}");
    Ok(DrainResult {
        backend,
        jobs,
        rate: jobs as f64 / elapsed.as_secs_f64(),
    })
}

/// Sequential 4 KiB writes, each followed by fdatasync: what one durable write at a time costs.
pub(crate) fn fsync_baseline(dir: &Path, duration: Duration) -> anyhow::Result<(f64, f64)> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(t.elapsed());
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    let p50 = latencies
        .get(latencies.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok((rate, p50))
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {kernel}")
}
