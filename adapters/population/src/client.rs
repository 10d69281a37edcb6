//! The population DB client: LGSP gateway token, SOAP calls, classification of every failure.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use dvc_upstream::http::{self, HttpOptions};
use dvc_upstream::token::TokenSource;
use dvc_upstream::{ErrorClass, UpstreamError};
use reqwest::header;

use crate::cccd::CitizenId;
use crate::matching::BirthDate;
use crate::wire::{CongDan, ExistenceRequest, RecordRequest, Request, Response, XmlError};

/// What deployments vary on (`upstreams.md` marks these *(profile)*); the defaults are the spec's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub content_type: String,
    pub lgsp_access_token_header: String,
    pub auth_hash_header: String,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            content_type: "text/xml; charset=utf-8".into(),
            lgsp_access_token_header: "lgspaccesstoken".into(),
            auth_hash_header: "AuthHash".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PopulationConfig {
    /// Where both operations are POSTed.
    pub service_url: String,
    /// Where `XacMinhThongTinNhanThan` goes when the gateway splits the operations.
    pub record_url: Option<String>,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: dvc_upstream::Secret,
    /// A static `lgspaccesstoken`, for gateways that want one.
    pub lgsp_access_token: Option<String>,
    pub profile: Profile,
    pub http: HttpOptions,
    /// The token is renewed this long before it expires.
    pub token_margin: Duration,
    pub max_response_bytes: usize,
}

impl PopulationConfig {
    pub fn new(
        service_url: impl Into<String>,
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<dvc_upstream::Secret>,
    ) -> Self {
        Self {
            service_url: service_url.into(),
            record_url: None,
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            lgsp_access_token: None,
            profile: Profile::default(),
            http: HttpOptions::default(),
            token_margin: Duration::from_secs(30),
            max_response_bytes: 1 << 20,
        }
    }
}

/// The officer on whose behalf a lookup is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Officer {
    /// `MaCanBo`.
    pub code: String,
    /// The officer's gateway key and pass, sent as `AuthHash = base64(key:pass)` when the gateway wants it.
    pub auth_hash: Option<(String, dvc_upstream::Secret)>,
}

/// `XacThucThongTinCongDan`: does a citizen with this number and name exist?
#[derive(Debug, Clone)]
pub struct ExistenceQuery {
    /// `MaDichVu`.
    pub service_code: String,
    pub officer: Officer,
    pub citizen_id: CitizenId,
    pub legacy_id: String,
    pub full_name: String,
}

/// `XacMinhThongTinNhanThan`: the citizen's record.
#[derive(Debug, Clone)]
pub struct RecordQuery {
    /// `MaDVC`: the procedure.
    pub procedure_code: String,
    /// `MaTichHop`.
    pub integration_code: String,
    /// `MaDonVi`.
    pub agency_code: String,
    pub officer: Officer,
    pub citizen_id: CitizenId,
    pub legacy_id: String,
    pub full_name: String,
    pub birth_date: BirthDate,
}

/// An answer and the request id it was asked under (recorded for audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub request_id: String,
    pub value: T,
}

#[derive(Debug, Clone)]
pub struct PopulationClient {
    http: reqwest::Client,
    config: Arc<PopulationConfig>,
    token: Arc<TokenSource>,
    observer: Option<Arc<dyn dvc_upstream::Observer>>,
}

impl PopulationClient {
    pub fn new(config: PopulationConfig) -> Result<Self, http::ClientBuildError> {
        Ok(Self {
            http: http::client(&config.http)?,
            token: Arc::new(TokenSource::new(
                config.token_url.clone(),
                config.client_id.clone(),
                config.client_secret.clone(),
                config.token_margin,
            )),
            config: Arc::new(config),
            observer: None,
        })
    }

