//! The SOAP 1.1 messages of the two operations (docs/PROTOCOLS.md, the population database), written and read here
//! for both the client and the simulator.
//!
//! Reading is deliberately strict where it matters for safety and lenient where deployments differ:
//! a DTD or any entity other than XML's five predefined ones is refused (no expansion, no external
//! fetch); depth and element count are bounded; elements are matched by local name, whatever their prefix
//! or namespace, and without regard to letter case (`CongdanCollection` / `CongDanCollection`).

use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::cccd::Sex;
use crate::matching::BirthDate;

pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const REQUEST_NS: &str = "http://dancuquocgia.bca";
pub const RESULT_NS: &str = "http://www.mic.gov.vn/dancu/1.0";

const MAX_DEPTH: usize = 32;
const MAX_ELEMENTS: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Operation {
    /// Existence check: `TonTai` true/false.
    XacThucThongTinCongDan,
    /// Full record: `CongdanCollection/CongDan`.
    XacMinhThongTinNhanThan,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::XacThucThongTinCongDan => "XacThucThongTinCongDan",
            Operation::XacMinhThongTinNhanThan => "XacMinhThongTinNhanThan",
        }
    }

    fn parse(local_name: &str) -> Option<Operation> {
        [
            Operation::XacThucThongTinCongDan,
            Operation::XacMinhThongTinNhanThan,
        ]
        .into_iter()
        .find(|op| op.as_str().eq_ignore_ascii_case(local_name))
    }
}

/// `XacThucThongTinCongDan` request, elements in the spec's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistenceRequest {
    pub ma_yeu_cau: String,
    pub ma_dich_vu: String,
    pub ma_can_bo: String,
    pub so_dinh_danh: String,
    pub so_cmnd: String,
    pub ho_va_ten: String,
}

/// `XacMinhThongTinNhanThan` request, elements in the spec's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordRequest {
    pub ma_yeu_cau: String,
    pub ma_dvc: String,
    pub ma_tich_hop: String,
    pub ma_don_vi: String,
    pub ma_can_bo: String,
    pub so_dinh_danh: String,
    pub so_cmnd: String,
    pub ho_va_ten: String,
    /// `yyyyMMdd` or `yyyy`.
    pub ngay_thang_nam: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Existence(ExistenceRequest),
    Record(RecordRequest),
}

/// The fields of a `CongDan` record the connector uses; everything else is never read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CongDan {
    pub so_dinh_danh: String,
    pub so_cmnd: String,
    pub ho: String,
    pub chu_dem: String,
    /// The given name, or the whole name where a deployment puts it all here.
    pub ten: String,
    /// `1` male, `2` female.
    pub gioi_tinh: String,
    /// `yyyy`, may be empty.
    pub nam: String,
    /// `yyyyMMdd`, may be empty.
    pub ngay_thang_nam: String,
    /// Province code of the birth registration (`NoiDangKyKhaiSinh/MaTinhThanh`).
    pub noi_dang_ky_khai_sinh_tinh: String,
}

impl CongDan {
    pub fn full_name(&self) -> String {
        [&self.ho, &self.chu_dem, &self.ten]
            .into_iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The most precise date the record has.
    pub fn birth_date(&self) -> Option<BirthDate> {
        BirthDate::parse_compact(&self.ngay_thang_nam)
            .or_else(|| BirthDate::parse_compact(&self.nam))
    }

    pub fn sex(&self) -> Option<Sex> {
        Sex::from_code(&self.gioi_tinh)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Exists(bool),
    Records(Vec<CongDan>),
    Fault { code: String, message: String },
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("a DTD is not allowed")]
    Dtd,
    #[error("entity reference &{0}; is not allowed")]
    Entity(String),
    #[error("nested deeper than {MAX_DEPTH} elements or more than {MAX_ELEMENTS} elements")]
    TooLarge,
    #[error("malformed XML: {0}")]
    Syntax(String),
    #[error("no {0} element")]
    Missing(&'static str),
}

impl XmlError {
    /// Stable code for error classification and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            XmlError::NotUtf8 => "xml_not_utf8",
            XmlError::Dtd => "xml_dtd_refused",
            XmlError::Entity(_) => "xml_entity_refused",
            XmlError::TooLarge => "xml_too_large",
            XmlError::Syntax(_) => "xml_malformed",
            XmlError::Missing(_) => "xml_unexpected_shape",
        }
    }
}

