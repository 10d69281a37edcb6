//! The portal's answers (error_code as number or string) and records.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<dvc_portal::wire::ServiceAnswer>(data);
    let _ = serde_json::from_slice::<dvc_portal::wire::LoginAnswer>(data);
    let _ = serde_json::from_slice::<dvc_portal::wire::DossierRecord>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = dvc_portal::wire::portal_time(text);
    }
});
