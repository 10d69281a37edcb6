//! The portal client against the simulator over loopback: sessions, lookups, create/update recovery,
//! steps in order and never before their dossier, batches of at most ten, and every fault class.

use std::time::Duration;

use dvc_portal::client::{PortalClient, PortalConfig, StepsOutcome, SyncOutcome};
use dvc_portal::simulator::{self, Simulator, SimulatorConfig};
use dvc_portal::wire::{DossierRecord, Progress};
use dvc_upstream::ErrorClass;
use dvc_upstream::sim::{FaultPlan, Running};

struct Setup {
    sim: std::sync::Arc<Simulator>,
    running: Running,
}

/// Every test ends by requiring that the client broke no rule of the contract: the simulator judged
/// each request as a strict upstream would. A test that plants a violation clears the ledger after
/// reading it back.
impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(self.sim.violations(), vec![], "requests broke the contract");
        }
    }
}

async fn setup(faults: FaultPlan) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (running, sim) = simulator::start(
        listener,
        SimulatorConfig {
            faults,
            ..SimulatorConfig::default()
        },
    )
    .expect("start");
    Setup { sim, running }
}

fn client(s: &Setup, password: &str) -> PortalClient {
    let mut config = PortalConfig::new(
        "national",
        s.running.base_url(),
        "dvc-dev",
        password,
        "000.00.00.H56",
    );
    config.routing_code = "DVCQG".into();
    config.http.timeout = Duration::from_millis(800);
    PortalClient::new(config).expect("client")
}

fn dossier(code: &str, status: &str) -> DossierRecord {
    DossierRecord {
        ma_ho_so: code.into(),
        ma_tthc: "1.001776".into(),
        ten_tthc: "Đăng ký thành lập hộ kinh doanh".into(),
        chu_ho_so: "Trần Thị Ngọc Ánh".into(),
        loai_doi_tuong: "1".into(),
        trang_thai_ho_so: status.into(),
        ..DossierRecord::default()
    }
}

fn step(code: &str, n: u32) -> Progress {
    Progress {
        ma_ho_so: code.into(),
        nguoi_xu_ly: "Lê Văn Bình".into(),
        thoi_diem_xu_ly: format!("202411270930{n:02}"),
        noi_dung_xu_ly: format!("Bước {n}"),
        trang_thai: "4".into(),
        ..Progress::default()
    }
}

#[tokio::test]
async fn a_dossier_is_created_then_updated_and_a_wrong_guess_recovers() {
    let s = setup(FaultPlan::default()).await;
    let c = client(&s, "dev-password");
    assert!(!c.dossier_exists("D-1").await.expect("lookup"));
    assert_eq!(
        c.sync_dossier(&dossier("D-1", "2"), false).await,
        Ok(SyncOutcome::Created)
    );
    assert!(c.dossier_exists("D-1").await.expect("lookup"));
    // A retried create (the first answer was lost) becomes an update instead of failing.
    assert_eq!(
        c.sync_dossier(&dossier("D-1", "4"), false).await,
        Ok(SyncOutcome::Updated)
    );
    // An update of a dossier the portal lost becomes a create.
    assert_eq!(
        c.sync_dossier(&dossier("D-2", "2"), true).await,
        Ok(SyncOutcome::Created)
    );
    assert_eq!(
        s.sim.dossier("D-1").map(|d| d.trang_thai_ho_so),
        Some("4".into())
    );
    let syncs: Vec<(bool, String)> = s
        .sim
        .ledger
        .snapshot()
        .into_iter()
        .filter(|e| e.service == "DongBoHoSoMC")
        .map(|e| (e.is_updating, e.outcome))
        .collect();
    assert_eq!(
        syncs,
        [
            (false, "ok".into()),
            (false, "error_code:3".into()),
            (true, "ok".into()),
            (true, "error_code:4".into()),
            (false, "ok".into()),
        ]
    );
    assert!(
        s.sim
            .ledger
            .snapshot()
            .iter()
            .all(|e| e.routing_code == "DVCQG"),
        "dstcode on every call"
    );
}

