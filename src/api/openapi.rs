//! The OpenAPI 3.1 document of the API as implemented, served at `GET /v1/openapi.json`. The copy in
//! `docs/openapi.json` must equal it (a test says so), and every operation it lists must be routed (a
//! test calls each).

use serde_json::{Value, json};

/// (method, path) of every documented operation.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/v1/identity/verifications"),
    ("get", "/v1/identity/verifications/{id}"),
    ("post", "/v1/shipments"),
    ("get", "/v1/shipments/{id}"),
    ("post", "/v1/shipments/{id}/cancel"),
    ("put", "/v1/dossiers/{code}"),
    ("get", "/v1/dossiers/{code}"),
    ("post", "/v1/dossiers/{code}/events"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/retry"),
    ("post", "/v1/jobs/{id}/discard"),
    ("post", "/v1/jobs/replay"),
];

fn problem_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        let description = match *code {
            "400" => {
                "Invalid body, query, id or Idempotency-Key; unknown fields are named (problem+json with `errors`)"
            }
            "401" => "Missing or invalid bearer token",
            "403" => {
                "The token lacks the scope (`portal` for submitting and reading, `admin` for jobs)"
            }
            "404" => "No such resource",
            "409" => {
                "Conflict: `idempotency_key_reused` (the key was used with another request), `wrong_state` (job), `shipment_final` (cancel)"
            }
            "413" => "The body is larger than the configured limit",
            "429" => {
                "The token exceeded its request rate (`rate_limited`); retry after `Retry-After` seconds"
            }
            "415" => "The body is not application/json",
            "422" => {
                "A field is not valid (`validation_failed`; `invalid_citizen_id` for a structurally impossible ID, with the fault in `errors[].code`). Nothing was accepted."
            }
            "503" => {
                "The store cannot write (nothing was accepted; retry later, `Retry-After`), or the upstream this needs is not configured (`upstream_not_configured`)"
            }
            _ => "Error",
        };
        out.insert(
            (*code).to_owned(),
            json!({ "description": description, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } }),
        );
    }
    Value::Object(out)
}

fn filters() -> Vec<Value> {
    ["kind", "target", "dossier_code"]
        .iter()
        .map(|name| {
            let description = match *name {
                "kind" => "Job kind, e.g. `portal.step`",
                "target" => "Lane, e.g. `portal:national`",
                _ => "Dossier code: every job of the dossier (records, steps, the result shipment, pickups `{code}-TG{n}`, and the identity checks that named it)",
            };
            json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": "string", "minLength": 1 } })
        })
        .collect()
}

/// `replay`'s parameters: the filters, `state` (only `dead`), and `all`.
fn replay_parameters() -> Vec<Value> {
    let mut p = filters();
    p.push(json!({ "name": "state", "in": "query", "required": false, "description": "Only `dead`: replay takes dead jobs only", "schema": { "type": "string", "enum": ["dead"] } }));
    p.push(json!({ "name": "all", "in": "query", "required": false, "description": "`true` to requeue every dead job; required when no kind, target or dossier_code narrows the replay", "schema": { "type": "string", "enum": ["true", "false"] } }));
    p
}

