//! A simulator of VNPost's API that judges every request by the contract's rules (the tables in
//! [`crate::rules`], written from the contract, not from the client's wire types).
//!
//! - `POST /token` — HTTP Basic `customer_key:secret_key`, form `grant_type=client_credentials`;
//! - `POST /order/post` — 201 `Status 100` with a new S10 tracking code; a repeated `OrderNumber` for the
//!   same `CustomerCode` answers 409 `Status 101` with the existing code; a request that breaks a rule
//!   (a required field missing or empty, a district sent as `""`, a province code that is not a current
//!   one, a number as a string, a field VNPost does not have) answers 400 `Status 110` naming the field,
//!   and the violation is recorded in the ledger;
//! - `GET /order/cancel?CustomerCode&OrderNumber` — 201 `Status 100`; 409 `Status 102` once delivered;
//! - `GET /order/tracking?pagesize&lastId` — the customer-wide feed, ascending 24-hex ids;
//! - the control endpoint of [`dvc_upstream::sim`], plus `POST /_control/revoke-tokens`.
//!
//! Each order moves through the status table one step every `step_interval` (short in tests and the
//! demo): 1 accepted, 2 in transit, 3 out for delivery, 4 delivered — or, for a share of orders,
//! 5 delivery failed then 6 returned. Steps are published to the feed as they come due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dvc_upstream::sim::{self, Fault, FaultPlan, Faults, Ledger, Running, TokenIssuer};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use dvc_upstream::judge::{self, Violation, ViolationKind};

use crate::wire::{Embedded, ObjectId, OrderResult, TrackingEvent, TrackingPage};

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub customer_code: String,
    pub customer_key: String,
    pub secret_key: String,
    pub token_lifetime: Duration,
    /// Time between two status steps of an order.
    pub step_interval: Duration,
    /// Share of orders (0–1) whose delivery fails and which go back to the sender.
    pub failed_delivery_rate: f64,
    pub faults: FaultPlan,
}

impl Default for SimulatorConfig {
    /// The development credentials of `config/dev.toml`.
    fn default() -> Self {
        Self {
            customer_code: "DVCDEV01".into(),
            customer_key: "dev-customer".into(),
            secret_key: "dev-secret".into(),
            token_lifetime: Duration::from_secs(3600),
            step_interval: Duration::from_secs(2),
            failed_delivery_rate: 0.0,
            faults: FaultPlan::default(),
        }
    }
}

/// What the simulator received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `token`, `create`, `cancel` or `tracking`.
    pub operation: String,
    pub order_number: String,
    /// `created`, `duplicate`, `invalid`, `cancelled`, `not_found`, `cannot_cancel`, `events:N`,
    /// `token_issued`, `unauthorized`, or the fault drawn.
    pub outcome: String,
    /// The first rule the request broke (the outcome is then `invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
}

#[derive(Debug)]
struct Order {
    /// The create-order body as received (for tests to read field by field).
    body: serde_json::Value,
    item_code: String,
    created: Instant,
    path: Vec<i64>,
    /// Steps already published to the feed.
    published: usize,
    cancelled: bool,
}

#[derive(Debug, Default)]
struct Book {
    orders: HashMap<(String, String), Order>,
    /// Insertion order of orders, so steps due at the same moment publish deterministically.
    order_keys: Vec<(String, String)>,
    feed: Vec<TrackingEvent>,
    next_serial: u32,
    next_event: u64,
}

#[derive(Debug)]
pub struct Simulator {
    pub faults: Arc<Faults>,
    pub ledger: Arc<Ledger<LedgerEntry>>,
    config: SimulatorConfig,
    book: Mutex<Book>,
    tokens: TokenIssuer,
    feed_prefix: u32,
    started_wall_ms: i64,
    started: Instant,
}

