//! The portal's JSON: the login and service envelopes, the dossier and progress records (Vietnamese wire
//! names, all values strings), `error_code` that arrives as a number or a string, dates as
//! `yyyyMMddHHmmss` in Asia/Ho_Chi_Minh, and the table from local status words to `TrangThaiHoSo` codes.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::{format_description, offset};

/// Service names.
pub const TRA_CUU_HO_SO: &str = "TraCuuHoSo";
pub const DONG_BO_HO_SO: &str = "DongBoHoSoMC";
pub const CAP_NHAT_TIEN_DO: &str = "CapNhatTienDoHoSoMC";

/// At most this many progress records per `CapNhatTienDoHoSoMC` call.
pub const MAX_STEPS_PER_CALL: usize = 10;

/// `NguoiXuLy` is at most this many characters.
pub const MAX_HANDLER_CHARS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// `error_code` as a number or a string (`0`, `"0"`, `"-3"`); anything else reads as -1.
pub fn error_code<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_i64().unwrap_or(-1),
        Value::String(s) => s.trim().parse().unwrap_or(-1),
        _ => -1,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LoginAnswer {
    #[serde(deserialize_with = "error_code")]
    pub error_code: i64,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The answer to every service call.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ServiceAnswer {
    #[serde(deserialize_with = "error_code")]
    pub error_code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// A service call's body: `{session, madonvi, service, …params}`, serialized straight from borrowed
/// parts (no intermediate JSON tree).
#[derive(Debug, Serialize)]
pub struct Envelope<'a, P> {
    pub session: &'a str,
    pub madonvi: &'a str,
    pub service: &'a str,
    #[serde(flatten)]
    pub params: &'a P,
}

pub fn envelope<'a, P: Serialize>(
    session: &'a str,
    agency_code: &'a str,
    service: &'a str,
    params: &'a P,
) -> Envelope<'a, P> {
    Envelope {
        session,
        madonvi: agency_code,
        service,
        params,
    }
}

/// `TraCuuHoSo`'s parameters.
#[derive(Debug, Serialize)]
pub struct LookupParams<'a> {
    pub mahoso: &'a str,
}

/// `DongBoHoSoMC`'s parameters: one record, created (`"False"`) or updated (`"True"`).
#[derive(Debug, Serialize)]
pub struct SyncParams<'a> {
    #[serde(rename = "isUpdating")]
    pub is_updating: &'static str,
    pub data: [&'a DossierRecord; 1],
}

impl<'a> SyncParams<'a> {
    pub fn new(record: &'a DossierRecord, updating: bool) -> Self {
        SyncParams {
            is_updating: if updating { "True" } else { "False" },
            data: [record],
        }
    }
}

/// `CapNhatTienDoHoSoMC`'s parameters: progress records, owned or borrowed.
#[derive(Debug, Serialize)]
pub struct StepsParams<'a, S: Borrow<Progress> + Serialize> {
    pub data: &'a [S],
}

