//! The portal client of one target (national or provincial): a session, re-login once on an expired
//! session, and the three services, with every answer classified.
//!
//! `DongBoHoSoMC` recovers from the spec's "already exists" (3) and "does not exist" (4) by switching
//! `isUpdating` once and repeating, so a retried create is never a failure; any other `error_code` on an
//! HTTP 200 is a business refusal and permanent.

use std::sync::Arc;

use dvc_upstream::UpstreamError;
use dvc_upstream::http::{self, HttpOptions};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::wire::{
    self, CAP_NHAT_TIEN_DO, DONG_BO_HO_SO, DossierRecord, LoginAnswer, MAX_STEPS_PER_CALL,
    Progress, ServiceAnswer, StatusMap, TRA_CUU_HO_SO,
};

/// What deployments vary on; the defaults are the spec's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub auth_path: String,
    pub integration_path: String,
    /// Header carrying the routing code.
    pub routing_header: String,
    /// `error_code`s meaning "session expired or unknown": re-login once.
    pub session_expired_codes: Vec<i64>,
    pub already_exists_code: i64,
    pub does_not_exist_code: i64,
    pub status_map: StatusMap,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            auth_path: "/auth".into(),
            integration_path: "/integration".into(),
            routing_header: "dstcode".into(),
            session_expired_codes: vec![2],
            already_exists_code: 3,
            does_not_exist_code: 4,
            status_map: StatusMap::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// The target's name (`national`, `provincial`); it names the lane.
    pub target: String,
    pub base_url: String,
    pub username: String,
    pub password: dvc_upstream::Secret,
    /// `madonvi`.
    pub agency_code: String,
    /// `dstcode`.
    pub routing_code: String,
    pub profile: Profile,
    pub http: HttpOptions,
    pub max_response_bytes: usize,
}

impl PortalConfig {
    pub fn new(
        target: impl Into<String>,
        base_url: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<dvc_upstream::Secret>,
        agency_code: impl Into<String>,
    ) -> Self {
        Self {
            target: target.into(),
            base_url: base_url.into(),
            username: username.into(),
            password: password.into(),
            agency_code: agency_code.into(),
            routing_code: String::new(),
            profile: Profile::default(),
            http: HttpOptions::default(),
            max_response_bytes: 4 << 20,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}

/// What a `DongBoHoSoMC` did in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    Created,
    Updated,
}

/// What a `CapNhatTienDoHoSoMC` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepsOutcome {
    /// The portal took every step.
    Applied,
    /// The portal does not have the dossier (its profile's `does_not_exist_code`): nothing was
    /// taken, and the steps must wait for the dossier's record.
    DossierMissing,
}

#[derive(Debug, Clone)]
pub struct PortalClient {
    http: reqwest::Client,
    config: Arc<PortalConfig>,
    session: Arc<Mutex<Option<String>>>,
    observer: Option<Arc<dyn dvc_upstream::Observer>>,
}

impl PortalClient {
    pub fn new(config: PortalConfig) -> Result<Self, http::ClientBuildError> {
        Ok(Self {
            http: http::client(&config.http)?,
            config: Arc::new(config),
            session: Arc::default(),
            observer: None,
        })
    }

