//! The sidecar API the portal calls (docs/API.md), one file per resource:
//! `jobs` (operators). Errors go through [`problem`] (problem+json, stable codes, en/vi); callers through
//! [`auth`] (hashed bearer tokens, scopes). The portal-facing resources (identity, shipments, dossiers)
//! arrive with the flows.

pub mod auth;
mod dossiers;
mod idempotency;
mod identity;
mod jobs;
pub mod json;
pub mod openapi;
pub mod problem;
mod shipments;

use std::borrow::Cow;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use self::auth::Tokens;
use self::problem::{ApiError, Code, Lang};
use crate::queue::Queue;

#[derive(Debug)]
pub struct ApiState {
    pub queue: Queue,
    pub tokens: Arc<Tokens>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The flows behind the portal's resources (None in tests of the admin API alone).
    pub flows: Option<crate::flows::Flows>,
    /// Per-token request rate limit (None: no limit).
    pub limiter: Option<auth::RateLimiter>,
    /// Failed authentications per client address (shared with the dashboard's sign-in).
    pub auth_failures: Arc<auth::AuthFailures>,
    /// Keys the stored Idempotency-Keys (`StoreSettings::record_key`).
    pub record_key: [u8; 32],
}

pub(crate) use jobs::JobView;

pub(crate) fn router(state: ApiState, body_limit: usize) -> Router {
    let routes: [(&'static str, MethodRouter<Arc<ApiState>>); 13] = [
        ("/v1/openapi.json", get(openapi_document)),
        ("/v1/identity/verifications", post(identity::create)),
        ("/v1/identity/verifications/{id}", get(identity::show)),
        ("/v1/shipments", post(shipments::create)),
        ("/v1/shipments/{id}", get(shipments::show)),
        ("/v1/shipments/{id}/cancel", post(shipments::cancel)),
        (
            "/v1/dossiers/{code}",
            get(dossiers::show).put(dossiers::put_record),
        ),
        ("/v1/dossiers/{code}/events", post(dossiers::post_event)),
        ("/v1/jobs", get(jobs::list)),
        ("/v1/jobs/replay", post(jobs::replay)),
        ("/v1/jobs/{id}", get(jobs::show)),
        ("/v1/jobs/{id}/retry", post(jobs::retry)),
        ("/v1/jobs/{id}/discard", post(jobs::discard)),
    ];
    let counting = state.metrics.clone().map(|metrics| {
        Arc::new(Counting {
            metrics,
            templates: routes.iter().map(|(path, _)| *path).collect(),
        })
    });
    let mut api = Router::new();
    for (path, methods) in routes {
        api = api.route(path, methods);
    }
    api.fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            around(counting.clone(), req, next)
        }))
        .with_state(Arc::new(state))
}

/// What [`around`] counts requests with: the metrics, and the router's route templates, which a
/// request's labels borrow instead of copying.
#[derive(Debug)]
struct Counting {
    metrics: Arc<crate::metrics::Metrics>,
    templates: Vec<&'static str>,
}

