//! The simulators' judges: a request is checked against the upstream contract's rules, written here as
//! small tables per operation, before the simulator does anything with it.
//!
//! The rules are written from the contract (the project's docs/PROTOCOLS.md), never derived from the
//! clients' wire types: a simulator that decoded requests with the client's own structs would only prove
//! that the client agrees with itself. A request that breaks a rule is refused the way the real upstream
//! refuses it, and the [`Violation`] (its kind and the field at fault) goes into the simulator's ledger,
//! where tests, the demo and the crash qualification require there be none.
//!
//! Presence is the subtle part. The contract distinguishes a field that must carry a value, one that
//! must be present but may be empty (`SoCMND`, the portal's dates), one that may be left out, and one
//! sent "only when known" — absent otherwise, never `""` or `null`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What is wrong with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A required field, element or header is absent.
    Missing,
    /// Present but empty (or `null`) where the contract wants a value or no field at all.
    Empty,
    /// A JSON type the contract does not allow (a number as a string, a string as a number …).
    WrongType,
    /// The value's format is wrong (digits, dates, codes, lengths).
    BadFormat,
    /// A field the contract does not have.
    UnknownField,
    /// SOAP children in another order than the contract's.
    OutOfOrder,
    /// An element or envelope in the wrong XML namespace.
    WrongNamespace,
    /// A required header is absent or wrong (`SOAPAction`, `dstcode`, `Content-Type`, credentials).
    BadHeader,
    /// The body cannot be read at all (not JSON, not XML, not UTF-8).
    Unreadable,
}

impl ViolationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Missing => "missing",
            ViolationKind::Empty => "empty",
            ViolationKind::WrongType => "wrong_type",
            ViolationKind::BadFormat => "bad_format",
            ViolationKind::UnknownField => "unknown_field",
            ViolationKind::OutOfOrder => "out_of_order",
            ViolationKind::WrongNamespace => "wrong_namespace",
            ViolationKind::BadHeader => "bad_header",
            ViolationKind::Unreadable => "unreadable",
        }
    }
}

/// One broken rule: its kind, the field (a JSON path like `data[0].MaHoSo`, an element, a header) and
/// a short explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub field: String,
    pub detail: String,
}

impl Violation {
    pub fn new(kind: ViolationKind, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind,
            field: field.into(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.field, self.kind.as_str(), self.detail)
    }
}

/// How a field may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Present, with a non-empty value.
    Required,
    /// Present; `""` (or an empty list) is a valid value.
    Present,
    /// May be absent; when present, may be empty.
    Optional,
    /// Sent only when known: absent, or present with a value — never `""` or `null`.
    WhenKnown,
}

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Str,
    /// Any JSON number.
    Number,
    /// A JSON number without a fractional part.
    Integer,
    /// An array (its items are checked elsewhere, if at all).
    Array,
}

/// A format check on a string value: `Err` says what was expected.
pub type Format = fn(&str) -> Result<(), &'static str>;

/// One row of a rule table.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub presence: Presence,
    pub ty: Type,
    pub max_chars: Option<usize>,
    pub format: Option<Format>,
}

impl Field {
    pub const fn new(name: &'static str, presence: Presence, ty: Type) -> Self {
        Self {
            name,
            presence,
            ty,
            max_chars: None,
            format: None,
        }
    }

    pub const fn max(mut self, chars: usize) -> Self {
        self.max_chars = Some(chars);
        self
    }

    pub const fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }
}

