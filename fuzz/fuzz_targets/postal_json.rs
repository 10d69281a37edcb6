//! VNPost's bodies: the tracking feed page and the order result read from any bytes, and what reads
//! writes back to itself.
#![no_main]
use dvc_postal::wire::{OrderResult, TrackingPage};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(page) = serde_json::from_slice::<TrackingPage>(data) {
        let text = serde_json::to_vec(&page).expect("a page serialises");
        assert_eq!(
            serde_json::from_slice::<TrackingPage>(&text).ok(),
            Some(page)
        );
    }
    if let Ok(result) = serde_json::from_slice::<OrderResult>(data) {
        let text = serde_json::to_vec(&result).expect("a result serialises");
        assert_eq!(
            serde_json::from_slice::<OrderResult>(&text).ok(),
            Some(result)
        );
    }
});
