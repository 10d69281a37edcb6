//! The job record and the values that travel with it.
//!
//! A job is stored as one value: a binary header followed by the raw payload bytes, so the payload (the
//! flow's own encoding, encrypted at rest when sealing is on) is never re-encoded. Stores of formats 1–3
//! wrote the header as length-prefixed JSON; [`Job::decode`] still reads those records.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::cursor::{Cursor, put_sized};

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
    const ALL: [DeadReason; 3] = [
        DeadReason::PermanentError,
        DeadReason::AttemptsExhausted,
        DeadReason::MaxAgeExceeded,
    ];

    /// The byte a stored record keeps the reason as.
    fn code(self) -> u8 {
        match self {
            DeadReason::PermanentError => 1,
            DeadReason::AttemptsExhausted => 2,
            DeadReason::MaxAgeExceeded => 3,
        }
    }

    fn from_code(code: u8) -> Option<DeadReason> {
        DeadReason::ALL
            .into_iter()
            .find(|reason| reason.code() == code)
    }

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
            code: dvc_upstream::cap_message(error.code.clone()),
            message: dvc_upstream::cap_message(error.message.clone()),
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

/// First byte of a record in the binary layout written since store format 4. A record written before
/// starts with its JSON header's length as a big-endian `u32`, whose first byte is 0 for any header
/// under 16 MiB, so the two layouts cannot be mistaken for each other and both stay readable.
const BINARY: u8 = 1;

/// Which optional fields follow the fixed part of a binary record.
const IDEMPOTENCY_KEY: u8 = 1;
const LEASE_TOKEN: u8 = 1 << 1;
const LEASE_EXPIRES_AT: u8 = 1 << 2;
const LAST_ERROR: u8 = 1 << 3;
const FINISHED_AT: u8 = 1 << 4;
const DEAD_REASON: u8 = 1 << 5;
const KNOWN_FLAGS: u8 =
    IDEMPOTENCY_KEY | LEASE_TOKEN | LEASE_EXPIRES_AT | LAST_ERROR | FINISHED_AT | DEAD_REASON;

/// The fixed part: tag, id, seq, state, flags, attempts and four times.
const FIXED_LEN: usize = 1 + 16 + 8 + 1 + 1 + 4 + 4 * 8;

