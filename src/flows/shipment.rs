//! Postal shipments: one VNPost order per natural key, cancellation, and the tracking feed.
//!
//! Natural keys (`shipment_key` records): one `result_delivery` per dossier; at most one *active*
//! `dossier_pickup` per dossier, and pickup n+1 only once pickup n is final. A request for a key that
//! is taken answers the existing shipment. The order number is deterministic (`{dossier}` or
//! `{dossier}-TG{n}`), so even a create retried after a lost answer collides with its first attempt
//! (VNPost answers 409 with the existing barcode, which the client treats as success).
//!
//! Jobs run in lane `postal`, ordered by order number (a cancel never overtakes its create). The
//! tracking feed is read by [`spawn_tracker`]: each page's events are applied to their shipments and the
//! feed cursor (`postal_cursor`) advances in the same commit, so a restart neither re-applies nor skips
//! events; with several connector instances, the cursor's compare-and-set lets only one apply a page.
//!
//! What is stored on the shipment: ids, status, tracking code and events. The recipient (name,
//! address, phone) lives only in the create job's payload, which is removed after retention.

use std::sync::Arc;

use dvc_postal::wire::{self, CreateOrder, ShipmentKind, ShipmentState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::callbacks::{self, event};
use super::{FlowError, Flows, MAX_ROUNDS, applied, load, payload, put, rfc3339, to_payload};
use crate::queue::worker::Wiring;
use crate::queue::worker::{HandlerFuture, JobHandler};
use crate::queue::{Change, Expect, Job, JobError, Millis, NewJob};

pub const CREATE_KIND: &str = "postal.create";
pub const CANCEL_KIND: &str = "postal.cancel";
pub const LANE: &str = "postal";
pub(crate) const RECORDS: &str = "shipment";
const KEYS: &str = "shipment_key";
const ORDERS: &str = "shipment_order";
const CURSOR: &str = "postal_cursor";
const CURSOR_KEY: &str = "feed";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Submitted,
    Accepted,
    InTransit,
    OutForDelivery,
    Delivered,
    DeliveryFailed,
    Returned,
    Cancelled,
    /// Dead-lettered: the order could not be created.
    Failed,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Delivered | Status::Returned | Status::Cancelled | Status::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Submitted => "submitted",
            Status::Accepted => "accepted",
            Status::InTransit => "in_transit",
            Status::OutForDelivery => "out_for_delivery",
            Status::Delivered => "delivered",
            Status::DeliveryFailed => "delivery_failed",
            Status::Returned => "returned",
            Status::Cancelled => "cancelled",
            Status::Failed => "failed",
        }
    }

    fn from_state(s: ShipmentState) -> Status {
        match s {
            ShipmentState::Accepted => Status::Accepted,
            ShipmentState::InTransit => Status::InTransit,
            ShipmentState::OutForDelivery => Status::OutForDelivery,
            ShipmentState::Delivered => Status::Delivered,
            ShipmentState::DeliveryFailed => Status::DeliveryFailed,
            ShipmentState::Returned => Status::Returned,
            ShipmentState::Cancelled => Status::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i64>,
    pub at: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shipment {
    pub id: String,
    pub dossier_code: String,
    pub kind: ShipmentKind,
    pub order_number: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_code: Option<String>,
    #[serde(default)]
    pub events: Vec<Event>,
    pub created_at: Millis,
    #[serde(default)]
    pub cancel_requested: bool,
    /// Feed event ids already applied (the last few), so a re-read page is not applied twice.
    #[serde(default, skip_serializing)]
    pub applied_feed_ids: Vec<String>,
    /// A `failed` result delivery that a new request replaced (same order number, corrected data):
    /// the shipment that carries the order now. Its own dead create, if retried, sends nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// The ordering key of this shipment's jobs when it is not the order number: a replacement's jobs
    /// must not queue behind the dead create of the shipment it replaced (`{order_number}~{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_key: Option<String>,
}

impl Shipment {
    /// The ordering key of this shipment's create and cancel jobs.
    fn queue_key(&self) -> String {
        self.queue_key
            .clone()
            .unwrap_or_else(|| self.order_number.clone())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyEntry {
    shipment_id: String,
    /// Pickups created so far for this dossier (the n of `-TG{n}`).
    pickups: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderEntry {
    shipment_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cursor {
    last_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CreateJob {
    shipment_id: String,
    order: CreateOrder,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CancelJob {
    shipment_id: String,
}

/// A person or the agency: recipient or sender.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    pub name: String,
    pub phone: String,
    pub address: String,
    pub province_code: String,
    #[serde(default)]
    pub ward_code: Option<String>,
    #[serde(default)]
    pub district_code: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

/// `POST /v1/shipments`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub dossier_code: String,
    pub kind: String,
    pub recipient: Party,
    #[serde(default)]
    pub sender: Option<Party>,
    /// Required (checked in [`check`], so its absence is a 422 naming the field like every other).
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub cod_amount: Option<i64>,
    #[serde(default)]
    pub note: Option<String>,
}

pub use super::identity::Invalid;

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        code,
        message: message.into(),
    }
}

/// A request that passed the checks.
#[derive(Debug, Clone)]
pub struct Checked {
    dossier_code: String,
    kind: ShipmentKind,
    order: CreateOrder,
}

/// Checks a party and answers it with its codes in the current catalogue's form: the province's
/// two-digit code (a pre-2025 code mapped to the province that absorbed it), the ward's five digits, and
/// no district unless one was given.
fn check_party(
    faults: &mut Vec<Invalid>,
    p: &Party,
    fields: [&'static str; 6],
    ward_required: bool,
) -> Party {
    let [name, phone, address, province, ward, district] = fields;
    if p.name.trim().is_empty() || p.name.chars().count() > 200 {
        faults.push(invalid(name, "required", "1 to 200 characters"));
    }
    let digits = p.phone.trim().trim_start_matches('+');
    if !(9..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        faults.push(invalid(
            phone,
            "invalid_phone",
            "9 to 15 digits, optionally after +",
        ));
    }
    if p.address.trim().is_empty() || p.address.chars().count() > 500 {
        faults.push(invalid(address, "required", "1 to 500 characters"));
    }
    let catalogue = dvc_upstream::admin::catalogue();
    let province_code = match catalogue.province(&p.province_code) {
        Ok(found) => Some(found.code),
        Err(e) => {
            faults.push(invalid(province, e.code(), e.to_string()));
            None
        }
    };
    let ward_code = match (p.ward_code.as_deref().map(str::trim), &province_code) {
        (Some(w), Some(province)) => match catalogue.ward(province, w) {
            Ok(code) => Some(code),
            Err(e) => {
                faults.push(invalid(ward, e.code(), e.to_string()));
                None
            }
        },
        (Some(_), None) => None,
        (None, _) if ward_required => {
            faults.push(invalid(ward, "required", "ward_code is required"));
            None
        }
        (None, _) => None,
    };
    let district_code =
        dvc_upstream::admin::district(p.district_code.as_deref()).unwrap_or_else(|_| {
            faults.push(invalid(
                district,
                "invalid_admin_code",
                "a district code (up to 5 digits), only when known",
            ));
            None
        });
    Party {
        name: p.name.trim().to_owned(),
        phone: p.phone.trim().to_owned(),
        address: p.address.trim().to_owned(),
        province_code: province_code.unwrap_or_default(),
        ward_code,
        district_code: district_code.map(str::to_owned),
        email: p
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned),
    }
}

/// Checks a request and builds the VNPost order (without its number, which depends on the key).
pub fn check(flows: &Flows, req: &Request) -> Result<Checked, Vec<Invalid>> {
    let mut faults = Vec::new();
    if !super::dossier::valid_code(&req.dossier_code) {
        faults.push(invalid(
            "dossier_code",
            "invalid_dossier_code",
            "1 to 64 of A-Z a-z 0-9 . _ -",
        ));
    }
    let kind = match req.kind.as_str() {
        "result_delivery" => Some(ShipmentKind::ResultDelivery),
        "dossier_pickup" => Some(ShipmentKind::DossierPickup),
        _ => {
            faults.push(invalid(
                "kind",
                "invalid_kind",
                "expected result_delivery or dossier_pickup",
            ));
            None
        }
    };
    let recipient = check_party(
        &mut faults,
        &req.recipient,
        [
            "recipient.name",
            "recipient.phone",
            "recipient.address",
            "recipient.province_code",
            "recipient.ward_code",
            "recipient.district_code",
        ],
        true,
    );
    let configured = flows.ctx.settings.flows.postal.sender.as_ref();
    let sender = match (&req.sender, configured) {
        (Some(s), _) => check_party(
            &mut faults,
            s,
            [
                "sender.name",
                "sender.phone",
                "sender.address",
                "sender.province_code",
                "sender.ward_code",
                "sender.district_code",
            ],
            false,
        ),
        // Checked against the catalogue when the settings were loaded.
        (None, Some(c)) => Party {
            name: c.name.clone(),
            phone: c.phone.clone(),
            address: c.address.clone(),
            province_code: c.province_code.clone(),
            ward_code: c.ward_code.clone(),
            district_code: c.district_code.clone(),
            email: c.email.clone(),
        },
        (None, None) => {
            faults.push(invalid(
                "sender",
                "required",
                "no sender configured (flows.postal.sender); give one in the request",
            ));
            Party::default()
        }
    };
    let cod = req.cod_amount.unwrap_or(0);
    if !(0..=100_000_000_000).contains(&cod) {
        faults.push(invalid(
            "cod_amount",
            "invalid_amount",
            "VND from 0 to 100,000,000,000",
        ));
    }
    if req.description.trim().is_empty() {
        faults.push(invalid(
            "description",
            "required",
            "what is sent: 1 to 1000 characters",
        ));
    } else if req.description.chars().count() > 1000 {
        faults.push(invalid(
            "description",
            "too_long",
            "at most 1000 characters",
        ));
    }
    let (Some(kind), true) = (kind, faults.is_empty()) else {
        return Err(faults);
    };
    let customer_code = flows
        .ctx
        .settings
        .upstreams
        .postal
        .as_ref()
        .map(|p| p.customer_code.clone())
        .unwrap_or_default();
    let r = &recipient;
    let order = CreateOrder {
        customer_code,
        order_number: String::new(),
        cod_amount: cod as f64,
        sender_name: sender.name.clone(),
        sender_address: sender.address.clone(),
        sender_tel: sender.phone.clone(),
        sender_email: sender.email.clone().unwrap_or_default(),
        sender_province: sender.province_code.clone(),
        sender_district: sender.district_code.clone(),
        sender_desc: req.note.clone().unwrap_or_default(),
        description: req.description.clone(),
        receiver_name: r.name.clone(),
        receiver_address: r.address.clone(),
        receiver_tel: r.phone.clone(),
        receiver_email: r.email.clone().unwrap_or_default(),
        receiver_province: r.province_code.clone(),
        receiver_district: r.district_code.clone(),
    };
    Ok(Checked {
        dossier_code: req.dossier_code.clone(),
        kind,
        order,
    })
}

/// What accepting a checked request means right now.
#[derive(Debug)]
pub enum Plan {
    /// The natural key is taken by this shipment: answer it (200), create nothing.
    Existing(Shipment),
    /// Commit this change (the API adds its idempotency record) and answer 202 with the shipment.
    New(Box<Shipment>, Change),
}

fn key_of(dossier: &str, kind: ShipmentKind) -> String {
    match kind {
        ShipmentKind::ResultDelivery => format!("{dossier}:result_delivery"),
        ShipmentKind::DossierPickup => format!("{dossier}:dossier_pickup"),
    }
}

/// Decides between the existing shipment and a new one. A conflict on commit means someone else took
/// the key meanwhile: plan again.
pub async fn plan(flows: &Flows, checked: &Checked) -> Result<Plan, FlowError> {
    let q = &flows.ctx.queue;
    let key = key_of(&checked.dossier_code, checked.kind);
    let entry = load::<KeyEntry>(q, KEYS, &key).await?;
    // A result delivery whose order failed is replaced by a new request (the portal corrected the
    // recipient): same order number, so VNPost still sees at most one order.
    let mut replaced = None;
    let (expect, pickup) = match &entry {
        None => (Expect::Absent, 1),
        Some(e) => {
            let existing = load::<Shipment>(q, RECORDS, &e.value.shipment_id).await?;
            match existing {
                Some(s)
                    if checked.kind == ShipmentKind::ResultDelivery
                        && s.value.status == Status::Failed
                        && s.value.superseded_by.is_none() =>
                {
                    replaced = Some(s);
                    (Expect::Version(e.version), e.value.pickups)
                }
                Some(s)
                    if checked.kind == ShipmentKind::ResultDelivery
                        || !s.value.status.is_final() =>
                {
                    return Ok(Plan::Existing(s.value));
                }
                _ => (Expect::Version(e.version), e.value.pickups + 1),
            }
        }
    };
    let id = ulid::Ulid::new().to_string();
    let order_number = wire::order_number(&checked.dossier_code, checked.kind, pickup);
    let now = q.now();
    let shipment = Shipment {
        id: id.clone(),
        dossier_code: checked.dossier_code.clone(),
        kind: checked.kind,
        order_number: order_number.clone(),
        status: Status::Queued,
        tracking_code: None,
        events: vec![Event {
            status: Status::Queued,
            status_code: None,
            at: rfc3339(now),
            note: String::new(),
        }],
        created_at: now,
        cancel_requested: false,
        applied_feed_ids: vec![],
        superseded_by: None,
        queue_key: replaced.as_ref().map(|_| format!("{order_number}~{id}")),
    };
    let mut order = checked.order.clone();
    order.order_number = order_number.clone();
    let mut writes = Vec::new();
    if let Some(mut old) = replaced {
        old.value.superseded_by = Some(id.clone());
        writes.push(old.write_back(RECORDS, &old.value.id.clone()));
    }
    let change = Change {
        writes: writes
            .into_iter()
            .chain([
                put(
                    KEYS,
                    &key,
                    expect,
                    &KeyEntry {
                        shipment_id: id.clone(),
                        pickups: pickup,
                    },
                ),
                put(RECORDS, &id, Expect::Absent, &shipment),
                put(
                    ORDERS,
                    &order_number,
                    Expect::Any,
                    &OrderEntry {
                        shipment_id: id.clone(),
                    },
                ),
            ])
            .collect(),
        jobs: vec![NewJob::new(
            CREATE_KIND,
            LANE,
            shipment.queue_key(),
            to_payload(&CreateJob {
                shipment_id: id,
                order,
            }),
        )],
    };
    Ok(Plan::New(Box::new(shipment), change))
}

pub async fn get(flows: &Flows, id: &str) -> Result<Option<Shipment>, FlowError> {
    Ok(load::<Shipment>(&flows.ctx.queue, RECORDS, id)
        .await?
        .map(|l| l.value))
}

/// What a cancel request found.
#[derive(Debug)]
pub enum CancelPlan {
    NotFound,
    /// Already final: nothing to cancel (the API answers 409, or 202 if it is already cancelled).
    Final(Shipment),
    /// Commit this change (marks the request and enqueues the cancel).
    Cancel(Shipment, Change),
}

pub async fn plan_cancel(flows: &Flows, id: &str) -> Result<CancelPlan, FlowError> {
    let Some(mut loaded) = load::<Shipment>(&flows.ctx.queue, RECORDS, id).await? else {
        return Ok(CancelPlan::NotFound);
    };
    if loaded.value.status.is_final() {
        return Ok(CancelPlan::Final(loaded.value));
    }
    let jobs = if loaded.value.cancel_requested {
        vec![]
    } else {
        vec![
            NewJob::new(
                CANCEL_KIND,
                LANE,
                loaded.value.queue_key(),
                to_payload(&CancelJob {
                    shipment_id: id.to_owned(),
                }),
            )
            .with_idempotency_key(format!("cancel:{id}")),
        ]
    };
    loaded.value.cancel_requested = true;
    let change = Change {
        writes: vec![loaded.write_back(RECORDS, id)],
        jobs,
    };
    Ok(CancelPlan::Cancel(loaded.value, change))
}

/// The shipment as the portal reads it.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub id: String,
    pub dossier_code: String,
    pub kind: ShipmentKind,
    pub order_number: String,
    pub status: Status,
    pub tracking_code: Option<String>,
    pub events: Vec<Event>,
}

pub fn view(s: &Shipment) -> View {
    View {
        id: s.id.clone(),
        dossier_code: s.dossier_code.clone(),
        kind: s.kind,
        order_number: s.order_number.clone(),
        status: s.status,
        tracking_code: s.tracking_code.clone(),
        events: s.events.clone(),
    }
}

fn count_transition(flows: &Flows, s: &Shipment) {
    if let Some(m) = &flows.ctx.metrics {
        let kind = match s.kind {
            ShipmentKind::ResultDelivery => "result_delivery",
            ShipmentKind::DossierPickup => "dossier_pickup",
        };
        m.shipment_transitions
            .get_or_create(&crate::metrics::ShipmentLabels {
                kind: kind.to_owned(),
                status: s.status.as_str().to_owned(),
            })
            .inc();
    }
}

fn count_event(flows: &Flows, outcome: &str) {
    if let Some(m) = &flows.ctx.metrics {
        m.tracking_events
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

fn status_changed(flows: &Flows, s: &Shipment) -> Option<NewJob> {
    let last = s.events.last();
    callbacks::job(
        flows,
        event::SHIPMENT_STATUS_CHANGED,
        &s.id,
        serde_json::json!({
            "shipment_id": s.id,
            "dossier_code": s.dossier_code,
            "kind": s.kind,
            "order_number": s.order_number,
            "status": s.status,
            "tracking_code": s.tracking_code,
            "status_code": last.and_then(|e| e.status_code),
            "at": last.map(|e| e.at.clone()),
        }),
    )
}

pub(crate) fn register(flows: &Flows, wiring: &mut Wiring) {
    if flows.ctx.clients.postal.is_none() {
        return;
    }
    let handler = Arc::new(Postal(flows.clone()));
    wiring.handlers.register(CREATE_KIND, handler.clone());
    wiring.handlers.register(CANCEL_KIND, handler);
    wiring.lanes.push(LANE.to_owned());
}

#[derive(Debug)]
struct Postal(Flows);

impl Postal {
    /// Read-modify-write of a shipment; `f` answers false to leave it unchanged.
    async fn update(
        &self,
        id: &str,
        mut f: impl FnMut(&mut Shipment) -> bool,
    ) -> Result<(), FlowError> {
        let q = &self.0.ctx.queue;
        for _ in 0..MAX_ROUNDS {
            let Some(mut loaded) = load::<Shipment>(q, RECORDS, id).await? else {
                return Ok(());
            };
            let before = loaded.value.status;
            if !f(&mut loaded.value) {
                return Ok(());
            }
            let change = Change {
                writes: vec![loaded.write_back(RECORDS, id)],
                jobs: status_changed(&self.0, &loaded.value).into_iter().collect(),
            };
            if applied(&q.commit(change).await?) {
                if loaded.value.status != before {
                    count_transition(&self.0, &loaded.value);
                }
                return Ok(());
            }
        }
        Err(FlowError::Contended(id.to_owned()))
    }

    fn client(&self) -> Result<&dvc_postal::client::PostalClient, JobError> {
        self.0
            .ctx
            .clients
            .postal
            .as_ref()
            .ok_or_else(|| JobError::auth("not_configured", "no postal upstream is configured"))
    }

    async fn create(&self, job: &Job) -> Result<(), JobError> {
        let cj: CreateJob = payload(job)?;
        let Some(current) = get(&self.0, &cj.shipment_id).await? else {
            return Ok(());
        };
        let now = rfc3339(self.0.ctx.queue.now());
        if current.status == Status::Queued && current.cancel_requested {
            // Cancelled before VNPost ever heard of it.
            self.update(&cj.shipment_id, |s| {
                if s.status != Status::Queued {
                    return false;
                }
                s.status = Status::Cancelled;
                s.events.push(Event {
                    status: Status::Cancelled,
                    status_code: None,
                    at: now.clone(),
                    note: "cancelled before submission".into(),
                });
                true
            })
            .await?;
            return Ok(());
        }
        // A `failed` shipment is one whose create was dead-lettered: an operator's retry or replay of
        // that job must create the order (or adopt the one VNPost already has: the order number is
        // deterministic), not be marked done without a call.
        if !matches!(current.status, Status::Queued | Status::Failed)
            || current.superseded_by.is_some()
        {
            return Ok(());
        }
        let o = &cj.order;
        let created = self.client()?.create_order(o).await.map_err(|e| {
            super::redacted(
                e,
                &[
                    &o.receiver_name,
                    &o.receiver_address,
                    &o.receiver_tel,
                    &o.receiver_email,
                    &o.sender_name,
                    &o.sender_address,
                    &o.sender_tel,
                    &o.sender_email,
                ],
            )
        })?;
        self.update(&cj.shipment_id, |s| {
            let unsubmitted = matches!(s.status, Status::Queued | Status::Failed);
            if s.tracking_code.is_some() && !unsubmitted {
                return false;
            }
            s.tracking_code = Some(created.item_code.clone());
            if unsubmitted {
                s.status = Status::Submitted;
                s.events.push(Event {
                    status: Status::Submitted,
                    status_code: None,
                    at: now.clone(),
                    note: if created.already_existed {
                        "order already existed at VNPost".into()
                    } else {
                        String::new()
                    },
                });
            }
            true
        })
        .await?;
        Ok(())
    }

    async fn cancel(&self, job: &Job) -> Result<(), JobError> {
        let cj: CancelJob = payload(job)?;
        let Some(current) = get(&self.0, &cj.shipment_id).await? else {
            return Ok(());
        };
        if current.status.is_final() {
            return Ok(());
        }
        let now = rfc3339(self.0.ctx.queue.now());
        let note = if current.status == Status::Queued {
            "cancelled before submission".to_owned()
        } else {
            match self.client()?.cancel_order(&current.order_number).await {
                Ok(()) => String::new(),
                // VNPost refuses to cancel a delivered order: the feed will report the delivery.
                Err(e) if e.code == "vnpost_102" => {
                    self.update(&cj.shipment_id, |s| {
                        s.events.push(Event {
                            status: s.status,
                            status_code: None,
                            at: now.clone(),
                            note: "cancel refused: already delivered".into(),
                        });
                        true
                    })
                    .await?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        };
        self.update(&cj.shipment_id, |s| {
            if s.status.is_final() {
                return false;
            }
            s.status = Status::Cancelled;
            s.events.push(Event {
                status: Status::Cancelled,
                status_code: None,
                at: now.clone(),
                note: note.clone(),
            });
            true
        })
        .await?;
        Ok(())
    }
}

impl JobHandler for Postal {
    fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a> {
        Box::pin(async move {
            match job.kind.as_str() {
                CREATE_KIND => self.create(job).await,
                _ => self.cancel(job).await,
            }
        })
    }

    fn dead<'a>(&'a self, job: &'a Job, error: &'a JobError) -> HandlerFuture<'a> {
        Box::pin(async move {
            if job.kind != CREATE_KIND {
                return Ok(());
            }
            let cj: CreateJob = payload(job)?;
            let now = rfc3339(self.0.ctx.queue.now());
            self.update(&cj.shipment_id, |s| {
                if s.status != Status::Queued {
                    return false;
                }
                s.status = Status::Failed;
                s.events.push(Event {
                    status: Status::Failed,
                    status_code: None,
                    at: now.clone(),
                    note: error.code.clone(),
                });
                true
            })
            .await?;
            Ok(())
        })
    }
}

/// Feed ids remembered per shipment, against a page being applied twice by a cursor race.
const REMEMBERED_FEED_IDS: usize = 16;

/// Reads the tracking feed every `flows.postal.tracking_interval` until shutdown.
pub fn spawn_tracker(flows: Flows, mut stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    flows.ctx.clients.postal.as_ref()?;
    Some(tokio::spawn(async move {
        let every = flows.ctx.settings.flows.postal.tracking_interval;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => {
                    // Drain what is there, page by page, then wait for the next tick.
                    for _ in 0..50 {
                        match poll_once(&flows).await {
                            Ok(n) if n >= flows.ctx.settings.flows.postal.tracking_page_size as usize => {}
                            Ok(_) => break,
                            Err(error) => {
                                tracing::warn!(code = %error.code, class = error.class.as_str(),
                                    "tracking feed read failed; trying again next interval");
                                break;
                            }
                        }
                    }
                }
                _ = stop.changed() => {}
            }
        }
    }))
}

/// Reads one page after the stored cursor and applies it. Answers how many events the page had.
pub async fn poll_once(flows: &Flows) -> Result<usize, JobError> {
    let Some(client) = flows.ctx.clients.postal.as_ref() else {
        return Ok(0);
    };
    let q = &flows.ctx.queue;
    let size = flows.ctx.settings.flows.postal.tracking_page_size;
    for _ in 0..MAX_ROUNDS {
        let cursor = load::<Cursor>(q, CURSOR, CURSOR_KEY).await?;
        let last_id = cursor
            .as_ref()
            .map_or(wire::FIRST_LAST_ID.to_owned(), |c| c.value.last_id.clone());
        let page = client.tracking(&last_id, size).await?;
        let events = page.embedded.docs;
        let Some(new_last) = events.last().map(|e| e.id.oid.to_ascii_lowercase()) else {
            return Ok(0);
        };
        let mut change = Change::default();
        change.writes.push(put(
            CURSOR,
            CURSOR_KEY,
            cursor
                .as_ref()
                .map_or(Expect::Absent, |c| Expect::Version(c.version)),
            &Cursor { last_id: new_last },
        ));
        // Events grouped by shipment, in feed order.
        let mut touched: Vec<(super::Loaded<Shipment>, Vec<&wire::TrackingEvent>)> = Vec::new();
        for ev in &events {
            if let Some(slot) = touched
                .iter_mut()
                .find(|(s, _)| s.value.order_number == ev.order_number)
            {
                slot.1.push(ev);
                continue;
            }
            let Some(entry) = load::<OrderEntry>(q, ORDERS, &ev.order_number).await? else {
                // Another system's order on the same customer account.
                continue;
            };
            if let Some(s) = load::<Shipment>(q, RECORDS, &entry.value.shipment_id).await? {
                touched.push((s, vec![ev]));
            }
        }
        let table = client.status_table();
        let flow = &flows.ctx.settings.flows.postal;
        let mut applied_events = 0;
        let mut repeated = 0;
        let mut transitions: Vec<Shipment> = Vec::new();
        for (loaded, evs) in &mut touched {
            let s = &mut loaded.value;
            for ev in evs.iter() {
                let fid = ev.id.oid.to_ascii_lowercase();
                if s.applied_feed_ids.contains(&fid) {
                    repeated += 1;
                    continue;
                }
                applied_events += 1;
                s.applied_feed_ids.push(fid);
                let overflow = s.applied_feed_ids.len().saturating_sub(REMEMBERED_FEED_IDS);
                s.applied_feed_ids.drain(..overflow);
                let state = table.state(ev.status_code).map(Status::from_state);
                if s.tracking_code.is_none() && !ev.item_code.is_empty() {
                    s.tracking_code = Some(ev.item_code.clone());
                }
                let at = rfc3339(u64::try_from(ev.event_time).unwrap_or(0));
                s.events.push(Event {
                    status: state.unwrap_or(s.status),
                    status_code: Some(ev.status_code),
                    at,
                    note: dvc_upstream::http::mask_digit_runs(&ev.status_message),
                });
                // A final state is never left (a late "in transit" after "delivered" is only logged).
                if let Some(state) = state
                    && !s.status.is_final()
                    && state != s.status
                {
                    s.status = state;
                    transitions.push(s.clone());
                    if let Some(job) = status_changed(flows, s) {
                        change.jobs.push(job);
                    }
                    if state == Status::Delivered
                        && s.kind == ShipmentKind::ResultDelivery
                        && flow.result_returned_step
                    {
                        result_returned(flows, &mut change, s, &ev.event_time).await?;
                    }
                }
            }
            change
                .writes
                .push(loaded.write_back(RECORDS, &loaded.value.id.clone()));
        }
        if applied(&q.commit(change).await.map_err(FlowError::from)?) {
            for _ in 0..applied_events {
                count_event(flows, "applied");
            }
            for _ in 0..repeated {
                count_event(flows, "repeated");
            }
            let routed: usize = touched.iter().map(|(_, e)| e.len()).sum();
            for _ in routed..events.len() {
                count_event(flows, "unknown_order");
            }
            for s in &transitions {
                count_transition(flows, s);
            }
            return Ok(events.len());
        }
        // Someone else moved the cursor or a shipment meanwhile: read again.
    }
    Err(FlowError::Contended(CURSOR.to_owned()).into())
}

/// The "result returned" (10) step for the dossier whose result was delivered, in the same commit.
async fn result_returned(
    flows: &Flows,
    change: &mut Change,
    s: &Shipment,
    event_time: &i64,
) -> Result<(), FlowError> {
    let occurred = rfc3339(u64::try_from(*event_time).unwrap_or(0));
    let input = super::dossier::EventInput {
        status: "10".into(),
        occurred_at: occurred,
        handler: "VNPost".into(),
        content: flows
            .ctx
            .settings
            .flows
            .postal
            .result_returned_content
            .clone(),
        ..Default::default()
    };
    match super::dossier::check_event(flows, &s.dossier_code, &input) {
        Ok(steps) => {
            super::dossier::plan_event(flows, change, &s.dossier_code, &steps).await?;
        }
        Err(_) => {
            tracing::warn!(shipment_id = %s.id, "could not build the result-returned step");
        }
    }
    Ok(())
}