/// A dossier as `DongBoHoSoMC` carries it. Unknown, province-specific fields pass through in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DossierRecord {
    #[serde(rename = "MaHoSo")]
    pub ma_ho_so: String,
    #[serde(rename = "MaTTHC", default)]
    pub ma_tthc: String,
    #[serde(rename = "TenTTHC", default)]
    pub ten_tthc: String,
    #[serde(rename = "MaLinhVuc", default)]
    pub ma_linh_vuc: String,
    #[serde(rename = "TenLinhVuc", default)]
    pub ten_linh_vuc: String,
    #[serde(rename = "ChuHoSo", default)]
    pub chu_ho_so: String,
    #[serde(rename = "LoaiDoiTuong", default)]
    pub loai_doi_tuong: String,
    #[serde(rename = "MaDoiTuong", default)]
    pub ma_doi_tuong: String,
    #[serde(rename = "Email", default)]
    pub email: String,
    #[serde(rename = "SoDienThoai", default)]
    pub so_dien_thoai: String,
    #[serde(rename = "TrichYeuHoSo", default)]
    pub trich_yeu_ho_so: String,
    #[serde(rename = "NgayTiepNhan", default)]
    pub ngay_tiep_nhan: String,
    #[serde(rename = "NgayHenTra", default)]
    pub ngay_hen_tra: String,
    #[serde(rename = "NgayTra", default)]
    pub ngay_tra: String,
    #[serde(rename = "NgayKetThucXuLy", default)]
    pub ngay_ket_thuc_xu_ly: String,
    #[serde(rename = "TrangThaiHoSo", default)]
    pub trang_thai_ho_so: String,
    #[serde(rename = "HinhThuc", default)]
    pub hinh_thuc: String,
    #[serde(rename = "KenhThucHien", default)]
    pub kenh_thuc_hien: String,
    #[serde(rename = "DonViXuLy", default)]
    pub don_vi_xu_ly: String,
    #[serde(rename = "GhiChu", default)]
    pub ghi_chu: String,
    #[serde(rename = "TaiLieuNop", default)]
    pub tai_lieu_nop: Vec<Value>,
    #[serde(rename = "DanhSachGiayToKetQua", default)]
    pub danh_sach_giay_to_ket_qua: Vec<Value>,
    #[serde(rename = "DanhSachLePhi", default)]
    pub danh_sach_le_phi: Vec<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One processing step as `CapNhatTienDoHoSoMC` carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(rename = "MaHoSo")]
    pub ma_ho_so: String,
    #[serde(rename = "NguoiXuLy", default)]
    pub nguoi_xu_ly: String,
    #[serde(rename = "ChucDanh", default)]
    pub chuc_danh: String,
    #[serde(rename = "ThoiDiemXuLy", default)]
    pub thoi_diem_xu_ly: String,
    #[serde(rename = "PhongBanXuLy", default)]
    pub phong_ban_xu_ly: String,
    #[serde(rename = "NoiDungXuLy", default)]
    pub noi_dung_xu_ly: String,
    #[serde(rename = "TrangThai", default)]
    pub trang_thai: String,
    #[serde(rename = "NgayBatDau", default)]
    pub ngay_bat_dau: String,
    #[serde(rename = "NgayKetThucTheoQuyDinh", default)]
    pub ngay_ket_thuc_theo_quy_dinh: String,
}

/// The handler's name as the portal accepts it: at most 50 characters (never cutting a character).
pub fn handler_name(name: &str) -> String {
    name.trim().chars().take(MAX_HANDLER_CHARS).collect()
}

/// An RFC 3339 time as the portal wants it: `yyyyMMddHHmmss` in Asia/Ho_Chi_Minh (UTC+7, no DST).
pub fn portal_time(rfc3339: &str) -> Result<String, String> {
    let t = OffsetDateTime::parse(rfc3339.trim(), &Rfc3339)
        .map_err(|e| format!("`{rfc3339}` is not an RFC 3339 time: {e}"))?;
    t.to_offset(offset!(+7))
        .format(format_description!(
            "[year][month][day][hour][minute][second]"
        ))
        .map_err(|e| e.to_string())
}

/// An optional time: empty stays `""`, as the portal expects for an absent date.
pub fn portal_time_opt(rfc3339: Option<&str>) -> Result<String, String> {
    match rfc3339.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(String::new()),
        Some(s) => portal_time(s),
    }
}

/// Local status word → `TrangThaiHoSo` code 1–10. A deployment's own table comes from configuration;
/// the default is the OpenCPS convention, and the codes themselves ("1"…"10") always pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMap(pub BTreeMap<String, u8>);

