//! VNPost's bodies: the tracking feed page and the order result.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<dvc_postal::wire::TrackingPage>(data);
    let _ = serde_json::from_slice::<dvc_postal::wire::OrderResult>(data);
});