fn esc(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

fn envelope(xmlns_extra: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP_NS}\"{xmlns_extra}>\n  <soap:Header/>\n  <soap:Body>\n{body}  </soap:Body>\n</soap:Envelope>\n"
    )
}

fn elements(prefix: &str, fields: &[(&str, &str)], indent: &str) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        let _ = writeln!(
            out,
            "{indent}<{prefix}{name}>{}</{prefix}{name}>",
            esc(value)
        );
    }
    out
}

impl Request {
    pub fn operation(&self) -> Operation {
        match self {
            Request::Existence(_) => Operation::XacThucThongTinCongDan,
            Request::Record(_) => Operation::XacMinhThongTinNhanThan,
        }
    }

    pub fn request_id(&self) -> &str {
        match self {
            Request::Existence(r) => &r.ma_yeu_cau,
            Request::Record(r) => &r.ma_yeu_cau,
        }
    }

    pub fn citizen_id(&self) -> &str {
        match self {
            Request::Existence(r) => &r.so_dinh_danh,
            Request::Record(r) => &r.so_dinh_danh,
        }
    }

    pub fn officer(&self) -> &str {
        match self {
            Request::Existence(r) => &r.ma_can_bo,
            Request::Record(r) => &r.ma_can_bo,
        }
    }

    /// The SOAP envelope, with the request namespace bound to `dc`.
    pub fn encode(&self) -> String {
        let op = self.operation().as_str();
        let inner = match self {
            Request::Existence(r) => elements(
                "dc:",
                &[
                    ("MaYeuCau", &r.ma_yeu_cau),
                    ("MaDichVu", &r.ma_dich_vu),
                    ("MaCanBo", &r.ma_can_bo),
                    ("SoDinhDanh", &r.so_dinh_danh),
                    ("SoCMND", &r.so_cmnd),
                    ("HoVaTen", &r.ho_va_ten),
                ],
                "      ",
            ),
            Request::Record(r) => {
                let mut s = elements(
                    "dc:",
                    &[
                        ("MaYeuCau", &r.ma_yeu_cau),
                        ("MaDVC", &r.ma_dvc),
                        ("MaTichHop", &r.ma_tich_hop),
                        ("MaDonVi", &r.ma_don_vi),
                        ("MaCanBo", &r.ma_can_bo),
                        ("SoDinhDanh", &r.so_dinh_danh),
                        ("SoCMND", &r.so_cmnd),
                        ("HoVaTen", &r.ho_va_ten),
                    ],
                    "      ",
                );
                let _ = writeln!(
                    s,
                    "      <dc:NgayThangNamSinh>\n        <dc:NgayThangNam>{}</dc:NgayThangNam>\n      </dc:NgayThangNamSinh>",
                    esc(&r.ngay_thang_nam)
                );
                s
            }
        };
        envelope(
            &format!(" xmlns:dc=\"{REQUEST_NS}\""),
            &format!("    <dc:{op}>\n{inner}    </dc:{op}>\n"),
        )
    }

