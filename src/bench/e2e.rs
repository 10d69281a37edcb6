//! `dvc-connector bench e2e`: the whole path, as in production. The daemon runs as its own process
//! (this binary, `run`, release build, default store, fsync on, logging at `warn`; the per-token rate
//! limit off, or its default of 20,000 requests/s would be what is measured) against the portal
//! simulator on loopback (no faults, no latency). Many connections drive the real API with dossiers —
//! a `PUT` of the record, then events — and the benchmark reports accepted/s and accept latency,
//! delivered/s (until the simulator holds every record and step), the daemon's CPU time per event, its
//! RSS idle before the run, at peak, and idle again `--settle` after the drain (caches warm), and the
//! store's size per 1,000 events. For scale, the same run measures the
//! one-hop ceiling (the same requests straight to a loopback server that answers 200 without storing
//! anything) and the disk's `4 KiB write + fdatasync` rate.
//!
//! The scenario runs `--runs` times (default 3, as the issue's reference figures are medians of three
//! runs), each with a fresh daemon, store and simulator, and ends with a table of every run and each
//! column's median.
//!
//! Whatever the speed, each run then checks that every accepted record and step reached the simulator
//! exactly once and in order, and fails if not (the CI smoke run relies on that).
//!
//! `--backlog N` adds the second scenario: N steps accepted while the portal is down, then the daemon
//! is restarted (time to ready, RSS holding the backlog) and the portal comes back (drain time).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Digest;

use super::{cpu_seconds, percentile};
use crate::cli::E2eBenchArgs;

const TOKEN: &str = "bench-token";

/// The daemon under test, as a child process.
struct Daemon {
    child: Child,
    api: String,
    ops: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts the daemon and waits until `/readyz` says ready; answers how long that took.
    async fn start(config: &Path) -> anyhow::Result<(Daemon, Duration)> {
        let started = Instant::now();
        let mut child = Command::new(std::env::current_exe()?)
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the daemon")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("dvc-connector started") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                } else if line.contains("\"ERROR\"") {
                    eprintln!("daemon: {line}");
                }
            }
        });
        let line = tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .context("the daemon did not start within two minutes")?
            .context("the daemon exited before starting")?;
        let log: serde_json::Value = serde_json::from_str(&line)?;
        let addr = |f: &str| log[f].as_str().map(|a| format!("http://{a}"));
        let (Some(api), Some(ops)) = (addr("api_addr"), addr("ops_addr")) else {
            bail!("no listen addresses in {line}");
        };
        let mut daemon = Daemon { child, api, ops };
        // Ready means the store is writable and the workers report: what a load balancer waits for.
        let client = reqwest::Client::new();
        loop {
            let ready = client.get(format!("{}/readyz", daemon.ops)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the daemon was not ready within two minutes");
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                bail!("the daemon exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok((daemon, started.elapsed()))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The daemon's configuration: its defaults, but for what the benchmark needs (loopback addresses, the
/// store under `dir`, no rate limit, fast retries) and the lane concurrency if one is asked for.
fn config(
    dir: &Path,
    portal: &str,
    concurrency: Option<usize>,
    backend: &str,
) -> anyhow::Result<PathBuf> {
    let hash = crate::hex::encode(&sha2::Sha256::digest(TOKEN.as_bytes()));
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[api]
listen = "127.0.0.1:0"
rate_limit = 0
[[api.tokens]]
name = "bench"
sha256 = "{hash}"
scopes = ["portal", "admin"]
[ops]
listen = "127.0.0.1:0"
[store]
backend = "{backend}"
path = "{store}"
# A key made beside the store: encryption at rest as in production, without a key file to provision.
encryption = "generated"
[queue]
{concurrency}
[queue.retry]
base = "100ms"
cap = "1s"
[queue.circuit]
failures = 5
cooldown = "200ms"
max_cooldown = "1s"
[log]
format = "json"
level = "warn,dvc_connector::app=info"
[upstreams]
allow_insecure_http = true
[upstreams.portal.national]
base_url = "{portal}"
username = "dvc-dev"
password = "dev-password"
agency_code = "000.00.00.H56"
"#,
            store = dir.join("store").display(),
            concurrency = concurrency.map_or(String::new(), |n| format!("lane_concurrency = {n}")),
        ),
    )?;
    Ok(path)
}

/// Requests of one dossier: the record, then `events` steps, their bodies already serialised (from
/// structs, not `serde_json::Value` trees: the generator shares the two cores with the daemon).
fn requests(
    run: &str,
    i: usize,
    events: usize,
) -> serde_json::Result<Vec<(http::Method, String, bytes::Bytes)>> {
    #[derive(serde::Serialize)]
    struct Record {
        procedure_code: &'static str,
        status: &'static str,
        owner_name: &'static str,
        received_at: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Event<'a> {
        status: &'static str,
        occurred_at: &'static str,
        handler: &'static str,
        content: &'a str,
    }
    fn body(v: &impl serde::Serialize) -> serde_json::Result<bytes::Bytes> {
        serde_json::to_vec(v).map(bytes::Bytes::from)
    }
    let code = format!("{run}-{i:06}");
    let mut out = vec![(
        http::Method::PUT,
        format!("/v1/dossiers/{code}"),
        body(&Record {
            procedure_code: "1.001612",
            status: "new",
            owner_name: "Bench",
            received_at: "2026-11-27T08:00:00+07:00",
        })?,
    )];
    for k in 1..=events {
        out.push((
            http::Method::POST,
            format!("/v1/dossiers/{code}/events"),
            body(&Event {
                status: "processing",
                occurred_at: "2026-11-27T09:00:00+07:00",
                handler: "Cán bộ",
                content: &format!("step {k}"),
            })?,
        ));
    }
    Ok(out)
}

struct Drive {
    accepted: usize,
    wall: Duration,
    latencies_ms: Vec<f64>,
}

/// One keep-alive HTTP/1.1 connection of the load generator: hyper's client connection with nothing
/// on top (no pool, no URL parsing, no redirect or proxy logic), so that the generator takes as little
/// of the two cores as it can from the daemon it measures.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: http::HeaderValue,
}