fn with_responses(ok: Value, errors: &[&str]) -> Value {
    let mut responses = problem_responses(errors);
    if let (Some(map), Value::Object(ok)) = (responses.as_object_mut(), ok) {
        map.extend(ok);
    }
    responses
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn answer(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn idempotency_key() -> Value {
    json!({ "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "1–128 printable ASCII. The same key with the same request answers the original response (status and body, header `Idempotent-Replayed: true`) for 24 h; with another request, 409 `idempotency_key_reused`.",
            "schema": { "type": "string", "maxLength": 128 } })
}

/// The portal's resources: identity, shipments, dossiers.
fn portal_paths() -> serde_json::Map<String, Value> {
    let id = |what: &str| json!({ "name": "id", "in": "path", "required": true, "description": what, "schema": { "type": "string" } });
    let code = json!({ "name": "code", "in": "path", "required": true, "description": "Dossier code (MaHoSo): 1–64 of A-Z a-z 0-9 . _ -", "schema": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" } });
    let write = [
        "400", "401", "403", "409", "413", "415", "422", "429", "503",
    ];
    let read = ["401", "403", "404", "429", "503"];
    let paths = json!({
        "/v1/identity/verifications": { "post": {
            "operationId": "verifyIdentity", "tags": ["identity"],
            "summary": "Verify a citizen against the population DB (scope portal)",
            "description": "Structural CCCD faults answer 422 without an upstream call. Otherwise the lookup runs through the durable queue; the request waits up to `wait` for the verdict (200), else answers 202 `pending` and the verdict comes as an `identity.verification.completed` callback. Identical requests within the cache window are answered from the previous verdict (`cached: true`). No data from the population DB is ever returned.",
            "parameters": [
                { "name": "wait", "in": "query", "required": false, "description": "How long to wait for the verdict: a duration such as `500ms` or `5s`, at most `30s` (default `5s`).", "schema": { "type": "string" } },
                idempotency_key()
            ],
            "requestBody": body("VerificationRequest"),
            "responses": with_responses(json!({
                "200": answer("The verdict", "Verification"),
                "202": answer("Accepted durably; the verdict will be called back", "Pending")
            }), &write)
        } },
        "/v1/identity/verifications/{id}": { "get": {
            "operationId": "getVerification", "tags": ["identity"], "summary": "A verification's verdict (scope portal)",
            "parameters": [id("Verification id")],
            "responses": with_responses(json!({ "200": answer("The verification", "Verification") }), &read)
        } },
        "/v1/shipments": { "post": {
            "operationId": "createShipment", "tags": ["postal"],
            "summary": "Hand a result to VNPost, or ask for a dossier pickup (scope portal)",
            "description": "One `result_delivery` per dossier; at most one active `dossier_pickup` per dossier (pickup n+1 only after pickup n is final; order number `{dossier_code}-TG{n}`). A request for a taken natural key answers 200 with the existing shipment and creates nothing.",
            "parameters": [idempotency_key()],
            "requestBody": body("ShipmentRequest"),
            "responses": with_responses(json!({
                "200": answer("The existing shipment for this natural key", "Shipment"),
                "202": answer("Accepted durably; the order will be created", "ShipmentAccepted")
            }), &write)
        } },
        "/v1/shipments/{id}": { "get": {
            "operationId": "getShipment", "tags": ["postal"], "summary": "A shipment, its tracking code and events (scope portal)",
            "parameters": [id("Shipment id")],
            "responses": with_responses(json!({ "200": answer("The shipment", "Shipment") }), &read)
        } },
        "/v1/shipments/{id}/cancel": { "post": {
            "operationId": "cancelShipment", "tags": ["postal"], "summary": "Cancel a shipment (scope portal)",
            "description": "Accepted durably (202); VNPost is asked after the order's creation. A shipment already delivered, returned or failed answers 409 `shipment_final`; one already cancelled answers 202 again.",
            "parameters": [id("Shipment id"), idempotency_key()],
            "responses": with_responses(json!({ "202": { "description": "Cancel accepted", "content": { "application/json": { "schema": { "type": "object", "properties": { "id": { "type": "string" }, "status": { "$ref": "#/components/schemas/ShipmentStatus" }, "cancel_requested": { "type": "boolean" } } } } } } }), &["400", "401", "403", "404", "409", "503"])
        } },
        "/v1/dossiers/{code}": {
            "put": {
                "operationId": "putDossier", "tags": ["dossiers"],
                "summary": "The dossier's current record, synced to every portal target (scope portal)",
                "description": "Mapped one-to-one onto `DongBoHoSoMC`; `status` is a configured local word or a portal code 1–10 (mapped per target). Per dossier and target, records and steps reach the portal in submission order; a retried create becomes an update.",
                "parameters": [code.clone(), idempotency_key()],
                "requestBody": body("DossierRecord"),
                "responses": with_responses(json!({ "202": { "description": "Accepted durably", "content": { "application/json": { "schema": { "type": "object", "required": ["dossier_code", "targets", "status"], "properties": { "dossier_code": { "type": "string" }, "targets": { "type": "array", "items": { "type": "string" } }, "status": { "const": "queued" } } } } } } }), &write)
            },
            "get": {
                "operationId": "getDossier", "tags": ["dossiers"], "summary": "Sync state per portal target (scope portal)",
                "parameters": [code.clone()],
                "responses": with_responses(json!({ "200": answer("Per target: last synced status, pending jobs, steps waiting for the record, last error", "DossierSync") }), &["400", "401", "403", "404", "503"])
            }
        },
        "/v1/dossiers/{code}/events": { "post": {
            "operationId": "addDossierEvent", "tags": ["dossiers"],
            "summary": "One processing step, synced to every portal target (scope portal)",
            "description": "Steps reach each target in submission order, never before the dossier exists there: a step for a dossier the target does not have waits (`waiting_for_record`) until a record is PUT. Consecutive steps are sent up to ten per call.",
            "parameters": [code, idempotency_key()],
            "requestBody": body("DossierEvent"),
            "responses": with_responses(json!({ "202": { "description": "Accepted durably", "content": { "application/json": { "schema": { "type": "object", "required": ["event_id", "sequence"], "properties": { "event_id": { "type": "string" }, "sequence": { "type": "integer", "minimum": 1 } } } } } } }), &write)
        } }
    });
    match paths {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn portal_schemas() -> serde_json::Map<String, Value> {
    let verdict = json!({ "type": "string", "enum": ["match", "mismatch", "match_without_diacritics", "not_checked"] });
    let party = |required: &[&str]| {
        json!({
            "type": "object", "additionalProperties": false, "required": required,
            "properties": {
                "name": { "type": "string" }, "phone": { "type": "string", "description": "9–15 digits, optionally after +" },
                "address": { "type": "string" }, "province_code": { "type": "string", "pattern": "^[0-9]{1,3}$", "description": "Province code of the administrative catalogue in force since 2025-07-01; a pre-2025 code is mapped to the province that absorbed it (docs/PROTOCOLS.md)" },
                "ward_code": { "type": "string", "pattern": "^[0-9]{1,5}$", "description": "Commune or ward code of the current catalogue, inside the province" }, "district_code": { "type": "string", "pattern": "^[0-9]{0,5}$", "description": "Only when known (two-level local government since 2025-07-01): left out of the VNPost order when absent or empty" },
                "email": { "type": "string" }
            }
        })
    };
    let opt_time = json!({ "type": "string", "format": "date-time" });
    let schemas = json!({
        "VerificationRequest": {
            "type": "object", "additionalProperties": false,
            "required": ["citizen_id", "full_name", "date_of_birth", "procedure_code", "officer_id"],
            "properties": {
                "citizen_id": { "type": "string", "description": "12-digit CCCD / personal identification number" },
                "full_name": { "type": "string" },
                "date_of_birth": { "type": "string", "description": "`YYYY-MM-DD` or `YYYY`" },
                "gender": { "type": "string", "enum": ["male", "female"] },
                "procedure_code": { "type": "string", "description": "MaTTHC / MaDVC" },
                "officer_id": { "type": "string", "description": "MaCanBo" },
                "dossier_code": { "type": "string" },
                "legacy_id": { "type": "string", "description": "9-digit CMND" },
                "mode": { "type": "string", "enum": ["exists", "full"], "description": "`exists` → XacThucThongTinCongDan, `full` → XacMinhThongTinNhanThan; default from configuration" }
            }
        },
        "Verification": {
            "type": "object", "required": ["id", "status", "cached"],
            "properties": {
                "id": { "type": "string" },
                "status": { "type": "string", "enum": ["pending", "verified", "mismatch", "not_found", "failed"] },
                "checks": { "type": "object", "properties": { "citizen_id": verdict, "full_name": verdict, "date_of_birth": verdict, "gender": verdict } },
                "upstream_request_id": { "type": "string" }, "checked_at": { "type": "string", "format": "date-time" },
                "dossier_code": { "type": "string" }, "error_code": { "type": "string", "description": "Why a verification failed (dead-lettered)" },
                "cached": { "type": "boolean" }
            }
        },
        "Pending": { "type": "object", "required": ["id", "status"], "properties": { "id": { "type": "string" }, "status": { "const": "pending" } } },
        "ShipmentRequest": {
            "type": "object", "additionalProperties": false, "required": ["dossier_code", "kind", "recipient", "description"],
            "properties": {
                "dossier_code": { "type": "string" },
                "kind": { "type": "string", "enum": ["result_delivery", "dossier_pickup"] },
                "recipient": party(&["name", "phone", "address", "province_code", "ward_code"]),
                "sender": party(&["name", "phone", "address", "province_code"]),
                "description": { "type": "string", "minLength": 1, "maxLength": 1000, "description": "What is sent (VNPost's Description)" },
                "cod_amount": { "type": "integer", "minimum": 0, "description": "VND", "default": 0 },
                "note": { "type": "string" }
            }
        },
        "ShipmentStatus": { "type": "string", "enum": ["queued", "submitted", "accepted", "in_transit", "out_for_delivery", "delivered", "delivery_failed", "returned", "cancelled", "failed"] },
        "ShipmentAccepted": { "type": "object", "required": ["id", "order_number", "status"], "properties": { "id": { "type": "string" }, "order_number": { "type": "string" }, "status": { "$ref": "#/components/schemas/ShipmentStatus" } } },
        "Shipment": {
            "type": "object", "required": ["id", "dossier_code", "kind", "order_number", "status", "events"],
            "properties": {
                "id": { "type": "string" }, "dossier_code": { "type": "string" },
                "kind": { "type": "string", "enum": ["result_delivery", "dossier_pickup"] },
                "order_number": { "type": "string" }, "status": { "$ref": "#/components/schemas/ShipmentStatus" },
                "tracking_code": { "type": ["string", "null"], "description": "VNPost barcode (ItemCode)" },
                "events": { "type": "array", "items": { "type": "object", "required": ["status", "at"], "properties": {
                    "status": { "$ref": "#/components/schemas/ShipmentStatus" }, "status_code": { "type": "integer" },
                    "at": { "type": "string", "format": "date-time" }, "note": { "type": "string" } } } }
            }
        },
        "DossierRecord": {
            "type": "object", "additionalProperties": false, "required": ["procedure_code", "status"],
            "description": "English names of the DongBoHoSoMC record; `extra` is passed through verbatim.",
            "properties": {
                "procedure_code": { "type": "string", "description": "MaTTHC" }, "procedure_name": { "type": "string", "description": "TenTTHC" },
                "field_code": { "type": "string", "description": "MaLinhVuc" }, "field_name": { "type": "string", "description": "TenLinhVuc" },
                "owner_name": { "type": "string", "description": "ChuHoSo" },
                "applicant_type": { "type": "integer", "minimum": 1, "maximum": 4, "description": "LoaiDoiTuong: 1 citizen, 2 business, 3 state agency, 4 other organisation" },
                "applicant_id": { "type": "string", "description": "MaDoiTuong" }, "email": { "type": "string" }, "phone": { "type": "string", "description": "SoDienThoai" },
                "summary": { "type": "string", "description": "TrichYeuHoSo" },
                "received_at": opt_time.clone(), "due_at": opt_time.clone(), "returned_at": opt_time.clone(), "finished_at": opt_time.clone(),
                "status": { "type": "string", "description": "TrangThaiHoSo: a configured local status word or a code 1–10" },
                "result_by_post": { "type": "boolean", "description": "HinhThuc" },
                "channel": { "type": "string", "enum": ["in_person", "online", "postal"], "description": "KenhThucHien" },
                "handling_unit": { "type": "string", "description": "DonViXuLy" }, "note": { "type": "string", "description": "GhiChu" },
                "submitted_documents": { "type": "array", "description": "TaiLieuNop" }, "result_documents": { "type": "array", "description": "DanhSachGiayToKetQua" },
                "fees": { "type": "array", "description": "DanhSachLePhi" }, "extra": { "type": "object", "description": "Province-specific fields, passed through" }
            }
        },
        "DossierEvent": {
            "type": "object", "additionalProperties": false, "required": ["status", "occurred_at", "handler", "content"],
            "properties": {
                "status": { "type": "string", "description": "TrangThai: a configured local word or a code 1–10" },
                "occurred_at": { "type": "string", "format": "date-time", "description": "ThoiDiemXuLy" },
                "handler": { "type": "string", "description": "NguoiXuLy (cut to 50 characters)" }, "handler_title": { "type": "string", "description": "ChucDanh" },
                "department": { "type": "string", "description": "PhongBanXuLy" }, "content": { "type": "string", "description": "NoiDungXuLy" },
                "started_at": opt_time.clone(), "due_at": opt_time
            }
        },
        "DossierSync": {
            "type": "object", "required": ["dossier_code", "targets"],
            "properties": { "dossier_code": { "type": "string" }, "targets": { "type": "array", "items": { "type": "object",
                "required": ["target", "pending", "waiting_for_record", "records_synced", "steps_synced"],
                "properties": {
                    "target": { "type": "string" }, "last_synced_status": { "type": ["integer", "null"] },
                    "pending": { "type": "integer", "description": "Jobs not yet delivered (ready, running or dead)" },
                    "waiting_for_record": { "type": "integer", "description": "Steps held until the target has the dossier" },
                    "last_error": { "type": ["string", "null"] }, "synced_at": { "type": ["string", "null"], "format": "date-time" },
                    "records_synced": { "type": "integer" }, "steps_synced": { "type": "integer" }
                } } } }
        }
    });
    match schemas {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

pub fn document() -> Value {
    let id_param = json!({ "name": "id", "in": "path", "required": true, "description": "Job id (ULID)", "schema": { "type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$" } });
    let job = json!({ "200": { "description": "The job", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } } });
    let mut list_params = vec![
        json!({ "name": "state", "in": "query", "required": false, "schema": { "type": "string", "enum": ["ready", "leased", "done", "dead", "discarded"] } }),
        json!({ "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 500, "default": 50 } }),
        json!({ "name": "cursor", "in": "query", "required": false, "description": "`next_cursor` of the previous page", "schema": { "type": "string" } }),
        json!({ "name": "order", "in": "query", "required": false, "description": "`oldest` (default) lists from the first job created, `newest` from the last; a cursor continues in the same order", "schema": { "type": "string", "enum": ["oldest", "newest"], "default": "oldest" } }),
    ];
    list_params.extend(filters());
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "dvc-connector sidecar API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API the public-service portal and its operators call (docs/API.md). Every 202 means the request is on disk (fsynced). Errors are RFC 9457 problem+json with a stable `code`; `Accept-Language: vi` gives Vietnamese title and detail. Outcomes the portal did not wait for are POSTed to the configured callback URL, signed `X-Connector-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + \".\" + body)>`, with event types `identity.verification.completed`, `shipment.status_changed`, `dossier.sync.failed`, `dossier.sync.completed`."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/v1/jobs": { "get": {
                "operationId": "listJobs", "summary": "List jobs (scope admin)", "tags": ["operations"],
                "parameters": list_params,
                "responses": with_responses(json!({ "200": { "description": "A page of jobs", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobList" } } } } }), &["400", "401", "403", "503"])
            } },
            "/v1/jobs/{id}": { "get": {
                "operationId": "getJob", "summary": "One job: state, attempts, last error (masked); never the payload (scope admin)", "tags": ["operations"],
                "parameters": [id_param.clone()],
                "responses": with_responses(job.clone(), &["400", "401", "403", "404", "503"])
            } },
            "/v1/jobs/{id}/retry": { "post": {
                "operationId": "retryJob", "summary": "Requeue a dead job with a fresh attempt budget (scope admin)", "tags": ["operations"],
                "parameters": [id_param.clone()],
                "responses": with_responses(job.clone(), &["400", "401", "403", "404", "409", "503"])
            } },
            "/v1/jobs/{id}/discard": { "post": {
                "operationId": "discardJob", "summary": "Take a ready or dead job out of delivery (scope admin)", "tags": ["operations"],
                "parameters": [id_param],
                "responses": with_responses(job, &["400", "401", "403", "404", "409", "503"])
            } },
            "/v1/jobs/replay": { "post": {
                "operationId": "replayJobs", "summary": "Requeue every dead job matching the filters (scope admin)",
                "description": "Filters come only as query parameters: a request body, an unknown parameter or an empty value is refused with 400 naming it. With no `kind`, `target` or `dossier_code`, `all=true` is required. A repeated `Idempotency-Key` answers the first replay's count.",
                "tags": ["operations"],
                "parameters": replay_parameters(),
                "responses": with_responses(json!({ "200": { "description": "How many were requeued", "content": { "application/json": { "schema": { "type": "object", "required": ["requeued"], "properties": { "requeued": { "type": "integer", "minimum": 0 } } } } } } }), &["400", "401", "403", "503"])
            } }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "A configured token; scopes `portal` and/or `admin`." } },
            "schemas": {
                "Problem": {
                    "type": "object", "required": ["type", "title", "status", "detail", "code"],
                    "properties": {
                        "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                        "detail": { "type": "string" }, "code": { "type": "string", "description": "Stable machine code, e.g. `invalid_query`" },
                        "errors": { "type": "array", "items": { "type": "object", "required": ["field", "code", "message"], "properties": { "field": { "type": "string" }, "code": { "type": "string" }, "message": { "type": "string" } } } }
                    }
                },
                "Job": {
                    "type": "object", "required": ["id", "kind", "target", "dossier_code", "state", "attempts", "created_at", "updated_at"],
                    "properties": {
                        "id": { "type": "string" }, "kind": { "type": "string" }, "target": { "type": "string" }, "dossier_code": { "type": "string" },
                        "state": { "type": "string", "enum": ["ready", "leased", "done", "dead", "discarded"] },
                        "attempts": { "type": "integer", "minimum": 0 },
                        "next_attempt_at": { "type": "string", "format": "date-time" },
                        "dead_reason": { "type": "string", "enum": ["permanent_error", "attempts_exhausted", "max_age_exceeded"] },
                        "last_error": { "type": "object", "required": ["class", "code", "message", "at"], "properties": {
                            "class": { "type": "string", "enum": ["retryable", "permanent", "auth"] }, "code": { "type": "string" },
                            "message": { "type": "string", "description": "The upstream's words, personal data masked" }, "at": { "type": "string", "format": "date-time" } } },
                        "created_at": { "type": "string", "format": "date-time" }, "updated_at": { "type": "string", "format": "date-time" },
                        "finished_at": { "type": "string", "format": "date-time" }
                    }
                },
                "JobList": {
                    "type": "object", "required": ["jobs"],
                    "properties": { "jobs": { "type": "array", "items": { "$ref": "#/components/schemas/Job" } }, "next_cursor": { "type": "string" } }
                }
            }
        }
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        paths.extend(portal_paths());
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.extend(portal_schemas());
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_copy_is_the_served_document() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
        let served = serde_json::to_string_pretty(&document()).expect("json") + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &served).expect("write");
        }
        let copy = std::fs::read_to_string(&path).expect("docs/openapi.json");
        assert!(
            copy == served,
            "docs/openapi.json is out of date: UPDATE_GOLDEN=1 cargo test openapi, then review the diff"
        );
    }

    #[test]
    fn every_documented_operation_is_listed_once() {
        let doc = document();
        let mut listed = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                listed.push((method.clone(), path.clone()));
            }
        }
        listed.sort();
        let mut expected: Vec<(String, String)> = OPERATIONS
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        expected.sort();
        assert_eq!(listed, expected);
    }
}
