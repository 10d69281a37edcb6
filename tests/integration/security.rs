//! Security at the edges, against the real daemon: dashboard sessions, cross-origin refusals and the
//! browser-facing headers; failed authentication throttled per client address; a dashboard that needs
//! sign-in to be read when its listener is not on loopback.

use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::{HeaderMap, HeaderValue};

use crate::helpers::{Proc, write_config};
use crate::jobs_api::{ADMIN, prepare, start, start_with_env};

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn origin(ops: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "origin",
        HeaderValue::from_str(&format!("http://{ops}")).expect("origin"),
    );
    h
}

/// Signs in; answers the session cookie (`name=value`) and the whole `Set-Cookie`.
fn sign_in(http: &Client, ops: &str, token: &str) -> (Option<String>, String) {
    let r = http
        .post(format!("http://{ops}/login"))
        .headers(origin(ops))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .expect("login");
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let cookie = set
        .split(';')
        .next()
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    (cookie, set)
}

fn dead_ids(http: &Client, api: &str) -> Vec<String> {
    let v: serde_json::Value = http
        .get(format!("http://{api}/v1/jobs?state=dead"))
        .bearer_auth(ADMIN)
        .send()
        .expect("jobs")
        .json()
        .expect("json");
    v["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn the_dashboard_keeps_a_server_side_session_and_refuses_cross_origin_actions() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut daemon, api, _) = start(dir.path(), &rt);
    let ops = daemon.listen_addr("ops_addr");
    let http = client();

    // Every answer carries the browser-facing protections.
    let page = http.get(format!("http://{ops}/")).send().expect("page");
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(
        page.headers()
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );

    let (cookie, set) = sign_in(&http, &ops, ADMIN);
    let cookie = cookie.expect("a session cookie");
    assert!(cookie.starts_with("dvc_ops_session="), "{set}");
    assert!(!set.contains(ADMIN), "the token is not the cookie: {set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains("Secure"),
        "no Secure on a plain-HTTP listener: {set}"
    );

    // A cross-origin POST with the session cookie changes nothing.
    let dead = dead_ids(&http, &api);
    assert_eq!(dead.len(), 2);
    let mut evil = HeaderMap::new();
    evil.insert("origin", HeaderValue::from_static("https://evil.example"));
    evil.insert("cookie", HeaderValue::from_str(&cookie).expect("cookie"));
    let r = http
        .post(format!("http://{ops}/jobs/{}/discard", dead[0]))
        .headers(evil)
        .send()
        .expect("cross-origin");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(dead_ids(&http, &api).len(), 2, "nothing was discarded");

    // From the dashboard's own origin, with the session, it works.
    let mut own = origin(&ops);
    own.insert("cookie", HeaderValue::from_str(&cookie).expect("cookie"));
    let r = http
        .post(format!("http://{ops}/jobs/{}/retry", dead[0]))
        .headers(own.clone())
        .send()
        .expect("retry");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(dead_ids(&http, &api).len(), 1);

    // Signing out revokes the session on the server: the old cookie is worthless.
    let r = http
        .post(format!("http://{ops}/logout"))
        .headers(own.clone())
        .send()
        .expect("logout");
    assert_eq!(r.status().as_u16(), 303);
    let r = http
        .post(format!(
            "http://{ops}/jobs/{}/retry",
            dead_ids(&http, &api)[0]
        ))
        .headers(own)
        .send()
        .expect("retry after sign-out");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(dead_ids(&http, &api).len(), 1);
    daemon.sigterm();
}

#[test]
fn failed_authentication_is_throttled_per_client_address() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The default limit (the test configuration turns it off for the suites of bad requests).
    let (mut daemon, api, _) = start_with_env(
        dir.path(),
        &rt,
        &[("DVC_CONNECTOR__API__AUTH_FAILURE_LIMIT", "10")],
    );
    let ops = daemon.listen_addr("ops_addr");
    let http = client();
    let statuses: Vec<u16> = (0..12)
        .map(|i| {
            http.get(format!("http://{api}/v1/jobs"))
                .bearer_auth(format!("guess-{i}"))
                .send()
                .expect("guess")
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429; 2], "{statuses:?}");
    // Blocked means blocked: the right token from that address waits too, and is told how long.
    let r = http
        .get(format!("http://{api}/v1/jobs"))
        .bearer_auth(ADMIN)
        .send()
        .expect("valid token");
    assert_eq!(r.status().as_u16(), 429);
    let retry_after: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The dashboard's sign-in shares the count.
    let r = http
        .post(format!("http://{ops}/login"))
        .headers(origin(&ops))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN}"))
        .send()
        .expect("login");
    assert_eq!(r.status().as_u16(), 429);
    daemon.sigterm();
}

