//! `/metrics` of a daemon at work passes Prometheus' own `promtool check metrics` and reports what
//! happened: enqueues, completions, retries, queue depth, lane state. (`.ci/run` installs promtool from
//! Debian's `prometheus` package.)

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{Ledger, Proc, write_config};

pub(crate) fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed for this test: install Debian's `prometheus` package (.ci/run does)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_of_a_working_daemon_pass_promtool_and_count_the_work() {
    dvc_connector::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ledger = Ledger::start(&runtime, 20);
    let dir = tempfile::tempdir().expect("tempdir");
    // A fifth of deliveries fail on purpose; five in a row would (rightly) open the lane's breaker, which
    // is not what this test is about.
    let config = write_config(
        dir.path(),
        "redb",
        &dir.path().join("store"),
        "[queue.circuit]\nfailures = 0\n",
    );
    let mut child = Proc::spawn(&[
        "qualify-child",
        "--config",
        config.to_str().expect("path"),
        "--ledger",
        &ledger.url,
        "--run",
        "0",
        "--producers",
        "2",
        "--keys",
        "2",
        "--jobs",
        "40",
    ]);
    let ops = child.listen_addr("ops_addr");
    // Until the work this test reads about has happened: deliveries, and refusals retried.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = runtime.block_on(async {
            reqwest::get(format!("http://{ops}/metrics"))
                .await
                .expect("scrape")
                .text()
                .await
                .expect("body")
        });
        if value(&text, "dvc_connector_jobs_completed_total{") > 0.0
            && value(&text, "dvc_connector_jobs_retried_total{") > 0.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completion and retry within 30 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (content_type, text) = runtime.block_on(async {
        let r = reqwest::get(format!("http://{ops}/metrics"))
            .await
            .expect("scrape");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (ct, r.text().await.expect("body"))
    });
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let (ok, report) = promtool_check(&text);
    assert!(ok, "promtool: {report}\n{text}");
    assert!(
        value(&text, "dvc_connector_jobs_enqueued_total{") > 0.0,
        "{text}"
    );
    assert!(
        value(&text, "dvc_connector_jobs_completed_total{") > 0.0,
        "{text}"
    );
    assert!(
        value(&text, "dvc_connector_jobs_retried_total{") > 0.0,
        "20% of deliveries are refused: {text}"
    );
    assert!(
        text.contains("dvc_connector_queue_jobs{lane=\"qualify\",state=\"done\"}"),
        "{text}"
    );
    assert!(
        text.contains("dvc_connector_lane_state{lane=\"qualify\",state=\"running\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dvc_connector_job_attempt_duration_seconds_bucket{"),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("r0p"),
            "an ordering key leaked into a label: {line}"
        );
    }
    let openmetrics = runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("http://{ops}/metrics"))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body")
    });
    assert!(openmetrics.trim_end().ends_with("# EOF"));

    // `dvc-connector status` reads the same listener.
    let out = Command::new(crate::helpers::binary())
        .args([
            "status",
            "--ops",
            &format!("http://{ops}"),
            "--output",
            "json",
        ])
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(view["ready"], true);
    assert_eq!(view["lanes"]["qualify"]["state"], "running");
    assert!(
        view["lanes"]["qualify"]["completed_total"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{view}"
    );
    let table = Command::new(crate::helpers::binary())
        .args(["status", "--ops", &format!("http://{ops}")])
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("qualify") && table.contains("store redb writable"),
        "{table}"
    );
    child.sigterm();
    assert!(
        child
            .wait_exit(Duration::from_secs(20))
            .expect("exits")
            .success()
    );
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = crate::helpers::repo_file("deploy/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool is needed for this test: install Debian's `prometheus` package (.ci/run does)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool is needed for this test: install Debian's `prometheus` package (.ci/run does)");
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}
