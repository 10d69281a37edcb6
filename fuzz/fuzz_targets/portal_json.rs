//! The portal's answers (error_code as number or string), records and times: never a panic, a record
//! that reads writes back to itself (province-specific fields included), a time that converts is 14
//! digits.
#![no_main]
use dvc_portal::wire::{DossierRecord, LoginAnswer, ServiceAnswer};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ServiceAnswer>(data);
    let _ = serde_json::from_slice::<LoginAnswer>(data);
    if let Ok(record) = serde_json::from_slice::<DossierRecord>(data) {
        let text = serde_json::to_vec(&record).expect("a record serialises");
        assert_eq!(
            serde_json::from_slice::<DossierRecord>(&text).ok(),
            Some(record)
        );
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = dvc_portal::wire::portal_time(text)
    {
        assert!(
            t.len() == 14 && t.bytes().all(|b| b.is_ascii_digit()),
            "{t}"
        );
    }
});
