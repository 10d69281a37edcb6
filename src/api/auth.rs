//! Bearer tokens. Tokens are configured as SHA-256 hashes; a request's token is hashed and compared with
//! every configured hash in constant time (no early exit), so neither the comparison nor the loop tells
//! an attacker how close a guess was.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiState;
use super::problem::{ApiError, Code, Lang};
use crate::settings::{Scope, TokenSettings};

/// The configured tokens: `[[api.tokens]]`, and those of `api.tokens_file`, which [`Tokens::reload`]
/// reads again (on SIGHUP) without a restart.
#[derive(Debug, Default)]
pub struct Tokens {
    inline: Vec<TokenSettings>,
    file: Option<PathBuf>,
    current: RwLock<Vec<TokenSettings>>,
}

impl Tokens {
    pub fn new(tokens: Vec<TokenSettings>) -> Self {
        Self {
            current: RwLock::new(tokens.clone()),
            inline: tokens,
            file: None,
        }
    }

    /// The configuration's tokens and those of its tokens file, read now.
    pub fn load(inline: Vec<TokenSettings>, file: Option<PathBuf>) -> Result<Self, String> {
        let tokens = Self {
            current: RwLock::new(inline.clone()),
            inline,
            file,
        };
        tokens.reload()?;
        Ok(tokens)
    }

    /// Reads the tokens file again and, if it is valid, serves its tokens from now on (tokens no
    /// longer listed stop working at once); if not, keeps the current ones. Answers how many tokens
    /// are configured.
    pub fn reload(&self) -> Result<usize, String> {
        let mut all = self.inline.clone();
        if let Some(path) = &self.file {
            for t in crate::settings::read_tokens_file(path)? {
                if all.iter().any(|known| known.name == t.name) {
                    return Err(format!(
                        "{}: `{}` is also a token in the configuration",
                        path.display(),
                        t.name
                    ));
                }
                all.push(t);
            }
        }
        let count = all.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = all;
        Ok(count)
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Vec<TokenSettings>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configured token named `name`.
    pub fn by_name(&self, name: &str) -> Option<TokenSettings> {
        self.current().iter().find(|t| t.name == name).cloned()
    }

    /// The configured token matching `Authorization: Bearer …`, if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<TokenSettings> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for t in self.current().iter() {
            if bool::from(t.sha256.ct_eq(&digest)) && found.is_none() {
                found = Some(t.clone());
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
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(ip) = client
            && let Err(wait) = state.auth_failures.check(ip)
        {
            return Err(ApiError::rate_limited(wait, lang));
        }
        let caller = match state.tokens.authenticate(authorization) {
            Some(t) => Caller {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
            },
            None => {
                if let Some(ip) = client {
                    state.auth_failures.failed(ip);
                }
                return Err(ApiError::new(Code::Unauthorized, lang));
            }
        };
        if let Some(limiter) = &state.limiter
            && let Err(wait) = limiter.check(&caller.name)
        {
            return Err(ApiError::rate_limited(wait, lang));
        }
        Ok(caller)
    }
}

/// Failed authentications per client address (`max_failures` 0: not limited). After `max_failures`
/// within `window`, every request
/// from that address that needs a token gets 429 with `Retry-After` until the window is over, valid
/// token or not, so guessing cannot go on while blocked. Entries of finished windows are dropped; the
/// table holds at most [`AuthFailures::MAX_ADDRESSES`] addresses (beyond that new ones are not
/// tracked: a flood of addresses is a job for the network, not for this table).
#[derive(Debug)]
pub struct AuthFailures {
    max_failures: u32,
    window: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: tokio::time::Instant,
}

impl Default for AuthFailures {
    /// Ten failures a minute.
    fn default() -> Self {
        Self::new(10, std::time::Duration::from_secs(60))
    }
}

impl AuthFailures {
    pub const MAX_ADDRESSES: usize = 100_000;

    pub fn new(max_failures: u32, window: std::time::Duration) -> Self {
        Self {
            max_failures,
            window,
            entries: Default::default(),
        }
    }

    /// Whether `ip` may try now; otherwise how long until it may.
    pub fn check(&self, ip: std::net::IpAddr) -> Result<(), std::time::Duration> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&ip) {
            Some(f) if f.count >= self.max_failures && now < f.since + self.window => {
                Err(f.since + self.window - now)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`.
    pub fn failed(&self, ip: std::net::IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::MAX_ADDRESSES {
            let window = self.window;
            entries.retain(|_, f| now < f.since + window);
        }
        if entries.len() >= Self::MAX_ADDRESSES && !entries.contains_key(&ip) {
            return;
        }
        let f = entries.entry(ip).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now >= f.since + self.window {
            *f = Failures {
                count: 0,
                since: now,
            };
        }
        f.count = f.count.saturating_add(1);
        if f.count == self.max_failures {
            tracing::warn!(client = %ip, "authentication failures from this address: throttled");
        }
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

    #[tokio::test(start_paused = true)]
    async fn an_address_that_keeps_failing_waits_out_the_window_and_others_do_not() {
        let throttle = AuthFailures::new(3, std::time::Duration::from_secs(60));
        let guesser: std::net::IpAddr = [10, 0, 0, 7].into();
        let other: std::net::IpAddr = [10, 0, 0, 8].into();
        for _ in 0..3 {
            assert!(throttle.check(guesser).is_ok());
            throttle.failed(guesser);
        }
        let wait = throttle.check(guesser).expect_err("throttled");
        assert!(
            wait <= std::time::Duration::from_secs(60) && wait > std::time::Duration::from_secs(59)
        );
        assert!(
            throttle.check(other).is_ok(),
            "another address is not affected"
        );
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert!(throttle.check(guesser).is_ok(), "the window is over");
    }

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
            tokens.authenticate(Some("Bearer o-secret")).map(|t| t.name),
            Some("ops".to_owned())
        );
        assert_eq!(
            tokens.authenticate(Some("Bearer p-secret")).map(|t| t.name),
            Some("portal".to_owned())
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
