//! The API's strict JSON reading of every request body: an answer or a 4xx error, never a panic, and
//! an error never echoes what looks like personal data that the body quoted — a name with Vietnamese
//! letters, a number of nine digits or more. (Field names and the parser's own words may come back.)
#![no_main]
use dvc_connector::api::json::parse;
use dvc_connector::api::problem::Lang;
use dvc_connector::flows::{dossier, identity, shipment};

/// The quoted strings of the body that have the shape of personal data.
fn personal(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.chars().any(|c| c.is_alphabetic() && !c.is_ascii())
                || s.as_bytes()
                    .windows(9)
                    .any(|w| w.iter().all(u8::is_ascii_digit))
        })
        .map(str::to_owned)
        .collect()
}

fn never_echoes<T>(text: &str, result: Result<T, dvc_connector::api::problem::ApiError>) {
    if let Err(e) = result {
        let shown = serde_json::to_string(&e.errors).unwrap_or_default();
        let shown = serde_json::from_str::<serde_json::Value>(&shown)
            .map(|v| v.to_string())
            .unwrap_or(shown);
        for q in personal(text) {
            // As the answer carries it (JSON-escaped) and as it was sent.
            let escaped = serde_json::to_string(&q).unwrap_or_default();
            assert!(
                !shown.contains(&q) && !shown.contains(escaped.trim_matches('"')),
                "the error echoes {q:?}: {shown}"
            );
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    never_echoes(&text, parse::<identity::Request>(data, Lang::En));
    never_echoes(&text, parse::<shipment::Request>(data, Lang::Vi));
    never_echoes(&text, parse::<dossier::RecordInput>(data, Lang::En));
    never_echoes(&text, parse::<dossier::EventInput>(data, Lang::En));
    if let Ok(req) = parse::<identity::Request>(data, Lang::En) {
        let _ = identity::check(&req, identity::Mode::Full, &[7; 32]);
    }
});