/// A value that counts as "empty" for presence rules.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Checks an object against a rule table. `open`: fields not in the table are allowed (the portal's
/// province-specific record fields); otherwise each one is an `unknown_field`.
pub fn object(
    obj: &Map<String, Value>,
    prefix: &str,
    rules: &[Field],
    open: bool,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for rule in rules {
        let at = path(prefix, rule.name);
        let Some(value) = obj.get(rule.name) else {
            if matches!(rule.presence, Presence::Required | Presence::Present) {
                out.push(Violation::new(ViolationKind::Missing, at, "required"));
            }
            continue;
        };
        if value.is_null() && rule.presence != Presence::Present {
            out.push(Violation::new(
                ViolationKind::Empty,
                at,
                "null instead of a value or no field",
            ));
            continue;
        }
        let type_ok = match rule.ty {
            Type::Str => value.is_string(),
            Type::Number => value.is_number(),
            Type::Integer => value.is_i64() || value.is_u64(),
            Type::Array => value.is_array(),
        };
        if !type_ok {
            let expected = match rule.ty {
                Type::Str => "a string",
                Type::Number => "a number",
                Type::Integer => "an integer",
                Type::Array => "an array",
            };
            out.push(Violation::new(
                ViolationKind::WrongType,
                at,
                format!("expected {expected}"),
            ));
            continue;
        }
        if is_empty(value) {
            match rule.presence {
                Presence::Required => {
                    out.push(Violation::new(
                        ViolationKind::Empty,
                        at,
                        "must not be empty",
                    ));
                }
                Presence::WhenKnown => out.push(Violation::new(
                    ViolationKind::Empty,
                    at,
                    "sent only when known: leave the field out instead of sending it empty",
                )),
                Presence::Present | Presence::Optional => {}
            }
            continue;
        }
        if let Value::String(s) = value {
            if let Some(max) = rule.max_chars
                && s.chars().count() > max
            {
                out.push(Violation::new(
                    ViolationKind::BadFormat,
                    at,
                    format!("at most {max} characters"),
                ));
                continue;
            }
            if let Some(check) = rule.format
                && let Err(expected) = check(s)
            {
                out.push(Violation::new(ViolationKind::BadFormat, at, expected));
            }
        }
    }
    if !open {
        for key in obj.keys() {
            if !rules.iter().any(|r| r.name == key) {
                out.push(Violation::new(
                    ViolationKind::UnknownField,
                    path(prefix, key),
                    "not a field of this operation",
                ));
            }
        }
    }
    out
}

/// Reads a JSON body as an object, or says why it cannot be.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, Violation> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Violation::new(
            ViolationKind::WrongType,
            "(body)",
            "expected a JSON object",
        )),
        Err(e) => Err(Violation::new(
            ViolationKind::Unreadable,
            "(body)",
            format!("not JSON: {e}"),
        )),
    }
}

/// Checks one header: present and, when `expected` is given, equal to it (ASCII case-insensitively
/// when `fold`).
pub fn header(
    headers: &axum::http::HeaderMap,
    name: &str,
    expected: Option<&str>,
    fold: bool,
) -> Option<Violation> {
    let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) else {
        return Some(Violation::new(
            ViolationKind::BadHeader,
            name,
            "header missing or not ASCII",
        ));
    };
    match expected {
        Some(e) if (fold && !value.eq_ignore_ascii_case(e)) || (!fold && value != e) => Some(
            Violation::new(ViolationKind::BadHeader, name, format!("expected {e}")),
        ),
        _ if value.trim().is_empty() => Some(Violation::new(
            ViolationKind::BadHeader,
            name,
            "header is empty",
        )),
        _ => None,
    }
}