    /// Reports every call to `observer` (latency and outcome, for metrics).
    pub fn with_observer(mut self, observer: Arc<dyn dvc_upstream::Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub async fn check_exists(&self, q: &ExistenceQuery) -> Result<Answer<bool>, UpstreamError> {
        self.check_exists_as(q, new_request_id()).await
    }

    /// As [`Self::check_exists`], under a request id the caller made (and recorded) beforehand.
    pub async fn check_exists_as(
        &self,
        q: &ExistenceQuery,
        request_id: String,
    ) -> Result<Answer<bool>, UpstreamError> {
        let request = Request::Existence(ExistenceRequest {
            ma_yeu_cau: request_id.clone(),
            ma_dich_vu: q.service_code.clone(),
            ma_can_bo: q.officer.code.clone(),
            so_dinh_danh: q.citizen_id.expose().to_owned(),
            so_cmnd: q.legacy_id.clone(),
            ho_va_ten: q.full_name.clone(),
        });
        match self.call(&request, &q.officer).await? {
            Response::Exists(found) => Ok(Answer {
                request_id,
                value: found,
            }),
            _ => Err(UpstreamError::retryable(
                "unexpected_answer",
                "a record list where TonTai was expected",
            )),
        }
    }

    pub async fn fetch_records(
        &self,
        q: &RecordQuery,
    ) -> Result<Answer<Vec<CongDan>>, UpstreamError> {
        self.fetch_records_as(q, new_request_id()).await
    }

    /// As [`Self::fetch_records`], under a request id the caller made (and recorded) beforehand.
    pub async fn fetch_records_as(
        &self,
        q: &RecordQuery,
        request_id: String,
    ) -> Result<Answer<Vec<CongDan>>, UpstreamError> {
        let request = Request::Record(RecordRequest {
            ma_yeu_cau: request_id.clone(),
            ma_dvc: q.procedure_code.clone(),
            ma_tich_hop: q.integration_code.clone(),
            ma_don_vi: q.agency_code.clone(),
            ma_can_bo: q.officer.code.clone(),
            so_dinh_danh: q.citizen_id.expose().to_owned(),
            so_cmnd: q.legacy_id.clone(),
            ho_va_ten: q.full_name.clone(),
            ngay_thang_nam: q.birth_date.compact(),
        });
        match self.call(&request, &q.officer).await? {
            Response::Records(citizens) => Ok(Answer {
                request_id,
                value: citizens,
            }),
            _ => Err(UpstreamError::retryable(
                "unexpected_answer",
                "TonTai where a record list was expected",
            )),
        }
    }

    async fn call(&self, request: &Request, officer: &Officer) -> Result<Response, UpstreamError> {
        let op = request.operation();
        dvc_upstream::observed(
            self.observer.as_ref(),
            "population",
            op.as_str(),
            self.call_unobserved(request, officer),
        )
        .await
    }

    async fn call_unobserved(
        &self,
        request: &Request,
        officer: &Officer,
    ) -> Result<Response, UpstreamError> {
        let op = request.operation();
        let url = match (op, &self.config.record_url) {
            (crate::wire::Operation::XacMinhThongTinNhanThan, Some(url)) => url,
            _ => &self.config.service_url,
        };
        let body = request.encode();
        let answer = self
            .token
            .send(
                &self.http,
                self.config.max_response_bytes,
                |authorization| {
                    let mut rb = self
                        .http
                        .post(url)
                        .header(header::CONTENT_TYPE, &self.config.profile.content_type)
                        .header("SOAPAction", op.as_str())
                        .header(header::AUTHORIZATION, authorization)
                        .body(body.clone());
                    if let Some(value) = &self.config.lgsp_access_token {
                        rb =
                            rb.header(self.config.profile.lgsp_access_token_header.as_str(), value);
                    }
                    if let Some((key, pass)) = &officer.auth_hash {
                        let hash = base64::engine::general_purpose::STANDARD
                            .encode(format!("{key}:{}", pass.expose()));
                        rb = rb.header(self.config.profile.auth_hash_header.as_str(), hash);
                    }
                    rb
                },
            )
            .await
            .map_err(|e| officer_refused(e, officer))?;
        classify(answer.status, answer.retry_after.as_deref(), &answer.body)
    }
}

/// A 401 that a freshly issued gateway token did not cure, on a call that carried an officer's
/// `AuthHash`, is the officer's credentials being refused: that lookup fails for good (dead letter
/// `officer_refused`, naming the officer, never the citizen) while other officers' lookups go on. Without
/// an `AuthHash`, or when the token endpoint itself refuses us, it stays an auth error that pauses the
/// lane.
fn officer_refused(e: UpstreamError, officer: &Officer) -> UpstreamError {
    if e.class == ErrorClass::Auth && e.code == "http_401" && officer.auth_hash.is_some() {
        return UpstreamError::permanent(
            "officer_refused",
            format!(
                "the gateway refused the AuthHash of officer {} with a freshly issued token",
                officer.code
            ),
        );
    }
    e
}

/// Turns an HTTP answer into a response or a classified error (pure: the fuzz target
/// `client_answers` feeds it any status and bytes).
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<Response, UpstreamError> {
    match Response::decode(body) {
        // SOAP 1.1 faults usually come with HTTP 500; the fault says more than the status.
        Ok(Response::Fault { code, message }) => {
            let mut e = UpstreamError::retryable(
                "soap_fault",
                http::mask_digit_runs(&format!("{code}: {message}")),
            );
            e.retry_after = retry_after.and_then(dvc_upstream::parse_retry_after);
            Err(e)
        }
        _ if !(200..300).contains(&status) => Err(UpstreamError::from_status(
            status,
            retry_after,
            format!("the gateway answered HTTP {status}"),
        )),
        Ok(response) => Ok(response),
        Err(error) => {
            // A gateway that sends DTDs or entities is hostile or broken for good; garbled or truncated
            // XML is usually transient.
            let class = match error {
                XmlError::Dtd | XmlError::Entity(_) | XmlError::TooLarge => ErrorClass::Permanent,
                XmlError::NotUtf8 | XmlError::Syntax(_) | XmlError::Missing(_) => {
                    ErrorClass::Retryable
                }
            };
            Err(UpstreamError::new(
                class,
                error.code(),
                http::mask_digit_runs(&error.to_string()),
            ))
        }
    }
}

/// A fresh request id for every call (never derived from the clock alone).
pub fn new_request_id() -> String {
    ulid::Ulid::new().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/population")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn hostile_xml_is_dead_lettered_while_garbled_xml_is_retried() {
        for name in [
            "hostile/billion-laughs.xml",
            "hostile/xxe.xml",
            "hostile/undeclared-entity.xml",
        ] {
            let e = classify(200, None, &fixture(name)).expect_err(name);
            assert_eq!(e.class, ErrorClass::Permanent, "{name}: {e:?}");
        }
        let e = classify(200, None, b"<soap:Envelope><soap:Body><TonTai>tr").expect_err("garbled");
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Retryable, "xml_malformed")
        );
    }

    #[test]
    fn statuses_and_faults_are_classified_with_the_upstreams_words() {
        assert_eq!(
            classify(400, None, b"bad").map_err(|e| e.class),
            Err(ErrorClass::Permanent)
        );
        assert_eq!(
            classify(403, None, b"no").map_err(|e| e.class),
            Err(ErrorClass::Auth)
        );
        assert_eq!(
            classify(503, Some("5"), b"").map_err(|e| e.retry_after),
            Err(Some(Duration::from_secs(5)))
        );
        let e = classify(500, None, &fixture("fault.xml")).expect_err("fault");
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Retryable, "soap_fault")
        );
        assert!(e.message.contains("CSDLQGDC"));
        assert_eq!(
            classify(200, None, &fixture("xac-thuc-response-true.xml")),
            Ok(Response::Exists(true))
        );
    }

    #[test]
    fn personal_numbers_in_an_upstream_message_are_masked() {
        let fault = Response::Fault {
            code: "soap:Server".into(),
            message: "Không tìm thấy công dân 001190012345".into(),
        }
        .encode();
        let e = classify(500, None, fault.as_bytes()).expect_err("fault");
        assert!(
            !e.message.contains("001190012345") && e.message.contains("001*******45"),
            "{}",
            e.message
        );
    }
}
