//! Dashboard sign-in: server-side sessions and the browser-facing protections of the ops listener.
//!
//! Signing in with an admin token opens a session: a random 256-bit id in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` when the listener serves TLS) that expires after
//! [`LIFETIME`]; the token itself never reaches the browser's cookie jar. Signing out removes the session
//! on the server, so a copied cookie is worthless afterwards, and a session whose token was removed from
//! the configuration no longer counts. Every POST must come from the dashboard's own origin, and every
//! answer carries a content security policy that forbids framing, foreign scripts and sniffing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore as _;
use tokio::time::Instant;

/// How long a session lasts, however active.
pub(crate) const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The cookie that carries the session id.
pub(crate) const COOKIE: &str = "dvc_ops_session";
/// Open sessions at most; the oldest go first beyond that.
const MAX_SESSIONS: usize = 1024;

#[derive(Debug)]
struct Session {
    token_name: String,
    expires: Instant,
}

/// The open sessions.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session for the token named `token_name`; answers its id.
    pub(crate) fn open(&self, token_name: &str) -> String {
        let mut id = [0u8; 32];
        OsRng.fill_bytes(&mut id);
        let id = crate::hex::encode(&id);
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(
            id.clone(),
            Session {
                token_name: token_name.to_owned(),
                expires: now + LIFETIME,
            },
        );
        id
    }

    /// The token name of a live session.
    pub(crate) fn token_name(&self, id: &str) -> Option<String> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(id)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.token_name.clone())
    }

    /// Ends a session (sign-out).
    pub(crate) fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The session id the request's cookie carries.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            pair.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
        .find(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value for a session (`None`: clear it).
pub(crate) fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
    }
}

/// True when a state-changing request comes from the dashboard itself: its `Origin` (or, without one,
/// `Sec-Fetch-Site`) names this listener. A request with neither is not from a browser, which would send
/// them, and is let through to the token and session checks.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        return matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h));
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        None => true,
    }
}

/// The inline script of the dashboard (reload every 15 s unless someone is typing).
pub(crate) const RELOAD_SCRIPT: &str =
    "setTimeout(function(){if(!document.querySelector('input:focus'))location.reload()},15000)";

/// Headers for every answer of the ops listener: no framing, no sniffing, no referrer outside the
/// dashboard (`no-referrer` would make browsers send `Origin: null` on its own forms), and a policy that
/// allows only the page's own styles and its one inline script (by hash).
pub(crate) fn protect(headers: &mut HeaderMap) {
    use base64::Engine as _;
    use sha2::Digest as _;
    let script = base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(RELOAD_SCRIPT.as_bytes()));
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{script}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_is_random_expires_and_ends_on_sign_out() {
        let sessions = Sessions::default();
        let a = sessions.open("ops");
        let b = sessions.open("ops");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(sessions.token_name(&a).as_deref(), Some("ops"));
        sessions.close(&a);
        assert_eq!(sessions.token_name(&a), None, "signed out on the server");
        tokio::time::advance(LIFETIME + Duration::from_secs(1)).await;
        assert_eq!(sessions.token_name(&b), None, "expired");
    }

    #[test]
    fn the_session_cookie_is_secure_under_tls_and_never_readable_by_scripts() {
        let plain = set_cookie(Some("ab"), false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(set_cookie(Some("ab"), true).ends_with("; Secure"));
        assert!(set_cookie(None, true).contains("Max-Age=0"));
    }

    #[test]
    fn only_the_dashboards_own_origin_may_post() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).expect("value"));
            }
            h
        };
        assert!(same_origin(&headers(&[
            ("host", "10.0.0.5:9090"),
            ("origin", "http://10.0.0.5:9090")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "10.0.0.5:9090"),
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "10.0.0.5:9090"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "10.0.0.5:9090"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(same_origin(&headers(&[("host", "10.0.0.5:9090")])));
    }
}
