//! `POST /v1/shipments`, `GET /v1/shipments/{id}`, `POST /v1/shipments/{id}/cancel`.
//!
//! A new shipment answers 202 `{id, order_number, status: "queued"}`; a request whose natural key is
//! taken (the dossier's result delivery, or its active pickup) answers 200 with the existing shipment
//! and creates nothing.

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
use crate::flows::shipment;

pub(crate) async fn create(
    State(state): State<Arc<ApiState>>,
    Portal(caller): Portal,
    lang: Lang,
    headers: HeaderMap,
    StrictJsonBytes(req, raw): StrictJsonBytes<shipment::Request>,
) -> Result<Response, ApiError> {
    let flows = flows_of(&state, lang)?;
    if flows.ctx.clients.postal.is_none() {
        return Err(ApiError::new(Code::UpstreamNotConfigured, lang));
    }
    let idem = match idempotency::claim(
        &state,
        &caller.name,
        &headers,
        "POST /v1/shipments",
        &raw,
        lang,
    )
    .await?
    {
        Claim::Replay(r) => return Ok(r),
        Claim::Fresh(idem) => idem,
    };
    let checked = shipment::check(flows, &req)
        .map_err(|faults| invalid_fields(Code::ValidationFailed, &faults, lang))?;
    let checked = &checked;
    idempotency::commit_planned(&state, lang, idem.as_ref(), move || async move {
        let plan = shipment::plan(flows, checked)
            .await
            .map_err(|e| flow_error(e, lang))?;
        Ok(match plan {
            shipment::Plan::Existing(s) => (
                Default::default(),
                StatusCode::OK,
                serde_json::to_value(shipment::view(&s)).unwrap_or_default(),
            ),
            shipment::Plan::New(s, change) => (
                change,
                StatusCode::ACCEPTED,
                json!({ "id": s.id, "order_number": s.order_number, "status": s.status }),
            ),
        })
    })
    .await
}

pub(crate) async fn show(
    State(state): State<Arc<ApiState>>,
    _: Portal,
    lang: Lang,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let flows = flows_of(&state, lang)?;
    match shipment::get(flows, &id)
        .await
        .map_err(|e| flow_error(e, lang))?
    {
        Some(s) => Ok(Json(shipment::view(&s)).into_response()),
        None => Err(ApiError::new(Code::NotFound, lang)),
    }
}

pub(crate) async fn cancel(
    State(state): State<Arc<ApiState>>,
    Portal(caller): Portal,
    lang: Lang,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let flows = flows_of(&state, lang)?;
    let route = format!("POST /v1/shipments/{id}/cancel");
    let idem = match idempotency::claim(&state, &caller.name, &headers, &route, b"", lang).await? {
        Claim::Replay(r) => return Ok(r),
        Claim::Fresh(idem) => idem,
    };
    let id = &id;
    idempotency::commit_planned(&state, lang, idem.as_ref(), move || async move {
        let plan = shipment::plan_cancel(flows, id)
            .await
            .map_err(|e| flow_error(e, lang))?;
        let (s, change) = match plan {
            shipment::CancelPlan::NotFound => return Err(ApiError::new(Code::NotFound, lang)),
            shipment::CancelPlan::Final(s) if s.status == shipment::Status::Cancelled => {
                (s, Default::default())
            }
            shipment::CancelPlan::Final(_) => {
                return Err(ApiError::new(Code::ShipmentFinal, lang));
            }
            shipment::CancelPlan::Cancel(s, change) => (s, change),
        };
        let body = json!({ "id": s.id, "status": s.status, "cancel_requested": true });
        Ok((change, StatusCode::ACCEPTED, body))
    })
    .await
}
