//! Dossier sync: records (`DongBoHoSoMC`) and processing steps (`CapNhatTienDoHoSoMC`) to every
//! configured portal target.
//!
//! Each target has its own lane (`portal:<target>`), and every job of a dossier uses the dossier code as
//! its ordering key, so per dossier and target the queue delivers records and steps one at a time, in
//! submission order, while one target's outage stalls only its own lane.
//!
//! The `dossier` record keeps, per target: whether the target has the dossier (`record_synced` after
//! our create/update, `known_at_portal` when `TraCuuHoSo` said so), the last synced status and time,
//! the last error, and the steps **held** because the target does not have the dossier yet. A step job
//! that finds the dossier missing at its target is moved into `held` (its job ends) and later steps
//! follow it there; the next record sync for that target sends the held steps right after the record,
//! ten per call, in order. So a step never reaches a target before its dossier, and order is kept.
//!
//! Batching: steps queued behind one another for the same dossier and target (after an outage, or a
//! busy portal) are leased together (`JobHandler::batch`) and sent in one `CapNhatTienDoHoSoMC` call of
//! up to ten, in order; a failed batch is retried one step at a time.
//!
//! Exactly once as far as the portal can see: a retried create becomes an update (`sync_dossier`
//! switches the flag on error 3/4), and a step is only re-sent if the process dies between the portal
//! applying it and the store recording it (the portal protocol has no way to ask which steps it has).

use std::collections::BTreeMap;
use std::sync::Arc;

use dvc_portal::wire::{self, DossierRecord, Progress};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::callbacks::{self, event};
use super::{
    FlowError, Flows, Loaded, MAX_ROUNDS, applied, load_with, payload, rfc3339, to_payload,
};
use crate::queue::cursor::{Cursor, put_sized};
use crate::queue::worker::Wiring;
use crate::queue::worker::{HandlerFuture, JobHandler};
use crate::queue::{Change, Expect, Job, JobError, Millis, NewJob, RecordWrite};

mod deliver;
mod input;
mod plan;
mod state;

use self::deliver::*;
pub use self::input::*;
pub use self::plan::*;
pub use self::state::*;

pub const RECORD_KIND: &str = "portal.record";
pub const STEP_KIND: &str = "portal.step";
pub(crate) const RECORDS: &str = "dossier";
/// Per (dossier, target) sync state, written only by that target's lane (one job of a key at a time),
/// so the API's writes to the dossier record never contend with the workers'.
const TARGETS: &str = "dossier_target";
/// Most steps the portal takes in one call.
const BATCH: usize = 10;

pub fn lane(target: &str) -> String {
    format!("portal:{target}")
}

