//! The job record and the values that travel with it.
//!
//! A job is stored as one value: a length-prefixed JSON header followed by the raw payload bytes, so the
//! payload (the flow's own encoding, later encrypted at rest) never has to be re-encoded as JSON text.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// Sortable job identifier (ULID: creation time, then randomness).
pub type JobId = Ulid;

/// Milliseconds since the Unix epoch, UTC. Stored times are wall-clock so they mean the same after a restart.
pub type Millis = u64;

/// Where a job is in its life. `Done` and `Discarded` are final; `Dead` waits for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its next attempt (runnable once it is the oldest unfinished job of its key and due).
    Ready,
    /// A worker holds it until the lease expires.
    Leased,
    /// Delivered.
    Done,
    /// Dead-lettered: permanent error, attempts or age exhausted. Still blocks its ordering key.
    Dead,
    /// Removed from delivery by an operator.
    Discarded,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Ready,
        JobState::Leased,
        JobState::Done,
        JobState::Dead,
        JobState::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Leased => "leased",
            JobState::Done => "done",
            JobState::Dead => "dead",
            JobState::Discarded => "discarded",
        }
    }

    /// Parses the `as_str` form (used by filters on the CLI and API).
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Finished jobs no longer block their ordering key and are removed after the retention period.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Discarded)
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            JobState::Ready => 1,
            JobState::Leased => 2,
            JobState::Done => 3,
            JobState::Dead => 4,
            JobState::Discarded => 5,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.code() == code)
    }
}

/// How a failure should be treated; shared with the upstream adapters, which classify their failures.
pub use dvc_upstream::ErrorClass;

/// A failed attempt, as a handler reports it: the same type the adapters classify their failures with,
/// so an adapter's error becomes a job's error unchanged.
///
/// `code` is a short stable identifier (the upstream's own code where it has one); `message` must already
/// have personal data masked, because it is stored and shown to operators.
pub use dvc_upstream::UpstreamError as JobError;

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// The upstream refused the job for good.
    PermanentError,
    AttemptsExhausted,
    MaxAgeExceeded,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::PermanentError => "permanent_error",
            DeadReason::AttemptsExhausted => "attempts_exhausted",
            DeadReason::MaxAgeExceeded => "max_age_exceeded",
        }
    }
}

/// The last error of a job as stored (and shown in the dead-letter list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedError {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    pub at: Millis,
}

impl RecordedError {
    pub(crate) fn of(error: &JobError, at: Millis) -> Self {
        Self {
            class: error.class,
            code: error.code.clone(),
            message: error.message.clone(),
            at,
        }
    }
}

/// What a flow asks the queue to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// What to do, e.g. `portal.step`; selects the handler and the retry policy.
    pub kind: String,
    /// The delivery lane, e.g. `portal:national`; each lane has its own workers and can stall alone.
    pub lane: String,
    /// Jobs with the same key in the same lane run one at a time, oldest first (e.g. the dossier code).
    pub ordering_key: String,
    pub payload: Vec<u8>,
    /// A second enqueue with the same key returns the first job instead of creating another.
    pub idempotency_key: Option<String>,
}

/// Size limits keep index keys bounded; they are far above what the flows use.
pub(crate) const MAX_KIND_LEN: usize = 64;
pub(crate) const MAX_LANE_LEN: usize = 128;
pub(crate) const MAX_KEY_LEN: usize = 512;
pub(crate) const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

