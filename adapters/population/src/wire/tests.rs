//! The codec against the fixtures of `fixtures/population/`, which are written by hand from the contract
//! and never regenerated from the codec: when the two disagree, the codec is what changed.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/population")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Compares byte for byte with the hand-written fixture.
fn golden(name: &str, actual: &str) {
    let expected = String::from_utf8(read(name)).expect("utf-8 fixture");
    assert_eq!(
        actual, expected,
        "{name} differs from what the codec writes"
    );
}

pub(crate) fn sample_existence() -> ExistenceRequest {
    ExistenceRequest {
        ma_yeu_cau: "01JDQ3Z6W9K4M2N8P5R7T0V1XA".into(),
        ma_dich_vu: "033".into(),
        ma_can_bo: "CB-0042".into(),
        so_dinh_danh: "001190012345".into(),
        so_cmnd: String::new(),
        ho_va_ten: "Nguyễn Văn An".into(),
    }
}

pub(crate) fn sample_record_request() -> RecordRequest {
    RecordRequest {
        ma_yeu_cau: "01JDQ3Z6W9K4M2N8P5R7T0V1XB".into(),
        ma_dvc: "1.001776".into(),
        ma_tich_hop: "DVC-H56".into(),
        ma_don_vi: "000.00.00.H56".into(),
        ma_can_bo: "CB-0042".into(),
        so_dinh_danh: "036188004512".into(),
        so_cmnd: "162345678".into(),
        ho_va_ten: "Trần Thị Ngọc Ánh".into(),
        ngay_thang_nam: "19880314".into(),
    }
}

pub(crate) fn sample_citizen() -> CongDan {
    CongDan {
        so_dinh_danh: "036188004512".into(),
        so_cmnd: "162345678".into(),
        ho: "Trần".into(),
        chu_dem: "Thị Ngọc".into(),
        ten: "Ánh".into(),
        gioi_tinh: "2".into(),
        nam: "1988".into(),
        ngay_thang_nam: "19880314".into(),
        noi_dang_ky_khai_sinh_tinh: "36".into(),
    }
}

#[test]
fn the_existence_request_matches_its_golden_fixture_and_reads_back() {
    let request = Request::Existence(sample_existence());
    golden("xac-thuc-request.xml", &request.encode());
    assert_eq!(Request::decode(&read("xac-thuc-request.xml")), Ok(request));
}

#[test]
fn the_record_request_matches_its_golden_fixture_and_reads_back() {
    let request = Request::Record(sample_record_request());
    golden("xac-minh-request.xml", &request.encode());
    assert_eq!(Request::decode(&read("xac-minh-request.xml")), Ok(request));
}

#[test]
fn the_existence_answers_match_their_fixtures() {
    golden(
        "xac-thuc-response-true.xml",
        &Response::Exists(true).encode(),
    );
    golden(
        "xac-thuc-response-false.xml",
        &Response::Exists(false).encode(),
    );
    assert_eq!(
        Response::decode(&read("xac-thuc-response-true.xml")),
        Ok(Response::Exists(true))
    );
    assert_eq!(
        Response::decode(&read("xac-thuc-response-false.xml")),
        Ok(Response::Exists(false))
    );
}

#[test]
fn the_record_answers_match_their_fixtures() {
    let found = Response::Records(vec![sample_citizen()]);
    golden("xac-minh-response.xml", &found.encode());
    assert_eq!(Response::decode(&read("xac-minh-response.xml")), Ok(found));
    golden(
        "xac-minh-response-empty.xml",
        &Response::Records(vec![]).encode(),
    );
    assert_eq!(
        Response::decode(&read("xac-minh-response-empty.xml")),
        Ok(Response::Records(vec![]))
    );
}

#[test]
fn a_fault_matches_its_fixture() {
    let fault = Response::Fault {
        code: "soap:Server".into(),
        message: "Hệ thống CSDLQGDC đang bận, vui lòng thử lại".into(),
    };
    golden("fault.xml", &fault.encode());
    assert_eq!(Response::decode(&read("fault.xml")), Ok(fault));
}

#[test]
fn another_deployments_prefixes_casing_and_whole_name_are_understood() {
    let Ok(Response::Records(citizens)) = Response::decode(&read("xac-minh-response-variant.xml"))
    else {
        panic!("variant not understood");
    };
    assert_eq!(citizens.len(), 1);
    let c = &citizens[0];
    assert_eq!(c.full_name(), "TRẦN THỊ NGỌC ÁNH");
    assert_eq!(c.birth_date(), Some(BirthDate::Year(1988)));
    assert_eq!(c.sex(), Some(Sex::Female));
    assert_eq!(c.noi_dang_ky_khai_sinh_tinh, "36");
}

#[test]
fn a_billion_laughs_payload_is_refused_without_expansion() {
    // Refused at its DOCTYPE, before any entity is declared, let alone expanded (an expansion would be
    // gigabytes; the refusal is the first event of the reader).
    assert_eq!(
        Response::decode(&read("hostile/billion-laughs.xml")),
        Err(XmlError::Dtd)
    );
}

#[test]
fn an_external_entity_is_refused_and_no_file_is_read() {
    assert_eq!(
        Response::decode(&read("hostile/xxe.xml")),
        Err(XmlError::Dtd)
    );
    assert_eq!(
        Response::decode(&read("hostile/undeclared-entity.xml")),
        Err(XmlError::Entity("xxe".into()))
    );
}

#[test]
fn garbage_is_classified_not_panicked_on() {
    assert_eq!(Response::decode(b"\xff\xfe<a/>"), Err(XmlError::NotUtf8));
    assert!(matches!(
        Response::decode(b"<soap:Envelope><soap:Body><TonTai>tr"),
        Err(XmlError::Syntax(_))
    ));
    assert!(matches!(
        Response::decode(b"{\"error\": 1}"),
        Err(XmlError::Syntax(_))
    ));
    assert_eq!(
        Response::decode(b"<Envelope><Body><Other/></Body></Envelope>").map_err(|e| e.code()),
        Err("xml_unexpected_shape")
    );
    let deep = format!(
        "<Envelope><Body>{}{}</Body></Envelope>",
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    assert_eq!(Response::decode(deep.as_bytes()), Err(XmlError::TooLarge));
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Response::decode(&bytes);
        let _ = Request::decode(&bytes);
    }

    #[test]
    fn any_text_survives_a_round_trip(name in "\\PC{0,40}", officer in "[ -~]{0,20}") {
        let mut r = sample_existence();
        r.ho_va_ten = name.trim().to_owned();
        r.ma_can_bo = officer.trim().to_owned();
        let request = Request::Existence(r);
        prop_assert_eq!(Request::decode(request.encode().as_bytes()), Ok(request));
    }
}
