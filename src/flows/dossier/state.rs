//! The dossier flow's stored forms: the dossier's and each target's state records and the jobs'
//! payloads, in a versioned binary layout that still reads the JSON of earlier builds.

use super::*;

/// Sync state of one dossier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DossierState {
    pub code: String,
    /// The sequence number the next step gets (from 1).
    pub next_sequence: u64,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    #[serde(default)]
    pub record_synced: bool,
    #[serde(default)]
    pub known_at_portal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_status: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub held: Vec<StepJob>,
    #[serde(default)]
    pub records_synced: u64,
    #[serde(default)]
    pub steps_synced: u64,
}

impl TargetState {
    pub(super) fn has_dossier(&self) -> bool {
        self.record_synced || self.known_at_portal
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordJob {
    pub dossier_code: String,
    pub record: DossierRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepJob {
    pub dossier_code: String,
    pub event_id: String,
    pub sequence: u64,
    pub progress: Progress,
}

/// First byte of a step job's binary payload; the JSON payloads written before start with `{`.
pub(super) const STEP_BINARY: u8 = 1;

impl StepJob {
    /// The job payload: [`STEP_BINARY`], the dossier code, the event id, the sequence (`u64`
    /// little-endian), then the nine fields of the portal's progress record in their wire order,
    /// each string as a `u32` length and UTF-8. Every accepted event encodes one and every delivery
    /// decodes a batch of them; as JSON they were about a twentieth of the daemon's instructions.
    pub(super) fn encode(&self) -> Vec<u8> {
        let p = &self.progress;
        let texts = [
            &self.dossier_code,
            &self.event_id,
            &p.ma_ho_so,
            &p.nguoi_xu_ly,
            &p.chuc_danh,
            &p.thoi_diem_xu_ly,
            &p.phong_ban_xu_ly,
            &p.noi_dung_xu_ly,
            &p.trang_thai,
            &p.ngay_bat_dau,
            &p.ngay_ket_thuc_theo_quy_dinh,
        ];
        let mut out = Vec::with_capacity(1 + 8 + texts.iter().map(|t| 4 + t.len()).sum::<usize>());
        out.push(STEP_BINARY);
        put_sized(&mut out, self.dossier_code.as_bytes());
        put_sized(&mut out, self.event_id.as_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        for text in &texts[2..] {
            put_sized(&mut out, text.as_bytes());
        }
        out
    }

    /// Reads a payload of either form: binary, or the JSON of the builds before it (jobs queued then).
    pub(super) fn decode(job: &Job) -> Result<StepJob, JobError> {
        match job.payload.strip_prefix(&[STEP_BINARY]) {
            Some(bytes) => Self::decode_binary(bytes).ok_or_else(|| {
                JobError::permanent(
                    "invalid_payload",
                    "step job payload: truncated, overlong or not UTF-8",
                )
            }),
            None => payload(job),
        }
    }

    pub(super) fn decode_binary(bytes: &[u8]) -> Option<StepJob> {
        let mut c = Cursor::new(bytes);
        let dossier_code = text(&mut c)?;
        let event_id = text(&mut c)?;
        let sequence = c.u64()?;
        let progress = Progress {
            ma_ho_so: text(&mut c)?,
            nguoi_xu_ly: text(&mut c)?,
            chuc_danh: text(&mut c)?,
            thoi_diem_xu_ly: text(&mut c)?,
            phong_ban_xu_ly: text(&mut c)?,
            noi_dung_xu_ly: text(&mut c)?,
            trang_thai: text(&mut c)?,
            ngay_bat_dau: text(&mut c)?,
            ngay_ket_thuc_theo_quy_dinh: text(&mut c)?,
        };
        c.rest.is_empty().then_some(StepJob {
            dossier_code,
            event_id,
            sequence,
            progress,
        })
    }
}

/// First byte of a dossier's and a target's state record in binary; the JSON records written before
/// start with `{`. Both are read and written on every accepted request or delivery.
pub(super) const STATE_BINARY: u8 = 1;

impl DossierState {
    /// [`STATE_BINARY`], the code (`u32` length and UTF-8), then `next_sequence` and `updated_at`
    /// (`u64` little-endian).
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 4 + self.code.len() + 16);
        out.push(STATE_BINARY);
        put_sized(&mut out, self.code.as_bytes());
        out.extend_from_slice(&self.next_sequence.to_le_bytes());
        out.extend_from_slice(&self.updated_at.to_le_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_state(bytes, Self::decode_binary)
    }

    pub(super) fn decode_binary(bytes: &[u8]) -> Option<Self> {
        let mut c = Cursor::new(bytes);
        let state = DossierState {
            code: text(&mut c)?,
            next_sequence: c.u64()?,
            updated_at: c.u64()?,
        };
        c.rest.is_empty().then_some(state)
    }
}

/// Flags of a target's state record in binary.
pub(super) const RECORD_SYNCED: u8 = 1;
pub(super) const KNOWN_AT_PORTAL: u8 = 1 << 1;
pub(super) const HAS_STATUS: u8 = 1 << 2;
pub(super) const HAS_SYNCED_AT: u8 = 1 << 3;
pub(super) const HAS_ERROR: u8 = 1 << 4;
pub(super) const TARGET_FLAGS: u8 =
    RECORD_SYNCED | KNOWN_AT_PORTAL | HAS_STATUS | HAS_SYNCED_AT | HAS_ERROR;

pub(super) const DAMAGED: &str = "truncated, overlong, not UTF-8 or of unknown flags";

/// Reads a state record of either form: binary (`binary` reads what follows [`STATE_BINARY`]), or
/// the JSON of the builds before it.
pub(super) fn decode_state<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    binary: fn(&[u8]) -> Option<T>,
) -> Result<T, String> {
    match bytes.split_first() {
        Some((&STATE_BINARY, rest)) => binary(rest).ok_or_else(|| DAMAGED.to_owned()),
        _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

pub(super) fn text(c: &mut Cursor<'_>) -> Option<String> {
    String::from_utf8(c.sized()?.to_vec()).ok()
}

impl TargetState {
    /// [`STATE_BINARY`], a flags byte (the two booleans, then which optional field follows), the
    /// status byte, `synced_at` and `last_error` when present (strings as `u32` length and UTF-8),
    /// `records_synced` and `steps_synced` (`u64` little-endian), then the held steps: their count
    /// (`u32`) and each one's job payload as a `u32` length and the bytes.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut flags = 0;
        for (set, flag) in [
            (self.record_synced, RECORD_SYNCED),
            (self.known_at_portal, KNOWN_AT_PORTAL),
            (self.last_synced_status.is_some(), HAS_STATUS),
            (self.synced_at.is_some(), HAS_SYNCED_AT),
            (self.last_error.is_some(), HAS_ERROR),
        ] {
            if set {
                flags |= flag;
            }
        }
        let mut out = Vec::with_capacity(64);
        out.push(STATE_BINARY);
        out.push(flags);
        if let Some(status) = self.last_synced_status {
            out.push(status);
        }
        for text in [&self.synced_at, &self.last_error].into_iter().flatten() {
            put_sized(&mut out, text.as_bytes());
        }
        out.extend_from_slice(&self.records_synced.to_le_bytes());
        out.extend_from_slice(&self.steps_synced.to_le_bytes());
        out.extend_from_slice(&(self.held.len() as u32).to_le_bytes());
        for step in &self.held {
            put_sized(&mut out, &step.encode());
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, String> {
        decode_state(bytes, Self::decode_binary)
    }

    pub(super) fn decode_binary(bytes: &[u8]) -> Option<Self> {
        let mut c = Cursor::new(bytes);
        let flags = c.u8()?;
        if flags & !TARGET_FLAGS != 0 {
            return None;
        }
        let last_synced_status = if flags & HAS_STATUS != 0 {
            Some(c.u8()?)
        } else {
            None
        };
        let synced_at = if flags & HAS_SYNCED_AT != 0 {
            Some(text(&mut c)?)
        } else {
            None
        };
        let last_error = if flags & HAS_ERROR != 0 {
            Some(text(&mut c)?)
        } else {
            None
        };
        let records_synced = c.u64()?;
        let steps_synced = c.u64()?;
        let count = c.u32()? as usize;
        // Each held step takes at least its length: a count beyond what is left is damage, not a
        // reason to reserve memory for it.
        let mut held = Vec::with_capacity(count.min(c.rest.len() / 4));
        for _ in 0..count {
            held.push(StepJob::decode_binary(
                c.sized()?.strip_prefix(&[STEP_BINARY])?,
            )?);
        }
        c.rest.is_empty().then_some(TargetState {
            record_synced: flags & RECORD_SYNCED != 0,
            known_at_portal: flags & KNOWN_AT_PORTAL != 0,
            last_synced_status,
            synced_at,
            last_error,
            held,
            records_synced,
            steps_synced,
        })
    }
}

/// For the fuzz target `store_records`: the dossier flow's stored forms read from any bytes — the
/// dossier's and a target's state record and a step job's payload — never panic, and a record that
/// reads is written back to the same bytes' meaning (it reads again as itself).
#[doc(hidden)]
pub fn fuzz_state_records(bytes: &[u8]) {
    if let Ok(state) = DossierState::decode(bytes) {
        assert_eq!(
            DossierState::decode(&state.encode()).as_ref(),
            Ok(&state),
            "a dossier state record round-trips"
        );
    }
    if let Ok(state) = TargetState::decode(bytes) {
        assert_eq!(
            TargetState::decode(&state.encode()).as_ref(),
            Ok(&state),
            "a target state record round-trips"
        );
    }
    let _ = StepJob::decode_binary(bytes);
}
