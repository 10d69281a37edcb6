//! A simulator of the portal protocol that judges every request by the contract's rules (the tables in
//! [`crate::rules`], written from the contract, not from the client's wire types): a call that breaks
//! one (a field missing, a number where a string belongs, a date in another format, more than ten steps,
//! a wrong `dstcode`) answers `error_code` 7 naming the field, and the violation is recorded in the
//! ledger.
//!
//! - `POST /auth` — `{username, password}` → `{error_code: 0, session}`; sessions expire after
//!   `session_lifetime` (then every call answers `error_code` 2);
//! - `POST /integration` — `{session, madonvi, service, …}` for `TraCuuHoSo`, `DongBoHoSoMC` (create on
//!   an existing dossier → 3, update of a missing one → 4, nothing stored on either) and
//!   `CapNhatTienDoHoSoMC` (more than ten steps → 5; a step for an unknown dossier → 4 and the whole call
//!   is refused; accepted steps are appended in order and their arrival recorded);
//! - the control endpoint of [`dvc_upstream::sim`], plus `POST /_control/expire-sessions`.
//!
//! Several targets can share one server: [`router`] of each simulator nested under its own path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use dvc_upstream::sim::{self, Fault, FaultPlan, Faults, Ledger, Running};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::time::Instant;

use dvc_upstream::judge::{self, Violation, ViolationKind};

use crate::rules;
use crate::wire::{
    CAP_NHAT_TIEN_DO, DONG_BO_HO_SO, DossierRecord, MAX_STEPS_PER_CALL, Progress, TRA_CUU_HO_SO,
};

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub username: String,
    pub password: String,
    pub session_lifetime: Duration,
    /// The `dstcode` every service call must carry; `None`: any non-empty value, or none.
    pub routing_code: Option<String>,
    pub faults: FaultPlan,
}

impl Default for SimulatorConfig {
    /// The development credentials of `config/dev.toml`.
    fn default() -> Self {
        Self {
            username: "dvc-dev".into(),
            password: "dev-password".into(),
            session_lifetime: Duration::from_secs(600),
            routing_code: None,
            faults: FaultPlan::default(),
        }
    }
}

/// What the simulator received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `auth` or the service name.
    pub service: String,
    /// The dossier codes the call named, in order.
    pub dossiers: Vec<String>,
    /// `DongBoHoSoMC`: whether `isUpdating` was `True`.
    #[serde(default)]
    pub is_updating: bool,
    /// `ok`, `error_code:N`, `unauthorized`, `invalid`, or the fault drawn.
    pub outcome: String,
    /// The `dstcode` header as received.
    pub routing_code: String,
    /// The first rule the call broke (the outcome is then `error_code:7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
}

/// A step as the portal stored it, with its arrival position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredStep {
    pub arrival: u64,
    pub step: Progress,
}

#[derive(Debug, Default)]
struct Store {
    dossiers: HashMap<String, DossierRecord>,
    steps: Vec<StoredStep>,
}

#[derive(Debug)]
pub struct Simulator {
    pub faults: Arc<Faults>,
    pub ledger: Arc<Ledger<LedgerEntry>>,
    config: SimulatorConfig,
    sessions: Mutex<HashMap<String, Instant>>,
    store: Mutex<Store>,
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Arc<Self> {
        Arc::new(Self {
            faults: Faults::new(config.faults.clone()),
            ledger: Arc::default(),
            config,
            sessions: Mutex::default(),
            store: Mutex::default(),
        })
    }

    pub fn expire_sessions(&self) {
        if let Ok(mut s) = self.sessions.lock() {
            s.clear();
        }
    }

    pub fn dossier(&self, code: &str) -> Option<DossierRecord> {
        self.store.lock().ok()?.dossiers.get(code).cloned()
    }

    /// How many steps were accepted (cheap: for polling).
    pub fn step_count(&self) -> usize {
        self.store.lock().map(|s| s.steps.len()).unwrap_or(0)
    }

