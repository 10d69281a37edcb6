//! Byte layout of the tables the embedded backends keep. All integers are big-endian so that byte order is
//! numeric order; strings are length-prefixed so that one lane or key is never a prefix of another.

use ulid::Ulid;

use crate::queue::job::{JobId, JobState, Millis};
use crate::queue::store::StoreError;

/// The logical tables. redb keeps each in its own table; sled keeps all in one tree, prefixed by `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Table {
    /// id → job record.
    Jobs,
    /// (lane, next_attempt_at, seq) → id, for ready jobs that head their ordering key.
    Ready,
    /// (lane, ordering key, seq) → id, for every unfinished job (ready, leased, dead).
    Keys,
    /// (lease expiry, id) → ∅, for leased jobs.
    Leases,
    /// (finished_at, id) → ∅, for done and discarded jobs awaiting retention.
    Finished,
    /// (state, id) → ∅, for dead jobs only: the dead-letter list and bulk replay.
    ByState,
    /// idempotency key → id.
    Idem,
    /// (collection, key) → [version][expires_at][value]: the flows' records.
    Records,
    /// (expires_at, record key) → ∅, for records that expire.
    Expiry,
    /// format version, sequence counter, per-lane state counters.
    Meta,
}

impl Table {
    pub(crate) const ALL: [Table; 10] = [
        Table::Jobs,
        Table::Ready,
        Table::Keys,
        Table::Leases,
        Table::Finished,
        Table::ByState,
        Table::Idem,
        Table::Records,
        Table::Expiry,
        Table::Meta,
    ];

    /// The table's place in [`Table::ALL`]: its slot in per-table arrays, and its byte in a log
    /// record (so the declaration order is part of the log's format).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Jobs => "jobs",
            Table::Ready => "ready",
            Table::Keys => "keys",
            Table::Leases => "leases",
            Table::Finished => "finished",
            Table::ByState => "by_state",
            Table::Idem => "idempotency",
            Table::Records => "records",
            Table::Expiry => "expiry",
            Table::Meta => "meta",
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            Table::Jobs => b'j',
            Table::Ready => b'r',
            Table::Keys => b'k',
            Table::Leases => b'l',
            Table::Finished => b'f',
            Table::ByState => b's',
            Table::Idem => b'i',
            Table::Records => b'd',
            Table::Expiry => b'e',
            Table::Meta => b'm',
        }
    }
}

pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";
pub(crate) const SEQ_KEY: &[u8] = b"seq";
const COUNTER_TAG: u8 = b'c';

pub(crate) fn id_key(id: JobId) -> [u8; 16] {
    id.to_bytes()
}

pub(crate) fn id_from(bytes: &[u8]) -> Result<JobId, StoreError> {
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("job id of {} bytes", bytes.len())))?;
    Ok(Ulid::from_bytes(arr))
}

/// The id at the end of an index key.
pub(crate) fn id_suffix(key: &[u8]) -> Result<JobId, StoreError> {
    let start = key
        .len()
        .checked_sub(16)
        .ok_or_else(|| StoreError::Corrupt("index key shorter than an id".into()))?;
    id_from(&key[start..])
}

pub(crate) fn lane_prefix(lane: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + lane.len() + 16);
    // Lanes are at most MAX_LANE_LEN (< 256) bytes: NewJob::validate.
    out.push(lane.len() as u8);
    out.extend_from_slice(lane.as_bytes());
    out
}

