//! VNPost's JSON bodies (PascalCase on the wire), the deterministic order numbers, and the table from
//! tracking `StatusCode` to shipment state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The create-order body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateOrder {
    pub customer_code: String,
    pub order_number: String,
    #[serde(rename = "CODAmount")]
    pub cod_amount: f64,
    pub sender_name: String,
    pub sender_address: String,
    pub sender_tel: String,
    #[serde(default)]
    pub sender_email: String,
    pub sender_province: String,
    /// Sent only when known: two-level local government has no districts since 2025-07-01.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub sender_district: Option<String>,
    #[serde(default)]
    pub sender_desc: String,
    #[serde(default)]
    pub description: String,
    pub receiver_name: String,
    pub receiver_address: String,
    pub receiver_tel: String,
    #[serde(default)]
    pub receiver_email: String,
    pub receiver_province: String,
    /// Sent only when known, like the sender's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub receiver_district: Option<String>,
}

/// Reads `""` and `null` as absent: job payloads written before districts became optional carry `""`,
/// which a strict VNPost refuses.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.filter(|s| !s.trim().is_empty()))
}

impl CreateOrder {
    /// The required fields that are empty (the names VNPost uses).
    pub fn missing_fields(&self) -> Vec<&'static str> {
        [
            ("CustomerCode", &self.customer_code),
            ("OrderNumber", &self.order_number),
            ("SenderName", &self.sender_name),
            ("SenderAddress", &self.sender_address),
            ("SenderTel", &self.sender_tel),
            ("SenderProvince", &self.sender_province),
            ("ReceiverName", &self.receiver_name),
            ("ReceiverAddress", &self.receiver_address),
            ("ReceiverTel", &self.receiver_tel),
            ("ReceiverProvince", &self.receiver_province),
        ]
        .into_iter()
        .filter(|(_, v)| v.trim().is_empty())
        .map(|(k, _)| k)
        .collect()
    }
}

/// `MResult`: the answer to create and cancel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OrderResult {
    pub status: i64,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub item_code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectId {
    #[serde(rename = "$oid")]
    pub oid: String,
}

/// One event of the tracking feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrackingEvent {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub customer_code: String,
    pub order_number: String,
    pub item_code: String,
    /// Epoch milliseconds.
    pub event_time: i64,
    #[serde(rename = "POSID", default)]
    pub pos_id: String,
    pub status_code: i64,
    #[serde(default)]
    pub status_message: String,
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Embedded {
    #[serde(rename = "rh:doc", default)]
    pub docs: Vec<TrackingEvent>,
}

/// One page of the feed, ascending by `_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingPage {
    #[serde(rename = "_returned", default)]
    pub returned: u64,
    #[serde(rename = "_embedded", default)]
    pub embedded: Embedded,
}

/// The feed's cursor before the first event.
pub const FIRST_LAST_ID: &str = "000000000000000000000000";

/// True for a 24-digit lower- or upper-case hex id.
pub fn is_feed_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a postal order is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentKind {
    /// Returning the dossier's result to the citizen: one per dossier.
    ResultDelivery,
    /// Picking the dossier up from the citizen: the n-th pickup of the dossier.
    DossierPickup,
}

/// The deterministic order number: `{dossier}` for the result, `{dossier}-TG{n}` for the n-th pickup.
/// Never random, so that a retried create collides with its first attempt.
pub fn order_number(dossier_code: &str, kind: ShipmentKind, pickup: u32) -> String {
    match kind {
        ShipmentKind::ResultDelivery => dossier_code.to_owned(),
        ShipmentKind::DossierPickup => format!("{dossier_code}-TG{pickup}"),
    }
}

/// Where a shipment is, as the connector reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentState {
    Accepted,
    InTransit,
    OutForDelivery,
    Delivered,
    DeliveryFailed,
    Returned,
    Cancelled,
}

impl ShipmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShipmentState::Accepted => "accepted",
            ShipmentState::InTransit => "in_transit",
            ShipmentState::OutForDelivery => "out_for_delivery",
            ShipmentState::Delivered => "delivered",
            ShipmentState::DeliveryFailed => "delivery_failed",
            ShipmentState::Returned => "returned",
            ShipmentState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ShipmentState> {
        [
            ShipmentState::Accepted,
            ShipmentState::InTransit,
            ShipmentState::OutForDelivery,
            ShipmentState::Delivered,
            ShipmentState::DeliveryFailed,
            ShipmentState::Returned,
            ShipmentState::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Delivered, returned and cancelled end a shipment.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ShipmentState::Delivered | ShipmentState::Returned | ShipmentState::Cancelled
        )
    }
}

/// `StatusCode` → state. VNPost does not publish its codes; the default is the spec's table, and a
/// deployment overrides it from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTable(pub BTreeMap<i64, ShipmentState>);

