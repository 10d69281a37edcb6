//! The operators' job API on the real binary: a store prepared with dead letters and ready jobs, then
//! tokens, scopes, problem+json, filters and paging, masking, and retry / discard / replay.

use std::sync::Arc;
use std::time::Duration;

use dvc_connector::queue::{
    Backend, JobError, KvJobStore, KvOptions, NewJob, Queue, RetryPolicies, TokioClock,
};
use serde_json::Value;

use crate::helpers::{Proc, write_config};

pub(crate) const ADMIN: &str = "ops-token-for-tests";
const PORTAL: &str = "portal-token-for-tests";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two dead letters (one citing a citizen ID in its message) and three ready jobs, on two lanes.
pub(crate) async fn prepare(store: &std::path::Path) -> Vec<String> {
    let queue = Queue::new(
        Arc::new(KvJobStore::open(store, Backend::Redb, KvOptions::default()).expect("store")),
        Arc::new(TokioClock::new()),
        RetryPolicies::default(),
        Duration::from_secs(60),
    );
    let mut ids = Vec::new();
    for (lane, key) in [
        ("portal:national", "H56-0001"),
        ("portal:national", "H56-0002"),
        ("portal:national", "H56-0003"),
        ("postal", "H56-0001"),
        ("portal:national", "H56-0001"),
    ] {
        ids.push(
            queue
                .enqueue(NewJob::new("portal.step", lane, key, b"{}".to_vec()))
                .await
                .expect("enqueue")
                .id
                .to_string(),
        );
    }
    let leased = queue.lease("portal:national", 2).await.expect("lease").jobs;
    assert_eq!(leased.len(), 2);
    queue
        .fail(
            &leased[0],
            &JobError::permanent("portal_7", "Hồ sơ của công dân 001190012345 bị từ chối"),
        )
        .await
        .expect("dead");
    queue
        .fail(&leased[1], &JobError::permanent("portal_7", "rejected"))
        .await
        .expect("dead");
    ids
}

struct Client {
    base: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Client {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        lang: Option<&str>,
    ) -> (u16, String, Value) {
        self.rt.block_on(async {
            let mut rb = self.http.request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            );
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            if let Some(l) = lang {
                rb = rb.header("accept-language", l);
            }
            let r = rb.send().await.expect("request");
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = r.text().await.expect("body");
            (
                status,
                ct,
                serde_json::from_str(&body).unwrap_or(Value::Null),
            )
        })
    }
}

/// A daemon on a prepared store, with an admin and a portal token.
pub(crate) fn start(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
) -> (Proc, String, Vec<String>) {
    start_with_env(dir, rt, &[])
}

/// As `start`, with environment overrides for the daemon.
pub(crate) fn start_with_env(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    env: &[(&str, &str)],
) -> (Proc, String, Vec<String>) {
    let store = dir.join("store");
    let ids = rt.block_on(prepare(&store));
    let extra = format!(
        "[[api.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n[[api.tokens]]\nname = \"portal\"\nsha256 = \"{}\"\nscopes = [\"portal\"]\n",
        sha256_hex(ADMIN),
        sha256_hex(PORTAL)
    );
    let config = write_config(dir, "redb", &store, &extra);
    let mut daemon =
        Proc::spawn_with_env(&["run", "--config", config.to_str().expect("path")], env);
    let api = daemon.listen_addr("api_addr");
    (daemon, api, ids)
}

