//! The three flows end to end: the real daemon against the simulators (in this process, so their
//! ledgers can be read directly), driven by the demo's traffic through the real API.
//!
//! The guarantees are asserted here from the simulators' own records, not from the connector's view:
//! every accepted record and step reached every portal target, each step once, in submission order,
//! never before its dossier; every accepted shipment became exactly one VNPost order.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use dvc_connector::demo::traffic::{Report, STEP_PREFIX};
use dvc_upstream::sim::{FaultPlan, Running};
use serde_json::{Value, json};

use super::helpers::{Proc, write_config};

pub(crate) const PORTAL_TOKEN: &str = "portal-token-for-flow-tests";
pub(crate) const ADMIN_TOKEN: &str = "admin-only-token-for-flow-tests";
/// A second portal caller, to show that one caller's Idempotency-Keys are not another's.
pub(crate) const OTHER_PORTAL_TOKEN: &str = "second-portal-token-for-flow-tests";
const CALLBACK_SECRET: &str = "callback-secret-for-flow-tests";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Default)]
struct Callbacks {
    /// (event type, body) of every callback whose signature verified.
    good: Vec<(String, Value)>,
    bad: usize,
}

async fn receive(
    State(cb): State<Arc<Mutex<Callbacks>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let sig = headers
        .get("x-connector-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut cb = cb.lock().expect("lock");
    if !dvc_connector::flows::callbacks::verify(CALLBACK_SECRET.as_bytes(), sig, &body) {
        cb.bad += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let kind = headers
        .get("x-connector-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    cb.good
        .push((kind, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    StatusCode::NO_CONTENT
}

/// How a [`World`] is set up.
pub(crate) struct Options {
    /// Fault rate of every simulator.
    pub(crate) rate: f64,
    /// VNPost's orders move one status every this long.
    pub(crate) postal_step: Duration,
    /// Officers in the daemon's configuration: (MaCanBo, gateway key, password).
    pub(crate) officers: Vec<(&'static str, &'static str, &'static str)>,
    /// The gateway's officer table (key, password); empty: AuthHash is not checked.
    pub(crate) gateway_officers: Vec<(&'static str, &'static str)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate: 0.0,
            postal_step: Duration::from_millis(150),
            officers: Vec::new(),
            gateway_officers: Vec::new(),
        }
    }
}

/// Simulators, a callback receiver, and a configuration pointing the daemon at them.
pub(crate) struct World {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) population: Arc<dvc_population::simulator::Simulator>,
    pub(crate) postal: Arc<dvc_postal::simulator::Simulator>,
    pub(crate) national: Arc<dvc_portal::simulator::Simulator>,
    pub(crate) provincial: Arc<dvc_portal::simulator::Simulator>,
    callbacks: Arc<Mutex<Callbacks>>,
    _running: Vec<Running>,
    pub(crate) config: std::path::PathBuf,
}

fn faults(seed: u64, rate: f64) -> FaultPlan {
    FaultPlan {
        http_500: rate,
        http_429: rate / 2.0,
        reset: rate / 2.0,
        retry_after_secs: 0,
        seed: Some(seed),
        ..Default::default()
    }
}

impl World {
    pub(crate) fn start(dir: &Path, rate: f64) -> World {
        Self::start_with(dir, rate, Duration::from_millis(150))
    }

    /// As `start`, with VNPost's orders moving one status every `postal_step`.
    pub(crate) fn start_with(dir: &Path, rate: f64, postal_step: Duration) -> World {
        Self::start_opts(
            dir,
            Options {
                rate,
                postal_step,
                ..Options::default()
            },
        )
    }

    pub(crate) fn start_opts(dir: &Path, opts: Options) -> World {
        let Options {
            rate,
            postal_step,
            officers,
            gateway_officers,
        } = opts;
        dvc_connector::tls::install_crypto_provider();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let callbacks = Arc::new(Mutex::new(Callbacks::default()));
        let (running, population, postal, national, provincial, cb_url) = rt.block_on(async {
            let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
            let mut pop =
                dvc_population::simulator::SimulatorConfig::with_fixture().expect("fixture");
            pop.faults = faults(1, rate);
            pop.officers = gateway_officers
                .iter()
                .map(|(k, p)| ((*k).to_owned(), (*p).to_owned()))
                .collect();
            let (pop_run, population) =
                dvc_population::simulator::start(bind().await.expect("bind"), pop).expect("start");
            let (postal_run, postal) = dvc_postal::simulator::start(
                bind().await.expect("bind"),
                dvc_postal::simulator::SimulatorConfig {
                    step_interval: postal_step,
                    faults: faults(2, rate),
                    ..Default::default()
                },
            )
            .expect("start");
            let portal = |seed| {
                dvc_portal::simulator::Simulator::new(dvc_portal::simulator::SimulatorConfig {
                    faults: faults(seed, rate),
                    ..Default::default()
                })
            };
            let (national, provincial) = (portal(3), portal(4));
            let router = axum::Router::new()
                .nest(
                    "/provincial",
                    dvc_portal::simulator::router(provincial.clone()),
                )
                .merge(dvc_portal::simulator::router(national.clone()));
            let portal_run =
                dvc_upstream::sim::serve(bind().await.expect("bind"), router).expect("serve");
            let cb_listener = bind().await.expect("bind");
            let cb_url = format!("http://{}/cb", cb_listener.local_addr().expect("addr"));
            let cb_run = dvc_upstream::sim::serve(
                cb_listener,
                axum::Router::new()
                    .route("/cb", axum::routing::post(receive))
                    .with_state(callbacks.clone()),
            )
            .expect("serve");
            (
                vec![pop_run, postal_run, portal_run, cb_run],
                population,
                postal,
                national,
                provincial,
                cb_url,
            )
        });
        let base = |i: usize| running[i].base_url();
        let extra = format!(
            r#"
[queue.circuit]
failures = 0
[[api.tokens]]
name = "portal"
sha256 = "{portal}"
scopes = ["portal"]
[[api.tokens]]
name = "ops"
sha256 = "{admin}"
scopes = ["admin"]
[[api.tokens]]
name = "portal-2"
sha256 = "{other}"
scopes = ["portal"]
[upstreams]
allow_insecure_http = true
[upstreams.population]
service_url = "{pop}/dancu/soap"
token_url = "{pop}/token"
client_id = "dvc-dev"
client_secret = "dev-secret"
timeout = "3s"
connect_timeout = "1s"
[upstreams.postal]
base_url = "{postal}"
customer_code = "DVCDEV01"
customer_key = "dev-customer"
secret_key = "dev-secret"
timeout = "3s"
connect_timeout = "1s"
[upstreams.portal.national]
base_url = "{portal_url}"
username = "dvc-dev"
password = "dev-password"
agency_code = "000.00.00.H56"
timeout = "3s"
connect_timeout = "1s"
[upstreams.portal.provincial]
base_url = "{portal_url}/provincial"
username = "dvc-dev"
password = "dev-password"
agency_code = "000.00.00.H56"
timeout = "3s"
connect_timeout = "1s"
[callbacks]
url = "{cb_url}"
secret = "{CALLBACK_SECRET}"
[flows.identity]
default_mode = "full"
[audit]
key_file = "audit.key"
[flows.postal]
tracking_interval = "100ms"
[flows.postal.sender]
name = "Bộ phận Một cửa"
phone = "02363888999"
address = "24 Trần Phú"
province_code = "48"
{officers}
"#,
            officers = officers
                .iter()
                .map(|(code, key, pass)| format!(
                    "[upstreams.population.officers.{code}]\nkey = \"{key}\"\npassword = \"{pass}\"\n"
                ))
                .collect::<String>(),
            portal = sha256_hex(PORTAL_TOKEN),
            admin = sha256_hex(ADMIN_TOKEN),
            other = sha256_hex(OTHER_PORTAL_TOKEN),
            pop = base(0),
            postal = base(1),
            portal_url = base(2),
        );
        std::fs::write(dir.join("audit.key"), "a5".repeat(32)).expect("audit key");
        let config = write_config(dir, "redb", &dir.join("store"), &extra);
        // Encrypted at rest, as in production, under a key made beside the store.
        let text = std::fs::read_to_string(&config)
            .expect("config")
            .replace("encryption = \"off\"", "encryption = \"generated\"");
        std::fs::write(&config, text).expect("config");
        World {
            rt,
            population,
            postal,
            national,
            provincial,
            callbacks,
            _running: running,
            config,
        }
    }

    pub(crate) fn daemon(&self, env: &[(&str, &str)]) -> (Proc, String) {
        let mut daemon = Proc::spawn_with_env(
            &["run", "--config", self.config.to_str().expect("path")],
            env,
        );
        let api = daemon.listen_addr("api_addr");
        (daemon, api)
    }

    /// Every rule of the upstream contract that a request broke, as `simulator: field kind`.
    pub(crate) fn violations(&self) -> Vec<String> {
        let name = |sim: &str, v: &dvc_upstream::judge::Violation| {
            format!("{sim}: {} {} ({})", v.field, v.kind.as_str(), v.detail)
        };
        let mut out: Vec<String> = Vec::new();
        out.extend(
            self.population
                .violations()
                .iter()
                .map(|v| name("population", v)),
        );
        out.extend(self.postal.violations().iter().map(|v| name("postal", v)));
        out.extend(
            self.national
                .violations()
                .iter()
                .map(|v| name("national", v)),
        );
        out.extend(
            self.provincial
                .violations()
                .iter()
                .map(|v| name("provincial", v)),
        );
        out
    }

    /// Waits until `done` holds for the portal and postal ledgers (at most `timeout`).
    pub(crate) fn wait_until(&self, timeout: Duration, done: impl Fn(&World) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        done(self)
    }
}

/// Every test that drives the daemon against the simulators ends by requiring that no request broke the
/// upstream contract: the simulators judge each one by the contract's rules, as a strict upstream would.
impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "requests broke the upstream contract: {violations:#?}"
        );
    }
}

