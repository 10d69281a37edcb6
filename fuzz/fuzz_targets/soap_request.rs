//! SOAP requests (the codec the client writes with): never a panic; a DOCTYPE is refused; what decodes
//! re-encodes and decodes to itself.
#![no_main]
use dvc_population::wire::Request;

/// A document whose prolog (after the XML declaration, whitespace and comments) holds a DOCTYPE.
fn starts_with_doctype(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("<?") {
            match after.find("?>") {
                Some(end) => rest = after[end + 2..].trim_start(),
                None => return false,
            }
        } else if let Some(after) = rest.strip_prefix("<!--") {
            match after.find("-->") {
                Some(end) => rest = after[end + 3..].trim_start(),
                None => return false,
            }
        } else {
            return rest.to_ascii_uppercase().starts_with("<!DOCTYPE");
        }
    }
}

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
