//! `POST /v1/identity/verifications` and `GET /v1/identity/verifications/{id}`.
//!
//! Structural faults answer 422 before anything is stored or sent. A valid request is committed
//! (record + job) and the request waits up to `?wait=` (default 5 s, at most 30 s) for the verdict:
//! 200 with the verdict, or 202 `pending` and a callback later.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Portal;
use super::idempotency::{self, Claim, Outcome};
use super::json::StrictJsonBytes;
use super::problem::{ApiError, Code, Lang};
use super::{ApiState, flow_error, flows_of, invalid_fields};
use crate::flows::identity;

const DEFAULT_WAIT: Duration = Duration::from_secs(5);
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    wait: Option<String>,
}

fn wait_of(q: &WaitQuery, lang: Lang) -> Result<Duration, ApiError> {
    let Some(text) = &q.wait else {
        return Ok(DEFAULT_WAIT);
    };
    crate::settings::parse_duration(text)
        .ok()
        .filter(|d| *d <= MAX_WAIT)
        .ok_or_else(|| {
            ApiError::new(Code::InvalidQuery, lang).field(
                "wait",
                "invalid_wait",
                "a duration such as 500ms or 5s, at most 30s",
            )
        })
}

pub(crate) async fn create(
    State(state): State<Arc<ApiState>>,
    Portal(caller): Portal,
    lang: Lang,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
    StrictJsonBytes(req, raw): StrictJsonBytes<identity::Request>,
) -> Result<Response, ApiError> {
    let flows = flows_of(&state, lang)?;
    if flows.ctx.clients.population.is_none() {
        return Err(ApiError::new(Code::UpstreamNotConfigured, lang));
    }
    let wait = wait_of(&query, lang)?;
    let idem = match idempotency::claim(
        &state,
        &caller.name,
        &headers,
        "POST /v1/identity/verifications",
        &raw,
        lang,
    )
    .await?
    {
        Claim::Replay(r) => return Ok(r),
        Claim::Fresh(idem) => idem,
    };
    let checked = identity::check(
        &req,
        flows.ctx.settings.flows.identity.default_mode,
        &flows.ctx.record_key,
    )
    .map(|c| c.requested_by(&caller.name))
    .map_err(|faults| {
        if let Some(m) = &state.metrics {
            let mode = req.mode.as_deref().and_then(identity::Mode::parse);
            let mode = mode.unwrap_or(flows.ctx.settings.flows.identity.default_mode);
            m.verification(mode.as_str(), "rejected");
        }
        let code = if faults.iter().any(|f| f.field == "citizen_id") {
            Code::InvalidCitizenId
        } else {
            Code::ValidationFailed
        };
        invalid_fields(code, &faults, lang)
    })?;
    if let Some(hit) = identity::cached(flows, &checked)
        .await
        .map_err(|e| flow_error(e, lang))?
    {
        if let Some(m) = &state.metrics {
            m.verification(checked.mode().as_str(), "cached");
        }
        let body =
            serde_json::to_value(identity::view(&hit.verification, true)).unwrap_or_default();
        return match idempotency::commit(
            &state,
            lang,
            idem.as_ref(),
            Default::default(),
            StatusCode::OK,
            body,
        )
        .await?
        {
            Outcome::Applied(r) | Outcome::Replayed(r) => Ok(r),
            Outcome::Replan => Err(ApiError::new(Code::Internal, lang)),
        };
    }
    let id = checked.id().to_owned();
    // Registered before the job exists, so a fast verdict cannot be missed.
    let _ = flows.ctx.waiter(&id);
    let pending = json!({ "id": id, "status": "pending" });
    let change = identity::accept(flows, &checked);
    match idempotency::commit(
        &state,
        lang,
        idem.as_ref(),
        change,
        StatusCode::ACCEPTED,
        pending.clone(),
    )
    .await
    {
        Ok(Outcome::Applied(_)) => {}
        Ok(Outcome::Replayed(r)) => {
            flows.ctx.forget_waiter(&id);
            return Ok(r);
        }
        Ok(Outcome::Replan) => {
            flows.ctx.forget_waiter(&id);
            return Err(ApiError::new(Code::Internal, lang));
        }
        Err(e) => {
            flows.ctx.forget_waiter(&id);
            return Err(e);
        }
    }
    // The request is committed: whatever happens while waiting for the verdict, the answer is 202
    // `pending` (never 503, which would tell the portal nothing was accepted); the verdict is readable
    // at GET /v1/identity/verifications/{id}.
    let v = match identity::wait_for(flows, &id, wait).await {
        Ok(v) => v,
        Err(error) => {
            tracing::warn!(verification_id = %id, %error, "waiting for a verdict failed; answered pending");
            return Ok((StatusCode::ACCEPTED, Json(pending)).into_response());
        }
    };
    if v.is_final() {
        let body = serde_json::to_value(identity::view(&v, false)).unwrap_or_default();
        if let Some(idem) = &idem {
            idem.update(&state, StatusCode::OK, &body).await;
        }
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    Ok((StatusCode::ACCEPTED, Json(pending)).into_response())
}

pub(crate) async fn show(
    State(state): State<Arc<ApiState>>,
    _: Portal,
    lang: Lang,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let flows = flows_of(&state, lang)?;
    match identity::get(flows, &id)
        .await
        .map_err(|e| flow_error(e, lang))?
    {
        Some(v) => Ok(Json(identity::view(&v, false)).into_response()),
        None => Err(ApiError::new(Code::NotFound, lang)),
    }
}