impl Default for StatusTable {
    fn default() -> Self {
        Self(BTreeMap::from([
            (1, ShipmentState::Accepted),
            (2, ShipmentState::InTransit),
            (3, ShipmentState::OutForDelivery),
            (4, ShipmentState::Delivered),
            (5, ShipmentState::DeliveryFailed),
            (6, ShipmentState::Returned),
            (7, ShipmentState::Cancelled),
        ]))
    }
}

impl StatusTable {
    /// None for a code the table does not know (kept as an event, without a state change).
    pub fn state(&self, code: i64) -> Option<ShipmentState> {
        self.0.get(&code).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/postal")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub(crate) fn sample_order() -> CreateOrder {
        CreateOrder {
            customer_code: "DVCDEV01".into(),
            order_number: "H56.22-241127-0001".into(),
            cod_amount: 0.0,
            sender_name: "Trung tâm Phục vụ hành chính công tỉnh".into(),
            sender_address: "Số 1 đường Lê Lợi, phường Tân An".into(),
            sender_tel: "02923812345".into(),
            sender_email: String::new(),
            sender_province: "92".into(),
            sender_district: None,
            sender_desc: "Giấy chứng nhận đăng ký hộ kinh doanh".into(),
            description: "Trả kết quả hồ sơ H56.22-241127-0001".into(),
            receiver_name: "Nguyễn Văn An".into(),
            receiver_address: "Số 12 hẻm 34, phường Ninh Kiều".into(),
            receiver_tel: "0912345678".into(),
            receiver_email: "an@example.vn".into(),
            receiver_province: "92".into(),
            receiver_district: None,
        }
    }

    #[test]
    fn the_create_body_matches_its_fixture_field_for_field() {
        let on_disk: CreateOrder =
            serde_json::from_str(&fixture("create-order-request.json")).expect("fixture parses");
        assert_eq!(on_disk, sample_order());
        let written: serde_json::Value = serde_json::to_value(sample_order()).expect("json");
        let expected: serde_json::Value =
            serde_json::from_str(&fixture("create-order-request.json")).expect("json");
        assert_eq!(written, expected, "PascalCase names, CODAmount a number");
    }

    #[test]
    fn the_answers_and_the_feed_read_from_their_fixtures() {
        let created: OrderResult =
            serde_json::from_str(&fixture("create-order-201.json")).expect("json");
        assert_eq!(
            (created.status, created.item_code.as_str()),
            (100, "EB000000014VN")
        );
        let dup: OrderResult =
            serde_json::from_str(&fixture("create-order-409-exists.json")).expect("json");
        assert_eq!(dup.status, 101);
        let page: TrackingPage =
            serde_json::from_str(&fixture("tracking-page.json")).expect("json");
        assert_eq!(page.returned, 2);
        assert_eq!(page.embedded.docs.len(), 2);
        assert!(page.embedded.docs.iter().all(|e| is_feed_id(&e.id.oid)));
        assert!(page.embedded.docs[0].id.oid < page.embedded.docs[1].id.oid);
        assert_eq!(
            StatusTable::default().state(page.embedded.docs[1].status_code),
            Some(ShipmentState::InTransit)
        );
    }

    #[test]
    fn unknown_fields_in_an_order_are_refused() {
        let mut v = serde_json::to_value(sample_order()).expect("json");
        v["Extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<CreateOrder>(v).is_err());
    }

    #[test]
    fn order_numbers_are_deterministic() {
        assert_eq!(
            order_number("H56-1", ShipmentKind::ResultDelivery, 0),
            "H56-1"
        );
        assert_eq!(
            order_number("H56-1", ShipmentKind::DossierPickup, 2),
            "H56-1-TG2"
        );
    }

    #[test]
    fn final_states_are_delivered_returned_and_cancelled() {
        let finals: Vec<_> = StatusTable::default()
            .0
            .values()
            .filter(|s| s.is_final())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(finals, ["delivered", "returned", "cancelled"]);
    }
}

#[cfg(test)]
mod more_fixture_tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/postal")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn refusals_and_the_token_read_from_their_fixtures() {
        let invalid: OrderResult =
            serde_json::from_str(&fixture("create-order-400.json")).expect("json");
        assert_eq!((invalid.status, invalid.item_code.as_str()), (110, ""));
        let delivered: OrderResult =
            serde_json::from_str(&fixture("cancel-409-delivered.json")).expect("json");
        assert_eq!(delivered.status, 102);
        let token: serde_json::Value = serde_json::from_str(&fixture("token.json")).expect("json");
        assert!(token["access_token"].is_string() && token["expires_in"].is_u64());
    }

    #[test]
    fn an_order_result_round_trips() {
        let text = fixture("create-order-201.json");
        let parsed: OrderResult = serde_json::from_str(&text).expect("json");
        let again: OrderResult =
            serde_json::from_str(&serde_json::to_string(&parsed).expect("json")).expect("json");
        assert_eq!(parsed, again);
    }
}
