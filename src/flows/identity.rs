//! Identity verification: structural checks at the door, the population DB through the queue.
//!
//! A request that passes the CCCD checks becomes a `verification` record (status `pending`) and an
//! `identity.verify` job in lane `population`, in one commit. The API waits up to the caller's `wait`
//! for the verdict; if it is not there by then, the API marks the record `callback` (compare-and-set, so
//! it cannot miss a verdict written meanwhile) and answers 202. The worker writes the verdict with the
//! same compare-and-set, and enqueues the callback in the same commit when the record asks for one.
//!
//! What is stored: the verdict per field, the upstream request id, the masked citizen id. The population
//! DB's record itself is compared in memory and dropped; it is never stored, logged or returned. The job
//! payload holds what the portal submitted (needed to ask the upstream); it is removed with the job
//! after the retention period.
//!
//! Verdict cache: identical requests (citizen id, name, date of birth, procedure, mode) within
//! `flows.identity.cache_window` are answered from the previous verdict (`cached: true`). The cache key
//! is a SHA-256 of those fields, so no personal data is in a store key.

use std::sync::Arc;
use std::time::Duration;

use dvc_population::cccd::{CitizenId, Sex};
use dvc_population::client::{ExistenceQuery, RecordQuery};
use dvc_population::matching::{self, BirthDate, FieldVerdict};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{FlowError, Flows, Loaded, MAX_ROUNDS, applied, load, payload, put, rfc3339};
use crate::queue::worker::Wiring;
use crate::queue::worker::{HandlerFuture, JobHandler};
use crate::queue::{Change, Committed, Expect, Job, JobError, Millis, NewJob};

pub const KIND: &str = "identity.verify";
pub const LANE: &str = "population";
pub(crate) const RECORDS: &str = "verification";
/// The error (auth class: the lane pauses) of a lookup whose audit line could not be written.
pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";
/// `{dossier_code}/{verification id}` for every verification that named a dossier, written with the
/// verification, so the dossier's jobs can be found by their ordering key (the verification id).
const BY_DOSSIER: &str = "verification_dossier";
const CACHE: &str = "verdict_cache";

/// Which population DB operation answers the request (defined with the settings, which pick the
/// default).
pub use crate::settings::IdentityMode as Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Verified,
    Mismatch,
    NotFound,
    /// The upstream could not answer within the retry budget (dead-lettered).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checks {
    pub citizen_id: FieldVerdict,
    pub full_name: FieldVerdict,
    pub date_of_birth: FieldVerdict,
    pub gender: FieldVerdict,
}

/// The stored verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub id: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Checks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    pub citizen_id_masked: String,
    pub procedure_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dossier_code: Option<String>,
    pub mode: Mode,
    pub created_at: Millis,
    /// The caller stopped waiting: the verdict goes out as a callback.
    #[serde(default)]
    pub callback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub cache_key: String,
}

impl Verification {
    pub fn is_final(&self) -> bool {
        self.status != Status::Pending
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Verified => "verified",
            Status::Mismatch => "mismatch",
            Status::NotFound => "not_found",
            Status::Failed => "failed",
        }
    }
}

impl Checked {
    pub fn mode(&self) -> Mode {
        self.ask.mode
    }
}

/// What the portal submits (the API's body).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub citizen_id: String,
    pub full_name: String,
    pub date_of_birth: String,
    #[serde(default)]
    pub gender: Option<String>,
    pub procedure_code: String,
    pub officer_id: String,
    #[serde(default)]
    pub dossier_code: Option<String>,
    #[serde(default)]
    pub legacy_id: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
}

/// A field at fault, for the API's 422/400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
}

/// The job's payload: the request as checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ask {
    id: String,
    citizen_id: String,
    full_name: String,
    date_of_birth: String,
    gender: Option<Sex>,
    procedure_code: String,
    officer_id: String,
    legacy_id: String,
    mode: Mode,
    /// The API token that asked (for the audit log).
    #[serde(default)]
    requested_by: String,
    #[serde(default)]
    dossier_code: Option<String>,
}

/// A request that passed the structural checks.
#[derive(Debug, Clone)]
pub struct Checked {
    ask: Ask,
    masked: String,
    dossier_code: Option<String>,
    cache_key: String,
}

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        code,
        message: message.into(),
    }
}

