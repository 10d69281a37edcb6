//! Turning an accepted record or step into one atomic change: the dossier record written back and
//! a job per target; and the view of a dossier's sync state.

use super::*;

pub(super) fn target_key(code: &str, target: &str) -> String {
    format!("{code}\u{1f}{target}")
}

pub(super) async fn target_state(
    flows: &Flows,
    code: &str,
    target: &str,
) -> Result<Loaded<TargetState>, FlowError> {
    Ok(load_with(
        &flows.ctx.queue,
        TARGETS,
        &target_key(code, target),
        TargetState::decode,
    )
    .await?
    .unwrap_or(Loaded {
        value: TargetState::default(),
        version: 0,
    }))
}

pub(super) fn write_state(loaded: &Loaded<DossierState>, code: &str) -> crate::queue::RecordWrite {
    let expect = match loaded.version {
        0 => Expect::Absent,
        v => Expect::Version(v),
    };
    RecordWrite::put(RECORDS, code, expect, loaded.value.encode())
}

/// The change that accepts a record: one job per target. Re-plan on a conflict.
pub async fn plan_record(
    flows: &Flows,
    code: &str,
    records: &BTreeMap<String, DossierRecord>,
) -> Result<Change, FlowError> {
    let mut loaded = state(flows, code).await?;
    loaded.value.updated_at = flows.ctx.queue.now();
    let jobs = records
        .iter()
        .map(|(target, record)| {
            NewJob::new(
                RECORD_KIND,
                lane(target),
                code,
                to_payload(&RecordJob {
                    dossier_code: code.to_owned(),
                    record: record.clone(),
                }),
            )
        })
        .collect();
    Ok(Change {
        writes: vec![write_state(&loaded, code)],
        jobs,
    })
}

/// Adds one step (a sequence number and one job per target) to `change`; answers (event id, sequence).
pub async fn plan_event(
    flows: &Flows,
    change: &mut Change,
    code: &str,
    steps: &BTreeMap<String, Progress>,
) -> Result<(String, u64), FlowError> {
    let mut loaded = state(flows, code).await?;
    let sequence = loaded.value.next_sequence.max(1);
    loaded.value.next_sequence = sequence + 1;
    loaded.value.updated_at = flows.ctx.queue.now();
    let event_id = ulid::Ulid::new().to_string();
    change.writes.push(write_state(&loaded, code));
    for (target, progress) in steps {
        change.jobs.push(NewJob::new(
            STEP_KIND,
            lane(target),
            code,
            StepJob {
                dossier_code: code.to_owned(),
                event_id: event_id.clone(),
                sequence,
                progress: progress.clone(),
            }
            .encode(),
        ));
    }
    Ok((event_id, sequence))
}

/// What `GET /v1/dossiers/{code}` shows per target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    pub target: String,
    pub last_synced_status: Option<u8>,
    pub pending: usize,
    pub waiting_for_record: usize,
    pub last_error: Option<String>,
    pub synced_at: Option<String>,
    pub records_synced: u64,
    pub steps_synced: u64,
}

pub async fn view(flows: &Flows, code: &str) -> Result<Option<Vec<TargetView>>, FlowError> {
    if load_with(&flows.ctx.queue, RECORDS, code, DossierState::decode)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let mut out = Vec::new();
    for target in flows.ctx.clients.portal.keys() {
        let ts = target_state(flows, code, target).await?.value;
        let pending = flows
            .ctx
            .queue
            .unfinished(&lane(target), code, 1000)
            .await?;
        let job_error = pending
            .first()
            .and_then(|j| j.last_error.as_ref())
            .map(|e| e.code.clone());
        out.push(TargetView {
            target: target.clone(),
            last_synced_status: ts.last_synced_status,
            pending: pending.len(),
            waiting_for_record: ts.held.len(),
            last_error: job_error.or(ts.last_error),
            synced_at: ts.synced_at,
            records_synced: ts.records_synced,
            steps_synced: ts.steps_synced,
        });
    }
    Ok(Some(out))
}
