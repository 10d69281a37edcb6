//! The business flows: each turns an accepted request into records and jobs, and each job into adapter
//! calls, record updates and follow-up jobs.
//!
//! - [`identity`]: citizen verification against the population DB (through the queue, answered within
//!   the caller's wait or by callback), with a short verdict cache;
//! - [`shipment`]: postal orders (one per natural key), cancellation, and the tracking feed read with a
//!   durable cursor;
//! - [`dossier`]: records and processing steps to every portal target, per dossier in order, steps held
//!   until the target has the dossier;
//! - [`callbacks`]: signed outcome notifications to the portal, through the same queue.
//!
//! # Records
//! A flow keeps its state as records in the store ([`crate::queue::Record`]): JSON values with a version.
//! Every state change is read → decide → [`Queue::commit`] with `Expect::Version`, together with the jobs
//! it causes; on a conflict the flow reads again and decides again. So two writers (an API request and a
//! worker, or two connector instances) never overwrite each other, and a state change and its
//! deliveries are never half-applied.
//!
//! # Idempotent handlers
//! A job can run again after a crash or an expired lease. Each handler first looks at the record: work
//! already recorded is not redone (a verdict is not asked twice, a submitted order is not re-posted; a
//! re-post would collide on its deterministic order number anyway).

pub mod callbacks;
pub mod dossier;
pub mod identity;
pub mod shipment;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::queue::worker::Wiring;
use crate::queue::{Committed, Expect, JobError, Queue, QueueError, RecordWrite, StoreError};
use crate::settings::Settings;
use crate::upstreams::Clients;

/// What every flow needs: the queue, the upstream clients, and the settings.
#[derive(Debug)]
pub struct Context {
    pub queue: Queue,
    pub clients: Clients,
    pub settings: Settings,
    /// Every population-DB lookup is written here before it is made.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// Keys the hashes of record keys that could carry personal data (`StoreSettings::record_key`).
    pub record_key: [u8; 32],
    /// The flows' own counters (verifications, shipments, held steps); None in tests without them.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// API requests waiting for a verdict, by verification id.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// The flows, shared by the API handlers, the job handlers and the tracking poller.
#[derive(Debug, Clone)]
pub struct Flows {
    pub ctx: Arc<Context>,
}

impl Flows {
    /// Flows without an audit log, under a fixed record key (tests of the API alone).
    pub fn new(queue: Queue, clients: Clients, settings: Settings) -> Self {
        Self::with_audit(queue, clients, settings, None, [0x5a; 32], None)
    }

    pub fn with_audit(
        queue: Queue,
        clients: Clients,
        settings: Settings,
        audit: Option<Arc<crate::audit::AuditLog>>,
        record_key: [u8; 32],
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        Self {
            ctx: Arc::new(Context {
                queue,
                clients,
                settings,
                audit,
                record_key,
                metrics,
                waiters: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The job handlers and lanes of every configured upstream.
    pub fn wiring(&self) -> Wiring {
        let mut wiring = Wiring::default();
        identity::register(self, &mut wiring);
        shipment::register(self, &mut wiring);
        dossier::register(self, &mut wiring);
        callbacks::register(self, &mut wiring);
        wiring
    }
}

impl Context {
    /// Registers interest in `id` before the work that will signal it is started.
    pub(crate) fn waiter(&self, id: &str) -> Arc<Notify> {
        let mut w = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(w.entry(id.to_owned()).or_default())
    }

    pub(crate) fn forget_waiter(&self, id: &str) {
        let mut w = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        w.remove(id);
    }

    pub(crate) fn wake(&self, id: &str) {
        let w = self
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = w.get(id) {
            n.notify_one();
        }
    }
}

/// Why a flow operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("record {collection}/{key} is corrupt: {message}")]
    Corrupt {
        collection: &'static str,
        key: String,
        message: String,
    },
    /// Too many concurrent writers on one record; the caller may try again.
    #[error("record {0} is contended")]
    Contended(String),
}

impl From<QueueError> for FlowError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Store(s) => FlowError::Store(s),
            QueueError::InvalidJob(m) => FlowError::Invalid(m),
        }
    }
}

impl From<FlowError> for JobError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::Store(_) | FlowError::Contended(_) => {
                JobError::retryable("store", e.to_string())
            }
            FlowError::Invalid(_) | FlowError::Corrupt { .. } => {
                JobError::permanent("corrupt_record", e.to_string())
            }
        }
    }
}

