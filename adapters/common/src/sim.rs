//! Simulator plumbing shared by the three upstream simulators: a fault plan drawn per request, and a
//! ledger of what each simulator received, both inspectable and changeable over a control endpoint:
//!
//! - `GET /_control/faults`, `PUT /_control/faults` (JSON [`FaultPlan`]) — the plan in force;
//! - `GET /_control/ledger`, `DELETE /_control/ledger` — what was received, in arrival order.
//!
//! Tests assert through the ledger what really reached the upstream; the fault plan makes the upstream
//! misbehave the ways real ones do.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// How a simulator misbehaves. Rates are probabilities per request, drawn in the order listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    /// HTTP 500.
    pub http_500: f64,
    /// HTTP 429 with `Retry-After: retry_after_secs`.
    pub http_429: f64,
    /// No answer for `hang_ms` (longer than any sane client timeout).
    pub hang: f64,
    /// The connection is cut in the middle of the answer.
    pub reset: f64,
    /// A 200 whose body is not valid XML/JSON.
    pub malformed: f64,
    /// The protocol's own error on a 200: a SOAP fault, a business error code.
    pub protocol_error: f64,
    pub retry_after_secs: u64,
    pub hang_ms: u64,
    /// Added to every answer.
    pub latency_ms: u64,
    /// Windows (milliseconds since the simulator started) during which every request gets 503.
    pub outages: Vec<Outage>,
    /// Seed for the draws, for repeatable runs.
    pub seed: Option<u64>,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            http_500: 0.0,
            http_429: 0.0,
            hang: 0.0,
            reset: 0.0,
            malformed: 0.0,
            protocol_error: 0.0,
            retry_after_secs: 1,
            hang_ms: 60_000,
            latency_ms: 0,
            outages: Vec::new(),
            seed: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The fault drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    Outage,
    Http500,
    Http429,
    Hang,
    Reset,
    Malformed,
    Protocol,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Outage => "outage",
            Fault::Http500 => "http_500",
            Fault::Http429 => "http_429",
            Fault::Hang => "hang",
            Fault::Reset => "reset",
            Fault::Malformed => "malformed",
            Fault::Protocol => "protocol_error",
        }
    }
}

/// The fault plan in force and the random source it is drawn from.
#[derive(Debug)]
pub struct Faults {
    plan: RwLock<FaultPlan>,
    rng: Mutex<fastrand::Rng>,
    started: tokio::time::Instant,
}

impl Faults {
    pub fn new(plan: FaultPlan) -> Arc<Self> {
        let rng = plan
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Arc::new(Self {
            plan: RwLock::new(plan),
            rng: Mutex::new(rng),
            started: tokio::time::Instant::now(),
        })
    }

    /// Milliseconds since the simulator started: where [`Outage`] windows are counted from.
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn plan(&self) -> FaultPlan {
        self.plan.read().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn set(&self, plan: FaultPlan) {
        if let Some(seed) = plan.seed
            && let Ok(mut rng) = self.rng.lock()
        {
            *rng = fastrand::Rng::with_seed(seed);
        }
        if let Ok(mut current) = self.plan.write() {
            *current = plan;
        }
    }

    /// Waits the configured latency and draws this request's fault, if any.
    pub async fn draw(&self) -> Option<Fault> {
        let plan = self.plan();
        if plan.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(plan.latency_ms)).await;
        }
        let elapsed = self.started.elapsed().as_millis() as u64;
        if plan
            .outages
            .iter()
            .any(|o| (o.start_ms..o.end_ms).contains(&elapsed))
        {
            return Some(Fault::Outage);
        }
        let mut roll = self.rng.lock().map(|mut r| r.f64()).unwrap_or(1.0);
        for (rate, fault) in [
            (plan.http_500, Fault::Http500),
            (plan.http_429, Fault::Http429),
            (plan.hang, Fault::Hang),
            (plan.reset, Fault::Reset),
            (plan.malformed, Fault::Malformed),
            (plan.protocol_error, Fault::Protocol),
        ] {
            if roll < rate {
                return Some(fault);
            }
            roll -= rate;
        }
        None
    }

    /// The answer for the faults that look the same in every protocol; `None` for `Malformed` and
    /// `Protocol`, which each simulator renders in its own format.
    pub async fn generic_response(&self, fault: Fault) -> Option<Response> {
        let plan = self.plan();
        let retry_after = plan.retry_after_secs.to_string();
        Some(match fault {
            Fault::Outage => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, retry_after)],
                "scheduled outage",
            )
                .into_response(),
            Fault::Http500 => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
            Fault::Http429 => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after)],
                "quota exceeded",
            )
                .into_response(),
            Fault::Hang => {
                tokio::time::sleep(Duration::from_millis(plan.hang_ms)).await;
                (StatusCode::GATEWAY_TIMEOUT, "gave up").into_response()
            }
            Fault::Reset => {
                // Promise a body, send part of it, then fail the stream: the connection is cut mid-answer.
                let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                    Ok(Bytes::from_static(b"<partial")),
                    Err(std::io::Error::other("connection reset by simulator")),
                ];
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_LENGTH, "4096")
                    .body(Body::from_stream(futures_util::stream::iter(chunks)))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
            Fault::Malformed | Fault::Protocol => return None,
        })
    }
}

