//! The daemon's life: start on port 0, answer health and readiness, refuse what it cannot open, stop
//! cleanly on SIGTERM.

use std::time::Duration;

use crate::helpers::{Proc, assert_healthy_and_ready, get, write_config};

#[test]
fn the_daemon_serves_health_and_stops_cleanly_on_sigterm() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "redb", &dir.path().join("store"), "");
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    let ops = daemon.listen_addr("ops_addr");
    let api = daemon.listen_addr("api_addr");

    let ready = assert_healthy_and_ready(&ops);
    assert_eq!(ready["store"]["backend"], "redb");

    let (status, content_type, body) = get(&format!("http://{api}/v1/nothing-here"));
    assert_eq!(status, 404);
    assert_eq!(content_type, "application/problem+json");
    assert!(body.contains("\"code\":\"not_found\""));

    daemon.sigterm();
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit {status:?}: {:?}", daemon.err_lines);
    assert!(daemon.err_lines.iter().any(|l| l.contains("\"stopped\"")));
}

/// `store.cache` reaches the engine: the store reports the cache it opened with, and the daemon logs it.
#[test]
fn the_store_opens_with_the_configured_page_cache() {
    let default = dvc_connector::queue::kv::CACHE_BYTES.to_string();
    let eight = (8usize << 20).to_string();
    for (backend, cache, want) in [
        ("redb", None, default.as_str()),
        ("redb", Some("8MiB"), eight.as_str()),
        ("sled", Some("8MiB"), eight.as_str()),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), backend, &dir.path().join("store"), "");
        let env: Vec<(&str, &str)> = cache
            .map(|c| ("DVC_CONNECTOR__STORE__CACHE", c))
            .into_iter()
            .collect();
        let mut daemon =
            Proc::spawn_with_env(&["run", "--config", config.to_str().expect("path")], &env);
        let line = daemon
            .wait_for("dvc-connector started", true, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{backend}: did not start: {:?}", daemon.err_lines));
        let log: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        assert_eq!(
            log["store_cache_bytes"].to_string(),
            want,
            "{backend} {cache:?}: {line}"
        );
    }
}

#[test]
fn a_store_of_an_unknown_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).expect("mkdir");
    std::fs::write(
        store.join("STORE"),
        "backend = \"redb\"\nformat_version = 7\n",
    )
    .expect("write");
    let config = write_config(dir.path(), "redb", &store, "");
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1));
    let text = daemon.err_lines.join("\n");
    assert!(text.contains("format version 7"), "{text}");
}

#[test]
fn a_second_daemon_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let config = write_config(dir.path(), "redb", &store, "");
    let mut first = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    first.listen_addr("api_addr");
    let mut second = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    let status = second.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(
        second
            .err_lines
            .join("\n")
            .contains("in use by another process")
    );
}

#[test]
/// (That no citizen number reaches a log line is held by
/// `flows::personal_data_never_appears_in_logs_metrics_or_error_bodies`, with real citizens' traffic.)
fn log_lines_about_a_job_carry_its_identity() {
    dvc_connector::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Every delivery is refused, so the worker logs about each job.
    let ledger = crate::helpers::Ledger::start(&runtime, 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "redb",
        &dir.path().join("store"),
        "[queue.circuit]\nfailures = 0\n",
    );
    let mut child = Proc::spawn_with_env(
        &[
            "qualify-child",
            "--config",
            config.to_str().expect("path"),
            "--ledger",
            &ledger.url,
            "--run",
            "0",
            "--producers",
            "1",
            "--keys",
            "1",
            "--jobs",
            "3",
        ],
        &[("DVC_CONNECTOR__LOG__LEVEL", "info,dvc_connector=debug")],
    );
    child
        .wait_for("READY", false, Duration::from_secs(20))
        .expect("starts");
    // Until the first refused attempt has been logged inside its job's span.
    child
        .wait_for("attempt failed", true, Duration::from_secs(20))
        .expect("an attempt failed and was logged");
    child.sigterm();
    child.wait_exit(Duration::from_secs(20)).expect("exits");
    let job_lines: Vec<serde_json::Value> = child
        .err_lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("span").is_some_and(|s| s["name"] == "job"))
        .collect();
    // Each refused delivery is logged (at debug) inside its job's span.
    let failed: Vec<&serde_json::Value> = job_lines
        .iter()
        .filter(|l| l["message"] == "attempt failed")
        .collect();
    assert!(
        !failed.is_empty(),
        "no attempt was logged inside a job: {:?}",
        child.err_lines
    );
    for line in &job_lines {
        let span = &line["span"];
        for field in ["job_id", "kind", "lane", "key"] {
            assert!(span.get(field).is_some(), "{field} missing: {line}");
        }
        assert_eq!(span["lane"], "qualify");
    }
}
