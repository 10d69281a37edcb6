//! `Idempotency-Key` on POST and PUT: the same key with the same request answers the original response
//! (status and body) for 24 hours; the same key with another request answers 409
//! `idempotency_key_reused`.
//!
//! The answer is stored as a record (`idempotency`, per caller and key) **in the same commit** as the
//! request's own records and jobs, claimed with `Expect::Absent`. So two concurrent requests with one
//! key cannot both be accepted: the second commit fails on the claim, and replays the first's answer.
//! Keys are scoped per token name, so two callers cannot see each other's answers, and stored as an
//! HMAC of name and key under the record key, never in clear.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ApiState;
use super::problem::{ApiError, Code, Lang};
use crate::queue::{Change, Committed, Expect, Millis, QueueError, RecordWrite};

pub(crate) const RECORDS: &str = "idempotency";
pub(crate) const HEADER: &str = "idempotency-key";
const KEEP_FOR: Millis = 24 * 3600 * 1000;
const MAX_KEY_LEN: usize = 128;

/// A request's idempotency claim: its record key and the fingerprint of the request.
#[derive(Debug, Clone)]
pub(crate) struct Idem {
    key: String,
    fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    fingerprint: String,
    status: u16,
    body: Value,
}

impl Idem {
    /// The claim of a request, if it carries the header. `route` names the operation (method and path),
    /// so one key reused on another resource is "another request".
    pub(crate) fn from_request(
        record_key: &[u8; 32],
        caller: &str,
        headers: &HeaderMap,
        route: &str,
        body: &[u8],
        lang: Lang,
    ) -> Result<Option<Idem>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=MAX_KEY_LEN).contains(&k.len()))
            .filter(|k| k.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .ok_or_else(|| ApiError::new(Code::InvalidIdempotencyKey, lang))?;
        let mut h = Sha256::new();
        h.update(route.as_bytes());
        h.update([0]);
        h.update(body);
        // The stored record key is a keyed hash of caller and key: a portal may well put a dossier code
        // or a citizen's number in its Idempotency-Key, and record keys are not encrypted at rest.
        let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(record_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        hmac::Mac::update(&mut mac, caller.as_bytes());
        hmac::Mac::update(&mut mac, &[0x1f]);
        hmac::Mac::update(&mut mac, key.as_bytes());
        Ok(Some(Idem {
            key: crate::hex::encode(&hmac::Mac::finalize(mac).into_bytes()),
            fingerprint: crate::hex::encode(&h.finalize()),
        }))
    }

    /// The stored answer for this key: Some(response) to replay, or 409 for another request.
    pub(crate) async fn replay(
        &self,
        state: &ApiState,
        lang: Lang,
    ) -> Result<Option<Response>, ApiError> {
        let record = state
            .queue
            .record(RECORDS, &self.key)
            .await
            .map_err(|e| ApiError::store(&e, lang))?;
        let Some(record) = record else {
            return Ok(None);
        };
        let stored: Stored = serde_json::from_slice(&record.value).map_err(|e| {
            tracing::error!(error = %e, "stored idempotency answer does not decode");
            ApiError::new(Code::Internal, lang)
        })?;
        if stored.fingerprint != self.fingerprint {
            return Err(ApiError::new(Code::IdempotencyKeyReused, lang));
        }
        // Safe to repeat: a store's readers see only durable changes, so the answer read here will
        // survive a crash just as the original does.
        let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
        let mut response = (status, Json(stored.body)).into_response();
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
        Ok(Some(response))
    }

    fn write(&self, expect: Expect, status: StatusCode, body: &Value, now: Millis) -> RecordWrite {
        let stored = Stored {
            fingerprint: self.fingerprint.clone(),
            status: status.as_u16(),
            body: body.clone(),
        };
        RecordWrite::put(
            RECORDS,
            &self.key,
            expect,
            serde_json::to_vec(&stored).unwrap_or_default(),
        )
        .expiring(now + KEEP_FOR)
    }

    /// Replaces the stored answer (the identity answer once the verdict came within the wait).
    pub(crate) async fn update(&self, state: &ApiState, status: StatusCode, body: &Value) {
        let change = Change {
            writes: vec![self.write(Expect::Any, status, body, state.queue.now())],
            jobs: vec![],
        };
        if let Err(error) = state.queue.commit(change).await {
            tracing::warn!(%error, "could not update a stored idempotent answer");
        }
    }
}

/// What committing an accepted request came to.
pub(crate) enum Outcome {
    /// Committed: answer this.
    Applied(Response),
    /// A concurrent request with the same key was accepted first: answer what it answered.
    Replayed(Response),
    /// A flow record changed under the plan: plan again.
    Replan,
}

/// Commits `change` with the idempotency claim (if any) for the answer `status` + `body`.
pub(crate) async fn commit(
    state: &ApiState,
    lang: Lang,
    idem: Option<&Idem>,
    mut change: Change,
    status: StatusCode,
    body: Value,
) -> Result<Outcome, ApiError> {
    let claim_at = change.writes.len();
    if let Some(idem) = idem {
        change
            .writes
            .push(idem.write(Expect::Absent, status, &body, state.queue.now()));
    }
    let committed = state.queue.commit(change).await.map_err(|e| match e {
        QueueError::Store(s) => ApiError::store(&s, lang),
        QueueError::InvalidJob(message) => {
            tracing::error!(%message, "a flow planned an invalid job");
            ApiError::new(Code::Internal, lang)
        }
    })?;
    match committed {
        Committed::Applied { .. } => Ok(Outcome::Applied((status, Json(body)).into_response())),
        Committed::Conflict { index, .. } if index == claim_at => {
            // A concurrent request with the same key won: answer what it answered.
            match idem {
                Some(idem) => match idem.replay(state, lang).await? {
                    Some(response) => Ok(Outcome::Replayed(response)),
                    None => Ok(Outcome::Replan),
                },
                None => Ok(Outcome::Replan),
            }
        }
        Committed::Conflict { .. } => Ok(Outcome::Replan),
    }
}

/// How a POST or PUT starts: with its claim (if it carries a key), or with the answer already given.
pub(crate) enum Claim {
    Fresh(Option<Idem>),
    Replay(Response),
}

/// Reads the request's `Idempotency-Key` and looks for an earlier answer to it.
pub(crate) async fn claim(
    state: &ApiState,
    caller: &str,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    lang: Lang,
) -> Result<Claim, ApiError> {
    let idem = Idem::from_request(&state.record_key, caller, headers, route, body, lang)?;
    if let Some(idem) = &idem
        && let Some(replay) = idem.replay(state, lang).await?
    {
        return Ok(Claim::Replay(replay));
    }
    Ok(Claim::Fresh(idem))
}

/// Plans and commits until a plan commits or an earlier answer under the key is replayed. A plan whose
/// records keep changing under it (concurrent writers) gives up after `MAX_ROUNDS` with 503.
pub(crate) async fn commit_planned<Fut>(
    state: &ApiState,
    lang: Lang,
    idem: Option<&Idem>,
    mut plan: impl FnMut() -> Fut,
) -> Result<Response, ApiError>
where
    Fut: std::future::Future<Output = Result<(Change, StatusCode, Value), ApiError>>,
{
    for _ in 0..crate::flows::MAX_ROUNDS {
        let (change, status, body) = plan().await?;
        match commit(state, lang, idem, change, status, body).await? {
            Outcome::Applied(r) | Outcome::Replayed(r) => return Ok(r),
            Outcome::Replan => continue,
        }
    }
    Err(ApiError::store(
        &crate::queue::StoreError::Io("records contended".into()),
        lang,
    ))
}