type Sim = dvc_portal::simulator::Simulator;

/// Step contents per dossier, in arrival order.
fn arrivals(sim: &Sim) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for s in sim.steps() {
        if s.step.noi_dung_xu_ly.starts_with(STEP_PREFIX) {
            out.entry(s.step.ma_ho_so)
                .or_default()
                .push(s.step.noi_dung_xu_ly);
        }
    }
    out
}

fn all_steps_arrived(sim: &Sim, report: &Report) -> bool {
    let got = arrivals(sim);
    report.dossiers.iter().all(|d| {
        let have = got.get(&d.code).cloned().unwrap_or_default();
        d.steps.iter().all(|s| have.contains(s))
            && (d.records == 0 || sim.dossier(&d.code).is_some())
    })
}

pub(crate) fn created_orders(postal: &dvc_postal::simulator::Simulator) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in postal.ledger.snapshot() {
        if e.operation == "create" && e.outcome == "created" {
            *out.entry(e.order_number).or_default() += 1;
        }
    }
    out
}

/// How many times an arrival sequence goes back to an earlier step.
fn count_rewinds(have: &[String], steps: &[String]) -> usize {
    let mut next = 0usize;
    let mut rewinds = 0;
    for s in have {
        let at = steps.iter().position(|x| x == s).unwrap_or(usize::MAX);
        if at < next {
            rewinds += 1;
        }
        next = at.saturating_add(1);
    }
    rewinds
}

