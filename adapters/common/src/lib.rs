//! What every upstream adapter shares.
//!
//! - [`ErrorClass`] and [`UpstreamError`]: every failure of an upstream call says whether to retry it,
//!   give up on it, or stop the lane because our credentials or configuration are wrong — with the
//!   upstream's own code and a message that carries no personal data.
//! - [`http`]: the one way to build an HTTP client — rustls, connect and total timeouts always set, custom
//!   CA bundle and client certificate allowed, invalid certificates never accepted.
//! - [`sim`]: fault injection and request ledgers for the simulators; [`judge`]: the rule tables they
//!   check every request against.
//! - [`admin`]: the administrative catalogue (provinces and wards since 2025-07-01).
#![forbid(unsafe_code)]

pub mod admin;
pub mod http;
pub mod judge;
pub mod secret;
pub mod sim;
pub mod token;

pub use secret::Secret;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a failure should be treated: the answer to "retry this?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Transient: timeouts, 5xx, 429, connection errors, garbled answers. Retried with backoff.
    Retryable,
    /// The upstream will never accept this request as it is. Dead-lettered at once.
    Permanent,
    /// Credentials or configuration are wrong. The lane pauses; the job keeps its attempt budget.
    Auth,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Auth => "auth",
        }
    }
}

/// A failed upstream call, classified.
///
/// `code` is short and stable (`http_503`, `soap_fault`, the upstream's own status code …) so it can label
/// metrics and group dead letters; `message` keeps the upstream's words for the operator and must not
/// contain personal data (the adapters build it from codes and masked values only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} upstream error {code}: {message}", class.as_str())]
pub struct UpstreamError {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    /// The upstream asked us to wait at least this long (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// The most an upstream's message keeps: enough for an operator to read the reason, while a portal that
/// answers with megabytes cannot swell the store, the dead-letter list or the dashboard.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Cuts `text` to [`MAX_MESSAGE_BYTES`] at a character boundary, marking the cut with `…`.
pub fn cap_message(mut text: String) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text;
    }
    let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

impl UpstreamError {
    pub fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: cap_message(code.into()),
            message: cap_message(message.into()),
            retry_after: None,
        }
    }

    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Retryable, code, message)
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, code, message)
    }

    pub fn auth(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Auth, code, message)
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Classifies a transport failure (no usable HTTP answer).
    ///
    /// A certificate the client will not trust (unknown CA, wrong name, expired) is an auth/config
    /// problem — retrying cannot fix it, so the lane pauses and probes instead of burning attempts.
    pub fn transport(error: reqwest::Error) -> Self {
        let mut source: Option<&dyn std::error::Error> = Some(&error);
        while let Some(e) = source {
            let text = e.to_string();
            // rustls shows a verifier's own error by its Debug name.
            if text.contains("PinMismatch") {
                return Self::auth(
                    "tls_pin_mismatch",
                    "TLS: the certificate chains to a trusted CA, but its public key matches no \
                     pin_sha256",
                );
            }
            if text.contains("certificate")
                || text.contains("UnknownIssuer")
                || text.contains("NotValidForName")
            {
                return Self::auth("tls_certificate", format!("TLS: {text}"));
            }
            source = e.source();
        }
        let code = if error.is_timeout() {
            "timeout"
        } else if error.is_connect() {
            "connect"
        } else if error.is_body() || error.is_decode() {
            "truncated_body"
        } else {
            "transport"
        };
        // reqwest's text names the URL, never a request body; strip the query in case it carries data.
        let text = error.without_url().to_string();
        Self::retryable(code, text)
    }

    /// Classifies an HTTP status that is not the operation's success status.
    ///
    /// 5xx, 408 and 429 are retryable (with `Retry-After` when given); 401 and 403 are auth; other 4xx
    /// are permanent.
    pub fn from_status(status: u16, retry_after: Option<&str>, detail: impl Into<String>) -> Self {
        let class = match status {
            401 | 403 => ErrorClass::Auth,
            408 | 429 | 500..=599 => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        };
        let mut error = Self::new(class, format!("http_{status}"), detail);
        if class == ErrorClass::Retryable {
            error.retry_after = retry_after.and_then(parse_retry_after);
        }
        error
    }
}

/// `Retry-After` in delay-seconds form (the HTTP-date form is not used by these upstreams).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Told about every upstream call a client makes (the daemon records metrics from it). `upstream` and
/// `operation` are fixed names from the adapters; `outcome` is `Ok` or the classified error.
pub trait Observer: Send + Sync + std::fmt::Debug {
    fn observe(
        &self,
        upstream: &'static str,
        operation: &'static str,
        elapsed: Duration,
        outcome: Result<(), &UpstreamError>,
    );
}

/// Runs `call`, timing it for `observer`.
pub async fn observed<T>(
    observer: Option<&std::sync::Arc<dyn Observer>>,
    upstream: &'static str,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    let started = tokio::time::Instant::now();
    let result = call.await;
    if let Some(o) = observer {
        o.observe(
            upstream,
            operation,
            started.elapsed(),
            result.as_ref().map(|_| ()),
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_retry_classes() {
        assert_eq!(
            UpstreamError::from_status(503, None, "").class,
            ErrorClass::Retryable
        );
        assert_eq!(
            UpstreamError::from_status(429, None, "").class,
            ErrorClass::Retryable
        );
        assert_eq!(
            UpstreamError::from_status(401, None, "").class,
            ErrorClass::Auth
        );
        assert_eq!(
            UpstreamError::from_status(403, None, "").class,
            ErrorClass::Auth
        );
        assert_eq!(
            UpstreamError::from_status(400, None, "").class,
            ErrorClass::Permanent
        );
        assert_eq!(UpstreamError::from_status(404, None, "").code, "http_404");
    }

    #[test]
    fn retry_after_is_kept_for_retryable_answers_only() {
        let e = UpstreamError::from_status(429, Some(" 7 "), "");
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            UpstreamError::from_status(400, Some("7"), "").retry_after,
            None
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
