//! What the portal sends — a dossier record or a processing step — checked once per target.

use super::*;

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

pub use crate::flows::identity::Invalid;

pub(super) fn invalid(
    field: &'static str,
    code: &'static str,
    message: impl Into<String>,
) -> Invalid {
    Invalid {
        field,
        code,
        message: message.into(),
    }
}

pub(super) fn time(
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
pub(super) fn status_codes(
    flows: &Flows,
    faults: &mut Vec<Invalid>,
    status: &str,
) -> BTreeMap<String, u8> {
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

pub(super) async fn state(flows: &Flows, code: &str) -> Result<Loaded<DossierState>, FlowError> {
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