/// The guarantees, asserted from the simulators' records. `kills`: how many times the daemon was
/// killed. Per dossier and target, the steps arrive in submission order; a step arrives again only as
/// the daemon's resending after a kill: the target is taken back to that step and given every later
/// one again in order (a "rewind"), at most once per kill per dossier, and ends with the last step.
/// An old step resent on its own after newer ones — what a retry bug would do — fails.
fn assert_guarantees(w: &World, report: &Report, kills: usize) -> usize {
    let mut all_repeats = 0;
    for (name, sim) in [("national", &w.national), ("provincial", &w.provincial)] {
        let got = arrivals(sim);
        let mut repeats = 0;
        for d in &report.dossiers {
            assert!(
                d.records == 0 || sim.dossier(&d.code).is_some(),
                "{name}: dossier {} never arrived",
                d.code
            );
            let have = got.get(&d.code).cloned().unwrap_or_default();
            let mut next = 0usize;
            for s in &have {
                let at = d.steps.iter().position(|x| x == s).unwrap_or_else(|| {
                    panic!("{name}: {} received a step never submitted: {s}", d.code)
                });
                assert!(
                    at <= next,
                    "{name}: the steps of {} arrived as {have:?}, submitted as {:?}",
                    d.code,
                    d.steps
                );
                if at < next {
                    repeats += 1;
                }
                next = at + 1;
            }
            assert_eq!(
                next,
                d.steps.len(),
                "{name}: the steps of {} arrived as {have:?}: after a resent step, every later one follows again",
                d.code
            );
            let resent_runs = count_rewinds(&have, &d.steps);
            assert!(
                resent_runs <= kills,
                "{name}: {} was taken back {resent_runs} times for {kills} kills: {have:?}",
                d.code
            );
        }
        if kills == 0 {
            assert_eq!(repeats, 0, "{name}: steps arrived twice without a crash");
        }
        all_repeats += repeats;
        let refused: Vec<_> = sim
            .ledger
            .snapshot()
            .into_iter()
            .filter(|e| e.service == "CapNhatTienDoHoSoMC" && e.outcome == "error_code:4")
            .collect();
        assert!(
            refused.is_empty(),
            "{name}: steps sent before their dossier: {refused:?}"
        );
    }
    let violations = w.violations();
    assert!(
        violations.is_empty(),
        "requests broke the upstream contract: {violations:#?}"
    );
    let created = created_orders(&w.postal);
    let expected: Vec<&String> = report.dossiers.iter().flat_map(|d| &d.orders).collect();
    for order in &expected {
        assert_eq!(
            created.get(*order),
            Some(&1),
            "order {order} must be created exactly once"
        );
    }
    assert_eq!(
        created.len(),
        expected.len(),
        "VNPost has orders nobody accepted"
    );
    all_repeats
}

fn drive(api: &str, dir: &Path, dossiers: usize, run: &str) -> Proc {
    let report = dir.join(format!("{run}.json"));
    Proc::spawn_with_env(
        &[
            "demo",
            "--against",
            &format!("http://{api}"),
            "--dossiers",
            &dossiers.to_string(),
            "--parallel",
            "4",
            "--run",
            run,
            "--report",
            report.to_str().expect("path"),
        ],
        &[("DVC_CONNECTOR_TOKEN", PORTAL_TOKEN)],
    )
}

fn read_report(dir: &Path, run: &str) -> Report {
    let text = std::fs::read(dir.join(format!("{run}.json"))).expect("report written");
    serde_json::from_slice(&text).expect("report JSON")
}