/// The structural checks (`upstreams.md` §4), without any upstream call. All faults are reported.
/// Checks a request. `record_key` keys the verdict-cache hash (`StoreSettings::record_key`): an
/// unkeyed hash of a citizen's number, name and birth date is brute-forced back to the number in
/// seconds.
pub fn check(
    req: &Request,
    default_mode: Mode,
    record_key: &[u8; 32],
) -> Result<Checked, Vec<Invalid>> {
    let mut faults = Vec::new();
    let name = req.full_name.trim();
    if name.is_empty() {
        faults.push(invalid(
            "full_name",
            "required",
            "the full name is required",
        ));
    } else if name.chars().count() > 200 {
        faults.push(invalid("full_name", "too_long", "at most 200 characters"));
    }
    let birth = BirthDate::parse_iso(&req.date_of_birth);
    if birth.is_none() {
        faults.push(invalid(
            "date_of_birth",
            "invalid_date",
            "expected YYYY-MM-DD or YYYY",
        ));
    }
    let gender = match req.gender.as_deref() {
        None => None,
        Some("male") => Some(Sex::Male),
        Some("female") => Some(Sex::Female),
        Some(_) => {
            faults.push(invalid(
                "gender",
                "invalid_gender",
                "expected \"male\" or \"female\"",
            ));
            None
        }
    };
    for (field, value) in [
        ("procedure_code", &req.procedure_code),
        ("officer_id", &req.officer_id),
    ] {
        if value.trim().is_empty() {
            faults.push(invalid(field, "required", format!("{field} is required")));
        } else if value.len() > 100 {
            faults.push(invalid(field, "too_long", "at most 100 characters"));
        }
    }
    let legacy = req.legacy_id.clone().unwrap_or_default();
    if !legacy.is_empty() && (legacy.len() != 9 || !legacy.bytes().all(|b| b.is_ascii_digit())) {
        faults.push(invalid(
            "legacy_id",
            "invalid_legacy_id",
            "the old CMND number is exactly 9 digits",
        ));
    }
    let mode = match req.mode.as_deref() {
        None => default_mode,
        Some(m) => Mode::parse(m).unwrap_or_else(|| {
            faults.push(invalid(
                "mode",
                "invalid_mode",
                "expected \"exists\" or \"full\"",
            ));
            default_mode
        }),
    };
    // The same rule as every other dossier code: it becomes a record key and a job filter.
    if let Some(code) = &req.dossier_code
        && !super::dossier::valid_code(code)
    {
        faults.push(invalid(
            "dossier_code",
            "invalid_dossier_code",
            "1 to 64 of A-Z a-z 0-9 . _ -",
        ));
    }
    let id = match birth {
        Some(b) => CitizenId::parse_for(&req.citizen_id, b.year(), gender),
        None => CitizenId::parse(&req.citizen_id),
    };
    let id = match id {
        Ok(id) => Some(id),
        Err(e) => {
            faults.push(invalid("citizen_id", e.code(), e.to_string()));
            None
        }
    };
    let (Some(id), Some(birth), true) = (id, birth, faults.is_empty()) else {
        return Err(faults);
    };
    let cache_key = cache_key(
        record_key,
        &[
            id.expose(),
            &matching::normalize_name(name),
            &birth.compact(),
            req.procedure_code.trim(),
            match mode {
                Mode::Exists => "exists",
                Mode::Full => "full",
            },
            req.gender.as_deref().unwrap_or(""),
        ],
    );
    let verification_id = ulid::Ulid::new().to_string();
    Ok(Checked {
        masked: id.masked(),
        dossier_code: req.dossier_code.clone(),
        cache_key,
        ask: Ask {
            id: verification_id,
            citizen_id: id.expose().to_owned(),
            full_name: name.to_owned(),
            date_of_birth: req.date_of_birth.trim().to_owned(),
            gender,
            procedure_code: req.procedure_code.trim().to_owned(),
            officer_id: req.officer_id.trim().to_owned(),
            legacy_id: legacy,
            mode,
            requested_by: String::new(),
            dossier_code: req.dossier_code.clone(),
        },
    })
}

fn cache_key(record_key: &[u8; 32], parts: &[&str]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(record_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    for p in parts {
        mac.update(p.as_bytes());
        mac.update(&[0u8]);
    }
    crate::hex::encode(&mac.finalize().into_bytes())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    verification_id: String,
    at: Millis,
}

/// What the API answers.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verification: Verification,
    pub cached: bool,
}

