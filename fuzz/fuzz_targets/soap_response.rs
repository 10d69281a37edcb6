//! The population DB's SOAP answers: any bytes decode to an answer or an error, never a panic; a DTD
//! or an entity is never expanded (a body with a DOCTYPE is refused); what decodes re-encodes and
//! decodes to itself.
#![no_main]
use dvc_population::wire::Response;

#[path = "common/doctype.rs"]
mod doctype;
use doctype::starts_with_doctype;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let decoded = Response::decode(data);
    if starts_with_doctype(data) {
        assert!(decoded.is_err(), "a DTD was accepted");
    }
    if let Ok(response) = decoded {
        let again = Response::decode(response.encode().as_bytes());
        assert_eq!(again.as_ref(), Ok(&response), "encode/decode round trip");
    }
});
