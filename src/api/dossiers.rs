//! `PUT /v1/dossiers/{code}`, `POST /v1/dossiers/{code}/events`, `GET /v1/dossiers/{code}`.
//!
//! A record or step is checked and mapped for every configured portal target (status words through
//! each target's table), then committed with one job per target: 202.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Portal;
use super::idempotency::{self, Claim};
use super::json::StrictJsonBytes;
use super::problem::{ApiError, Code, Lang};
use super::{ApiState, flow_error, flows_of, invalid_fields};
use crate::flows::dossier;

fn code_of(code: &str, lang: Lang) -> Result<(), ApiError> {
    if dossier::valid_code(code) {
        Ok(())
    } else {
        Err(ApiError::new(Code::InvalidDossierCode, lang))
    }
}

pub(crate) async fn put_record(
    State(state): State<Arc<ApiState>>,
    Portal(caller): Portal,
    lang: Lang,
    headers: HeaderMap,
    Path(code): Path<String>,
    StrictJsonBytes(input, raw): StrictJsonBytes<dossier::RecordInput>,
) -> Result<Response, ApiError> {
    code_of(&code, lang)?;
    let flows = flows_of(&state, lang)?;
    if flows.ctx.clients.portal.is_empty() {
        return Err(ApiError::new(Code::UpstreamNotConfigured, lang));
    }
    let route = format!("PUT /v1/dossiers/{code}");
    let idem = match idempotency::claim(&state, &caller.name, &headers, &route, &raw, lang).await? {
        Claim::Replay(r) => return Ok(r),
        Claim::Fresh(idem) => idem,
    };
    let records = dossier::check_record(flows, &code, &input)
        .map_err(|faults| invalid_fields(Code::ValidationFailed, &faults, lang))?;
    let targets: Vec<&String> = records.keys().collect();
    let body = json!({ "dossier_code": code, "targets": targets, "status": "queued" });
    let (code, records, body) = (&code, &records, &body);
    idempotency::commit_planned(&state, lang, idem.as_ref(), move || async move {
        let change = dossier::plan_record(flows, code, records)
            .await
            .map_err(|e| flow_error(e, lang))?;
        Ok((change, StatusCode::ACCEPTED, body.clone()))
    })
    .await
}

pub(crate) async fn post_event(
    State(state): State<Arc<ApiState>>,
    Portal(caller): Portal,
    lang: Lang,
    headers: HeaderMap,
    Path(code): Path<String>,
    StrictJsonBytes(input, raw): StrictJsonBytes<dossier::EventInput>,
) -> Result<Response, ApiError> {
    code_of(&code, lang)?;
    let flows = flows_of(&state, lang)?;
    if flows.ctx.clients.portal.is_empty() {
        return Err(ApiError::new(Code::UpstreamNotConfigured, lang));
    }
    let route = format!("POST /v1/dossiers/{code}/events");
    let idem = match idempotency::claim(&state, &caller.name, &headers, &route, &raw, lang).await? {
        Claim::Replay(r) => return Ok(r),
        Claim::Fresh(idem) => idem,
    };
    let steps = dossier::check_event(flows, &code, &input)
        .map_err(|faults| invalid_fields(Code::ValidationFailed, &faults, lang))?;
    let (code, steps) = (&code, &steps);
    idempotency::commit_planned(&state, lang, idem.as_ref(), move || async move {
        let mut change = Default::default();
        let (event_id, sequence) = dossier::plan_event(flows, &mut change, code, steps)
            .await
            .map_err(|e| flow_error(e, lang))?;
        let body = json!({ "event_id": event_id, "sequence": sequence });
        Ok((change, StatusCode::ACCEPTED, body))
    })
    .await
}

pub(crate) async fn show(
    State(state): State<Arc<ApiState>>,
    _: Portal,
    lang: Lang,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    code_of(&code, lang)?;
    let flows = flows_of(&state, lang)?;
    match dossier::view(flows, &code)
        .await
        .map_err(|e| flow_error(e, lang))?
    {
        Some(targets) => {
            Ok(Json(json!({ "dossier_code": code, "targets": targets })).into_response())
        }
        None => Err(ApiError::new(Code::NotFound, lang)),
    }
}