impl Job {
    /// Encodes the record the store keeps: a binary header, then the payload's bytes unchanged.
    ///
    /// Layout (integers little-endian, strings as a `u32` length then UTF-8): the tag [`BINARY`], the id
    /// (16 bytes), `seq`, the state's code, a flag byte for the optional fields present, `attempts`,
    /// `next_attempt_at`, `created_at`, `updated_at`, `queued_at`, then `kind`, `lane`,
    /// `ordering_key`, then the optional fields in flag order (`idempotency_key`; `lease_token`;
    /// `lease_expires_at`; `last_error` as its class code, code, message and time; `finished_at`; the
    /// dead reason's code), then the payload to the end. The writer thread encodes every job it changes
    /// and every lease and completion decodes one: this replaced a JSON header that cost about an
    /// eighth of the daemon's instructions (docs/BENCHMARKS.md).
    pub fn encode(&self) -> Vec<u8> {
        let strings = self.kind.len()
            + self.lane.len()
            + self.ordering_key.len()
            + self.idempotency_key.as_ref().map_or(0, |k| 4 + k.len())
            + self
                .last_error
                .as_ref()
                .map_or(0, |e| 1 + 8 + 8 + e.code.len() + e.message.len());
        let mut out =
            Vec::with_capacity(FIXED_LEN + 3 * 4 + strings + 3 * 8 + 1 + self.payload.len());
        let flags = [
            (self.idempotency_key.is_some(), IDEMPOTENCY_KEY),
            (self.lease_token.is_some(), LEASE_TOKEN),
            (self.lease_expires_at.is_some(), LEASE_EXPIRES_AT),
            (self.last_error.is_some(), LAST_ERROR),
            (self.finished_at.is_some(), FINISHED_AT),
            (self.dead_reason.is_some(), DEAD_REASON),
        ]
        .into_iter()
        .filter(|(present, _)| *present)
        .fold(0, |flags, (_, flag)| flags | flag);
        out.push(BINARY);
        out.extend_from_slice(&self.id.to_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.push(self.state.code());
        out.push(flags);
        out.extend_from_slice(&self.attempts.to_le_bytes());
        for time in [
            self.next_attempt_at,
            self.created_at,
            self.updated_at,
            self.queued_at,
        ] {
            out.extend_from_slice(&time.to_le_bytes());
        }
        for text in [&self.kind, &self.lane, &self.ordering_key] {
            put_sized(&mut out, text.as_bytes());
        }
        if let Some(key) = &self.idempotency_key {
            put_sized(&mut out, key.as_bytes());
        }
        for value in [self.lease_token, self.lease_expires_at]
            .into_iter()
            .flatten()
        {
            out.extend_from_slice(&value.to_le_bytes());
        }
        if let Some(error) = &self.last_error {
            out.push(class_code(error.class));
            put_sized(&mut out, error.code.as_bytes());
            put_sized(&mut out, error.message.as_bytes());
            out.extend_from_slice(&error.at.to_le_bytes());
        }
        if let Some(at) = self.finished_at {
            out.extend_from_slice(&at.to_le_bytes());
        }
        if let Some(reason) = self.dead_reason {
            out.push(reason.code());
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a record of either layout: binary (format 4) or a JSON header (formats 1–3).
    pub fn decode(bytes: &[u8]) -> Result<Job, String> {
        match bytes.first() {
            Some(&BINARY) => decode_binary(bytes),
            _ => decode_json(bytes),
        }
    }
}

fn decode_binary(bytes: &[u8]) -> Result<Job, String> {
    let mut c = Cursor::new(&bytes[1..]);
    let short = |what: &str| format!("job record ends inside its {what}");
    let text = |c: &mut Cursor<'_>, what: &str| -> Result<String, String> {
        let raw = c.sized().ok_or_else(|| short(what))?;
        String::from_utf8(raw.to_vec()).map_err(|_| format!("job record's {what} is not UTF-8"))
    };
    let id = Ulid::from_bytes(
        c.take(16)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| short("id"))?,
    );
    let seq = c.u64().ok_or_else(|| short("seq"))?;
    let code = c.u8().ok_or_else(|| short("state"))?;
    let state = JobState::from_code(code)
        .ok_or_else(|| format!("job record's state code {code} is unknown"))?;
    let flags = c.u8().ok_or_else(|| short("flags"))?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!(
            "job record's flags {flags:#04x} name fields this build does not know"
        ));
    }
    let attempts = c.u32().ok_or_else(|| short("attempts"))?;
    let mut times = [0; 4];
    for time in &mut times {
        *time = c.u64().ok_or_else(|| short("times"))?;
    }
    let [next_attempt_at, created_at, updated_at, queued_at] = times;
    let kind = text(&mut c, "kind")?;
    let lane = text(&mut c, "lane")?;
    let ordering_key = text(&mut c, "ordering key")?;
    let has = |flag: u8| flags & flag != 0;
    let idempotency_key = if has(IDEMPOTENCY_KEY) {
        Some(text(&mut c, "idempotency key")?)
    } else {
        None
    };
    let mut optional_u64 = |flag: u8, what: &str| {
        if has(flag) {
            c.u64().map(Some).ok_or_else(|| short(what))
        } else {
            Ok(None)
        }
    };
    let lease_token = optional_u64(LEASE_TOKEN, "lease token")?;
    let lease_expires_at = optional_u64(LEASE_EXPIRES_AT, "lease expiry")?;
    let last_error = if has(LAST_ERROR) {
        let code = c.u8().ok_or_else(|| short("error class"))?;
        let class = class_from_code(code)
            .ok_or_else(|| format!("job record's error class code {code} is unknown"))?;
        Some(RecordedError {
            class,
            code: text(&mut c, "error code")?,
            message: text(&mut c, "error message")?,
            at: c.u64().ok_or_else(|| short("error time"))?,
        })
    } else {
        None
    };
    let finished_at = if has(FINISHED_AT) {
        Some(c.u64().ok_or_else(|| short("finish time"))?)
    } else {
        None
    };
    let dead_reason = if has(DEAD_REASON) {
        let code = c.u8().ok_or_else(|| short("dead reason"))?;
        Some(
            DeadReason::from_code(code)
                .ok_or_else(|| format!("job record's dead reason code {code} is unknown"))?,
        )
    } else {
        None
    };
    Ok(Job {
        id,
        seq,
        kind,
        lane,
        ordering_key,
        idempotency_key,
        state,
        attempts,
        next_attempt_at,
        lease_token,
        lease_expires_at,
        last_error,
        created_at,
        updated_at,
        queued_at,
        finished_at,
        dead_reason,
        payload: c.rest.to_vec(),
    })
}

