//! VNPost's request rules, as the contract states them, for the simulator to judge requests by.
//!
//! Written from the contract's field list, not from [`crate::wire`]: when the client's types and these
//! tables disagree, the simulator refuses what the client sends and a test fails.

use std::collections::HashMap;

use dvc_upstream::judge::{self, Field, Presence, Type, Violation, ViolationKind, formats};
use serde_json::{Map, Value};

/// Order numbers: the dossier code (1 to 64 of `A-Z a-z 0-9 . _ -`), with `-TG{n}` for a pickup.
fn order_number(s: &str) -> Result<(), &'static str> {
    if (1..=80).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err("1 to 80 of A-Z a-z 0-9 . _ -")
    }
}

/// The create-order body: every field VNPost knows, and how it may appear. Districts are sent only
/// when known (two-level local government since 2025-07-01); province codes are current ones.
pub const CREATE_ORDER: &[Field] = &[
    Field::new("CustomerCode", Presence::Required, Type::Str).max(50),
    Field::new("OrderNumber", Presence::Required, Type::Str).format(order_number),
    Field::new("CODAmount", Presence::Required, Type::Number),
    Field::new("SenderName", Presence::Required, Type::Str).max(200),
    Field::new("SenderAddress", Presence::Required, Type::Str).max(500),
    Field::new("SenderTel", Presence::Required, Type::Str).format(formats::phone),
    Field::new("SenderEmail", Presence::Optional, Type::Str).format(formats::email),
    Field::new("SenderProvince", Presence::Required, Type::Str).format(formats::current_province),
    Field::new("SenderDistrict", Presence::WhenKnown, Type::Str).format(formats::digits),
    Field::new("SenderDesc", Presence::Optional, Type::Str).max(1000),
    Field::new("Description", Presence::Optional, Type::Str).max(1000),
    Field::new("ReceiverName", Presence::Required, Type::Str).max(200),
    Field::new("ReceiverAddress", Presence::Required, Type::Str).max(500),
    Field::new("ReceiverTel", Presence::Required, Type::Str).format(formats::phone),
    Field::new("ReceiverEmail", Presence::Optional, Type::Str).format(formats::email),
    Field::new("ReceiverProvince", Presence::Required, Type::Str).format(formats::current_province),
    Field::new("ReceiverDistrict", Presence::WhenKnown, Type::Str).format(formats::digits),
];

/// Checks a create-order body.
pub fn create_order(order: &Map<String, Value>) -> Vec<Violation> {
    let mut out = judge::object(order, "", CREATE_ORDER, false);
    if let Some(amount) = order.get("CODAmount").and_then(Value::as_f64)
        && !(0.0..=100_000_000_000.0).contains(&amount)
    {
        out.push(Violation::new(
            ViolationKind::BadFormat,
            "CODAmount",
            "VND from 0 to 100,000,000,000",
        ));
    }
    out
}

/// Checks the query of a cancel: `CustomerCode` and `OrderNumber`, nothing else.
pub fn cancel_query(query: &HashMap<String, String>) -> Vec<Violation> {
    let mut out = Vec::new();
    for name in ["CustomerCode", "OrderNumber"] {
        match query.get(name) {
            None => out.push(Violation::new(ViolationKind::Missing, name, "required")),
            Some(v) if v.trim().is_empty() => {
                out.push(Violation::new(
                    ViolationKind::Empty,
                    name,
                    "must not be empty",
                ));
            }
            Some(_) => {}
        }
    }
    unknown(query, &["CustomerCode", "OrderNumber"], &mut out);
    out
}

/// Checks the query of a tracking-feed read: `pagesize` 1–1000 and a 24-hex `lastId`.
pub fn tracking_query(query: &HashMap<String, String>) -> Vec<Violation> {
    let mut out = Vec::new();
    match query.get("pagesize").map(|p| p.parse::<u32>()) {
        None => out.push(Violation::new(
            ViolationKind::Missing,
            "pagesize",
            "required",
        )),
        Some(Ok(1..=1000)) => {}
        Some(_) => out.push(Violation::new(
            ViolationKind::BadFormat,
            "pagesize",
            "an integer from 1 to 1000",
        )),
    }
    match query.get("lastId") {
        None => out.push(Violation::new(ViolationKind::Missing, "lastId", "required")),
        Some(id) if id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        Some(_) => out.push(Violation::new(
            ViolationKind::BadFormat,
            "lastId",
            "24 hexadecimal digits (24 zeros for the first page)",
        )),
    }
    unknown(query, &["pagesize", "lastId"], &mut out);
    out
}

fn unknown(query: &HashMap<String, String>, known: &[&str], out: &mut Vec<Violation>) {
    for key in query.keys() {
        if !known.contains(&key.as_str()) {
            out.push(Violation::new(
                ViolationKind::UnknownField,
                key.clone(),
                "not a parameter of this operation",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Map<String, Value> {
        let Value::Object(map) = json!({
            "CustomerCode": "DVCDEV01", "OrderNumber": "H56.22-241127-0001", "CODAmount": 0,
            "SenderName": "Trung tâm", "SenderAddress": "Số 1 Lê Lợi", "SenderTel": "02923812345",
            "SenderProvince": "92",
            "ReceiverName": "Nguyễn Văn An", "ReceiverAddress": "Số 12", "ReceiverTel": "0912345678",
            "ReceiverProvince": "92"
        }) else {
            unreachable!()
        };
        map
    }

    fn fields(v: Vec<Violation>) -> Vec<(ViolationKind, String)> {
        v.into_iter().map(|v| (v.kind, v.field)).collect()
    }

    #[test]
    fn an_order_without_districts_is_accepted() {
        assert_eq!(fields(create_order(&order())), vec![]);
    }

    #[test]
    fn an_empty_district_is_refused() {
        let mut o = order();
        o.insert("SenderDistrict".into(), json!(""));
        assert_eq!(
            fields(create_order(&o)),
            vec![(ViolationKind::Empty, "SenderDistrict".into())]
        );
    }

    #[test]
    fn a_pre_2025_province_a_string_amount_and_a_ward_field_are_refused() {
        let mut o = order();
        o.insert("ReceiverProvince".into(), json!("49"));
        o.insert("CODAmount".into(), json!("0"));
        o.insert("ReceiverWard".into(), json!("20197"));
        assert_eq!(
            fields(create_order(&o)),
            vec![
                (ViolationKind::WrongType, "CODAmount".into()),
                (ViolationKind::BadFormat, "ReceiverProvince".into()),
                (ViolationKind::UnknownField, "ReceiverWard".into()),
            ]
        );
    }
}
