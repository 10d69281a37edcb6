//! The client against the simulator, over loopback HTTP: every operation and every error class of the
//! spec, asserted through what the simulator's ledger received.

use std::time::Duration;

use dvc_population::cccd::CitizenId;
use dvc_population::client::{
    ExistenceQuery, Officer, PopulationClient, PopulationConfig, RecordQuery,
};
use dvc_population::matching::{
    BirthDate, FieldVerdict, compare_birth_dates, compare_names, compare_sex,
};
use dvc_population::simulator::{self, SimCitizen, Simulator, SimulatorConfig};
use dvc_upstream::ErrorClass;
use dvc_upstream::sim::{FaultPlan, Outage, Running};

struct Setup {
    sim: std::sync::Arc<Simulator>,
    running: Running,
    citizens: Vec<SimCitizen>,
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

async fn setup(faults: FaultPlan, token_lifetime: Duration) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = SimulatorConfig::with_fixture().expect("fixture");
    config.faults = faults;
    config.token_lifetime = token_lifetime;
    let citizens = config.citizens.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (running, sim) = simulator::start(listener, config).expect("start");
    Setup {
        sim,
        running,
        citizens,
    }
}

fn client(s: &Setup, secret: &str) -> PopulationClient {
    let base = s.running.base_url();
    let mut config = PopulationConfig::new(
        format!("{base}/dancu/soap"),
        format!("{base}/token"),
        "dvc-dev",
        secret,
    );
    config.http.timeout = Duration::from_millis(800);
    config.lgsp_access_token = Some("static-lgsp".into());
    PopulationClient::new(config).expect("client")
}

fn officer() -> Officer {
    Officer {
        code: "CB-0042".into(),
        auth_hash: Some(("canbo42".into(), "pass".into())),
    }
}

fn exists_query(c: &SimCitizen, name: &str) -> ExistenceQuery {
    ExistenceQuery {
        service_code: "033".into(),
        officer: officer(),
        citizen_id: CitizenId::parse(&c.citizen_id).expect("fixture id is valid"),
        legacy_id: String::new(),
        full_name: name.into(),
    }
}

fn record_query(c: &SimCitizen) -> RecordQuery {
    RecordQuery {
        procedure_code: "1.001776".into(),
        integration_code: "DVC-H56".into(),
        agency_code: "000.00.00.H56".into(),
        officer: officer(),
        citizen_id: CitizenId::parse(&c.citizen_id).expect("valid"),
        legacy_id: c.legacy_id.clone(),
        full_name: c.full_name(),
        birth_date: BirthDate::parse_iso(&c.date_of_birth).expect("date"),
    }
}

#[tokio::test]
async fn every_fixture_citizen_is_structurally_valid_and_the_registry_is_large_enough() {
    let s = setup(FaultPlan::default(), Duration::from_secs(60)).await;
    assert!(s.citizens.len() >= 200);
    assert!(
        s.citizens.iter().any(|c| c.date_of_birth.len() == 4),
        "some year-only dates"
    );
    assert!(s.citizens.iter().any(|c| c.whole_name_in_ten));
    for c in &s.citizens {
        let dob = BirthDate::parse_iso(&c.date_of_birth).expect("date");
        let sex = if c.sex == "female" {
            dvc_population::cccd::Sex::Female
        } else {
            dvc_population::cccd::Sex::Male
        };
        CitizenId::parse_for(&c.citizen_id, dob.year(), Some(sex))
            .unwrap_or_else(|e| panic!("{}: {e}", c.citizen_id));
    }
}

#[tokio::test]
async fn an_existence_check_answers_true_for_a_known_citizen_and_false_otherwise() {
    let s = setup(FaultPlan::default(), Duration::from_secs(60)).await;
    let client = client(&s, "dev-secret");
    let known = &s.citizens[0];
    let yes = client
        .check_exists(&exists_query(known, &known.full_name()))
        .await
        .expect("answer");
    assert!(yes.value);
    let wrong_name = client
        .check_exists(&exists_query(known, "Không Có Ai"))
        .await
        .expect("answer");
    assert!(!wrong_name.value);
    let ledger = s.sim.ledger.snapshot();
    let calls: Vec<_> = ledger
        .iter()
        .filter(|e| e.operation == "XacThucThongTinCongDan")
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].request_id, yes.request_id);
    assert_ne!(
        calls[0].request_id, calls[1].request_id,
        "a fresh request id per call"
    );
    assert!(
        calls
            .iter()
            .all(|e| e.auth_hash && e.lgsp_access_token && e.officer == "CB-0042")
    );
    assert_eq!(
        s.sim.tokens_issued(),
        1,
        "the token is cached between calls"
    );
}