/// What a simulator received, in arrival order.
#[derive(Debug)]
pub struct Ledger<T> {
    entries: Mutex<Vec<T>>,
}

impl<T: Clone> Default for Ledger<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Clone> Ledger<T> {
    pub fn record(&self, entry: T) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.push(entry);
        }
    }

    pub fn snapshot(&self) -> Vec<T> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

type ControlState<T> = (Arc<Faults>, Arc<Ledger<T>>);

/// The control endpoint of a simulator (see the module doc).
pub fn control_router<T>(faults: Arc<Faults>, ledger: Arc<Ledger<T>>) -> Router
where
    T: Clone + Serialize + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/_control/faults",
            get(get_faults::<T>).put(put_faults::<T>),
        )
        .route(
            "/_control/ledger",
            get(get_ledger::<T>).delete(clear_ledger::<T>),
        )
        .with_state((faults, ledger))
}

async fn get_faults<T: Clone + Send + Sync>(
    State((faults, _)): State<ControlState<T>>,
) -> Json<FaultPlan> {
    Json(faults.plan())
}

async fn put_faults<T: Clone + Send + Sync>(
    State((faults, _)): State<ControlState<T>>,
    Json(plan): Json<FaultPlan>,
) -> StatusCode {
    faults.set(plan);
    StatusCode::NO_CONTENT
}

async fn get_ledger<T: Clone + Serialize + Send + Sync>(
    State((_, ledger)): State<ControlState<T>>,
) -> Json<Vec<T>> {
    Json(ledger.snapshot())
}

async fn clear_ledger<T: Clone + Send + Sync>(
    State((_, ledger)): State<ControlState<T>>,
) -> StatusCode {
    ledger.clear();
    StatusCode::NO_CONTENT
}