#[test]
fn off_loopback_the_dashboard_shows_nothing_before_sign_in() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = dir.path().join("store");
    rt.block_on(prepare(&store));
    let extra = format!(
        "[[api.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
        sha256_hex(ADMIN)
    );
    let config = write_config(dir.path(), "redb", &store, &extra);
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "[ops]\nlisten = \"127.0.0.1:0\"",
        "[ops]\nlisten = \"0.0.0.0:0\"",
    );
    std::fs::write(&config, text).expect("config");
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    let ops = daemon
        .listen_addr("ops_addr")
        .replace("0.0.0.0", "127.0.0.1");
    assert!(
        daemon
            .wait_for("serves plain HTTP", true, Duration::from_secs(5))
            .is_some(),
        "a warning names the exposed listener"
    );
    let http = client();
    let page = http
        .get(format!("http://{ops}/"))
        .send()
        .expect("page")
        .text()
        .expect("text");
    assert!(page.contains("id=\"login\""), "{page}");
    assert!(!page.contains("id=\"lanes\""), "no data before sign-in");
    assert!(!page.contains("portal:national"), "no lane names either");
    let (cookie, _) = sign_in(&http, &ops, ADMIN);
    let page = http
        .get(format!("http://{ops}/"))
        .header("cookie", cookie.expect("session"))
        .send()
        .expect("page")
        .text()
        .expect("text");
    assert!(page.contains("id=\"lanes\""), "signed in, the lanes show");
    daemon.sigterm();
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Record keys are not encrypted at rest, so those that could carry personal data are keyed hashes:
/// neither the portal's Idempotency-Key nor the unkeyed SHA-256 of a citizen's number, name and birth
/// date (which was brute-forced back to the number in a second) is anywhere in the store's files.
#[test]
fn record_keys_that_could_carry_personal_data_are_keyed_hashes() {
    use crate::flows::{Api, PORTAL_TOKEN, World};
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (mut daemon, addr) = w.daemon(&[]);
    let a = Api {
        rt: &w.rt,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    };
    let idempotency_key = "hs-083173316997-visible";
    let (status, _, body) = a.send(
        reqwest::Method::POST,
        "/v1/identity/verifications?wait=10s",
        Some(PORTAL_TOKEN),
        Some(idempotency_key),
        Some(serde_json::json!({
            "citizen_id": "083173316997", "full_name": "Võ Ngọc Trang",
            "date_of_birth": "1973-09-27", "gender": "female",
            "procedure_code": "1.001612", "officer_id": "CB-01", "mode": "full"
        })),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "verified", "{body}");
    daemon.sigterm();
    daemon.wait_exit(Duration::from_secs(20)).expect("exits");
    // What the verdict cache's key was before it was keyed.
    let unkeyed = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            "083173316997",
            &dvc_population::matching::normalize_name("Võ Ngọc Trang"),
            "19730927",
            "1.001612",
            "full",
            "female",
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let files = crate::flows::raw_files(&dir.path().join("store"));
    let contains = |needle: &str| files.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!files.is_empty());
    assert!(
        !contains(idempotency_key),
        "the Idempotency-Key is stored in clear"
    );
    assert!(
        !contains(&unkeyed),
        "the verdict cache is keyed by an unkeyed hash"
    );
}

#[test]
fn the_daemon_refuses_to_run_without_a_key_and_keeps_its_store_to_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let config = write_config(dir.path(), "redb", &store, "");
    // Without `encryption = "off"` said explicitly, no key means no start.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("encryption = \"off\"\n", "")).expect("config");
    let out = std::process::Command::new(crate::helpers::binary())
        .args(["run", "--config", config.to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.encryption_key_files"), "{err}");
    assert!(!store.exists(), "nothing was created");

    // With a generated key: the store directory is 0700, its files 0600, the key among them.
    std::fs::write(
        &config,
        text.replace("encryption = \"off\"", "encryption = \"generated\""),
    )
    .expect("config");
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    daemon.listen_addr("api_addr");
    daemon.sigterm();
    daemon.wait_exit(Duration::from_secs(20)).expect("exits");
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&store), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&store).expect("store").flatten() {
        if entry.file_type().expect("type").is_file() {
            files += 1;
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }
    assert!(files >= 2, "the engine's files and the key");
    assert!(store.join("store.key").is_file());
}