#[tokio::test]
async fn steps_arrive_in_order_and_never_before_their_dossier() {
    let s = setup(FaultPlan::default()).await;
    let c = client(&s, "dev-password");
    let early = c.push_steps(&[step("D-9", 1)]).await.expect("answered");
    assert_eq!(early, StepsOutcome::DossierMissing, "no dossier yet");
    c.sync_dossier(&dossier("D-9", "2"), false)
        .await
        .expect("created");
    let steps: Vec<Progress> = (1..=13).map(|n| step("D-9", n)).collect();
    for batch in steps.chunks(10) {
        c.push_steps(batch).await.expect("pushed");
    }
    let stored: Vec<String> = s
        .sim
        .steps()
        .into_iter()
        .map(|s| s.step.noi_dung_xu_ly)
        .collect();
    let expected: Vec<String> = (1..=13).map(|n| format!("Bước {n}")).collect();
    assert_eq!(stored, expected);
    let e = c
        .push_steps(&(1..=11).map(|n| step("D-9", n)).collect::<Vec<_>>())
        .await
        .expect_err("too many");
    assert_eq!(e.code, "too_many_steps");
}

#[tokio::test]
async fn an_expired_session_is_renewed_once_and_a_wrong_password_pauses() {
    let s = setup(FaultPlan::default()).await;
    let c = client(&s, "dev-password");
    c.dossier_exists("X").await.expect("lookup");
    s.sim.expire_sessions();
    c.dossier_exists("X").await.expect("lookup after re-login");
    let logins = s
        .sim
        .ledger
        .snapshot()
        .iter()
        .filter(|e| e.service == "auth")
        .count();
    assert_eq!(logins, 2);
    let e = client(&s, "wrong")
        .dossier_exists("X")
        .await
        .expect_err("refused");
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Auth, "login_refused")
    );
}

#[tokio::test]
async fn each_injected_fault_is_classified() {
    for (plan, class, code) in [
        (
            FaultPlan {
                http_500: 1.0,
                ..FaultPlan::default()
            },
            ErrorClass::Retryable,
            "http_500",
        ),
        (
            FaultPlan {
                http_429: 1.0,
                ..FaultPlan::default()
            },
            ErrorClass::Retryable,
            "http_429",
        ),
        (
            FaultPlan {
                hang: 1.0,
                hang_ms: 3_000,
                ..FaultPlan::default()
            },
            ErrorClass::Retryable,
            "timeout",
        ),
        (
            FaultPlan {
                malformed: 1.0,
                ..FaultPlan::default()
            },
            ErrorClass::Retryable,
            "json_malformed",
        ),
        (
            FaultPlan {
                protocol_error: 1.0,
                ..FaultPlan::default()
            },
            ErrorClass::Permanent,
            "portal_99",
        ),
        (
            FaultPlan {
                outages: vec![dvc_upstream::sim::Outage {
                    start_ms: 0,
                    end_ms: 600_000,
                }],
                ..FaultPlan::default()
            },
            ErrorClass::Retryable,
            "http_503",
        ),
    ] {
        let s = setup(plan).await;
        let e = client(&s, "dev-password")
            .sync_dossier(&dossier("F-1", "2"), false)
            .await
            .expect_err("fault");
        assert_eq!((e.class, e.code.as_str()), (class, code), "{e:?}");
    }
}

