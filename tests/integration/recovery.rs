//! Recovery paths as an operator and a strict upstream meet them: a dead shipment retried or replayed
//! creates its order exactly once; a refused officer stalls nobody else; replay obeys its filters and
//! refuses what it does not document; a dossier's jobs are found by its code; jobs held behind a dead
//! letter are visible.

use std::time::Duration;

use dvc_upstream::sim::FaultPlan;
use serde_json::{Value, json};

use super::flows::{ADMIN_TOKEN, Api, Options, PORTAL_TOKEN, World, created_orders};
use super::helpers::get;

fn api<'a>(w: &'a World, addr: &str) -> Api<'a> {
    Api {
        rt: &w.rt,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    }
}

fn shipment(code: &str) -> Value {
    json!({
        "dossier_code": code, "kind": "result_delivery", "description": "Trả kết quả hồ sơ",
        "recipient": {"name": "Võ Ngọc Trang", "phone": "0905123456", "address": "1 Lê Lợi",
                      "province_code": "48", "ward_code": "20197"},
    })
}

/// Polls the shipment until `done` holds for its status (at most 20 s); answers the last status.
fn wait_status(a: &Api<'_>, id: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) = a.send(
            reqwest::Method::GET,
            &format!("/v1/shipments/{id}"),
            Some(PORTAL_TOKEN),
            None,
            None,
        );
        let status = body["status"].as_str().unwrap_or("").to_owned();
        if done(&status) || std::time::Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dead_jobs(a: &Api<'_>, query: &str) -> Vec<Value> {
    let (status, _, body) = a.send(
        reqwest::Method::GET,
        &format!("/v1/jobs?state=dead&{query}"),
        Some(ADMIN_TOKEN),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["jobs"].as_array().cloned().unwrap_or_default()
}

/// VNPost refuses every create for now (a business error on a 200, permanent).
fn vnpost_refuses(w: &World, refuse: bool) {
    w.postal.faults.set(FaultPlan {
        protocol_error: if refuse { 1.0 } else { 0.0 },
        ..FaultPlan::default()
    });
}

#[test]
fn a_dead_shipment_retried_or_replayed_creates_its_order_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (_daemon, addr) = w.daemon(&[]);
    let a = api(&w, &addr);
    vnpost_refuses(&w, true);
    let mut ids = Vec::new();
    for code in ["REC-0001", "REC-0002"] {
        let (status, _, body) = a.send(
            reqwest::Method::POST,
            "/v1/shipments",
            Some(PORTAL_TOKEN),
            None,
            Some(shipment(code)),
        );
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().expect("id").to_owned();
        assert_eq!(wait_status(&a, &id, |s| s == "failed"), "failed");
        ids.push(id);
    }
    assert!(created_orders(&w.postal).is_empty());
    vnpost_refuses(&w, false);

    // One by hand: the operator retries the dead create.
    let dead = dead_jobs(&a, "dossier_code=REC-0001");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["kind"], "postal.create");
    let (status, _, body) = a.send(
        reqwest::Method::POST,
        &format!("/v1/jobs/{}/retry", dead[0]["id"].as_str().expect("id")),
        Some(ADMIN_TOKEN),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    // The other by a replay of the lane's dead creates.
    let (status, _, body) = a.send(
        reqwest::Method::POST,
        "/v1/jobs/replay?kind=postal.create",
        Some(ADMIN_TOKEN),
        None,
        None,
    );
    assert_eq!(
        (status, body["requeued"].as_u64()),
        (200, Some(1)),
        "{body}"
    );

    for (id, order) in ids.iter().zip(["REC-0001", "REC-0002"]) {
        let status = wait_status(&a, id, |s| !matches!(s, "failed" | "queued"));
        assert!(
            matches!(
                status.as_str(),
                "submitted" | "accepted" | "in_transit" | "out_for_delivery" | "delivered"
            ),
            "{order}: {status}"
        );
        assert_eq!(created_orders(&w.postal).get(order), Some(&1), "{order}");
    }
    assert!(
        w.wait_until(Duration::from_secs(20), |w| {
            ["REC-0001", "REC-0002"].iter().all(|o| {
                w.postal
                    .ledger
                    .snapshot()
                    .iter()
                    .any(|e| e.operation == "tracking" && e.outcome.starts_with("events:"))
                    && created_orders(&w.postal).get(*o) == Some(&1)
            })
        }),
        "the orders exist once each and the feed is read"
    );
    let delivered = wait_status(&a, &ids[0], |s| s == "delivered");
    assert_eq!(
        delivered, "delivered",
        "the recovered shipment is delivered"
    );
    assert_eq!(
        created_orders(&w.postal).len(),
        2,
        "no second order anywhere"
    );
}