/// The S10 check digit of an 8-digit serial (UPU S10 standard).
pub fn s10_check_digit(serial: u32) -> u32 {
    let digits: Vec<u32> = format!("{serial:08}")
        .bytes()
        .map(|b| u32::from(b - b'0'))
        .collect();
    let sum: u32 = digits
        .iter()
        .zip([8, 6, 4, 2, 3, 5, 9, 7])
        .map(|(d, w)| d * w)
        .sum();
    match 11 - sum % 11 {
        10 => 0,
        11 => 5,
        c => c,
    }
}

pub fn item_code(serial: u32) -> String {
    format!("EB{serial:08}{}VN", s10_check_digit(serial))
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Arc<Self> {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Arc::new(Self {
            faults: Faults::new(config.faults.clone()),
            ledger: Arc::default(),
            tokens: TokenIssuer::new(
                config.customer_key.clone(),
                config.secret_key.clone(),
                config.token_lifetime,
            ),
            config,
            book: Mutex::default(),
            feed_prefix: (wall / 1000) as u32,
            started_wall_ms: wall,
            started: Instant::now(),
        })
    }

    pub fn revoke_tokens(&self) {
        self.tokens.revoke();
    }

    /// The body of the order booked under `order_number`, as it was received.
    pub fn order_body(&self, order_number: &str) -> Option<serde_json::Value> {
        let book = self.book.lock().ok()?;
        book.orders
            .iter()
            .find(|((_, number), _)| number == order_number)
            .map(|(_, o)| o.body.clone())
    }

    /// Orders in the book (each (customer, order number) once, however often it was posted).
    pub fn order_count(&self) -> usize {
        self.book.lock().map(|b| b.orders.len()).unwrap_or(0)
    }

    /// Publishes every status step that has come due, in time order.
    fn advance(&self, book: &mut Book) {
        let now = Instant::now();
        let step = self.config.step_interval;
        let mut due: Vec<(Instant, usize, usize)> = Vec::new();
        for (i, key) in book.order_keys.iter().enumerate() {
            let order = &book.orders[key];
            if order.cancelled {
                continue;
            }
            for s in order.published..order.path.len() {
                let at = order.created + step * (s as u32);
                if at <= now {
                    due.push((at, i, s));
                }
            }
        }
        due.sort();
        for (at, i, s) in due {
            let key = book.order_keys[i].clone();
            let code = book.orders[&key].path[s];
            let item = book.orders[&key].item_code.clone();
            self.publish(book, &key, &item, code, at);
            if let Some(order) = book.orders.get_mut(&key) {
                order.published = s + 1;
            }
        }
    }

    fn publish(&self, book: &mut Book, key: &(String, String), item: &str, code: i64, at: Instant) {
        book.next_event += 1;
        let message = match code {
            1 => "Đã nhận hàng tại bưu cục",
            2 => "Đang vận chuyển",
            3 => "Đang phát hàng",
            4 => "Phát thành công",
            5 => "Phát không thành công",
            6 => "Đã chuyển hoàn",
            7 => "Đã hủy",
            _ => "",
        };
        book.feed.push(TrackingEvent {
            id: ObjectId {
                oid: format!("{:08x}{:016x}", self.feed_prefix, book.next_event),
            },
            customer_code: key.0.clone(),
            order_number: key.1.clone(),
            item_code: item.to_owned(),
            event_time: self.started_wall_ms + (at - self.started).as_millis() as i64,
            pos_id: "920000".into(),
            status_code: code,
            status_message: message.into(),
            notes: String::new(),
        });
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        self.tokens.valid(headers)
    }

    fn record(&self, operation: &str, order_number: &str, outcome: impl Into<String>) {
        self.ledger.record(LedgerEntry {
            operation: operation.into(),
            order_number: order_number.into(),
            outcome: outcome.into(),
            violation: None,
        });
    }

    /// Records a refused request and answers 400 `Status 110` naming the field, as VNPost does.
    fn refuse(&self, operation: &str, order_number: &str, violations: Vec<Violation>) -> Response {
        let first = violations.into_iter().next();
        let message = first.as_ref().map_or_else(String::new, |v| {
            format!("Dữ liệu không hợp lệ: {} ({})", v.field, v.detail)
        });
        self.ledger.record(LedgerEntry {
            operation: operation.into(),
            order_number: order_number.into(),
            outcome: "invalid".into(),
            violation: first,
        });
        result(StatusCode::BAD_REQUEST, 110, &message, "")
    }

    /// Every rule broken so far, in arrival order.
    pub fn violations(&self) -> Vec<Violation> {
        self.ledger
            .snapshot()
            .into_iter()
            .filter_map(|e| e.violation)
            .collect()
    }

    /// Draws a fault; answers for it if one was drawn.
    async fn fault(&self, operation: &str, order_number: &str) -> Option<Response> {
        let fault = self.faults.draw().await?;
        self.record(operation, order_number, fault.as_str());
        if let Some(response) = self.faults.generic_response(fault).await {
            return Some(response);
        }
        Some(match fault {
            Fault::Malformed => (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"Status\": 10",
            )
                .into_response(),
            _ => result(StatusCode::OK, 99, "Hệ thống đang bảo trì", ""),
        })
    }
}