/// Most read-decide-write rounds before giving up on a contended record.
pub(crate) const MAX_ROUNDS: usize = 16;

/// A record decoded, with the version to write it back at.
pub(crate) struct Loaded<T> {
    pub value: T,
    pub version: u64,
}

impl<T: Serialize> Loaded<T> {
    /// Writes the (changed) value back, on condition that nobody wrote it meanwhile.
    pub(crate) fn write_back(&self, collection: &'static str, key: &str) -> RecordWrite {
        put(collection, key, Expect::Version(self.version), &self.value)
    }
}

pub(crate) async fn load<T: DeserializeOwned>(
    queue: &Queue,
    collection: &'static str,
    key: &str,
) -> Result<Option<Loaded<T>>, FlowError> {
    load_with(queue, collection, key, |bytes| {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    })
    .await
}

/// [`load`] for a record with its own encoding (`decode` says what is wrong with a bad one).
pub(crate) async fn load_with<T>(
    queue: &Queue,
    collection: &'static str,
    key: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<Option<Loaded<T>>, FlowError> {
    let Some(record) = queue.record(collection, key).await? else {
        return Ok(None);
    };
    let value = decode(&record.value).map_err(|message| FlowError::Corrupt {
        collection,
        key: key.to_owned(),
        message,
    })?;
    Ok(Some(Loaded {
        value,
        version: record.version,
    }))
}

pub(crate) fn put<T: Serialize>(
    collection: &'static str,
    key: &str,
    expect: Expect,
    value: &T,
) -> RecordWrite {
    // Flow records are plain structs of strings, numbers and lists: they always serialize.
    RecordWrite::put(
        collection,
        key,
        expect,
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

pub(crate) fn applied(c: &Committed) -> bool {
    matches!(c, Committed::Applied { .. })
}

pub(crate) use crate::timefmt::rfc3339;

/// A job payload from JSON; a payload that does not decode is permanent (it will never decode).
pub(crate) fn payload<T: DeserializeOwned>(job: &crate::queue::Job) -> Result<T, JobError> {
    serde_json::from_slice(&job.payload)
        .map_err(|e| JobError::permanent("invalid_payload", format!("job payload: {e}")))
}

/// An upstream's error with the personal data this job carried masked out of its message. Upstreams
/// sometimes echo what they were sent ("no dossier for Nguyễn Văn A"); digit runs are masked by the
/// adapters, but a name or an address can only be recognised by knowing it, and the job knows it.
pub(crate) fn redacted(mut error: JobError, personal: &[&str]) -> JobError {
    error.message = mask_known(&error.message, personal);
    error
}

/// Replaces every occurrence (case-insensitive for ASCII, exact otherwise) of each known value of at
/// least three characters with `…`.
pub(crate) fn mask_known(text: &str, personal: &[&str]) -> String {
    let mut out = text.to_owned();
    for value in personal {
        let value = value.trim();
        if value.chars().count() < 3 {
            continue;
        }
        for candidate in [value.to_owned(), value.to_lowercase(), value.to_uppercase()] {
            if out.contains(&candidate) {
                out = out.replace(&candidate, "…");
            }
        }
    }
    out
}

pub(crate) fn to_payload<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_personal_data_is_masked_in_an_upstream_message_whatever_its_case() {
        let e = JobError::permanent(
            "vnpost_400",
            "Người nhận NGUYỄN VĂN AN tại 12 Lê Lợi không hợp lệ (Nguyễn Văn An)",
        );
        let masked = redacted(e, &["Nguyễn Văn An", "12 Lê Lợi", "", "An"]);
        assert_eq!(masked.message, "Người nhận … tại … không hợp lệ (…)");
        assert_eq!(masked.code, "vnpost_400");
    }
}
