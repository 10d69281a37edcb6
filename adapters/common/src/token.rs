//! OAuth2 client-credentials tokens (HTTP Basic `id:secret`, form `grant_type=client_credentials`), as the
//! LGSP gateway and VNPost issue them: fetched once, reused until shortly before they expire, renewed on
//! demand after a 401. One refresh at a time; concurrent callers wait for it instead of each fetching.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{UpstreamError, http};

#[derive(Debug)]
pub struct TokenSource {
    url: String,
    client_id: String,
    client_secret: crate::Secret,
    /// Renew this long before the announced expiry.
    margin: Duration,
    cached: Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    header: String,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    pub fn new(
        url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<crate::Secret>,
        margin: Duration,
    ) -> Self {
        Self {
            url: url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            margin,
            cached: Mutex::new(None),
        }
    }

    /// The `Authorization` header value (`{token_type} {access_token}`), from the cache unless `renew`.
    pub async fn header(
        &self,
        client: &reqwest::Client,
        renew: bool,
    ) -> Result<String, UpstreamError> {
        let mut cached = self.cached.lock().await;
        if !renew
            && let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.header.clone());
        }
        let response = client
            .post(&self.url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body("grant_type=client_credentials")
            .send()
            .await
            .map_err(UpstreamError::transport)?;
        http::refuse_redirect(&response)?;
        let status = response.status().as_u16();
        let bytes = http::read_limited(response, 64 * 1024).await?;
        match status {
            200 => {}
            400 | 401 | 403 => {
                return Err(UpstreamError::auth(
                    "token_refused",
                    format!("the token endpoint refused our client credentials (HTTP {status})"),
                ));
            }
            other => return Err(UpstreamError::from_status(other, None, "token endpoint")),
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::retryable("token_malformed", e.to_string()))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300));
        let header = format!(
            "{} {}",
            answer
                .token_type
                .as_deref()
                .filter(|t| !t.is_empty())
                .unwrap_or("Bearer"),
            answer.access_token
        );
        *cached = Some(Cached {
            header: header.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(self.margin),
        });
        Ok(header)
    }

    /// Drops the cached token (after the upstream refused it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

/// An upstream's answer, read within the size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

impl TokenSource {
    /// Sends the request `build` makes for a given `Authorization` value. On a 401 the token is renewed
    /// and the request sent once more; a second 401 is an auth error (the lane pauses).
    pub async fn send(
        &self,
        client: &reqwest::Client,
        max_bytes: usize,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Answer, UpstreamError> {
        for renew in [false, true] {
            let header = self.header(client, renew).await?;
            let response = build(&header)
                .send()
                .await
                .map_err(UpstreamError::transport)?;
            http::refuse_redirect(&response)?;
            let status = response.status().as_u16();
            if status == 401 && !renew {
                self.forget().await;
                continue;
            }
            if status == 401 {
                break;
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = http::read_limited(response, max_bytes).await?;
            return Ok(Answer {
                status,
                retry_after,
                body,
            });
        }
        Err(UpstreamError::auth(
            "http_401",
            "the upstream refused a freshly issued token",
        ))
    }
}
