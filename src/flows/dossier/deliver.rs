//! The job handler: delivering records and steps to each portal target, holding steps the target
//! cannot take yet, and recording each target's state.

use super::*;
use dvc_portal::client::StepsOutcome;

#[derive(Debug)]
pub(super) struct Deliver(pub(super) Flows);

pub(super) fn target_of(job: &Job) -> Result<&str, JobError> {
    job.lane
        .strip_prefix("portal:")
        .ok_or_else(|| JobError::permanent("bad_lane", "a portal job outside a portal lane"))
}

impl Deliver {
    pub(super) fn client(
        &self,
        target: &str,
    ) -> Result<&dvc_portal::client::PortalClient, JobError> {
        self.0.ctx.clients.portal.get(target).ok_or_else(|| {
            JobError::auth(
                "not_configured",
                format!("portal target {target} is not configured"),
            )
        })
    }

    /// Read-modify-write of one target's state, with the jobs `extra` returns.
    pub(super) async fn update(
        &self,
        code: &str,
        target: &str,
        mut f: impl FnMut(&mut TargetState) -> Vec<NewJob>,
    ) -> Result<(), FlowError> {
        let key = target_key(code, target);
        for _ in 0..MAX_ROUNDS {
            let mut loaded = target_state(&self.0, code, target).await?;
            let jobs = f(&mut loaded.value);
            let expect = match loaded.version {
                0 => Expect::Absent,
                v => Expect::Version(v),
            };
            let change = Change {
                writes: vec![RecordWrite::put(
                    TARGETS,
                    &key,
                    expect,
                    loaded.value.encode(),
                )],
                jobs,
            };
            if applied(&self.0.ctx.queue.commit(change).await?) {
                return Ok(());
            }
        }
        Err(FlowError::Contended(code.to_owned()))
    }

    /// The target's state after `f`, as a change to commit with the job's completion. Only this lane
    /// writes the record (one job of a key at a time), so it needs no condition.
    pub(super) async fn final_change(
        &self,
        code: &str,
        target: &str,
        f: impl FnOnce(&mut TargetState) -> Vec<NewJob>,
    ) -> Result<Change, FlowError> {
        let mut ts = target_state(&self.0, code, target).await?.value;
        let jobs = f(&mut ts);
        Ok(Change {
            writes: vec![RecordWrite::put(
                TARGETS,
                target_key(code, target),
                Expect::Any,
                ts.encode(),
            )],
            jobs,
        })
    }

    pub(super) async fn sync_record(&self, job: &Job) -> Result<Change, JobError> {
        let target = target_of(job)?;
        let client = self.client(target)?;
        let rj: RecordJob = payload(job)?;
        let code = rj.dossier_code.as_str();
        let ts = target_state(&self.0, code, target).await?.value;
        let r = &rj.record;
        client
            .sync_dossier(r, ts.has_dossier())
            .await
            .map_err(|e| {
                crate::flows::redacted(
                    e,
                    &[&r.chu_ho_so, &r.email, &r.so_dien_thoai, &r.ma_doi_tuong],
                )
            })?;
        let now = rfc3339(self.0.ctx.queue.now());
        let status = rj.record.trang_thai_ho_so.parse::<u8>().ok();
        let completed = callbacks::job(
            &self.0,
            event::SYNC_COMPLETED,
            code,
            serde_json::json!({
                "dossier_code": code, "target": target, "kind": "record", "status": status,
            }),
        );
        let synced = |ts: &mut TargetState| {
            ts.record_synced = true;
            ts.last_synced_status = status.or(ts.last_synced_status);
            ts.synced_at = Some(now.clone());
            ts.last_error = None;
            ts.records_synced += 1;
            completed.clone().into_iter().collect()
        };
        if ts.held.is_empty() {
            // The common case: nothing held, so the new state goes in with the job's completion.
            return Ok(self.final_change(code, target, synced).await?);
        }
        self.update(code, target, synced).await?;
        // Steps held for this target go right after the record, in order, ten per call.
        loop {
            let held = target_state(&self.0, code, target).await?.value.held;
            if held.is_empty() {
                return Ok(Change::default());
            }
            let batch: Vec<StepJob> = held.into_iter().take(BATCH).collect();
            let steps: Vec<&Progress> = batch.iter().map(|s| &s.progress).collect();
            if client.push_steps(&steps).await? == StepsOutcome::DossierMissing {
                // Just synced, yet unknown: try again, record first, a moment later.
                return Err(JobError::retryable(
                    "dossier_missing",
                    "the target does not have the dossier right after its record was synced",
                ));
            }
            let sent: Vec<String> = batch.iter().map(|s| s.event_id.clone()).collect();
            let now = rfc3339(self.0.ctx.queue.now());
            self.update(code, target, |ts| {
                ts.held.retain(|s| !sent.contains(&s.event_id));
                ts.steps_synced += sent.len() as u64;
                ts.synced_at = Some(now.clone());
                vec![]
            })
            .await?;
        }
    }