    /// Reads a request (the simulator's side).
    pub fn decode(xml: &[u8]) -> Result<Request, XmlError> {
        let root = parse(xml)?;
        let body = root.find("Body").ok_or(XmlError::Missing("Body"))?;
        let op_node = body
            .children
            .first()
            .ok_or(XmlError::Missing("operation"))?;
        let op = Operation::parse(&op_node.name).ok_or(XmlError::Missing("known operation"))?;
        let t = |name| op_node.child_text(name);
        Ok(match op {
            Operation::XacThucThongTinCongDan => Request::Existence(ExistenceRequest {
                ma_yeu_cau: t("MaYeuCau"),
                ma_dich_vu: t("MaDichVu"),
                ma_can_bo: t("MaCanBo"),
                so_dinh_danh: t("SoDinhDanh"),
                so_cmnd: t("SoCMND"),
                ho_va_ten: t("HoVaTen"),
            }),
            Operation::XacMinhThongTinNhanThan => Request::Record(RecordRequest {
                ma_yeu_cau: t("MaYeuCau"),
                ma_dvc: t("MaDVC"),
                ma_tich_hop: t("MaTichHop"),
                ma_don_vi: t("MaDonVi"),
                ma_can_bo: t("MaCanBo"),
                so_dinh_danh: t("SoDinhDanh"),
                so_cmnd: t("SoCMND"),
                ho_va_ten: t("HoVaTen"),
                ngay_thang_nam: op_node
                    .child("NgayThangNamSinh")
                    .map(|n| n.child_text("NgayThangNam"))
                    .unwrap_or_default(),
            }),
        })
    }
}

impl Response {
    /// The SOAP envelope as the simulator sends it (records under an `ns2` prefix, the existence answer
    /// in a default namespace, so that clients must match by local name).
    pub fn encode(&self) -> String {
        match self {
            Response::Exists(found) => envelope(
                "",
                &format!(
                    "    <KetQuaXacThucResponse xmlns=\"{RESULT_NS}\">\n      <TonTai>{found}</TonTai>\n    </KetQuaXacThucResponse>\n"
                ),
            ),
            Response::Records(citizens) => {
                let mut body = format!("    <ns2:CongdanCollection xmlns:ns2=\"{RESULT_NS}\">\n");
                for c in citizens {
                    body.push_str("      <ns2:CongDan>\n");
                    body.push_str(&elements(
                        "ns2:",
                        &[("SoDinhDanh", &c.so_dinh_danh), ("SoCMND", &c.so_cmnd)],
                        "        ",
                    ));
                    let _ = writeln!(
                        body,
                        "        <ns2:HoVaTen>\n{}        </ns2:HoVaTen>",
                        elements(
                            "ns2:",
                            &[("Ho", &c.ho), ("ChuDem", &c.chu_dem), ("Ten", &c.ten)],
                            "          "
                        )
                    );
                    body.push_str(&elements("ns2:", &[("GioiTinh", &c.gioi_tinh)], "        "));
                    let _ = writeln!(
                        body,
                        "        <ns2:NgayThangNamSinh>\n{}        </ns2:NgayThangNamSinh>",
                        elements(
                            "ns2:",
                            &[("Nam", &c.nam), ("NgayThangNam", &c.ngay_thang_nam)],
                            "          "
                        )
                    );
                    let _ = writeln!(
                        body,
                        "        <ns2:NoiDangKyKhaiSinh>\n{}        </ns2:NoiDangKyKhaiSinh>",
                        elements(
                            "ns2:",
                            &[
                                ("MaTinhThanh", &c.noi_dang_ky_khai_sinh_tinh),
                                ("QuocGia", "VN")
                            ],
                            "          "
                        )
                    );
                    body.push_str("      </ns2:CongDan>\n");
                }
                body.push_str("    </ns2:CongdanCollection>\n");
                envelope("", &body)
            }
            Response::Fault { code, message } => envelope(
                "",
                &format!(
                    "    <soap:Fault>\n      <faultcode>{}</faultcode>\n      <faultstring>{}</faultstring>\n    </soap:Fault>\n",
                    esc(code),
                    esc(message)
                ),
            ),
        }
    }

