//! Callbacks: outcomes the portal did not wait for, POSTed to the configured `callback_url` through the
//! queue (lane `callbacks`, ordered per subject), signed with HMAC-SHA256 over `timestamp + "." + body`
//! in `X-Connector-Signature: t=<unix>,v1=<hex>`.
//!
//! The body is `{id, type, created_at, data}`; `id` is stable across redeliveries (also sent as
//! `X-Connector-Event-Id`) so the portal can drop a repeat. A 2xx answer delivers; 408, 429 and 5xx
//! are retried; other 4xx are permanent (the receiver refuses the callback).

use std::sync::Arc;

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use super::{Flows, payload, rfc3339, to_payload};
use crate::queue::worker::Wiring;
use crate::queue::worker::{HandlerFuture, JobHandler};
use crate::queue::{Job, JobError, NewJob};

pub const KIND: &str = "callback.deliver";
pub const LANE: &str = "callbacks";
pub const SIGNATURE_HEADER: &str = "X-Connector-Signature";

/// The callback event types.
pub mod event {
    pub const VERIFICATION_COMPLETED: &str = "identity.verification.completed";
    pub const SHIPMENT_STATUS_CHANGED: &str = "shipment.status_changed";
    pub const SYNC_FAILED: &str = "dossier.sync.failed";
    pub const SYNC_COMPLETED: &str = "dossier.sync.completed";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Callback {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: String,
    pub data: Value,
}

/// The job that delivers one callback, or None when no `callback_url` is configured. `subject` orders
/// callbacks about the same thing (a verification, a shipment, a dossier).
pub(crate) fn job(flows: &Flows, kind: &str, subject: &str, data: Value) -> Option<NewJob> {
    flows.ctx.settings.callbacks.as_ref()?;
    let callback = Callback {
        id: ulid::Ulid::new().to_string(),
        kind: kind.to_owned(),
        created_at: rfc3339(flows.ctx.queue.now()),
        data,
    };
    Some(NewJob::new(KIND, LANE, subject, to_payload(&callback)))
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<unix>.<body>")>`.
pub fn signature(secret: &[u8], unix: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex = crate::hex::encode(&mac.finalize().into_bytes());
    format!("t={unix},v1={hex}")
}

/// Checks a signature header in constant time (for receivers: the demo's, and tests).
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let expected = signature(secret, t, body);
    let given = format!("t={t},v1={v1}");
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

pub(crate) fn register(flows: &Flows, wiring: &mut Wiring) {
    let Some(settings) = &flows.ctx.settings.callbacks else {
        return;
    };
    let options = match crate::upstreams::http_options(&settings.http) {
        Ok(o) => o,
        Err(error) => {
            tracing::error!(%error, "callback TLS files could not be read; callbacks stay queued");
            return;
        }
    };
    let client = match dvc_upstream::http::client(&options) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "callback client could not be built; callbacks stay queued");
            return;
        }
    };
    wiring.handlers.register(
        KIND,
        Arc::new(Deliver {
            client,
            url: settings.url.to_string(),
            secret: settings.secret.expose_secret().as_bytes().to_vec(),
        }),
    );
    wiring.lanes.push(LANE.to_owned());
}

struct Deliver {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Deliver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliver").field("url", &self.url).finish()
    }
}

impl JobHandler for Deliver {
    fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a> {
        Box::pin(async move {
            let callback: Callback = payload(job)?;
            let body = to_payload(&callback);
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let response = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature(&self.secret, unix, &body))
                .header("X-Connector-Event-Id", &callback.id)
                .header("X-Connector-Event", &callback.kind)
                .body(body)
                .send()
                .await
                .map_err(JobError::transport)?;
            dvc_upstream::http::refuse_redirect(&response)?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Err(JobError::from_status(
                status.as_u16(),
                retry_after.as_deref(),
                format!("the callback receiver answered {status}"),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let header = signature(b"secret", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert!(verify(b"secret", &header, b"{\"a\":1}"));
        assert!(!verify(b"secret", &header, b"{\"a\":2}"));
        assert!(!verify(b"other", &header, b"{\"a\":1}"));
        let shifted = header.replace("t=1700000000", "t=1700000001");
        assert!(!verify(b"secret", &shifted, b"{\"a\":1}"));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: python3 -c "hmac.new(b'key', b'1.body', hashlib.sha256).hexdigest()"
        let header = signature(b"key", 1, b"body");
        assert_eq!(
            header,
            "t=1,v1=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
    }
}