/// What every answer goes through, in one middleware (each layer would cost every request a boxed
/// future and a clone of the service):
/// - `X-Request-Id`: the caller's own (up to 128 of `A–Z a–z 0–9 . _ -`) or a fresh ULID, so support
///   can find a request in the logs, where its handling runs in a span with that id;
/// - answers that axum produces itself (405, 413, 415, a failed extractor) become problem+json;
/// - a request that matched a route is counted by route template (never the concrete path, which
///   holds ids), method and status.
async fn around(
    counting: Option<Arc<Counting>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map_or_else(|| ulid::Ulid::new().to_string(), str::to_owned);
    let counted = counting.and_then(|c| {
        let route = req.extensions().get::<axum::extract::MatchedPath>()?;
        let route = template(&c.templates, route.as_str());
        Some((c, route, method_label(req.method())))
    });
    let started = std::time::Instant::now();
    let span = tracing::debug_span!("request", request_id = %id);
    let mut response = as_problem(tracing::Instrument::instrument(next.run(req), span).await);
    if let Some((c, route, method)) = counted {
        let m = &c.metrics;
        let labels = crate::metrics::RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        };
        m.api_requests.get_or_create(&labels).inc();
        m.api_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// `route` as a label: borrowed from the router's `templates`, or a copy of a template it does not
/// know (none today: every matched path is one of them).
fn template(templates: &[&'static str], route: &str) -> Cow<'static, str> {
    templates
        .iter()
        .find(|t| **t == route)
        .map_or_else(|| Cow::Owned(route.to_owned()), |t| Cow::Borrowed(*t))
}

/// The method as a label, borrowed for the methods the API serves.
fn method_label(method: &axum::http::Method) -> Cow<'static, str> {
    use axum::http::Method;
    match *method {
        Method::GET => Cow::Borrowed("GET"),
        Method::POST => Cow::Borrowed("POST"),
        Method::PUT => Cow::Borrowed("PUT"),
        Method::DELETE => Cow::Borrowed("DELETE"),
        Method::HEAD => Cow::Borrowed("HEAD"),
        _ => Cow::Owned(method.as_str().to_owned()),
    }
}

/// The API's OpenAPI document, for any authenticated caller (no anonymous access, as everywhere).
async fn openapi_document(_: auth::Caller) -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

/// The flows, or 503 when this API was built without them.
pub(crate) fn flows_of(state: &ApiState, lang: Lang) -> Result<&crate::flows::Flows, ApiError> {
    state
        .flows
        .as_ref()
        .ok_or_else(|| ApiError::new(Code::UpstreamNotConfigured, lang))
}

/// A flow's failure as the API answers it: the store's as 503, anything else as 500 (detail logged).
pub(crate) fn flow_error(e: crate::flows::FlowError, lang: Lang) -> ApiError {
    match e {
        crate::flows::FlowError::Store(s) => ApiError::store(&s, lang),
        crate::flows::FlowError::Contended(_) => ApiError::store(
            &crate::queue::StoreError::Io("record contended".into()),
            lang,
        ),
        other => {
            tracing::error!(error = %other, "flow error");
            ApiError::new(Code::Internal, lang)
        }
    }
}

/// Field faults as a problem answer.
pub(crate) fn invalid_fields(
    code: Code,
    faults: &[crate::flows::identity::Invalid],
    lang: Lang,
) -> ApiError {
    faults.iter().fold(ApiError::new(code, lang), |e, f| {
        e.field(f.field, f.code, f.message.clone())
    })
}

async fn not_found(lang: Lang) -> ApiError {
    ApiError::new(Code::NotFound, lang)
}

/// Answers that axum produces itself (405, 413, 415, a failed extractor) become problem+json too.
fn as_problem(response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem || response.status().is_success() {
        return response;
    }
    let code = match response.status() {
        StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => Code::BodyTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
        StatusCode::NOT_FOUND => Code::NotFound,
        s if s.is_client_error() => Code::InvalidQuery,
        s if s.is_server_error() => Code::Internal,
        _ => return response,
    };
    ApiError::new(code, Lang::En).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sha2::Digest;

    use super::*;
    use crate::queue::kv::{CrashAction, CrashPlan, CrashPoint};
    use crate::queue::{Backend, KvJobStore, KvOptions, NewJob, RetryPolicies, TokioClock};
    use crate::settings::{Scope, TokenSettings};

    /// The admin API alone (no flows) over `queue`, with the admin token "t". Answers its address.
    async fn serve_admin_api(
        queue: Queue,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> std::net::SocketAddr {
        crate::tls::install_crypto_provider();
        let tokens = Tokens::new(vec![TokenSettings {
            name: "ops".into(),
            sha256: sha2::Sha256::digest(b"t").into(),
            scopes: [Scope::Admin].into_iter().collect(),
        }]);
        let app = router(
            ApiState {
                queue,
                tokens: Arc::new(tokens),
                metrics,
                flows: None,
                limiter: None,
                auth_failures: Arc::default(),
                record_key: [0x5a; 32],
            },
            1024,
        );
        serve(app).await
    }

    /// Serves `app` on a loopback port of its own; answers the address.
    async fn serve(app: Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn a_store_that_cannot_write_answers_503_problem_json_and_never_200() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KvJobStore::open(
            dir.path(),
            Backend::Redb,
            KvOptions {
                crash: Some(CrashPlan::new(
                    CrashPoint::BeforeCommit,
                    2,
                    CrashAction::Halt,
                )),
                ..Default::default()
            },
        )
        .expect("store");
        let queue = Queue::new(
            Arc::new(store),
            Arc::new(TokioClock::new()),
            RetryPolicies::default(),
            Duration::from_secs(60),
        );
        let id = queue
            .enqueue(NewJob::new("k", "l", "key", vec![]))
            .await
            .expect("first commit")
            .id;
        let addr = serve_admin_api(queue, None).await;
        // The second commit halts the writer, as a failing disk would.
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/jobs/{id}/discard"))
            .bearer_auth("t")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("5")
        );
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["code"], "store_unavailable");
        assert!(
            !body.to_string().contains("Closed"),
            "no internal error text: {body}"
        );
    }

    #[tokio::test]
    async fn every_answer_carries_a_request_id_and_matched_routes_are_counted_by_their_template() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let addr = serve_admin_api(open_queue(dir.path(), None), Some(metrics.clone())).await;
        let client = reqwest::Client::new();
        let request_id = |r: &reqwest::Response| {
            r.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let is_problem = |r: &reqwest::Response| {
            r.headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
        };

        let send = async |method: reqwest::Method, path: &str, id: Option<&str>| {
            let mut request = client
                .request(method, format!("http://{addr}{path}"))
                .bearer_auth("t");
            if let Some(id) = id {
                request = request.header("x-request-id", id);
            }
            request.send().await.expect("request")
        };

        // A matched route keeps the caller's id.
        let r = send(reqwest::Method::GET, "/v1/jobs", Some("support-42")).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(request_id(&r).as_deref(), Some("support-42"));
        // An id that is not acceptable is replaced by a fresh ULID.
        let r = send(
            reqwest::Method::GET,
            "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
            Some("not an id!"),
        )
        .await;
        assert_eq!(r.status().as_u16(), 404);
        let fresh = request_id(&r).expect("an id");
        assert!(fresh.parse::<ulid::Ulid>().is_ok(), "{fresh}");
        // No route: a problem+json 404 with an id, and not counted (the path is not a label).
        let r = send(
            reqwest::Method::GET,
            "/v1/dossiers-H56-000123/unknown",
            None,
        )
        .await;
        assert_eq!(r.status().as_u16(), 404);
        assert!(is_problem(&r));
        assert!(request_id(&r).is_some());
        // axum's own 405 on a matched path: rewritten as problem+json, counted under the template.
        let r = send(reqwest::Method::DELETE, "/v1/jobs", None).await;
        assert_eq!(r.status().as_u16(), 405);
        assert!(is_problem(&r));
        assert!(request_id(&r).is_some());

        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("api_requests", "", metrics.api_requests.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            r#"api_requests_total{route="/v1/jobs",method="GET",status="200"} 1"#,
            r#"api_requests_total{route="/v1/jobs/{id}",method="GET",status="404"} 1"#,
            r#"api_requests_total{route="/v1/jobs",method="DELETE",status="405"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("api_requests_total{").count(), 3, "{text}");
        assert!(
            !text.contains("H56-000123") && !text.contains("01ARZ3"),
            "{text}"
        );
    }

    #[test]
    fn a_route_label_borrows_the_routers_template_and_copies_anything_else() {
        let templates = ["/v1/jobs", "/v1/jobs/{id}"];
        assert!(matches!(
            template(&templates, "/v1/jobs/{id}"),
            Cow::Borrowed("/v1/jobs/{id}")
        ));
        assert!(matches!(
            template(&templates, "/v1/other"),
            Cow::Owned(ref s) if s == "/v1/other"
        ));
        assert!(matches!(
            method_label(&axum::http::Method::PUT),
            Cow::Borrowed("PUT")
        ));
        assert!(matches!(
            method_label(&axum::http::Method::PATCH),
            Cow::Owned(ref s) if s == "PATCH"
        ));
    }

    fn open_queue(dir: &std::path::Path, crash: Option<CrashPlan>) -> Queue {
        Queue::new(
            Arc::new(
                KvJobStore::open(
                    dir,
                    Backend::Redb,
                    KvOptions {
                        crash,
                        ..Default::default()
                    },
                )
                .expect("store"),
            ),
            Arc::new(TokioClock::new()),
            RetryPolicies::default(),
            Duration::from_secs(60),
        )
    }

    /// The API with the flows over `queue`, one portal target that is never reached (no workers run),
    /// and the portal token "test". Answers the address it serves on.
    async fn serve_portal_api(
        dir: &std::path::Path,
        queue: &Queue,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        crate::tls::install_crypto_provider();
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            r#"
[store]
path = "unused"
encryption = "off"
[[api.tokens]]
name = "portal"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
scopes = ["portal"]
[upstreams]
allow_insecure_http = true
[upstreams.portal.national]
base_url = "http://127.0.0.1:9"
username = "u"
password = "p"
agency_code = "A"
[upstreams.population]
service_url = "http://127.0.0.1:9/soap"
token_url = "http://127.0.0.1:9/token"
client_id = "c"
client_secret = "s"
"#,
        )
        .expect("config");
        let settings = crate::settings::load(&config, std::iter::empty()).expect("settings");
        let clients = crate::upstreams::build(&settings.upstreams).expect("clients");
        let flows = crate::flows::Flows::new(queue.clone(), clients, settings.clone());
        let app = router(
            ApiState {
                queue: queue.clone(),
                tokens: Arc::new(Tokens::new(settings.api.tokens.clone())),
                metrics: None,
                flows: Some(flows),
                limiter: None,
                auth_failures: Arc::default(),
                record_key: [0x5a; 32],
            },
            1 << 20,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, server)
    }

    #[tokio::test]
    async fn dossier_state_an_earlier_build_wrote_in_json_carries_on_and_is_rewritten_in_binary() {
        use crate::queue::{Change, Expect, RecordWrite};
        use serde_json::json;
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = open_queue(&dir.path().join("store"), None);
        // What a build before the binary state records left: four steps sent, the record synced.
        let seed = |collection, key: &str, json: &str| {
            RecordWrite::put(collection, key, Expect::Absent, json.as_bytes().to_vec())
        };
        queue
            .commit(Change {
                writes: vec![
                    seed(
                        "dossier",
                        "H56-0002",
                        r#"{"code":"H56-0002","next_sequence":5,"updated_at":1795000000000}"#,
                    ),
                    seed(
                        "dossier_target",
                        "H56-0002\u{1f}national",
                        r#"{"record_synced":true,"known_at_portal":true,"last_synced_status":4,"synced_at":"2026-12-01T08:00:00Z","held":[],"records_synced":1,"steps_synced":4}"#,
                    ),
                ],
                jobs: vec![],
            })
            .await
            .expect("seed");
        let (addr, server) = serve_portal_api(dir.path(), &queue).await;
        let client = reqwest::Client::new();
        // Posts a step and answers the sequence it was given.
        let post_event = |occurred_at: &'static str| {
            let request = client
                .post(format!("http://{addr}/v1/dossiers/H56-0002/events"))
                .bearer_auth("test")
                .json(&serde_json::json!({
                    "status": "processing", "occurred_at": occurred_at,
                    "handler": "Cán bộ A", "content": "Thẩm định"
                }));
            async move {
                let response = request.send().await.expect("request");
                assert_eq!(response.status().as_u16(), 202);
                let body: serde_json::Value = response.json().await.expect("json");
                body["sequence"].clone()
            }
        };
        assert_eq!(post_event("2026-12-07T09:00:00+07:00").await, 5);
        let view: serde_json::Value = client
            .get(format!("http://{addr}/v1/dossiers/H56-0002"))
            .bearer_auth("test")
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        let national = &view["targets"][0];
        let fields = [
            "target",
            "steps_synced",
            "records_synced",
            "last_synced_status",
            "pending",
        ];
        assert_eq!(
            fields.map(|f| national[f].clone()),
            [json!("national"), json!(4), json!(1), json!(4), json!(1)],
            "{view}"
        );
        // The dossier's state was written back, in binary now, with the next sequence after it.
        let stored = queue
            .record("dossier", "H56-0002")
            .await
            .expect("read")
            .expect("record");
        assert_eq!(stored.value.first(), Some(&1), "{:?}", stored.value);
        assert_eq!(post_event("2026-12-07T10:00:00+07:00").await, 6);
        server.abort();
        let _ = server.await;
    }

    #[tokio::test]
    async fn a_portal_request_the_store_cannot_write_answers_503_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_dir = dir.path().join("store");
        // The first commit fails as a failing disk would.
        let queue = open_queue(
            &store_dir,
            Some(CrashPlan::new(
                CrashPoint::BeforeCommit,
                1,
                CrashAction::Halt,
            )),
        );
        let (addr, server) = serve_portal_api(dir.path(), &queue).await;
        let response = reqwest::Client::new()
            .put(format!("http://{addr}/v1/dossiers/H56-0001"))
            .bearer_auth("test")
            .json(&serde_json::json!({"procedure_code": "1.1", "status": "new"}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 503);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["code"], "store_unavailable");
        server.abort();
        let _ = server.await;
        drop(queue);
        // Reopened: no dossier record, no job.
        let queue = open_queue(&store_dir, None);
        assert_eq!(
            queue.record("dossier", "H56-0001").await.expect("read"),
            None
        );
        assert!(queue.counts().await.expect("counts").is_empty());
    }

    #[tokio::test]
    async fn a_commit_that_landed_but_was_never_answered_is_replayed_from_the_store_after_a_restart()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_dir = dir.path().join("store");
        let put = |addr: std::net::SocketAddr| {
            reqwest::Client::new()
                .put(format!("http://{addr}/v1/dossiers/H56-0001"))
                .bearer_auth("test")
                .header("idempotency-key", "replay-1")
                .json(&serde_json::json!({"procedure_code": "1.1", "status": "new"}))
                .send()
        };
        // The first commit reaches the disk and the store stops before anyone is answered, as a
        // process killed at that moment would.
        let queue = open_queue(
            &store_dir,
            Some(CrashPlan::new(
                CrashPoint::AfterCommit,
                1,
                CrashAction::Halt,
            )),
        );
        let (addr, server) = serve_portal_api(dir.path(), &queue).await;
        let first = put(addr).await.expect("request");
        assert_eq!(first.status().as_u16(), 503, "never acknowledged");
        server.abort();
        let _ = server.await;
        drop(queue);

        let queue = open_queue(&store_dir, None);
        let (addr, server) = serve_portal_api(dir.path(), &queue).await;
        let replay = put(addr).await.expect("request");
        assert_eq!(replay.status().as_u16(), 202);
        assert_eq!(
            replay
                .headers()
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok()),
            Some("true"),
            "the retry is answered from the stored, durable answer, not committed twice"
        );
        assert_eq!(
            queue
                .counts()
                .await
                .expect("counts")
                .iter()
                .map(|c| c.ready)
                .sum::<u64>(),
            1,
            "one dossier job, not two"
        );
        server.abort();
        let _ = server.await;
    }

    #[tokio::test]
    async fn a_committed_verification_answers_202_pending_even_when_the_wait_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The verification's commit succeeds; the next one (marking it for a callback once the wait
        // has run out) fails as a failing disk would.
        let queue = open_queue(
            &dir.path().join("store"),
            Some(CrashPlan::new(
                CrashPoint::BeforeCommit,
                2,
                CrashAction::Halt,
            )),
        );
        let (addr, server) = serve_portal_api(dir.path(), &queue).await;
        let response = reqwest::Client::new()
            .post(format!(
                "http://{addr}/v1/identity/verifications?wait=200ms"
            ))
            .bearer_auth("test")
            .json(&serde_json::json!({
                "citizen_id": "083173316997", "full_name": "Võ Ngọc Trang",
                "date_of_birth": "1973-09-27", "gender": "female",
                "procedure_code": "1.001612", "officer_id": "CB-01"
            }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 202);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["status"], "pending", "{body}");
        let id = body["id"].as_str().expect("id");
        assert!(
            queue
                .record("verification", id)
                .await
                .expect("read")
                .is_some(),
            "the verification was committed"
        );
        server.abort();
        let _ = server.await;
    }

    #[tokio::test]
    async fn a_token_over_its_rate_gets_429_with_retry_after_and_others_are_not_affected() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::new(
            Arc::new(
                KvJobStore::open(dir.path(), Backend::Redb, KvOptions::default()).expect("store"),
            ),
            Arc::new(TokioClock::new()),
            RetryPolicies::default(),
            Duration::from_secs(60),
        );
        let token = |name: &str, secret: &str| TokenSettings {
            name: name.into(),
            sha256: sha2::Sha256::digest(secret.as_bytes()).into(),
            scopes: [Scope::Admin].into_iter().collect(),
        };
        let app = router(
            ApiState {
                queue,
                tokens: Arc::new(Tokens::new(vec![token("a", "ta"), token("b", "tb")])),
                metrics: None,
                flows: None,
                limiter: auth::RateLimiter::new(3),
                auth_failures: Arc::default(),
                record_key: [0x5a; 32],
            },
            1024,
        );
        let addr = serve(app).await;
        let client = reqwest::Client::new();
        let call = |secret: &'static str| {
            client
                .get(format!("http://{addr}/v1/jobs"))
                .bearer_auth(secret)
                .send()
        };
        let mut statuses = Vec::new();
        let mut limited = None;
        for _ in 0..10 {
            let r = call("ta").await.expect("request");
            statuses.push(r.status().as_u16());
            if r.status().as_u16() == 429 {
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                limited = Some((retry, r.json::<serde_json::Value>().await.expect("json")));
            }
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            3,
            "{statuses:?}"
        );
        let (retry, body) = limited.expect("a 429");
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(call("tb").await.expect("request").status().as_u16(), 200);
    }
}
