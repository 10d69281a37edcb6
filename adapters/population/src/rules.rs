//! The gateway's request rules, as the contract states them, for the simulator to judge SOAP requests by.
//!
//! Written from the contract, not from [`crate::wire`]: the envelope is read here with its own namespace
//! resolution, and each operation's children are checked against a table in the contract's order. A
//! SOAP 1.1 envelope in `http://schemas.xmlsoap.org/soap/envelope/`, an optional `Header`, one `Body`
//! holding one operation element in `http://dancuquocgia.bca`, its children qualified in the same
//! namespace, each once and in order; no DTD, no entity but XML's five.

use std::collections::HashMap;

use dvc_upstream::judge::{Format, Presence, Violation, ViolationKind, formats};
use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

pub const ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const OPERATION_NS: &str = "http://dancuquocgia.bca";

/// One child of an operation element.
#[derive(Debug, Clone, Copy)]
pub struct Child {
    pub name: &'static str,
    pub presence: Presence,
    pub format: Option<Format>,
    /// The child wraps one element of this name instead of holding text.
    pub wraps: Option<&'static str>,
}

const fn child(name: &'static str, presence: Presence) -> Child {
    Child {
        name,
        presence,
        format: None,
        wraps: None,
    }
}

const fn with_format(mut c: Child, f: Format) -> Child {
    c.format = Some(f);
    c
}

/// A legacy 9-digit CMND, or a 12-digit number.
fn legacy_id(s: &str) -> Result<(), &'static str> {
    if (s.len() == 9 || s.len() == 12) && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err("9 or 12 digits, or empty")
    }
}

fn request_id(s: &str) -> Result<(), &'static str> {
    if (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err("a unique request id: 8 to 64 letters, digits or -")
    }
}

/// `XacThucThongTinCongDan`, children in order.
pub const EXISTENCE: &[Child] = &[
    with_format(child("MaYeuCau", Presence::Required), request_id),
    child("MaDichVu", Presence::Required),
    child("MaCanBo", Presence::Required),
    with_format(child("SoDinhDanh", Presence::Required), formats::citizen_id),
    with_format(child("SoCMND", Presence::Present), legacy_id),
    child("HoVaTen", Presence::Required),
];

/// `XacMinhThongTinNhanThan`, children in order.
pub const RECORD: &[Child] = &[
    with_format(child("MaYeuCau", Presence::Required), request_id),
    child("MaDVC", Presence::Required),
    child("MaTichHop", Presence::Present),
    child("MaDonVi", Presence::Present),
    child("MaCanBo", Presence::Required),
    with_format(child("SoDinhDanh", Presence::Required), formats::citizen_id),
    with_format(child("SoCMND", Presence::Present), legacy_id),
    child("HoVaTen", Presence::Required),
    Child {
        name: "NgayThangNamSinh",
        presence: Presence::Required,
        format: Some(formats::birth_date),
        wraps: Some("NgayThangNam"),
    },
];

/// An element as read: resolved namespace, local name, text and children.
#[derive(Debug, Default)]
struct Element {
    ns: Option<String>,
    local: String,
    text: String,
    children: Vec<Element>,
}

fn unreadable(detail: impl Into<String>) -> Violation {
    Violation::new(ViolationKind::Unreadable, "(body)", detail)
}

fn read(xml: &[u8]) -> Result<Element, Violation> {
    let text = std::str::from_utf8(xml).map_err(|_| unreadable("not UTF-8"))?;
    let mut reader = NsReader::from_str(text);
    let mut stack = vec![Element::default()];
    let ns_of = |r: ResolveResult<'_>| match r {
        ResolveResult::Bound(ns) => Some(ns.as_ref().to_owned()),
        _ => None,
    };
    loop {
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| unreadable(format!("not XML: {e}")))?;
        match event {
            Event::DocType(_) => return Err(unreadable("a DTD is not allowed")),
            Event::Start(e) => {
                if stack.len() > 16 {
                    return Err(unreadable("nested too deep"));
                }
                stack.push(Element {
                    ns: ns_of(resolved),
                    local: e.local_name().as_ref().to_owned(),
                    ..Element::default()
                });
            }
            Event::Empty(e) => {
                let el = Element {
                    ns: ns_of(resolved),
                    local: e.local_name().as_ref().to_owned(),
                    ..Element::default()
                };
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(el);
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| unreadable("unbalanced"))?;
                stack
                    .last_mut()
                    .ok_or_else(|| unreadable("unbalanced"))?
                    .children
                    .push(el);
            }
            Event::Text(t) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch,
                    _ => match &*r.xml10_content() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        _ => return Err(unreadable("an entity other than XML's five")),
                    },
                };
                if let Some(el) = stack.last_mut() {
                    el.text.push(ch);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    let mut root = stack
        .pop()
        .filter(|_| stack.is_empty())
        .ok_or_else(|| unreadable("ended inside an element"))?;
    if root.children.len() != 1 {
        return Err(unreadable("expected one root element"));
    }
    Ok(root.children.remove(0))
}

