//! The VNPost client against the simulator over loopback: orders, duplicates, cancellation, the feed,
//! tokens and every fault class, asserted through the simulator's order book and ledger.

use std::collections::BTreeMap;
use std::time::Duration;

use dvc_postal::client::{PostalClient, PostalConfig};
use dvc_postal::simulator::{self, Simulator, SimulatorConfig};
use dvc_postal::wire::{CreateOrder, FIRST_LAST_ID, ShipmentKind, ShipmentState, order_number};
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

async fn setup(step: Duration, faults: FaultPlan) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = SimulatorConfig {
        step_interval: step,
        faults,
        ..SimulatorConfig::default()
    };
    let (running, sim) = simulator::start(listener, config).expect("start");
    Setup { sim, running }
}

fn client(s: &Setup, secret: &str) -> PostalClient {
    let mut config = PostalConfig::new(s.running.base_url(), "DVCDEV01", "dev-customer", secret);
    config.http.timeout = Duration::from_millis(800);
    PostalClient::new(config).expect("client")
}

fn order(number: &str) -> CreateOrder {
    CreateOrder {
        customer_code: "DVCDEV01".into(),
        order_number: number.into(),
        cod_amount: 0.0,
        sender_name: "Trung tâm Phục vụ hành chính công".into(),
        sender_address: "Số 1 Lê Lợi".into(),
        sender_tel: "02923812345".into(),
        sender_province: "92".into(),
        description: "Trả kết quả".into(),
        receiver_name: "Nguyễn Văn An".into(),
        receiver_address: "Số 12 hẻm 34".into(),
        receiver_tel: "0912345678".into(),
        receiver_province: "92".into(),
        ..CreateOrder::default()
    }
}

#[tokio::test]
async fn a_retried_create_returns_the_first_order_and_never_makes_a_second() {
    let s = setup(Duration::from_secs(60), FaultPlan::default()).await;
    let c = client(&s, "dev-secret");
    let number = order_number("H56.22-241127-0001", ShipmentKind::ResultDelivery, 0);
    let first = c.create_order(&order(&number)).await.expect("created");
    assert!(!first.already_existed);
    assert!(first.item_code.starts_with("EB") && first.item_code.ends_with("VN"));
    let again = c
        .create_order(&order(&number))
        .await
        .expect("duplicate is success");
    assert!(again.already_existed);
    assert_eq!(again.item_code, first.item_code);
    assert_eq!(s.sim.order_count(), 1);
    let pickups: Vec<String> = (1..=2)
        .map(|n| order_number("H56.22-241127-0001", ShipmentKind::DossierPickup, n))
        .collect();
    for p in &pickups {
        assert!(
            !c.create_order(&order(p))
                .await
                .expect("pickup")
                .already_existed
        );
    }
    assert_eq!(s.sim.order_count(), 3);
    let outcomes: Vec<String> = s
        .sim
        .ledger
        .snapshot()
        .into_iter()
        .filter(|e| e.operation == "create")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(outcomes, ["created", "duplicate", "created", "created"]);
}

#[tokio::test]
async fn an_incomplete_order_is_refused_for_good() {
    let s = setup(Duration::from_secs(60), FaultPlan::default()).await;
    let mut bad = order("H56-BAD");
    bad.receiver_tel.clear();
    let e = client(&s, "dev-secret")
        .create_order(&bad)
        .await
        .expect_err("refused");
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "vnpost_110")
    );
    assert!(e.message.contains("ReceiverTel"));
    assert_eq!(s.sim.order_count(), 0);
    let fields: Vec<String> = s.sim.violations().into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["ReceiverTel"]);
    s.sim.ledger.clear();
}

