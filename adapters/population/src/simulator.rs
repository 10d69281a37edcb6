//! A simulator of the LGSP gateway in front of the population DB. It judges every request by the
//! contract's rules ([`crate::rules`], written on their own: envelope and namespaces, the operation's
//! children in order, `SOAPAction`, the content type, `lgspaccesstoken` when configured) and answers a
//! violation with a SOAP `Client` fault naming the field, recorded in the ledger. Answers are written with
//! [`crate::wire`].
//!
//! - `POST /token` — client credentials (HTTP Basic) → a bearer token that expires after
//!   `token_lifetime`;
//! - `POST /dancu/soap` — both operations; 401 without a valid token, and 401 for an officer whose
//!   `AuthHash` is not in the configured officer table (when there is one); answers from a registry of
//!   synthetic citizens (`fixtures/population/citizens.json`);
//! - the control endpoint of [`dvc_upstream::sim`] (faults, ledger), plus `POST /_control/revoke-tokens`
//!   to expire every token at once.
//!
//! `XacThucThongTinCongDan` answers `TonTai=true` when the number is known and the name matches it with
//! or without diacritics (as deployed gateways compare); `XacMinhThongTinNhanThan` returns the record of
//! the number, whatever name was sent — matching is the connector's job.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dvc_upstream::judge::{self, Violation};
use dvc_upstream::sim::{self, Fault, FaultPlan, Faults, Ledger, Running, TokenIssuer};
use serde::{Deserialize, Serialize};

use crate::matching::{BirthDate, normalize_name, strip_diacritics};
use crate::rules;
use crate::wire::{self, CongDan};

/// One synthetic citizen, as in the fixture file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimCitizen {
    pub citizen_id: String,
    #[serde(default)]
    pub legacy_id: String,
    pub family: String,
    pub middle: String,
    pub given: String,
    /// `male` or `female`.
    pub sex: String,
    /// `YYYY-MM-DD` or `YYYY`.
    pub date_of_birth: String,
    /// Two-digit province code of the birth registration.
    pub birth_province: String,
    /// Put the whole upper-case name in `Ten`, as some deployments do.
    #[serde(default)]
    pub whole_name_in_ten: bool,
}

impl SimCitizen {
    pub fn full_name(&self) -> String {
        format!("{} {} {}", self.family, self.middle, self.given)
    }

    fn record(&self) -> CongDan {
        let dob = BirthDate::parse_iso(&self.date_of_birth);
        let (ho, chu_dem, ten) = if self.whole_name_in_ten {
            (
                String::new(),
                String::new(),
                self.full_name().to_uppercase(),
            )
        } else {
            (self.family.clone(), self.middle.clone(), self.given.clone())
        };
        CongDan {
            so_dinh_danh: self.citizen_id.clone(),
            so_cmnd: self.legacy_id.clone(),
            ho,
            chu_dem,
            ten,
            gioi_tinh: if self.sex == "female" { "2" } else { "1" }.into(),
            nam: dob.map(|d| d.year().to_string()).unwrap_or_default(),
            ngay_thang_nam: match dob {
                Some(d @ BirthDate::Full { .. }) => d.compact(),
                _ => String::new(),
            },
            noi_dang_ky_khai_sinh_tinh: self.birth_province.clone(),
        }
    }
}

/// The registry shipped with the repository (`fixtures/population/citizens.json`), built into the binary.
pub const DEFAULT_CITIZENS: &str = include_str!("../../../fixtures/population/citizens.json");

pub fn parse_citizens(text: &str) -> Result<Vec<SimCitizen>, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

pub fn load_citizens(path: &Path) -> Result<Vec<SimCitizen>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_citizens(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub citizens: Vec<SimCitizen>,
    pub client_id: String,
    pub client_secret: String,
    pub token_lifetime: Duration,
    /// Officers' gateway keys → passwords. Empty: `AuthHash` is not checked. Otherwise every call must
    /// carry the `AuthHash` of one of them, or is refused with 401.
    pub officers: HashMap<String, String>,
    /// The static `lgspaccesstoken` every call must carry, when the gateway wants one.
    pub lgsp_access_token: Option<String>,
    /// The media type of requests (`text/xml`; some gateways want `application/xml`).
    pub content_type: String,
    pub faults: FaultPlan,
}