/// Formats shared by the upstreams' rule tables.
pub mod formats {
    /// Only ASCII digits, at least one.
    pub fn digits(s: &str) -> Result<(), &'static str> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(())
        } else {
            Err("digits only")
        }
    }

    /// A citizen identity number: exactly 12 ASCII digits.
    pub fn citizen_id(s: &str) -> Result<(), &'static str> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(())
        } else {
            Err("12 digits")
        }
    }

    /// A Vietnamese phone number: 9 to 15 digits, optionally after `+`.
    pub fn phone(s: &str) -> Result<(), &'static str> {
        let d = s.strip_prefix('+').unwrap_or(s);
        if (9..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) {
            Ok(())
        } else {
            Err("a phone number: 9 to 15 digits, optionally after +")
        }
    }

    /// Something with an `@` between two non-empty parts and no spaces.
    pub fn email(s: &str) -> Result<(), &'static str> {
        match s.split_once('@') {
            Some((a, b))
                if !a.is_empty() && b.contains('.') && !s.contains(char::is_whitespace) =>
            {
                Ok(())
            }
            _ => Err("an e-mail address"),
        }
    }

    /// A current two-digit province code of the administrative catalogue.
    pub fn current_province(s: &str) -> Result<(), &'static str> {
        if crate::admin::catalogue().is_current_province(s) {
            Ok(())
        } else {
            Err("a current (post 2025-07-01) two-digit province code")
        }
    }

    /// `yyyyMMddHHmmss`, a real calendar moment.
    pub fn portal_time(s: &str) -> Result<(), &'static str> {
        const E: &str = "yyyyMMddHHmmss";
        if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E);
        }
        let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
        let (month, day, hour, minute, second) = (n(4..6), n(6..8), n(8..10), n(10..12), n(12..14));
        if (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour < 24
            && minute < 60
            && second < 60
        {
            Ok(())
        } else {
            Err(E)
        }
    }

    /// `yyyyMMdd` or `yyyy`.
    pub fn birth_date(s: &str) -> Result<(), &'static str> {
        const E: &str = "yyyyMMdd or yyyy";
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E);
        }
        match s.len() {
            4 => Ok(()),
            8 => {
                let month: u32 = s[4..6].parse().unwrap_or(0);
                let day: u32 = s[6..8].parse().unwrap_or(0);
                if (1..=12).contains(&month) && (1..=31).contains(&day) {
                    Ok(())
                } else {
                    Err(E)
                }
            }
            _ => Err(E),
        }
    }

    /// A portal status code, 1 to 10, as a string.
    pub fn portal_status(s: &str) -> Result<(), &'static str> {
        match s.parse::<u8>() {
            Ok(1..=10) if !s.starts_with('0') => Ok(()),
            _ => Err("a status code from 1 to 10"),
        }
    }

    /// `"0"` or `"1"`.
    pub fn zero_or_one(s: &str) -> Result<(), &'static str> {
        if s == "0" || s == "1" {
            Ok(())
        } else {
            Err("\"0\" or \"1\"")
        }
    }

    /// `"1"`, `"2"` or `"3"`.
    pub fn one_to_three(s: &str) -> Result<(), &'static str> {
        if matches!(s, "1" | "2" | "3") {
            Ok(())
        } else {
            Err("\"1\", \"2\" or \"3\"")
        }
    }

    /// `"1"` to `"4"`.
    pub fn one_to_four(s: &str) -> Result<(), &'static str> {
        if matches!(s, "1" | "2" | "3" | "4") {
            Ok(())
        } else {
            Err("\"1\" to \"4\"")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULES: &[Field] = &[
        Field::new("Code", Presence::Required, Type::Str).format(formats::digits),
        Field::new("Legacy", Presence::Present, Type::Str),
        Field::new("Note", Presence::Optional, Type::Str),
        Field::new("District", Presence::WhenKnown, Type::Str),
        Field::new("Amount", Presence::Required, Type::Number),
    ];

    fn check(v: Value) -> Vec<(ViolationKind, String)> {
        let Value::Object(map) = v else { panic!() };
        object(&map, "", RULES, false)
            .into_iter()
            .map(|v| (v.kind, v.field))
            .collect()
    }

    #[test]
    fn a_request_that_follows_the_rules_passes() {
        assert_eq!(
            check(json!({"Code": "12", "Legacy": "", "Amount": 0})),
            vec![]
        );
        assert_eq!(
            check(json!({"Code": "12", "Legacy": "", "Amount": 1.5, "Note": "", "District": "7"})),
            vec![]
        );
    }

    #[test]
    fn only_when_known_means_absent_not_empty() {
        assert_eq!(
            check(json!({"Code": "12", "Legacy": "", "Amount": 0, "District": ""})),
            vec![(ViolationKind::Empty, "District".into())]
        );
        assert_eq!(
            check(json!({"Code": "12", "Legacy": "", "Amount": 0, "District": null})),
            vec![(ViolationKind::Empty, "District".into())]
        );
    }

    #[test]
    fn missing_wrong_type_format_and_unknown_fields_are_each_named() {
        assert_eq!(
            check(json!({"Legacy": "", "Amount": "0", "Extra": 1})),
            vec![
                (ViolationKind::Missing, "Code".into()),
                (ViolationKind::WrongType, "Amount".into()),
                (ViolationKind::UnknownField, "Extra".into()),
            ]
        );
        assert_eq!(
            check(json!({"Code": "1a", "Amount": 0})),
            vec![
                (ViolationKind::BadFormat, "Code".into()),
                (ViolationKind::Missing, "Legacy".into()),
            ]
        );
    }

    #[test]
    fn portal_times_must_be_real_moments() {
        assert!(formats::portal_time("20241127093000").is_ok());
        assert!(formats::portal_time("2024-11-27T09:30:00").is_err());
        assert!(formats::portal_time("20241327093000").is_err());
        assert!(formats::portal_time("20241127246000").is_err());
    }
}