#[tokio::test]
async fn two_targets_share_one_server_but_nothing_else() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let national = Simulator::new(SimulatorConfig::default());
    let provincial = Simulator::new(SimulatorConfig::default());
    let router = axum::Router::new()
        .nest("/provincial", simulator::router(provincial.clone()))
        .merge(simulator::router(national.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let running = dvc_upstream::sim::serve(listener, router).expect("serve");
    let mk = |target: &str, base: String| {
        PortalClient::new(PortalConfig::new(
            target,
            base,
            "dvc-dev",
            "dev-password",
            "000.00.00.H56",
        ))
        .expect("client")
    };
    let n = mk("national", running.base_url());
    let p = mk("provincial", format!("{}/provincial", running.base_url()));
    n.sync_dossier(&dossier("D-1", "2"), false)
        .await
        .expect("national");
    assert!(
        !p.dossier_exists("D-1").await.expect("lookup"),
        "the provincial portal has its own store"
    );
    assert!(national.dossier("D-1").is_some() && provincial.dossier("D-1").is_none());
}

/// The ledger names the dossiers of every call, from its typed items when they read, and item by item
/// (`""` for one without `MaHoSo`) when they do not, so a refused call is still traceable.
#[tokio::test]
async fn the_ledger_names_a_calls_dossiers_whether_or_not_its_data_reads() {
    let s = setup(FaultPlan::default()).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", s.running.base_url());
    let login: serde_json::Value = http
        .post(url("/auth"))
        .json(&serde_json::json!({"username": "dvc-dev", "password": "dev-password"}))
        .send()
        .await
        .expect("auth")
        .json()
        .await
        .expect("auth body");
    let session = login["session"].as_str().expect("session").to_owned();
    let calls = [
        serde_json::json!({"session": session, "madonvi": "X", "service": "CapNhatTienDoHoSoMC",
            "data": [{"MaHoSo": "A"}, {"MaHoSo": "B"}]}),
        serde_json::json!({"session": session, "madonvi": "X", "service": "CapNhatTienDoHoSoMC",
            "data": [{"MaHoSo": "C"}, {"NoiDungXuLy": "no code"}, 5]}),
        serde_json::json!({"session": "expired", "madonvi": "X", "service": "DongBoHoSoMC",
            "data": [{"MaHoSo": "D", "MaTTHC": "1"}]}),
        serde_json::json!({"session": session, "madonvi": "X", "service": "TraCuuHoSo",
            "mahoso": "E"}),
        serde_json::json!({"session": session, "madonvi": "X", "service": "CapNhatTienDoHoSoMC",
            "data": {"MaHoSo": "F"}}),
        serde_json::json!({"session": session, "madonvi": "X", "service": "KhongCo",
            "data": [{"MaHoSo": "G"}]}),
    ];
    let mut codes = Vec::new();
    for call in &calls {
        let answer: serde_json::Value = http
            .post(url("/integration"))
            .json(call)
            .send()
            .await
            .expect("call")
            .json()
            .await
            .expect("answer");
        codes.push(answer["error_code"].as_i64().expect("error_code"));
    }
    // Incomplete steps and records break the contract's rules: refused with 7 before anything else.
    assert_eq!(codes, [7, 7, 7, 0, 7, 8]);
    let named: Vec<(String, Vec<String>)> = s
        .sim
        .ledger
        .snapshot()
        .into_iter()
        .filter(|e| e.service != "auth")
        .map(|e| (e.outcome, e.dossiers))
        .collect();
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        named,
        [
            ("error_code:7".to_owned(), owned(&["A", "B"])),
            ("error_code:7".to_owned(), owned(&["C", "", ""])),
            ("error_code:7".to_owned(), owned(&["D"])),
            ("ok".to_owned(), owned(&["E"])),
            ("error_code:7".to_owned(), owned(&[])),
            ("error_code:8".to_owned(), owned(&["G"])),
        ]
    );
    let violations: Vec<String> = s.sim.violations().iter().map(|v| v.field.clone()).collect();
    assert_eq!(
        violations,
        [
            "data[0].NguoiXuLy",
            "data[0].NguoiXuLy",
            "isUpdating",
            "data"
        ],
        "each refused call names its first broken rule"
    );
    s.sim.ledger.clear();
}

/// A strict portal judges each call by the contract: a planted wrong field is refused with
/// `error_code` 7 naming it, and the ledger records the violation's kind and field.
#[tokio::test]
async fn the_simulator_refuses_a_planted_violation_and_the_ledger_names_it() {
    let s = setup(FaultPlan::default()).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", s.running.base_url());
    let login: serde_json::Value = http
        .post(url("/auth"))
        .json(&serde_json::json!({"username": "dvc-dev", "password": "dev-password"}))
        .send()
        .await
        .expect("auth")
        .json()
        .await
        .expect("json");
    let mut call: serde_json::Value = serde_json::from_str(include_str!(
        "../../../fixtures/portal/cap-nhat-request.json"
    ))
    .expect("fixture");
    call["session"] = login["session"].clone();
    // The dossier must exist for the steps to be applied; the record call comes from its fixture too.
    let mut record: serde_json::Value = serde_json::from_str(include_str!(
        "../../../fixtures/portal/dong-bo-request.json"
    ))
    .expect("fixture");
    record["session"] = login["session"].clone();
    let post = |body: serde_json::Value| {
        let http = http.clone();
        let url = url("/integration");
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .expect("call")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        }
    };
    assert_eq!(post(record).await["error_code"], 0);
    let mut planted = call.clone();
    planted["data"][1]["TrangThai"] = serde_json::json!(4);
    let answer = post(planted).await;
    assert_eq!(answer["error_code"], 7, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("data[1].TrangThai")),
        "{answer}"
    );
    let v = s.sim.violations().pop().expect("violation recorded");
    assert_eq!(
        (v.field.as_str(), v.kind.as_str()),
        ("data[1].TrangThai", "wrong_type")
    );
    assert_eq!(
        s.sim.step_count(),
        0,
        "nothing of a refused call is applied"
    );
    // The hand-written call passes.
    assert_eq!(post(call).await["error_code"], 0);
    assert_eq!(s.sim.step_count(), 2);
    assert_eq!(s.sim.violations().len(), 1);
    s.sim.ledger.clear();
}

