//! `StrictJson<T>`: the only way request bodies are read. The content type must be JSON (else 415);
//! the body must be UTF-8 JSON that fits `T` exactly — unknown fields, duplicate keys, wrong types and
//! out-of-range numbers are refused with 400 problem+json naming the field path (e.g. `recipient.phone`)
//! — and nothing is half-read. Body size is limited before this by the router (413).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::problem::{ApiError, Code, Lang};

#[derive(Debug, Clone)]
pub struct StrictJson<T>(pub T);

/// As [`StrictJson`], keeping the raw body too (for idempotency keys, which compare bodies).
#[derive(Debug, Clone)]
pub struct StrictJsonBytes<T>(pub T, pub Bytes);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJsonBytes<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (bytes, lang) = read(req, state).await?;
        parse(&bytes, lang).map(|v| StrictJsonBytes(v, bytes))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (bytes, lang) = read(req, state).await?;
        parse(&bytes, lang).map(StrictJson)
    }
}

async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<(Bytes, Lang), ApiError> {
    {
        let lang = Lang::from_header(
            req.headers()
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        );
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(Code::UnsupportedMediaType, lang));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(Code::BodyTooLarge, lang)
            } else {
                ApiError::new(Code::InvalidBody, lang).field(
                    "",
                    "unreadable_body",
                    "the body could not be read",
                )
            }
        })?;
        Ok((bytes, lang))
    }
}

/// Parses `bytes` as exactly a `T`, or explains where it is not.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], lang: Lang) -> Result<T, ApiError> {
    let invalid = |field: String, code: &str, message: String| {
        ApiError::new(Code::InvalidBody, lang).field(field, code, message)
    };
    let text = std::str::from_utf8(bytes).map_err(|_| {
        invalid(
            String::new(),
            "invalid_utf8",
            "the body is not UTF-8".into(),
        )
    })?;
    // The common case first: a valid body parses without tracking where the parser is. Only a body
    // that fails is parsed again, with the path kept, to name the field at fault; parsing is
    // deterministic, so the second pass fails the same way.
    let mut de = serde_json::Deserializer::from_str(text);
    if let Ok(value) = <T as serde::Deserialize>::deserialize(&mut de)
        && de.end().is_ok()
    {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let segments: Vec<String> = e.path().iter().map(|s| s.to_string()).collect();
        let path = e.path().to_string();
        // A body that is not an object at all, or not JSON, is the body's fault, not an element's.
        let field = if path == "." || path.starts_with('[') || inner_is_malformed(&e) {
            String::new()
        } else {
            path
        };
        let inner = e.into_inner();
        let message = inner.to_string();
        let code = if message.starts_with("unknown field") {
            "unknown_field"
        } else if message.starts_with("duplicate field") {
            "duplicate_field"
        } else if message.starts_with("missing field") {
            "missing_field"
        } else if inner.is_syntax() || inner.is_eof() {
            "malformed_json"
        } else {
            "invalid_value"
        };
        if code == "unknown_field" {
            // The unknown name is the client's, not the schema's: it may be a citizen's number or
            // name sent as a key, so it is shown only when it looks like a field name.
            let (name, parents) = segments
                .split_last()
                .map_or(("", &[][..]), |(n, p)| (n.as_str(), p));
            let shown = shown_name(name);
            let field = parents
                .iter()
                .map(String::as_str)
                .chain([shown.as_str()])
                .collect::<Vec<_>>()
                .join(".");
            let message = message.replacen(&format!("`{name}`"), &format!("`{shown}`"), 1);
            return invalid(field, code, sanitize(&message));
        }
        if code == "missing_field" || code == "duplicate_field" {
            // serde names the field in its message and puts the error at the object holding it: the
            // field at fault is that object's member (a schema name, safe to show).
            let name = message.split('`').nth(1).unwrap_or("");
            let field = match (field.is_empty(), name.is_empty()) {
                (_, true) => field,
                (true, false) => name.to_owned(),
                (false, false) => format!("{field}.{name}"),
            };
            return invalid(field, code, sanitize(&message));
        }
        invalid(field, code, sanitize(&message))
    })?;
    de.end().map_err(|_| {
        invalid(
            String::new(),
            "trailing_data",
            "there is data after the JSON value".into(),
        )
    })?;
    Ok(value)
}

fn inner_is_malformed(e: &serde_path_to_error::Error<serde_json::Error>) -> bool {
    e.inner().is_syntax() || e.inner().is_eof()
}

/// A field name the client sent, as it may be shown: an identifier (an ASCII letter, then letters,
/// digits or `_`, at most 64, no run of 9 digits) is kept; anything else — a number, a name with
/// diacritics, an address — becomes `…`.
fn shown_name(name: &str) -> String {
    let identifier = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && dvc_upstream::http::mask_digit_runs(name) == name;
    if identifier {
        name.to_owned()
    } else {
        "…".to_owned()
    }
}

