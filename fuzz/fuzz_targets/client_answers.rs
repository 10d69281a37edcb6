//! The clients' handling of whatever an upstream answers: the gateway's status and SOAP body, VNPost's
//! create-order answer, the portal's service answer. Never a panic, and a classified error never
//! carries a run of nine or more digits unmasked (a citizen's number or a phone in an upstream's
//! message).
#![no_main]
use dvc_upstream::UpstreamError;

fn masked(e: &UpstreamError) {
    let mut run = 0;
    for c in e.message.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        assert!(run < 9, "an unmasked number in {:?}", e.message);
    }
    assert!(e.message.len() <= dvc_upstream::MAX_MESSAGE_BYTES);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, rest @ ..] => (100 + u16::from_le_bytes([*a, *b]) % 500, rest),
        _ => return,
    };
    if let Err(e) = dvc_population::client::classify(status, None, body) {
        masked(&e);
    }
    let answer = dvc_upstream::token::Answer {
        status,
        retry_after: None,
        body: body.to_vec(),
    };
    if let Err(e) =
        dvc_postal::client::read_create_answer(&answer, &dvc_postal::client::Profile::default())
    {
        masked(&e);
    }
    match dvc_portal::client::read_service_answer(body) {
        Ok(a) => masked(&dvc_portal::client::refusal(&a)),
        Err(e) => masked(&e),
    }
});