fn result(status: StatusCode, code: i64, message: &str, item_code: &str) -> Response {
    (
        status,
        Json(OrderResult {
            status: code,
            message: message.into(),
            item_code: item_code.into(),
        }),
    )
        .into_response()
}

pub fn router(sim: Arc<Simulator>) -> Router {
    let control = sim::control_router(sim.faults.clone(), sim.ledger.clone());
    Router::new()
        .route("/token", post(token))
        .route("/order/post", post(create))
        .route("/order/cancel", get(cancel))
        .route("/order/tracking", get(tracking))
        .route("/_control/revoke-tokens", post(revoke))
        .with_state(sim)
        .merge(control)
}

pub fn start(
    listener: tokio::net::TcpListener,
    config: SimulatorConfig,
) -> std::io::Result<(Running, Arc<Simulator>)> {
    let sim = Simulator::new(config);
    let running = sim::serve(listener, router(sim.clone()))?;
    Ok((running, sim))
}

async fn token(State(sim): State<Arc<Simulator>>, headers: HeaderMap, body: Bytes) -> Response {
    let (response, outcome) = sim.tokens.answer(&headers, &body);
    sim.record("token", "", outcome);
    response
}

async fn revoke(State(sim): State<Arc<Simulator>>) -> StatusCode {
    sim.revoke_tokens();
    StatusCode::NO_CONTENT
}