/// A request that passed: its operation and the text of each child (the wrapped date under its wrapper's
/// name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub operation: &'static str,
    pub fields: HashMap<&'static str, String>,
}

impl Judged {
    pub fn get(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

fn wrong_ns(field: &str, expected: &str) -> Violation {
    Violation::new(
        ViolationKind::WrongNamespace,
        field,
        format!("expected namespace {expected}"),
    )
}

/// Judges a SOAP request body: the envelope, the operation and its children. The headers are judged by
/// [`headers`].
pub fn request(xml: &[u8]) -> Result<Judged, Vec<Violation>> {
    let envelope = read(xml).map_err(|v| vec![v])?;
    let mut out = Vec::new();
    if envelope.local != "Envelope" {
        return Err(vec![Violation::new(
            ViolationKind::Missing,
            "Envelope",
            "the root element must be soap:Envelope",
        )]);
    }
    if envelope.ns.as_deref() != Some(ENVELOPE_NS) {
        out.push(wrong_ns("Envelope", ENVELOPE_NS));
    }
    let parts: Vec<&str> = envelope.children.iter().map(|c| c.local.as_str()).collect();
    if !(parts == ["Body"] || parts == ["Header", "Body"]) {
        out.push(Violation::new(
            ViolationKind::OutOfOrder,
            "Envelope",
            format!("expected an optional Header then one Body, found {parts:?}"),
        ));
    }
    let Some(body) = envelope.children.iter().find(|c| c.local == "Body") else {
        out.push(Violation::new(ViolationKind::Missing, "Body", "required"));
        return Err(out);
    };
    for part in &envelope.children {
        if part.ns.as_deref() != Some(ENVELOPE_NS) {
            out.push(wrong_ns(&part.local, ENVELOPE_NS));
        }
    }
    let [op] = body.children.as_slice() else {
        out.push(Violation::new(
            ViolationKind::BadFormat,
            "Body",
            "expected exactly one operation element",
        ));
        return Err(out);
    };
    let (operation, table): (&'static str, &[Child]) = match op.local.as_str() {
        "XacThucThongTinCongDan" => ("XacThucThongTinCongDan", EXISTENCE),
        "XacMinhThongTinNhanThan" => ("XacMinhThongTinNhanThan", RECORD),
        other => {
            out.push(Violation::new(
                ViolationKind::UnknownField,
                other,
                "not an operation of this service",
            ));
            return Err(out);
        }
    };
    if op.ns.as_deref() != Some(OPERATION_NS) {
        out.push(wrong_ns(operation, OPERATION_NS));
    }
    let mut fields = HashMap::new();
    let mut position = 0usize;
    for el in &op.children {
        let Some(at) = table.iter().position(|c| c.name == el.local) else {
            out.push(Violation::new(
                ViolationKind::UnknownField,
                el.local.clone(),
                format!("not a child of {operation}"),
            ));
            continue;
        };
        let rule = table[at];
        if el.ns.as_deref() != Some(OPERATION_NS) {
            out.push(wrong_ns(rule.name, OPERATION_NS));
        }
        if fields.contains_key(rule.name) {
            out.push(Violation::new(
                ViolationKind::BadFormat,
                rule.name,
                "given more than once",
            ));
            continue;
        }
        if at < position {
            out.push(Violation::new(
                ViolationKind::OutOfOrder,
                rule.name,
                format!(
                    "{} must come before {}",
                    rule.name,
                    table[position - 1].name
                ),
            ));
        }
        position = position.max(at + 1);
        let text = match rule.wraps {
            None => el.text.trim().to_owned(),
            Some(inner) => match el.children.as_slice() {
                [only] if only.local == inner => {
                    if only.ns.as_deref() != Some(OPERATION_NS) {
                        out.push(wrong_ns(inner, OPERATION_NS));
                    }
                    only.text.trim().to_owned()
                }
                _ => {
                    out.push(Violation::new(
                        ViolationKind::Missing,
                        format!("{}/{inner}", rule.name),
                        format!("{} wraps one {inner}", rule.name),
                    ));
                    continue;
                }
            },
        };
        if text.is_empty() {
            if rule.presence == Presence::Required {
                out.push(Violation::new(
                    ViolationKind::Empty,
                    rule.name,
                    "must not be empty",
                ));
            }
        } else if let Some(check) = rule.format
            && let Err(expected) = check(&text)
        {
            out.push(Violation::new(
                ViolationKind::BadFormat,
                rule.name,
                expected,
            ));
        }
        fields.insert(rule.name, text);
    }
    for rule in table {
        if !fields.contains_key(rule.name)
            && matches!(rule.presence, Presence::Required | Presence::Present)
            && !out.iter().any(|v| v.field.starts_with(rule.name))
        {
            out.push(Violation::new(
                ViolationKind::Missing,
                rule.name,
                "required (send it empty when there is no value)",
            ));
        }
    }
    if out.is_empty() {
        Ok(Judged { operation, fields })
    } else {
        Err(out)
    }
}

/// Judges the headers of a SOAP call: `SOAPAction` names the operation (quoted or not), and the
/// content type is the one the gateway expects.
pub fn headers(
    headers: &axum::http::HeaderMap,
    operation: &str,
    content_type: &str,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let action = headers
        .get("soapaction")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"'));
    if action != Some(operation) {
        out.push(Violation::new(
            ViolationKind::BadHeader,
            "SOAPAction",
            format!("expected {operation}"),
        ));
    }
    let got = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !got
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(content_type))
    {
        out.push(Violation::new(
            ViolationKind::BadHeader,
            "content-type",
            format!("expected {content_type}; charset=utf-8"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:dc="http://dancuquocgia.bca">
  <soap:Body>
    <dc:XacThucThongTinCongDan>
      <dc:MaYeuCau>01JDQ3Z6W9K4M2N8P5R7T0V1XA</dc:MaYeuCau>
      <dc:MaDichVu>033</dc:MaDichVu>
      <dc:MaCanBo>CB-0042</dc:MaCanBo>
      <dc:SoDinhDanh>001190012345</dc:SoDinhDanh>
      <dc:SoCMND/>
      <dc:HoVaTen>Nguyễn Văn An</dc:HoVaTen>
    </dc:XacThucThongTinCongDan>
  </soap:Body>
</soap:Envelope>"#;

    fn kinds(xml: &str) -> Vec<(ViolationKind, String)> {
        match request(xml.as_bytes()) {
            Ok(_) => vec![],
            Err(v) => v.into_iter().map(|v| (v.kind, v.field)).collect(),
        }
    }

    #[test]
    fn a_request_by_the_contract_passes_with_its_values() {
        let judged = request(GOOD.as_bytes()).expect("passes");
        assert_eq!(judged.operation, "XacThucThongTinCongDan");
        assert_eq!(judged.get("SoDinhDanh"), "001190012345");
        assert_eq!(judged.get("HoVaTen"), "Nguyễn Văn An");
        assert_eq!(judged.get("SoCMND"), "");
    }

    #[test]
    fn children_out_of_order_are_named() {
        let swapped = GOOD.replace(
            "<dc:MaDichVu>033</dc:MaDichVu>\n      <dc:MaCanBo>CB-0042</dc:MaCanBo>",
            "<dc:MaCanBo>CB-0042</dc:MaCanBo>\n      <dc:MaDichVu>033</dc:MaDichVu>",
        );
        assert_eq!(
            kinds(&swapped),
            vec![(ViolationKind::OutOfOrder, "MaDichVu".into())]
        );
    }

    #[test]
    fn an_unqualified_child_and_a_wrong_operation_namespace_are_named() {
        let unqualified = GOOD.replace(
            "<dc:HoVaTen>Nguyễn Văn An</dc:HoVaTen>",
            "<HoVaTen>Nguyễn Văn An</HoVaTen>",
        );
        assert_eq!(
            kinds(&unqualified),
            vec![(ViolationKind::WrongNamespace, "HoVaTen".into())]
        );
        let other_ns = GOOD.replace("http://dancuquocgia.bca", "http://example.invalid/dancu");
        assert!(kinds(&other_ns).contains(&(
            ViolationKind::WrongNamespace,
            "XacThucThongTinCongDan".into()
        )));
    }

    #[test]
    fn a_missing_child_an_empty_required_one_and_a_bad_number_are_named() {
        let missing = GOOD.replace("<dc:SoCMND/>", "");
        assert_eq!(
            kinds(&missing),
            vec![(ViolationKind::Missing, "SoCMND".into())]
        );
        let empty = GOOD.replace("CB-0042", "");
        assert_eq!(
            kinds(&empty),
            vec![(ViolationKind::Empty, "MaCanBo".into())]
        );
        let short = GOOD.replace("001190012345", "00119001234");
        assert_eq!(
            kinds(&short),
            vec![(ViolationKind::BadFormat, "SoDinhDanh".into())]
        );
    }

    #[test]
    fn a_soap_12_envelope_and_a_dtd_are_refused() {
        let soap12 = GOOD.replace(
            "http://schemas.xmlsoap.org/soap/envelope/",
            "http://www.w3.org/2003/05/soap-envelope",
        );
        assert!(kinds(&soap12).contains(&(ViolationKind::WrongNamespace, "Envelope".into())));
        let dtd = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{}", &GOOD[39..]);
        assert_eq!(
            kinds(&dtd),
            vec![(ViolationKind::Unreadable, "(body)".into())]
        );
    }
}
