//! `dvc-connector demo`: a newcomer's first run. The three simulators, a callback receiver and the
//! daemon start in this process on loopback ports with a temporary store; a realistic day of portal
//! traffic goes through the real HTTP API while the simulators inject faults and the national portal
//! has an outage; then a summary: answers and latency, outcomes, retries, dead letters, delivery
//! latency, callbacks — and the ledger guarantees checked against what the simulators received.
//!
//! `--against URL` only drives the traffic at a daemon that is already running (the kill -9 test does
//! this, restarting the daemon in the middle).

pub mod check;
pub mod traffic;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use dvc_upstream::sim::{FaultPlan, Outage, Running};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Digest;

use crate::app::Application;
use crate::cli::DemoArgs;
use crate::queue::{JobFilter, JobState};

/// Answers whether the ledger guarantees held (the exit code).
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    crate::tls::install_crypto_provider();
    let run = args
        .run
        .clone()
        .unwrap_or_else(|| format!("DEMO{}", &ulid::Ulid::new().to_string()[20..]));
    if let Some(api) = &args.against {
        let token = std::env::var("DVC_CONNECTOR_TOKEN")
            .context("--against needs the API token in DVC_CONNECTOR_TOKEN")?;
        let driver = traffic::Driver::new(api, &token, &run)?;
        let report = drive(&driver, &args).await?;
        write_report(&args, &report)?;
        println!(
            "drove {} dossiers at {api}: {:?} answers, {} requests retried",
            report.dossiers.len(),
            report.answers,
            report.retried_requests
        );
        return Ok(true);
    }
    full(args, run).await
}