    /// Reads an answer (the client's side).
    pub fn decode(xml: &[u8]) -> Result<Response, XmlError> {
        let root = parse(xml)?;
        let body = root.find("Body").ok_or(XmlError::Missing("Body"))?;
        if let Some(fault) = body.find("Fault") {
            return Ok(Response::Fault {
                code: fault.child_text("faultcode"),
                message: fault.child_text("faultstring"),
            });
        }
        if let Some(found) = body.find("TonTai") {
            return match found.text.trim() {
                "true" | "1" => Ok(Response::Exists(true)),
                "false" | "0" => Ok(Response::Exists(false)),
                _ => Err(XmlError::Missing("boolean TonTai")),
            };
        }
        let collection = body
            .find("CongdanCollection")
            .ok_or(XmlError::Missing("TonTai or CongdanCollection"))?;
        let citizens = collection
            .children
            .iter()
            .filter(|n| n.name.eq_ignore_ascii_case("CongDan"))
            .map(|n| {
                let name = n.child("HoVaTen");
                let whole_name = name.map(|h| h.text.trim().to_owned()).unwrap_or_default();
                let dob = n.child("NgayThangNamSinh");
                CongDan {
                    so_dinh_danh: n.child_text("SoDinhDanh"),
                    so_cmnd: n.child_text("SoCMND"),
                    ho: name.map(|h| h.child_text("Ho")).unwrap_or_default(),
                    chu_dem: name.map(|h| h.child_text("ChuDem")).unwrap_or_default(),
                    // Some deployments send HoVaTen as plain text instead of Ho/ChuDem/Ten.
                    ten: name
                        .map(|h| h.child_text("Ten"))
                        .filter(|t| !t.is_empty())
                        .unwrap_or(whole_name),
                    gioi_tinh: n.child_text("GioiTinh"),
                    nam: dob.map(|d| d.child_text("Nam")).unwrap_or_default(),
                    ngay_thang_nam: dob
                        .map(|d| d.child_text("NgayThangNam"))
                        .unwrap_or_default(),
                    noi_dang_ky_khai_sinh_tinh: n
                        .child("NoiDangKyKhaiSinh")
                        .map(|p| p.child_text("MaTinhThanh"))
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::Records(citizens))
    }
}

/// A simplified element tree: local names and text.
#[derive(Debug, Default)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    fn child_text(&self, name: &str) -> String {
        self.child(name)
            .map(|c| c.text.trim().to_owned())
            .unwrap_or_default()
    }

    /// Depth-first search for a descendant (or self).
    fn find(&self, name: &str) -> Option<&Node> {
        if self.name.eq_ignore_ascii_case(name) {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }
}

fn parse(xml: &[u8]) -> Result<Node, XmlError> {
    let text = std::str::from_utf8(xml).map_err(|_| XmlError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Node> = vec![Node::default()];
    let mut count = 0usize;
    let syntax = |e: quick_xml::Error| XmlError::Syntax(e.to_string());
    loop {
        match reader.read_event().map_err(syntax)? {
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Start(e) => {
                count += 1;
                if stack.len() > MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                let name = e.local_name().as_ref().to_owned();
                stack.push(Node {
                    name,
                    ..Node::default()
                });
            }
            Event::Empty(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                let name = e.local_name().as_ref().to_owned();
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(Node {
                        name,
                        ..Node::default()
                    });
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| XmlError::Syntax("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Err(XmlError::Syntax("unbalanced end tag".into())),
                }
            }
            Event::Text(t) => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch,
                    Ok(None) => match &*r.xml10_content() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(XmlError::Entity(other.chars().take(32).collect())),
                    },
                    Err(e) => return Err(syntax(e)),
                };
                if let Some(node) = stack.last_mut() {
                    node.text.push(resolved);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if stack.len() != 1 {
        return Err(XmlError::Syntax("document ended inside an element".into()));
    }
    let root = stack.pop().unwrap_or_default();
    if root.children.is_empty() {
        return Err(XmlError::Syntax("no element".into()));
    }
    Ok(root)
}

#[cfg(test)]
mod tests;