/// Idempotency-Keys belong to their caller: another token's same key is another request.
/// And two requests racing with one key are never both accepted: one commit claims the key, the other
/// answers what it answered (same body) or 409 (another body).
#[test]
fn idempotency_keys_are_per_caller_and_a_race_on_one_key_accepts_one_request() {
    use crate::flows::{OTHER_PORTAL_TOKEN, PORTAL_TOKEN, World};
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (daemon, addr) = w.daemon(&[]);
    let http = reqwest::Client::new();
    let step = |content: &str| {
        serde_json::json!({"status": "4", "occurred_at": "2026-12-01T10:00:00+07:00",
                           "handler": "Lê Văn Bình", "content": content})
    };
    let post = |token: &'static str, key: String, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("http://{addr}/v1/dossiers/IDK-0001/events");
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .expect("post");
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    w.rt.block_on(async {
        // The dossier first, so that its steps are delivered.
        let r = http
            .put(format!("http://{addr}/v1/dossiers/IDK-0001"))
            .bearer_auth(PORTAL_TOKEN)
            .json(
                &serde_json::json!({"procedure_code": "1.001612", "status": "2",
                                      "received_at": "2026-12-01T09:00:00+07:00"}),
            )
            .send()
            .await
            .expect("record");
        assert_eq!(r.status().as_u16(), 202);
        // Per caller.
        let (a, first) = post(PORTAL_TOKEN, "shared-key".into(), step("Bước một")).await;
        let (b, second) = post(OTHER_PORTAL_TOKEN, "shared-key".into(), step("Bước hai")).await;
        assert_eq!((a, b), (202, 202), "{first} {second}");
        assert_ne!(first["event_id"], second["event_id"]);

        // Races: the same key and body twice at once, twenty times.
        for i in 0..20 {
            let key = format!("race-same-{i}");
            let body = step(&format!("Bước đua {i}"));
            let (x, y) = tokio::join!(
                post(PORTAL_TOKEN, key.clone(), body.clone()),
                post(PORTAL_TOKEN, key, body)
            );
            assert_eq!((x.0, y.0), (202, 202));
            assert_eq!(x.1["event_id"], y.1["event_id"], "one step, answered twice");
        }
        // And with another body: one accepted, the other refused.
        for i in 0..20 {
            let key = format!("race-other-{i}");
            let (x, y) = tokio::join!(
                post(PORTAL_TOKEN, key.clone(), step(&format!("Một {i}"))),
                post(PORTAL_TOKEN, key, step(&format!("Hai {i}")))
            );
            let mut statuses = [x.0, y.0];
            statuses.sort_unstable();
            assert_eq!(statuses, [202, 409], "{} {}", x.1, y.1);
        }
    });
    // What the portal received: two steps per caller, one per race.
    let expected = 2 + 20 + 20;
    assert!(
        w.wait_until(Duration::from_secs(20), |w| {
            w.national
                .steps()
                .iter()
                .filter(|s| s.step.ma_ho_so == "IDK-0001")
                .count()
                >= expected
        }),
        "every accepted step arrives"
    );
    let contents: Vec<String> = w
        .national
        .steps()
        .into_iter()
        .filter(|s| s.step.ma_ho_so == "IDK-0001")
        .map(|s| s.step.noi_dung_xu_ly)
        .collect();
    assert_eq!(contents.len(), expected, "{contents:?}");
    for i in 0..20 {
        let raced = format!("Bước đua {i}");
        assert_eq!(
            contents.iter().filter(|c| **c == raced).count(),
            1,
            "{raced}: {contents:?}"
        );
    }
    daemon.sigterm();
}

#[test]
fn api_tokens_come_from_their_own_file_and_change_on_sighup_without_a_restart() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "redb", &dir.path().join("store"), "");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replacen("[api]\n", "[api]\ntokens_file = \"tokens.toml\"\n", 1),
    )
    .expect("config");
    let tokens = dir.path().join("tokens.toml");
    let entry = |name: &str, secret: &str| {
        format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
            sha256_hex(secret)
        )
    };
    std::fs::write(&tokens, entry("first", "first-secret")).expect("tokens");
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    let api = daemon.listen_addr("api_addr");
    let http = client();
    let status = |secret: &str| {
        http.get(format!("http://{api}/v1/jobs"))
            .bearer_auth(secret)
            .send()
            .expect("request")
            .status()
            .as_u16()
    };
    assert_eq!(status("first-secret"), 200);
    assert_eq!(status("second-secret"), 401);

    // The file changes: the new token works after SIGHUP, and the one taken out stops working.
    std::fs::write(&tokens, entry("second", "second-secret")).expect("tokens");
    daemon.signal("HUP");
    daemon
        .wait_for("API tokens reloaded", true, Duration::from_secs(10))
        .expect("the reload is logged");
    assert_eq!(status("second-secret"), 200);
    assert_eq!(status("first-secret"), 401);

    // A file that does not validate changes nothing, and the log says why.
    std::fs::write(&tokens, "[[tokens]]\nname = \"third\"\n").expect("tokens");
    daemon.signal("HUP");
    let line = daemon
        .wait_for("tokens file was not loaded", true, Duration::from_secs(10))
        .expect("the refusal is logged");
    assert!(line.contains("tokens.0.sha256"), "{line}");
    assert_eq!(status("second-secret"), 200);

    daemon.sigterm();
    assert!(
        daemon
            .wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success()
    );
    // check-config names the file's problem with the file and the key.
    let out = std::process::Command::new(crate::helpers::binary())
        .args(["check-config", config.to_str().expect("path")])
        .output()
        .expect("check-config");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.tokens_file") && err.contains("tokens.toml") && err.contains("sha256"),
        "{err}"
    );
}