impl Connection {
    async fn open(base: &str) -> anyhow::Result<Self> {
        let authority = base
            .strip_prefix("http://")
            .with_context(|| format!("{base}: the benchmark speaks plain HTTP"))?;
        let stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: http::HeaderValue::from_str(authority)?,
        })
    }

    /// Sends one request and reads the whole answer; returns its status.
    async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        body: bytes::Bytes,
    ) -> anyhow::Result<u16> {
        use http_body_util::BodyExt as _;
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.host.clone())
            .header(http::header::AUTHORIZATION, BEARER)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

const BEARER: &str = "Bearer bench-token";

/// Sends every dossier's requests (in order within a dossier) over `connections` concurrent workers.
async fn drive(
    base: &str,
    run: &str,
    dossiers: usize,
    events: usize,
    connections: usize,
    expect: u16,
    bar: Option<ProgressBar>,
) -> anyhow::Result<Drive> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut connected = Vec::with_capacity(connections);
    for _ in 0..connections {
        connected.push(Connection::open(base).await?);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut connection in connected {
        let (next, run, bar) = (next.clone(), run.to_owned(), bar.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= dossiers {
                    break;
                }
                for (method, path, body) in requests(&run, i, events)? {
                    let t = Instant::now();
                    let status = connection.send(method, &path, body).await?;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    if status != expect {
                        bail!("{path} answered {status}");
                    }
                }
                if let Some(b) = &bar {
                    b.inc(1);
                }
            }
            anyhow::Ok(lat)
        });
    }
    let mut latencies_ms = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies_ms.extend(done??);
    }
    let wall = started.elapsed();
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Drive {
        accepted: latencies_ms.len(),
        wall,
        latencies_ms,
    })
}

