//! Dossier sync: records (`DongBoHoSoMC`) and processing steps (`CapNhatTienDoHoSoMC`) to every
//! configured portal target.
//!
//! Each target has its own lane (`portal:<target>`), and every job of a dossier uses the dossier code as
//! its ordering key, so per dossier and target the queue delivers records and steps one at a time, in
//! submission order, while one target's outage stalls only its own lane.
//!
//! The `dossier` record keeps, per target: whether the target has the dossier (`record_synced` after
//! our create/update, `known_at_portal` when `TraCuuHoSo` said so), the last synced status and time,
//! the last error, and the steps **held** because the target does not have the dossier yet. A step job
//! that finds the dossier missing at its target is moved into `held` (its job ends) and later steps
//! follow it there; the next record sync for that target sends the held steps right after the record,
//! ten per call, in order. So a step never reaches a target before its dossier, and order is kept.
//!
//! Batching: steps queued behind one another for the same dossier and target (after an outage, or a
//! busy portal) are leased together (`JobHandler::batch`) and sent in one `CapNhatTienDoHoSoMC` call of
//! up to ten, in order; a failed batch is retried one step at a time.
//!
//! Exactly once as far as the portal can see: a retried create becomes an update (`sync_dossier`
//! switches the flag on error 3/4), and a step is only re-sent if the process dies between the portal
//! applying it and the store recording it (the portal protocol has no way to ask which steps it has).

use std::collections::BTreeMap;
use std::sync::Arc;

use dvc_portal::wire::{self, DossierRecord, Progress};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::callbacks::{self, event};
use super::{
    FlowError, Flows, Loaded, MAX_ROUNDS, applied, load_with, payload, rfc3339, to_payload,
};
use crate::queue::cursor::{Cursor, put_sized};
use crate::queue::worker::Wiring;
use crate::queue::worker::{HandlerFuture, JobHandler};
use crate::queue::{Change, Expect, Job, JobError, Millis, NewJob, RecordWrite};

pub const RECORD_KIND: &str = "portal.record";
pub const STEP_KIND: &str = "portal.step";
pub(crate) const RECORDS: &str = "dossier";
/// Per (dossier, target) sync state, written only by that target's lane (one job of a key at a time),
/// so the API's writes to the dossier record never contend with the workers'.
const TARGETS: &str = "dossier_target";
/// Most steps the portal takes in one call.
const BATCH: usize = 10;

pub fn lane(target: &str) -> String {
    format!("portal:{target}")
}

/// A dossier code as the portal and VNPost use it: 1–64 of `A–Z a–z 0–9 . _ -`.
pub fn valid_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Sync state of one dossier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DossierState {
    pub code: String,
    /// The sequence number the next step gets (from 1).
    pub next_sequence: u64,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    #[serde(default)]
    pub record_synced: bool,
    #[serde(default)]
    pub known_at_portal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_status: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub held: Vec<StepJob>,
    #[serde(default)]
    pub records_synced: u64,
    #[serde(default)]
    pub steps_synced: u64,
}

