//! What each upstream received for a representative record, step and order, field by field, against
//! literals written from the contract (docs/PROTOCOLS.md) — not against the connector's own encoders.
//! A swapped sender and receiver, a mis-mapped phone, COD, time, `HinhThuc` or `KenhThucHien` fails
//! here.

use std::time::Duration;

use serde_json::{Value, json};

use crate::flows::{Api, PORTAL_TOKEN, World};

fn api<'a>(w: &'a World, addr: &str) -> Api<'a> {
    Api {
        rt: &w.rt,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    }
}

#[test]
fn the_portal_receives_the_record_and_the_step_field_by_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (_daemon, addr) = w.daemon(&[]);
    let a = api(&w, &addr);
    let code = "000.00.00.H56-241127-0001";
    let (status, _, body) = a.send(
        reqwest::Method::PUT,
        &format!("/v1/dossiers/{code}"),
        Some(PORTAL_TOKEN),
        None,
        Some(json!({
            "procedure_code": "1.001776",
            "procedure_name": "Đăng ký thành lập hộ kinh doanh",
            "field_code": "G09",
            "field_name": "Thành lập và hoạt động của hộ kinh doanh",
            "owner_name": "Trần Thị Ngọc Ánh",
            "applicant_type": 1,
            "applicant_id": "036188004512",
            "email": "anh@example.vn",
            "phone": "0912345678",
            "summary": "Đăng ký hộ kinh doanh tạp hóa Ngọc Ánh",
            "received_at": "2024-11-27T09:30:00+07:00",
            "due_at": "2024-12-02T10:00:00Z",
            "status": "2",
            "result_by_post": true,
            "channel": "online",
            "handling_unit": "Phòng Tài chính - Kế hoạch",
            "note": "Ghi chú",
            "fees": [{"TenPhiLePhi": "Lệ phí đăng ký", "Gia": "100000"}],
            "extra": {"NoiNopHoSo": "2"}
        })),
    );
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = a.send(
        reqwest::Method::POST,
        &format!("/v1/dossiers/{code}/events"),
        Some(PORTAL_TOKEN),
        None,
        Some(json!({
            "status": "4",
            "occurred_at": "2024-11-27T07:05:00Z",
            "handler": "Phạm Thu Hà",
            "handler_title": "Chuyên viên",
            "department": "Phòng Tài chính - Kế hoạch",
            "content": "Thẩm định hồ sơ",
            "started_at": "2024-11-27T14:05:00+07:00",
            "due_at": "2024-12-02T17:00:00+07:00"
        })),
    );
    assert_eq!(status, 202, "{body}");
    assert!(
        w.wait_until(Duration::from_secs(15), |w| {
            w.national.dossier(code).is_some() && w.national.step_count() >= 1
        }),
        "record and step arrive"
    );
    let record = serde_json::to_value(w.national.dossier(code).expect("record")).expect("json");
    let expected = [
        ("MaHoSo", json!(code)),
        ("MaTTHC", json!("1.001776")),
        ("TenTTHC", json!("Đăng ký thành lập hộ kinh doanh")),
        ("MaLinhVuc", json!("G09")),
        (
            "TenLinhVuc",
            json!("Thành lập và hoạt động của hộ kinh doanh"),
        ),
        ("ChuHoSo", json!("Trần Thị Ngọc Ánh")),
        ("LoaiDoiTuong", json!("1")),
        ("MaDoiTuong", json!("036188004512")),
        ("Email", json!("anh@example.vn")),
        ("SoDienThoai", json!("0912345678")),
        (
            "TrichYeuHoSo",
            json!("Đăng ký hộ kinh doanh tạp hóa Ngọc Ánh"),
        ),
        // yyyyMMddHHmmss in Asia/Ho_Chi_Minh: 10:00Z is 17:00 there.
        ("NgayTiepNhan", json!("20241127093000")),
        ("NgayHenTra", json!("20241202170000")),
        ("NgayTra", json!("")),
        ("NgayKetThucXuLy", json!("")),
        ("TrangThaiHoSo", json!("2")),
        ("HinhThuc", json!("1")),
        ("KenhThucHien", json!("2")),
        ("DonViXuLy", json!("Phòng Tài chính - Kế hoạch")),
        ("GhiChu", json!("Ghi chú")),
        ("TaiLieuNop", json!([])),
        ("DanhSachGiayToKetQua", json!([])),
        (
            "DanhSachLePhi",
            json!([{"TenPhiLePhi": "Lệ phí đăng ký", "Gia": "100000"}]),
        ),
        ("NoiNopHoSo", json!("2")),
    ];
    for (field, value) in &expected {
        assert_eq!(&record[*field], value, "record {field}: {record}");
    }

    let step = w
        .national
        .steps()
        .into_iter()
        .find(|s| s.step.ma_ho_so == code)
        .expect("step");
    let step = serde_json::to_value(step.step).expect("json");
    for (field, value) in [
        ("MaHoSo", code),
        ("NguoiXuLy", "Phạm Thu Hà"),
        ("ChucDanh", "Chuyên viên"),
        // 07:05Z is 14:05 in Vietnam.
        ("ThoiDiemXuLy", "20241127140500"),
        ("PhongBanXuLy", "Phòng Tài chính - Kế hoạch"),
        ("NoiDungXuLy", "Thẩm định hồ sơ"),
        ("TrangThai", "4"),
        ("NgayBatDau", "20241127140500"),
        ("NgayKetThucTheoQuyDinh", "20241202170000"),
    ] {
        assert_eq!(step[field], json!(value), "step {field}: {step}");
    }
}