#[test]
fn operators_find_and_repair_jobs_through_the_api() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut daemon, api, ids) = start(dir.path(), &rt);
    let c = Client {
        base: format!("http://{api}"),
        rt,
        http: reqwest::Client::new(),
    };

    // Who may ask.
    let (status, ct, body) = c.call("GET", "/v1/jobs", None, None);
    assert_eq!(
        (status, ct.as_str(), body["code"].as_str()),
        (401, "application/problem+json", Some("unauthorized"))
    );
    let (status, _, body) = c.call("GET", "/v1/jobs", Some("not-a-token"), Some("vi-VN"));
    assert_eq!(status, 401);
    assert_eq!(body["title"], "Chưa xác thực");
    let (status, _, body) = c.call("GET", "/v1/jobs", Some(PORTAL), None);
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));

    // Listing, filters, paging.
    let (status, _, all) = c.call("GET", "/v1/jobs", Some(ADMIN), None);
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(5));
    assert!(
        all["jobs"][0].get("payload").is_none(),
        "payloads never leave"
    );
    let (_, _, dead) = c.call("GET", "/v1/jobs?state=dead", Some(ADMIN), None);
    let dead = dead["jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["dead_reason"], "permanent_error");
    let messages: Vec<&str> = dead
        .iter()
        .filter_map(|j| j["last_error"]["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("001*******45")),
        "{messages:?}"
    );
    assert!(messages.iter().all(|m| !m.contains("001190012345")));
    let (_, _, postal) = c.call("GET", "/v1/jobs?target=postal", Some(ADMIN), None);
    assert_eq!(postal["jobs"].as_array().map(Vec::len), Some(1));
    let (_, _, dossier) = c.call(
        "GET",
        "/v1/jobs?dossier_code=H56-0001&target=portal:national",
        Some(ADMIN),
        None,
    );
    assert_eq!(dossier["jobs"].as_array().map(Vec::len), Some(2));
    let (_, _, page1) = c.call("GET", "/v1/jobs?limit=3", Some(ADMIN), None);
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    let (_, _, page2) = c.call(
        "GET",
        &format!("/v1/jobs?limit=3&cursor={cursor}"),
        Some(ADMIN),
        None,
    );
    assert_eq!(
        (
            page1["jobs"].as_array().map(Vec::len),
            page2["jobs"].as_array().map(Vec::len)
        ),
        (Some(3), Some(2))
    );
    assert!(page2.get("next_cursor").is_none());
    // Newest first: the same five jobs in the opposite order, over pages as well.
    let page_ids = |page: &Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j["id"].as_str().map(str::to_owned))
            .collect()
    };
    let oldest: Vec<String> = page_ids(&page1)
        .into_iter()
        .chain(page_ids(&page2))
        .collect();
    let (_, _, newest1) = c.call("GET", "/v1/jobs?limit=3&order=newest", Some(ADMIN), None);
    let cursor = newest1["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    let (_, _, newest2) = c.call(
        "GET",
        &format!("/v1/jobs?limit=3&order=newest&cursor={cursor}"),
        Some(ADMIN),
        None,
    );
    let mut newest: Vec<String> = page_ids(&newest1)
        .into_iter()
        .chain(page_ids(&newest2))
        .collect();
    newest.reverse();
    assert_eq!(newest, oldest);
    let (status, _, bad_order) = c.call("GET", "/v1/jobs?order=latest", Some(ADMIN), None);
    assert_eq!(status, 400);
    assert_eq!(bad_order["errors"][0]["field"], "order", "{bad_order}");
    let (status, _, bad) = c.call(
        "GET",
        "/v1/jobs?state=zombie&limit=0&colour=red",
        Some(ADMIN),
        None,
    );
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_query")));
    let fields: Vec<&str> = bad["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for f in ["state", "limit", "colour"] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }

    // One job, and the repairs.
    let dead_id = dead[0]["id"].as_str().expect("id").to_owned();
    let other_dead = dead[1]["id"].as_str().expect("id").to_owned();
    let (status, _, one) = c.call("GET", &format!("/v1/jobs/{dead_id}"), Some(ADMIN), None);
    assert_eq!((status, one["state"].as_str()), (200, Some("dead")));
    let (status, _, e) = c.call("GET", "/v1/jobs/not-a-ulid", Some(ADMIN), None);
    assert_eq!((status, e["code"].as_str()), (400, Some("invalid_job_id")));
    let (status, _, _) = c.call(
        "GET",
        "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 404);
    let (status, _, retried) = c.call(
        "POST",
        &format!("/v1/jobs/{dead_id}/retry"),
        Some(ADMIN),
        None,
    );
    assert_eq!(
        (
            status,
            retried["state"].as_str(),
            retried["attempts"].as_u64()
        ),
        (200, Some("ready"), Some(0))
    );
    let (status, _, again) = c.call(
        "POST",
        &format!("/v1/jobs/{dead_id}/retry"),
        Some(ADMIN),
        None,
    );
    assert_eq!(
        (
            status,
            again["code"].as_str(),
            again["errors"][0]["code"].as_str()
        ),
        (409, Some("wrong_state"), Some("ready"))
    );
    let (status, _, discarded) = c.call(
        "POST",
        &format!("/v1/jobs/{other_dead}/discard"),
        Some(ADMIN),
        None,
    );
    assert_eq!(
        (status, discarded["state"].as_str()),
        (200, Some("discarded"))
    );
    let (status, _, replayed) = c.call(
        "POST",
        "/v1/jobs/replay?target=portal:national",
        Some(ADMIN),
        None,
    );
    assert_eq!(
        (status, replayed["requeued"].as_u64()),
        (200, Some(0)),
        "nothing dead is left"
    );
    let (status, _, _) = c.call("DELETE", "/v1/jobs", Some(ADMIN), None);
    assert_eq!(status, 405);
    assert!(ids.contains(&dead_id));

    daemon.sigterm();
    assert!(
        daemon
            .wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success()
    );
}

fn jobs_cmd(api: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(crate::helpers::binary());
    cmd.arg("jobs")
        .args(args)
        .env("DVC_CONNECTOR_API", format!("http://{api}"))
        .env_remove("DVC_CONNECTOR_TOKEN");
    if let Some(t) = token {
        cmd.env("DVC_CONNECTOR_TOKEN", t);
    }
    outcome(cmd)
}

#[test]
fn the_jobs_command_lists_shows_and_replays_dead_letters() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut daemon, api, _) = start(dir.path(), &rt);

    let (code, _, err) = jobs_cmd(&api, None, &["list"]);
    assert_ne!(code, 0);
    assert!(err.contains("DVC_CONNECTOR_TOKEN"), "{err}");
    let (code, _, err) = jobs_cmd(&api, Some(PORTAL), &["list"]);
    assert_ne!(code, 0);
    assert!(err.contains("forbidden"), "{err}");

    let (code, out, err) = jobs_cmd(
        &api,
        Some(ADMIN),
        &["list", "--state", "dead", "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let dead: Vec<Value> = serde_json::from_str(&out).expect("json list");
    assert_eq!(dead.len(), 2);
    assert!(
        dead[0]["id"].as_str() > dead[1]["id"].as_str(),
        "newest first by default"
    );
    let (_, out, _) = jobs_cmd(
        &api,
        Some(ADMIN),
        &[
            "list",
            "--state",
            "dead",
            "--oldest-first",
            "--output",
            "json",
        ],
    );
    let oldest: Vec<Value> = serde_json::from_str(&out).expect("json list");
    assert_eq!(oldest[0]["id"], dead[1]["id"]);
    let (code, table, _) = jobs_cmd(
        &api,
        Some(ADMIN),
        &["list", "--target", "portal:national", "--limit", "2"],
    );
    assert_eq!(code, 0);
    assert!(
        table.starts_with("ID ") && table.contains("2 jobs"),
        "{table}"
    );

    let id = dead[0]["id"].as_str().expect("id");
    let (code, shown, _) = jobs_cmd(&api, Some(ADMIN), &["show", id]);
    assert_eq!(code, 0);
    assert!(
        shown.contains("permanent_error") && !shown.contains("001190012345"),
        "{shown}"
    );

    let (code, _, err) = jobs_cmd(&api, Some(ADMIN), &["replay"]);
    assert_ne!(code, 0, "replay without --yes off a terminal refuses");
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = jobs_cmd(&api, Some(ADMIN), &["replay", "--yes", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(&out).expect("json summary");
    assert_eq!(summary["requeued"], 2);
    let (_, out, _) = jobs_cmd(
        &api,
        Some(ADMIN),
        &["list", "--state", "dead", "--output", "json"],
    );
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&out)
            .map(|v| v.len())
            .ok(),
        Some(0)
    );

    let (code, _, err) = jobs_cmd(&api, Some(ADMIN), &["retry", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_ne!(code, 0);
    assert!(err.contains("not_found"), "{err}");

    daemon.sigterm();
    assert!(
        daemon
            .wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success()
    );
}

#[test]
fn the_served_openapi_document_is_the_repository_copy_and_every_operation_is_routed() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut daemon, api, _) = start(dir.path(), &rt);
    let c = Client {
        base: format!("http://{api}"),
        rt,
        http: reqwest::Client::new(),
    };
    let (status, _, _) = c.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(status, 401, "no anonymous access");
    let (status, ct, served) = c.call("GET", "/v1/openapi.json", Some(PORTAL), None);
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let copy: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::helpers::repo_file("docs/openapi.json"))
            .expect("docs/openapi.json"),
    )
    .expect("json");
    assert_eq!(served, copy);
    for (method, path) in dvc_connector::api::openapi::OPERATIONS {
        let concrete = path
            .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .replace("{code}", "H56-0001");
        let (status, _, body) = c.call(&method.to_uppercase(), &concrete, None, None);
        assert_eq!(
            status, 401,
            "{method} {path} is documented but answers {status}: {body}"
        );
    }
    daemon.sigterm();
    assert!(
        daemon
            .wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success()
    );
}