impl TargetState {
    fn has_dossier(&self) -> bool {
        self.record_synced || self.known_at_portal
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordJob {
    pub dossier_code: String,
    pub record: DossierRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepJob {
    pub dossier_code: String,
    pub event_id: String,
    pub sequence: u64,
    pub progress: Progress,
}

/// First byte of a step job's binary payload; the JSON payloads written before start with `{`.
const STEP_BINARY: u8 = 1;

impl StepJob {
    /// The job payload: [`STEP_BINARY`], the dossier code, the event id, the sequence (`u64`
    /// little-endian), then the nine fields of the portal's progress record in their wire order,
    /// each string as a `u32` length and UTF-8. Every accepted event encodes one and every delivery
    /// decodes a batch of them; as JSON they were about a twentieth of the daemon's instructions.
    fn encode(&self) -> Vec<u8> {
        let p = &self.progress;
        let texts = [
            &self.dossier_code,
            &self.event_id,
            &p.ma_ho_so,
            &p.nguoi_xu_ly,
            &p.chuc_danh,
            &p.thoi_diem_xu_ly,
            &p.phong_ban_xu_ly,
            &p.noi_dung_xu_ly,
            &p.trang_thai,
            &p.ngay_bat_dau,
            &p.ngay_ket_thuc_theo_quy_dinh,
        ];
        let mut out = Vec::with_capacity(1 + 8 + texts.iter().map(|t| 4 + t.len()).sum::<usize>());
        out.push(STEP_BINARY);
        put_sized(&mut out, self.dossier_code.as_bytes());
        put_sized(&mut out, self.event_id.as_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        for text in &texts[2..] {
            put_sized(&mut out, text.as_bytes());
        }
        out
    }

    /// Reads a payload of either form: binary, or the JSON of the builds before it (jobs queued then).
    fn decode(job: &Job) -> Result<StepJob, JobError> {
        match job.payload.strip_prefix(&[STEP_BINARY]) {
            Some(bytes) => Self::decode_binary(bytes).ok_or_else(|| {
                JobError::permanent(
                    "invalid_payload",
                    "step job payload: truncated, overlong or not UTF-8",
                )
            }),
            None => payload(job),
        }
    }

    fn decode_binary(bytes: &[u8]) -> Option<StepJob> {
        let mut c = Cursor::new(bytes);
        let dossier_code = text(&mut c)?;
        let event_id = text(&mut c)?;
        let sequence = c.u64()?;
        let progress = Progress {
            ma_ho_so: text(&mut c)?,
            nguoi_xu_ly: text(&mut c)?,
            chuc_danh: text(&mut c)?,
            thoi_diem_xu_ly: text(&mut c)?,
            phong_ban_xu_ly: text(&mut c)?,
            noi_dung_xu_ly: text(&mut c)?,
            trang_thai: text(&mut c)?,
            ngay_bat_dau: text(&mut c)?,
            ngay_ket_thuc_theo_quy_dinh: text(&mut c)?,
        };
        c.rest.is_empty().then_some(StepJob {
            dossier_code,
            event_id,
            sequence,
            progress,
        })
    }
}

/// First byte of a dossier's and a target's state record in binary; the JSON records written before
/// start with `{`. Both are read and written on every accepted request or delivery.
const STATE_BINARY: u8 = 1;

impl DossierState {
    /// [`STATE_BINARY`], the code (`u32` length and UTF-8), then `next_sequence` and `updated_at`
    /// (`u64` little-endian).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 4 + self.code.len() + 16);
        out.push(STATE_BINARY);
        put_sized(&mut out, self.code.as_bytes());
        out.extend_from_slice(&self.next_sequence.to_le_bytes());
        out.extend_from_slice(&self.updated_at.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_state(bytes, Self::decode_binary)
    }

    fn decode_binary(bytes: &[u8]) -> Option<Self> {
        let mut c = Cursor::new(bytes);
        let state = DossierState {
            code: text(&mut c)?,
            next_sequence: c.u64()?,
            updated_at: c.u64()?,
        };
        c.rest.is_empty().then_some(state)
    }
}

/// Flags of a target's state record in binary.
const RECORD_SYNCED: u8 = 1;
const KNOWN_AT_PORTAL: u8 = 1 << 1;
const HAS_STATUS: u8 = 1 << 2;
const HAS_SYNCED_AT: u8 = 1 << 3;
const HAS_ERROR: u8 = 1 << 4;
const TARGET_FLAGS: u8 = RECORD_SYNCED | KNOWN_AT_PORTAL | HAS_STATUS | HAS_SYNCED_AT | HAS_ERROR;

const DAMAGED: &str = "truncated, overlong, not UTF-8 or of unknown flags";

/// Reads a state record of either form: binary (`binary` reads what follows [`STATE_BINARY`]), or
/// the JSON of the builds before it.
fn decode_state<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    binary: fn(&[u8]) -> Option<T>,
) -> Result<T, String> {
    match bytes.split_first() {
        Some((&STATE_BINARY, rest)) => binary(rest).ok_or_else(|| DAMAGED.to_owned()),
        _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

fn text(c: &mut Cursor<'_>) -> Option<String> {
    String::from_utf8(c.sized()?.to_vec()).ok()
}

impl TargetState {
    /// [`STATE_BINARY`], a flags byte (the two booleans, then which optional field follows), the
    /// status byte, `synced_at` and `last_error` when present (strings as `u32` length and UTF-8),
    /// `records_synced` and `steps_synced` (`u64` little-endian), then the held steps: their count
    /// (`u32`) and each one's job payload as a `u32` length and the bytes.
    fn encode(&self) -> Vec<u8> {
        let mut flags = 0;
        for (set, flag) in [
            (self.record_synced, RECORD_SYNCED),
            (self.known_at_portal, KNOWN_AT_PORTAL),
            (self.last_synced_status.is_some(), HAS_STATUS),
            (self.synced_at.is_some(), HAS_SYNCED_AT),
            (self.last_error.is_some(), HAS_ERROR),
        ] {
            if set {
                flags |= flag;
            }
        }
        let mut out = Vec::with_capacity(64);
        out.push(STATE_BINARY);
        out.push(flags);
        if let Some(status) = self.last_synced_status {
            out.push(status);
        }
        for text in [&self.synced_at, &self.last_error].into_iter().flatten() {
            put_sized(&mut out, text.as_bytes());
        }
        out.extend_from_slice(&self.records_synced.to_le_bytes());
        out.extend_from_slice(&self.steps_synced.to_le_bytes());
        out.extend_from_slice(&(self.held.len() as u32).to_le_bytes());
        for step in &self.held {
            put_sized(&mut out, &step.encode());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_state(bytes, Self::decode_binary)
    }

    fn decode_binary(bytes: &[u8]) -> Option<Self> {
        let mut c = Cursor::new(bytes);
        let flags = c.u8()?;
        if flags & !TARGET_FLAGS != 0 {
            return None;
        }
        let last_synced_status = if flags & HAS_STATUS != 0 {
            Some(c.u8()?)
        } else {
            None
        };
        let synced_at = if flags & HAS_SYNCED_AT != 0 {
            Some(text(&mut c)?)
        } else {
            None
        };
        let last_error = if flags & HAS_ERROR != 0 {
            Some(text(&mut c)?)
        } else {
            None
        };
        let records_synced = c.u64()?;
        let steps_synced = c.u64()?;
        let count = c.u32()? as usize;
        // Each held step takes at least its length: a count beyond what is left is damage, not a
        // reason to reserve memory for it.
        let mut held = Vec::with_capacity(count.min(c.rest.len() / 4));
        for _ in 0..count {
            held.push(StepJob::decode_binary(
                c.sized()?.strip_prefix(&[STEP_BINARY])?,
            )?);
        }
        c.rest.is_empty().then_some(TargetState {
            record_synced: flags & RECORD_SYNCED != 0,
            known_at_portal: flags & KNOWN_AT_PORTAL != 0,
            last_synced_status,
            synced_at,
            last_error,
            held,
            records_synced,
            steps_synced,
        })
    }
}

/// `PUT /v1/dossiers/{code}`: the dossier's current record in English field names.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordInput {
    pub procedure_code: String,
    #[serde(default)]
    pub procedure_name: String,
    #[serde(default)]
    pub field_code: String,
    #[serde(default)]
    pub field_name: String,
    #[serde(default)]
    pub owner_name: String,
    /// 1 citizen, 2 business, 3 state agency, 4 other organisation.
    #[serde(default)]
    pub applicant_type: Option<u8>,
    #[serde(default)]
    pub applicant_id: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub received_at: Option<String>,
    #[serde(default)]
    pub due_at: Option<String>,
    #[serde(default)]
    pub returned_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    pub status: String,
    #[serde(default)]
    pub result_by_post: bool,
    /// `in_person`, `online` or `postal`.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub handling_unit: String,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub submitted_documents: Vec<Value>,
    #[serde(default)]
    pub result_documents: Vec<Value>,
    #[serde(default)]
    pub fees: Vec<Value>,
    /// Province-specific fields, passed to the portal verbatim.
    #[serde(default)]
    pub extra: Map<String, Value>,
}

/// `POST /v1/dossiers/{code}/events`: one processing step.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    pub status: String,
    pub occurred_at: String,
    pub handler: String,
    #[serde(default)]
    pub handler_title: String,
    #[serde(default)]
    pub department: String,
    pub content: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub due_at: Option<String>,
}

pub use super::identity::Invalid;

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        code,
        message: message.into(),
    }
}

fn time(
    faults: &mut Vec<Invalid>,
    field: &'static str,
    value: Option<&str>,
    required: bool,
) -> String {
    match value.map(str::trim).filter(|s| !s.is_empty()) {
        None if required => {
            faults.push(invalid(field, "required", format!("{field} is required")));
            String::new()
        }
        None => String::new(),
        Some(v) => wire::portal_time(v).unwrap_or_else(|_| {
            faults.push(invalid(field, "invalid_time", "expected an RFC 3339 time"));
            String::new()
        }),
    }
}

/// The status as each target's table maps it (targets may map local words differently).
fn status_codes(flows: &Flows, faults: &mut Vec<Invalid>, status: &str) -> BTreeMap<String, u8> {
    let mut out = BTreeMap::new();
    for (name, client) in &flows.ctx.clients.portal {
        match client.status_map().code(status) {
            Some(code) => {
                out.insert(name.clone(), code);
            }
            None => {
                faults.push(invalid(
                    "status",
                    "unknown_status",
                    "neither a portal code 1-10 nor a configured status word",
                ));
                return out;
            }
        }
    }
    out
}

/// Checks a record and maps it, per target, onto the portal's record.
pub fn check_record(
    flows: &Flows,
    code: &str,
    input: &RecordInput,
) -> Result<BTreeMap<String, DossierRecord>, Vec<Invalid>> {
    let mut faults = Vec::new();
    if input.procedure_code.trim().is_empty() {
        faults.push(invalid(
            "procedure_code",
            "required",
            "procedure_code is required",
        ));
    }
    if input.applicant_type.is_some_and(|t| !(1..=4).contains(&t)) {
        faults.push(invalid(
            "applicant_type",
            "invalid_applicant_type",
            "expected 1 to 4",
        ));
    }
    let channel = match input.channel.as_deref() {
        None => String::new(),
        Some("in_person") => "1".into(),
        Some("online") => "2".into(),
        Some("postal") => "3".into(),
        Some(_) => {
            faults.push(invalid(
                "channel",
                "invalid_channel",
                "expected in_person, online or postal",
            ));
            String::new()
        }
    };
    let received = time(
        &mut faults,
        "received_at",
        input.received_at.as_deref(),
        false,
    );
    let due = time(&mut faults, "due_at", input.due_at.as_deref(), false);
    let returned = time(
        &mut faults,
        "returned_at",
        input.returned_at.as_deref(),
        false,
    );
    let finished = time(
        &mut faults,
        "finished_at",
        input.finished_at.as_deref(),
        false,
    );
    let codes = status_codes(flows, &mut faults, &input.status);
    if !faults.is_empty() {
        return Err(faults);
    }
    Ok(codes
        .into_iter()
        .map(|(target, status)| {
            let record = DossierRecord {
                ma_ho_so: code.to_owned(),
                ma_tthc: input.procedure_code.trim().to_owned(),
                ten_tthc: input.procedure_name.clone(),
                ma_linh_vuc: input.field_code.clone(),
                ten_linh_vuc: input.field_name.clone(),
                chu_ho_so: input.owner_name.clone(),
                loai_doi_tuong: input
                    .applicant_type
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                ma_doi_tuong: input.applicant_id.clone(),
                email: input.email.clone(),
                so_dien_thoai: input.phone.clone(),
                trich_yeu_ho_so: input.summary.clone(),
                ngay_tiep_nhan: received.clone(),
                ngay_hen_tra: due.clone(),
                ngay_tra: returned.clone(),
                ngay_ket_thuc_xu_ly: finished.clone(),
                trang_thai_ho_so: status.to_string(),
                hinh_thuc: if input.result_by_post { "1" } else { "0" }.into(),
                kenh_thuc_hien: channel.clone(),
                don_vi_xu_ly: input.handling_unit.clone(),
                ghi_chu: input.note.clone(),
                tai_lieu_nop: input.submitted_documents.clone(),
                danh_sach_giay_to_ket_qua: input.result_documents.clone(),
                danh_sach_le_phi: input.fees.clone(),
                extra: input.extra.clone(),
            };
            (target, record)
        })
        .collect())
}

/// Checks a step and maps it, per target, onto the portal's progress record.
pub fn check_event(
    flows: &Flows,
    code: &str,
    input: &EventInput,
) -> Result<BTreeMap<String, Progress>, Vec<Invalid>> {
    let mut faults = Vec::new();
    for (field, value) in [("handler", &input.handler), ("content", &input.content)] {
        if value.trim().is_empty() {
            faults.push(invalid(field, "required", format!("{field} is required")));
        }
    }
    let occurred = time(&mut faults, "occurred_at", Some(&input.occurred_at), true);
    let started = time(
        &mut faults,
        "started_at",
        input.started_at.as_deref(),
        false,
    );
    let due = time(&mut faults, "due_at", input.due_at.as_deref(), false);
    let codes = status_codes(flows, &mut faults, &input.status);
    if !faults.is_empty() {
        return Err(faults);
    }
    Ok(codes
        .into_iter()
        .map(|(target, status)| {
            let progress = Progress {
                ma_ho_so: code.to_owned(),
                nguoi_xu_ly: wire::handler_name(&input.handler),
                chuc_danh: input.handler_title.clone(),
                thoi_diem_xu_ly: occurred.clone(),
                phong_ban_xu_ly: input.department.clone(),
                noi_dung_xu_ly: input.content.clone(),
                trang_thai: status.to_string(),
                ngay_bat_dau: started.clone(),
                ngay_ket_thuc_theo_quy_dinh: due.clone(),
            };
            (target, progress)
        })
        .collect())
}

async fn state(flows: &Flows, code: &str) -> Result<Loaded<DossierState>, FlowError> {
    Ok(
        load_with(&flows.ctx.queue, RECORDS, code, DossierState::decode)
            .await?
            .unwrap_or_else(|| Loaded {
                value: DossierState {
                    code: code.to_owned(),
                    next_sequence: 1,
                    ..Default::default()
                },
                version: 0,
            }),
    )
}

fn target_key(code: &str, target: &str) -> String {
    format!("{code}\u{1f}{target}")
}

async fn target_state(
    flows: &Flows,
    code: &str,
    target: &str,
) -> Result<Loaded<TargetState>, FlowError> {
    Ok(load_with(
        &flows.ctx.queue,
        TARGETS,
        &target_key(code, target),
        TargetState::decode,
    )
    .await?
    .unwrap_or(Loaded {
        value: TargetState::default(),
        version: 0,
    }))
}

fn write_state(loaded: &Loaded<DossierState>, code: &str) -> crate::queue::RecordWrite {
    let expect = match loaded.version {
        0 => Expect::Absent,
        v => Expect::Version(v),
    };
    RecordWrite::put(RECORDS, code, expect, loaded.value.encode())
}

/// The change that accepts a record: one job per target. Re-plan on a conflict.
pub async fn plan_record(
    flows: &Flows,
    code: &str,
    records: &BTreeMap<String, DossierRecord>,
) -> Result<Change, FlowError> {
    let mut loaded = state(flows, code).await?;
    loaded.value.updated_at = flows.ctx.queue.now();
    let jobs = records
        .iter()
        .map(|(target, record)| {
            NewJob::new(
                RECORD_KIND,
                lane(target),
                code,
                to_payload(&RecordJob {
                    dossier_code: code.to_owned(),
                    record: record.clone(),
                }),
            )
        })
        .collect();
    Ok(Change {
        writes: vec![write_state(&loaded, code)],
        jobs,
    })
}

/// Adds one step (a sequence number and one job per target) to `change`; answers (event id, sequence).
pub async fn plan_event(
    flows: &Flows,
    change: &mut Change,
    code: &str,
    steps: &BTreeMap<String, Progress>,
) -> Result<(String, u64), FlowError> {
    let mut loaded = state(flows, code).await?;
    let sequence = loaded.value.next_sequence.max(1);
    loaded.value.next_sequence = sequence + 1;
    loaded.value.updated_at = flows.ctx.queue.now();
    let event_id = ulid::Ulid::new().to_string();
    change.writes.push(write_state(&loaded, code));
    for (target, progress) in steps {
        change.jobs.push(NewJob::new(
            STEP_KIND,
            lane(target),
            code,
            StepJob {
                dossier_code: code.to_owned(),
                event_id: event_id.clone(),
                sequence,
                progress: progress.clone(),
            }
            .encode(),
        ));
    }
    Ok((event_id, sequence))
}

/// What `GET /v1/dossiers/{code}` shows per target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub target: String,
    pub last_synced_status: Option<u8>,
    pub pending: usize,
    pub waiting_for_record: usize,
    pub last_error: Option<String>,
    pub synced_at: Option<String>,
    pub records_synced: u64,
    pub steps_synced: u64,
}

pub async fn view(flows: &Flows, code: &str) -> Result<Option<Vec<TargetView>>, FlowError> {
    if load_with(&flows.ctx.queue, RECORDS, code, DossierState::decode)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let mut out = Vec::new();
    for target in flows.ctx.clients.portal.keys() {
        let ts = target_state(flows, code, target).await?.value;
        let pending = flows
            .ctx
            .queue
            .unfinished(&lane(target), code, 1000)
            .await?;
        let job_error = pending
            .first()
            .and_then(|j| j.last_error.as_ref())
            .map(|e| e.code.clone());
        out.push(TargetView {
            target: target.clone(),
            last_synced_status: ts.last_synced_status,
            pending: pending.len(),
            waiting_for_record: ts.held.len(),
            last_error: job_error.or(ts.last_error),
            synced_at: ts.synced_at,
            records_synced: ts.records_synced,
            steps_synced: ts.steps_synced,
        });
    }
    Ok(Some(out))
}

pub(crate) fn register(flows: &Flows, wiring: &mut Wiring) {
    if flows.ctx.clients.portal.is_empty() {
        return;
    }
    let handler = Arc::new(Sync(flows.clone()));
    wiring.handlers.register(RECORD_KIND, handler.clone());
    wiring.handlers.register(STEP_KIND, handler);
    for target in flows.ctx.clients.portal.keys() {
        wiring.lanes.push(lane(target));
    }
}

#[derive(Debug)]
struct Sync(Flows);

fn target_of(job: &Job) -> Result<&str, JobError> {
    job.lane
        .strip_prefix("portal:")
        .ok_or_else(|| JobError::permanent("bad_lane", "a portal job outside a portal lane"))
}

impl Sync {
    fn client(&self, target: &str) -> Result<&dvc_portal::client::PortalClient, JobError> {
        self.0.ctx.clients.portal.get(target).ok_or_else(|| {
            JobError::auth(
                "not_configured",
                format!("portal target {target} is not configured"),
            )
        })
    }

