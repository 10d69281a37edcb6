//! `dvc-connector status`: one screen on a running daemon, from its ops listener (`/readyz` and
//! `/metrics`) — no token needed, no personal data shown (the metrics carry none).

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::cli::Output;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Reads the samples of the text exposition (comments skipped; label values without escapes, as ours are).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}')?;
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .filter_map(|pair| {
                            let (k, v) = pair.split_once("=\"")?;
                            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

#[derive(Debug, Default, Serialize)]
pub struct LaneView {
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub in_flight: u64,
    pub ready: u64,
    pub leased: u64,
    pub dead: u64,
    pub done: u64,
    pub oldest_due_seconds: f64,
    /// Keys whose head is dead, and the jobs waiting behind them.
    pub blocked_keys: u64,
    pub blocked_jobs: u64,
    pub completed_total: u64,
    /// Failed attempts since start, by error class.
    pub retried_total: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub ready: bool,
    pub store_backend: String,
    pub store_writable: bool,
    pub lanes: BTreeMap<String, LaneView>,
    /// (lane, reason) → dead letters since start.
    pub dead_lettered_total: BTreeMap<String, u64>,
}

pub fn build(readyz: &Value, metrics: &str) -> StatusView {
    let mut lanes: BTreeMap<String, LaneView> = BTreeMap::new();
    if let Some(board) = readyz["lanes"].as_object() {
        for (lane, s) in board {
            let view = lanes.entry(lane.clone()).or_default();
            view.state = s["state"].as_str().unwrap_or("").to_owned();
            view.reason = s["reason"].as_str().map(str::to_owned);
            view.in_flight = s["in_flight"].as_u64().unwrap_or(0);
        }
    }
    let mut dead_lettered_total = BTreeMap::new();
    for s in parse_samples(metrics) {
        let Some(lane) = s.labels.get("lane").cloned() else {
            continue;
        };
        let n = s.value.max(0.0) as u64;
        match s.name.as_str() {
            "dvc_connector_queue_jobs" => {
                let v = lanes.entry(lane).or_default();
                match s.labels.get("state").map(String::as_str) {
                    Some("ready") => v.ready = n,
                    Some("leased") => v.leased = n,
                    Some("dead") => v.dead = n,
                    Some("done") => v.done = n,
                    _ => {}
                }
            }
            "dvc_connector_queue_blocked_keys" => lanes.entry(lane).or_default().blocked_keys = n,
            "dvc_connector_queue_blocked_jobs" => lanes.entry(lane).or_default().blocked_jobs = n,
            "dvc_connector_queue_oldest_due_seconds" => {
                lanes.entry(lane).or_default().oldest_due_seconds = s.value
            }
            "dvc_connector_jobs_completed_total" => {
                lanes.entry(lane).or_default().completed_total += n
            }
            "dvc_connector_jobs_retried_total" => {
                let class = s.labels.get("class").cloned().unwrap_or_default();
                *lanes
                    .entry(lane)
                    .or_default()
                    .retried_total
                    .entry(class)
                    .or_default() += n;
            }
            "dvc_connector_jobs_dead_lettered_total" => {
                let reason = s.labels.get("reason").cloned().unwrap_or_default();
                *dead_lettered_total
                    .entry(format!("{lane} {reason}"))
                    .or_default() += n;
            }
            _ => {}
        }
    }
    StatusView {
        ready: readyz["status"] == "ready",
        store_backend: readyz["store"]["backend"].as_str().unwrap_or("").to_owned(),
        store_writable: readyz["store"]["writable"].as_bool().unwrap_or(false),
        lanes,
        dead_lettered_total,
    }
}

pub async fn run(ops: &str, tls: &crate::cli::ClientTlsArgs, output: Output) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let http = tls.client()?;
    let base = ops.trim_end_matches('/');
    let readyz: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .with_context(|| format!("cannot reach the ops listener at {base}"))?
        .json()
        .await
        .context("/readyz did not answer JSON")?;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let view = build(&readyz, &metrics);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Output::Table => print(base, &view),
    }
    Ok(())
}

