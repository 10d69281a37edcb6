//! The application: opens the store, binds the listeners (port 0 works; the bound addresses are
//! reported), starts the lane workers and maintenance, and stops them in order on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::queue::maintenance::{self, MaintenanceSettings};
use crate::queue::worker::{self, LaneBoard, LaneSpec, WorkerSettings};
use crate::queue::{KvJobStore, KvOptions, Queue, TokioClock};
use crate::settings::{ServerTlsSettings, Settings};

pub use crate::queue::worker::Wiring;

pub struct Application {
    api_addr: SocketAddr,
    ops_addr: SocketAddr,
    queue: Queue,
    store: Arc<KvJobStore>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("api_addr", &self.api_addr)
            .field("ops_addr", &self.ops_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// The daemon: the store, the flows of every configured upstream, the API and ops listeners.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Wiring::default(), KvOptions::default()).await
    }

    /// As [`Application::build`], with extra job handlers and lanes beside the flows', and store options
    /// (crash points for qualification runs).
    pub async fn build_with(
        settings: &Settings,
        extra: Wiring,
        options: KvOptions,
    ) -> anyhow::Result<Self> {
        let path = settings.store.path.clone();
        let backend = settings.store.backend;
        let mut options = options;
        options.cache_bytes = options.cache_bytes.or(Some(settings.store.cache_bytes));
        if options.keys.is_none() {
            options.keys = settings
                .store
                .keyring()
                .map_err(anyhow::Error::msg)
                .context("store.encryption_key_files")?;
        }
        if let Some(keys) = &options.keys {
            tracing::info!(key_id = %keys.current_id(), "job and record values are encrypted at rest");
        }
        let store = tokio::task::spawn_blocking(move || KvJobStore::open(&path, backend, options))
            .await?
            .with_context(|| {
                format!(
                    "opening the queue store at {}",
                    settings.store.path.display()
                )
            })?;
        let store_cache_bytes = store.cache_bytes().unwrap_or_default();
        let store = Arc::new(store);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let queue = Queue::with_observer(
            store.clone(),
            Arc::new(TokioClock::new()),
            settings.queue.retry.clone(),
            settings.queue.lease,
            metrics.clone() as Arc<dyn crate::queue::Observer>,
        );

        let clients = crate::upstreams::build_observed(
            &settings.upstreams,
            Some(metrics.clone() as Arc<dyn dvc_upstream::Observer>),
        )
        .context("building the upstream clients")?;
        let officers = clients.officers.clone();
        // The audit log is opened only where lookups can happen; a broken chain stops the start.
        let audit = if settings.upstreams.population.is_some() {
            let key = match &settings.audit.key_file {
                Some(f) => Some(crate::settings::read_key(f).map_err(anyhow::Error::msg)?),
                None => {
                    tracing::warn!(
                        "audit.key_file is not set: lookups are audited without a citizen hash, so the log cannot be searched by citizen"
                    );
                    None
                }
            };
            let path = settings.audit.path.clone();
            let policy = settings.audit.policy;
            let log = tokio::task::spawn_blocking(move || {
                crate::audit::AuditLog::open_with(&path, key, policy)
            })
            .await?
            .context("opening the audit log")?;
            Some(Arc::new(log))
        } else {
            None
        };
        let audit_log = audit.clone();
        let record_key = settings
            .store
            .record_key()
            .map_err(anyhow::Error::msg)
            .context("the key of record-key hashes")?;
        let flows = crate::flows::Flows::with_audit(
            queue.clone(),
            clients,
            settings.clone(),
            audit,
            record_key,
            Some(metrics.clone()),
        );
        let mut wiring = flows.wiring();
        wiring.merge(extra);

        let api = TcpListener::bind(settings.api.listen)
            .await
            .with_context(|| format!("binding the API listener on {}", settings.api.listen))?;
        let ops = TcpListener::bind(settings.ops.listen)
            .await
            .with_context(|| format!("binding the ops listener on {}", settings.ops.listen))?;
        let api_addr = api.local_addr()?;
        let ops_addr = ops.local_addr()?;

        let (shutdown, stop) = watch::channel(false);
        let board = LaneBoard::default();
        let worker_settings = WorkerSettings {
            idle_poll: settings.queue.idle_poll,
            auth_pause: settings.queue.auth_pause,
            shutdown_grace: settings.queue.shutdown_grace,
            breaker: settings.queue.circuit.clone(),
        };
        let mut workers = Vec::new();
        for lane in &wiring.lanes {
            workers.push(worker::spawn_lane(
                queue.clone(),
                LaneSpec {
                    lane: lane.clone(),
                    concurrency: settings
                        .queue
                        .lanes
                        .get(lane)
                        .and_then(|l| l.concurrency)
                        .unwrap_or(settings.queue.lane_concurrency),
                    rate_per_second: settings
                        .queue
                        .lanes
                        .get(lane)
                        .and_then(|l| l.rate_per_second),
                },
                wiring.handlers.clone(),
                worker_settings.clone(),
                board.clone(),
                stop.clone(),
            ));
        }
        workers.push(maintenance::spawn(
            queue.clone(),
            MaintenanceSettings {
                lease_check_every: (settings.queue.lease / 4)
                    .max(std::time::Duration::from_secs(1)),
                retention: settings.queue.retention,
                purge_every: settings.queue.purge_interval,
                purge_batch: settings.queue.purge_batch,
            },
            stop.clone(),
        ));

        if let Some(tracker) = crate::flows::shipment::spawn_tracker(flows.clone(), stop.clone()) {
            workers.push(tracker);
        }
        if let Some(log) = audit_log.clone() {
            workers.push(spawn_audit_maintenance(
                log,
                settings.audit.policy,
                stop.clone(),
            ));
        }
        let tokens = Arc::new(
            crate::api::auth::Tokens::load(
                settings.api.tokens.clone(),
                settings.api.tokens_file.clone(),
            )
            .map_err(|e| anyhow::anyhow!("api.tokens_file: {e}"))?,
        );
        workers.push(spawn_reload_on_hangup(
            tokens.clone(),
            officers,
            stop.clone(),
        ));
        let history = Arc::new(crate::ops::dashboard::History::default());
        workers.push(crate::ops::dashboard::spawn_sampler(
            queue.clone(),
            history.clone(),
            stop.clone(),
        ));
        let auth_failures = Arc::new(crate::api::auth::AuthFailures::new(
            settings.api.auth_failure_limit,
            std::time::Duration::from_secs(60),
        ));
        let ops_router = crate::ops::router(crate::ops::OpsState {
            queue: queue.clone(),
            board,
            lanes: wiring.lanes.clone(),
            metrics: metrics.clone(),
            store_path: settings.store.path.clone(),
            tokens: tokens.clone(),
            history,
            flows: Some(flows.clone()),
            sessions: Arc::default(),
            auth_failures: auth_failures.clone(),
            secure: settings.ops.tls.is_some(),
            public: !ops_addr.ip().is_loopback(),
            audit: audit_log.clone(),
        });
        let servers = vec![
            serve(
                api,
                settings.api.tls.as_ref(),
                settings.api.limits,
                crate::api::router(
                    crate::api::ApiState {
                        queue: queue.clone(),
                        tokens,
                        metrics: Some(metrics.clone()),
                        flows: Some(flows),
                        limiter: crate::api::auth::RateLimiter::new(settings.api.rate_limit),
                        auth_failures: auth_failures.clone(),
                        record_key,
                    },
                    settings.api.body_limit,
                ),
                stop.clone(),
            )?,
            serve(
                ops,
                settings.ops.tls.as_ref(),
                settings.ops.limits,
                ops_router,
                stop,
            )?,
        ];
        warn_if_exposed("api", api_addr, settings.api.tls.is_some());
        warn_if_exposed("ops", ops_addr, settings.ops.tls.is_some());
        tracing::info!(
            %api_addr,
            %ops_addr,
            backend = backend.as_str(),
            store_cache_bytes,
            "dvc-connector started"
        );
        Ok(Self {
            api_addr,
            ops_addr,
            queue,
            store,
            shutdown,
            workers,
            servers,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Runs until `stop` resolves, then: stop accepting requests, let running jobs finish (or release
    /// them after the grace period), close the store. Every acknowledged write is already on disk.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        stop.await;
        tracing::info!("shutting down: no new work; finishing running jobs");
        let _ = self.shutdown.send(true);
        for server in self.servers {
            server.await?.context("HTTP server")?;
        }
        for worker in self.workers {
            worker.await?;
        }
        let store = self.store;
        drop(self.queue);
        tokio::task::spawn_blocking(move || store.close()).await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves `router` on `listener` within `limits`, over TLS when the listener has a `tls` section (its
/// files were parsed at load; they are read again here, so a certificate replaced on disk takes effect
/// on restart).
fn serve(
    listener: TcpListener,
    tls: Option<&ServerTlsSettings>,
    limits: crate::settings::ListenerLimits,
    router: axum::Router,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let tls = tls
        .map(|t| crate::tls::server_config(&t.certificate, &t.private_key, t.client_ca.as_deref()))
        .transpose()?;
    Ok(crate::serve::spawn(listener, tls, router, limits, stop))
}

/// A listener reachable from other machines without TLS carries tokens and citizen data in clear.
fn warn_if_exposed(name: &str, addr: std::net::SocketAddr, tls: bool) {
    if !tls && !addr.ip().is_loopback() {
        tracing::warn!(
            listener = name,
            %addr,
            "this listener is not on loopback and serves plain HTTP: bearer tokens and citizen data cross the network in clear; configure [{name}.tls] or put a TLS proxy in front"
        );
    }
}

/// Seals and prunes the audit log's segments: at start, then every eighth of `rotate_every` (between
/// a minute and an hour). A failure is logged and tried again next time; lookups go on being recorded.
fn spawn_audit_maintenance(
    log: Arc<crate::audit::AuditLog>,
    policy: crate::audit::Policy,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let every = (policy.rotate_every / 8).clamp(
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(3600),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let log = log.clone();
            let now = time::OffsetDateTime::now_utc();
            match tokio::task::spawn_blocking(move || log.maintain(now)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => {
                    tracing::info!(removed, "audit log: segments past audit.retention removed");
                }
                Ok(Err(e)) => tracing::error!(error = %e, "audit log maintenance"),
                Err(e) => tracing::error!(error = %e, "audit log maintenance task"),
            }
        }
    })
}

/// On SIGHUP, reads the files that may change without a restart again (`api.tokens_file`,
/// `upstreams.population.officers_file`). A file that does not read or validate leaves what was
/// loaded from it before in place, and says why.
fn spawn_reload_on_hangup(
    tokens: Arc<crate::api::auth::Tokens>,
    officers: Arc<crate::upstreams::Officers>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hangup = signal(SignalKind::hangup());
    tokio::spawn(async move {
        let Ok(mut hangup) = hangup else {
            tracing::warn!(
                "cannot install the SIGHUP handler; changed token and officer files need a restart"
            );
            return;
        };
        loop {
            tokio::select! {
                _ = hangup.recv() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            match tokens.reload() {
                Ok(count) => tracing::info!(tokens = count, "SIGHUP: API tokens reloaded"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: the tokens file was not loaded; the previous tokens stay")
                }
            }
            match officers.reload() {
                Ok(count) => {
                    tracing::info!(officers = count, "SIGHUP: officers' credentials reloaded")
                }
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: the officers file was not loaded; the previous credentials stay")
                }
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed by this call, not when the
/// future is first polled: call it before building the application, so that a SIGTERM arriving while
/// the daemon starts (a service manager stopping it right away) stops it gracefully instead of
/// killing it. Must be called inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            tracing::warn!(
                "cannot install the SIGTERM/SIGINT handlers; stop the daemon with SIGKILL"
            );
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
}