/// What the client sends, captured on the wire, is each hand-written fixture field for field.
#[tokio::test]
async fn the_client_sends_what_the_hand_written_fixtures_say() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = |name: &str| -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/portal")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
    };
    let login = fixture("login-answer.json").to_string();
    let capture = dvc_upstream::sim::Capture::start(move |r| match r.path.as_str() {
        "/auth" => (200, login.clone()),
        _ => (200, r#"{"error_code": 0, "result": []}"#.into()),
    })
    .await;
    let mut config = PortalConfig::new(
        "national",
        capture.base_url(),
        "dvc-dev",
        "dev-password",
        "000.00.00.H56",
    );
    config.routing_code = "DVCQG".into();
    let c = PortalClient::new(config).expect("client");
    let code = "000.00.00.H56-241127-0001";
    let record: DossierRecord =
        serde_json::from_value(fixture("dossier-record.json")).expect("record");
    let steps: Vec<Progress> = serde_json::from_value(fixture("progress.json")).expect("steps");
    assert!(!c.dossier_exists(code).await.expect("lookup"));
    c.sync_dossier(&record, false).await.expect("sync");
    c.push_steps(&steps).await.expect("steps");

    let requests = capture.requests();
    let bodies: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("JSON body"))
        .collect();
    let same = |sent: &serde_json::Value, expected: &serde_json::Value, what: &str| {
        let (sent, expected) = (
            sent.as_object().expect("object"),
            expected.as_object().expect("object"),
        );
        for (field, value) in expected {
            assert_eq!(sent.get(field), Some(value), "{what}: {field}");
        }
        for field in sent.keys() {
            assert!(
                expected.contains_key(field),
                "{what}: {field} is not in the fixture"
            );
        }
    };
    assert_eq!(requests[0].path, "/auth");
    same(&bodies[0], &fixture("auth-request.json"), "auth");
    let expected = [
        fixture("tra-cuu-request.json"),
        fixture("dong-bo-request.json"),
        fixture("cap-nhat-request.json"),
    ];
    for (i, expected) in expected.iter().enumerate() {
        let r = &requests[i + 1];
        assert_eq!(r.path, "/integration");
        assert_eq!(r.header("dstcode"), Some("DVCQG"));
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/json"))
        );
        let what = expected["service"].as_str().unwrap_or("call");
        let mut sent = bodies[i + 1].clone();
        let (Some(sent_items), Some(items)) = (
            sent.get("data").and_then(|d| d.as_array()).cloned(),
            expected.get("data").and_then(|d| d.as_array()),
        ) else {
            same(&sent, expected, what);
            continue;
        };
        assert_eq!(sent_items.len(), items.len(), "{what}: items");
        for (s, e) in sent_items.iter().zip(items) {
            same(s, e, what);
        }
        sent["data"] = expected["data"].clone();
        same(&sent, expected, what);
    }
}

/// A 308 on `/auth` does not re-send the username and password anywhere: the login fails for good with
/// `redirect_refused`.
#[tokio::test]
async fn a_redirected_login_resends_no_password() {
    use axum::response::IntoResponse;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let target = dvc_upstream::sim::Capture::start(|_| (200, "{}".into())).await;
    let to = target.base_url();
    let router = axum::Router::new().fallback(move || {
        let to = to.clone();
        async move {
            (
                axum::http::StatusCode::PERMANENT_REDIRECT,
                [(axum::http::header::LOCATION, format!("{to}/auth"))],
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let portal = dvc_upstream::sim::serve(listener, router).expect("serve");
    let c = PortalClient::new(PortalConfig::new(
        "national",
        portal.base_url(),
        "dvc-dev",
        "dev-password",
        "000.00.00.H56",
    ))
    .expect("client");
    let e = c.dossier_exists("H56-1").await.expect_err("refused");
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "redirect_refused")
    );
    assert!(target.requests().is_empty(), "the password went nowhere");
}