#[tokio::test]
async fn the_feed_pages_by_last_id_and_tells_each_order_its_story_in_order() {
    let s = setup(Duration::from_millis(40), FaultPlan::default()).await;
    let c = client(&s, "dev-secret");
    let numbers = ["D-1", "D-2", "D-3"];
    for n in numbers {
        c.create_order(&order(n)).await.expect("created");
    }
    let mut cursor = FIRST_LAST_ID.to_owned();
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut pages = 0;
    for _ in 0..200 {
        let page = c.tracking(&cursor, 2).await.expect("page");
        assert!(page.embedded.docs.len() <= 2);
        pages += usize::from(!page.embedded.docs.is_empty());
        for e in &page.embedded.docs {
            seen.entry(e.order_number.clone())
                .or_default()
                .push(e.status_code);
            cursor = e.id.oid.clone();
        }
        let finished = numbers.iter().all(|n| {
            seen.get(*n)
                .and_then(|codes| codes.last())
                .and_then(|c| c_table(*c))
                .is_some_and(|st| st.is_final())
        });
        if finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in numbers {
        assert_eq!(
            seen.get(n).map(Vec::as_slice),
            Some(&[1, 2, 3, 4][..]),
            "{n}: {seen:?}"
        );
    }
    assert!(pages >= 6, "12 events in pages of 2");
    let after = c.tracking(&cursor, 1000).await.expect("page");
    assert!(
        after.embedded.docs.is_empty(),
        "nothing is re-read after the cursor"
    );
}

fn c_table(code: i64) -> Option<ShipmentState> {
    dvc_postal::wire::StatusTable::default().state(code)
}

#[tokio::test]
async fn an_order_can_be_cancelled_until_it_is_delivered() {
    let s = setup(Duration::from_millis(30), FaultPlan::default()).await;
    let c = client(&s, "dev-secret");
    c.create_order(&order("C-1")).await.expect("created");
    c.cancel_order("C-1")
        .await
        .expect("cancelled before delivery");
    c.cancel_order("C-1")
        .await
        .expect("cancelling twice is fine");
    c.create_order(&order("C-2")).await.expect("created");
    // Until the feed says C-2 was delivered (status 4).
    let mut delivered = false;
    for _ in 0..500 {
        let page = c.tracking(FIRST_LAST_ID, 1000).await.expect("feed");
        delivered = page
            .embedded
            .docs
            .iter()
            .any(|e| e.order_number == "C-2" && e.status_code == 4);
        if delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(delivered, "C-2 was delivered");
    let e = c.cancel_order("C-2").await.expect_err("delivered");
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Permanent, "vnpost_102")
    );
    let page = c.tracking(FIRST_LAST_ID, 1000).await.expect("feed");
    let c1: Vec<i64> = page
        .embedded
        .docs
        .iter()
        .filter(|e| e.order_number == "C-1")
        .map(|e| e.status_code)
        .collect();
    assert_eq!(c1.last(), Some(&7), "{c1:?}");
}

#[tokio::test]
async fn the_token_is_cached_renewed_once_when_refused_and_bad_credentials_pause() {
    let s = setup(Duration::from_secs(60), FaultPlan::default()).await;
    let c = client(&s, "dev-secret");
    c.create_order(&order("T-1")).await.expect("created");
    c.create_order(&order("T-2")).await.expect("created");
    s.sim.revoke_tokens();
    c.create_order(&order("T-3"))
        .await
        .expect("created after renewal");
    let issued = s
        .sim
        .ledger
        .snapshot()
        .iter()
        .filter(|e| e.outcome == "token_issued")
        .count();
    assert_eq!(issued, 2);
    let e = client(&s, "wrong")
        .create_order(&order("T-4"))
        .await
        .expect_err("refused");
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Auth, "token_refused")
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
                retry_after_secs: 9,
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
            "vnpost_99",
        ),
    ] {
        let s = setup(Duration::from_secs(60), plan).await;
        let e = client(&s, "dev-secret")
            .create_order(&order("F-1"))
            .await
            .expect_err("fault");
        assert_eq!((e.class, e.code.as_str()), (class, code), "{e:?}");
        if code == "http_429" {
            assert_eq!(e.retry_after, Some(Duration::from_secs(9)));
        }
    }
    let s = setup(
        Duration::from_secs(60),
        FaultPlan {
            reset: 1.0,
            ..FaultPlan::default()
        },
    )
    .await;
    let e = client(&s, "dev-secret")
        .tracking(FIRST_LAST_ID, 10)
        .await
        .expect_err("reset");
    assert_eq!(e.class, ErrorClass::Retryable, "{e:?}");
}

