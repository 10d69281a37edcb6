//! The CCCD parser and the date forms it is checked against.
#![no_main]
use dvc_population::cccd::{CitizenId, Sex};
use dvc_population::matching::BirthDate;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = CitizenId::parse(text) {
        // A parsed ID never shows its serial in its masked form.
        assert!(!format!("{id:?}").contains(&text[6..]));
        let _ = CitizenId::parse_for(text, id.birth_year(), Some(Sex::Female));
    }
    let _ = BirthDate::parse_iso(text);
    let _ = BirthDate::parse_compact(text);
});