    /// Read-modify-write of one target's state, with the jobs `extra` returns.
    async fn update(
        &self,
        code: &str,
        target: &str,
        mut f: impl FnMut(&mut TargetState) -> Vec<NewJob>,
    ) -> Result<(), FlowError> {
        let key = target_key(code, target);
        for _ in 0..MAX_ROUNDS {
            let mut loaded = target_state(&self.0, code, target).await?;
            let jobs = f(&mut loaded.value);
            let expect = match loaded.version {
                0 => Expect::Absent,
                v => Expect::Version(v),
            };
            let change = Change {
                writes: vec![RecordWrite::put(
                    TARGETS,
                    &key,
                    expect,
                    loaded.value.encode(),
                )],
                jobs,
            };
            if applied(&self.0.ctx.queue.commit(change).await?) {
                return Ok(());
            }
        }
        Err(FlowError::Contended(code.to_owned()))
    }

    /// The target's state after `f`, as a change to commit with the job's completion. Only this lane
    /// writes the record (one job of a key at a time), so it needs no condition.
    async fn final_change(
        &self,
        code: &str,
        target: &str,
        f: impl FnOnce(&mut TargetState) -> Vec<NewJob>,
    ) -> Result<Change, FlowError> {
        let mut ts = target_state(&self.0, code, target).await?.value;
        let jobs = f(&mut ts);
        Ok(Change {
            writes: vec![RecordWrite::put(
                TARGETS,
                target_key(code, target),
                Expect::Any,
                ts.encode(),
            )],
            jobs,
        })
    }