#[tokio::test]
async fn a_record_comes_back_and_is_matched_field_by_field() {
    let s = setup(FaultPlan::default(), Duration::from_secs(60)).await;
    let client = client(&s, "dev-secret");
    for c in s.citizens.iter().take(40) {
        let q = record_query(c);
        let answer = client.fetch_records(&q).await.expect("answer");
        assert_eq!(answer.value.len(), 1, "{}", c.citizen_id);
        let record = &answer.value[0];
        assert_eq!(record.so_dinh_danh, c.citizen_id);
        assert_eq!(
            compare_names(&q.full_name, &record.full_name()),
            FieldVerdict::Match,
            "{}",
            c.citizen_id
        );
        assert_eq!(
            compare_birth_dates(q.birth_date, record.birth_date()),
            FieldVerdict::Match
        );
        let sex = CitizenId::parse(&c.citizen_id).expect("valid").sex();
        assert_eq!(compare_sex(Some(sex), record.sex()), FieldVerdict::Match);
    }
    // A name sent without its diacritics is never a full match: only `match_without_diacritics`.
    let accented = s
        .citizens
        .iter()
        .find(|c| dvc_population::matching::strip_diacritics(&c.full_name()) != c.full_name())
        .expect("a citizen whose name has diacritics");
    let mut q = record_query(accented);
    q.full_name = dvc_population::matching::strip_diacritics(&accented.full_name());
    let record = &client.fetch_records(&q).await.expect("answer").value[0];
    assert_eq!(
        compare_names(&q.full_name, &record.full_name()),
        FieldVerdict::MatchWithoutDiacritics
    );
}

#[tokio::test]
async fn an_unknown_citizen_is_a_final_not_found_not_an_error() {
    let s = setup(FaultPlan::default(), Duration::from_secs(60)).await;
    let client = client(&s, "dev-secret");
    let mut ghost = s.citizens[0].clone();
    ghost.citizen_id =
        dvc_population::cccd::compose(1, dvc_population::cccd::Sex::Male, 1990, 424_242)
            .expect("id");
    ghost.date_of_birth = "1990".into();
    let answer = client
        .fetch_records(&record_query(&ghost))
        .await
        .expect("answer");
    assert!(answer.value.is_empty());
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_call_succeeds() {
    let s = setup(FaultPlan::default(), Duration::from_secs(600)).await;
    let client = client(&s, "dev-secret");
    let c = &s.citizens[2];
    client
        .check_exists(&exists_query(c, &c.full_name()))
        .await
        .expect("first");
    s.sim.revoke_tokens();
    let again = client
        .check_exists(&exists_query(c, &c.full_name()))
        .await
        .expect("after refresh");
    assert!(again.value);
    let outcomes: Vec<String> = s
        .sim
        .ledger
        .snapshot()
        .into_iter()
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            "token_issued",
            "found",
            "unauthorized",
            "token_issued",
            "found"
        ]
    );
}

#[tokio::test]
async fn wrong_credentials_are_an_auth_error_that_pauses_instead_of_retrying() {
    let s = setup(FaultPlan::default(), Duration::from_secs(60)).await;
    let client = client(&s, "wrong-secret");
    let c = &s.citizens[0];
    let error = client
        .check_exists(&exists_query(c, &c.full_name()))
        .await
        .expect_err("refused");
    assert_eq!(
        (error.class, error.code.as_str()),
        (ErrorClass::Auth, "token_refused")
    );
}

async fn first_error(plan: FaultPlan) -> dvc_upstream::UpstreamError {
    let s = setup(plan, Duration::from_secs(60)).await;
    let client = client(&s, "dev-secret");
    let c = &s.citizens[0];
    client
        .fetch_records(&record_query(c))
        .await
        .expect_err("fault injected")
}