#[test]
fn a_refused_officer_fails_alone_while_other_officers_lookups_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start_opts(
        dir.path(),
        Options {
            officers: vec![
                ("CB-01", "canbo01", "right-pass"),
                ("CB-02", "canbo02", "stale-pass"),
            ],
            gateway_officers: vec![
                ("canbo01", "right-pass"),
                ("canbo02", "new-pass"),
                ("canbo09", "nine-pass"),
            ],
            ..Options::default()
        },
    );
    // More officers come from their own file, empty for now (mode 0600: it holds passwords).
    let officers_file = dir.path().join("officers.toml");
    std::fs::write(&officers_file, "").expect("officers file");
    std::fs::set_permissions(
        &officers_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let text = std::fs::read_to_string(&w.config).expect("config");
    std::fs::write(
        &w.config,
        text.replacen(
            "[upstreams.population]\n",
            "[upstreams.population]\nofficers_file = \"officers.toml\"\n",
            1,
        ),
    )
    .expect("config");
    let (mut daemon, addr) = w.daemon(&[]);
    let ops = daemon.listen_addr("ops_addr");
    let a = api(&w, &addr);
    let verify_citizen = |officer: &str, citizen: Value| {
        let mut request = json!({"procedure_code": "1.001612", "officer_id": officer});
        for (k, v) in citizen.as_object().expect("citizen") {
            request[k] = v.clone();
        }
        let (status, _, body) = a.send(
            reqwest::Method::POST,
            "/v1/identity/verifications?wait=10s",
            Some(PORTAL_TOKEN),
            None,
            Some(request),
        );
        assert!(matches!(status, 200 | 202), "{status}: {body}");
        body["id"].as_str().expect("id").to_owned()
    };
    let verify = |officer: &str| {
        verify_citizen(
            officer,
            json!({
                "citizen_id": "083173316997", "full_name": "Võ Ngọc Trang",
                "date_of_birth": "1973-09-27", "gender": "female",
            }),
        )
    };
    let outcome = |id: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, _, body) = a.send(
                reqwest::Method::GET,
                &format!("/v1/identity/verifications/{id}"),
                Some(PORTAL_TOKEN),
                None,
                None,
            );
            if body["status"] != "pending" || std::time::Instant::now() > deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let refused = outcome(&verify("CB-02"));
    assert_eq!(refused["status"], "failed", "{refused}");
    let unknown = outcome(&verify("CB-09"));
    assert_eq!(unknown["status"], "failed", "{unknown}");
    // The lane was not paused: the next officer's lookup is answered.
    let verified = outcome(&verify("CB-01"));
    assert_eq!(verified["status"], "verified", "{verified}");

    let dead = dead_jobs(&a, "kind=identity.verify");
    let codes: Vec<(&str, &str)> = dead
        .iter()
        .map(|j| {
            (
                j["last_error"]["code"].as_str().unwrap_or(""),
                j["last_error"]["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(codes.len(), 2, "{dead:?}");
    assert!(
        codes
            .iter()
            .any(|(c, m)| *c == "officer_refused" && m.contains("CB-02")),
        "{codes:?}"
    );
    assert!(
        codes
            .iter()
            .any(|(c, m)| *c == "officer_unknown" && m.contains("CB-09")),
        "{codes:?}"
    );
    for (_, message) in &codes {
        assert!(!message.contains("083173316997"), "{message}");
    }
    // The unknown officer's lookup never reached the gateway; the refused one did.
    let calls: Vec<String> = w
        .population
        .ledger
        .snapshot()
        .into_iter()
        .filter(|e| e.operation != "token")
        .map(|e| format!("{} {}", e.officer, e.outcome))
        .collect();
    assert!(calls.iter().all(|c| !c.starts_with("CB-09")), "{calls:?}");
    assert!(
        calls.contains(&"CB-02 officer_refused".to_owned()),
        "{calls:?}"
    );
    assert!(calls.contains(&"CB-01 found".to_owned()), "{calls:?}");
    let (_, _, readyz) = get(&format!("http://{ops}/readyz"));
    let readyz: Value = serde_json::from_str(&readyz).expect("json");
    assert_eq!(
        readyz["lanes"]["population"]["state"], "running",
        "{readyz}"
    );

    // The province adds CB-09 to the officers file: after SIGHUP its lookups go through, no restart.
    std::fs::write(
        &officers_file,
        "[CB-09]\nkey = \"canbo09\"\npassword = \"nine-pass\"\n",
    )
    .expect("officers file");
    daemon.signal("HUP");
    daemon
        .wait_for(
            "officers' credentials reloaded",
            true,
            Duration::from_secs(10),
        )
        .expect("the officers' reload is logged");
    // Another citizen, so that the answer cannot come from the cache of CB-01's lookup.
    let other_citizen = json!({
        "citizen_id": "075160213922", "full_name": "Hoàng Thị Thu Quỳnh",
        "date_of_birth": "1960-01-19", "gender": "female",
    });
    let verified = outcome(&verify_citizen("CB-09", other_citizen.clone()));
    assert_eq!(verified["status"], "verified", "{verified}");
    let calls_by = |officer: &str| {
        w.population
            .ledger
            .snapshot()
            .into_iter()
            .filter(|e| e.officer == officer && e.outcome == "found")
            .count()
    };
    assert_eq!(
        calls_by("CB-09"),
        1,
        "answered by the gateway with CB-09's credentials"
    );
    // A file every user can read is refused, and the credentials in force stay.
    std::fs::set_permissions(
        &officers_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    daemon.signal("HUP");
    let refusal = daemon
        .wait_for(
            "officers file was not loaded",
            true,
            Duration::from_secs(10),
        )
        .expect("the refusal is logged");
    assert!(refusal.contains("chmod 600"), "{refusal}");
    // Another citizen again: the gateway is asked, with the credentials still in force.
    let third_citizen = json!({
        "citizen_id": "087197980182", "full_name": "Tạ Thị Ngọc My",
        "date_of_birth": "1997-09-29", "gender": "female",
    });
    let verified = outcome(&verify_citizen("CB-09", third_citizen));
    assert_eq!(verified["status"], "verified", "{verified}");
    assert_eq!(calls_by("CB-09"), 2);
}

#[test]
fn replay_takes_only_its_documented_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (_daemon, addr) = w.daemon(&[]);
    let a = api(&w, &addr);
    vnpost_refuses(&w, true);
    let (status, _, body) = a.send(
        reqwest::Method::POST,
        "/v1/shipments",
        Some(PORTAL_TOKEN),
        None,
        Some(shipment("RPL-0001")),
    );
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(wait_status(&a, &id, |s| s == "failed"), "failed");

    let raw = |path: &str, key: Option<&[u8]>, body: Option<Vec<u8>>| {
        w.rt.block_on(async {
            let mut req = reqwest::Client::new()
                .post(format!("http://{addr}{path}"))
                .bearer_auth(ADMIN_TOKEN);
            if let Some(k) = key {
                req = req.header(
                    "Idempotency-Key",
                    reqwest::header::HeaderValue::from_bytes(k).expect("header"),
                );
            }
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b);
            }
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    let field = |v: &Value| v["errors"][0]["field"].as_str().unwrap_or("").to_owned();

    // Filters in a body are refused, not ignored (which would requeue every dead job).
    let (status, body) = raw(
        "/v1/jobs/replay",
        None,
        Some(br#"{"kind": "portal.step"}"#.to_vec()),
    );
    assert_eq!((status, field(&body).as_str()), (400, "body"), "{body}");
    let (status, body) = raw("/v1/jobs/replay?kind=postal.create&lane=postal", None, None);
    assert_eq!((status, field(&body).as_str()), (400, "lane"), "{body}");
    let (status, body) = raw("/v1/jobs/replay", None, None);
    assert_eq!((status, field(&body).as_str()), (400, "all"), "{body}");
    let (status, body) = raw("/v1/jobs/replay?kind=", None, None);
    assert_eq!((status, field(&body).as_str()), (400, "kind"), "{body}");
    let (status, body) = raw("/v1/jobs/replay?all=true", Some("khóa".as_bytes()), None);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_idempotency_key")),
        "{body}"
    );
    let (status, _) = raw("/v1/jobs/replay?all=true", None, Some(vec![b' '; 2 << 20]));
    assert_eq!(status, 413);
    assert_eq!(
        dead_jobs(&a, "kind=postal.create").len(),
        1,
        "nothing requeued"
    );

    // Documented: a filter, or all=true; a repeated key answers the first count.
    vnpost_refuses(&w, false);
    let (status, body) = raw("/v1/jobs/replay?all=true", Some(b"replay-1"), None);
    assert_eq!(
        (status, body["requeued"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let (status, again) = raw("/v1/jobs/replay?all=true", Some(b"replay-1"), None);
    assert_eq!((status, &again), (200, &body));
    wait_status(&a, &id, |s| s != "failed");
    assert_eq!(created_orders(&w.postal).get("RPL-0001"), Some(&1));
}

#[test]
fn a_dossiers_jobs_are_found_by_its_code_and_jobs_behind_a_dead_head_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (mut daemon, addr) = w.daemon(&[]);
    let ops = daemon.listen_addr("ops_addr");
    let a = api(&w, &addr);
    let code = "JOB-0001";
    // The national portal refuses the record for good; its steps wait behind it.
    w.national.faults.set(FaultPlan {
        protocol_error: 1.0,
        ..FaultPlan::default()
    });
    let send = |method: reqwest::Method, path: &str, body: Value| {
        let (status, _, answer) = a.send(method, path, Some(PORTAL_TOKEN), None, Some(body));
        assert!(matches!(status, 200 | 202), "{path}: {status} {answer}");
        answer
    };
    send(
        reqwest::Method::POST,
        "/v1/identity/verifications?wait=5s",
        json!({"citizen_id": "083173316997", "full_name": "Võ Ngọc Trang",
               "date_of_birth": "1973-09-27", "procedure_code": "1.001612",
               "officer_id": "CB-01", "dossier_code": code}),
    );
    send(
        reqwest::Method::PUT,
        &format!("/v1/dossiers/{code}"),
        json!({"procedure_code": "1.001612", "status": "2", "received_at": "2026-12-01T09:00:00+07:00"}),
    );
    for (i, content) in ["Tiếp nhận", "Thẩm định", "Phê duyệt"].iter().enumerate() {
        send(
            reqwest::Method::POST,
            &format!("/v1/dossiers/{code}/events"),
            json!({"status": "4", "occurred_at": format!("2026-12-01T1{i}:00:00+07:00"),
                   "handler": "Lê Văn Bình", "content": content}),
        );
    }
    send(reqwest::Method::POST, "/v1/shipments", shipment(code));
    let mut pickup = shipment(code);
    pickup["kind"] = json!("dossier_pickup");
    send(reqwest::Method::POST, "/v1/shipments", pickup);

    let (status, _, body) = a.send(
        reqwest::Method::GET,
        &format!("/v1/jobs?dossier_code={code}&limit=500"),
        Some(ADMIN_TOKEN),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let mut found: Vec<(String, String)> = body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            (
                j["kind"].as_str().unwrap_or("").to_owned(),
                j["dossier_code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    found.sort();
    let kinds: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains(&"identity.verify"), "{found:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "postal.create").count(),
        2,
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(k, key)| k == "postal.create" && key == "JOB-0001-TG1"),
        "{found:?}"
    );
    assert!(kinds.contains(&"portal.record"), "{found:?}");
    assert!(kinds.contains(&"portal.step"), "{found:?}");

    // The national record is dead; its steps wait behind it and are counted as blocked.
    let blocked = |text: &str| -> Option<(f64, f64)> {
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains("lane=\"portal:national\""))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        Some((
            value("dvc_connector_queue_blocked_keys")?,
            value("dvc_connector_queue_blocked_jobs")?,
        ))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let (_, _, metrics) = get(&format!("http://{ops}/metrics"));
        last = blocked(&metrics);
        if last.is_some_and(|(keys, jobs)| keys == 1.0 && jobs >= 1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (keys, jobs) = last.expect("blocked gauges exported");
    assert_eq!(keys, 1.0);
    assert!(jobs >= 1.0, "{jobs}");
    let out = std::process::Command::new(super::helpers::binary())
        .args([
            "status",
            "--ops",
            &format!("http://{ops}"),
            "--output",
            "json",
        ])
        .output()
        .expect("status");
    let view: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        view["lanes"]["portal:national"]["blocked_keys"], 1,
        "{view}"
    );
    let (_, _, page) = get(&format!("http://{ops}/"));
    assert!(
        page.contains("Blocked by dead"),
        "the dashboard has the column"
    );
    assert!(page.contains("data-blocked-keys=\"1\""), "and the count");
}

#[test]
fn addresses_follow_the_2025_catalogue_and_a_strict_vnpost_takes_the_orders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (_daemon, addr) = w.daemon(&[]);
    let a = api(&w, &addr);
    let post = |body: Value| {
        a.send(
            reqwest::Method::POST,
            "/v1/shipments",
            Some(PORTAL_TOKEN),
            None,
            Some(body),
        )
    };
    // Quảng Nam's pre-2025 code (49) is mapped to Đà Nẵng (48), which carries its territory now; the
    // strict simulator refuses any code but a current one, and any empty district.
    let mut legacy = shipment("ADR-0001");
    legacy["recipient"]["province_code"] = json!("49");
    let (status, _, body) = post(legacy);
    assert_eq!(status, 202, "{body}");
    assert!(
        w.wait_until(Duration::from_secs(10), |w| {
            created_orders(&w.postal).get("ADR-0001") == Some(&1)
        }),
        "the order reached VNPost: {:?}",
        w.violations()
    );
    for (ward, code) in [
        ("20194", "unknown_ward"),
        ("00070", "ward_outside_province"),
    ] {
        let mut b = shipment("ADR-0002");
        b["recipient"]["ward_code"] = json!(ward);
        let (status, _, body) = post(b);
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["errors"][0]["field"], "recipient.ward_code", "{body}");
        assert_eq!(body["errors"][0]["code"], code, "{body}");
    }
    let mut b = shipment("ADR-0003");
    b["description"] = json!("");
    let (status, _, body) = post(b);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "description", "{body}");
}

#[test]
fn a_failed_result_delivery_is_replaced_by_a_corrected_request_with_the_same_order_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (_daemon, addr) = w.daemon(&[]);
    let a = api(&w, &addr);
    vnpost_refuses(&w, true);
    let post = |body: Value| {
        a.send(
            reqwest::Method::POST,
            "/v1/shipments",
            Some(PORTAL_TOKEN),
            None,
            Some(body),
        )
    };
    let (status, _, first) = post(shipment("FIX-0001"));
    assert_eq!(status, 202, "{first}");
    let first_id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(wait_status(&a, &first_id, |s| s == "failed"), "failed");
    vnpost_refuses(&w, false);

    // The portal corrects the recipient and asks again: a new shipment, the same order number.
    let mut corrected = shipment("FIX-0001");
    corrected["recipient"]["address"] = json!("12 Lê Lợi, phường Liên Chiểu");
    let (status, _, second) = post(corrected.clone());
    assert_eq!(status, 202, "{second}");
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["order_number"], "FIX-0001");
    let second_id = second["id"].as_str().expect("id").to_owned();
    let moved = wait_status(&a, &second_id, |s| !matches!(s, "queued"));
    assert_ne!(
        moved, "queued",
        "the replacement is not held behind the dead create"
    );
    // Asked again, the natural key answers the replacement, not a third shipment.
    let (status, _, again) = post(corrected);
    assert_eq!((status, &again["id"]), (200, &second["id"]));

    // The replaced shipment's dead create, retried, sends nothing: the order exists once.
    let dead = dead_jobs(&a, "dossier_code=FIX-0001");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (status, _, _) = a.send(
        reqwest::Method::POST,
        &format!("/v1/jobs/{}/retry", dead[0]["id"].as_str().expect("id")),
        Some(ADMIN_TOKEN),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert!(
        w.wait_until(Duration::from_secs(10), |_| dead_jobs(
            &a,
            "dossier_code=FIX-0001"
        )
        .is_empty()),
        "the retried job finished"
    );
    let creates: Vec<String> = w
        .postal
        .ledger
        .snapshot()
        .into_iter()
        .filter(|e| e.operation == "create" && e.order_number == "FIX-0001")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        creates.iter().filter(|o| *o == "created").count(),
        1,
        "{creates:?}"
    );
    assert!(!creates.iter().any(|o| o == "duplicate"), "{creates:?}");
}
