//! The store's records read from any bytes — a job record (either layout), the dossier flow's state
//! records and step payloads: an error, never a panic; a job that decodes encodes back to itself.
#![no_main]
use dvc_connector::queue::Job;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(job) = Job::decode(data) {
        assert_eq!(
            Job::decode(&job.encode()).as_ref(),
            Ok(&job),
            "job round trip"
        );
    }
    dvc_connector::flows::dossier::fuzz_state_records(data);
});
