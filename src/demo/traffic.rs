//! A realistic day of portal traffic, driven through the real HTTP API: deterministic from a seed, each
//! request with its own `Idempotency-Key`, retried as a well-behaved portal would (connection errors,
//! 429 and 5xx, for up to two minutes per request — so the traffic survives a daemon restart).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dvc_population::simulator::{DEFAULT_CITIZENS, SimCitizen, parse_citizens};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Procedures the demo's dossiers are filed under (code, name, field).
const PROCEDURES: [(&str, &str, &str); 4] = [
    ("1.001612", "Đăng ký khai sinh", "Hộ tịch"),
    ("1.004227", "Cấp giấy phép xây dựng", "Xây dựng"),
    ("2.000908", "Chứng thực bản sao từ bản chính", "Chứng thực"),
    ("1.000894", "Đăng ký kết hôn", "Hộ tịch"),
];

/// Step contents start with this, so a ledger check can tell them from the connector's own steps.
pub const STEP_PREFIX: &str = "Bước";

/// What was accepted for one dossier (the report a ledger check compares against).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DossierReport {
    pub code: String,
    pub records: u32,
    /// Contents of the accepted steps, in submission order.
    pub steps: Vec<String>,
    /// Order numbers of the shipments accepted.
    pub orders: Vec<String>,
    pub shipment_ids: Vec<String>,
    /// Verification status answered (or `rejected_422`).
    pub verification: Option<String>,
    pub verification_id: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub run: String,
    pub dossiers: Vec<DossierReport>,
    /// Latency of every API call that got an answer, milliseconds.
    #[serde(default)]
    pub latencies_ms: Vec<f64>,
    pub answers: std::collections::BTreeMap<u16, u64>,
    /// Requests that needed more than one try (connection refused, 503 …).
    pub retried_requests: u64,
}

/// The HTTP side of the driver.
#[derive(Debug, Clone)]
pub struct Driver {
    pub client: reqwest::Client,
    pub api: String,
    pub token: String,
    pub run: String,
    pub retried: Arc<AtomicU64>,
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub ms: f64,
}