    /// Every step accepted, in arrival order.
    pub fn steps(&self) -> Vec<StoredStep> {
        self.store
            .lock()
            .map(|s| s.steps.clone())
            .unwrap_or_default()
    }

    fn record(
        &self,
        service: &str,
        dossiers: Vec<String>,
        is_updating: bool,
        outcome: impl Into<String>,
        headers: &HeaderMap,
    ) {
        self.ledger.record(LedgerEntry {
            service: service.into(),
            dossiers,
            is_updating,
            outcome: outcome.into(),
            routing_code: headers
                .get("dstcode")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .into(),
            violation: None,
        });
    }

    /// Every rule broken so far, in arrival order.
    pub fn violations(&self) -> Vec<Violation> {
        self.ledger
            .snapshot()
            .into_iter()
            .filter_map(|e| e.violation)
            .collect()
    }

    /// Records a refused call and answers `error_code` 7 naming the field, as a portal refuses invalid
    /// data.
    fn refuse(
        &self,
        service: &str,
        dossiers: Vec<String>,
        headers: &HeaderMap,
        violations: Vec<Violation>,
    ) -> Response {
        let first = violations.into_iter().next();
        let message = first.as_ref().map_or_else(String::new, |v| {
            format!("Dữ liệu không hợp lệ: {} ({})", v.field, v.detail)
        });
        self.ledger.record(LedgerEntry {
            service: service.into(),
            dossiers,
            is_updating: false,
            outcome: "error_code:7".into(),
            routing_code: headers
                .get("dstcode")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .into(),
            violation: first,
        });
        answer(7, &message, None)
    }

    /// The header rules of every call: a JSON body, and the routing code when one is configured.
    fn header_violations(&self, headers: &HeaderMap) -> Vec<Violation> {
        let mut out = Vec::new();
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            out.push(Violation::new(
                ViolationKind::BadHeader,
                "content-type",
                "expected application/json",
            ));
        }
        let routing = headers.get("dstcode").map(|v| v.to_str().unwrap_or(""));
        match (&self.config.routing_code, routing) {
            (Some(expected), Some(got)) if got == expected => {}
            (Some(expected), _) => out.push(Violation::new(
                ViolationKind::BadHeader,
                "dstcode",
                format!("expected the routing code {expected}"),
            )),
            (None, Some(got)) if got.trim().is_empty() => out.push(Violation::new(
                ViolationKind::BadHeader,
                "dstcode",
                "sent empty: leave the header out when there is no routing code",
            )),
            (None, _) => {}
        }
        out
    }
}

pub fn router(sim: Arc<Simulator>) -> Router {
    let control = sim::control_router(sim.faults.clone(), sim.ledger.clone());
    Router::new()
        .route("/auth", post(auth))
        .route("/integration", post(integration))
        .route("/_control/expire-sessions", post(expire))
        .route("/_control/store", axum::routing::get(store_view))
        .with_state(sim)
        .merge(control)
}

pub fn start(
    listener: tokio::net::TcpListener,
    config: SimulatorConfig,
) -> std::io::Result<(Running, Arc<Simulator>)> {
    let sim = Simulator::new(config);
    let running = sim::serve(listener, router(sim.clone()))?;
    Ok((running, sim))
}

fn answer(code: i64, message: &str, result: Option<Value>) -> Response {
    let mut body = json!({ "error_code": code, "message": message });
    if let Some(r) = result {
        body["result"] = r;
    }
    Json(body).into_response()
}

async fn expire(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.expire_sessions();
    StatusCode::NO_CONTENT
}

async fn store_view(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    let store = sim.store.lock();
    let (dossiers, steps) = store
        .map(|s| {
            (
                s.dossiers.keys().cloned().collect::<Vec<_>>(),
                s.steps.clone(),
            )
        })
        .unwrap_or_default();
    Json(json!({ "dossiers": dossiers, "steps": steps }))
}