    /// Steps of one dossier for one target (one job, or a batch of consecutive ones), in order.
    pub(super) async fn push_steps(&self, jobs: &[Job]) -> Result<Change, JobError> {
        let Some(first) = jobs.first() else {
            return Ok(Change::default());
        };
        let target = target_of(first)?;
        let client = self.client(target)?;
        let steps: Vec<StepJob> = jobs.iter().map(StepJob::decode).collect::<Result<_, _>>()?;
        let code = steps[0].dossier_code.clone();
        let ts = target_state(&self.0, &code, target).await?.value;
        let mut has_dossier = ts.has_dossier();
        if ts.held.is_empty() && !has_dossier && client.dossier_exists(&code).await? {
            self.update(&code, target, |ts| {
                ts.known_at_portal = true;
                vec![]
            })
            .await?;
            has_dossier = true;
        }
        if !ts.held.is_empty() || !has_dossier {
            self.hold(&code, target, &steps).await?;
            return Ok(Change::default());
        }
        let progress: Vec<&Progress> = steps.iter().map(|s| &s.progress).collect();
        match client.push_steps(&progress).await? {
            StepsOutcome::Applied => {}
            // The target says it does not have the dossier after all: hold until a record comes.
            StepsOutcome::DossierMissing => {
                self.update(&code, target, |ts| {
                    ts.known_at_portal = false;
                    ts.record_synced = false;
                    vec![]
                })
                .await?;
                self.hold(&code, target, &steps).await?;
                return Ok(Change::default());
            }
        }
        let now = rfc3339(self.0.ctx.queue.now());
        let status = progress
            .last()
            .and_then(|p| p.trang_thai.parse::<u8>().ok());
        let n = steps.len() as u64;
        Ok(self
            .final_change(&code, target, |ts| {
                ts.steps_synced += n;
                ts.last_synced_status = status.or(ts.last_synced_status);
                ts.synced_at = Some(now.clone());
                ts.last_error = None;
                vec![]
            })
            .await?)
    }

    pub(super) async fn hold(
        &self,
        code: &str,
        target: &str,
        steps: &[StepJob],
    ) -> Result<(), FlowError> {
        self.update(code, target, |ts| {
            for step in steps {
                if !ts.held.iter().any(|s| s.event_id == step.event_id) {
                    ts.held.push(step.clone());
                }
            }
            vec![]
        })
        .await?;
        if let Some(m) = &self.0.ctx.metrics {
            m.steps_held
                .get_or_create(&crate::metrics::TargetLabels {
                    target: target.to_owned(),
                })
                .inc_by(steps.len() as u64);
        }
        Ok(())
    }
}

impl JobHandler for Deliver {
    /// Delivery outside the worker (which calls `deliver`): the change is committed on its own.
    fn handle<'a>(&'a self, job: &'a Job) -> HandlerFuture<'a> {
        Box::pin(async move {
            let change = self.deliver(std::slice::from_ref(job)).await?;
            self.0
                .ctx
                .queue
                .commit(change)
                .await
                .map_err(FlowError::from)?;
            Ok(())
        })
    }

    fn deliver<'a>(&'a self, jobs: &'a [Job]) -> crate::queue::worker::DeliveryFuture<'a> {
        Box::pin(async move {
            match jobs {
                [job] if job.kind == RECORD_KIND => self.sync_record(job).await,
                _ => self.push_steps(jobs).await,
            }
        })
    }

    /// Steps go ten to a call (the portal's limit); records one at a time.
    fn batch(&self, kind: &str) -> usize {
        if kind == STEP_KIND { BATCH } else { 1 }
    }

    fn dead<'a>(&'a self, job: &'a Job, error: &'a JobError) -> HandlerFuture<'a> {
        Box::pin(async move {
            let target = target_of(job)?;
            let code = job.ordering_key.clone();
            let failed = callbacks::job(
                &self.0,
                event::SYNC_FAILED,
                &code,
                serde_json::json!({
                    "dossier_code": code,
                    "target": target,
                    "kind": if job.kind == RECORD_KIND { "record" } else { "step" },
                    "job_id": job.id.to_string(),
                    "error_code": error.code,
                }),
            );
            self.update(&code, target, |ts| {
                ts.last_error = Some(error.code.clone());
                failed.clone().into_iter().collect()
            })
            .await?;
            Ok(())
        })
    }
}
