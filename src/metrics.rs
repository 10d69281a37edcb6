//! Prometheus metrics, served on the ops listener at `/metrics`.
//!
//! Names are constants here; label values come only from bounded sets — job kinds and lanes (defined by
//! the code and the configuration), error classes, dead reasons, lane states, route templates, methods
//! and status codes — never from ids, messages or personal data. Counters move where things happen;
//! gauges (queue depth, lane state, store size, free disk) are read at scrape time.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::queue::worker::{LaneBoard, LaneState};
use crate::queue::{JobState, Queue};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub lane: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    pub kind: String,
    pub lane: String,
    pub class: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeadLabels {
    pub kind: String,
    pub lane: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DepthLabels {
    pub lane: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub operation: String,
    /// `ok`, or the error class: `retryable`, `permanent`, `auth`.
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LaneLabels {
    pub lane: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's template, never the concrete path (which holds ids). Borrowed for the API's own
    /// routes, so counting a request allocates nothing.
    pub route: Cow<'static, str>,
    pub method: Cow<'static, str>,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VerificationLabels {
    /// `exists` or `full`.
    pub mode: String,
    /// `verified`, `mismatch`, `not_found`, `failed`, `cached`, `rejected`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ShipmentLabels {
    /// `result_delivery` or `dossier_pickup`.
    pub kind: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Counters and histograms updated as work happens.
#[derive(Debug)]
pub struct Metrics {
    pub enqueued: Family<JobLabels, Counter>,
    pub completed: Family<JobLabels, Counter>,
    pub retried: Family<RetryLabels, Counter>,
    pub dead_lettered: Family<DeadLabels, Counter>,
    pub attempt_seconds: Family<JobLabels, Histogram>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub api_seconds: Family<RequestLabels, Histogram>,
    pub upstream_responses: Family<UpstreamLabels, Counter>,
    pub upstream_seconds: Family<UpstreamLabels, Histogram>,
    pub verifications: Family<VerificationLabels, Counter>,
    pub shipment_transitions: Family<ShipmentLabels, Counter>,
    pub steps_held: Family<TargetLabels, Counter>,
    pub tracking_events: Family<OutcomeLabels, Counter>,
    depth: Family<DepthLabels, Gauge>,
    overdue: Family<LaneLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    blocked_keys: Family<LaneLabels, Gauge>,
    blocked_jobs: Family<LaneLabels, Gauge>,
    lane_state: Family<DepthLabels, Gauge>,
    store_bytes: Gauge,
    disk_free_bytes: Gauge,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            enqueued: Family::default(),
            completed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            attempt_seconds: Family::new_with_constructor(latency_histogram),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(latency_histogram),
            upstream_responses: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            verifications: Family::default(),
            shipment_transitions: Family::default(),
            steps_held: Family::default(),
            tracking_events: Family::default(),
            depth: Family::default(),
            overdue: Family::default(),
            blocked_keys: Family::default(),
            blocked_jobs: Family::default(),
            lane_state: Family::default(),
            store_bytes: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            registry: Registry::with_prefix("dvc_connector"),
        };
        m.register()
    }
}

impl Metrics {
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "jobs_enqueued",
            "Jobs accepted into the queue (durably)",
            self.enqueued.clone(),
        );
        r.register(
            "jobs_completed",
            "Jobs delivered to their upstream",
            self.completed.clone(),
        );
        r.register(
            "jobs_retried",
            "Failed attempts scheduled for a retry, by error class",
            self.retried.clone(),
        );
        r.register(
            "jobs_dead_lettered",
            "Jobs moved to the dead letter, by reason",
            self.dead_lettered.clone(),
        );
        r.register(
            "job_attempt_duration_seconds",
            "Time a handler took for one attempt",
            self.attempt_seconds.clone(),
        );
        r.register(
            "api_requests",
            "API requests by route template, method and status",
            self.api_requests.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "API request latency by route template",
            self.api_seconds.clone(),
        );
        r.register(
            "upstream_responses",
            "Upstream calls by upstream, operation and outcome (ok or the error class)",
            self.upstream_responses.clone(),
        );
        r.register(
            "upstream_request_duration_seconds",
            "Upstream call latency by upstream, operation and outcome",
            self.upstream_seconds.clone(),
        );
        r.register(
            "verifications",
            "Identity verifications answered, by mode and outcome (cached: from the verdict cache; rejected: 422 before any upstream call)",
            self.verifications.clone(),
        );
        r.register(
            "shipment_transitions",
            "Shipment status changes, by kind and new status",
            self.shipment_transitions.clone(),
        );
        r.register(
            "dossier_steps_held",
            "Steps held because the portal target did not have their dossier yet",
            self.steps_held.clone(),
        );
        r.register(
            "tracking_events",
            "VNPost tracking-feed events read, by outcome (applied, repeated, unknown_order)",
            self.tracking_events.clone(),
        );
        r.register(
            "queue_jobs",
            "Jobs in the store by lane and state",
            self.depth.clone(),
        );
        r.register(
            "queue_oldest_due_seconds",
            "How long the most overdue runnable job of each lane has been waiting",
            self.overdue.clone(),
        );
        r.register(
            "queue_blocked_keys",
            "Keys of each lane whose head is a dead job: nothing more of theirs runs until it is retried or discarded",
            self.blocked_keys.clone(),
        );
        r.register(
            "queue_blocked_jobs",
            "Jobs of each lane waiting behind a dead job of their key",
            self.blocked_jobs.clone(),
        );
        r.register(
            "lane_state",
            "1 for the state each lane's worker is in (running, backing_off, paused, stopped)",
            self.lane_state.clone(),
        );
        r.register(
            "store_size_bytes",
            "Bytes the queue store occupies on disk",
            self.store_bytes.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Free bytes on the store's file system",
            self.disk_free_bytes.clone(),
        );
        self
    }

    /// The text exposition, with gauges refreshed from the queue, the lane board and the disk.
    pub async fn render(&self, queue: &Queue, board: &LaneBoard, store_path: &Path) -> String {
        if let Ok(counts) = queue.counts().await {
            for c in &counts {
                if let Ok(overdue) = queue.overdue(&c.lane).await {
                    self.overdue
                        .get_or_create(&LaneLabels {
                            lane: c.lane.clone(),
                        })
                        .set(overdue.as_secs_f64());
                }
            }
            for c in counts {
                let lane = LaneLabels {
                    lane: c.lane.clone(),
                };
                self.blocked_keys
                    .get_or_create(&lane)
                    .set(c.blocked_keys as i64);
                self.blocked_jobs
                    .get_or_create(&lane)
                    .set(c.blocked_jobs as i64);
                for state in JobState::ALL {
                    self.depth
                        .get_or_create(&DepthLabels {
                            lane: c.lane.clone(),
                            state: state.as_str().into(),
                        })
                        .set(c.get(state) as i64);
                }
            }
        }
        for (lane, status) in board.snapshot() {
            for state in [
                LaneState::Running,
                LaneState::BackingOff,
                LaneState::Paused,
                LaneState::Stopped,
            ] {
                self.lane_state
                    .get_or_create(&DepthLabels {
                        lane: lane.clone(),
                        state: state.as_str().into(),
                    })
                    .set(i64::from(status.state == state));
            }
        }
        self.store_bytes.set(queue.store().size_on_disk() as i64);
        if let Ok(stat) = rustix::fs::statvfs(store_path) {
            self.disk_free_bytes
                .set((stat.f_bavail.saturating_mul(stat.f_frsize)) as i64);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Metrics {
    pub fn verification(&self, mode: &str, status: &str) {
        self.verifications
            .get_or_create(&VerificationLabels {
                mode: mode.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    pub fn job(kind: &str, lane: &str) -> JobLabels {
        JobLabels {
            kind: kind.to_owned(),
            lane: lane.to_owned(),
        }
    }
}

impl dvc_upstream::Observer for Metrics {
    fn observe(
        &self,
        upstream: &'static str,
        operation: &'static str,
        elapsed: std::time::Duration,
        outcome: Result<(), &dvc_upstream::UpstreamError>,
    ) {
        let labels = UpstreamLabels {
            upstream: upstream.to_owned(),
            operation: operation.to_owned(),
            outcome: match outcome {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.class.as_str().to_owned(),
            },
        };
        self.upstream_responses.get_or_create(&labels).inc();
        self.upstream_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

/// OpenMetrics text (what the registry encodes) as the classic Prometheus text format 0.0.4, which
/// `promtool check metrics` and older scrapers read: counter families are named with their `_total`
/// suffix in `# HELP`/`# TYPE`, and there is no `# EOF` line.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_classic_format_and_eof_dropped() {
        let om = "# HELP x_jobs Jobs.\n# TYPE x_jobs counter\nx_jobs_total{lane=\"a\"} 1\n# HELP x_depth Depth.\n# TYPE x_depth gauge\nx_depth 3\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP x_jobs_total Jobs.\n# TYPE x_jobs_total counter\nx_jobs_total{lane=\"a\"} 1\n# HELP x_depth Depth.\n# TYPE x_depth gauge\nx_depth 3\n"
        );
    }
}

#[cfg(test)]
mod deploy_tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every family the registry exports, touched once so each shows up.
    fn exported_names() -> BTreeSet<String> {
        let m = Metrics::default();
        let job = Metrics::job("k", "l");
        m.enqueued.get_or_create(&job).inc();
        m.completed.get_or_create(&job).inc();
        m.retried
            .get_or_create(&RetryLabels {
                kind: "k".into(),
                lane: "l".into(),
                class: "retryable".into(),
            })
            .inc();
        m.dead_lettered
            .get_or_create(&DeadLabels {
                kind: "k".into(),
                lane: "l".into(),
                reason: "r".into(),
            })
            .inc();
        m.attempt_seconds.get_or_create(&job).observe(0.1);
        let req = RequestLabels {
            route: "/".into(),
            method: "GET".into(),
            status: 200,
        };
        m.api_requests.get_or_create(&req).inc();
        m.api_seconds.get_or_create(&req).observe(0.1);
        m.depth
            .get_or_create(&DepthLabels {
                lane: "l".into(),
                state: "ready".into(),
            })
            .set(1);
        m.overdue
            .get_or_create(&LaneLabels { lane: "l".into() })
            .set(1.0);
        m.blocked_keys
            .get_or_create(&LaneLabels { lane: "l".into() })
            .set(1);
        m.blocked_jobs
            .get_or_create(&LaneLabels { lane: "l".into() })
            .set(2);
        m.lane_state
            .get_or_create(&DepthLabels {
                lane: "l".into(),
                state: "running".into(),
            })
            .set(1);
        let up = UpstreamLabels {
            upstream: "portal".into(),
            operation: "DongBoHoSoMC".into(),
            outcome: "ok".into(),
        };
        m.upstream_responses.get_or_create(&up).inc();
        m.upstream_seconds.get_or_create(&up).observe(0.1);
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &m.registry);
        let text = classic_text(&text);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect()
    }

    /// The metric names an alert rule or dashboard expression mentions.
    fn referenced(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("dvc_connector_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn alerts_and_dashboard_only_use_metrics_that_exist() {
        let exported = exported_names();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in [
            "deploy/prometheus/alerts.yml",
            "deploy/grafana/dvc-connector.json",
        ] {
            let text = std::fs::read_to_string(root.join(file)).expect("deploy file");
            let names = referenced(&text);
            assert!(!names.is_empty(), "{file} mentions no metric");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{file} uses {name}, which is not exported; exported: {exported:?}"
                );
            }
        }
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("deploy/grafana/dvc-connector.json"))
                .expect("dashboard"),
        )
        .expect("the dashboard is valid JSON");
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| p.len() >= 10)
        );
    }
}

/// The queue's events, counted.
impl crate::queue::Observer for Metrics {
    fn enqueued(&self, kind: &str, lane: &str) {
        self.enqueued.get_or_create(&Self::job(kind, lane)).inc();
    }

    fn completed(&self, kind: &str, lane: &str, n: u64) {
        self.completed
            .get_or_create(&Self::job(kind, lane))
            .inc_by(n);
    }

    fn retried(&self, kind: &str, lane: &str, class: &str) {
        self.retried
            .get_or_create(&RetryLabels {
                kind: kind.to_owned(),
                lane: lane.to_owned(),
                class: class.to_owned(),
            })
            .inc();
    }

    fn dead_lettered(&self, kind: &str, lane: &str, reason: &str) {
        self.dead_lettered
            .get_or_create(&DeadLabels {
                kind: kind.to_owned(),
                lane: lane.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    fn attempted(&self, kind: &str, lane: &str, seconds: f64) {
        self.attempt_seconds
            .get_or_create(&Self::job(kind, lane))
            .observe(seconds);
    }
}