pub(crate) fn ready_key(lane: &str, at: Millis, seq: u64) -> Vec<u8> {
    let mut out = lane_prefix(lane);
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// The ready entries of `lane` due at or before `now`: `[from, to)`.
pub(crate) fn ready_due_range(lane: &str, now: Millis) -> (Vec<u8>, Vec<u8>) {
    let from = lane_prefix(lane);
    let mut to = lane_prefix(lane);
    to.extend_from_slice(&now.saturating_add(1).to_be_bytes());
    (from, to)
}

pub(crate) fn ready_key_time(lane: &str, key: &[u8]) -> Result<Millis, StoreError> {
    let start = 1 + lane.len();
    key.get(start..start + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("short ready key".into()))
}

pub(crate) fn keys_prefix(lane: &str, ordering_key: &str) -> Vec<u8> {
    let mut out = lane_prefix(lane);
    // Ordering keys are at most MAX_KEY_LEN (< 65536) bytes.
    out.extend_from_slice(&(ordering_key.len() as u16).to_be_bytes());
    out.extend_from_slice(ordering_key.as_bytes());
    out
}

pub(crate) fn keys_key(lane: &str, ordering_key: &str, seq: u64) -> Vec<u8> {
    let mut out = keys_prefix(lane, ordering_key);
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

pub(crate) fn time_id_key(at: Millis, id: JobId) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(&id_key(id));
    out
}

/// Upper bound (exclusive) of time-keyed entries at or before `at`.
pub(crate) fn time_upto(at: Millis) -> Vec<u8> {
    at.saturating_add(1).to_be_bytes().to_vec()
}

pub(crate) fn state_key(state: JobState, id: JobId) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(state.code());
    out.extend_from_slice(&id_key(id));
    out
}

pub(crate) fn counter_key(lane: &str, state: JobState) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + lane.len());
    out.push(COUNTER_TAG);
    out.push(state.code());
    out.extend_from_slice(lane.as_bytes());
    out
}

pub(crate) fn counter_prefix() -> Vec<u8> {
    vec![COUNTER_TAG]
}

/// Decodes a counter key into (lane, state).
pub(crate) fn counter_parts(key: &[u8]) -> Result<(String, JobState), StoreError> {
    let corrupt = || StoreError::Corrupt("counter key".into());
    let state = key
        .get(1)
        .copied()
        .and_then(JobState::from_code)
        .ok_or_else(corrupt)?;
    let lane = std::str::from_utf8(key.get(2..).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
    Ok((lane.to_owned(), state))
}

/// `[collection length][collection][key]`: one collection is never a prefix of another.
pub(crate) fn record_key(collection: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + collection.len() + key.len());
    // Collections are at most MAX_COLLECTION_LEN (< 256) bytes: checked before any write.
    out.push(collection.len() as u8);
    out.extend_from_slice(collection.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The record key part of a `Records` key.
pub(crate) fn record_key_name(collection: &str, raw: &[u8]) -> Result<String, StoreError> {
    raw.get(1 + collection.len()..)
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Corrupt("record key".into()))
}

pub(crate) fn expiry_key(at: Millis, record_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + record_key.len());
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(record_key);
    out
}

/// `[version u64][expires_at u64, 0 = never][value]`.
pub(crate) fn encode_record(version: u64, expires_at: Option<Millis>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<crate::queue::store::Record, StoreError> {
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("record shorter than its header".into()))
    };
    let expires = word(8)?;
    Ok(crate::queue::store::Record {
        version: word(0)?,
        expires_at: (expires != 0).then_some(expires),
        value: bytes[16..].to_vec(),
    })
}

/// The smallest key greater than every key starting with `prefix` (None: no such key exists).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_sits_at_its_index_in_all() {
        for (i, table) in Table::ALL.into_iter().enumerate() {
            assert_eq!(table.index(), i, "{}", table.name());
        }
    }

    #[test]
    fn a_lane_is_never_the_prefix_of_another() {
        assert!(!lane_prefix("portal:national").starts_with(&lane_prefix("portal")));
        assert!(!keys_prefix("l", "H1-2").starts_with(&keys_prefix("l", "H1")));
    }

    #[test]
    fn ready_keys_sort_by_time_then_sequence() {
        let k1 = ready_key("l", 10, 99);
        let k2 = ready_key("l", 11, 1);
        let k3 = ready_key("l", 11, 2);
        assert!(k1 < k2 && k2 < k3);
        assert_eq!(ready_key_time("l", &k2).ok(), Some(11));
    }

    #[test]
    fn the_due_range_includes_now_and_excludes_later() {
        let (from, to) = ready_due_range("l", 10);
        let due = ready_key("l", 10, u64::MAX);
        let later = ready_key("l", 11, 0);
        assert!(from <= due && due < to);
        assert!(later >= to);
    }

    #[test]
    fn prefix_end_skips_trailing_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }

    #[test]
    fn counter_keys_decode() {
        let k = counter_key("portal:national", JobState::Dead);
        assert_eq!(
            counter_parts(&k).ok(),
            Some(("portal:national".to_owned(), JobState::Dead))
        );
    }
}