impl Checked {
    pub fn id(&self) -> &str {
        &self.ask.id
    }

    /// Names the API token that asked, for the audit log.
    pub fn requested_by(mut self, token: &str) -> Self {
        self.ask.requested_by = token.to_owned();
        self
    }
}

/// A cached verdict for the same request, if one is fresh.
pub async fn cached(flows: &Flows, checked: &Checked) -> Result<Option<Outcome>, FlowError> {
    let window = flows.ctx.settings.flows.identity.cache_window;
    if window.is_zero() {
        return Ok(None);
    }
    let q = &flows.ctx.queue;
    let Some(entry) = load::<CacheEntry>(q, CACHE, &checked.cache_key).await? else {
        return Ok(None);
    };
    if q.now().saturating_sub(entry.value.at) > window.as_millis() as u64 {
        return Ok(None);
    }
    let Some(v) = load::<Verification>(q, RECORDS, &entry.value.verification_id).await? else {
        return Ok(None);
    };
    Ok(v.value.is_final().then_some(Outcome {
        verification: v.value,
        cached: true,
    }))
}

/// The record and job that accept a checked request; the API adds its idempotency record and commits.
/// Every job of a dossier: its records, steps and shipments by their keys, and the identity checks that
/// named it (found through [`BY_DOSSIER`]).
pub async fn dossier_jobs(
    queue: &crate::queue::Queue,
    code: &str,
) -> Result<crate::queue::DossierJobs, crate::queue::StoreError> {
    let mut jobs = crate::queue::DossierJobs::new(code);
    let prefix = format!("{code}/");
    let mut after = None;
    loop {
        let page = queue
            .records(BY_DOSSIER, &prefix, after.clone(), 500)
            .await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let full = page.len() == 500;
        jobs.also.extend(
            page.into_iter()
                .filter_map(|(key, _)| key.strip_prefix(&prefix).map(str::to_owned)),
        );
        if !full {
            break;
        }
    }
    Ok(jobs)
}

pub fn accept(flows: &Flows, checked: &Checked) -> Change {
    let verification = Verification {
        id: checked.ask.id.clone(),
        status: Status::Pending,
        checks: None,
        upstream_request_id: None,
        checked_at: None,
        citizen_id_masked: checked.masked.clone(),
        procedure_code: checked.ask.procedure_code.clone(),
        dossier_code: checked.dossier_code.clone(),
        mode: checked.ask.mode,
        created_at: flows.ctx.queue.now(),
        callback: false,
        error_code: None,
        cache_key: checked.cache_key.clone(),
    };
    let mut writes = vec![put(RECORDS, &checked.ask.id, Expect::Absent, &verification)];
    if let Some(code) = &checked.dossier_code {
        writes.push(put(
            BY_DOSSIER,
            &format!("{code}/{}", checked.ask.id),
            Expect::Any,
            &(),
        ));
    }
    Change {
        writes,
        jobs: vec![NewJob::new(
            KIND,
            LANE,
            checked.ask.id.clone(),
            super::to_payload(&checked.ask),
        )],
    }
}

pub async fn get(flows: &Flows, id: &str) -> Result<Option<Verification>, FlowError> {
    Ok(load::<Verification>(&flows.ctx.queue, RECORDS, id)
        .await?
        .map(|l| l.value))
}