/// A dossier code as the portal and VNPost use it: 1–64 of `A–Z a–z 0–9 . _ -`.
pub fn valid_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(crate) fn register(flows: &Flows, wiring: &mut Wiring) {
    if flows.ctx.clients.portal.is_empty() {
        return;
    }
    let handler = Arc::new(Deliver(flows.clone()));
    wiring.handlers.register(RECORD_KIND, handler.clone());
    wiring.handlers.register(STEP_KIND, handler);
    for target in flows.ctx.clients.portal.keys() {
        wiring.lanes.push(lane(target));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> StepJob {
        StepJob {
            dossier_code: "H56.22-241127-0001".into(),
            event_id: "01HF7YAT00000000000000001A".into(),
            sequence: 7,
            progress: Progress {
                ma_ho_so: "H56.22-241127-0001".into(),
                nguoi_xu_ly: "Nguyễn Văn Bình".into(),
                chuc_danh: String::new(),
                thoi_diem_xu_ly: "20261127090000".into(),
                phong_ban_xu_ly: "Một cửa".into(),
                noi_dung_xu_ly: "Tiếp nhận hồ sơ".into(),
                trang_thai: "2".into(),
                ngay_bat_dau: String::new(),
                ngay_ket_thuc_theo_quy_dinh: "20261204170000".into(),
            },
        }
    }

    fn job(payload: Vec<u8>) -> Job {
        Job {
            id: ulid::Ulid::nil(),
            seq: 1,
            kind: STEP_KIND.into(),
            lane: "portal:national".into(),
            ordering_key: "H56.22-241127-0001".into(),
            idempotency_key: None,
            state: crate::queue::JobState::Leased,
            attempts: 1,
            next_attempt_at: 0,
            lease_token: None,
            lease_expires_at: None,
            last_error: None,
            created_at: 0,
            updated_at: 0,
            queued_at: 0,
            finished_at: None,
            dead_reason: None,
            payload,
        }
    }

    #[test]
    fn a_step_payload_round_trips_and_a_json_one_from_an_earlier_build_still_reads() {
        assert_eq!(StepJob::decode(&job(step().encode())), Ok(step()));
        // What builds before the binary payload queued (`to_payload`, JSON), e.g. still in a backlog.
        let json = to_payload(&step());
        assert_eq!(json.first(), Some(&b'{'));
        assert_eq!(StepJob::decode(&job(json)), Ok(step()));
    }

    #[test]
    fn a_damaged_step_payload_is_a_permanent_error_not_a_panic() {
        let bytes = step().encode();
        let refused = |payload: Vec<u8>| {
            let error = StepJob::decode(&job(payload)).expect_err("refused");
            assert_eq!(
                (error.class, error.code.as_str()),
                (dvc_upstream::ErrorClass::Permanent, "invalid_payload")
            );
        };
        for cut in 1..bytes.len() {
            refused(bytes[..cut].to_vec());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        refused(longer);
        let mut not_utf8 = bytes;
        not_utf8[1 + 4] = 0xff;
        refused(not_utf8);
    }

    fn target_state(flags: u8, held: usize) -> TargetState {
        TargetState {
            record_synced: flags & RECORD_SYNCED != 0,
            known_at_portal: flags & KNOWN_AT_PORTAL != 0,
            last_synced_status: (flags & HAS_STATUS != 0).then_some(4),
            synced_at: (flags & HAS_SYNCED_AT != 0).then(|| "2026-11-27T09:00:00Z".into()),
            last_error: (flags & HAS_ERROR != 0).then(|| "error_code 99: Lỗi hệ thống".into()),
            held: (0..held)
                .map(|i| StepJob {
                    sequence: i as u64 + 1,
                    ..step()
                })
                .collect(),
            records_synced: 3,
            steps_synced: u64::MAX,
        }
    }

    #[test]
    fn state_records_round_trip_in_binary_in_every_combination_of_their_optional_fields() {
        for flags in 0..=TARGET_FLAGS {
            for held in [0, 1, 3] {
                let ts = target_state(flags, held);
                let bytes = ts.encode();
                assert_eq!(bytes.first(), Some(&STATE_BINARY));
                let back = TargetState::decode(&bytes).expect("decodes");
                assert_eq!(back, ts, "flags {flags:#b}, {held} held");
            }
        }
        let ds = DossierState {
            code: "H56.22-241127-0001".into(),
            next_sequence: 42,
            updated_at: 1_795_000_000_123,
        };
        assert_eq!(DossierState::decode(&ds.encode()), Ok(ds));
    }

    #[test]
    fn state_records_in_json_from_an_earlier_build_still_read() {
        // As builds before the binary records stored them (`serde_json::to_vec`).
        let ds = DossierState::decode(
            br#"{"code":"H56.22-241127-0001","next_sequence":9,"updated_at":1795000000123}"#,
        )
        .expect("decodes");
        assert_eq!(
            (ds.code.as_str(), ds.next_sequence, ds.updated_at),
            ("H56.22-241127-0001", 9, 1_795_000_000_123)
        );
        let step_json = String::from_utf8(to_payload(&step())).expect("utf-8");
        let legacy = format!(
            r#"{{"record_synced":false,"known_at_portal":true,"last_error":"timeout","held":[{step_json}],"records_synced":1,"steps_synced":8}}"#
        );
        let ts = TargetState::decode(legacy.as_bytes()).expect("decodes");
        let mut expected = target_state(KNOWN_AT_PORTAL | HAS_ERROR, 1);
        expected.last_error = Some("timeout".into());
        expected.held[0].sequence = step().sequence;
        (expected.records_synced, expected.steps_synced) = (1, 8);
        assert_eq!(ts, expected);
        // The oldest records had no counters and no held steps: they default.
        let ts = TargetState::decode(br#"{"record_synced":true}"#).expect("decodes");
        assert_eq!(
            ts,
            TargetState {
                record_synced: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_damaged_state_record_is_an_error_not_a_panic() {
        let targets = target_state(TARGET_FLAGS, 2).encode();
        let dossier = DossierState {
            code: "H1".into(),
            ..Default::default()
        }
        .encode();
        type Decodes = fn(&[u8]) -> bool;
        let decodes: [(&Vec<u8>, Decodes); 2] = [
            (&targets, |b| TargetState::decode(b).is_ok()),
            (&dossier, |b| DossierState::decode(b).is_ok()),
        ];
        for (bytes, decodes) in decodes {
            assert!(decodes(bytes));
            for cut in 0..bytes.len() {
                assert!(!decodes(&bytes[..cut]), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(!decodes(&longer));
        }
        // A flag this build does not know, a string that is not UTF-8, a held step that is not
        // one, and a count of held steps far beyond the bytes: refused, nothing reserved for them.
        let mut unknown = target_state(0, 0).encode();
        unknown[1] = 1 << 5;
        assert_eq!(
            TargetState::decode(&unknown).err().as_deref(),
            Some(DAMAGED)
        );
        let mut not_utf8 = target_state(HAS_SYNCED_AT, 0).encode();
        not_utf8[2 + 4] = 0xff;
        assert_eq!(
            TargetState::decode(&not_utf8).err().as_deref(),
            Some(DAMAGED)
        );
        let mut not_a_step = target_state(0, 1).encode();
        let tag_at = 2 + 16 + 4 + 4;
        assert_eq!(not_a_step[tag_at], STEP_BINARY);
        not_a_step[tag_at] = b'{';
        assert_eq!(
            TargetState::decode(&not_a_step).err().as_deref(),
            Some(DAMAGED)
        );
        let mut huge = target_state(0, 0).encode();
        let count_at = huge.len() - 4;
        huge[count_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(TargetState::decode(&huge).err().as_deref(), Some(DAMAGED));
    }

    #[test]
    fn dossier_codes_are_bounded_and_path_safe() {
        assert!(valid_code("H56.22-241127-0001"));
        assert!(valid_code("000.00.00.H56_1"));
        for bad in ["", "a/b", "a b", "hồsơ", &"x".repeat(65)] {
            assert!(!valid_code(bad), "{bad}");
        }
    }
}
