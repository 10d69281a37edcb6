//! Job inspection and repair for operators (scope `admin`): list with filters and a cursor, show one,
//! retry a dead letter, discard, and replay dead letters in bulk.
//!
//! A job is shown without its payload (which may hold personal data); error messages were masked by the
//! adapters and are masked again here, so a long digit run never leaves the connector.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use super::auth::Admin;
use super::idempotency;
use super::problem::{ApiError, Code, Lang};
use crate::queue::{AdminOutcome, Job, JobFilter, JobId, JobState};
use crate::timefmt::rfc3339;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
const REPLAY_BATCH: usize = 500;

#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub class: &'static str,
    pub code: String,
    pub message: String,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub dossier_code: String,
    pub state: &'static str,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorView>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        JobView {
            id: job.id.to_string(),
            kind: job.kind.clone(),
            target: job.lane.clone(),
            dossier_code: job.ordering_key.clone(),
            state: job.state.as_str(),
            attempts: job.attempts,
            next_attempt_at: (job.state == JobState::Ready).then(|| rfc3339(job.next_attempt_at)),
            dead_reason: job.dead_reason.map(|r| r.as_str()),
            last_error: job.last_error.as_ref().map(|e| ErrorView {
                class: e.class.as_str(),
                code: e.code.clone(),
                message: dvc_upstream::http::mask_digit_runs(&e.message),
                at: rfc3339(e.at),
            }),
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            finished_at: job.finished_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The parameters of `GET /v1/jobs`; `replay` takes the filters and `all`.
const LIST_PARAMS: [&str; 7] = [
    "state",
    "kind",
    "target",
    "dossier_code",
    "limit",
    "cursor",
    "order",
];
const REPLAY_PARAMS: [&str; 5] = ["state", "kind", "target", "dossier_code", "all"];

/// Parses the shared filters; every problem is reported with its parameter. An empty value is
/// refused like any other invalid one.
async fn filter(
    state: &ApiState,
    params: &HashMap<String, String>,
    known: &[&str],
    lang: Lang,
) -> Result<(JobFilter, usize, Option<JobId>), ApiError> {
    let mut error = ApiError::new(Code::InvalidQuery, lang);
    for key in params.keys() {
        if !known.contains(&key.as_str()) {
            error = error.field(
                key,
                "unknown_parameter",
                format!("expected one of {}", known.join(", ")),
            );
        }
    }
    for (key, value) in params {
        if known.contains(&key.as_str()) && value.is_empty() {
            error = error.field(key, "invalid_value", "must not be empty");
        }
    }
    let state_filter = match params.get("state").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => JobState::parse(s).or_else(|| {
            error = error.clone().field(
                "state",
                "invalid_value",
                "expected ready, leased, done, dead or discarded",
            );
            None
        }),
    };
    let limit = match params.get("limit").filter(|l| !l.is_empty()) {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                error = error.field(
                    "limit",
                    "invalid_value",
                    format!("expected an integer from 1 to {MAX_LIMIT}"),
                );
                DEFAULT_LIMIT
            }
        },
    };
    let cursor = match params.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => JobId::from_string(c).ok().or_else(|| {
            error = error.clone().field(
                "cursor",
                "invalid_value",
                "expected the next_cursor of a previous page",
            );
            None
        }),
    };
    let newest_first = match params.get("order").map(String::as_str) {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(_) => {
            error = error
                .clone()
                .field("order", "invalid_value", "expected oldest or newest");
            false
        }
    };
    if let Some(code) = params.get("dossier_code").filter(|c| !c.is_empty())
        && !crate::flows::dossier::valid_code(code)
    {
        error = error.field(
            "dossier_code",
            "invalid_dossier_code",
            "1 to 64 of A-Z a-z 0-9 . _ -",
        );
    }
    if !error.errors.is_empty() {
        return Err(error);
    }
    let non_empty = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    let dossier = match non_empty("dossier_code") {
        None => None,
        Some(code) => Some(
            crate::flows::identity::dossier_jobs(&state.queue, &code)
                .await
                .map_err(|e| ApiError::store(&e, lang))?,
        ),
    };
    Ok((
        JobFilter {
            state: state_filter,
            kind: non_empty("kind"),
            lane: non_empty("target"),
            dossier,
            newest_first,
        },
        limit,
        cursor,
    ))
}

fn job_id(text: &str, lang: Lang) -> Result<JobId, ApiError> {
    JobId::from_string(text).map_err(|_| {
        ApiError::new(Code::InvalidJobId, lang).field(
            "id",
            "invalid_value",
            "expected a 26-character ULID",
        )
    })
}