impl Default for StatusMap {
    fn default() -> Self {
        Self(
            [
                ("receiving", 1),
                ("new", 2),
                ("denied", 3),
                ("processing", 4),
                ("waiting", 5),
                ("paying", 6),
                ("cancelled", 7),
                ("unresolved", 8),
                ("releasing", 9),
                ("done", 10),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        )
    }
}

impl StatusMap {
    pub fn code(&self, status: &str) -> Option<u8> {
        let s = status.trim();
        if let Ok(n) = s.parse::<u8>() {
            return (1..=10).contains(&n).then_some(n);
        }
        self.0.get(&s.to_lowercase()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/portal")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn error_code_reads_numbers_and_strings() {
        let a: ServiceAnswer = serde_json::from_str(r#"{"error_code": 0}"#).expect("json");
        let b: ServiceAnswer =
            serde_json::from_str(r#"{"error_code": "3", "message": "đã tồn tại"}"#).expect("json");
        let c: ServiceAnswer = serde_json::from_str(r#"{"error_code": "-3"}"#).expect("json");
        let d: ServiceAnswer = serde_json::from_str(r#"{"error_code": null}"#).expect("json");
        assert_eq!(
            (a.error_code, b.error_code, c.error_code, d.error_code),
            (0, 3, -3, -1)
        );
    }

    #[test]
    fn a_dossier_round_trips_with_its_province_specific_fields() {
        let text = fixture("dossier-record.json");
        let record: DossierRecord = serde_json::from_str(&text).expect("fixture parses");
        assert_eq!(record.ma_ho_so, "000.00.00.H56-241127-0001");
        assert_eq!(record.trang_thai_ho_so, "2");
        assert_eq!(
            record.extra.get("SoGiayToChuHoSo").and_then(Value::as_str),
            Some("036188004512")
        );
        let back: Value = serde_json::to_value(&record).expect("json");
        let original: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back, original, "nothing lost, nothing added");
    }

    #[test]
    fn the_sync_request_envelope_matches_its_golden_fixture() {
        let record: DossierRecord =
            serde_json::from_str(&fixture("dossier-record.json")).expect("record");
        let params = SyncParams::new(&record, false);
        let body = serde_json::to_value(envelope(
            "ss-0123456789abcdef",
            "000.00.00.H56",
            DONG_BO_HO_SO,
            &params,
        ))
        .expect("json");
        let golden: Value = serde_json::from_str(&fixture("dong-bo-request.json")).expect("golden");
        assert_eq!(body, golden);
        let steps: Vec<Progress> = serde_json::from_str(&fixture("progress.json")).expect("steps");
        let params = StepsParams { data: &steps };
        let body = serde_json::to_value(envelope(
            "ss-0123456789abcdef",
            "000.00.00.H56",
            CAP_NHAT_TIEN_DO,
            &params,
        ))
        .expect("json");
        let golden: Value =
            serde_json::from_str(&fixture("cap-nhat-request.json")).expect("golden");
        assert_eq!(body, golden);
    }

    #[test]
    fn login_and_service_answers_read_from_their_fixtures() {
        let login: LoginAnswer =
            serde_json::from_str(&fixture("login-answer.json")).expect("login");
        assert_eq!(
            (login.error_code, login.session.as_deref()),
            (0, Some("ss-0123456789abcdef"))
        );
        let found: ServiceAnswer =
            serde_json::from_str(&fixture("tra-cuu-answer.json")).expect("answer");
        assert_eq!(found.error_code, 0);
        assert_eq!(
            found.result.and_then(|r| r.as_array().map(Vec::len)),
            Some(1)
        );
        let exists: ServiceAnswer =
            serde_json::from_str(&fixture("dong-bo-answer-exists.json")).expect("answer");
        assert_eq!(exists.error_code, 3, "a string error_code");
        let expired: ServiceAnswer =
            serde_json::from_str(&fixture("answer-session-expired.json")).expect("answer");
        assert_eq!(expired.error_code, 2);
    }

    #[test]
    fn progress_reads_from_its_fixture() {
        let steps: Vec<Progress> =
            serde_json::from_str(&fixture("progress.json")).expect("fixture");
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].trang_thai, "4");
    }

    #[test]
    fn times_are_written_in_vietnam_time() {
        assert_eq!(
            portal_time("2024-11-27T02:30:00Z"),
            Ok("20241127093000".into())
        );
        assert_eq!(
            portal_time("2024-11-27T23:59:59+07:00"),
            Ok("20241127235959".into())
        );
        assert_eq!(
            portal_time("2024-12-31T20:00:00Z"),
            Ok("20250101030000".into()),
            "across the new year"
        );
        assert!(portal_time("27/11/2024").is_err());
        assert_eq!(portal_time_opt(None), Ok(String::new()));
        assert_eq!(portal_time_opt(Some("  ")), Ok(String::new()));
    }

    #[test]
    fn statuses_map_through_the_table_and_codes_pass() {
        let map = StatusMap::default();
        assert_eq!(map.code("processing"), Some(4));
        assert_eq!(map.code("DONE"), Some(10));
        assert_eq!(map.code("7"), Some(7));
        assert_eq!(map.code("11"), None);
        assert_eq!(map.code("archived"), None);
    }

    #[test]
    fn the_handler_name_is_cut_at_fifty_characters_not_bytes() {
        let long = "Nguyễn Thị Ngọc Ánh — Phó Giám đốc Trung tâm Phục vụ hành chính công";
        let cut = handler_name(long);
        assert_eq!(cut.chars().count(), 50);
        assert!(long.starts_with(&cut));
    }
}
