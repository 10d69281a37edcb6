//! The portal protocol's request rules, as the contract states them, for the simulator to judge
//! requests by.
//!
//! Written from the contract's field lists, not from [`crate::wire`]: when the client's types and these
//! tables disagree, the simulator refuses what the client sends and a test fails. Every record and step
//! value is a string; an absent date is `""` (so dates are "present, may be empty").

use dvc_upstream::judge::{self, Field, Presence, Type, Violation, ViolationKind, formats};
use serde_json::{Map, Value};

/// Dossier codes: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn dossier_code(s: &str) -> Result<(), &'static str> {
    if (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err("a dossier code: 1 to 64 of A-Z a-z 0-9 . _ -")
    }
}

fn true_or_false(s: &str) -> Result<(), &'static str> {
    if s == "True" || s == "False" {
        Ok(())
    } else {
        Err("\"True\" or \"False\"")
    }
}

/// `POST {auth_path}`.
pub const LOGIN: &[Field] = &[
    Field::new("username", Presence::Required, Type::Str),
    Field::new("password", Presence::Required, Type::Str),
];

/// The fields every service call carries.
const ENVELOPE: [Field; 3] = [
    Field::new("session", Presence::Required, Type::Str),
    Field::new("madonvi", Presence::Required, Type::Str).max(50),
    Field::new("service", Presence::Required, Type::Str),
];

/// `DongBoHoSoMC`'s record. Open: province-specific fields pass through.
pub const RECORD: &[Field] = &[
    Field::new("MaHoSo", Presence::Required, Type::Str).format(dossier_code),
    Field::new("MaTTHC", Presence::Required, Type::Str).max(50),
    Field::new("TenTTHC", Presence::Present, Type::Str),
    Field::new("MaLinhVuc", Presence::Present, Type::Str),
    Field::new("TenLinhVuc", Presence::Present, Type::Str),
    Field::new("ChuHoSo", Presence::Present, Type::Str),
    Field::new("LoaiDoiTuong", Presence::Present, Type::Str).format(formats::one_to_four),
    Field::new("MaDoiTuong", Presence::Present, Type::Str),
    Field::new("Email", Presence::Present, Type::Str).format(formats::email),
    Field::new("SoDienThoai", Presence::Present, Type::Str).format(formats::phone),
    Field::new("TrichYeuHoSo", Presence::Present, Type::Str),
    Field::new("NgayTiepNhan", Presence::Present, Type::Str).format(formats::portal_time),
    Field::new("NgayHenTra", Presence::Present, Type::Str).format(formats::portal_time),
    Field::new("NgayTra", Presence::Present, Type::Str).format(formats::portal_time),
    Field::new("NgayKetThucXuLy", Presence::Present, Type::Str).format(formats::portal_time),
    Field::new("TrangThaiHoSo", Presence::Required, Type::Str).format(formats::portal_status),
    Field::new("HinhThuc", Presence::Present, Type::Str).format(formats::zero_or_one),
    Field::new("KenhThucHien", Presence::Present, Type::Str).format(formats::one_to_three),
    Field::new("DonViXuLy", Presence::Present, Type::Str),
    Field::new("GhiChu", Presence::Present, Type::Str),
    Field::new("TaiLieuNop", Presence::Present, Type::Array),
    Field::new("DanhSachGiayToKetQua", Presence::Present, Type::Array),
    Field::new("DanhSachLePhi", Presence::Present, Type::Array),
];

/// `CapNhatTienDoHoSoMC`'s step. Closed.
pub const PROGRESS: &[Field] = &[
    Field::new("MaHoSo", Presence::Required, Type::Str).format(dossier_code),
    Field::new("NguoiXuLy", Presence::Required, Type::Str).max(50),
    Field::new("ChucDanh", Presence::Present, Type::Str),
    Field::new("ThoiDiemXuLy", Presence::Required, Type::Str).format(formats::portal_time),
    Field::new("PhongBanXuLy", Presence::Present, Type::Str),
    Field::new("NoiDungXuLy", Presence::Required, Type::Str),
    Field::new("TrangThai", Presence::Required, Type::Str).format(formats::portal_status),
    Field::new("NgayBatDau", Presence::Present, Type::Str).format(formats::portal_time),
    Field::new("NgayKetThucTheoQuyDinh", Presence::Present, Type::Str).format(formats::portal_time),
];

/// At most this many steps in one `CapNhatTienDoHoSoMC`.
pub const MAX_STEPS: usize = 10;