    /// Reports every service call to `observer` (latency and outcome, for metrics).
    pub fn with_observer(mut self, observer: Arc<dyn dvc_upstream::Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn target(&self) -> &str {
        &self.config.target
    }

    pub fn status_map(&self) -> &StatusMap {
        &self.config.profile.status_map
    }

    /// Does the portal already have this dossier?
    pub async fn dossier_exists(&self, code: &str) -> Result<bool, UpstreamError> {
        dvc_upstream::observed(
            self.observer.as_ref(),
            "portal",
            TRA_CUU_HO_SO,
            self.exists_unobserved(code),
        )
        .await
    }

    async fn exists_unobserved(&self, code: &str) -> Result<bool, UpstreamError> {
        let answer = self
            .call(TRA_CUU_HO_SO, &wire::LookupParams { mahoso: code })
            .await?;
        match answer.error_code {
            0 => Ok(answer
                .result
                .as_ref()
                .is_some_and(|r| r.as_array().is_some_and(|a| !a.is_empty()))),
            _ => Err(business(&answer)),
        }
    }

    /// Creates or updates a dossier; `assume_exists` picks the first attempt's flag, and the other flag
    /// is tried once if the portal says the guess was wrong.
    pub async fn sync_dossier(
        &self,
        record: &DossierRecord,
        assume_exists: bool,
    ) -> Result<SyncOutcome, UpstreamError> {
        dvc_upstream::observed(
            self.observer.as_ref(),
            "portal",
            DONG_BO_HO_SO,
            self.sync_unobserved(record, assume_exists),
        )
        .await
    }

    async fn sync_unobserved(
        &self,
        record: &DossierRecord,
        assume_exists: bool,
    ) -> Result<SyncOutcome, UpstreamError> {
        let p = &self.config.profile;
        let mut updating = assume_exists;
        for switched in [false, true] {
            let params = wire::SyncParams::new(record, updating);
            let answer = self.call(DONG_BO_HO_SO, &params).await?;
            let wrong_guess = (!updating && answer.error_code == p.already_exists_code)
                || (updating && answer.error_code == p.does_not_exist_code);
            match answer.error_code {
                0 if updating => return Ok(SyncOutcome::Updated),
                0 => return Ok(SyncOutcome::Created),
                _ if wrong_guess && !switched => updating = !updating,
                _ => return Err(business(&answer)),
            }
        }
        Err(UpstreamError::permanent(
            "sync_flapping",
            "the portal refused both create and update",
        ))
    }

    /// Appends processing steps, in order. At most ten per call (the caller batches).
    pub async fn push_steps<S>(&self, steps: &[S]) -> Result<StepsOutcome, UpstreamError>
    where
        S: std::borrow::Borrow<Progress> + Serialize + Sync,
    {
        dvc_upstream::observed(
            self.observer.as_ref(),
            "portal",
            CAP_NHAT_TIEN_DO,
            self.push_unobserved(steps),
        )
        .await
    }

    async fn push_unobserved<S>(&self, steps: &[S]) -> Result<StepsOutcome, UpstreamError>
    where
        S: std::borrow::Borrow<Progress> + Serialize + Sync,
    {
        if steps.is_empty() {
            return Ok(StepsOutcome::Applied);
        }
        if steps.len() > MAX_STEPS_PER_CALL {
            return Err(UpstreamError::permanent(
                "too_many_steps",
                format!(
                    "{} steps in one call; the portal takes at most {MAX_STEPS_PER_CALL}",
                    steps.len()
                ),
            ));
        }
        let answer = self
            .call(CAP_NHAT_TIEN_DO, &wire::StepsParams { data: steps })
            .await?;
        match answer.error_code {
            0 => Ok(StepsOutcome::Applied),
            code if code == self.config.profile.does_not_exist_code => {
                Ok(StepsOutcome::DossierMissing)
            }
            _ => Err(business(&answer)),
        }
    }

    /// One service call; re-logs in once when the session has expired.
    async fn call<P: Serialize + Sync>(
        &self,
        service: &str,
        params: &P,
    ) -> Result<ServiceAnswer, UpstreamError> {
        let url = self.config.url(&self.config.profile.integration_path);
        for relogin in [false, true] {
            let session = self.session(relogin).await?;
            let body = wire::envelope(&session, &self.config.agency_code, service, params);
            let answer = self.post(&url, &body).await?;
            let answer = read_service_answer(&answer)?;
            if self
                .config
                .profile
                .session_expired_codes
                .contains(&answer.error_code)
                && !relogin
            {
                *self.session.lock().await = None;
                continue;
            }
            if self
                .config
                .profile
                .session_expired_codes
                .contains(&answer.error_code)
            {
                return Err(UpstreamError::auth(
                    "session_refused",
                    "the portal refused a fresh session",
                ));
            }
            return Ok(answer);
        }
        Err(UpstreamError::auth(
            "session_refused",
            "the portal refused a fresh session",
        ))
    }

    async fn post(&self, url: &str, body: &impl Serialize) -> Result<Vec<u8>, UpstreamError> {
        let mut rb = self.http.post(url).json(body);
        if !self.config.routing_code.is_empty() {
            rb = rb.header(
                self.config.profile.routing_header.as_str(),
                &self.config.routing_code,
            );
        }
        let response = rb.send().await.map_err(UpstreamError::transport)?;
        http::refuse_redirect(&response)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = http::read_limited(response, self.config.max_response_bytes).await?;
        if !(200..300).contains(&status) {
            return Err(UpstreamError::from_status(
                status,
                retry_after.as_deref(),
                format!("portal answered HTTP {status}"),
            ));
        }
        Ok(bytes)
    }

    async fn session(&self, renew: bool) -> Result<String, UpstreamError> {
        let mut session = self.session.lock().await;
        if !renew && let Some(s) = session.as_ref() {
            return Ok(s.clone());
        }
        let body =
            json!({ "username": self.config.username, "password": self.config.password.expose() });
        let bytes = self
            .post(&self.config.url(&self.config.profile.auth_path), &body)
            .await?;
        let answer: LoginAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::retryable("json_malformed", e.to_string()))?;
        match (answer.error_code, answer.session) {
            (0, Some(s)) if !s.is_empty() => {
                *session = Some(s.clone());
                Ok(s)
            }
            (code, _) => Err(UpstreamError::auth(
                "login_refused",
                format!(
                    "login answered error_code {code}: {}",
                    answer.message.unwrap_or_default()
                ),
            )),
        }
    }
}

/// A service call's answer read from its body (pure: the fuzz target `client_answers` feeds it any
/// bytes).
pub fn read_service_answer(body: &[u8]) -> Result<ServiceAnswer, UpstreamError> {
    serde_json::from_slice(body).map_err(|e| {
        UpstreamError::retryable("json_malformed", http::mask_digit_runs(&e.to_string()))
    })
}

/// A business refusal on an HTTP 200: permanent, with the portal's own code and words (pure, like
/// [`read_service_answer`]).
pub fn refusal(answer: &ServiceAnswer) -> UpstreamError {
    business(answer)
}

/// A business refusal on an HTTP 200: permanent, with the portal's own code and words.
fn business(answer: &ServiceAnswer) -> UpstreamError {
    UpstreamError::permanent(
        format!("portal_{}", answer.error_code),
        http::mask_digit_runs(answer.message.as_deref().unwrap_or("")),
    )
}