/// Waits up to `wait` for the verdict. If none by then, marks the record so the verdict goes out as a
/// callback, and answers the record as it stands (pending, or the verdict that won the race).
pub async fn wait_for(flows: &Flows, id: &str, wait: Duration) -> Result<Verification, FlowError> {
    let notify = flows.ctx.waiter(id);
    let deadline = tokio::time::Instant::now() + wait;
    let result = async {
        loop {
            let notified = notify.notified();
            if let Some(v) = get(flows, id).await?
                && v.is_final()
            {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        for _ in 0..MAX_ROUNDS {
            let Some(mut loaded) = load::<Verification>(&flows.ctx.queue, RECORDS, id).await?
            else {
                return Err(FlowError::Contended(id.to_owned()));
            };
            if loaded.value.is_final() || loaded.value.callback {
                return Ok(loaded.value);
            }
            loaded.value.callback = true;
            let change = Change {
                writes: vec![loaded.write_back(RECORDS, id)],
                jobs: vec![],
            };
            if applied(&flows.ctx.queue.commit(change).await?) {
                return Ok(loaded.value);
            }
        }
        Err(FlowError::Contended(id.to_owned()))
    }
    .await;
    flows.ctx.forget_waiter(id);
    result
}

pub(crate) fn register(flows: &Flows, wiring: &mut Wiring) {
    if flows.ctx.clients.population.is_none() {
        return;
    }
    wiring
        .handlers
        .register(KIND, Arc::new(Verify(flows.clone())));
    wiring.lanes.push(LANE.to_owned());
}

#[derive(Debug)]
struct Verify(Flows);

impl JobHandler for Verify {
    fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a> {
        Box::pin(async move {
            let ask: Ask = payload(job)?;
            let flows = &self.0;
            let Some(current) = get(flows, &ask.id).await? else {
                return Err(JobError::permanent(
                    "missing_record",
                    "the verification record is gone",
                ));
            };
            if current.is_final() {
                return Ok(());
            }
            let answer = self.ask_upstream(&ask).await.map_err(|e| {
                super::redacted(e, &[&ask.full_name, &ask.citizen_id, &ask.legacy_id])
            });
            if let Err(e) = &answer
                && e.code == AUDIT_UNAVAILABLE
            {
                return answer.map(|_| ());
            }
            self.audit_outcome(&ask, &answer).await;
            let (request_id, status, checks) = answer?;
            let now = flows.ctx.queue.now();
            record_verdict(flows, &ask.id, |v| {
                v.status = status;
                v.checks = Some(checks);
                v.upstream_request_id = Some(request_id.clone());
                v.checked_at = Some(rfc3339(now));
            })
            .await?;
            Ok(())
        })
    }

    fn dead<'a>(&'a self, job: &'a Job, error: &'a JobError) -> HandlerFuture<'a> {
        Box::pin(async move {
            let ask: Ask = payload(job)?;
            let code = error.code.clone();
            let now = self.0.ctx.queue.now();
            record_verdict(&self.0, &ask.id, |v| {
                v.status = Status::Failed;
                v.error_code = Some(code.clone());
                v.checked_at = Some(rfc3339(now));
            })
            .await?;
            Ok(())
        })
    }
}

impl Verify {
    /// Writes the lookup to the audit log **before** it is made: a lookup that cannot be audited is not
    /// made. The error is of the auth class, so the population lane pauses with reason
    /// `audit_unavailable` (the job keeps its attempts) until the log takes a line again.
    async fn audit_request(&self, ask: &Ask, request_id: &str) -> Result<(), JobError> {
        self.append(ask, request_id.to_owned(), "requested".to_owned())
            .await
            .map_err(|e| JobError::auth(AUDIT_UNAVAILABLE, e))
    }

    /// Records how the lookup ended. The lookup itself is already in the log; if this line cannot be
    /// written the verdict is kept all the same (and the next lookup pauses the lane).
    async fn audit_outcome(&self, ask: &Ask, answer: &Result<(String, Status, Checks), JobError>) {
        let (request_id, outcome) = match answer {
            Ok((id, status, _)) => (id.clone(), status.as_str().to_owned()),
            Err(e) => (String::new(), e.code.clone()),
        };
        if let Err(error) = self.append(ask, request_id, outcome).await {
            tracing::warn!(verification_id = %ask.id, %error, "the audit log could not take a lookup's outcome");
        }
    }

