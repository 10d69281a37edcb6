//! Bearer tokens. Tokens are configured as SHA-256 hashes; a request's token is hashed and compared with
//! every configured hash in constant time (no early exit), so neither the comparison nor the loop tells
//! an attacker how close a guess was.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiState;
use super::problem::{ApiError, Code, Lang};
use crate::settings::{Scope, TokenSettings};

#[derive(Debug, Default)]
pub struct Tokens(Vec<TokenSettings>);

impl Tokens {
    pub fn new(tokens: Vec<TokenSettings>) -> Self {
        Self(tokens)
    }

    /// The configured token matching `Authorization: Bearer …`, if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<&TokenSettings> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.sha256.ct_eq(&digest)) && found.is_none() {
                found = Some(t);
            }
        }
        found
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scopes: BTreeSet<Scope>,
}

impl Caller {
    pub fn require(&self, scope: Scope, lang: Lang) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::new(Code::Forbidden, lang))
        }
    }
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Caller, ApiError> {
        let lang = Lang::from_header(
            parts
                .headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        );
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = state
            .tokens
            .authenticate(authorization)
            .map(|t| Caller {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
            })
            .ok_or_else(|| ApiError::new(Code::Unauthorized, lang))?;
        if let Some(limiter) = &state.limiter
            && let Err(wait) = limiter.check(&caller.name)
        {
            return Err(ApiError::rate_limited(wait, lang));
        }
        Ok(caller)
    }
}

/// Requests per second per token, as a token bucket per token name.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets:
        std::sync::Mutex<std::collections::HashMap<String, crate::queue::protection::TokenBucket>>,
}

impl RateLimiter {
    /// None for 0 (no limit).
    pub fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            rate: f64::from(per_second),
            buckets: Default::default(),
        })
    }

    /// Takes one request from `token`'s bucket, or answers how long until one is available.
    pub fn check(&self, token: &str) -> Result<(), std::time::Duration> {
        let now = tokio::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(token.to_owned()).or_insert_with(|| {
            crate::queue::protection::TokenBucket::new(self.rate, self.rate, now)
        });
        if bucket.available(now) > 0 {
            bucket.take(1, now);
            Ok(())
        } else {
            Err(bucket.wait(now))
        }
    }
}

/// The authenticated caller, if it holds `scope` (401 without a valid token, 403 without the scope).
async fn with_scope(
    parts: &mut Parts,
    state: &Arc<ApiState>,
    scope: Scope,
) -> Result<Caller, ApiError> {
    let caller = Caller::from_request_parts(parts, state).await?;
    let lang = Lang::from_header(
        parts
            .headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    caller.require(scope, lang)?;
    Ok(caller)
}

/// A caller with the `admin` scope.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<Arc<ApiState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Admin, ApiError> {
        with_scope(parts, state, Scope::Admin).await.map(Admin)
    }
}

/// A caller with the `portal` scope (submit and read).
#[derive(Debug, Clone)]
pub struct Portal(pub Caller);

impl FromRequestParts<Arc<ApiState>> for Portal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Portal, ApiError> {
        with_scope(parts, state, Scope::Portal).await.map(Portal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, scopes: &[Scope]) -> TokenSettings {
        TokenSettings {
            name: name.into(),
            sha256: Sha256::digest(secret.as_bytes()).into(),
            scopes: scopes.iter().copied().collect(),
        }
    }

    #[test]
    fn only_a_configured_token_authenticates() {
        let tokens = Tokens::new(vec![
            token("portal", "p-secret", &[Scope::Portal]),
            token("ops", "o-secret", &[Scope::Admin]),
        ]);
        assert_eq!(
            tokens
                .authenticate(Some("Bearer o-secret"))
                .map(|t| t.name.as_str()),
            Some("ops")
        );
        assert_eq!(
            tokens
                .authenticate(Some("Bearer p-secret"))
                .map(|t| t.name.as_str()),
            Some("portal")
        );
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Basic o-secret"),
            Some("Bearer o-secreT"),
            Some("o-secret"),
        ] {
            assert!(tokens.authenticate(bad).is_none(), "{bad:?}");
        }
    }
}
