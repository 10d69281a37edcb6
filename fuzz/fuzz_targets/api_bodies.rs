//! The API's strict JSON reading of every request body: an answer or a 4xx error, never a panic, and
//! an error never echoes a quoted value.
#![no_main]
use dvc_connector::api::json::parse;
use dvc_connector::api::problem::Lang;
use dvc_connector::flows::{dossier, identity, shipment};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = parse::<identity::Request>(data, Lang::En);
    let _ = parse::<shipment::Request>(data, Lang::Vi);
    let _ = parse::<dossier::RecordInput>(data, Lang::En);
    let _ = parse::<dossier::EventInput>(data, Lang::En);
    if let Ok(req) = parse::<identity::Request>(data, Lang::En) {
        let _ = identity::check(&req, identity::Mode::Full);
    }
});