    async fn sync_record(&self, job: &Job) -> Result<Change, JobError> {
        let target = target_of(job)?;
        let client = self.client(target)?;
        let rj: RecordJob = payload(job)?;
        let code = rj.dossier_code.as_str();
        let ts = target_state(&self.0, code, target).await?.value;
        let r = &rj.record;
        client
            .sync_dossier(r, ts.has_dossier())
            .await
            .map_err(|e| {
                super::redacted(
                    e,
                    &[&r.chu_ho_so, &r.email, &r.so_dien_thoai, &r.ma_doi_tuong],
                )
            })?;
        let now = rfc3339(self.0.ctx.queue.now());
        let status = rj.record.trang_thai_ho_so.parse::<u8>().ok();
        let completed = callbacks::job(
            &self.0,
            event::SYNC_COMPLETED,
            code,
            serde_json::json!({
                "dossier_code": code, "target": target, "kind": "record", "status": status,
            }),
        );
        let synced = |ts: &mut TargetState| {
            ts.record_synced = true;
            ts.last_synced_status = status.or(ts.last_synced_status);
            ts.synced_at = Some(now.clone());
            ts.last_error = None;
            ts.records_synced += 1;
            completed.clone().into_iter().collect()
        };
        if ts.held.is_empty() {
            // The common case: nothing held, so the new state goes in with the job's completion.
            return Ok(self.final_change(code, target, synced).await?);
        }
        self.update(code, target, synced).await?;
        // Steps held for this target go right after the record, in order, ten per call.
        loop {
            let held = target_state(&self.0, code, target).await?.value.held;
            if held.is_empty() {
                return Ok(Change::default());
            }
            let batch: Vec<StepJob> = held.into_iter().take(BATCH).collect();
            let steps: Vec<&Progress> = batch.iter().map(|s| &s.progress).collect();
            client.push_steps(&steps).await?;
            let sent: Vec<String> = batch.iter().map(|s| s.event_id.clone()).collect();
            let now = rfc3339(self.0.ctx.queue.now());
            self.update(code, target, |ts| {
                ts.held.retain(|s| !sent.contains(&s.event_id));
                ts.steps_synced += sent.len() as u64;
                ts.synced_at = Some(now.clone());
                vec![]
            })
            .await?;
        }
    }