/// A running simulator: where it listens, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Serves `router` on `listener` until stopped.
pub fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Running {
        addr,
        stop: Some(stop),
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_faults_by_default() {
        let faults = Faults::new(FaultPlan::default());
        for _ in 0..100 {
            assert_eq!(faults.draw().await, None);
        }
    }

    #[tokio::test]
    async fn rates_are_drawn_in_proportion() {
        let faults = Faults::new(FaultPlan {
            http_500: 0.25,
            malformed: 0.25,
            seed: Some(1),
            ..FaultPlan::default()
        });
        let mut counts = std::collections::HashMap::new();
        for _ in 0..4000 {
            *counts.entry(faults.draw().await).or_insert(0) += 1;
        }
        for fault in [Some(Fault::Http500), Some(Fault::Malformed), None] {
            let n: i32 = counts.get(&fault).copied().unwrap_or(0);
            let expected = if fault.is_none() { 2000 } else { 1000 };
            assert!((n - expected).abs() < 150, "{fault:?}: {n}");
        }
    }

    #[tokio::test]
    async fn an_outage_window_answers_503() {
        let faults = Faults::new(FaultPlan {
            outages: vec![Outage {
                start_ms: 0,
                end_ms: 60_000,
            }],
            ..FaultPlan::default()
        });
        let fault = faults.draw().await;
        assert_eq!(fault, Some(Fault::Outage));
        let response = faults
            .generic_response(Fault::Outage)
            .await
            .expect("generic");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}

/// OAuth2 client-credentials tokens as a gateway issues them: HTTP Basic `id:secret`, form
/// `grant_type=client_credentials`, bearer tokens that expire after `lifetime` or when revoked.
#[derive(Debug)]
pub struct TokenIssuer {
    client_id: String,
    client_secret: String,
    lifetime: Duration,
    issued: Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
}

impl TokenIssuer {
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        lifetime: Duration,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            lifetime,
            issued: Mutex::default(),
        }
    }

    /// Answers a token request, with the outcome to record: `token_issued`, `unauthorized` or `invalid`.
    pub fn answer(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> (Response, &'static str) {
        use base64::Engine as _;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.client_id, self.client_secret))
        );
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(expected.as_str())
        {
            let body = Json(serde_json::json!({"error": "invalid_client"}));
            return (
                (StatusCode::UNAUTHORIZED, body).into_response(),
                "unauthorized",
            );
        }
        let form = String::from_utf8_lossy(body);
        if !form
            .split('&')
            .any(|pair| pair == "grant_type=client_credentials")
        {
            let body = Json(serde_json::json!({"error": "unsupported_grant_type"}));
            return ((StatusCode::BAD_REQUEST, body).into_response(), "invalid");
        }
        let token = format!("tok-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        if let Ok(mut issued) = self.issued.lock() {
            issued.insert(token.clone(), tokio::time::Instant::now() + self.lifetime);
        }
        let body = Json(serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.lifetime.as_secs(),
        }));
        (body.into_response(), "token_issued")
    }

    /// True when the request carries a bearer token issued here and not yet expired.
    pub fn valid(&self, headers: &axum::http::HeaderMap) -> bool {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.issued
            .lock()
            .map(|t| {
                t.get(token)
                    .is_some_and(|exp| tokio::time::Instant::now() < *exp)
            })
            .unwrap_or(false)
    }

    /// Expires every token (the gateway restarted or rotated its keys).
    pub fn revoke(&self) {
        if let Ok(mut issued) = self.issued.lock() {
            issued.clear();
        }
    }
}

/// One request as it arrived on the wire.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    /// The raw query string, `""` when there is none.
    pub query: String,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Answer = Arc<dyn Fn(&Captured) -> (u16, String) + Send + Sync>;

/// A loopback server that records every request byte for byte and answers what `answer` says: for
/// tests that compare what a client puts on the wire with a hand-written fixture.
pub struct Capture {
    requests: Arc<Mutex<Vec<Captured>>>,
    running: Running,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("addr", &self.running.addr)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// Starts on `127.0.0.1:0`. The answer's body is sent as XML when it starts with `<`, else as JSON.
    pub async fn start(
        answer: impl Fn(&Captured) -> (u16, String) + Send + Sync + 'static,
    ) -> Capture {
        let requests: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let answer: Answer = Arc::new(answer);
        let state = (requests.clone(), answer);
        let router = Router::new()
            .fallback(
                |State((requests, answer)): State<(Arc<Mutex<Vec<Captured>>>, Answer)>,
                 request: axum::extract::Request| async move {
                    let (parts, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, 16 << 20)
                        .await
                        .map(|b| b.to_vec())
                        .unwrap_or_default();
                    let captured = Captured {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_owned(),
                        query: parts.uri.query().unwrap_or("").to_owned(),
                        headers: parts.headers,
                        body,
                    };
                    let (status, text) = answer(&captured);
                    if let Ok(mut r) = requests.lock() {
                        r.push(captured);
                    }
                    let content_type = if text.starts_with('<') {
                        "text/xml; charset=utf-8"
                    } else {
                        "application/json"
                    };
                    (
                        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                        [(header::CONTENT_TYPE, content_type)],
                        text,
                    )
                        .into_response()
                },
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let running = serve(listener, router).expect("serve");
        Capture { requests, running }
    }

    pub fn base_url(&self) -> String {
        self.running.base_url()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Captured> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}
