//! The crash-qualification child: the real application, a producer that enqueues through the real queue
//! and prints an `ACK` line only after each enqueue is durable, and a worker that delivers every job to a
//! ledger over HTTP. The integration test kills it with SIGKILL at random moments and checks the ledger
//! against the acknowledgements (see `tests/integration/crash.rs` and docs/STORE.md).

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::app::{self, Application, Wiring};
use crate::cli::QualifyArgs;
use crate::queue::kv::{CrashAction, CrashPlan, CrashPoint};
use crate::queue::worker::{HandlerFuture, Handlers, JobHandler};
use crate::queue::{Job, JobError, KvOptions, NewJob};

pub const LANE: &str = "qualify";
pub const KIND: &str = "qualify.deliver";

#[derive(Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// The process life (`--run`) that made the delivery.
    pub run: u32,
    pub key: String,
    pub n: usize,
    pub id: String,
}

#[derive(Debug)]
struct LedgerHandler {
    client: reqwest::Client,
    url: String,
    run: u32,
    /// The planted "double delivery" bug: every delivery is made twice.
    twice: bool,
}

impl JobHandler for LedgerHandler {
    fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a> {
        Box::pin(async move {
            let (key, n): (String, usize) = serde_json::from_slice(&job.payload)
                .map_err(|e| JobError::permanent("bad_payload", e.to_string()))?;
            let body = Delivery {
                run: self.run,
                key,
                n,
                id: job.id.to_string(),
            };
            if self.twice {
                let _ = self.client.post(&self.url).json(&body).send().await;
            }
            let response = self
                .client
                .post(&self.url)
                .json(&body)
                .send()
                .await
                .map_err(|e| JobError::retryable("connect", e.to_string()))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(JobError::retryable(
                    format!("http_{}", response.status().as_u16()),
                    "ledger refused",
                ))
            }
        })
    }
}

pub async fn child(args: QualifyArgs) -> anyhow::Result<()> {
    // Before the application exists: the driver's SIGTERM may come as soon as it has started.
    let signal = app::shutdown_signal();
    let settings = crate::settings::load(&args.config, std::env::vars())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::telemetry::init(settings.log.format, &settings.log.level);
    let crash = match &args.crash_at {
        None => None,
        Some(spec) => {
            let (point, nth) = spec.split_once(':').context("--crash-at POINT:N")?;
            let point = CrashPoint::parse(point).context("unknown crash point")?;
            Some(CrashPlan::new(point, nth.parse()?, CrashAction::Abort))
        }
    };
    let mut handlers = Handlers::default();
    handlers.register(
        KIND,
        Arc::new(LedgerHandler {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()?,
            url: args.ledger.clone(),
            run: args.run,
            twice: args.plant.as_deref() == Some("double"),
        }),
    );
    // The planted FIFO bug: each job under an ordering key of its own.
    let fifo_broken = args.plant.as_deref() == Some("fifo");
    let wiring = Wiring {
        handlers,
        lanes: vec![LANE.to_owned()],
    };
    let app = Application::build_with(
        &settings,
        wiring,
        KvOptions {
            crash,
            ..Default::default()
        },
    )
    .await?;
    let queue = app.queue().clone();
    println!("READY");
    let _ = std::io::stdout().flush();

    let mut producers = Vec::new();
    for p in 0..args.producers {
        let queue = queue.clone();
        let (run, keys, jobs) = (args.run, args.keys, args.jobs);
        producers.push(tokio::spawn(async move {
            for n in 0..jobs {
                for k in 0..keys {
                    let key = format!("r{run}p{p}k{k}");
                    let payload = serde_json::to_vec(&(&key, n)).unwrap_or_default();
                    let ordering_key = if fifo_broken {
                        format!("{key}#{n}")
                    } else {
                        key.clone()
                    };
                    match queue
                        .enqueue(NewJob::new(KIND, LANE, &ordering_key, payload))
                        .await
                    {
                        Ok(done) => {
                            // Only now, with the job on disk, is it acknowledged.
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "ACK {key} {n} {}", done.id);
                            let _ = out.flush();
                        }
                        Err(e) => {
                            eprintln!("enqueue failed: {e}");
                            return;
                        }
                    }
                }
            }
        }));
    }
    let stop = async {
        signal.await;
        for p in &producers {
            p.abort();
        }
    };
    app.run_until_stopped(stop).await?;
    // The writer is closed; reads still see the final, committed state.
    let counts = queue.counts().await?;
    let sum = |f: fn(&crate::queue::LaneCounts) -> u64| counts.iter().map(f).sum::<u64>();
    println!(
        "COUNTS ready={} leased={} done={} dead={}",
        sum(|c| c.ready),
        sum(|c| c.leased),
        sum(|c| c.done),
        sum(|c| c.dead)
    );
    Ok(())
}