fn write_report(args: &DemoArgs, report: &traffic::Report) -> anyhow::Result<()> {
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn drive(driver: &traffic::Driver, args: &DemoArgs) -> anyhow::Result<traffic::Report> {
    let bar = ProgressBar::new(args.dossiers as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} dossiers {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("filing");
    let tick = bar.clone();
    let report = traffic::drive(driver, args.dossiers, args.parallel, move || tick.inc(1)).await;
    bar.finish_with_message("filed");
    report
}

/// The simulators of one demo and what they hold.
struct Sims {
    population: Arc<dvc_population::simulator::Simulator>,
    postal: Arc<dvc_postal::simulator::Simulator>,
    national: Arc<dvc_portal::simulator::Simulator>,
    provincial: Arc<dvc_portal::simulator::Simulator>,
    running: Vec<Running>,
}

async fn listener() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

fn faults(seed: u64, plan: FaultPlan) -> FaultPlan {
    FaultPlan {
        seed: Some(seed),
        ..plan
    }
}

async fn start_sims(no_faults: bool) -> anyhow::Result<Sims> {
    let none = FaultPlan::default();
    let pick = |plan: FaultPlan| if no_faults { none.clone() } else { plan };
    let mut pop =
        dvc_population::simulator::SimulatorConfig::with_fixture().map_err(anyhow::Error::msg)?;
    pop.faults = pick(faults(
        1,
        FaultPlan {
            http_500: 0.04,
            http_429: 0.03,
            reset: 0.02,
            malformed: 0.01,
            ..Default::default()
        },
    ));
    let (pop_run, population) = dvc_population::simulator::start(listener().await?, pop)?;
    let postal_config = dvc_postal::simulator::SimulatorConfig {
        step_interval: Duration::from_millis(400),
        faults: pick(faults(
            2,
            FaultPlan {
                http_500: 0.04,
                reset: 0.03,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let (postal_run, postal) = dvc_postal::simulator::start(listener().await?, postal_config)?;
    let national = dvc_portal::simulator::Simulator::new(dvc_portal::simulator::SimulatorConfig {
        faults: pick(faults(
            3,
            FaultPlan {
                http_500: 0.05,
                http_429: 0.02,
                // The outage is set when the traffic starts (below), so that it falls inside the run.
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    let provincial =
        dvc_portal::simulator::Simulator::new(dvc_portal::simulator::SimulatorConfig {
            faults: pick(faults(
                4,
                FaultPlan {
                    http_500: 0.03,
                    malformed: 0.02,
                    ..Default::default()
                },
            )),
            ..Default::default()
        });
    let router = axum::Router::new()
        .nest(
            "/provincial",
            dvc_portal::simulator::router(provincial.clone()),
        )
        .merge(dvc_portal::simulator::router(national.clone()));
    let portal_run = dvc_upstream::sim::serve(listener().await?, router)?;
    Ok(Sims {
        population,
        postal,
        national,
        provincial,
        running: vec![pop_run, postal_run, portal_run],
    })
}

/// Callbacks received: by type, and repeats of one event id.
#[derive(Debug, Default)]
struct Received {
    by_type: BTreeMap<String, u64>,
    ids: std::collections::HashSet<String>,
    repeats: u64,
    bad_signatures: u64,
}

const CALLBACK_SECRET: &str = "demo-callback-secret";

async fn receive(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
    let signature = header(crate::flows::callbacks::SIGNATURE_HEADER);
    if !crate::flows::callbacks::verify(CALLBACK_SECRET.as_bytes(), &signature, &body) {
        r.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    if !r.ids.insert(header("x-connector-event-id")) {
        r.repeats += 1;
    }
    *r.by_type.entry(header("x-connector-event")).or_default() += 1;
    StatusCode::NO_CONTENT
}

fn config(sims: &Sims, callback: &str, store: &std::path::Path, token_hash: &str) -> String {
    let base = |i: usize| sims.running[i].base_url();
    format!(
        r#"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "demo"
sha256 = "{token_hash}"
scopes = ["portal", "admin"]
[ops]
listen = "127.0.0.1:0"
[store]
path = "{store}"
# A key made beside the store: encryption at rest as in production, without a key file to provision.
encryption = "generated"
[queue]
lease = "30s"
lane_concurrency = 8
auth_pause = "2s"
shutdown_grace = "2s"
[queue.retry]
base = "200ms"
cap = "2s"
max_attempts = 40
[queue.circuit]
failures = 5
cooldown = "500ms"
max_cooldown = "2s"
[log]
level = "warn"
[upstreams]
allow_insecure_http = true
[upstreams.population]
service_url = "{pop}/dancu/soap"
token_url = "{pop}/token"
client_id = "dvc-dev"
client_secret = "dev-secret"
timeout = "5s"
[upstreams.population.officers.CB-DEV-01]
key = "canbo01"
password = "demo"
[upstreams.postal]
base_url = "{postal}"
customer_code = "DVCDEV01"
customer_key = "dev-customer"
secret_key = "dev-secret"
timeout = "5s"
[upstreams.portal.national]
base_url = "{portal}"
username = "dvc-dev"
password = "dev-password"
agency_code = "000.00.00.H56"
timeout = "5s"
[upstreams.portal.provincial]
base_url = "{portal}/provincial"
username = "dvc-dev"
password = "dev-password"
agency_code = "000.00.00.H56"
timeout = "5s"
[callbacks]
url = "{callback}"
secret = "{CALLBACK_SECRET}"
[flows.identity]
default_mode = "full"
[flows.postal]
tracking_interval = "300ms"
[flows.postal.sender]
name = "Bộ phận Một cửa (demo)"
phone = "02363888999"
address = "24 Trần Phú, Hải Châu"
province_code = "48"
"#,
        store = store.display(),
        pop = base(0),
        postal = base(1),
        portal = base(2),
    )
}

async fn full(args: DemoArgs, run: String) -> anyhow::Result<bool> {
    // Warnings (a lane backing off during the outage) are on the dashboard; the console keeps the bar.
    crate::telemetry::init(crate::settings::LogFormat::Human, "error");
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().context("temporary directory")?;
    let sims = start_sims(args.no_faults).await?;
    let received = Arc::new(Mutex::new(Received::default()));
    let cb_listener = listener().await?;
    let cb_url = format!("http://{}/callbacks", cb_listener.local_addr()?);
    let cb = dvc_upstream::sim::serve(
        cb_listener,
        axum::Router::new()
            .route("/callbacks", axum::routing::post(receive))
            .with_state(received.clone()),
    )?;
    let token = format!("demo-{}", ulid::Ulid::new());
    let hash = crate::hex::encode(&sha2::Sha256::digest(token.as_bytes()));
    let path = dir.path().join("demo.toml");
    std::fs::write(
        &path,
        config(&sims, &cb_url, &dir.path().join("store"), &hash),
    )?;
    let settings = crate::settings::load(&path, std::iter::empty())
        .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    let app = Application::build(&settings).await?;
    let api = format!("http://{}", app.api_addr());
    println!("dvc-connector demo — run {run}");
    println!(
        "  simulators: population {}, postal {}, portal {} (national; /provincial)",
        sims.running[0].base_url(),
        sims.running[1].base_url(),
        sims.running[2].base_url()
    );
    println!("  API {api}   dashboard http://{}/", app.ops_addr());
    if args.no_faults {
        println!("  faults: none (--no-faults)");
    } else {
        println!(
            "  faults: population 10% (500/429/reset/malformed), postal 7% (500/reset), portals 5% (500/429/malformed);\n          national portal down for 2.5 s, from 0.2 s into the traffic"
        );
        // The national portal goes down while the traffic runs, whatever this machine's speed.
        let mut plan = sims.national.faults.plan();
        let now = sims.national.faults.elapsed_ms();
        plan.outages = vec![Outage {
            start_ms: now + 200,
            end_ms: now + 2_700,
        }];
        sims.national.faults.set(plan);
    }

    let driver = traffic::Driver::new(&api, &token, &run)?;
    let report = drive(&driver, &args).await?;
    write_report(&args, &report)?;
    let shipments: Vec<String> = report
        .dossiers
        .iter()
        .flat_map(|d| d.shipment_ids.iter().cloned())
        .collect();
    drain(&app, &driver, &shipments).await;

    let ok = summary(&app, &driver, &report, &sims, &received, &shipments).await?;
    println!("\nfinished in {:.1} s", started.elapsed().as_secs_f64());
    if args.keep_running {
        println!(
            "\nstill running — API {api} (token: {token}), dashboard http://{}/ (same token). Ctrl-C stops.",
            app.ops_addr()
        );
        app.run_until_stopped(crate::app::shutdown_signal()).await?;
    } else {
        app.run_until_stopped(async {}).await?;
    }
    cb.stop().await;
    for r in sims.running {
        r.stop().await;
    }
    Ok(ok)
}

/// Waits until nothing is ready or leased and every shipment is final (at most two minutes).
async fn drain(app: &Application, driver: &traffic::Driver, shipments: &[String]) {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let counts = app.queue().counts().await.unwrap_or_default();
        let busy: u64 = counts.iter().map(|c| c.ready + c.leased).sum();
        let mut open = 0;
        for id in shipments {
            let a = driver
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/shipments/{id}"),
                    "get",
                    None,
                )
                .await;
            let status = a.map(|a| a.body["status"].as_str().unwrap_or("").to_owned());
            if !matches!(
                status.as_deref(),
                Ok("delivered" | "returned" | "cancelled" | "failed")
            ) {
                open += 1;
            }
        }
        bar.set_message(format!(
            "delivering: {busy} jobs in flight, {open} shipments on their way"
        ));
        if (busy == 0 && open == 0) || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_with_message("delivered");
}

fn percentiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        at(0.5),
        at(0.95),
        at(0.99),
        at(1.0)
    )
}

async fn summary(
    app: &Application,
    driver: &traffic::Driver,
    report: &traffic::Report,
    sims: &Sims,
    received: &Arc<Mutex<Received>>,
    shipments: &[String],
) -> anyhow::Result<bool> {
    println!("\n== API ==");
    println!("  answers: {:?}", report.answers);
    println!("  latency: {}", percentiles(report.latencies_ms.clone()));
    let mut verdicts: BTreeMap<String, u64> = BTreeMap::new();
    for d in &report.dossiers {
        if let Some(v) = &d.verification {
            *verdicts.entry(v.clone()).or_default() += 1;
        }
    }
    // Verifications answered 202 finish later: read their final state.
    for d in &report.dossiers {
        if let (Some("pending"), Some(id)) = (d.verification.as_deref(), &d.verification_id) {
            let a = driver
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/identity/verifications/{id}"),
                    "get",
                    None,
                )
                .await?;
            let now = a.body["status"].as_str().unwrap_or("?").to_owned();
            *verdicts.entry("pending".into()).or_default() -= 1;
            *verdicts.entry(format!("{now} (after 202)")).or_default() += 1;
        }
    }
    verdicts.retain(|_, n| *n > 0);
    println!("\n== Identity ==\n  {verdicts:?}");

    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    // Results delivered by post: each adds a "result returned" step to its dossier.
    let mut results_delivered = 0usize;
    for id in shipments {
        let a = driver
            .send(
                reqwest::Method::GET,
                &format!("/v1/shipments/{id}"),
                "get",
                None,
            )
            .await?;
        *states
            .entry(a.body["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        if a.body["kind"] == "result_delivery" && a.body["status"] == "delivered" {
            results_delivered += 1;
        }
    }
    println!("\n== Shipments ==\n  {states:?}");

    let jobs = app
        .queue()
        .list(JobFilter::default(), None, 1_000_000)
        .await?;
    let mut per_kind: BTreeMap<String, (u64, u64, u64, Vec<f64>)> = BTreeMap::new();
    for j in &jobs {
        let e = per_kind.entry(j.kind.clone()).or_default();
        match j.state {
            JobState::Done => {
                e.0 += 1;
                if let Some(f) = j.finished_at {
                    e.3.push(f.saturating_sub(j.created_at) as f64);
                }
            }
            JobState::Dead => e.1 += 1,
            _ => {}
        }
        e.2 += u64::from(j.attempts.saturating_sub(1));
    }
    println!("\n== Deliveries (accepted → upstream confirmed) ==");
    let step_jobs = per_kind.get("portal.step").map_or(0, |e| e.0 + e.1);
    for (kind, (done, dead, retries, lat)) in per_kind {
        println!(
            "  {kind:<17} done {done:>5}  dead {dead:>3}  retries {retries:>5}  {}",
            percentiles(lat)
        );
    }
    let accepted_steps: usize = report.dossiers.iter().map(|d| d.steps.len()).sum();
    let returned = results_delivered;
    println!(
        "  jobs and steps: each accepted step is one portal.step job per portal target ({accepted_steps} steps × 2 targets), and each result delivered by post adds a \"result returned\" step ({returned} × 2): {} expected, {step_jobs} counted. A job sends its step together with the steps queued right behind it, up to ten per call.",
        accepted_steps * 2 + returned * 2
    );
    let r = received.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "\n== Callbacks (signed, verified by the receiver) ==\n  {:?}; repeats {}, bad signatures {}",
        r.by_type, r.repeats, r.bad_signatures
    );
    drop(r);

    println!("\n== Ledger guarantees (what the simulators received) ==");
    let mut ok = true;
    for (name, sim) in [
        ("national", &sims.national),
        ("provincial", &sims.provincial),
    ] {
        let dossiers: Vec<String> = report
            .dossiers
            .iter()
            .filter(|d| sim.dossier(&d.code).is_some())
            .map(|d| d.code.clone())
            .collect();
        let steps: Vec<(String, String)> = sim
            .steps()
            .into_iter()
            .map(|s| (s.step.ma_ho_so, s.step.noi_dung_xu_ly))
            .collect();
        let refused = sim
            .ledger
            .snapshot()
            .iter()
            .filter(|e| e.service == "CapNhatTienDoHoSoMC" && e.outcome == "error_code:4")
            .count();
        let calls: Vec<usize> = sim
            .ledger
            .snapshot()
            .iter()
            .filter(|e| e.service == "CapNhatTienDoHoSoMC" && e.outcome == "ok")
            .map(|e| e.dossiers.len())
            .collect();
        let c = check::portal(name, report, &dossiers, &steps, refused);
        ok &= c.holds();
        println!(
            "  {} portal {name}: {}/{} dossiers, {}/{} steps ({} calls, up to {} steps per call), {} out of order, {} before their dossier, {} repeated",
            mark(c.holds()),
            c.dossiers_expected - c.dossiers_missing,
            c.dossiers_expected,
            c.steps_expected - c.steps_missing,
            c.steps_expected,
            calls.len(),
            calls.iter().max().copied().unwrap_or(0),
            c.dossiers_out_of_order,
            c.steps_before_dossier,
            c.steps_duplicated
        );
    }
    let creates: Vec<(String, String)> = sims
        .postal
        .ledger
        .snapshot()
        .into_iter()
        .filter(|e| e.operation == "create")
        .map(|e| (e.order_number, e.outcome))
        .collect();
    let p = check::postal(report, &creates);
    ok &= p.holds();
    println!(
        "  {} postal: {}/{} orders created, {} created twice, {} retried creates answered \"already exists\"",
        mark(p.holds()),
        p.orders_expected - p.orders_missing,
        p.orders_expected,
        p.orders_duplicated,
        p.duplicate_attempts
    );
    // The simulators judged every request by the upstream contract, as strict upstreams would.
    let mut violations: Vec<String> = Vec::new();
    let named = |sim: &'static str, v: Vec<dvc_upstream::judge::Violation>| {
        v.into_iter()
            .map(move |v| format!("{sim}: {} {} ({})", v.field, v.kind.as_str(), v.detail))
    };
    violations.extend(named("population", sims.population.violations()));
    violations.extend(named("postal", sims.postal.violations()));
    violations.extend(named("national", sims.national.violations()));
    violations.extend(named("provincial", sims.provincial.violations()));
    ok &= violations.is_empty();
    println!(
        "  {} upstream contract: {} requests refused for breaking a rule",
        mark(violations.is_empty()),
        violations.len()
    );
    for v in violations.iter().take(10) {
        println!("      {v}");
    }
    let faults = |entries: Vec<String>| {
        entries
            .iter()
            .filter(|o| {
                matches!(
                    o.as_str(),
                    "http_500" | "http_429" | "reset" | "malformed" | "outage" | "hang"
                )
            })
            .count()
    };
    println!(
        "  faults injected: population {}, postal {}, national {}, provincial {}",
        faults(
            sims.population
                .ledger
                .snapshot()
                .into_iter()
                .map(|e| e.outcome)
                .collect()
        ),
        faults(
            sims.postal
                .ledger
                .snapshot()
                .into_iter()
                .map(|e| e.outcome)
                .collect()
        ),
        faults(
            sims.national
                .ledger
                .snapshot()
                .into_iter()
                .map(|e| e.outcome)
                .collect()
        ),
        faults(
            sims.provincial
                .ledger
                .snapshot()
                .into_iter()
                .map(|e| e.outcome)
                .collect()
        ),
    );
    Ok(ok)
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}