fn with(extra: &[Field]) -> Vec<Field> {
    ENVELOPE.iter().chain(extra).copied().collect()
}

/// A service's item rules: the table, whether it is open to other fields, and the most items per call.
type Items = Option<(&'static [Field], bool, usize)>;

/// Checks a service call's body (envelope and the service's own fields and items).
pub fn service_call(call: &Map<String, Value>) -> Vec<Violation> {
    let service = call.get("service").and_then(Value::as_str).unwrap_or("");
    let (table, items): (Vec<Field>, Items) = match service {
        "TraCuuHoSo" => (
            with(&[Field::new("mahoso", Presence::Required, Type::Str).format(dossier_code)]),
            None,
        ),
        "DongBoHoSoMC" => (
            with(&[
                Field::new("isUpdating", Presence::Required, Type::Str).format(true_or_false),
                Field::new("data", Presence::Required, Type::Array),
            ]),
            Some((RECORD, true, usize::MAX)),
        ),
        "CapNhatTienDoHoSoMC" => (
            with(&[Field::new("data", Presence::Required, Type::Array)]),
            Some((PROGRESS, false, MAX_STEPS)),
        ),
        // The service itself is judged by the portal's answer (unknown service), not as a violation.
        _ => (ENVELOPE.to_vec(), None),
    };
    let known = matches!(
        service,
        "TraCuuHoSo" | "DongBoHoSoMC" | "CapNhatTienDoHoSoMC"
    );
    let mut out = judge::object(call, "", &table, !known);
    if let (Some((rules, open, max)), Some(Value::Array(data))) = (items, call.get("data")) {
        if data.len() > max {
            out.push(Violation::new(
                ViolationKind::BadFormat,
                "data",
                format!("at most {max} items per call"),
            ));
        }
        for (i, item) in data.iter().enumerate() {
            match item {
                Value::Object(obj) => {
                    out.extend(judge::object(obj, &format!("data[{i}]"), rules, open));
                }
                _ => out.push(Violation::new(
                    ViolationKind::WrongType,
                    format!("data[{i}]"),
                    "expected an object",
                )),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<(ViolationKind, String)> {
        let Value::Object(map) = v else {
            unreachable!()
        };
        service_call(&map)
            .into_iter()
            .map(|v| (v.kind, v.field))
            .collect()
    }

    fn step() -> Value {
        json!({"MaHoSo": "H56-1", "NguoiXuLy": "Lê Văn Bình", "ChucDanh": "", "ThoiDiemXuLy": "20241127093000",
               "PhongBanXuLy": "", "NoiDungXuLy": "Tiếp nhận", "TrangThai": "2", "NgayBatDau": "",
               "NgayKetThucTheoQuyDinh": ""})
    }

    #[test]
    fn a_well_formed_step_call_passes() {
        let call = json!({"session": "s", "madonvi": "H56", "service": "CapNhatTienDoHoSoMC", "data": [step()]});
        assert_eq!(fields(call), vec![]);
    }

    #[test]
    fn a_step_status_as_a_number_and_a_missing_time_are_named() {
        let mut s = step();
        s["TrangThai"] = json!(2);
        s.as_object_mut().map(|o| o.remove("ThoiDiemXuLy"));
        let call = json!({"session": "s", "madonvi": "H56", "service": "CapNhatTienDoHoSoMC", "data": [s]});
        assert_eq!(
            fields(call),
            vec![
                (ViolationKind::Missing, "data[0].ThoiDiemXuLy".into()),
                (ViolationKind::WrongType, "data[0].TrangThai".into()),
            ]
        );
    }

    #[test]
    fn eleven_steps_and_an_unknown_envelope_field_are_refused() {
        let call = json!({"session": "s", "madonvi": "H56", "service": "CapNhatTienDoHoSoMC",
                          "data": vec![step(); 11], "extra": 1});
        let got = fields(call);
        assert!(
            got.contains(&(ViolationKind::BadFormat, "data".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&(ViolationKind::UnknownField, "extra".into())),
            "{got:?}"
        );
    }

    #[test]
    fn the_updating_flag_is_a_capitalised_string() {
        let call = json!({"session": "s", "madonvi": "H56", "service": "DongBoHoSoMC",
                          "isUpdating": false, "data": []});
        let got = fields(call);
        assert!(
            got.contains(&(ViolationKind::WrongType, "isUpdating".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&(ViolationKind::Empty, "data".into())),
            "{got:?}"
        );
    }
}