/// A record of store formats 1–3: `[u32 BE header length][JSON header][payload]`.
fn decode_json(bytes: &[u8]) -> Result<Job, String> {
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("job record shorter than its header length")?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let header = bytes
        .get(4..4 + len)
        .ok_or("job record shorter than its header")?;
    let mut job: Job = serde_json::from_slice(header).map_err(|e| format!("job header: {e}"))?;
    job.payload = bytes[4 + len..].to_vec();
    Ok(job)
}

fn class_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Retryable => 1,
        ErrorClass::Permanent => 2,
        ErrorClass::Auth => 3,
    }
}

fn class_from_code(code: u8) -> Option<ErrorClass> {
    [
        ErrorClass::Retryable,
        ErrorClass::Permanent,
        ErrorClass::Auth,
    ]
    .into_iter()
    .find(|class| class_code(*class) == code)
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

    /// Every combination of the optional fields, so that no flag reads another's bytes.
    #[test]
    fn every_combination_of_optional_fields_round_trips() {
        for mask in 0u8..64 {
            let mut job = sample();
            let on = |bit: u8| mask & (1 << bit) != 0;
            job.idempotency_key = on(0).then(|| "idem-é".to_owned());
            job.lease_token = on(1).then_some(u64::MAX);
            job.lease_expires_at = on(2).then_some(6);
            job.last_error =
                on(3).then(|| RecordedError::of(&JobError::auth("http_401", "x".repeat(5_000)), 4));
            job.finished_at = on(4).then_some(9);
            job.dead_reason = on(5).then_some(DeadReason::MaxAgeExceeded);
            job.payload = vec![b'{'; usize::from(mask)];
            let bytes = job.encode();
            assert_eq!(Job::decode(&bytes), Ok(job), "mask {mask:#b}");
        }
    }

    #[test]
    fn every_state_error_class_and_dead_reason_round_trips() {
        for state in JobState::ALL {
            for class in [
                ErrorClass::Retryable,
                ErrorClass::Permanent,
                ErrorClass::Auth,
            ] {
                for reason in DeadReason::ALL {
                    let mut job = sample();
                    job.state = state;
                    job.dead_reason = Some(reason);
                    job.last_error.as_mut().expect("sample has one").class = class;
                    assert_eq!(Job::decode(&job.encode()), Ok(job));
                }
            }
        }
    }

    /// A record as store formats 1–3 wrote it (a JSON header behind its big-endian length), as the
    /// bytes stand in such a store: it still reads.
    #[test]
    fn a_record_with_a_json_header_from_an_older_store_still_reads() {
        let header = concat!(
            r#"{"id":"01HF7YAT00000000000000001A","seq":7,"kind":"portal.step","#,
            r#""lane":"portal:national","ordering_key":"H56.22-241127-0001","#,
            r#""idempotency_key":"abc","state":"leased","attempts":2,"next_attempt_at":5,"#,
            r#""lease_token":99,"lease_expires_at":6,"last_error":{"class":"retryable","#,
            r#""code":"http_503","message":"unavailable","at":4},"created_at":1,"#,
            r#""updated_at":4,"queued_at":1}"#
        );
        let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0, 1, 2, 255, b'{']);
        assert_eq!(Job::decode(&bytes), Ok(sample()));
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let mut job = sample();
        job.payload.clear();
        job.finished_at = Some(9);
        job.dead_reason = Some(DeadReason::PermanentError);
        let bytes = job.encode();
        // Every cut inside the header; the payload is what follows it, so a cut there is not seen.
        for cut in 0..bytes.len() {
            assert!(Job::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(Job::decode(&bytes), Ok(job));
    }

    #[test]
    fn unknown_codes_and_flags_are_errors_that_name_them() {
        let bytes = sample().encode();
        let state_at = 1 + 16 + 8;
        let mut bad_state = bytes.clone();
        bad_state[state_at] = 77;
        let flags_at = state_at + 1;
        let mut bad_flags = bytes.clone();
        bad_flags[flags_at] |= 1 << 6;
        let mut not_utf8 = sample();
        not_utf8.kind = "ab".into();
        let mut not_utf8 = not_utf8.encode();
        let kind_at = FIXED_LEN + 4;
        not_utf8[kind_at] = 0xff;
        let err = |b: &[u8]| Job::decode(b).expect_err("refused");
        assert!(
            err(&bad_state).contains("state code 77"),
            "{}",
            err(&bad_state)
        );
        assert!(err(&bad_flags).contains("flags"), "{}", err(&bad_flags));
        assert!(
            err(&not_utf8).contains("kind is not UTF-8"),
            "{}",
            err(&not_utf8)
        );
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