impl SimulatorConfig {
    /// The shipped registry, client `dvc-dev` / `dev-secret` (as in `config/dev.toml`), tokens for 5 minutes.
    pub fn with_fixture() -> Result<Self, String> {
        Ok(Self {
            citizens: parse_citizens(DEFAULT_CITIZENS)?,
            client_id: "dvc-dev".into(),
            client_secret: "dev-secret".into(),
            token_lifetime: Duration::from_secs(300),
            officers: HashMap::new(),
            lgsp_access_token: None,
            content_type: "text/xml".into(),
            faults: FaultPlan::default(),
        })
    }
}

/// What the simulator received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `token` or the SOAP operation.
    pub operation: String,
    pub request_id: String,
    pub officer: String,
    pub citizen_id: String,
    /// `found`, `not_found`, `token_issued`, `unauthorized`, `officer_refused`, `invalid`, or the
    /// fault drawn.
    pub outcome: String,
    pub auth_hash: bool,
    pub lgsp_access_token: bool,
    /// The first rule the request broke (the outcome is then `invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
}

#[derive(Debug)]
pub struct Simulator {
    pub faults: Arc<Faults>,
    pub ledger: Arc<Ledger<LedgerEntry>>,
    registry: HashMap<String, SimCitizen>,
    tokens: TokenIssuer,
    officers: HashMap<String, String>,
    lgsp_access_token: Option<String>,
    content_type: String,
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Arc<Self> {
        Arc::new(Self {
            faults: Faults::new(config.faults),
            ledger: Arc::default(),
            registry: config
                .citizens
                .into_iter()
                .map(|c| (c.citizen_id.clone(), c))
                .collect(),
            tokens: TokenIssuer::new(
                config.client_id,
                config.client_secret,
                config.token_lifetime,
            ),
            officers: config.officers,
            lgsp_access_token: config.lgsp_access_token,
            content_type: config.content_type,
        })
    }

    /// Every rule broken so far, in arrival order.
    pub fn violations(&self) -> Vec<Violation> {
        self.ledger
            .snapshot()
            .into_iter()
            .filter_map(|e| e.violation)
            .collect()
    }

    /// True when the officer table is empty, or the call's `AuthHash` is one of its officers'.
    fn officer_accepted(&self, headers: &HeaderMap) -> bool {
        use base64::Engine as _;
        if self.officers.is_empty() {
            return true;
        }
        headers
            .get("authhash")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| {
                let (key, pass) = pair.split_once(':')?;
                Some(self.officers.get(key).is_some_and(|p| p == pass))
            })
            .unwrap_or(false)
    }

    /// Expires every issued token (the gateway restarted or rotated its keys).
    pub fn revoke_tokens(&self) {
        self.tokens.revoke();
    }

    pub fn tokens_issued(&self) -> usize {
        self.ledger
            .snapshot()
            .iter()
            .filter(|e| e.outcome == "token_issued")
            .count()
    }
}

pub fn router(sim: Arc<Simulator>) -> Router {
    let control = sim::control_router(sim.faults.clone(), sim.ledger.clone());
    Router::new()
        .route("/token", post(token))
        .route("/dancu/soap", post(soap))
        .route("/_control/revoke-tokens", post(revoke))
        .with_state(sim)
        .merge(control)
}

/// Starts the simulator on `listener` (port 0 works).
pub fn start(
    listener: tokio::net::TcpListener,
    config: SimulatorConfig,
) -> std::io::Result<(Running, Arc<Simulator>)> {
    let sim = Simulator::new(config);
    let running = sim::serve(listener, router(sim.clone()))?;
    Ok((running, sim))
}