/// A loopback server that answers 200 to anything: the one-hop ceiling.
async fn ceiling_server() -> anyhow::Result<(dvc_upstream::sim::Running, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let router = axum::Router::new().fallback(|| async { "{}" });
    let running = dvc_upstream::sim::serve(listener, router)?;
    let base = running.base_url();
    Ok((running, base))
}

/// What the simulator holds, checked against what was accepted: (missing, duplicated, out of order).
fn exactly_once(
    sim: &dvc_portal::simulator::Simulator,
    run: &str,
    dossiers: usize,
    events: usize,
) -> (usize, usize, usize) {
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for s in sim.steps() {
        got.entry(s.step.ma_ho_so)
            .or_default()
            .push(s.step.noi_dung_xu_ly);
    }
    let (mut missing, mut duplicated, mut disordered) = (0, 0, 0);
    for i in 0..dossiers {
        let code = format!("{run}-{i:06}");
        if sim.dossier(&code).is_none() {
            missing += 1;
        }
        let have = got.remove(&code).unwrap_or_default();
        let want: Vec<String> = (1..=events).map(|k| format!("step {k}")).collect();
        missing += want.iter().filter(|w| !have.contains(w)).count();
        duplicated += have.len().saturating_sub(want.len().min(have.len()));
        let mut first: Vec<&String> = Vec::new();
        for h in &have {
            if !first.contains(&h) {
                first.push(h);
            }
        }
        if first
            .iter()
            .map(|s| s.as_str())
            .ne(want.iter().map(String::as_str).take(first.len()))
        {
            disordered += 1;
        }
    }
    (missing, duplicated, disordered)
}

fn wait_delivered(
    sim: &dvc_portal::simulator::Simulator,
    steps: usize,
    timeout: Duration,
    bar: &ProgressBar,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = sim.step_count();
        bar.set_position(n as u64);
        if n >= steps {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bar(len: u64, msg: &str, unit: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg:>22}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_message(msg.to_owned());
    b
}

pub async fn run(args: E2eBenchArgs) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut runs = Vec::with_capacity(args.runs as usize);
    for n in 1..=args.runs {
        let figures = scenario(&args).await?;
        println!("\n== bench e2e: {} ==", crate::bench::machine());
        if args.runs > 1 {
            println!("run {n} of {}", args.runs);
        }
        figures.print(&args);
        if !figures.exactly_once() {
            bail!("the portal did not receive every accepted event exactly once and in order");
        }
        runs.push(figures);
    }
    if runs.len() > 1 {
        print_medians(&runs);
    }
    if args.backlog > 0 {
        let tmp = tempfile::tempdir_in(&args.dir)?;
        backlog(&args, tmp.path()).await?;
    }
    Ok(())
}