pub async fn list(
    State(state): State<Arc<ApiState>>,
    _: Admin,
    lang: Lang,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<JobList>, ApiError> {
    let (filter, limit, cursor) = filter(&state, &params, &LIST_PARAMS, lang).await?;
    let jobs = state
        .queue
        .list(filter, cursor, limit)
        .await
        .map_err(|e| ApiError::store(&e, lang))?;
    let next_cursor = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| j.id.to_string()))
        .flatten();
    Ok(Json(JobList {
        jobs: jobs.iter().map(JobView::from).collect(),
        next_cursor,
    }))
}

pub async fn show(
    State(state): State<Arc<ApiState>>,
    _: Admin,
    lang: Lang,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id, lang)?;
    match state
        .queue
        .get(id)
        .await
        .map_err(|e| ApiError::store(&e, lang))?
    {
        Some(job) => Ok(Json(JobView::from(&job))),
        None => Err(ApiError::new(Code::NotFound, lang)),
    }
}

async fn act(
    state: &ApiState,
    id: &str,
    lang: Lang,
    action: &str,
    caller: &str,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(id, lang)?;
    let outcome = match action {
        "retry" => state.queue.retry(id).await,
        _ => state.queue.discard(id).await,
    }
    .map_err(|e| ApiError::store(&e, lang))?;
    match outcome {
        AdminOutcome::Applied => {
            tracing::info!(job_id = %id, action, by = caller, "operator action on a job");
            let job = state
                .queue
                .get(id)
                .await
                .map_err(|e| ApiError::store(&e, lang))?;
            job.map(|j| Json(JobView::from(&j)))
                .ok_or_else(|| ApiError::new(Code::NotFound, lang))
        }
        AdminOutcome::NotFound => Err(ApiError::new(Code::NotFound, lang)),
        AdminOutcome::WrongState(current) => Err(ApiError::new(Code::WrongState, lang).field(
            "state",
            current.as_str(),
            match action {
                "retry" => "only a dead job can be retried",
                _ => "only a ready or dead job can be discarded",
            },
        )),
    }
}

pub async fn retry(
    State(state): State<Arc<ApiState>>,
    Admin(caller): Admin,
    lang: Lang,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    act(&state, &id, lang, "retry", &caller.name).await
}

pub async fn discard(
    State(state): State<Arc<ApiState>>,
    Admin(caller): Admin,
    lang: Lang,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    act(&state, &id, lang, "discard", &caller.name).await
}

/// Requeues every dead job matching the filters (state, if given, must be `dead`). Filters come only as
/// query parameters; a body is refused (a client that put its filters there would otherwise requeue
/// every dead job), and a replay of everything must say `all=true`. An `Idempotency-Key` is checked
/// like on every POST, and a repeated key answers the first replay's count.
pub async fn replay(
    State(state): State<Arc<ApiState>>,
    Admin(caller): Admin,
    lang: Lang,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !body.is_empty() {
        return Err(ApiError::new(Code::InvalidQuery, lang).field(
            "body",
            "unexpected_body",
            "replay takes its filters as query parameters (state, kind, target, dossier_code, all); send no body",
        ));
    }
    let query = query.unwrap_or_default();
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let (filter, _, _) = filter(&state, &params, &REPLAY_PARAMS, lang).await?;
    let all = match params.get("all").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::new(Code::InvalidQuery, lang).field(
                "all",
                "invalid_value",
                "expected true or false",
            ));
        }
    };
    if filter.state.is_some_and(|s| s != JobState::Dead) {
        return Err(ApiError::new(Code::InvalidQuery, lang).field(
            "state",
            "invalid_value",
            "only dead jobs are replayed",
        ));
    }
    // `state=dead` alone narrows nothing: replay only ever takes dead jobs.
    let narrowed = filter.kind.is_some() || filter.lane.is_some() || filter.dossier.is_some();
    if !narrowed && !all {
        return Err(ApiError::new(Code::InvalidQuery, lang).field(
            "all",
            "required",
            "no filter given: say all=true to requeue every dead job",
        ));
    }
    let route = format!("POST /v1/jobs/replay?{query}");
    let idem = match idempotency::claim(&state, &caller.name, &headers, &route, &body, lang).await?
    {
        idempotency::Claim::Replay(response) => return Ok(response),
        idempotency::Claim::Fresh(idem) => idem,
    };
    let mut requeued = 0;
    loop {
        let n = state
            .queue
            .replay(filter.clone(), REPLAY_BATCH)
            .await
            .map_err(|e| ApiError::store(&e, lang))?;
        requeued += n;
        if n < REPLAY_BATCH {
            break;
        }
    }
    tracing::info!(requeued, by = %caller.name, "operator replayed dead jobs");
    let answer = serde_json::json!({ "requeued": requeued });
    if let Some(idem) = &idem {
        idem.update(&state, StatusCode::OK, &answer).await;
    }
    Ok((StatusCode::OK, Json(answer)).into_response())
}
