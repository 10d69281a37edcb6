//! Errors as the portal sees them: RFC 9457 `application/problem+json` with a stable machine `code`,
//! English or Vietnamese text (`Accept-Language: vi`), and `errors: [{field, code, message}]` for
//! validation. No internal error text ever reaches a response; the log gets the detail.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The language of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Vi,
}

impl Lang {
    /// `vi` when the first language the client prefers is Vietnamese.
    pub fn from_header(value: Option<&str>) -> Lang {
        let first = value
            .and_then(|v| v.split(',').next())
            .map(|l| {
                l.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if first == "vi" || first.starts_with("vi-") {
            Lang::Vi
        } else {
            Lang::En
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Lang, Self::Rejection> {
        Ok(Lang::from_header(
            parts
                .headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        ))
    }
}

/// Every error the API answers, by stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    InvalidBody,
    UnsupportedMediaType,
    BodyTooLarge,
    InvalidQuery,
    InvalidJobId,
    WrongState,
    StoreUnavailable,
    Internal,
    ValidationFailed,
    InvalidCitizenId,
    InvalidDossierCode,
    InvalidIdempotencyKey,
    IdempotencyKeyReused,
    ShipmentFinal,
    UpstreamNotConfigured,
    RateLimited,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::InvalidBody => "invalid_body",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::BodyTooLarge => "body_too_large",
            Code::InvalidQuery => "invalid_query",
            Code::InvalidJobId => "invalid_job_id",
            Code::WrongState => "wrong_state",
            Code::StoreUnavailable => "store_unavailable",
            Code::Internal => "internal_error",
            Code::ValidationFailed => "validation_failed",
            Code::InvalidCitizenId => "invalid_citizen_id",
            Code::InvalidDossierCode => "invalid_dossier_code",
            Code::InvalidIdempotencyKey => "invalid_idempotency_key",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::ShipmentFinal => "shipment_final",
            Code::UpstreamNotConfigured => "upstream_not_configured",
            Code::RateLimited => "rate_limited",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::InvalidBody | Code::InvalidQuery | Code::InvalidJobId => StatusCode::BAD_REQUEST,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::WrongState => StatusCode::CONFLICT,
            Code::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::ValidationFailed | Code::InvalidCitizenId => StatusCode::UNPROCESSABLE_ENTITY,
            Code::InvalidDossierCode | Code::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            Code::IdempotencyKeyReused | Code::ShipmentFinal => StatusCode::CONFLICT,
            Code::UpstreamNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// (title, detail) in the requested language.
    fn text(self, lang: Lang) -> (&'static str, &'static str) {
        match (self, lang) {
            (Code::Unauthorized, Lang::En) => ("Unauthorized", "A valid bearer token is required."),
            (Code::Unauthorized, Lang::Vi) => {
                ("Chưa xác thực", "Cần mã truy cập (bearer token) hợp lệ.")
            }
            (Code::Forbidden, Lang::En) => (
                "Forbidden",
                "The token does not have the scope this request needs.",
            ),
            (Code::Forbidden, Lang::Vi) => (
                "Không có quyền",
                "Mã truy cập không có phạm vi quyền cần cho yêu cầu này.",
            ),
            (Code::NotFound, Lang::En) => ("Not Found", "No such resource."),
            (Code::NotFound, Lang::Vi) => ("Không tìm thấy", "Không có tài nguyên này."),
            (Code::MethodNotAllowed, Lang::En) => (
                "Method Not Allowed",
                "This method is not allowed on this resource.",
            ),
            (Code::MethodNotAllowed, Lang::Vi) => (
                "Phương thức không được phép",
                "Tài nguyên này không nhận phương thức này.",
            ),
            (Code::InvalidBody, Lang::En) => (
                "Invalid request body",
                "The request body is not valid; see errors.",
            ),
            (Code::InvalidBody, Lang::Vi) => (
                "Nội dung yêu cầu không hợp lệ",
                "Nội dung yêu cầu không hợp lệ; xem danh sách lỗi.",
            ),
            (Code::UnsupportedMediaType, Lang::En) => (
                "Unsupported Media Type",
                "Send the body as application/json.",
            ),
            (Code::UnsupportedMediaType, Lang::Vi) => (
                "Kiểu nội dung không được hỗ trợ",
                "Hãy gửi nội dung dạng application/json.",
            ),
            (Code::BodyTooLarge, Lang::En) => (
                "Payload Too Large",
                "The request body is larger than the configured limit.",
            ),
            (Code::BodyTooLarge, Lang::Vi) => (
                "Nội dung quá lớn",
                "Nội dung yêu cầu vượt quá giới hạn cấu hình.",
            ),
            (Code::InvalidQuery, Lang::En) => (
                "Invalid query",
                "A query parameter is not valid; see errors.",
            ),
            (Code::InvalidQuery, Lang::Vi) => (
                "Tham số truy vấn không hợp lệ",
                "Có tham số truy vấn không hợp lệ; xem danh sách lỗi.",
            ),
            (Code::InvalidJobId, Lang::En) => {
                ("Invalid job id", "A job id is a 26-character ULID.")
            }
            (Code::InvalidJobId, Lang::Vi) => (
                "Mã công việc không hợp lệ",
                "Mã công việc là chuỗi ULID 26 ký tự.",
            ),
            (Code::WrongState, Lang::En) => (
                "Wrong state",
                "The job is not in a state that allows this action.",
            ),
            (Code::WrongState, Lang::Vi) => (
                "Trạng thái không phù hợp",
                "Công việc không ở trạng thái cho phép thao tác này.",
            ),
            (Code::StoreUnavailable, Lang::En) => (
                "Service Unavailable",
                "The connector cannot reach its store; nothing was accepted. Retry later.",
            ),
            (Code::StoreUnavailable, Lang::Vi) => (
                "Dịch vụ tạm thời không sẵn sàng",
                "Kết nối không truy cập được kho lưu trữ; chưa tiếp nhận gì. Hãy thử lại sau.",
            ),
            (Code::Internal, Lang::En) => (
                "Internal Server Error",
                "An unexpected error occurred; it has been logged.",
            ),
            (Code::Internal, Lang::Vi) => (
                "Lỗi hệ thống",
                "Đã xảy ra lỗi không mong muốn; lỗi đã được ghi nhận.",
            ),
            (Code::ValidationFailed, Lang::En) => (
                "Validation failed",
                "Some fields are not valid; see errors. Nothing was accepted.",
            ),
            (Code::ValidationFailed, Lang::Vi) => (
                "Dữ liệu không hợp lệ",
                "Có trường dữ liệu không hợp lệ; xem danh sách lỗi. Chưa tiếp nhận gì.",
            ),
            (Code::InvalidCitizenId, Lang::En) => (
                "Invalid citizen ID",
                "The citizen ID number is not structurally valid for this person; see errors. \
                 The population database was not asked.",
            ),
            (Code::InvalidCitizenId, Lang::Vi) => (
                "Số định danh không hợp lệ",
                "Số định danh cá nhân không hợp lệ về cấu trúc với thông tin đã khai; xem danh sách lỗi. \
                 Chưa gửi yêu cầu tới CSDL quốc gia về dân cư.",
            ),
            (Code::InvalidDossierCode, Lang::En) => (
                "Invalid dossier code",
                "A dossier code is 1 to 64 of A-Z a-z 0-9 . _ -",
            ),
            (Code::InvalidDossierCode, Lang::Vi) => (
                "Mã hồ sơ không hợp lệ",
                "Mã hồ sơ gồm 1 đến 64 ký tự A-Z a-z 0-9 . _ -",
            ),
            (Code::InvalidIdempotencyKey, Lang::En) => (
                "Invalid Idempotency-Key",
                "An Idempotency-Key is 1 to 128 printable ASCII characters.",
            ),
            (Code::InvalidIdempotencyKey, Lang::Vi) => (
                "Idempotency-Key không hợp lệ",
                "Idempotency-Key gồm 1 đến 128 ký tự ASCII in được.",
            ),
            (Code::IdempotencyKeyReused, Lang::En) => (
                "Idempotency-Key reused",
                "This Idempotency-Key was used with a different request.",
            ),
            (Code::IdempotencyKeyReused, Lang::Vi) => (
                "Idempotency-Key đã được dùng",
                "Idempotency-Key này đã được dùng cho một yêu cầu khác.",
            ),
            (Code::ShipmentFinal, Lang::En) => (
                "Shipment already final",
                "The shipment is delivered, returned or failed; it cannot be cancelled.",
            ),
            (Code::ShipmentFinal, Lang::Vi) => (
                "Bưu gửi đã kết thúc",
                "Bưu gửi đã phát, đã hoàn hoặc đã lỗi; không thể hủy.",
            ),
            (Code::UpstreamNotConfigured, Lang::En) => (
                "Upstream not configured",
                "This connector has no configuration for the system this request needs.",
            ),
            (Code::RateLimited, Lang::En) => (
                "Too Many Requests",
                "This token has exceeded its request rate; retry after the time in Retry-After.",
            ),
            (Code::RateLimited, Lang::Vi) => (
                "Quá nhiều yêu cầu",
                "Mã truy cập này đã vượt giới hạn số yêu cầu; hãy thử lại sau thời gian trong Retry-After.",
            ),
            (Code::UpstreamNotConfigured, Lang::Vi) => (
                "Chưa cấu hình hệ thống liên thông",
                "Kết nối chưa được cấu hình cho hệ thống mà yêu cầu này cần.",
            ),
        }
    }
}

/// One field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub code: String,
    pub message: String,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub errors: Vec<FieldError>,
    pub lang: Lang,
    /// Seconds for `Retry-After` (rate limiting).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: Code, lang: Lang) -> Self {
        Self {
            code,
            errors: Vec::new(),
            lang,
            retry_after: None,
        }
    }

    pub fn rate_limited(wait: std::time::Duration, lang: Lang) -> Self {
        let mut e = Self::new(Code::RateLimited, lang);
        e.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        e
    }

    pub fn field(
        mut self,
        field: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        self.errors.push(FieldError {
            field: field.into(),
            code: code.into(),
            message: message.into(),
        });
        self
    }

    /// A store failure: 503, and the detail only in the log.
    pub fn store(error: &crate::queue::StoreError, lang: Lang) -> Self {
        tracing::error!(%error, "store unavailable for an API request");
        Self::new(Code::StoreUnavailable, lang)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'static str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

/// The Vietnamese message of a field error, by its code (the English message stays for codes not
/// listed, which only name fields of the schema).
pub fn field_message_vi(code: &str) -> Option<&'static str> {
    Some(match code {
        "required" => "Trường này là bắt buộc.",
        "too_long" => "Giá trị quá dài.",
        "invalid_date" => "Ngày sinh phải có dạng YYYY-MM-DD hoặc YYYY.",
        "invalid_time" => "Thời điểm phải theo RFC 3339, ví dụ 2026-11-27T08:00:00+07:00.",
        "invalid_gender" => "Giới tính phải là \"male\" hoặc \"female\".",
        "invalid_legacy_id" => "Số CMND cũ gồm đúng 9 chữ số.",
        "invalid_mode" => "Chế độ phải là \"exists\" hoặc \"full\".",
        "invalid_dossier_code" => "Mã hồ sơ gồm 1 đến 64 ký tự A-Z a-z 0-9 . _ -",
        "invalid_length" => "Số định danh cá nhân phải gồm đúng 12 chữ số.",
        "not_digits" => "Số định danh cá nhân chỉ gồm các chữ số 0-9.",
        "unknown_place_code" => "Ba chữ số đầu không phải mã tỉnh hoặc mã quốc gia hợp lệ.",
        "birth_year_mismatch" => "Chữ số 4-6 cho năm sinh không khớp với ngày sinh đã khai.",
        "sex_mismatch" => "Chữ số thứ 4 cho giới tính không khớp với giới tính đã khai.",
        "unknown_status" => "Không phải mã trạng thái 1-10 hoặc trạng thái đã được cấu hình.",
        "invalid_applicant_type" => "Loại đối tượng từ 1 đến 4.",
        "invalid_channel" => "Kênh thực hiện phải là in_person, online hoặc postal.",
        "invalid_kind" => "Loại bưu gửi phải là result_delivery hoặc dossier_pickup.",
        "invalid_phone" => "Số điện thoại gồm 9 đến 15 chữ số, có thể bắt đầu bằng +.",
        "invalid_admin_code" => "Mã đơn vị hành chính gồm các chữ số.",
        "invalid_amount" => "Số tiền thu hộ từ 0 đến 100.000.000.000 đồng.",
        "invalid_wait" => "Thời gian chờ như 500ms hoặc 5s, tối đa 30s.",
        "unknown_field" => "Trường không có trong lược đồ.",
        "missing_field" => "Thiếu trường bắt buộc.",
        "duplicate_field" => "Trường bị lặp lại.",
        "malformed_json" => "Nội dung không phải JSON hợp lệ.",
        "invalid_value" => "Giá trị không đúng kiểu.",
        "invalid_utf8" => "Nội dung không phải UTF-8.",
        "trailing_data" => "Có dữ liệu thừa sau giá trị JSON.",
        _ => return None,
    })
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if self.lang == Lang::Vi {
            for e in &mut self.errors {
                if let Some(vi) = field_message_vi(&e.code) {
                    e.message = vi.to_owned();
                }
            }
        }
        let (title, detail) = self.code.text(self.lang);
        let status = self.code.status();
        let body = Body {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail,
            code: self.code.as_str(),
            errors: &self.errors,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json,
        )
            .into_response();
        if self.code == Code::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if self.code == Code::StoreUnavailable {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        if let Some(secs) = self.retry_after
            && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_messages_are_vietnamese_when_asked_and_keep_field_and_code() {
        let e = ApiError::new(Code::InvalidCitizenId, Lang::Vi).field(
            "citizen_id",
            "sex_mismatch",
            "digit 4 gives a sex that does not match the gender",
        );
        let response = e.into_response();
        let body = futures_body(response);
        assert!(body.contains("Chữ số thứ 4"), "{body}");
        assert!(body.contains("\"field\":\"citizen_id\""), "{body}");
        assert!(body.contains("\"code\":\"sex_mismatch\""), "{body}");
    }

    fn futures_body(response: Response) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .expect("body");
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    #[test]
    fn vietnamese_is_chosen_only_when_first_preferred() {
        assert_eq!(Lang::from_header(Some("vi")), Lang::Vi);
        assert_eq!(Lang::from_header(Some("vi-VN,vi;q=0.9,en;q=0.5")), Lang::Vi);
        assert_eq!(Lang::from_header(Some("en-US,vi;q=0.5")), Lang::En);
        assert_eq!(Lang::from_header(None), Lang::En);
    }

    #[test]
    fn every_code_has_both_languages_and_a_4xx_or_5xx_status() {
        for code in [
            Code::Unauthorized,
            Code::Forbidden,
            Code::NotFound,
            Code::MethodNotAllowed,
            Code::InvalidBody,
            Code::UnsupportedMediaType,
            Code::BodyTooLarge,
            Code::InvalidQuery,
            Code::InvalidJobId,
            Code::WrongState,
            Code::StoreUnavailable,
            Code::Internal,
            Code::ValidationFailed,
            Code::InvalidCitizenId,
            Code::InvalidDossierCode,
            Code::InvalidIdempotencyKey,
            Code::IdempotencyKeyReused,
            Code::ShipmentFinal,
            Code::UpstreamNotConfigured,
            Code::RateLimited,
        ] {
            let (en, _) = code.text(Lang::En);
            let (vi, _) = code.text(Lang::Vi);
            assert_ne!(en, vi, "{}", code.as_str());
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }
}
