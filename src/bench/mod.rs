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
    round: u32,
    jobs: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// The whole process's CPU time during the run (the store's threads and the producers).
    cpu_s: f64,
    elapsed_s: f64,
}

impl EnqueueResult {
    /// Durable enqueues per second.
    fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.jobs as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    fn cpu_us_per_job(&self) -> f64 {
        if self.jobs == 0 {
            0.0
        } else {
            self.cpu_s * 1e6 / self.jobs as f64
        }
    }

    /// How many cores the process kept busy on average.
    fn cores_busy(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.cpu_s / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// The value at fraction `p` of `sorted` (nearest rank); 0 for none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One row of the table per backend and producer count: medians over the rounds, and the ratio to
/// one producer taken within each round (both rates from the same minutes of the disk).
fn enqueue_table(enqueues: &[EnqueueResult], fsync_rate: f64) -> Vec<String> {
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    for r in enqueues {
        if seen.contains(&(r.backend, r.producers)) {
            continue;
        }
        seen.push((r.backend, r.producers));
        let of = |backend: Backend, producers: usize| {
            enqueues
                .iter()
                .filter(move |e| e.backend == backend && e.producers == producers)
        };
        let runs: Vec<&EnqueueResult> = of(r.backend, r.producers).collect();
        let ratios: Vec<f64> = runs
            .iter()
            .filter_map(|run| {
                of(r.backend, 1)
                    .find(|single| single.round == run.round)
                    .map(|single| run.rate() / single.rate())
            })
            .collect();
        let ratio = match ratios[..] {
            [] => "–".to_owned(),
            [only] => format!("{only:.1}"),
            _ => {
                let (lo, hi) = ratios
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                format!("{:.1} ({lo:.1}–{hi:.1})", median(ratios))
            }
        };
        let rate = median(runs.iter().map(|run| run.rate()).collect());
        rows.push(format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.2} |",
            r.backend.as_str(),
            r.producers,
            rate,
            median(runs.iter().map(|run| run.p50_ms).collect()),
            median(runs.iter().map(|run| run.p99_ms).collect()),
            ratio,
            rate / fsync_rate,
            median(runs.iter().map(|run| run.cpu_us_per_job()).collect()),
            median(runs.iter().map(|run| run.cores_busy()).collect()),
        ));
    }
    rows
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
    for round in 1..=args.rounds {
        for &backend in &backends {
            for &producers in &args.producers {
                let r = enqueue_run(&args, backend, producers, round).await?;
                println!(
                    "{}{:>5} {:>3} producers: {:>8.0} enqueues/s  p50 {:.2} ms  p99 {:.2} ms  ({} jobs; CPU {:.1} µs per job, {:.2} cores busy)",
                    if args.rounds > 1 {
                        format!("round {round}: ")
                    } else {
                        String::new()
                    },
                    backend.as_str(),
                    producers,
                    r.rate(),
                    r.p50_ms,
                    r.p99_ms,
                    r.jobs,
                    r.cpu_us_per_job(),
                    r.cores_busy()
                );
                enqueues.push(r);
            }
        }
    }
    for &backend in &backends {
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
    if args.rounds > 1 {
        println!(
            "medians of {} rounds; × 1 producer: the median of each round's ratio (its range)",
            args.rounds
        );
    }
    println!(
        "| backend | producers | durable enqueues/s | p50 ms | p99 ms | × 1 producer | × disk fsync rate | CPU µs per job | cores busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in enqueue_table(&enqueues, fsync_rate) {
        println!("{row}");
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

/// CPU seconds (user + system) the process has used, from `/proc/<pid>/stat`; 0 where it cannot be read.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = rustix::param::clock_ticks_per_second() as f64;
    (ticks(11) + ticks(12)) / hz
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
    round: u32,
) -> anyhow::Result<EnqueueResult> {
    let (queue, _tmp) = open_queue(&args.dir, backend)?;
    let payload = vec![b'x'; args.payload];
    let bar = progress(
        format!("{} {producers} producers", backend.as_str()),
        args.duration,
    );
    let cpu_before = cpu_seconds(std::process::id());
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
    let cpu_s = cpu_seconds(std::process::id()) - cpu_before;
    bar.finish_and_clear();
    latencies.sort();
    let latencies_ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    Ok(EnqueueResult {
        backend,
        producers,
        round,
        jobs: latencies.len(),
        p50_ms: percentile(&latencies_ms, 0.50),
        p99_ms: percentile(&latencies_ms, 0.99),
        cpu_s,
        elapsed_s: elapsed.as_secs_f64(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One second's run; the process busy 0.3, 0.4, 0.5 cores in rounds 1, 2, 3.
    fn run(producers: usize, round: u32, rate: f64) -> EnqueueResult {
        EnqueueResult {
            backend: Backend::Redb,
            producers,
            round,
            jobs: rate as usize,
            p50_ms: rate / 1000.0,
            p99_ms: 1.0,
            cpu_s: 0.2 + f64::from(round) * 0.1,
            elapsed_s: 1.0,
        }
    }

    #[test]
    fn a_percentile_is_the_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), 0.0);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 0.0), 1.0);
        assert_eq!(percentile(&hundred, 0.5), 51.0);
        assert_eq!(percentile(&hundred, 0.99), 99.0);
        assert_eq!(percentile(&hundred, 1.0), 100.0);
    }

    #[test]
    fn the_median_takes_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn the_ratio_to_one_producer_is_taken_within_each_round() {
        // The disk was fast in round 2 and slow in round 3. Each round's own ratios are 15, 25 and
        // 30; the ratio of the two medians (45,000 / 3,000 = 15) would mix different minutes.
        let results = [
            run(1, 1, 3000.0),
            run(64, 1, 45000.0),
            run(1, 2, 4000.0),
            run(64, 2, 100_000.0),
            run(1, 3, 1000.0),
            run(64, 3, 30000.0),
        ];
        let rows = enqueue_table(&results, 3000.0);
        assert_eq!(
            rows,
            [
                "| redb | 1 | 3000 | 3.00 | 1.00 | 1.0 (1.0–1.0) | 1.0 | 100.0 | 0.40 |",
                // CPU per job 6.7, 4.0 and 16.7 µs: the median, not the mean (9.1).
                "| redb | 64 | 45000 | 45.00 | 1.00 | 25.0 (15.0–30.0) | 15.0 | 6.7 | 0.40 |",
            ]
        );
        // One round: the plain ratio, as before rounds existed.
        let rows = enqueue_table(&results[..2], 3000.0);
        assert_eq!(
            rows[1],
            "| redb | 64 | 45000 | 45.00 | 1.00 | 15.0 | 15.0 | 6.7 | 0.30 |"
        );
    }

    #[test]
    fn the_process_cpu_time_grows_with_work_and_is_zero_for_no_process() {
        let pid = std::process::id();
        let before = cpu_seconds(pid);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let used = cpu_seconds(pid) - before;
        assert!(used > 0.0, "300 ms of a busy loop used no CPU time?");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            used <= start.elapsed().as_secs_f64() * cores as f64 + 0.05,
            "{used}"
        );
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