    /// Steps of one dossier for one target (one job, or a batch of consecutive ones), in order.
    async fn push_steps(&self, jobs: &[Job]) -> Result<Change, JobError> {
        let Some(first) = jobs.first() else {
            return Ok(Change::default());
        };
        let target = target_of(first)?;
        let client = self.client(target)?;
        let steps: Vec<StepJob> = jobs.iter().map(StepJob::decode).collect::<Result<_, _>>()?;
        let code = steps[0].dossier_code.clone();
        let ts = target_state(&self.0, &code, target).await?.value;
        let mut has_dossier = ts.has_dossier();
        if ts.held.is_empty() && !has_dossier && client.dossier_exists(&code).await? {
            self.update(&code, target, |ts| {
                ts.known_at_portal = true;
                vec![]
            })
            .await?;
            has_dossier = true;
        }
        if !ts.held.is_empty() || !has_dossier {
            self.hold(&code, target, &steps).await?;
            return Ok(Change::default());
        }
        let missing = self
            .0
            .ctx
            .settings
            .upstreams
            .portal
            .get(target)
            .map_or(4, |t| t.profile.does_not_exist_code);
        let progress: Vec<&Progress> = steps.iter().map(|s| &s.progress).collect();
        match client.push_steps(&progress).await {
            Ok(()) => {}
            // The target says it does not have the dossier after all: hold until a record comes.
            Err(e) if e.code == format!("portal_{missing}") => {
                self.update(&code, target, |ts| {
                    ts.known_at_portal = false;
                    ts.record_synced = false;
                    vec![]
                })
                .await?;
                self.hold(&code, target, &steps).await?;
                return Ok(Change::default());
            }
            Err(e) => return Err(e),
        }
        let now = rfc3339(self.0.ctx.queue.now());
        let status = progress
            .last()
            .and_then(|p| p.trang_thai.parse::<u8>().ok());
        let n = steps.len() as u64;
        Ok(self
            .final_change(&code, target, |ts| {
                ts.steps_synced += n;
                ts.last_synced_status = status.or(ts.last_synced_status);
                ts.synced_at = Some(now.clone());
                ts.last_error = None;
                vec![]
            })
            .await?)
    }