#[tokio::test]
async fn each_injected_fault_is_classified() {
    let all = |f: fn(&mut FaultPlan)| {
        let mut p = FaultPlan {
            seed: Some(3),
            hang_ms: 3_000,
            retry_after_secs: 7,
            ..FaultPlan::default()
        };
        f(&mut p);
        p
    };
    let e = first_error(all(|p| p.http_500 = 1.0)).await;
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Retryable, "http_500")
    );
    let e = first_error(all(|p| p.http_429 = 1.0)).await;
    assert_eq!(
        (e.class, e.code.as_str(), e.retry_after),
        (
            ErrorClass::Retryable,
            "http_429",
            Some(Duration::from_secs(7))
        )
    );
    let e = first_error(all(|p| p.hang = 1.0)).await;
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Retryable, "timeout")
    );
    let e = first_error(all(|p| p.reset = 1.0)).await;
    assert_eq!(e.class, ErrorClass::Retryable, "{e:?}");
    let e = first_error(all(|p| p.malformed = 1.0)).await;
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Retryable, "xml_malformed")
    );
    let e = first_error(all(|p| p.protocol_error = 1.0)).await;
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Retryable, "soap_fault")
    );
    assert!(
        e.message.contains("CSDLQGDC"),
        "the upstream's own words are kept: {}",
        e.message
    );
    let e = first_error(all(|p| {
        p.outages = vec![Outage {
            start_ms: 0,
            end_ms: 600_000,
        }]
    }))
    .await;
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Retryable, "http_503")
    );
}

#[tokio::test]
async fn faults_can_be_changed_at_runtime_over_the_control_endpoint() {
    let s = setup(FaultPlan::default(), Duration::from_secs(60)).await;
    let client = client(&s, "dev-secret");
    let c = &s.citizens[0];
    client
        .fetch_records(&record_query(c))
        .await
        .expect("healthy");
    let control = reqwest::Client::new();
    let url = format!("{}/_control/faults", s.running.base_url());
    let status = control
        .put(&url)
        .json(&serde_json::json!({"http_500": 1.0}))
        .send()
        .await
        .expect("put")
        .status();
    assert_eq!(status, 204);
    let e = client
        .fetch_records(&record_query(c))
        .await
        .expect_err("now failing");
    assert_eq!(e.code, "http_500");
    let ledger: Vec<serde_json::Value> = control
        .get(format!("{}/_control/ledger", s.running.base_url()))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        ledger.last().and_then(|e| e["outcome"].as_str()),
        Some("http_500")
    );
    let bad = control
        .put(&url)
        .json(&serde_json::json!({"http_5000": 1.0}))
        .send()
        .await
        .expect("put");
    assert!(
        bad.status().is_client_error(),
        "unknown fault keys are refused"
    );
}

/// A strict gateway judges each SOAP request by the contract: children out of order are refused with a
/// SOAP `Client` fault naming the element, recorded in the ledger.
#[tokio::test]
async fn the_simulator_refuses_a_planted_violation_and_the_ledger_names_it() {
    let s = setup(FaultPlan::default(), Duration::from_secs(300)).await;
    let http = reqwest::Client::new();
    let base = s.running.base_url();
    let token: serde_json::Value = http
        .post(format!("{base}/token"))
        .basic_auth("dvc-dev", Some("dev-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let bearer = token["access_token"].as_str().expect("token").to_owned();
    let good = include_str!("../../../fixtures/population/xac-thuc-request.xml");
    let send = |body: String, action: &'static str| {
        let http = http.clone();
        let url = format!("{base}/dancu/soap");
        let bearer = bearer.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(bearer)
                .header("content-type", "text/xml; charset=utf-8")
                .header("SOAPAction", action)
                .body(body)
                .send()
                .await
                .expect("call");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    let swapped = good.replace(
        "<dc:MaDichVu>033</dc:MaDichVu>\n      <dc:MaCanBo>CB-0042</dc:MaCanBo>",
        "<dc:MaCanBo>CB-0042</dc:MaCanBo>\n      <dc:MaDichVu>033</dc:MaDichVu>",
    );
    assert_ne!(swapped, good, "the plant applies");
    let (status, body) = send(swapped, "XacThucThongTinCongDan").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("soap:Client") && body.contains("MaDichVu"),
        "{body}"
    );
    let v = s.sim.violations().pop().expect("violation recorded");
    assert_eq!(
        (v.field.as_str(), v.kind.as_str()),
        ("MaDichVu", "out_of_order")
    );
    // A wrong SOAPAction is a violation too.
    let (status, _) = send(good.to_owned(), "XacMinhThongTinNhanThan").await;
    assert_eq!(status, 500);
    let v = s.sim.violations().pop().expect("violation recorded");
    assert_eq!(
        (v.field.as_str(), v.kind.as_str()),
        ("SOAPAction", "bad_header")
    );
    // The hand-written request passes.
    let (status, body) = send(good.to_owned(), "XacThucThongTinCongDan").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.sim.violations().len(), 2);
    s.sim.ledger.clear();
}

