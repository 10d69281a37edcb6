//! SOAP requests (the codec the client writes with): never a panic; a DOCTYPE is refused; what decodes
//! re-encodes and decodes to itself.
#![no_main]
use dvc_population::wire::Request;

#[path = "common/doctype.rs"]
mod doctype;
use doctype::starts_with_doctype;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let decoded = Request::decode(data);
    if starts_with_doctype(data) {
        assert!(decoded.is_err(), "a DTD was accepted");
    }
    if let Ok(request) = decoded {
        let again = Request::decode(request.encode().as_bytes());
        assert_eq!(again.as_ref(), Ok(&request), "encode/decode round trip");
    }
});