async fn create(State(sim): State<Arc<Simulator>>, headers: HeaderMap, body: Bytes) -> Response {
    if !sim.authorized(&headers) {
        sim.record("create", "", "unauthorized");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let order = match judge::json_object(&body) {
        Ok(order) => order,
        Err(v) => return sim.refuse("create", "", vec![v]),
    };
    let text = |name: &str| {
        order
            .get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (customer_code, order_number) = (text("CustomerCode"), text("OrderNumber"));
    let mut violations: Vec<Violation> = judge::header(&headers, "content-type", None, false)
        .into_iter()
        .chain(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.starts_with("application/json"))
                .map(|_| {
                    Violation::new(
                        ViolationKind::BadHeader,
                        "content-type",
                        "expected application/json",
                    )
                }),
        )
        .collect();
    violations.extend(crate::rules::create_order(&order));
    if !violations.is_empty() {
        return sim.refuse("create", &order_number, violations);
    }
    if let Some(response) = sim.fault("create", &order_number).await {
        return response;
    }
    if customer_code != sim.config.customer_code {
        sim.record("create", &order_number, "invalid");
        return result(StatusCode::BAD_REQUEST, 3, "CustomerCode không hợp lệ", "");
    }
    let Ok(mut book) = sim.book.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let key = (customer_code, order_number.clone());
    if let Some(existing) = book.orders.get(&key) {
        let item = existing.item_code.clone();
        drop(book);
        sim.record("create", &order_number, "duplicate");
        return result(StatusCode::CONFLICT, 101, "Mã đơn hàng đã tồn tại", &item);
    }
    book.next_serial += 1;
    let item = item_code(book.next_serial);
    let fails = sim.config.failed_delivery_rate > 0.0
        && (book.next_serial as f64 * 0.618_033_988_7).fract() < sim.config.failed_delivery_rate;
    let path = if fails {
        vec![1, 2, 3, 5, 6]
    } else {
        vec![1, 2, 3, 4]
    };
    book.orders.insert(
        key.clone(),
        Order {
            body: serde_json::Value::Object(order.clone()),
            item_code: item.clone(),
            created: Instant::now() + sim.config.step_interval,
            path,
            published: 0,
            cancelled: false,
        },
    );
    book.order_keys.push(key);
    drop(book);
    sim.record("create", &order_number, "created");
    result(StatusCode::CREATED, 100, "Tạo đơn hàng thành công", &item)
}

async fn cancel(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let order_number = q.get("OrderNumber").cloned().unwrap_or_default();
    if !sim.authorized(&headers) {
        sim.record("cancel", &order_number, "unauthorized");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let violations = crate::rules::cancel_query(&q);
    if !violations.is_empty() {
        return sim.refuse("cancel", &order_number, violations);
    }
    if let Some(response) = sim.fault("cancel", &order_number).await {
        return response;
    }
    let customer_code = q.get("CustomerCode").cloned().unwrap_or_default();
    let Ok(mut book) = sim.book.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    sim.advance(&mut book);
    let key = (customer_code, order_number.clone());
    let Some(order) = book.orders.get(&key) else {
        drop(book);
        sim.record("cancel", &order_number, "not_found");
        return result(StatusCode::BAD_REQUEST, 4, "Không tìm thấy đơn hàng", "");
    };
    let last = order.path[..order.published].last().copied();
    if matches!(last, Some(4) | Some(6)) {
        drop(book);
        sim.record("cancel", &order_number, "cannot_cancel");
        return result(
            StatusCode::CONFLICT,
            102,
            "Đơn hàng đã phát thành công, không thể hủy",
            "",
        );
    }
    if !order.cancelled {
        let item = order.item_code.clone();
        if let Some(o) = book.orders.get_mut(&key) {
            o.cancelled = true;
        }
        sim.publish(&mut book, &key, &item, 7, Instant::now());
    }
    drop(book);
    sim.record("cancel", &order_number, "cancelled");
    result(StatusCode::CREATED, 100, "Hủy đơn hàng thành công", "")
}

async fn tracking(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !sim.authorized(&headers) {
        sim.record("tracking", "", "unauthorized");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let violations = crate::rules::tracking_query(&q);
    if !violations.is_empty() {
        return sim.refuse("tracking", "", violations);
    }
    if let Some(response) = sim.fault("tracking", "").await {
        return response;
    }
    let pagesize: usize = q.get("pagesize").and_then(|p| p.parse().ok()).unwrap_or(1);
    let Ok(mut book) = sim.book.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    sim.advance(&mut book);
    let last = q
        .get("lastId")
        .map(|l| l.to_ascii_lowercase())
        .unwrap_or_default();
    let docs: Vec<TrackingEvent> = book
        .feed
        .iter()
        .filter(|e| e.id.oid > last)
        .take(pagesize)
        .cloned()
        .collect();
    drop(book);
    sim.record("tracking", "", format!("events:{}", docs.len()));
    Json(TrackingPage {
        returned: docs.len() as u64,
        embedded: Embedded { docs },
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_codes_carry_the_s10_check_digit() {
        // The UPU S10 standard's worked example: RR 47312482 9 GB.
        assert_eq!(s10_check_digit(47_312_482), 9);
        assert_eq!(item_code(1), "EB000000014VN");
    }
}
