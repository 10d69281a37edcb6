//! The daemon's life: start on port 0, answer health and readiness, refuse what it cannot open, stop
//! cleanly on SIGTERM.

use std::time::Duration;

use crate::helpers::{Proc, write_config};

fn get(url: &str) -> (u16, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let response = reqwest::get(url).await.expect("request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, response.text().await.expect("body"))
    })
}

#[test]
fn the_daemon_serves_health_and_stops_cleanly_on_sigterm() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "redb", &dir.path().join("store"), "");
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    let ops = daemon.listen_addr("ops_addr");
    let api = daemon.listen_addr("api_addr");

    let (status, _, body) = get(&format!("http://{ops}/healthz"));
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, body) = get(&format!("http://{ops}/readyz"));
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ready["store"]["writable"], true);
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