#[test]
fn vnpost_receives_the_order_field_by_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = World::start(dir.path(), 0.0);
    let (_daemon, addr) = w.daemon(&[]);
    let a = api(&w, &addr);
    let (status, _, body) = a.send(
        reqwest::Method::POST,
        "/v1/shipments",
        Some(PORTAL_TOKEN),
        None,
        Some(json!({
            "dossier_code": "H56.22-241127-0001",
            "kind": "result_delivery",
            "recipient": {"name": "Nguyễn Văn An", "phone": "0912345678",
                          "address": "Số 12 hẻm 34, phường Liên Chiểu", "province_code": "48",
                          "ward_code": "20197", "email": "an@example.vn"},
            "sender": {"name": "Trung tâm Phục vụ hành chính công", "phone": "02363888999",
                       "address": "24 Trần Phú", "province_code": "049", "district_code": "490"},
            "description": "Trả kết quả hồ sơ H56.22-241127-0001",
            "cod_amount": 25000,
            "note": "Giấy chứng nhận đăng ký hộ kinh doanh"
        })),
    );
    assert_eq!(status, 202, "{body}");
    assert!(w.wait_until(Duration::from_secs(10), |w| {
        w.postal.order_body("H56.22-241127-0001").is_some()
    }));
    let order = w.postal.order_body("H56.22-241127-0001").expect("order");
    let expected: Value = json!({
        "CustomerCode": "DVCDEV01",
        "OrderNumber": "H56.22-241127-0001",
        "CODAmount": 25000.0,
        "SenderName": "Trung tâm Phục vụ hành chính công",
        "SenderAddress": "24 Trần Phú",
        "SenderTel": "02363888999",
        "SenderEmail": "",
        // A pre-2025 code (Quảng Nam, 049) goes out as the province that absorbed it.
        "SenderProvince": "48",
        "SenderDistrict": "490",
        "SenderDesc": "Giấy chứng nhận đăng ký hộ kinh doanh",
        "Description": "Trả kết quả hồ sơ H56.22-241127-0001",
        "ReceiverName": "Nguyễn Văn An",
        "ReceiverAddress": "Số 12 hẻm 34, phường Liên Chiểu",
        "ReceiverTel": "0912345678",
        "ReceiverEmail": "an@example.vn",
        "ReceiverProvince": "48"
    });
    let (got, want) = (
        order.as_object().expect("object"),
        expected.as_object().expect("object"),
    );
    for (field, value) in want {
        assert_eq!(got.get(field), Some(value), "{field}: {order}");
    }
    for field in got.keys() {
        assert!(
            want.contains_key(field),
            "{field} sent but not expected (no ReceiverDistrict: none is known): {order}"
        );
    }
}