/// What one run of the default scenario measured.
/// The simulator judged every request by the portal contract: a benchmark of requests a strict portal
/// would refuse measures nothing.
fn refuse_violations(sim: &dvc_portal::simulator::Simulator) -> anyhow::Result<()> {
    let violations = sim.violations();
    if let Some(first) = violations.first() {
        bail!(
            "the portal simulator refused {} requests that break the contract, the first: {first}",
            violations.len()
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    fsync_rate: f64,
    fsync_p50_ms: f64,
    ceiling_per_s: f64,
    ceiling_p50_ms: f64,
    ceiling_p99_ms: f64,
    lane_concurrency: usize,
    accepted_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    drain_s: f64,
    delivered_per_s: f64,
    progress_calls: usize,
    cpu_ms_per_event: f64,
    idle_rss_mib: f64,
    peak_rss_mib: f64,
    rss_after_mib: f64,
    ready_ms: f64,
    store_kib_per_1000: f64,
    missing: usize,
    duplicated: usize,
    disordered: usize,
}

/// One run of the default scenario: a fresh store, daemon and simulator; then the one-hop ceiling.
async fn scenario(args: &E2eBenchArgs) -> anyhow::Result<Figures> {
    let tmp = tempfile::tempdir_in(&args.dir)?;
    let (fsync_rate, fsync_p50) = super::fsync_baseline(tmp.path(), Duration::from_secs(2))?;

    // The portal, on loopback: no faults, no latency.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim = dvc_portal::simulator::Simulator::new(Default::default());
    let portal = dvc_upstream::sim::serve(listener, dvc_portal::simulator::router(sim.clone()))?;
    let config = config(
        tmp.path(),
        &portal.base_url(),
        args.lane_concurrency,
        &args.store,
    )?;
    // As the daemon will read it: it inherits this process's environment, overrides included.
    let lane_concurrency = crate::settings::load(&config, std::env::vars())
        .context("the benchmark's daemon config")?
        .queue
        .lane_concurrency;
    let (daemon, ready_after) = Daemon::start(&config).await?;
    let pid = daemon.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = rss_mib(pid);
    let cpu_before = cpu_seconds(pid);

    let run = "B";
    let requests_total = args.dossiers * (1 + args.events);
    let b = bar(args.dossiers as u64, "accepting", "dossiers");
    let started = Instant::now();
    let accepted = drive(
        &daemon.api,
        run,
        args.dossiers,
        args.events,
        args.connections,
        202,
        Some(b.clone()),
    )
    .await?;
    b.finish();
    let steps = args.dossiers * args.events;
    let d = bar(steps as u64, "delivering", "steps");
    let delivered_at =
        tokio::task::block_in_place(|| wait_delivered(&sim, steps, Duration::from_secs(600), &d));
    d.finish();
    let Some(delivered_at) = delivered_at else {
        bail!("not everything was delivered within 10 minutes");
    };
    // The last records (whose steps were all sent) are in too.
    let cpu = cpu_seconds(pid) - cpu_before;
    let (_, peak_rss) = rss_mib(pid);
    let drain = delivered_at - started;
    let store_bytes = crate::queue::kv::disk_usage(&tmp.path().join("store"));
    let (missing, duplicated, disordered) = exactly_once(&sim, run, args.dossiers, args.events);
    refuse_violations(&sim)?;
    let progress_calls = sim
        .ledger
        .snapshot()
        .iter()
        .filter(|e| e.service == "CapNhatTienDoHoSoMC" && e.outcome == "ok")
        .count();

    // The one-hop ceiling: the same requests, straight to a server that stores nothing.
    let (ceiling, ceiling_base) = ceiling_server().await?;
    let hop = drive(
        &ceiling_base,
        "C",
        args.dossiers,
        args.events,
        args.connections,
        200,
        None,
    )
    .await?;
    ceiling.stop().await;
    tokio::time::sleep(args.settle.saturating_sub(delivered_at.elapsed())).await;
    let (rss_after, _) = rss_mib(pid);
    drop(daemon);
    portal.stop().await;

    let lat = &accepted.latencies_ms;
    Ok(Figures {
        fsync_rate,
        fsync_p50_ms: fsync_p50,
        ceiling_per_s: hop.accepted as f64 / hop.wall.as_secs_f64(),
        ceiling_p50_ms: percentile(&hop.latencies_ms, 0.5),
        ceiling_p99_ms: percentile(&hop.latencies_ms, 0.99),
        lane_concurrency,
        accepted_per_s: accepted.accepted as f64 / accepted.wall.as_secs_f64(),
        p50_ms: percentile(lat, 0.5),
        p99_ms: percentile(lat, 0.99),
        p999_ms: percentile(lat, 0.999),
        drain_s: drain.as_secs_f64(),
        delivered_per_s: requests_total as f64 / drain.as_secs_f64(),
        progress_calls,
        cpu_ms_per_event: cpu * 1000.0 / requests_total as f64,
        idle_rss_mib: idle_rss,
        peak_rss_mib: peak_rss,
        rss_after_mib: rss_after,
        ready_ms: ready_after.as_secs_f64() * 1000.0,
        store_kib_per_1000: store_bytes as f64 / 1024.0 / requests_total as f64 * 1000.0,
        missing,
        duplicated,
        disordered,
    })
}

impl Figures {
    fn exactly_once(&self) -> bool {
        self.missing + self.duplicated + self.disordered == 0
    }

    fn print(&self, args: &E2eBenchArgs) {
        let requests_total = args.dossiers * (1 + args.events);
        let steps = args.dossiers * args.events;
        println!(
            "workload: {} dossiers × (1 record + {} events) = {requests_total} requests over {} connections; one portal target; lane concurrency {}",
            args.dossiers, args.events, args.connections, self.lane_concurrency
        );
        println!(
            "disk: 4 KiB write + fdatasync {:.0}/s (p50 {:.2} ms); one-hop ceiling {:.0} req/s (p50 {:.2} / p99 {:.2} ms)",
            self.fsync_rate,
            self.fsync_p50_ms,
            self.ceiling_per_s,
            self.ceiling_p50_ms,
            self.ceiling_p99_ms
        );
        println!(
            "accepted: {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
            self.accepted_per_s, self.p50_ms, self.p99_ms, self.p999_ms
        );
        println!(
            "delivered: all {steps} steps and {} records in {:.2} s from the first request = {:.0} events/s ({} progress calls, {:.1} steps per call)",
            args.dossiers,
            self.drain_s,
            self.delivered_per_s,
            self.progress_calls,
            steps as f64 / self.progress_calls.max(1) as f64
        );
        println!(
            "daemon: {:.3} ms CPU per event; RSS idle {:.1} MiB, peak {:.1} MiB, idle again {:.1} MiB {:.0} s after the drain; ready {:.0} ms after start; store {:.1} KiB per 1,000 events",
            self.cpu_ms_per_event,
            self.idle_rss_mib,
            self.peak_rss_mib,
            self.rss_after_mib,
            args.settle.as_secs_f64(),
            self.ready_ms,
            self.store_kib_per_1000
        );
        println!(
            "exactly once: {} missing, {} duplicated, {} dossiers out of order",
            self.missing, self.duplicated, self.disordered
        );
    }
}

/// Every run as a row, then the median of each column (each column's own median, as the reference
/// figures of the issue are medians of three runs).
fn print_medians(runs: &[Figures]) {
    /// A column: its heading, its figure, and the digits printed after the point.
    type Column = (&'static str, fn(&Figures) -> f64, usize);
    let columns: [Column; 13] = [
        ("disk fsync/s", |f| f.fsync_rate, 0),
        ("one-hop req/s", |f| f.ceiling_per_s, 0),
        ("accepted/s", |f| f.accepted_per_s, 0),
        ("p50 ms", |f| f.p50_ms, 2),
        ("p99 ms", |f| f.p99_ms, 2),
        ("p999 ms", |f| f.p999_ms, 2),
        ("delivered/s", |f| f.delivered_per_s, 0),
        ("CPU ms/event", |f| f.cpu_ms_per_event, 3),
        ("RSS idle MiB", |f| f.idle_rss_mib, 1),
        ("peak RSS MiB", |f| f.peak_rss_mib, 1),
        ("idle again MiB", |f| f.rss_after_mib, 1),
        ("ready ms", |f| f.ready_ms, 0),
        ("KiB/1,000 events", |f| f.store_kib_per_1000, 1),
    ];
    println!(
        "\n== bench e2e: {} runs, each column's median last ==",
        runs.len()
    );
    let header: Vec<&str> = columns.iter().map(|c| c.0).collect();
    println!("| run | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    let row = |name: String, value: &dyn Fn(fn(&Figures) -> f64) -> f64| {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, get, digits)| format!("{:.*}", *digits, value(*get)))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    for (i, f) in runs.iter().enumerate() {
        row((i + 1).to_string(), &|get| get(f));
    }
    row("**median**".into(), &|get| {
        super::median(runs.iter().map(get).collect())
    });
}

/// The second scenario: a backlog accepted while the portal is down, a restart, then the drain.
async fn backlog(args: &E2eBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let dir = dir.join("backlog");
    std::fs::create_dir_all(&dir)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim = dvc_portal::simulator::Simulator::new(Default::default());
    let portal = dvc_upstream::sim::serve(listener, dvc_portal::simulator::router(sim.clone()))?;
    // Down: every request answers 503 until the fault plan is lifted.
    sim.faults.set(dvc_upstream::sim::FaultPlan {
        outages: vec![dvc_upstream::sim::Outage {
            start_ms: 0,
            end_ms: u64::MAX,
        }],
        ..Default::default()
    });
    let config = config(&dir, &portal.base_url(), args.lane_concurrency, &args.store)?;
    let (daemon, _) = Daemon::start(&config).await?;
    let events = 9;
    let dossiers = args.backlog.div_ceil(events + 1);
    let b = bar(dossiers as u64, "backlog: accepting", "dossiers");
    let filled = drive(
        &daemon.api,
        "L",
        dossiers,
        events,
        args.connections,
        202,
        Some(b.clone()),
    )
    .await?;
    b.finish();
    let (_, peak_filling) = rss_mib(daemon.pid());
    drop(daemon);
    let (daemon, ready_after) = Daemon::start(&config).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_holding, _) = rss_mib(daemon.pid());
    let store_bytes = crate::queue::kv::disk_usage(&dir.join("store"));
    let started = Instant::now();
    sim.faults.set(dvc_upstream::sim::FaultPlan::default());
    let steps = dossiers * events;
    let d = bar(steps as u64, "backlog: draining", "steps");
    let done =
        tokio::task::block_in_place(|| wait_delivered(&sim, steps, Duration::from_secs(3600), &d));
    d.finish();
    let Some(done) = done else {
        bail!("the backlog did not drain within an hour");
    };
    let (_, peak_draining) = rss_mib(daemon.pid());
    let (missing, duplicated, disordered) = exactly_once(&sim, "L", dossiers, events);
    refuse_violations(&sim)?;
    tokio::time::sleep(args.settle.saturating_sub(done.elapsed())).await;
    let (rss_after, _) = rss_mib(daemon.pid());
    println!(
        "\nbacklog: {} requests ({dossiers} dossiers × 1 record + {events} steps) accepted in {:.1} s while the portal was down; store {:.0} MiB",
        filled.accepted,
        filled.wall.as_secs_f64(),
        store_bytes as f64 / 1048576.0
    );
    println!(
        "restart: ready {:.0} ms after start with the backlog queued; RSS holding it {rss_holding:.1} MiB (peak while filling {peak_filling:.1} MiB)",
        ready_after.as_secs_f64() * 1000.0
    );
    println!(
        "drain: {:.1} s = {:.0} events/s; peak RSS while draining {peak_draining:.1} MiB, idle again {rss_after:.1} MiB {:.0} s after it; {missing} missing, {duplicated} duplicated, {disordered} out of order",
        (done - started).as_secs_f64(),
        filled.accepted as f64 / (done - started).as_secs_f64(),
        args.settle.as_secs_f64()
    );
    drop(daemon);
    portal.stop().await;
    if missing + duplicated + disordered > 0 {
        bail!("the backlog was not delivered exactly once and in order");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_under_test_has_a_valid_config_without_a_rate_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = config(dir.path(), "http://127.0.0.1:9", Some(4), "redb").expect("config");
        let settings = crate::settings::load(&path, Vec::new()).expect("the bench config is valid");
        // A limit would cap what is measured: the million-job backlog is sent faster than the default.
        assert_eq!(settings.api.rate_limit, 0);
        assert_eq!(settings.queue.lane_concurrency, 4);
    }

    #[test]
    fn without_a_lane_concurrency_the_daemon_runs_with_its_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = config(dir.path(), "http://127.0.0.1:9", None, "redb").expect("config");
        let settings = crate::settings::load(&path, Vec::new()).expect("the bench config is valid");
        // The documented default (docs/CONFIGURATION.md), as in production.
        assert_eq!(settings.queue.lane_concurrency, 16);
    }
}