    async fn hold(&self, code: &str, target: &str, steps: &[StepJob]) -> Result<(), FlowError> {
        self.update(code, target, |ts| {
            for step in steps {
                if !ts.held.iter().any(|s| s.event_id == step.event_id) {
                    ts.held.push(step.clone());
                }
            }
            vec![]
        })
        .await?;
        if let Some(m) = &self.0.ctx.metrics {
            m.steps_held
                .get_or_create(&crate::metrics::TargetLabels {
                    target: target.to_owned(),
                })
                .inc_by(steps.len() as u64);
        }
        Ok(())
    }
}

impl JobHandler for Sync {
    /// Delivery outside the worker (which calls `deliver`): the change is committed on its own.
    fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a> {
        Box::pin(async move {
            let change = self.deliver(std::slice::from_ref(job)).await?;
            self.0
                .ctx
                .queue
                .commit(change)
                .await
                .map_err(FlowError::from)?;
            Ok(())
        })
    }

    fn deliver<'a>(&'a self, jobs: &'a [Job]) -> crate::queue::worker::DeliveryFuture<'a> {
        Box::pin(async move {
            match jobs {
                [job] if job.kind == RECORD_KIND => self.sync_record(job).await,
                _ => self.push_steps(jobs).await,
            }
        })
    }