impl Driver {
    pub fn new(api: &str, token: &str, run: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()?,
            api: api.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            run: run.to_owned(),
            retried: Arc::default(),
        })
    }

    /// Sends until a final answer (anything but a connection error, 429 or 5xx), for up to 2 minutes.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut tries = 0;
        loop {
            tries += 1;
            if tries == 2 {
                self.retried.fetch_add(1, Ordering::Relaxed);
            }
            let started = Instant::now();
            let mut req = self
                .client
                .request(method.clone(), format!("{}{path}", self.api))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", format!("{}-{key}", self.run));
            if let Some(b) = body {
                req = req.json(b);
            }
            let outcome = req.send().await;
            let retry = match outcome {
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => true,
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.json::<Value>().await.unwrap_or(Value::Null);
                    return Ok(Answer {
                        status,
                        body,
                        ms: started.elapsed().as_secs_f64() * 1000.0,
                    });
                }
                Err(_) => true,
            };
            if retry && Instant::now() > deadline {
                anyhow::bail!("{path}: no answer within 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn citizens() -> Vec<SimCitizen> {
    parse_citizens(DEFAULT_CITIZENS).unwrap_or_default()
}

/// Runs the script of dossier `i` and reports what was accepted.
pub async fn dossier(
    d: &Driver,
    i: usize,
    people: &[SimCitizen],
    log: &mut Vec<(u16, f64)>,
) -> anyhow::Result<DossierReport> {
    let code = format!("{}-{i:04}", d.run);
    let mut rep = DossierReport {
        code: code.clone(),
        ..Default::default()
    };
    let (proc_code, proc_name, field) = PROCEDURES[i % PROCEDURES.len()];
    let person = &people[i % people.len().max(1)];
    let mut n = 0;
    let mut key = |what: &str| {
        n += 1;
        format!("{i}-{what}-{n}")
    };
    let note = |a: &Answer, log: &mut Vec<(u16, f64)>| log.push((a.status, a.ms));

    // Identity: most dossiers verify their applicant; some with a mistyped name, an unknown person or a
    // structurally impossible ID.
    if i % 10 < 8 {
        let mut id = person.citizen_id.clone();
        let mut name = person.full_name();
        if i.is_multiple_of(13) {
            id.replace_range(0..3, "003"); // no such province code
        } else if i.is_multiple_of(11) {
            let serial: u32 = id[6..].parse().unwrap_or(0);
            id.replace_range(6.., &format!("{:06}", (serial + 500_000) % 1_000_000));
        } else if i.is_multiple_of(7) {
            name = strip(&name);
        }
        let body = json!({
            "citizen_id": id, "full_name": name, "date_of_birth": person.date_of_birth,
            "gender": person.sex, "procedure_code": proc_code, "officer_id": "CB-DEV-01",
            "dossier_code": code,
        });
        let a = d
            .send(
                reqwest::Method::POST,
                "/v1/identity/verifications?wait=2s",
                &key("verify"),
                Some(&body),
            )
            .await?;
        note(&a, log);
        rep.verification = Some(if a.status == 422 {
            "rejected_422".into()
        } else {
            a.body["status"].as_str().unwrap_or("?").to_owned()
        });
        rep.verification_id = a.body["id"].as_str().map(str::to_owned);
    }

    let record = |status: &str| {
        json!({
            "procedure_code": proc_code, "procedure_name": proc_name, "field_name": field,
            "owner_name": person.full_name(), "applicant_type": 1, "status": status,
            "received_at": "2026-11-27T08:00:00+07:00", "due_at": "2026-12-04T17:00:00+07:00",
            "summary": format!("{proc_name} — hồ sơ {i}"), "channel": "online",
            "result_by_post": i.is_multiple_of(3),
        })
    };
    let step = |k: usize, status: &str| {
        json!({
            "status": status, "occurred_at": format!("2026-11-27T{:02}:{:02}:00+07:00", 8 + k / 60, k % 60),
            "handler": "Nguyễn Thị Cán Bộ", "handler_title": "Chuyên viên", "department": "Bộ phận Một cửa",
            "content": format!("{STEP_PREFIX} {k} của hồ sơ {code}"),
        })
    };
    let path = format!("/v1/dossiers/{code}");
    let events = format!("{path}/events");
    let mut k = 0;
    // Some portals send the first step before the record: it must wait for the record.
    if i.is_multiple_of(17) {
        k += 1;
        let a = d
            .send(
                reqwest::Method::POST,
                &events,
                &key("step"),
                Some(&step(k, "receiving")),
            )
            .await?;
        note(&a, log);
        if a.status == 202 {
            rep.steps
                .push(format!("{STEP_PREFIX} {k} của hồ sơ {code}"));
        }
    }
    let a = d
        .send(
            reqwest::Method::PUT,
            &path,
            &key("record"),
            Some(&record("new")),
        )
        .await?;
    note(&a, log);
    rep.records += u32::from(a.status == 202);
    for status in ["processing"; 3].iter().take(2 + i % 3) {
        k += 1;
        let a = d
            .send(
                reqwest::Method::POST,
                &events,
                &key("step"),
                Some(&step(k, status)),
            )
            .await?;
        note(&a, log);
        if a.status == 202 {
            rep.steps
                .push(format!("{STEP_PREFIX} {k} của hồ sơ {code}"));
        }
    }
    let recipient = json!({
        "name": person.full_name(), "phone": format!("09{:08}", i * 7919 % 100_000_000),
        "address": format!("{} Lê Lợi, Hải Châu", i + 1), "province_code": "48", "ward_code": "20197",
    });
    let shipment = |kind: &str| {
        json!({ "dossier_code": code, "kind": kind, "recipient": recipient,
                "description": format!("{proc_name}: hồ sơ {code}") })
    };
    if i.is_multiple_of(5) {
        let a = d
            .send(
                reqwest::Method::POST,
                "/v1/shipments",
                &key("pickup"),
                Some(&shipment("dossier_pickup")),
            )
            .await?;
        note(&a, log);
        if let (202, Some(on)) = (a.status, a.body["order_number"].as_str()) {
            rep.orders.push(on.to_owned());
            rep.shipment_ids
                .push(a.body["id"].as_str().unwrap_or("").to_owned());
        }
    }
    k += 1;
    let a = d
        .send(
            reqwest::Method::PUT,
            &path,
            &key("record"),
            Some(&record("releasing")),
        )
        .await?;
    note(&a, log);
    rep.records += u32::from(a.status == 202);
    let a = d
        .send(
            reqwest::Method::POST,
            &events,
            &key("step"),
            Some(&step(k, "releasing")),
        )
        .await?;
    note(&a, log);
    if a.status == 202 {
        rep.steps
            .push(format!("{STEP_PREFIX} {k} của hồ sơ {code}"));
    }
    if i.is_multiple_of(3) {
        // The portal asks twice (a retry of its own): one order, the second answer is the same shipment.
        for _ in 0..2 {
            let a = d
                .send(
                    reqwest::Method::POST,
                    "/v1/shipments",
                    &key("result"),
                    Some(&shipment("result_delivery")),
                )
                .await?;
            note(&a, log);
            if let (202, Some(on)) = (a.status, a.body["order_number"].as_str()) {
                rep.orders.push(on.to_owned());
                rep.shipment_ids
                    .push(a.body["id"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    Ok(rep)
}

fn strip(name: &str) -> String {
    dvc_population::matching::strip_diacritics(name)
}

/// Drives `count` dossiers, `parallel` at a time; `tick` is told after each dossier.
pub async fn drive(
    d: &Driver,
    count: usize,
    parallel: usize,
    tick: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<Report> {
    let people = Arc::new(citizens());
    let tick = Arc::new(tick);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let d = d.clone();
        let people = people.clone();
        let next = next.clone();
        let tick = tick.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            let mut log = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    break;
                }
                out.push(dossier(&d, i, &people, &mut log).await?);
                tick();
            }
            anyhow::Ok((out, log))
        });
    }
    let mut report = Report {
        run: d.run.clone(),
        ..Default::default()
    };
    while let Some(done) = tasks.join_next().await {
        let (dossiers, log) = done??;
        report.dossiers.extend(dossiers);
        for (status, ms) in log {
            *report.answers.entry(status).or_default() += 1;
            report.latencies_ms.push(ms);
        }
    }
    report.dossiers.sort_by(|a, b| a.code.cmp(&b.code));
    report.retried_requests = d.retried.load(Ordering::Relaxed);
    Ok(report)
}