async fn auth(State(sim): State<Arc<Simulator>>, headers: HeaderMap, body: Bytes) -> Response {
    let login = match judge::json_object(&body) {
        Ok(login) => login,
        Err(v) => return sim.refuse("auth", vec![], &headers, vec![v]),
    };
    let mut violations = judge::object(&login, "", rules::LOGIN, false);
    violations.extend(
        sim.header_violations(&headers)
            .into_iter()
            .filter(|v| v.field != "dstcode"),
    );
    if !violations.is_empty() {
        return sim.refuse("auth", vec![], &headers, violations);
    }
    let text = |k: &str| login.get(k).and_then(Value::as_str).unwrap_or_default();
    if text("username") != sim.config.username || text("password") != sim.config.password {
        sim.record("auth", vec![], false, "unauthorized", &headers);
        return answer(1, "Sai tên đăng nhập hoặc mật khẩu", None);
    }
    let session = format!("ss-{:016x}", fastrand::u64(..));
    if let Ok(mut s) = sim.sessions.lock() {
        s.insert(
            session.clone(),
            Instant::now() + sim.config.session_lifetime,
        );
    }
    sim.record("auth", vec![], false, "ok", &headers);
    Json(json!({ "error_code": 0, "session": session, "message": "Đăng nhập thành công" }))
        .into_response()
}

#[derive(Deserialize)]
struct Call<'a> {
    session: String,
    #[serde(default)]
    madonvi: String,
    service: String,
    #[serde(default)]
    mahoso: Option<String>,
    #[serde(default, rename = "isUpdating")]
    is_updating: Option<String>,
    /// Kept as the caller's text and read once, as the service's own items.
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// A call by its service, with `data` read as that service's items.
enum Items {
    Lookup,
    Records(Result<Vec<DossierRecord>, serde_json::Error>),
    Steps(Result<Vec<Progress>, serde_json::Error>),
    Unknown,
}

impl Items {
    fn read(service: &str, data: Option<&RawValue>) -> Self {
        fn items<T: DeserializeOwned>(data: Option<&RawValue>) -> serde_json::Result<Vec<T>> {
            data.map_or_else(|| Ok(Vec::new()), |raw| serde_json::from_str(raw.get()))
        }
        match service {
            TRA_CUU_HO_SO => Self::Lookup,
            DONG_BO_HO_SO => Self::Records(items(data)),
            CAP_NHAT_TIEN_DO => Self::Steps(items(data)),
            _ => Self::Unknown,
        }
    }
}