impl NewJob {
    pub fn new(
        kind: impl Into<String>,
        lane: impl Into<String>,
        ordering_key: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            kind: kind.into(),
            lane: lane.into(),
            ordering_key: ordering_key.into(),
            payload: payload.into(),
            idempotency_key: None,
        }
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Checks the limits the store's key layout depends on.
    pub(crate) fn validate(&self) -> Result<(), String> {
        fn check(name: &str, value: &str, max: usize) -> Result<(), String> {
            if value.is_empty() {
                return Err(format!("{name} must not be empty"));
            }
            if value.len() > max {
                return Err(format!("{name} is longer than {max} bytes"));
            }
            Ok(())
        }
        check("kind", &self.kind, MAX_KIND_LEN)?;
        check("lane", &self.lane, MAX_LANE_LEN)?;
        check("ordering_key", &self.ordering_key, MAX_KEY_LEN)?;
        if let Some(key) = &self.idempotency_key {
            check("idempotency_key", key, MAX_IDEMPOTENCY_KEY_LEN)?;
        }
        Ok(())
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// Store-wide commit order; per-key FIFO follows it.
    pub seq: u64,
    pub kind: String,
    pub lane: String,
    pub ordering_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub state: JobState,
    /// Attempts started (counted when leased) since the job was last queued by hand.
    pub attempts: u32,
    pub next_attempt_at: Millis,
    /// Proof of ownership for the current lease; a stale worker cannot finish a re-leased job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<RecordedError>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Start of the current retry budget (creation, or the last manual retry); max age counts from here.
    pub queued_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// Set while the job is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<DeadReason>,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Room reserved for a job's JSON header when encoding; a longer one grows the buffer once.
const HEADER_ROOM: usize = 512;

impl Job {
    /// Encodes as `[u32 BE header length][JSON header][payload]`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // The header is written in place, into room for a typical one (a few hundred bytes): one
        // allocation per record rather than a growing buffer and a copy (the writer thread encodes
        // every job it changes).
        let mut out = Vec::with_capacity(4 + HEADER_ROOM + self.payload.len());
        out.extend_from_slice(&[0; 4]);
        // A struct of strings and integers always serializes; were it not to, the header is empty.
        if serde_json::to_writer(&mut out, self).is_err() {
            out.truncate(4);
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Job, String> {
        let len_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("job record shorter than its header length")?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let header = bytes
            .get(4..4 + len)
            .ok_or("job record shorter than its header")?;
        let mut job: Job =
            serde_json::from_slice(header).map_err(|e| format!("job header: {e}"))?;
        job.payload = bytes[4 + len..].to_vec();
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Job {
        Job {
            id: Ulid::from_parts(1_700_000_000_000, 42),
            seq: 7,
            kind: "portal.step".into(),
            lane: "portal:national".into(),
            ordering_key: "H56.22-241127-0001".into(),
            idempotency_key: Some("abc".into()),
            state: JobState::Leased,
            attempts: 2,
            next_attempt_at: 5,
            lease_token: Some(99),
            lease_expires_at: Some(6),
            last_error: Some(RecordedError::of(
                &JobError::retryable("http_503", "unavailable"),
                4,
            )),
            created_at: 1,
            updated_at: 4,
            queued_at: 1,
            finished_at: None,
            dead_reason: None,
            payload: vec![0, 1, 2, 255, b'{'],
        }
    }

    #[test]
    fn a_job_survives_encoding_with_binary_payload() {
        let job = sample();
        assert_eq!(Job::decode(&job.encode()), Ok(job));
    }

    #[test]
    fn a_header_longer_than_the_room_reserved_for_it_round_trips() {
        let mut job = sample();
        job.last_error = Some(RecordedError::of(
            &JobError::retryable("http_503", "x".repeat(2 * HEADER_ROOM)),
            4,
        ));
        let bytes = job.encode();
        assert!(bytes.len() > 4 + 2 * HEADER_ROOM + job.payload.len());
        assert_eq!(Job::decode(&bytes), Ok(job));
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for cut in [0, 3, 4, 10] {
            assert!(Job::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn states_round_trip_through_their_codes_and_names() {
        for st in JobState::ALL {
            assert_eq!(JobState::from_code(st.code()), Some(st));
            assert_eq!(JobState::parse(st.as_str()), Some(st));
        }
    }

    #[test]
    fn new_jobs_outside_the_key_limits_are_refused() {
        let ok = NewJob::new("k", "lane", "key", b"x".to_vec());
        assert!(ok.validate().is_ok());
        assert!(NewJob::new("", "lane", "key", vec![]).validate().is_err());
        assert!(
            NewJob::new("k", "l".repeat(MAX_LANE_LEN + 1), "key", vec![])
                .validate()
                .is_err()
        );
        assert!(ok.with_idempotency_key("").validate().is_err());
    }
}
