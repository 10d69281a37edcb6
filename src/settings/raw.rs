//! The configuration file as written: every section optional, unknown keys rejected. Nothing here is
//! validated beyond TOML types; `super::validate` turns it into [`super::Settings`] once.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub ops: RawOps,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub queue: RawQueue,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub upstreams: RawUpstreams,
    pub callbacks: Option<RawCallbacks>,
    #[serde(default)]
    pub flows: RawFlows,
    #[serde(default)]
    pub audit: RawAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub path: Option<String>,
    pub key_file: Option<String>,
    /// Seal the current file into a segment this often.
    pub rotate_every: Option<String>,
    /// Remove segments whose newest line is older than this; unset: keep them.
    pub retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFlows {
    #[serde(default)]
    pub identity: RawIdentityFlow,
    #[serde(default)]
    pub postal: RawPostalFlow,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentityFlow {
    pub default_mode: Option<String>,
    pub cache_window: Option<String>,
    pub integration_code: Option<String>,
    pub agency_code: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPostalFlow {
    pub tracking_interval: Option<String>,
    pub tracking_page_size: Option<i64>,
    pub result_returned_step: Option<bool>,
    pub result_returned_content: Option<String>,
    pub sender: Option<RawSender>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSender {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub province_code: Option<String>,
    pub ward_code: Option<String>,
    pub district_code: Option<String>,
    pub email: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub listen: Option<String>,
    /// Failed authentications a minute from one address before it gets 429 (0: no limit).
    pub auth_failure_limit: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub body_limit: Option<toml::Value>,
    pub rate_limit: Option<i64>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    pub tokens_file: Option<String>,
    pub tls: Option<RawServerTls>,
}

/// `[api.tls]` / `[ops.tls]`: the listener serves TLS itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTls {
    /// PEM file: the server certificate, then its chain.
    pub certificate: Option<String>,
    /// PEM file: the certificate's private key.
    pub private_key: Option<String>,
    /// PEM file of the CAs that client certificates must chain to; when set, every client must
    /// present one (mTLS).
    pub client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    pub name: Option<String>,
    pub sha256: Option<String>,
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOps {
    pub listen: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub tls: Option<RawServerTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub backend: Option<String>,
    pub path: Option<String>,
    /// `on` (the default: key files required), `generated` (a key made beside the store, for
    /// development and the demo), or `off`.
    pub encryption: Option<String>,
    pub encryption_key_files: Option<Vec<String>>,
    pub cache: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub lease: Option<String>,
    pub lane_concurrency: Option<i64>,
    pub idle_poll: Option<String>,
    pub auth_pause: Option<String>,
    pub shutdown_grace: Option<String>,
    pub retention: Option<String>,
    pub purge_interval: Option<String>,
    pub purge_batch: Option<i64>,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub circuit: RawCircuit,
    /// Per lane (`portal:national`, `postal` …): concurrency and rate overrides.
    #[serde(default)]
    pub lanes: BTreeMap<String, RawLane>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCircuit {
    pub failures: Option<i64>,
    pub cooldown: Option<String>,
    pub max_cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLane {
    pub concurrency: Option<i64>,
    pub rate_per_second: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub base: Option<String>,
    pub cap: Option<String>,
    pub max_attempts: Option<i64>,
    pub max_age: Option<String>,
    /// Per job kind, the same keys again; unset keys fall back to the defaults above.
    #[serde(default)]
    pub kinds: BTreeMap<String, RawRetryOverride>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetryOverride {
    pub base: Option<String>,
    pub cap: Option<String>,
    pub max_attempts: Option<i64>,
    pub max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreams {
    /// Development only: accept plain `http://` upstream URLs (the simulators).
    pub allow_insecure_http: Option<bool>,
    pub population: Option<RawPopulation>,
    pub postal: Option<RawPostal>,
    /// Portal targets by name (e.g. `national`, `provincial`); each gets its own lane.
    #[serde(default)]
    pub portal: BTreeMap<String, RawPortalTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPopulation {
    pub service_url: Option<String>,
    /// Where `XacMinhThongTinNhanThan` goes when the gateway splits the operations.
    pub record_url: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub lgsp_access_token: Option<SecretString>,
    pub content_type: Option<String>,
    pub lgsp_access_token_header: Option<String>,
    pub auth_hash_header: Option<String>,
    /// Officer code (`MaCanBo`) → the officer's gateway key and password, for `AuthHash`.
    #[serde(default)]
    pub officers: BTreeMap<String, RawOfficer>,
    pub officers_file: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    /// PEM file of extra trusted CA certificates (government root CAs).
    pub ca_bundle: Option<String>,
    /// Trust only `ca_bundle`, not the system's roots.
    pub ca_bundle_only: Option<bool>,
    /// PEM file with the client certificate and its private key, for mTLS.
    pub client_certificate: Option<String>,
    /// SHA-256 pins of the upstream's public key (base64, optionally `sha256//`-prefixed): the
    /// certificate must also match one of them.
    pub pin_sha256: Option<Vec<String>>,
    /// Plain `http://` for this upstream only (overrides `upstreams.allow_insecure_http`).
    pub allow_insecure_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOfficer {
    pub key: Option<String>,
    pub password: Option<SecretString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPostal {
    pub base_url: Option<String>,
    pub customer_code: Option<String>,
    pub customer_key: Option<String>,
    pub secret_key: Option<SecretString>,
    pub token_path: Option<String>,
    pub order_path: Option<String>,
    pub cancel_path: Option<String>,
    pub tracking_path: Option<String>,
    pub success_status: Option<i64>,
    pub already_exists_statuses: Option<Vec<i64>>,
    /// Tracking `StatusCode` → shipment state; replaces the default table when given.
    pub status_codes: Option<BTreeMap<String, String>>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    /// PEM file of extra trusted CA certificates (government root CAs).
    pub ca_bundle: Option<String>,
    /// Trust only `ca_bundle`, not the system's roots.
    pub ca_bundle_only: Option<bool>,
    /// PEM file with the client certificate and its private key, for mTLS.
    pub client_certificate: Option<String>,
    /// SHA-256 pins of the upstream's public key (base64, optionally `sha256//`-prefixed): the
    /// certificate must also match one of them.
    pub pin_sha256: Option<Vec<String>>,
    /// Plain `http://` for this upstream only (overrides `upstreams.allow_insecure_http`).
    pub allow_insecure_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPortalTarget {
    pub base_url: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub agency_code: Option<String>,
    pub routing_code: Option<String>,
    pub auth_path: Option<String>,
    pub integration_path: Option<String>,
    pub routing_header: Option<String>,
    pub session_expired_codes: Option<Vec<i64>>,
    pub already_exists_code: Option<i64>,
    pub does_not_exist_code: Option<i64>,
    /// Local status word → `TrangThaiHoSo` code 1–10; replaces the default table when given.
    pub statuses: Option<BTreeMap<String, i64>>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    /// PEM file of extra trusted CA certificates (government root CAs).
    pub ca_bundle: Option<String>,
    /// Trust only `ca_bundle`, not the system's roots.
    pub ca_bundle_only: Option<bool>,
    /// PEM file with the client certificate and its private key, for mTLS.
    pub client_certificate: Option<String>,
    /// SHA-256 pins of the upstream's public key (base64, optionally `sha256//`-prefixed): the
    /// certificate must also match one of them.
    pub pin_sha256: Option<Vec<String>>,
    /// Plain `http://` for this upstream only (overrides `upstreams.allow_insecure_http`).
    pub allow_insecure_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCallbacks {
    pub url: Option<String>,
    pub secret: Option<SecretString>,
    /// Plain `http://` for the callback receiver (overrides `upstreams.allow_insecure_http`).
    pub allow_insecure_http: Option<bool>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub ca_bundle: Option<String>,
    pub ca_bundle_only: Option<bool>,
    pub client_certificate: Option<String>,
    pub pin_sha256: Option<Vec<String>>,
}

/// Keys whose values are secrets: never printed, and always text when set from the environment.
pub(crate) const SECRET_KEYS: &[&str] = &[
    "client_secret",
    "secret_key",
    "password",
    "secret",
    "lgsp_access_token",
];
