//! Background upkeep of the store: expired leases back to ready, finished jobs removed after retention,
//! expired records (idempotency answers, cached verdicts) removed.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Queue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceSettings {
    pub lease_check_every: Duration,
    pub retention: Duration,
    pub purge_every: Duration,
    /// Jobs removed per transaction, so purging never holds the writer for long.
    pub purge_batch: usize,
}

pub fn spawn(
    queue: Queue,
    settings: MaintenanceSettings,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut leases = tokio::time::interval(settings.lease_check_every);
        let mut purge = tokio::time::interval(settings.purge_every);
        leases.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = leases.tick() => {
                    match queue.expire_leases(1000).await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(jobs = n, "leases expired; jobs returned to ready"),
                        Err(error) => tracing::error!(%error, "lease expiry failed"),
                    }
                }
                _ = purge.tick() => purge_all(&queue, &settings).await,
                _ = shutdown.changed() => {}
            }
        }
    })
}

async fn purge_all(queue: &Queue, settings: &MaintenanceSettings) {
    let mut total = 0;
    loop {
        match queue
            .purge_finished(settings.retention, settings.purge_batch)
            .await
        {
            Ok(n) => {
                total += n;
                if n < settings.purge_batch {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(error) => {
                tracing::error!(%error, "retention purge failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(
            jobs = total,
            "removed finished jobs past their retention period"
        );
    }
    let mut records = 0;
    loop {
        match queue
            .store()
            .purge_expired_records(queue.now(), settings.purge_batch)
            .await
        {
            Ok(n) => {
                records += n;
                if n < settings.purge_batch {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(error) => {
                tracing::error!(%error, "record expiry failed");
                break;
            }
        }
    }
    if records > 0 {
        tracing::info!(
            records,
            "removed expired records (idempotency answers, cached verdicts)"
        );
    }
}