    async fn append(&self, ask: &Ask, request_id: String, outcome: String) -> Result<(), String> {
        let Some(log) = self.0.ctx.audit.clone() else {
            return Ok(());
        };
        let lookup = crate::audit::Lookup {
            officer: ask.officer_id.clone(),
            procedure: ask.procedure_code.clone(),
            dossier: ask.dossier_code.clone(),
            requested_by: ask.requested_by.clone(),
            upstream_request_id: request_id,
            mode: ask.mode.as_str().to_owned(),
            outcome,
        };
        let (citizen, at) = (ask.citizen_id.clone(), rfc3339(self.0.ctx.queue.now()));
        // The append waits for the disk: off the async workers.
        tokio::task::spawn_blocking(move || log.record(lookup, &citizen, at))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn ask_upstream(&self, ask: &Ask) -> Result<(String, Status, Checks), JobError> {
        let ctx = &self.0.ctx;
        let Some(client) = &ctx.clients.population else {
            return Err(JobError::auth(
                "not_configured",
                "no population upstream is configured",
            ));
        };
        let id = CitizenId::parse(&ask.citizen_id)
            .map_err(|e| JobError::permanent("invalid_citizen_id", e.to_string()))?;
        let birth = BirthDate::parse_iso(&ask.date_of_birth).ok_or_else(|| {
            JobError::permanent("invalid_date_of_birth", "stored date does not parse")
        })?;
        // When the gateway wants officers' credentials (some are configured), a lookup on behalf of an
        // officer who has none is refused here, without a call: it could only earn a 401 that says
        // nothing about the other officers' lookups.
        let officers = &ctx.clients.officers;
        if officers.required() && !officers.knows(&ask.officer_id) {
            return Err(JobError::permanent(
                "officer_unknown",
                format!(
                    "officer {} has no gateway credentials in upstreams.population.officers",
                    ask.officer_id
                ),
            ));
        }
        let officer = officers.officer(&ask.officer_id);
        let request_id = dvc_population::client::new_request_id();
        self.audit_request(ask, &request_id).await?;
        match ask.mode {
            Mode::Exists => {
                let answer = client
                    .check_exists_as(
                        &ExistenceQuery {
                            service_code: ask.procedure_code.clone(),
                            officer,
                            citizen_id: id,
                            legacy_id: ask.legacy_id.clone(),
                            full_name: ask.full_name.clone(),
                        },
                        request_id,
                    )
                    .await?;
                let (status, verdict) = if answer.value {
                    (Status::Verified, FieldVerdict::Match)
                } else {
                    (Status::NotFound, FieldVerdict::NotChecked)
                };
                Ok((
                    answer.request_id,
                    status,
                    Checks {
                        citizen_id: verdict,
                        full_name: verdict,
                        date_of_birth: FieldVerdict::NotChecked,
                        gender: FieldVerdict::NotChecked,
                    },
                ))
            }
            Mode::Full => {
                let flow = &ctx.settings.flows.identity;
                let answer = client
                    .fetch_records_as(
                        &RecordQuery {
                            procedure_code: ask.procedure_code.clone(),
                            integration_code: flow.integration_code.clone(),
                            agency_code: flow.agency_code.clone(),
                            officer,
                            citizen_id: id,
                            legacy_id: ask.legacy_id.clone(),
                            full_name: ask.full_name.clone(),
                            birth_date: birth,
                        },
                        request_id,
                    )
                    .await?;
                // Only the per-field verdict survives this block; the record is dropped here.
                let record = answer
                    .value
                    .iter()
                    .find(|c| c.so_dinh_danh.trim() == ask.citizen_id)
                    .or(answer.value.first());
                let Some(record) = record else {
                    return Ok((
                        answer.request_id,
                        Status::NotFound,
                        Checks {
                            citizen_id: FieldVerdict::NotChecked,
                            full_name: FieldVerdict::NotChecked,
                            date_of_birth: FieldVerdict::NotChecked,
                            gender: FieldVerdict::NotChecked,
                        },
                    ));
                };
                let recorded_birth = BirthDate::parse_compact(&record.ngay_thang_nam)
                    .or_else(|| BirthDate::parse_compact(&record.nam));
                let checks = Checks {
                    citizen_id: if record.so_dinh_danh.trim() == ask.citizen_id {
                        FieldVerdict::Match
                    } else {
                        FieldVerdict::Mismatch
                    },
                    full_name: matching::compare_names(&ask.full_name, &record.full_name()),
                    date_of_birth: matching::compare_birth_dates(birth, recorded_birth),
                    gender: matching::compare_sex(ask.gender, Sex::from_code(&record.gioi_tinh)),
                };
                let fine =
                    |v: FieldVerdict| matches!(v, FieldVerdict::Match | FieldVerdict::NotChecked);
                let status = if checks.citizen_id == FieldVerdict::Match
                    && checks.full_name == FieldVerdict::Match
                    && fine(checks.date_of_birth)
                    && fine(checks.gender)
                {
                    Status::Verified
                } else {
                    Status::Mismatch
                };
                Ok((answer.request_id, status, checks))
            }
        }
    }
}

/// Writes a verdict (compare-and-set), the cache entry, and the callback if the caller stopped waiting;
/// then wakes a waiting API request.
async fn record_verdict(
    flows: &Flows,
    id: &str,
    set: impl Fn(&mut Verification),
) -> Result<(), FlowError> {
    let q = &flows.ctx.queue;
    for _ in 0..MAX_ROUNDS {
        let Some(mut loaded): Option<Loaded<Verification>> = load(q, RECORDS, id).await? else {
            return Ok(());
        };
        if loaded.value.is_final() {
            flows.ctx.wake(id);
            return Ok(());
        }
        set(&mut loaded.value);
        let v = &loaded.value;
        let mut change = Change {
            writes: vec![loaded.write_back(RECORDS, id)],
            jobs: vec![],
        };
        let window = flows.ctx.settings.flows.identity.cache_window;
        if v.status != Status::Failed && !window.is_zero() {
            let now = q.now();
            change.writes.push(
                put(
                    CACHE,
                    &v.cache_key,
                    Expect::Any,
                    &CacheEntry {
                        verification_id: id.to_owned(),
                        at: now,
                    },
                )
                .expiring(now + window.as_millis() as u64),
            );
        }
        if v.callback
            && let Some(job) = super::callbacks::job(
                flows,
                super::callbacks::event::VERIFICATION_COMPLETED,
                id,
                serde_json::to_value(view(v, false)).unwrap_or_default(),
            )
        {
            change.jobs.push(job);
        }
        if let Committed::Applied { .. } = q.commit(change).await? {
            if let Some(m) = &flows.ctx.metrics {
                m.verification(v.mode.as_str(), v.status.as_str());
            }
            flows.ctx.wake(id);
            return Ok(());
        }
    }
    Err(FlowError::Contended(id.to_owned()))
}

/// The answer the portal sees: the verdict, never personal data.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub id: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Checks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dossier_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub cached: bool,
}