#[test]
fn every_accepted_request_reaches_its_upstream_once_and_in_order_despite_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.06);
    let (mut daemon, api) = w.daemon(&[]);
    let ops = daemon.listen_addr("ops_addr");
    let mut traffic = drive(&api, dir.path(), 30, "FLOW");
    let status = traffic
        .wait_exit(Duration::from_secs(180))
        .expect("traffic finishes");
    assert!(status.success(), "traffic: {:?}", traffic.err_lines);
    let report = read_report(dir.path(), "FLOW");
    assert_eq!(report.dossiers.len(), 30);
    // The scripted faults of the traffic: impossible IDs answered 422, repeated result requests 200.
    assert!(
        report.answers.get(&422).copied().unwrap_or(0) >= 2,
        "{:?}",
        report.answers
    );
    assert!(
        report.answers.get(&200).copied().unwrap_or(0) >= 10,
        "{:?}",
        report.answers
    );
    let injected = w
        .national
        .ledger
        .snapshot()
        .iter()
        .filter(|e| e.outcome.starts_with("http_") || e.outcome == "reset")
        .count();
    assert!(injected > 0, "the portal simulator injected no faults");

    let arrived = w.wait_until(Duration::from_secs(60), |w| {
        all_steps_arrived(&w.national, &report)
            && all_steps_arrived(&w.provincial, &report)
            && created_orders(&w.postal).len()
                == report
                    .dossiers
                    .iter()
                    .map(|d| d.orders.len())
                    .sum::<usize>()
    });
    assert!(arrived, "not everything accepted arrived within a minute");
    assert_eq!(assert_guarantees(&w, &report, 0), 0);

    // Every accepted verification was asked of the population DB, under the request id it reports,
    // and its verdict agrees with what the simulator answered.
    let asked: HashMap<String, String> = w
        .population
        .ledger
        .snapshot()
        .into_iter()
        .map(|e| (e.request_id, e.outcome))
        .collect();
    let a = Api {
        rt: &w.rt,
        base: format!("http://{api}"),
        client: reqwest::Client::new(),
    };
    let mut verified = 0;
    for d in &report.dossiers {
        let (Some(id), Some(status)) = (&d.verification_id, &d.verification) else {
            continue;
        };
        assert_ne!(status, "rejected_422");
        let (code, _, v) = a.send(
            reqwest::Method::GET,
            &format!("/v1/identity/verifications/{id}"),
            Some(PORTAL_TOKEN),
            None,
            None,
        );
        assert_eq!(code, 200, "{v}");
        let request_id = v["upstream_request_id"].as_str().unwrap_or_default();
        let outcome = asked.get(request_id).map(String::as_str);
        match v["status"].as_str() {
            Some("verified" | "mismatch") => assert_eq!(outcome, Some("found"), "{v}"),
            Some("not_found") => assert_eq!(outcome, Some("not_found"), "{v}"),
            other => panic!("verification {id} ended {other:?}"),
        }
        verified += 1;
    }
    assert!(verified >= 20, "only {verified} verifications checked");

    // Each lookup is in the audit log: the chain verifies, the key holder finds a citizen's lookups,
    // and no citizen ID is in the file in clear.
    let log = dir.path().join("store").join("audit.log");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(super::helpers::binary())
            .args(args)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = run(&["audit", "verify", "--file", log.to_str().expect("path")]);
    assert!(ok && out.contains("chain intact"), "{out}");
    let entries: usize = out
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("entry count");
    assert!(
        entries >= verified,
        "{entries} audit entries for {verified} verifications"
    );
    let people =
        dvc_population::simulator::parse_citizens(dvc_population::simulator::DEFAULT_CITIZENS)
            .expect("fixture");
    let key = dir.path().join("audit.key");
    let (ok, out) = run(&[
        "audit",
        "search",
        "--file",
        log.to_str().expect("path"),
        "--key-file",
        key.to_str().expect("path"),
        "--citizen-id",
        &people[1].citizen_id,
    ]);
    assert!(
        ok && out.contains("officer CB-DEV-01") && out.contains("by portal"),
        "{out}"
    );
    let text = std::fs::read_to_string(&log).expect("audit log");
    for p in people.iter().take(30) {
        assert!(
            !text.contains(&p.citizen_id),
            "a citizen ID in clear in the audit log"
        );
    }

    // Delivered results got their "result returned" step; shipment changes were called back, signed.
    // The step is planned in the commit that records the delivery and reaches the portal afterwards,
    // through the same faults as every step, so it is waited for like the callback.
    let delivered = w.wait_until(Duration::from_secs(30), |w| {
        let cb = w.callbacks.lock().expect("lock");
        cb.good
            .iter()
            .any(|(t, b)| t == "shipment.status_changed" && b["data"]["status"] == "delivered")
    });
    assert!(delivered, "no delivery was called back");
    let returned = w.wait_until(Duration::from_secs(30), |w| {
        w.national.steps().iter().any(|s| s.step.trang_thai == "10")
    });
    assert!(returned, "a delivered result adds a result-returned step");
    let cb = w.callbacks.lock().expect("lock");
    assert_eq!(cb.bad, 0, "every callback carries a valid signature");
    assert!(cb.good.iter().any(|(t, _)| t == "dossier.sync.completed"));
    drop(cb);

    // The flows' metrics moved (their format is promtool's to judge: `metrics::*`, so that this
    // guarantee test needs no tool beyond the toolchain).
    let metrics = w.rt.block_on(async {
        reqwest::get(format!("http://{ops}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    });
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for series in [
        "dvc_connector_verifications_total{mode=\"full\",status=\"verified\"}",
        "dvc_connector_verifications_total{mode=\"full\",status=\"rejected\"}",
        "dvc_connector_tracking_events_total{outcome=\"applied\"}",
        "dvc_connector_shipment_transitions_total{kind=\"result_delivery\",status=\"delivered\"}",
    ] {
        assert!(value(series) >= 1.0, "{series} did not move");
    }

    // The dashboard shows a dossier's sync state per target.
    let code = &report.dossiers[0].code;
    let page = w.rt.block_on(async {
        reqwest::get(format!("http://{ops}/?dossier={code}"))
            .await
            .expect("dashboard")
            .text()
            .await
            .expect("html")
    });
    let table = page
        .split("id=\"dossier-sync\"")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .expect("a sync table");
    for target in ["national", "provincial"] {
        assert!(
            table.contains(&format!("<td>{target}</td><td>")),
            "{target}: {table}"
        );
    }
}

/// A TCP front on a port of its own that forwards each connection to the address in `backend` (a
/// connection the backend refuses is closed, as a portal meets a daemon that is down).
async fn forwarder(backend: Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind front");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let to = backend.lock().map(|b| b.clone()).unwrap_or_default();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

#[test]
fn a_kill_9_in_the_middle_of_the_traffic_loses_nothing_that_was_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.03);
    // The traffic talks to a front the test holds (port 0, never released) that forwards to whichever
    // daemon is running: the restarted daemon binds a new port 0 of its own, and no other test can take
    // the address the traffic uses.
    let env: [(&str, &str); 0] = [];
    let (mut daemon, first) = w.daemon(&env);
    let backend = Arc::new(Mutex::new(first));
    let front = w.rt.block_on(forwarder(backend.clone()));
    let mut traffic = drive(&front, dir.path(), 40, "KILL");
    let mut kills = 0;
    for threshold in [25, 90] {
        let reached = w.wait_until(Duration::from_secs(60), |w| {
            w.national.steps().len() >= threshold
        });
        assert!(reached, "traffic did not get going");
        daemon.sigkill();
        kills += 1;
        let (next, api) = w.daemon(&env);
        daemon = next;
        *backend.lock().expect("backend") = api;
    }
    let status = traffic
        .wait_exit(Duration::from_secs(240))
        .expect("traffic finishes");
    assert!(status.success(), "traffic: {:?}", traffic.err_lines);
    assert!(
        report_retries(&read_report(dir.path(), "KILL")) > 0,
        "the traffic should have met the daemon down at least once"
    );
    let report = read_report(dir.path(), "KILL");
    let arrived = w.wait_until(Duration::from_secs(90), |w| {
        all_steps_arrived(&w.national, &report) && all_steps_arrived(&w.provincial, &report)
    });
    assert!(arrived, "acknowledged steps are missing after the restarts");
    // A step can arrive twice only if the process died after the portal applied it and before the
    // store recorded it: at most the jobs in flight per lane at each kill.
    let repeats = assert_guarantees(&w, &report, kills);
    let total: usize = report.dossiers.iter().map(|d| d.steps.len()).sum();
    eprintln!(
        "kill -9 x{kills}: {} dossiers, {total} steps accepted, {} requests retried by the portal, {repeats} steps repeated at a portal",
        report.dossiers.len(),
        report.retried_requests,
    );
    drop(daemon);
}

fn report_retries(r: &Report) -> u64 {
    r.retried_requests
}

pub(crate) struct Api<'a> {
    pub(crate) rt: &'a tokio::runtime::Runtime,
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
}

impl Api<'_> {
    pub(crate) fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        self.rt.block_on(async {
            let mut req = self.client.request(method, format!("{}{path}", self.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            (status, headers, r.json().await.unwrap_or(Value::Null))
        })
    }
}

fn verification(id: &str, name: &str, dob: &str, gender: &str) -> Value {
    json!({
        "citizen_id": id, "full_name": name, "date_of_birth": dob, "gender": gender,
        "procedure_code": "1.001612", "officer_id": "CB-01",
    })
}

#[test]
fn the_api_checks_ids_before_any_upstream_call_scopes_tokens_and_replays_idempotent_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (_daemon, api) = w.daemon(&[]);
    let a = Api {
        rt: &w.rt,
        base: format!("http://{api}"),
        client: reqwest::Client::new(),
    };
    let post = reqwest::Method::POST;

    // 422 for each structural fault, with its code, and the population DB never asked.
    for (id, dob, gender, code) in [
        ("08317331699", "1973-09-27", "female", "invalid_length"),
        ("08317331699x", "1973-09-27", "female", "not_digits"),
        ("003173316997", "1973-09-27", "female", "unknown_place_code"),
        (
            "083183316997",
            "1973-09-27",
            "female",
            "birth_year_mismatch",
        ),
        ("083073316997", "1973-09-27", "female", "sex_mismatch"),
    ] {
        let (status, _, body) = a.send(
            post.clone(),
            "/v1/identity/verifications",
            Some(PORTAL_TOKEN),
            None,
            Some(verification(id, "Võ Ngọc Trang", dob, gender)),
        );
        assert_eq!(status, 422, "{id}: {body}");
        assert_eq!(body["code"], "invalid_citizen_id");
        assert_eq!(body["errors"][0]["field"], "citizen_id");
        assert_eq!(body["errors"][0]["code"], code, "{id}");
        assert!(
            !body.to_string().contains(id),
            "the ID is not echoed: {body}"
        );
    }
    assert!(
        w.population.ledger.snapshot().is_empty(),
        "a structural fault must not reach the population DB"
    );

    // Every answer carries a request id: the caller's, or a fresh one.
    let (_, headers, _) = a.send(post.clone(), "/v1/shipments", None, None, Some(json!({})));
    assert_eq!(
        headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::len),
        Some(26),
        "a fresh ULID"
    );
    let echoed = w.rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://{api}/v1/jobs"))
            .header("x-request-id", "portal-req-42")
            .send()
            .await
            .expect("request")
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    assert_eq!(echoed.as_deref(), Some("portal-req-42"));

    // 401 without a token, 403 with the wrong scope (both ways).
    let (status, _, body) = a.send(post.clone(), "/v1/shipments", None, None, Some(json!({})));
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, _, body) = a.send(
        post.clone(),
        "/v1/shipments",
        Some(ADMIN_TOKEN),
        None,
        Some(json!({})),
    );
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _, _) = a.send(
        reqwest::Method::GET,
        "/v1/jobs",
        Some(PORTAL_TOKEN),
        None,
        None,
    );
    assert_eq!(status, 403);

    // A verdict within the wait: 200, no personal data in it.
    let (status, _, body) = a.send(
        post.clone(),
        "/v1/identity/verifications?wait=10s",
        Some(PORTAL_TOKEN),
        None,
        Some(verification(
            "083173316997",
            "Võ Ngọc Trang",
            "1973-09-27",
            "female",
        )),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "verified");
    assert_eq!(body["checks"]["full_name"], "match");
    let text = body.to_string();
    for private in ["083173316997", "Trang", "1973"] {
        assert!(!text.contains(private), "{private} leaked: {text}");
    }

    // A slow population DB: 202 pending, then the verdict by GET and by signed callback.
    w.rt.block_on(async {
        w.population.faults.set(FaultPlan {
            latency_ms: 800,
            ..Default::default()
        })
    });
    let (status, _, body) = a.send(
        post.clone(),
        "/v1/identity/verifications?wait=100ms",
        Some(PORTAL_TOKEN),
        None,
        Some(verification(
            "075160213922",
            "Hoàng Thị Thu Quỳnh",
            "1960-01-19",
            "female",
        )),
    );
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("pending")),
        "{body}"
    );
    let id = body["id"].as_str().expect("id").to_owned();
    let called_back =
        w.wait_until(Duration::from_secs(20), |w| {
            w.callbacks.lock().expect("lock").good.iter().any(|(t, b)| {
                t == "identity.verification.completed" && b["data"]["id"] == id.as_str()
            })
        });
    assert!(called_back, "the pending verdict was not called back");
    let (status, _, body) = a.send(
        reqwest::Method::GET,
        &format!("/v1/identity/verifications/{id}"),
        Some(PORTAL_TOKEN),
        None,
        None,
    );
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("verified")),
        "{body}"
    );

    // Idempotency-Key: the same request answers the original; another request with the key is 409.
    let shipment = json!({
        "dossier_code": "IDEM-0001", "kind": "dossier_pickup", "description": "Nhận hồ sơ",
        "recipient": {"name": "Võ Ngọc Trang", "phone": "0905123456", "address": "1 Lê Lợi",
                      "province_code": "48", "ward_code": "20197"},
    });
    let first = a.send(
        post.clone(),
        "/v1/shipments",
        Some(PORTAL_TOKEN),
        Some("k-1"),
        Some(shipment.clone()),
    );
    assert_eq!(first.0, 202, "{}", first.2);
    assert_eq!(first.2["order_number"], "IDEM-0001-TG1");
    let again = a.send(
        post.clone(),
        "/v1/shipments",
        Some(PORTAL_TOKEN),
        Some("k-1"),
        Some(shipment.clone()),
    );
    assert_eq!((again.0, &again.2), (first.0, &first.2));
    assert_eq!(
        again
            .1
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let mut other = shipment.clone();
    other["description"] = json!("khác");
    let reused = a.send(
        post.clone(),
        "/v1/shipments",
        Some(PORTAL_TOKEN),
        Some("k-1"),
        Some(other),
    );
    assert_eq!(
        (reused.0, reused.2["code"].as_str()),
        (409, Some("idempotency_key_reused"))
    );
    // Without a key, the natural key: the active pickup is answered, not created again.
    let natural = a.send(
        post.clone(),
        "/v1/shipments",
        Some(PORTAL_TOKEN),
        None,
        Some(shipment),
    );
    assert_eq!(natural.0, 200);
    assert_eq!(natural.2["id"], first.2["id"]);
    let one_order = w.wait_until(Duration::from_secs(10), |w| {
        created_orders(&w.postal).get("IDEM-0001-TG1") == Some(&1)
    });
    assert!(one_order);
    assert_eq!(
        created_orders(&w.postal).len(),
        1,
        "one order however often asked"
    );

    // A dossier record replayed with its key answers the same; a bad status names the field.
    let record = json!({"procedure_code": "1.001612", "status": "new"});
    let put = reqwest::Method::PUT;
    let r1 = a.send(
        put.clone(),
        "/v1/dossiers/IDEM-0002",
        Some(PORTAL_TOKEN),
        Some("d-1"),
        Some(record.clone()),
    );
    let r2 = a.send(
        put.clone(),
        "/v1/dossiers/IDEM-0002",
        Some(PORTAL_TOKEN),
        Some("d-1"),
        Some(record),
    );
    assert_eq!((r1.0, &r1.2), (202, &r2.2));
    let bad = a.send(
        put,
        "/v1/dossiers/IDEM-0002",
        Some(PORTAL_TOKEN),
        None,
        Some(json!({"procedure_code": "1.001612", "status": "teleported"})),
    );
    assert_eq!(
        (bad.0, bad.2["errors"][0]["field"].as_str()),
        (422, Some("status"))
    );
    let unknown = a.send(
        post,
        "/v1/dossiers/IDEM-0002/events",
        Some(PORTAL_TOKEN),
        None,
        Some(
            json!({"status": "new", "occurred_at": "2026-11-27T08:00:00+07:00", "handler": "A",
                    "content": "x", "colour": "red"}),
        ),
    );
    assert_eq!(unknown.0, 400);
    assert!(unknown.2.to_string().contains("colour"), "{}", unknown.2);
}

