//! The ops listener: liveness, readiness, metrics and the status dashboard, on an address of its own so
//! that operators never share the portal's port.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use crate::queue::Queue;
pub(crate) mod dashboard;
pub(crate) mod session;

use crate::queue::worker::{LaneBoard, LaneState};

#[derive(Debug, Clone)]
pub(crate) struct OpsState {
    pub queue: Queue,
    pub board: LaneBoard,
    /// Lanes the application started; readiness needs each one's worker reporting.
    pub lanes: Vec<String>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub store_path: std::path::PathBuf,
    pub tokens: std::sync::Arc<crate::api::auth::Tokens>,
    pub history: std::sync::Arc<dashboard::History>,
    /// For the dashboard's per-target dossier sync state.
    pub flows: Option<crate::flows::Flows>,
    /// Dashboard sign-ins.
    pub sessions: std::sync::Arc<session::Sessions>,
    /// Failed authentications per client address, shared with the API.
    pub auth_failures: std::sync::Arc<crate::api::auth::AuthFailures>,
    /// The listener serves TLS: the session cookie is `Secure`.
    pub secure: bool,
    /// The listener is not on loopback: reading the dashboard needs sign-in too.
    pub public: bool,
    /// The audit log of population lookups, where lookups can happen.
    pub audit: Option<std::sync::Arc<crate::audit::AuditLog>>,
}

pub(crate) fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard::page))
        .route("/login", axum::routing::post(dashboard::login))
        .route("/logout", axum::routing::post(dashboard::logout))
        .route("/jobs/{id}/{action}", axum::routing::post(dashboard::act))
        .with_state(state)
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                session::protect(response.headers_mut());
                response
            },
        ))
}

/// OpenMetrics for scrapers that ask for it, the classic text format otherwise.
async fn metrics(
    State(state): State<OpsState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let body = state
        .metrics
        .render(&state.queue, &state.board, &state.store_path)
        .await;
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
    } else {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::classic_text(&body),
        )
    }
}

/// Ready when the store takes a durable write and every lane's worker is running (paused counts as
/// running: it is deliberate, and reported).
async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    // An empty lease-expiry pass is a real write transaction through the writer: it proves the store
    // is open and the disk takes a commit.
    let store = state.queue.expire_leases(0).await;
    let lanes = state.board.snapshot();
    let workers_ok = state.lanes.iter().all(|lane| {
        lanes
            .get(lane)
            .is_some_and(|s| s.state != LaneState::Stopped)
    });
    let ready = store.is_ok() && workers_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": {
            "backend": state.queue.store().backend(),
            "writable": store.is_ok(),
            "error": store.err().map(|e| e.to_string()),
        },
        "lanes": lanes,
    });
    let mut body = body;
    if let Some(audit) = &state.audit {
        // Lookups are made only once their audit line is written: while it cannot be, the population
        // lane is paused (reason `audit_unavailable`) and this says why.
        body["audit"] = json!({ "writable": audit.writable() });
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