/// A strict VNPost judges each order by the contract: one planted wrong field is refused with 400
/// `Status` 110 naming it, and the ledger records the violation's kind and field.
#[tokio::test]
async fn the_simulator_refuses_a_planted_violation_and_the_ledger_names_it() {
    let s = setup(Duration::from_secs(60), FaultPlan::default()).await;
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/token", s.running.base_url()))
        .basic_auth("dev-customer", Some("dev-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let bearer = token["access_token"].as_str().expect("token").to_owned();
    let good: serde_json::Value = serde_json::from_str(include_str!(
        "../../../fixtures/postal/create-order-request.json"
    ))
    .expect("fixture");
    let plants: [(&str, serde_json::Value, &str, &str); 4] = [
        (
            "SenderDistrict",
            serde_json::json!(""),
            "SenderDistrict",
            "empty",
        ),
        (
            "ReceiverTel",
            serde_json::Value::Null,
            "ReceiverTel",
            "missing",
        ),
        (
            "CODAmount",
            serde_json::json!("0"),
            "CODAmount",
            "wrong_type",
        ),
        (
            "ReceiverProvince",
            serde_json::json!("49"),
            "ReceiverProvince",
            "bad_format",
        ),
    ];
    for (i, (field, value, named, kind)) in plants.iter().enumerate() {
        let mut order = good.clone();
        order["OrderNumber"] = serde_json::json!(format!("PLANT-{i}"));
        if value.is_null() {
            order.as_object_mut().map(|o| o.remove(*field));
        } else {
            order[*field] = value.clone();
        }
        let answer = http
            .post(format!("{}/order/post", s.running.base_url()))
            .bearer_auth(&bearer)
            .json(&order)
            .send()
            .await
            .expect("create");
        assert_eq!(answer.status().as_u16(), 400, "{field}");
        let body: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(body["Status"], 110, "{body}");
        assert!(
            body["Message"].as_str().is_some_and(|m| m.contains(named)),
            "{body}"
        );
        let last = s.sim.ledger.snapshot().pop().expect("recorded");
        let v = last.violation.expect("violation recorded");
        assert_eq!((v.field.as_str(), v.kind.as_str()), (*named, *kind));
    }
    assert_eq!(s.sim.order_count(), 0, "nothing refused was booked");
    // The fixture itself, written by hand from the contract, passes.
    let answer = http
        .post(format!("{}/order/post", s.running.base_url()))
        .bearer_auth(&bearer)
        .json(&good)
        .send()
        .await
        .expect("create");
    assert_eq!(answer.status().as_u16(), 201);
    assert_eq!(s.sim.violations().len(), plants.len());
    s.sim.ledger.clear();
}

/// What the client sends for an order, captured on the wire, is the hand-written fixture field for
/// field: no district when none is known, `CODAmount` a number.
#[tokio::test]
async fn the_client_sends_what_the_hand_written_fixtures_say() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let capture = dvc_upstream::sim::Capture::start(|request| match request.path.as_str() {
        "/token" => (
            200,
            r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#.into(),
        ),
        "/order/post" => (
            201,
            r#"{"Status":100,"Message":"ok","ItemCode":"EB000000014VN"}"#.into(),
        ),
        "/order/cancel" => (201, r#"{"Status":100,"Message":"ok"}"#.into()),
        _ => (200, r#"{"_returned":0,"_embedded":{"rh:doc":[]}}"#.into()),
    })
    .await;
    let mut config =
        PostalConfig::new(capture.base_url(), "DVCDEV01", "dev-customer", "dev-secret");
    config.http.timeout = Duration::from_secs(2);
    let c = PostalClient::new(config).expect("client");
    let fixture = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/postal")
                .join(name),
        )
        .expect("fixture")
    };
    let expected: serde_json::Value =
        serde_json::from_str(&fixture("create-order-request.json")).expect("json");
    // The same input, as the client's caller builds it.
    let order = CreateOrder {
        customer_code: "DVCDEV01".into(),
        order_number: "H56.22-241127-0001".into(),
        cod_amount: 0.0,
        sender_name: "Trung tâm Phục vụ hành chính công tỉnh".into(),
        sender_address: "Số 1 đường Lê Lợi, phường Tân An".into(),
        sender_tel: "02923812345".into(),
        sender_province: "92".into(),
        sender_desc: "Giấy chứng nhận đăng ký hộ kinh doanh".into(),
        description: "Trả kết quả hồ sơ H56.22-241127-0001".into(),
        receiver_name: "Nguyễn Văn An".into(),
        receiver_address: "Số 12 hẻm 34, phường Ninh Kiều".into(),
        receiver_tel: "0912345678".into(),
        receiver_email: "an@example.vn".into(),
        receiver_province: "92".into(),
        ..CreateOrder::default()
    };
    c.create_order(&order).await.expect("created");
    c.cancel_order("H56.22-241127-0001")
        .await
        .expect("cancelled");
    c.tracking(FIRST_LAST_ID, 100).await.expect("page");
    let requests = capture.requests();
    let token = &requests[0];
    assert_eq!(
        (token.method.as_str(), token.path.as_str()),
        ("POST", "/token")
    );
    assert_eq!(
        String::from_utf8_lossy(&token.body),
        fixture("token-request.form").trim()
    );
    assert_eq!(
        token.header("authorization"),
        Some("Basic ZGV2LWN1c3RvbWVyOmRldi1zZWNyZXQ="),
        "HTTP Basic of customer_key:secret_key"
    );
    let create = requests
        .iter()
        .find(|r| r.path == "/order/post")
        .expect("create");
    assert_eq!(create.header("authorization"), Some("Bearer t"));
    assert!(
        create
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    let sent: serde_json::Value = serde_json::from_slice(&create.body).expect("json body");
    let (sent, expected) = (
        sent.as_object().expect("object"),
        expected.as_object().expect("object"),
    );
    for (field, value) in expected {
        assert_eq!(sent.get(field), Some(value), "{field}");
    }
    for field in sent.keys() {
        assert!(
            expected.contains_key(field),
            "{field} is sent but not in the fixture"
        );
    }
    let cancel = requests
        .iter()
        .find(|r| r.path == "/order/cancel")
        .expect("cancel");
    assert_eq!(
        (cancel.method.as_str(), cancel.query.as_str()),
        ("GET", fixture("cancel-request.query").trim())
    );
    let tracking = requests
        .iter()
        .find(|r| r.path == "/order/tracking")
        .expect("tracking");
    assert_eq!(tracking.query, fixture("tracking-request.query").trim());
}

/// Each endpoint may live on a host of its own: a whole URL in place of a path is used as it is.
#[tokio::test]
async fn an_endpoint_given_as_a_whole_url_is_called_there() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tokens = dvc_upstream::sim::Capture::start(|_| {
        (
            200,
            r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#.into(),
        )
    })
    .await;
    let orders = dvc_upstream::sim::Capture::start(|_| {
        (
            201,
            r#"{"Status":100,"Message":"ok","ItemCode":"EB000000014VN"}"#.into(),
        )
    })
    .await;
    let mut config = PostalConfig::new(orders.base_url(), "DVCDEV01", "dev-customer", "dev-secret");
    config.profile.token_path = format!("{}/oauth/token", tokens.base_url());
    let c = PostalClient::new(config).expect("client");
    c.create_order(&order("URL-1")).await.expect("created");
    assert_eq!(
        tokens
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>(),
        ["/oauth/token"]
    );
    assert_eq!(
        orders
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>(),
        ["/order/post"]
    );
}