pub fn view(v: &Verification, cached: bool) -> View {
    View {
        id: v.id.clone(),
        status: v.status,
        checks: v.checks,
        upstream_request_id: v.upstream_request_id.clone(),
        checked_at: v.checked_at.clone(),
        dossier_code: v.dossier_code.clone(),
        error_code: v.error_code.clone(),
        cached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KEY: [u8; 32] = [3; 32];

    fn request() -> Request {
        Request {
            // 001 Hà Nội, digit 4 = 0 (male, 1900s), born '85.
            citizen_id: "001085012345".into(),
            full_name: "Nguyễn Văn An".into(),
            date_of_birth: "1985-03-14".into(),
            gender: Some("male".into()),
            procedure_code: "1.001234".into(),
            officer_id: "CB-01".into(),
            dossier_code: None,
            legacy_id: None,
            mode: None,
        }
    }

    fn fields(r: Result<Checked, Vec<Invalid>>) -> Vec<(&'static str, &'static str)> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.field, i.code))
            .collect()
    }

    #[test]
    fn a_consistent_request_passes_and_its_id_is_masked() {
        let checked = check(&request(), Mode::Exists, &TEST_KEY).expect("valid");
        assert!(!checked.masked.contains("012345"));
        assert_eq!(checked.ask.mode, Mode::Exists);
    }

    /// The audit line of a lookup is written before the lookup: while the log cannot take it (a full
    /// disk), no call reaches the gateway and the job fails with the auth class (the lane pauses).
    #[tokio::test]
    async fn a_lookup_whose_audit_line_cannot_be_written_is_not_made() {
        use crate::queue::{Backend, KvJobStore, KvOptions, RetryPolicies};
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (gateway, sim) = dvc_population::simulator::start(
            listener,
            dvc_population::simulator::SimulatorConfig::with_fixture().expect("fixture"),
        )
        .expect("simulator");
        let base = gateway.base_url();
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\npath = \"s\"\nencryption = \"off\"\n[upstreams]\nallow_insecure_http = true\n[upstreams.population]\nservice_url = \"{base}/dancu/soap\"\ntoken_url = \"{base}/token\"\nclient_id = \"dvc-dev\"\nclient_secret = \"dev-secret\"\n"
            ),
        )
        .expect("config");
        let settings = crate::settings::load(&config, std::iter::empty()).expect("settings");
        let clients = crate::upstreams::build(&settings.upstreams).expect("clients");
        let queue = crate::queue::Queue::new(
            Arc::new(
                KvJobStore::open(
                    &dir.path().join("store"),
                    Backend::Redb,
                    KvOptions::default(),
                )
                .expect("store"),
            ),
            Arc::new(crate::queue::clock::TokioClock::new()),
            RetryPolicies::default(),
            std::time::Duration::from_secs(60),
        );
        let audit_path = dir.path().join("audit.log");
        let audit =
            Arc::new(crate::audit::AuditLog::open(&audit_path, Some([7; 32])).expect("audit"));
        let flows = Flows::with_audit(
            queue.clone(),
            clients,
            settings,
            Some(audit.clone()),
            TEST_KEY,
            None,
        );
        let checked = check(&request(), Mode::Exists, &TEST_KEY).expect("valid");
        queue
            .commit(accept(&flows, &checked))
            .await
            .expect("accepted");
        let job = queue
            .lease(LANE, 1)
            .await
            .expect("lease")
            .jobs
            .pop()
            .expect("the job");
        let verify = Verify(flows.clone());
        let soap_calls = || {
            sim.ledger
                .snapshot()
                .iter()
                .filter(|e| e.operation != "token")
                .count()
        };

        audit.set_fault(Some(crate::audit::Fault::Full));
        let error = verify.handle(&job).await.expect_err("not made");
        assert_eq!(
            (error.class, error.code.as_str()),
            (crate::queue::ErrorClass::Auth, AUDIT_UNAVAILABLE)
        );
        assert_eq!(soap_calls(), 0, "nothing reached the gateway unaudited");
        assert_eq!(
            get(&flows, checked.id())
                .await
                .expect("read")
                .map(|v| v.status),
            Some(Status::Pending),
            "no verdict is recorded for a lookup that was not audited"
        );

        audit.set_fault(None);
        verify
            .handle(&job)
            .await
            .expect("made once the log takes lines");
        assert_eq!(soap_calls(), 1);
        let log = std::fs::read_to_string(&audit_path).expect("log");
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).expect("entry"))
            .collect();
        assert_eq!(lines.len(), 2, "the request, then its outcome");
        assert_eq!(lines[0]["outcome"], "requested");
        assert_eq!(lines[1]["outcome"], "not_found");
        assert_eq!(
            lines[0]["upstream_request_id"],
            sim.ledger
                .snapshot()
                .last()
                .map(|e| e.request_id.clone())
                .unwrap_or_default(),
            "the line names the request id the gateway received"
        );
    }

    #[test]
    fn a_dossier_code_follows_the_same_rule_as_everywhere_else() {
        for bad in ["A/B", "hồ sơ 1", "", &"A".repeat(65)] {
            let mut r = request();
            r.dossier_code = Some(bad.to_owned());
            assert_eq!(
                fields(check(&r, Mode::Exists, &TEST_KEY)),
                vec![("dossier_code", "invalid_dossier_code")],
                "{bad:?}"
            );
        }
        let mut r = request();
        r.dossier_code = Some("H56.22-241127_0001".into());
        assert!(check(&r, Mode::Exists, &TEST_KEY).is_ok());
    }

    #[test]
    fn each_structural_id_fault_is_named_with_its_code() {
        let cases = [
            ("00108501234", "invalid_length"),
            ("00108501234x", "not_digits"),
            ("003085012345", "unknown_place_code"),
            ("001090012345", "birth_year_mismatch"),
            ("001185012345", "sex_mismatch"),
        ];
        for (id, code) in cases {
            let mut r = request();
            r.citizen_id = id.into();
            assert_eq!(
                fields(check(&r, Mode::Exists, &TEST_KEY)),
                vec![("citizen_id", code)],
                "{id}"
            );
        }
    }

    #[test]
    fn every_fault_is_reported_at_once() {
        let mut r = request();
        r.full_name = " ".into();
        r.date_of_birth = "14/03/1985".into();
        r.gender = Some("x".into());
        r.mode = Some("deep".into());
        let got = fields(check(&r, Mode::Exists, &TEST_KEY));
        for field in ["full_name", "date_of_birth", "gender", "mode"] {
            assert!(got.iter().any(|(f, _)| *f == field), "{field} in {got:?}");
        }
    }

    #[test]
    fn the_cache_key_ignores_case_and_spacing_of_the_name_but_not_the_procedure() {
        let a = check(&request(), Mode::Exists, &TEST_KEY).expect("valid");
        let mut r = request();
        r.full_name = "  nguyễn   văn AN ".into();
        let b = check(&r, Mode::Exists, &TEST_KEY).expect("valid");
        assert_eq!(a.cache_key, b.cache_key);
        r.procedure_code = "2.000001".into();
        let c = check(&r, Mode::Exists, &TEST_KEY).expect("valid");
        assert_ne!(a.cache_key, c.cache_key);
        assert!(!a.cache_key.contains("001085"));
    }
}