/// The dossier codes a call names, for the ledger: its `mahoso`, or each item's `MaHoSo` (`""` for an
/// item without one), or none when `data` is not a list.
fn named(call: &Call<'_>, items: &Items) -> Vec<String> {
    if let Some(m) = &call.mahoso {
        return vec![m.clone()];
    }
    match items {
        Items::Records(Ok(records)) => records.iter().map(|r| r.ma_ho_so.clone()).collect(),
        Items::Steps(Ok(steps)) => steps.iter().map(|s| s.ma_ho_so.clone()).collect(),
        _ => match call
            .data
            .map(|raw| serde_json::from_str::<Value>(raw.get()))
        {
            Some(Ok(Value::Array(items))) => items
                .iter()
                .map(|i| {
                    i.get("MaHoSo")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect(),
            _ => vec![],
        },
    }
}

async fn integration(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let judged = match judge::json_object(&body) {
        Ok(call) => call,
        Err(v) => return sim.refuse("", vec![], &headers, vec![v]),
    };
    let mut violations = rules::service_call(&judged);
    violations.extend(sim.header_violations(&headers));
    if !violations.is_empty() {
        let service = judged
            .get("service")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let named = match judged.get("data") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.get("MaHoSo")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect(),
            _ => judged
                .get("mahoso")
                .and_then(Value::as_str)
                .map(|m| vec![m.to_owned()])
                .unwrap_or_default(),
        };
        return sim.refuse(service, named, &headers, violations);
    }
    // The call passed the rules; read it for what it asks.
    let call: Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return sim.refuse(
                "",
                vec![],
                &headers,
                vec![Violation::new(
                    ViolationKind::Unreadable,
                    "(body)",
                    e.to_string(),
                )],
            );
        }
    };
    let service = call.service.clone();
    let updating = call
        .is_updating
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let items = Items::read(&service, call.data);
    let named = named(&call, &items);
    let valid = sim
        .sessions
        .lock()
        .map(|s| {
            s.get(&call.session)
                .is_some_and(|exp| Instant::now() < *exp)
        })
        .unwrap_or(false);
    if !valid {
        sim.record(&service, named, updating, "error_code:2", &headers);
        return answer(2, "Phiên làm việc không hợp lệ hoặc đã hết hạn", None);
    }
    if let Some(fault) = sim.faults.draw().await {
        sim.record(&service, named, updating, fault.as_str(), &headers);
        if let Some(response) = sim.faults.generic_response(fault).await {
            return response;
        }
        return match fault {
            Fault::Malformed => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"error_code\": 0, \"resu",
            )
                .into_response(),
            _ => answer(99, "Lỗi hệ thống, vui lòng thử lại sau", None),
        };
    }
    if call.madonvi.is_empty() {
        sim.record(&service, named, updating, "error_code:6", &headers);
        return answer(6, "Thiếu mã đơn vị", None);
    }
    let Ok(mut store) = sim.store.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let (code, message, result): (i64, String, Option<Value>) = match items {
        Items::Lookup => {
            let found: Vec<Value> = call
                .mahoso
                .as_ref()
                .and_then(|m| store.dossiers.get(m))
                .map(|d| vec![serde_json::to_value(d).unwrap_or(Value::Null)])
                .unwrap_or_default();
            (0, "Thành công".to_owned(), Some(Value::Array(found)))
        }
        Items::Records(records) => {
            match records {
                Err(e) => (7, format!("Dữ liệu không hợp lệ: {e}"), None),
                Ok(records) => {
                    // The whole call is refused when one record is in the wrong state: nothing half-applied.
                    let exists = |r: &DossierRecord| store.dossiers.contains_key(&r.ma_ho_so);
                    if !updating && records.iter().any(exists) {
                        (3, "Hồ sơ đã tồn tại".into(), None)
                    } else if updating && !records.iter().all(exists) {
                        (4, "Hồ sơ không tồn tại".into(), None)
                    } else {
                        for r in records {
                            store.dossiers.insert(r.ma_ho_so.clone(), r);
                        }
                        (0, "Đồng bộ thành công".into(), None)
                    }
                }
            }
        }
        Items::Steps(steps) => match steps {
            Err(e) => (7, format!("Dữ liệu không hợp lệ: {e}"), None),
            Ok(steps) if steps.len() > MAX_STEPS_PER_CALL => {
                (5, "Vượt quá số lượng bản ghi cho phép".into(), None)
            }
            Ok(steps)
                if steps
                    .iter()
                    .any(|s| !store.dossiers.contains_key(&s.ma_ho_so)) =>
            {
                (4, "Hồ sơ không tồn tại".into(), None)
            }
            Ok(steps) => {
                for step in steps {
                    let arrival = store.steps.len() as u64 + 1;
                    store.steps.push(StoredStep { arrival, step });
                }
                (0, "Cập nhật tiến độ thành công".into(), None)
            }
        },
        Items::Unknown => (8, "Dịch vụ không tồn tại".into(), None),
    };
    drop(store);
    let outcome = if code == 0 {
        "ok".to_owned()
    } else {
        format!("error_code:{code}")
    };
    sim.record(&service, named, updating, outcome, &headers);
    answer(code, &message, result)
}