#[test]
fn personal_data_never_appears_in_logs_metrics_or_error_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.05);
    // Everything at debug, the HTTP stack included.
    let mut daemon = Proc::spawn_with_env(
        &["run", "--config", w.config.to_str().expect("path")],
        &[("DVC_CONNECTOR__LOG__LEVEL", "debug")],
    );
    let api = daemon.listen_addr("api_addr");
    let ops = daemon.listen_addr("ops_addr");
    let mut traffic = drive(&api, dir.path(), 15, "PII");
    assert!(
        traffic
            .wait_exit(Duration::from_secs(180))
            .expect("traffic finishes")
            .success()
    );
    let report = read_report(dir.path(), "PII");
    assert!(w.wait_until(Duration::from_secs(60), |w| all_steps_arrived(
        &w.national,
        &report
    )));

    // What the traffic sent: the fixture's people (IDs, names) and generated phones and streets.
    let people: Vec<dvc_population::simulator::SimCitizen> =
        dvc_population::simulator::parse_citizens(dvc_population::simulator::DEFAULT_CITIZENS)
            .expect("fixture");
    let mut secrets: Vec<String> = Vec::new();
    for (i, p) in people.iter().take(15).enumerate() {
        secrets.push(p.citizen_id.clone());
        secrets.push(p.full_name());
        secrets.push(format!("09{:08}", i * 7919 % 100_000_000));
    }
    secrets.push("Lê Lợi, Hải Châu".into());

    // Bad requests that carry personal data in the very fields at fault.
    let a = Api {
        rt: &w.rt,
        base: format!("http://{api}"),
        client: reqwest::Client::new(),
    };
    let p = &people[0];
    let mut bodies = Vec::new();
    for body in [
        json!({"citizen_id": p.citizen_id, "full_name": p.full_name(), "date_of_birth": "27/09/1973",
               "procedure_code": "1.1", "officer_id": "CB"}),
        json!({"citizen_id": p.citizen_id, "full_name": p.full_name(), "date_of_birth": p.date_of_birth,
               "gender": p.full_name(), "procedure_code": "1.1", "officer_id": "CB"}),
        json!({"citizen_id": 83173316997u64, "full_name": p.full_name(), "date_of_birth": p.date_of_birth,
               "procedure_code": "1.1", "officer_id": "CB"}),
        json!({"citizen_id": p.citizen_id, "full_name": p.full_name(), "date_of_birth": p.date_of_birth,
               "procedure_code": "1.1", "officer_id": "CB", "phone": "0905123456"}),
    ] {
        let (status, _, answer) = a.send(
            reqwest::Method::POST,
            "/v1/identity/verifications",
            Some(PORTAL_TOKEN),
            None,
            Some(body),
        );
        assert!(matches!(status, 400 | 422), "{status}: {answer}");
        bodies.push(answer.to_string());
    }
    let (status, _, answer) = a.send(
        reqwest::Method::POST,
        "/v1/shipments",
        Some(PORTAL_TOKEN),
        None,
        Some(json!({"dossier_code": "PII-X", "kind": "result_delivery",
                    "recipient": {"name": p.full_name(), "phone": "not a phone 0905123456",
                                  "address": "12 Lê Lợi, Hải Châu", "province_code": "48"}})),
    );
    assert_eq!(status, 422, "{answer}");
    bodies.push(answer.to_string());
    secrets.push("0905123456".into());
    secrets.push("83173316997".into());

    let metrics = w.rt.block_on(async {
        reqwest::get(format!("http://{ops}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    });
    assert!(metrics.contains("dvc_"), "metrics answered");
    daemon.sigterm();
    daemon.wait_exit(Duration::from_secs(20)).expect("exits");
    let logs = daemon.err_lines.join("\n") + &daemon.out_lines.join("\n");
    assert!(logs.lines().count() > 200, "debug logging was on");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "{secret} in the logs");
        assert!(
            !contains_standalone(&metrics, secret),
            "{secret} in the metrics"
        );
        for body in &bodies {
            assert!(
                !body.contains(secret.as_str()),
                "{secret} in an error body: {body}"
            );
        }
    }
}

/// Whether `needle` occurs in `text` other than inside a longer number: metric values are numbers, and
/// a float such as `0.09000000000000001` holds the digits of the demo's first phone, `0900000000`,
/// without holding the phone.
fn contains_standalone(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn a_number_inside_a_longer_number_is_not_the_number() {
    assert!(!contains_standalone(
        "x_sum 0.09000000000000001\n",
        "0900000000"
    ));
    assert!(!contains_standalone("x_bytes 10900000000\n", "0900000000"));
    assert!(contains_standalone(
        "x{phone=\"0900000000\"} 1\n",
        "0900000000"
    ));
    assert!(contains_standalone(
        "x{name=\"Trần Văn An\"} 1",
        "Trần Văn An"
    ));
}

/// The end-to-end benchmark at a small size, as a smoke run: it must finish and find every accepted
/// record and step at the portal exactly once and in order (the speed is not checked here).
#[test]
fn the_end_to_end_benchmark_delivers_everything_exactly_once_at_a_small_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bench = Proc::spawn(&[
        "bench",
        "e2e",
        "--dossiers",
        "40",
        "--events",
        "4",
        "--connections",
        "8",
        "--backlog",
        "500",
        "--settle",
        "1s",
        "--runs",
        "2",
        "--dir",
        dir.path().to_str().expect("path"),
    ]);
    let status = bench
        .wait_exit(Duration::from_secs(240))
        .expect("the benchmark finishes");
    let out = bench.out_lines.join("\n");
    assert!(status.success(), "{out}\n{:?}", bench.err_lines);
    assert_eq!(
        out.matches("exactly once: 0 missing, 0 duplicated, 0 dossiers out of order")
            .count(),
        2,
        "{out}"
    );
    assert_eq!(out.matches("\naccepted: ").count(), 2, "{out}");
    // Both runs as rows, then each column's median of them (two runs: their mean, to the printed digits).
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| {
            ["| 1 |", "| 2 |", "| **median** |"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| {
            l.split('|')
                .skip(2)
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0].len(), 13, "{out}");
    for (column, median) in rows[2].iter().enumerate() {
        let (a, b) = (rows[0][column], rows[1][column]);
        let figure = |cell: &str| -> f64 { cell.parse().expect("a figure") };
        let digits = median.split('.').nth(1).map_or(0, str::len);
        let unit = 10f64.powi(-i32::try_from(digits).expect("digits"));
        assert!(
            (figure(median) - f64::midpoint(figure(a), figure(b))).abs() <= unit,
            "column {column}: {a} and {b} give {median}\n{out}"
        );
    }
    assert!(
        out.lines().any(|l| l.starts_with("daemon: ")
            && l.contains(" MiB 1 s after the drain; ")
            && !l.contains("idle again 0.0 MiB")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("drain: ")
            && l.contains(" MiB 1 s after it; ")
            && l.ends_with("0 missing, 0 duplicated, 0 out of order")),
        "{out}"
    );
}

#[test]
fn a_failing_target_stalls_only_its_own_lane_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    // The national portal is down; the provincial one refuses every call with a business error.
    w.rt.block_on(async {
        w.national.faults.set(FaultPlan {
            outages: vec![dvc_upstream::sim::Outage {
                start_ms: 0,
                end_ms: u64::MAX,
            }],
            ..Default::default()
        });
    });
    let (_daemon, api) = w.daemon(&[("DVC_CONNECTOR__QUEUE__RETRY__MAX_ATTEMPTS", "3")]);
    let a = Api {
        rt: &w.rt,
        base: format!("http://{api}"),
        client: reqwest::Client::new(),
    };
    let put = |code: &str| {
        a.send(
            reqwest::Method::PUT,
            &format!("/v1/dossiers/{code}"),
            Some(PORTAL_TOKEN),
            None,
            Some(json!({"procedure_code": "1.001612", "status": "new"})),
        )
    };
    // While national is down, provincial gets everything.
    for i in 0..5 {
        assert_eq!(put(&format!("STALL-{i}")).0, 202);
    }
    assert!(w.wait_until(Duration::from_secs(20), |w| {
        (0..5).all(|i| w.provincial.dossier(&format!("STALL-{i}")).is_some())
    }));
    assert!((0..5).all(|i| w.national.dossier(&format!("STALL-{i}")).is_none()));
    let (_, _, view) = a.send(
        reqwest::Method::GET,
        "/v1/dossiers/STALL-0",
        Some(PORTAL_TOKEN),
        None,
        None,
    );
    let target = |name: &str| {
        view["targets"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["target"] == name).cloned())
            .expect("target in the view")
    };
    assert_eq!(target("provincial")["pending"], 0, "{view}");
    assert_eq!(target("national")["pending"], 1, "{view}");

    // A permanent refusal dead-letters the record, says so on the dossier and calls back.
    w.rt.block_on(async {
        w.national.faults.set(FaultPlan::default());
        w.provincial.faults.set(FaultPlan {
            protocol_error: 1.0,
            ..Default::default()
        });
    });
    assert_eq!(put("STALL-DEAD").0, 202);
    let failed = w.wait_until(Duration::from_secs(30), |w| {
        w.callbacks.lock().expect("lock").good.iter().any(|(t, b)| {
            t == "dossier.sync.failed"
                && b["data"]["dossier_code"] == "STALL-DEAD"
                && b["data"]["target"] == "provincial"
        })
    });
    assert!(failed, "no dossier.sync.failed callback");
    assert!(w.wait_until(Duration::from_secs(20), |w| {
        w.national.dossier("STALL-DEAD").is_some()
    }));
    let (_, _, view) = a.send(
        reqwest::Method::GET,
        "/v1/dossiers/STALL-DEAD",
        Some(PORTAL_TOKEN),
        None,
        None,
    );
    let provincial = view["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["target"] == "provincial").cloned())
        .expect("provincial");
    assert_eq!(
        provincial["pending"], 1,
        "the dead record holds its dossier: {view}"
    );
    assert!(
        provincial["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("portal_")),
        "{view}"
    );
}

#[test]
fn a_cancelled_pickup_is_cancelled_at_vnpost_and_the_next_pickup_gets_the_next_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Orders stay put at VNPost, so the cancel cannot race a delivery.
    let w = World::start_with(dir.path(), 0.0, Duration::from_secs(600));
    let (_daemon, api) = w.daemon(&[]);
    let a = Api {
        rt: &w.rt,
        base: format!("http://{api}"),
        client: reqwest::Client::new(),
    };
    let pickup = json!({
        "dossier_code": "PICK-0001", "kind": "dossier_pickup", "description": "Nhận hồ sơ tại nhà",
        "recipient": {"name": "Võ Ngọc Trang", "phone": "0905123456", "address": "1 Lê Lợi",
                      "province_code": "48", "ward_code": "20197"},
    });
    let post = |body: &Value| {
        a.send(
            reqwest::Method::POST,
            "/v1/shipments",
            Some(PORTAL_TOKEN),
            None,
            Some(body.clone()),
        )
    };
    let get = |id: &str| {
        a.send(
            reqwest::Method::GET,
            &format!("/v1/shipments/{id}"),
            Some(PORTAL_TOKEN),
            None,
            None,
        )
        .2
    };
    let (status, _, first) = post(&pickup);
    assert_eq!(
        (status, first["order_number"].as_str()),
        (202, Some("PICK-0001-TG1"))
    );
    let id = first["id"].as_str().expect("id").to_owned();
    // While it is active, asking again answers the same pickup.
    let (status, _, again) = post(&pickup);
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())));
    assert!(w.wait_until(Duration::from_secs(10), |_| {
        get(&id)["tracking_code"].as_str().is_some()
    }));
    let (status, _, cancel) = a.send(
        reqwest::Method::POST,
        &format!("/v1/shipments/{id}/cancel"),
        Some(PORTAL_TOKEN),
        None,
        None,
    );
    assert_eq!(status, 202, "{cancel}");
    assert!(
        w.wait_until(Duration::from_secs(10), |_| get(&id)["status"]
            == "cancelled"),
        "{}",
        get(&id)
    );
    let cancels: Vec<_> = w
        .postal
        .ledger
        .snapshot()
        .into_iter()
        .filter(|e| e.operation == "cancel" && e.order_number == "PICK-0001-TG1")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(cancels, vec!["cancelled".to_owned()]);
    // The first pickup is final: the next request is pickup 2.
    let (status, _, second) = post(&pickup);
    assert_eq!(
        (status, second["order_number"].as_str()),
        (202, Some("PICK-0001-TG2"))
    );
    assert_ne!(second["id"], first["id"]);
    // Cancelling a cancelled shipment is accepted again and changes nothing.
    let (status, _, _) = a.send(
        reqwest::Method::POST,
        &format!("/v1/shipments/{id}/cancel"),
        Some(PORTAL_TOKEN),
        None,
        None,
    );
    assert_eq!(status, 202);
}