/// Runs the binary to completion: exit code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(crate::helpers::binary());
    cmd.args(args);
    outcome(cmd)
}

/// Runs `cmd` to completion: exit code, stdout, stderr.
fn outcome(mut cmd: std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn after_a_kill_the_offline_tools_say_to_start_the_daemon_and_read_the_store_after_a_clean_stop() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut daemon, _, _) = start(dir.path(), &rt);
    daemon.sigkill();
    let store = dir.path().join("store");
    let store_arg = store.to_str().expect("path");
    for args in [
        vec!["status", "--store", store_arg],
        vec!["jobs", "list", "--store", store_arg],
    ] {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(
            err.contains("was not closed cleanly") && err.contains("Start the daemon"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("repair aborted"), "no engine jargon: {err}");
    }
    // Started once (it recovers the store) and stopped cleanly, the store reads offline again.
    let config = dir.path().join("connector.toml");
    let mut again = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    again.listen_addr("api_addr");
    again.sigterm();
    let status = again.wait_exit(Duration::from_secs(10)).expect("exits");
    again.pump();
    assert!(status.success(), "{status:?}: {:#?}", again.err_lines);
    let (code, out, err) = run(&["status", "--store", store_arg, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "nothing left unreplayed: {err}");
    let view: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(view["lanes"]["portal:national"]["dead"], 2);
}

#[test]
fn with_the_daemon_stopped_jobs_and_status_read_the_store_directly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(prepare(&store));
    let store_arg = store.to_str().expect("path");
    let (code, out, err) = run(&[
        "jobs", "list", "--store", store_arg, "--state", "dead", "--output", "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let dead: Vec<Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(dead.len(), 2);
    assert!(!out.contains("001190012345"), "masked offline too");
    // Writing commands do not offer the read-only way in at all.
    let (code, _, err) = run(&[
        "jobs",
        "retry",
        "--store",
        store_arg,
        dead[0]["id"].as_str().expect("id"),
    ]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("unexpected argument '--store'"), "{err}");
    let (code, out, err) = run(&["status", "--store", store_arg, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let view: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(view["lanes"]["portal:national"]["dead"], 2);
    assert_eq!(view["lanes"]["portal:national"]["ready"], 2);
}

#[test]
fn a_store_of_the_previous_format_is_upgraded_by_the_daemon_which_warns_to_keep_a_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).expect("mkdir");
    // Made by the previous build and copied as a kill left it: its last batches only in its own log.
    let fixture = crate::helpers::repo_file("fixtures/store-format-4/unclean");
    for entry in std::fs::read_dir(&fixture).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), store.join(entry.file_name())).expect("copy");
    }
    let store_arg = store.to_str().expect("path");
    let (code, _, err) = run(&["jobs", "list", "--store", store_arg]);
    assert_ne!(code, 0);
    assert!(
        err.contains("earlier version") && err.contains("start the daemon once"),
        "{err}"
    );

    let config = write_config(dir.path(), "redb", &store, "");
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    let warning = daemon
        .wait_for("upgrading the queue store", true, Duration::from_secs(20))
        .or_else(|| daemon.wait_for("upgrading the queue store", false, Duration::ZERO))
        .expect("the upgrade is announced");
    assert!(warning.contains("keep a copy"), "{warning}");
    assert!(
        warning.contains("WARN") || warning.contains("warn"),
        "{warning}"
    );
    daemon.listen_addr("api_addr");
    daemon.sigterm();
    assert!(
        daemon
            .wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success()
    );
    assert!(!store.join("queue.wal").exists(), "the old log is gone");
    let (code, out, err) = run(&["jobs", "list", "--store", store_arg, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let jobs: Vec<Value> = serde_json::from_str(&out).expect("json");
    // Seven jobs were waiting, three of them only in the log; the one done in 1970 may already have
    // been purged by the daemon's retention.
    let ready = jobs.iter().filter(|j| j["state"] == "ready").count();
    assert_eq!(
        ready, 7,
        "every waiting job, the three only the log held included"
    );
}
