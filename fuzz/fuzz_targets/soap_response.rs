//! The population DB's SOAP answers: any bytes decode to an answer or an error, never a panic, and a
//! DTD or entity is never expanded.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dvc_population::wire::Response::decode(data);
});