/// Every byte of every file under `dir`.
pub(crate) fn raw_files(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(raw_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

#[test]
fn with_a_key_configured_no_citizen_data_is_in_the_store_files_in_clear() {
    let people: Vec<dvc_population::simulator::SimCitizen> =
        dvc_population::simulator::parse_citizens(dvc_population::simulator::DEFAULT_CITIZENS)
            .expect("fixture");
    let run = |encrypted: bool| -> (Vec<u8>, Vec<String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = World::start(dir.path(), 0.0);
        let key = dir.path().join("store.key");
        std::fs::write(&key, "8f".repeat(32)).expect("key");
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        // A whole list from the environment: a TOML array.
        let key_list = format!("[\"{}\"]", key.to_str().expect("path"));
        let env: Vec<(&str, &str)> = if encrypted {
            vec![
                ("DVC_CONNECTOR__STORE__ENCRYPTION", "on"),
                (
                    "DVC_CONNECTOR__STORE__ENCRYPTION_KEY_FILES",
                    key_list.as_str(),
                ),
            ]
        } else {
            vec![("DVC_CONNECTOR__STORE__ENCRYPTION", "off")]
        };
        let (mut daemon, api) = w.daemon(&env);
        let mut traffic = drive(&api, dir.path(), 8, if encrypted { "ENC" } else { "PLAIN" });
        assert!(
            traffic
                .wait_exit(Duration::from_secs(120))
                .expect("traffic finishes")
                .success()
        );
        daemon.sigterm();
        daemon.wait_exit(Duration::from_secs(20)).expect("exits");
        if encrypted {
            assert!(
                daemon
                    .err_lines
                    .iter()
                    .any(|l| l.contains("encrypted at rest")),
                "the daemon says it encrypts"
            );
        }
        if encrypted {
            // The stopped daemon's store, read offline: with the key, and refused without it.
            let store = dir.path().join("store");
            let jobs = |extra: &[&str]| {
                let mut args = vec![
                    "jobs",
                    "list",
                    "--store",
                    store.to_str().expect("path"),
                    "--output",
                    "json",
                ];
                args.extend_from_slice(extra);
                std::process::Command::new(super::helpers::binary())
                    .args(&args)
                    .output()
                    .expect("run")
            };
            let with_key = jobs(&["--key-file", key.to_str().expect("path")]);
            assert!(
                with_key.status.success()
                    && String::from_utf8_lossy(&with_key.stdout).contains("portal.step"),
                "{}",
                String::from_utf8_lossy(&with_key.stderr)
            );
            assert!(
                !jobs(&[]).status.success(),
                "an encrypted store does not read without its key"
            );
        }
        let secrets: Vec<String> = people
            .iter()
            .take(8)
            .flat_map(|p| [p.citizen_id.clone(), p.family.clone() + " " + &p.middle])
            .collect();
        (raw_files(&dir.path().join("store")), secrets)
    };
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    // Without a key the check finds the data (so it can find it), with a key it finds none.
    let (plain, secrets) = run(false);
    assert!(
        secrets.iter().any(|s| contains(&plain, s)),
        "the unencrypted store should show the citizen data this check looks for"
    );
    let (sealed, secrets) = run(true);
    for s in &secrets {
        assert!(
            !contains(&sealed, s),
            "{s} is in the encrypted store in clear"
        );
    }
}