/// The same view from a stopped daemon's store (no lane workers, so no lane states).
pub async fn run_offline(
    dir: &std::path::Path,
    key_files: &[std::path::PathBuf],
    output: Output,
) -> anyhow::Result<()> {
    let queue = crate::jobs_cli::open_stopped_store(dir, key_files)?;
    let mut lanes = BTreeMap::new();
    for c in queue.counts().await? {
        let overdue = queue.overdue(&c.lane).await?.as_secs_f64();
        lanes.insert(
            c.lane.clone(),
            LaneView {
                state: "stopped".into(),
                ready: c.ready,
                leased: c.leased,
                dead: c.dead,
                done: c.done,
                oldest_due_seconds: overdue,
                blocked_keys: c.blocked_keys,
                blocked_jobs: c.blocked_jobs,
                ..LaneView::default()
            },
        );
    }
    let view = StatusView {
        ready: false,
        store_backend: queue.store().backend().to_owned(),
        store_writable: false,
        lanes,
        dead_lettered_total: BTreeMap::new(),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Output::Table => print(
            &format!("store {} (daemon stopped, read-only)", dir.display()),
            &view,
        ),
    }
    Ok(())
}

fn print(base: &str, v: &StatusView) {
    println!(
        "dvc-connector at {base}: {}; store {} {}",
        if v.ready { "ready" } else { "NOT READY" },
        v.store_backend,
        if v.store_writable {
            "writable"
        } else {
            "NOT WRITABLE"
        }
    );
    println!();
    let mut table = crate::table::new([
        "LANE",
        "STATE",
        "READY",
        "LEASED",
        "DEAD",
        "BLOCKED BY DEAD",
        "OVERDUE",
        "DELIVERED",
        "IN FLIGHT",
        "RETRIED (by class)",
    ]);
    for (lane, l) in &v.lanes {
        let retried = l
            .retried_total
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let state = match &l.reason {
            Some(r) => format!("{} ({r})", l.state),
            None => l.state.clone(),
        };
        table.add_row(vec![
            lane.clone(),
            state,
            l.ready.to_string(),
            l.leased.to_string(),
            l.dead.to_string(),
            format!("{} in {} keys", l.blocked_jobs, l.blocked_keys),
            format!("{:.0}s", l.oldest_due_seconds),
            l.completed_total.to_string(),
            l.in_flight.to_string(),
            retried,
        ]);
    }
    crate::table::right_align(&mut table, &[2, 3, 4, 5, 6, 7, 8]);
    println!("{table}");
    if !v.dead_lettered_total.is_empty() {
        println!();
        println!("dead-lettered since start (lane, reason):");
        for (k, n) in &v.dead_lettered_total {
            println!("  {k}: {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_their_labels_are_read() {
        let text =
            "# HELP x y\nx_total{lane=\"portal:national\",class=\"retryable\"} 3\nplain 1.5\n";
        let s = parse_samples(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["lane"], "portal:national");
        assert_eq!(s[0].labels["class"], "retryable");
        assert_eq!((s[1].name.as_str(), s[1].value), ("plain", 1.5));
    }

    #[test]
    fn the_view_combines_readiness_and_metrics() {
        let readyz = serde_json::json!({
            "status": "ready",
            "store": {"backend": "redb", "writable": true},
            "lanes": {"postal": {"state": "backing_off", "reason": "circuit_open", "in_flight": 0}}
        });
        let metrics = "dvc_connector_queue_jobs{lane=\"postal\",state=\"ready\"} 7\n\
            dvc_connector_queue_oldest_due_seconds{lane=\"postal\"} 42.5\n\
            dvc_connector_jobs_retried_total{kind=\"postal.create\",lane=\"postal\",class=\"retryable\"} 9\n\
            dvc_connector_jobs_dead_lettered_total{kind=\"postal.create\",lane=\"postal\",reason=\"permanent_error\"} 2\n";
        let v = build(&readyz, metrics);
        let postal = &v.lanes["postal"];
        assert_eq!(
            (
                postal.state.as_str(),
                postal.ready,
                postal.oldest_due_seconds
            ),
            ("backing_off", 7, 42.5)
        );
        assert_eq!(postal.retried_total["retryable"], 9);
        assert_eq!(v.dead_lettered_total["postal permanent_error"], 2);
        assert!(v.ready && v.store_writable);
    }
}