async fn token(State(sim): State<Arc<Simulator>>, headers: HeaderMap, body: Bytes) -> Response {
    let (response, outcome) = sim.tokens.answer(&headers, &body);
    sim.ledger.record(LedgerEntry {
        operation: "token".into(),
        request_id: String::new(),
        officer: String::new(),
        citizen_id: String::new(),
        outcome: outcome.into(),
        auth_hash: false,
        lgsp_access_token: false,
        violation: None,
    });
    response
}

async fn revoke(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.revoke_tokens();
    StatusCode::NO_CONTENT
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

fn client_fault(violation: &Violation) -> Response {
    xml(
        StatusCode::INTERNAL_SERVER_ERROR,
        wire::Response::Fault {
            code: "soap:Client".into(),
            message: format!(
                "Yêu cầu không hợp lệ: {} ({})",
                violation.field, violation.detail
            ),
        }
        .encode(),
    )
}

async fn soap(State(sim): State<Arc<Simulator>>, headers: HeaderMap, body: Bytes) -> Response {
    let judged = rules::request(&body);
    let field = |name: &str| {
        judged
            .as_ref()
            .map(|j| j.get(name).to_owned())
            .unwrap_or_default()
    };
    let mut entry = LedgerEntry {
        operation: judged
            .as_ref()
            .map(|j| j.operation.to_owned())
            .unwrap_or_default(),
        request_id: field("MaYeuCau"),
        officer: field("MaCanBo"),
        citizen_id: field("SoDinhDanh"),
        outcome: String::new(),
        auth_hash: headers.contains_key("authhash"),
        lgsp_access_token: headers.contains_key("lgspaccesstoken"),
        violation: None,
    };
    if !sim.tokens.valid(&headers) {
        entry.outcome = "unauthorized".into();
        sim.ledger.record(entry);
        return (
            StatusCode::UNAUTHORIZED,
            "token missing, unknown or expired",
        )
            .into_response();
    }
    if !sim.officer_accepted(&headers) {
        entry.outcome = "officer_refused".into();
        sim.ledger.record(entry);
        return (
            StatusCode::UNAUTHORIZED,
            "officer credentials (AuthHash) missing or refused",
        )
            .into_response();
    }
    let mut violations = match &judged {
        Ok(j) => rules::headers(&headers, j.operation, &sim.content_type),
        Err(v) => v.clone(),
    };
    if let Some(expected) = &sim.lgsp_access_token
        && let Some(v) = judge::header(&headers, "lgspaccesstoken", Some(expected), false)
    {
        violations.push(v);
    }
    if let Some(first) = violations.into_iter().next() {
        entry.outcome = "invalid".into();
        let response = client_fault(&first);
        entry.violation = Some(first);
        sim.ledger.record(entry);
        return response;
    }
    let Ok(request) = judged else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let Some(fault) = sim.faults.draw().await {
        entry.outcome = fault.as_str().into();
        sim.ledger.record(entry);
        if let Some(response) = sim.faults.generic_response(fault).await {
            return response;
        }
        return match fault {
            Fault::Malformed => xml(
                StatusCode::OK,
                "<soap:Envelope><soap:Body><TonTai>tr".into(),
            ),
            _ => xml(
                StatusCode::INTERNAL_SERVER_ERROR,
                wire::Response::Fault {
                    code: "soap:Server".into(),
                    message: "Hệ thống CSDLQGDC đang bận".into(),
                }
                .encode(),
            ),
        };
    }
    let citizen = sim.registry.get(request.get("SoDinhDanh"));
    let response = if request.operation == "XacThucThongTinCongDan" {
        let found = citizen.is_some_and(|c| {
            strip_diacritics(&normalize_name(&c.full_name()))
                == strip_diacritics(&normalize_name(request.get("HoVaTen")))
        });
        wire::Response::Exists(found)
    } else {
        wire::Response::Records(citizen.map(|c| vec![c.record()]).unwrap_or_default())
    };
    entry.outcome = match &response {
        wire::Response::Exists(true) => "found",
        wire::Response::Records(r) if !r.is_empty() => "found",
        _ => "not_found",
    }
    .into();
    sim.ledger.record(entry);
    xml(StatusCode::OK, response.encode())
}
