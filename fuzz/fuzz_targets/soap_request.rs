//! The simulator's side of the SOAP codec (requests), built on the same reader.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dvc_population::wire::Request::decode(data);
});
