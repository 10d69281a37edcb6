//! The OpenAPI 3.1 document of the API as implemented, served at `GET /v1/openapi.json`. The copy in
//! `docs/openapi.json` must equal it (a test says so), and every operation it lists must be routed (a
//! test calls each).

use serde_json::{Value, json};

/// (method, path) of every documented operation.
pub const OPERATIONS: &[(&str, &str)] = &[
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
            "400" => "Invalid query or id (problem+json with `errors`)",
            "401" => "Missing or invalid bearer token",
            "403" => "The token lacks the `admin` scope",
            "404" => "No such job",
            "409" => "The job is not in a state that allows this action (`wrong_state`)",
            "503" => "The store cannot serve; retry later (`Retry-After`)",
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
                _ => "Dossier code (the ordering key)",
            };
            json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": "string" } })
        })
        .collect()
}

fn with_responses(ok: Value, errors: &[&str]) -> Value {
    let mut responses = problem_responses(errors);
    if let (Some(map), Value::Object(ok)) = (responses.as_object_mut(), ok) {
        map.extend(ok);
    }
    responses
}

pub fn document() -> Value {
    let id_param = json!({ "name": "id", "in": "path", "required": true, "description": "Job id (ULID)", "schema": { "type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$" } });
    let job = json!({ "200": { "description": "The job", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } } });
    let mut list_params = vec![
        json!({ "name": "state", "in": "query", "required": false, "schema": { "type": "string", "enum": ["ready", "leased", "done", "dead", "discarded"] } }),
        json!({ "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 500, "default": 50 } }),
        json!({ "name": "cursor", "in": "query", "required": false, "description": "`next_cursor` of the previous page", "schema": { "type": "string" } }),
    ];
    list_params.extend(filters());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "dvc-connector sidecar API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API the public-service portal and its operators call (shared/spec/sidecar-api.md). Errors are RFC 9457 problem+json with a stable `code`; `Accept-Language: vi` gives Vietnamese text. This document lists what is implemented today."
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
                "operationId": "replayJobs", "summary": "Requeue every dead job matching the filters (scope admin)", "tags": ["operations"],
                "parameters": filters(),
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
    })
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