/// What the client sends, captured on the wire, is the hand-written fixture of each operation, element
/// for element (the request id is fresh per call, so only its form is compared).
#[tokio::test]
async fn the_client_sends_what_the_hand_written_fixtures_say() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fixture = |name: &str| {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/population")
                .join(name),
        )
        .expect("fixture")
    };
    let (exists, record) = (
        String::from_utf8(fixture("xac-thuc-response-true.xml")).expect("utf-8"),
        String::from_utf8(fixture("xac-minh-response.xml")).expect("utf-8"),
    );
    let capture = dvc_upstream::sim::Capture::start(move |r| match r.path.as_str() {
        "/token" => (
            200,
            r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#.into(),
        ),
        _ if r.header("soapaction") == Some("XacThucThongTinCongDan") => (200, exists.clone()),
        _ => (200, record.clone()),
    })
    .await;
    let base = capture.base_url();
    let mut config = PopulationConfig::new(
        format!("{base}/dancu/soap"),
        format!("{base}/token"),
        "dvc-dev",
        "dev-secret",
    );
    config.lgsp_access_token = Some("static-lgsp".into());
    let c = PopulationClient::new(config).expect("client");
    c.check_exists(&ExistenceQuery {
        service_code: "033".into(),
        officer: officer(),
        citizen_id: CitizenId::parse("001190012345").expect("id"),
        legacy_id: String::new(),
        full_name: "Nguyễn Văn An".into(),
    })
    .await
    .expect("exists");
    c.fetch_records(&RecordQuery {
        procedure_code: "1.001776".into(),
        integration_code: "DVC-H56".into(),
        agency_code: "000.00.00.H56".into(),
        officer: officer(),
        citizen_id: CitizenId::parse("036188004512").expect("id"),
        legacy_id: "162345678".into(),
        full_name: "Trần Thị Ngọc Ánh".into(),
        birth_date: BirthDate::parse_iso("1988-03-14").expect("date"),
    })
    .await
    .expect("record");
    let requests = capture.requests();
    assert_eq!(requests[0].path, "/token");
    assert_eq!(
        String::from_utf8_lossy(&requests[0].body),
        "grant_type=client_credentials"
    );
    for (request, (name, action)) in requests[1..].iter().zip([
        ("xac-thuc-request.xml", "XacThucThongTinCongDan"),
        ("xac-minh-request.xml", "XacMinhThongTinNhanThan"),
    ]) {
        assert_eq!(request.header("soapaction"), Some(action));
        assert_eq!(request.header("authorization"), Some("Bearer t"));
        assert_eq!(request.header("lgspaccesstoken"), Some("static-lgsp"));
        assert_eq!(
            request.header("authhash"),
            Some("Y2FuYm80MjpwYXNz"),
            "base64(canbo42:pass)"
        );
        assert_eq!(
            request.header("content-type"),
            Some("text/xml; charset=utf-8")
        );
        let sent = dvc_population::rules::request(&request.body)
            .unwrap_or_else(|v| panic!("{name}: the client broke the contract: {v:?}"));
        let expected = dvc_population::rules::request(&fixture(name))
            .unwrap_or_else(|v| panic!("{name}: the fixture breaks the contract: {v:?}"));
        assert_eq!(sent.operation, expected.operation);
        for (field, value) in &expected.fields {
            if *field == "MaYeuCau" {
                assert_eq!(sent.get(field).len(), 26, "a ULID request id");
                continue;
            }
            assert_eq!(sent.get(field), value.as_str(), "{name}: {field}");
        }
        assert_eq!(sent.fields.len(), expected.fields.len(), "{name}");
    }
}