    /// Steps go ten to a call (the portal's limit); records one at a time.
    fn batch(&self, kind: &str) -> usize {
        if kind == STEP_KIND { BATCH } else { 1 }
    }

    fn dead<'a>(&'a self, job: &'a Job, error: &'a JobError) -> HandlerFuture<'a> {
        Box::pin(async move {
            let target = target_of(job)?;
            let code = job.ordering_key.clone();
            let failed = callbacks::job(
                &self.0,
                event::SYNC_FAILED,
                &code,
                serde_json::json!({
                    "dossier_code": code,
                    "target": target,
                    "kind": if job.kind == RECORD_KIND { "record" } else { "step" },
                    "job_id": job.id.to_string(),
                    "error_code": error.code,
                }),
            );
            self.update(&code, target, |ts| {
                ts.last_error = Some(error.code.clone());
                failed.clone().into_iter().collect()
            })
            .await?;
            Ok(())
        })
    }
}

/// For the fuzz target `store_records`: the dossier flow's stored forms read from any bytes — the
/// dossier's and a target's state record and a step job's payload — never panic, and a record that
/// reads is written back to the same bytes' meaning (it reads again as itself).
#[doc(hidden)]
pub fn fuzz_state_records(bytes: &[u8]) {
    if let Ok(state) = DossierState::decode(bytes) {
        assert_eq!(
            DossierState::decode(&state.encode()).as_ref(),
            Ok(&state),
            "a dossier state record round-trips"
        );
    }
    if let Ok(state) = TargetState::decode(bytes) {
        assert_eq!(
            TargetState::decode(&state.encode()).as_ref(),
            Ok(&state),
            "a target state record round-trips"
        );
    }
    let _ = StepJob::decode_binary(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> StepJob {
        StepJob {
            dossier_code: "H56.22-241127-0001".into(),
            event_id: "01HF7YAT00000000000000001A".into(),
            sequence: 7,
            progress: Progress {
                ma_ho_so: "H56.22-241127-0001".into(),
                nguoi_xu_ly: "Nguyễn Văn Bình".into(),
                chuc_danh: String::new(),
                thoi_diem_xu_ly: "20261127090000".into(),
                phong_ban_xu_ly: "Một cửa".into(),
                noi_dung_xu_ly: "Tiếp nhận hồ sơ".into(),
                trang_thai: "2".into(),
                ngay_bat_dau: String::new(),
                ngay_ket_thuc_theo_quy_dinh: "20261204170000".into(),
            },
        }
    }

    fn job(payload: Vec<u8>) -> Job {
        Job {
            id: ulid::Ulid::nil(),
            seq: 1,
            kind: STEP_KIND.into(),
            lane: "portal:national".into(),
            ordering_key: "H56.22-241127-0001".into(),
            idempotency_key: None,
            state: crate::queue::JobState::Leased,
            attempts: 1,
            next_attempt_at: 0,
            lease_token: None,
            lease_expires_at: None,
            last_error: None,
            created_at: 0,
            updated_at: 0,
            queued_at: 0,
            finished_at: None,
            dead_reason: None,
            payload,
        }
    }

    #[test]
    fn a_step_payload_round_trips_and_a_json_one_from_an_earlier_build_still_reads() {
        assert_eq!(StepJob::decode(&job(step().encode())), Ok(step()));
        // What builds before the binary payload queued (`to_payload`, JSON), e.g. still in a backlog.
        let json = to_payload(&step());
        assert_eq!(json.first(), Some(&b'{'));
        assert_eq!(StepJob::decode(&job(json)), Ok(step()));
    }

    #[test]
    fn a_damaged_step_payload_is_a_permanent_error_not_a_panic() {
        let bytes = step().encode();
        let refused = |payload: Vec<u8>| {
            let error = StepJob::decode(&job(payload)).expect_err("refused");
            assert_eq!(
                (error.class, error.code.as_str()),
                (dvc_upstream::ErrorClass::Permanent, "invalid_payload")
            );
        };
        for cut in 1..bytes.len() {
            refused(bytes[..cut].to_vec());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        refused(longer);
        let mut not_utf8 = bytes;
        not_utf8[1 + 4] = 0xff;
        refused(not_utf8);
    }

    fn target_state(flags: u8, held: usize) -> TargetState {
        TargetState {
            record_synced: flags & RECORD_SYNCED != 0,
            known_at_portal: flags & KNOWN_AT_PORTAL != 0,
            last_synced_status: (flags & HAS_STATUS != 0).then_some(4),
            synced_at: (flags & HAS_SYNCED_AT != 0).then(|| "2026-11-27T09:00:00Z".into()),
            last_error: (flags & HAS_ERROR != 0).then(|| "error_code 99: Lỗi hệ thống".into()),
            held: (0..held)
                .map(|i| StepJob {
                    sequence: i as u64 + 1,
                    ..step()
                })
                .collect(),
            records_synced: 3,
            steps_synced: u64::MAX,
        }
    }

    #[test]
    fn state_records_round_trip_in_binary_in_every_combination_of_their_optional_fields() {
        for flags in 0..=TARGET_FLAGS {
            for held in [0, 1, 3] {
                let ts = target_state(flags, held);
                let bytes = ts.encode();
                assert_eq!(bytes.first(), Some(&STATE_BINARY));
                let back = TargetState::decode(&bytes).expect("decodes");
                assert_eq!(back, ts, "flags {flags:#b}, {held} held");
            }
        }
        let ds = DossierState {
            code: "H56.22-241127-0001".into(),
            next_sequence: 42,
            updated_at: 1_795_000_000_123,
        };
        assert_eq!(DossierState::decode(&ds.encode()), Ok(ds));
    }

    #[test]
    fn state_records_in_json_from_an_earlier_build_still_read() {
        // As builds before the binary records stored them (`serde_json::to_vec`).
        let ds = DossierState::decode(
            br#"{"code":"H56.22-241127-0001","next_sequence":9,"updated_at":1795000000123}"#,
        )
        .expect("decodes");
        assert_eq!(
            (ds.code.as_str(), ds.next_sequence, ds.updated_at),
            ("H56.22-241127-0001", 9, 1_795_000_000_123)
        );
        let step_json = String::from_utf8(to_payload(&step())).expect("utf-8");
        let legacy = format!(
            r#"{{"record_synced":false,"known_at_portal":true,"last_error":"timeout","held":[{step_json}],"records_synced":1,"steps_synced":8}}"#
        );
        let ts = TargetState::decode(legacy.as_bytes()).expect("decodes");
        let mut expected = target_state(KNOWN_AT_PORTAL | HAS_ERROR, 1);
        expected.last_error = Some("timeout".into());
        expected.held[0].sequence = step().sequence;
        (expected.records_synced, expected.steps_synced) = (1, 8);
        assert_eq!(ts, expected);
        // The oldest records had no counters and no held steps: they default.
        let ts = TargetState::decode(br#"{"record_synced":true}"#).expect("decodes");
        assert_eq!(
            ts,
            TargetState {
                record_synced: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_damaged_state_record_is_an_error_not_a_panic() {
        let targets = target_state(TARGET_FLAGS, 2).encode();
        let dossier = DossierState {
            code: "H1".into(),
            ..Default::default()
        }
        .encode();
        type Decodes = fn(&[u8]) -> bool;
        let decodes: [(&Vec<u8>, Decodes); 2] = [
            (&targets, |b| TargetState::decode(b).is_ok()),
            (&dossier, |b| DossierState::decode(b).is_ok()),
        ];
        for (bytes, decodes) in decodes {
            assert!(decodes(bytes));
            for cut in 0..bytes.len() {
                assert!(!decodes(&bytes[..cut]), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(!decodes(&longer));
        }
        // A flag this build does not know, a string that is not UTF-8, a held step that is not
        // one, and a count of held steps far beyond the bytes: refused, nothing reserved for them.
        let mut unknown = target_state(0, 0).encode();
        unknown[1] = 1 << 5;
        assert_eq!(
            TargetState::decode(&unknown).err().as_deref(),
            Some(DAMAGED)
        );
        let mut not_utf8 = target_state(HAS_SYNCED_AT, 0).encode();
        not_utf8[2 + 4] = 0xff;
        assert_eq!(
            TargetState::decode(&not_utf8).err().as_deref(),
            Some(DAMAGED)
        );
        let mut not_a_step = target_state(0, 1).encode();
        let tag_at = 2 + 16 + 4 + 4;
        assert_eq!(not_a_step[tag_at], STEP_BINARY);
        not_a_step[tag_at] = b'{';
        assert_eq!(
            TargetState::decode(&not_a_step).err().as_deref(),
            Some(DAMAGED)
        );
        let mut huge = target_state(0, 0).encode();
        let count_at = huge.len() - 4;
        huge[count_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(TargetState::decode(&huge).err().as_deref(), Some(DAMAGED));
    }

    #[test]
    fn dossier_codes_are_bounded_and_path_safe() {
        assert!(valid_code("H56.22-241127-0001"));
        assert!(valid_code("000.00.00.H56_1"));
        for bad in ["", "a/b", "a b", "hồsơ", &"x".repeat(65)] {
            assert!(!valid_code(bad), "{bad}");
        }
    }
}