/// serde's messages quote the offending value (`invalid type: string "Nguyễn Văn An", expected u32`);
/// a name, an address or a number must not come back in an error body, so quoted values are dropped and
/// long digit runs masked. Field names (in backticks) stay: they are the schema's, not the citizen's.
fn sanitize(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quotes = false;
    for c in message.chars() {
        match c {
            '"' if !in_quotes => {
                in_quotes = true;
                out.push_str("\"…\"");
            }
            '"' => in_quotes = false,
            _ if in_quotes => {}
            c => out.push(c),
        }
    }
    dvc_upstream::http::mask_digit_runs(&out)
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Recipient {
        name: String,
        phone: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Shipment {
        dossier_code: String,
        cod_amount: u32,
        recipient: Recipient,
    }

    fn err(body: &str) -> (String, String) {
        let e = parse::<Shipment>(body.as_bytes(), Lang::En).expect_err("refused");
        assert_eq!(e.code, Code::InvalidBody);
        (e.errors[0].field.clone(), e.errors[0].code.clone())
    }

    #[test]
    fn an_error_never_echoes_the_submitted_value() {
        let body = r#"{"dossier_code":"D1","cod_amount":"Nguyễn Văn An","recipient":{"name":"An","phone":"1"}}"#;
        let e = parse::<Shipment>(body.as_bytes(), Lang::En).expect_err("refused");
        let text = format!("{:?}", e.errors);
        assert!(!text.contains("Nguyễn"), "{text}");
        assert!(text.contains("cod_amount"));
        let body = r#"{"dossier_code":"D1","cod_amount":912345678901,"recipient":{"name":"An","phone":"1"}}"#;
        let e = parse::<Shipment>(body.as_bytes(), Lang::En).expect_err("refused");
        assert!(!format!("{:?}", e.errors).contains("912345678901"));
    }

    #[test]
    fn a_body_that_fits_exactly_is_read() {
        let ok = parse::<Shipment>(
            br#"{"dossier_code":"D1","cod_amount":0,"recipient":{"name":"An","phone":"0912"}}"#,
            Lang::En,
        );
        assert_eq!(ok.map(|s| s.cod_amount).ok(), Some(0));
    }

    #[test]
    fn an_unknown_field_named_by_personal_data_is_not_echoed() {
        for key in ["083173316997", "Nguyễn Văn An", "an@example.vn"] {
            let body = format!(
                r#"{{"dossier_code":"D1","cod_amount":0,"recipient":{{"name":"An","phone":"1","{key}":1}}}}"#
            );
            let e = parse::<Shipment>(body.as_bytes(), Lang::En).expect_err("refused");
            let shown = serde_json::to_string(&e.errors).expect("json");
            assert!(!shown.contains(key), "{shown}");
            assert_eq!(e.errors[0].field, "recipient.…");
            assert_eq!(e.errors[0].code, "unknown_field");
        }
        let e = parse::<Shipment>(
            br#"{"dossier_code":"D1","cod_amount":0,"recipient":{"name":"An","phone":"1","cccd":1}}"#,
            Lang::En,
        )
        .expect_err("refused");
        assert_eq!(
            e.errors[0].field, "recipient.cccd",
            "a field-like name is shown"
        );
    }

    #[test]
    fn every_kind_of_bad_body_is_named_with_its_field() {
        let base = r#""dossier_code":"D1","cod_amount":0"#;
        assert_eq!(
            err(&format!(
                r#"{{{base},"recipient":{{"name":"An","phone":"0912","fax":"1"}}}}"#
            )),
            ("recipient.fax".into(), "unknown_field".into())
        );
        assert_eq!(
            err(&format!(r#"{{{base},"recipient":{{"name":"An"}}}}"#)),
            ("recipient.phone".into(), "missing_field".into())
        );
        assert_eq!(
            err(
                r#"{"dossier_code":"D1","cod_amount":"zero","recipient":{"name":"An","phone":"1"}}"#
            )
            .0,
            "cod_amount"
        );
        assert_eq!(err(r#"{"dossier_code":"D1","cod_amount":99999999999999999999,"recipient":{"name":"An","phone":"1"}}"#).0, "cod_amount");
        assert_eq!(
            err(r#"{"dossier_code":"D1","cod_amount":-1,"recipient":{"name":"An","phone":"1"}}"#).1,
            "invalid_value"
        );
        assert_eq!(err(r#"{"dossier_code":"D1","dossier_code":"D2","cod_amount":0,"recipient":{"name":"An","phone":"1"}}"#).1, "duplicate_field");
        assert_eq!(err(r#"{"dossier_code":"D1","#).1, "malformed_json");
        assert_eq!(
            err(&format!(
                r#"{{{base},"recipient":{{"name":"An","phone":"1"}}}} {{}}"#
            ))
            .1,
            "trailing_data"
        );
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(err(&deep).1, "invalid_value", "an array is not a shipment");
        let e = parse::<serde_json::Value>(deep.as_bytes(), Lang::En).expect_err("too deep");
        assert_eq!(
            e.errors[0].code, "malformed_json",
            "the recursion limit answers, not a stack overflow"
        );
        let e = parse::<Shipment>(b"\xff\xfe{}", Lang::En).expect_err("not utf-8");
        assert_eq!(e.errors[0].code, "invalid_utf8");
    }
}
