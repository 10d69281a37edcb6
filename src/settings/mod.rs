//! Configuration: a TOML file plus `DVC_CONNECTOR__SECTION__KEY` environment overrides, validated once
//! into [`Settings`].
//!
//! Loading never stops at the first problem: unknown keys and wrongly typed values are removed one by one
//! and deserialization is repeated, then every semantic check runs, so `check-config` can list all
//! problems with the file (or variable), the key and what was expected. Secrets are `SecretString`s and
//! print as `<redacted>`.

mod raw;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::queue::{Backend, RetryPolicies};

pub use self::validate::{parse_duration, read_officers_file, read_tokens_file};

/// Prefix of environment variables that override the file; `__` separates the key's parts.
pub const ENV_PREFIX: &str = "DVC_CONNECTOR__";

#[derive(Debug, Clone)]
pub struct Settings {
    pub api: ApiSettings,
    pub ops: OpsSettings,
    pub store: StoreSettings,
    pub queue: QueueSettings,
    pub log: LogSettings,
    pub upstreams: Upstreams,
    pub callbacks: Option<CallbackSettings>,
    pub flows: FlowSettings,
    pub audit: AuditSettings,
}

/// The audit log of population-DB lookups (`[audit]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub path: PathBuf,
    /// HMAC key for citizen IDs (64 hex digits); without it the log cannot be searched by citizen.
    pub key_file: Option<PathBuf>,
    /// Segment length and retention.
    pub policy: AuditPolicy,
}

/// How the business flows behave (`[flows]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSettings {
    pub identity: IdentityFlowSettings,
    pub postal: PostalFlowSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFlowSettings {
    /// `exists` (XacThucThongTinCongDan) or `full` (XacMinhThongTinNhanThan) when a request names none.
    pub default_mode: IdentityMode,
    /// Identical requests within this window are answered from the previous verdict.
    pub cache_window: Duration,
    /// `MaTichHop` and `MaDonVi` of full-record lookups.
    pub integration_code: String,
    pub agency_code: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostalFlowSettings {
    /// How often the tracking feed is read.
    pub tracking_interval: Duration,
    pub tracking_page_size: u32,
    /// When a result delivery is delivered, add a "result returned" (10) step to the dossier's sync.
    pub result_returned_step: bool,
    pub result_returned_content: String,
    /// The agency as sender, for requests that name none.
    pub sender: Option<Sender>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub name: String,
    pub phone: String,
    pub address: String,
    /// The current two-digit code (checked against the catalogue; a pre-2025 code is mapped).
    pub province_code: String,
    pub ward_code: Option<String>,
    /// Only when known.
    pub district_code: Option<String>,
    pub email: Option<String>,
}

/// When the audit log's segments are sealed and how long they are kept (`[audit]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    pub rotate_every: Duration,
    /// `None`: segments are kept until an operator removes them (and `verify` reports that).
    pub retention: Option<Duration>,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        Self {
            rotate_every: Duration::from_secs(30 * 86_400),
            retention: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub limits: ListenerLimits,
    pub body_limit: usize,
    /// `[[api.tokens]]`.
    pub tokens: Vec<TokenSettings>,
    /// More tokens in their own file, read at start and again on SIGHUP ([`read_tokens_file`]).
    pub tokens_file: Option<PathBuf>,
    /// Requests per second allowed to each token (bursts up to the same number); 0: no limit.
    pub rate_limit: u32,
    /// Failed authentications a minute from one client address (API and dashboard together) before
    /// it gets 429 until the minute is over; 0: no limit.
    pub auth_failure_limit: u32,
    /// Serve TLS (and mTLS when `client_ca` is set) instead of plain HTTP.
    pub tls: Option<ServerTlsSettings>,
}

/// What one client may hold of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// A request's headers must have arrived this long after the connection opened or went idle.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// Connections served at once (TLS handshakes included); more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// A listener's own TLS: files checked readable and parsed at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Client certificates must chain to one of these CAs (mTLS); `None`: no client certificate asked.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Portal,
    Admin,
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub name: String,
    /// SHA-256 of the bearer token; the token itself is never configured.
    pub sha256: [u8; 32],
    pub scopes: BTreeSet<Scope>,
}

#[derive(Debug, Clone)]
pub struct OpsSettings {
    pub listen: SocketAddr,
    pub limits: ListenerLimits,
    pub tls: Option<ServerTlsSettings>,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub backend: Backend,
    /// Absolute; a relative path in the file is taken relative to the file's directory.
    pub path: PathBuf,
    /// Whether values are encrypted at rest, and with which key.
    pub encryption: Encryption,
    /// Files holding the at-rest encryption keys (64 hex digits each), newest first (with
    /// `Encryption::On`).
    pub encryption_key_files: Vec<PathBuf>,
    /// The engine's page cache in bytes: faster drains of a large backlog for more memory held.
    pub cache_bytes: usize,
}

/// Encryption at rest of the queue's job and record values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// Under the keys of `encryption_key_files` (the default; a key file is required).
    On,
    /// Under a key generated at first start beside the store (`store.key`): for development and the
    /// demo, since a key beside the data protects nothing against a copy of the disk.
    Generated,
    /// Values in clear; only when the settings say so.
    Off,
}

/// The key file `Encryption::Generated` makes and uses, in the store directory.
pub const GENERATED_KEY: &str = "store.key";
/// With `Encryption::Off`, the key of the keyed record-key hashes, in the store directory.
pub const RECORD_KEY: &str = "record-keys.key";

impl Settings {
    /// What a valid configuration may still get wrong, said at `check-config` and at start.
    pub fn advice(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, target) in &self.upstreams.portal {
            // The national portal (and provincial portals behind the same LGSP) route by `dstcode`.
            if target.routing_code.is_empty() && name == "national" {
                out.push(format!(
                    "upstreams.portal.{name}.routing_code is not set: the national portal's gateway routes calls by the dstcode header, and calls without it are refused there"
                ));
            }
        }
        out
    }
}

impl StoreSettings {
    /// Reads the key files into a keyring (None with encryption off), making the generated key when
    /// it is missing.
    pub fn keyring(&self) -> Result<Option<std::sync::Arc<crate::queue::kv::Keyring>>, String> {
        let keys = match self.encryption {
            Encryption::Off => return Ok(None),
            Encryption::Generated => vec![read_or_make_key(&self.path.join(GENERATED_KEY))?],
            Encryption::On => self
                .encryption_key_files
                .iter()
                .map(|p| read_key(p))
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(crate::queue::kv::Keyring::new(&keys).map(std::sync::Arc::new))
    }

    /// The key under which record keys that could carry personal data are hashed (the verdict cache's,
    /// the stored Idempotency-Keys): derived from the current encryption key, or, with encryption off, a
    /// key made beside the store.
    pub fn record_key(&self) -> Result<[u8; 32], String> {
        use hmac::Mac as _;
        let base = match self.encryption {
            Encryption::On => read_key(
                self.encryption_key_files
                    .first()
                    .ok_or("no encryption key file")?,
            )?,
            Encryption::Generated => read_or_make_key(&self.path.join(GENERATED_KEY))?,
            Encryption::Off => read_or_make_key(&self.path.join(RECORD_KEY))?,
        };
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&base).map_err(|e| e.to_string())?;
        mac.update(b"dvc-connector record keys v1");
        Ok(mac.finalize().into_bytes().into())
    }
}

/// Reads a key file, or makes it (32 random bytes as hex, mode 0600) when it does not exist.
pub fn read_or_make_key(path: &std::path::Path) -> Result<[u8; 32], String> {
    use chacha20poly1305::aead::OsRng;
    use chacha20poly1305::aead::rand_core::RngCore as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| {
                f.write_all(crate::hex::encode(&key).as_bytes())?;
                f.sync_all()
            });
        match made {
            Ok(()) => {}
            // Another process made it first: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    read_key(path)
}

/// A key file: 64 hex digits (whitespace around them ignored).
pub fn read_key(path: &std::path::Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let hex = text.trim();
    let bytes: Option<Vec<u8>> = (hex.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
        format!(
            "{}: expected 64 hex digits (e.g. `openssl rand -hex 32`)",
            path.display()
        )
    })
}

#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub lease: Duration,
    pub lane_concurrency: usize,
    pub idle_poll: Duration,
    pub auth_pause: Duration,
    pub shutdown_grace: Duration,
    pub retention: Duration,
    pub purge_interval: Duration,
    pub purge_batch: usize,
    pub retry: RetryPolicies,
    pub circuit: crate::queue::protection::BreakerSettings,
    pub lanes: BTreeMap<String, LaneSettings>,
}

/// Per-lane overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneSettings {
    pub concurrency: Option<usize>,
    pub rate_per_second: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `info,dvc_connector=debug`.
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM file), checked readable at load.
    pub ca_bundle: Option<PathBuf>,
    pub ca_bundle_only: bool,
    /// Client certificate and key (PEM file) for mTLS.
    pub client_certificate: Option<PathBuf>,
    /// SHA-256 digests of the public keys the upstream's certificate may carry; empty: no pinning.
    pub pin_sha256: Vec<[u8; 32]>,
}

#[derive(Debug, Clone)]
pub struct OfficerCredentials {
    pub key: String,
    pub password: SecretString,
}

#[derive(Debug, Clone)]
pub struct PopulationSettings {
    pub service_url: Url,
    pub record_url: Option<Url>,
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub lgsp_access_token: Option<SecretString>,
    pub profile: dvc_population::client::Profile,
    /// Officer code (`MaCanBo`) → gateway credentials for `AuthHash`.
    pub officers: BTreeMap<String, OfficerCredentials>,
    /// More officers in their own file, read at start and again on SIGHUP ([`read_officers_file`]).
    pub officers_file: Option<PathBuf>,
    pub http: HttpSettings,
}

#[derive(Debug, Clone)]
pub struct PostalSettings {
    pub base_url: Url,
    pub customer_code: String,
    pub customer_key: String,
    pub secret_key: SecretString,
    pub profile: dvc_postal::client::Profile,
    pub http: HttpSettings,
}

#[derive(Debug, Clone)]
pub struct PortalTarget {
    pub name: String,
    pub base_url: Url,
    pub username: String,
    pub password: SecretString,
    pub agency_code: String,
    pub routing_code: String,
    pub profile: dvc_portal::client::Profile,
    pub http: HttpSettings,
}

#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    pub population: Option<PopulationSettings>,
    pub postal: Option<PostalSettings>,
    pub portal: BTreeMap<String, PortalTarget>,
}

#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub url: Url,
    pub secret: SecretString,
    pub http: HttpSettings,
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `environment variable NAME` when the value came from there.
    pub origin: String,
    /// Dotted key, e.g. `queue.lease`; empty for problems with the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// Every problem found, in file order where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The configuration as read (file plus environment), before validation; printable with secrets redacted.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    /// The file as written, for the line numbers of problems.
    text: String,
    table: toml::Table,
    /// Problems worth telling but not fatal (a world-readable file holding secrets).
    warnings: Vec<String>,
    /// Dotted keys set from the environment, with the variable's name.
    from_env: BTreeMap<String, String>,
}

impl Source {
    /// Reads `path` and applies the overrides found in `env` (pass `std::env::vars()` in production).
    pub fn read(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Source, ConfigErrors> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                origin: origin.clone(),
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                origin: origin.clone(),
                key: String::new(),
                message: format!("not valid TOML at {}", validate::toml_error(&text, &e)),
            }])
        })?;
        let mut warnings = Vec::new();
        if holds_secret(&table) && world_readable(path) {
            warnings.push(format!(
                "{origin} holds secrets and is readable by every user of this machine; \
                 restrict it (chmod 600, owned by the connector's user) or move the secrets to \
                 *_file keys or the environment"
            ));
        }
        let mut from_env = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            if path.iter().any(String::is_empty) {
                errors.push(ConfigError {
                    origin: format!("environment variable {name}"),
                    key: String::new(),
                    message: "expected DVC_CONNECTOR__SECTION__KEY with non-empty parts".into(),
                });
                continue;
            }
            if let Err(message) = set_path(&mut table, &path, &value) {
                errors.push(ConfigError {
                    origin: format!("environment variable {name}"),
                    key: path.join("."),
                    message,
                });
                continue;
            }
            from_env.insert(path.join("."), name);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Source {
            path: path.to_owned(),
            text,
            table,
            warnings,
            from_env,
        })
    }

    /// Problems worth telling that do not stop the start.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn origin_of(&self, key: &str) -> String {
        // A key set from the environment, or one below it.
        self.from_env
            .iter()
            .find(|(k, _)| key == k.as_str() || key.starts_with(&format!("{k}.")))
            .map(|(_, name)| format!("environment variable {name}"))
            .unwrap_or_else(|| match line_of(&self.text, key) {
                Some(line) => format!("{}:{line}", self.path.display()),
                None => self.path.display().to_string(),
            })
    }

    /// The configuration as TOML with every secret replaced by `<redacted>`.
    pub fn redacted(&self) -> String {
        let mut table = self.table.clone();
        redact(&mut table);
        toml::to_string_pretty(&table).unwrap_or_default()
    }

    /// Validates into [`Settings`], reporting every problem.
    pub fn settings(&self) -> Result<Settings, ConfigErrors> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let base_dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut table = self.table.clone();
        secret_files(&mut table, "", &base_dir, &mut problems);
        let raw = validate::deserialize_all(table, &mut problems);
        let result = raw.map(|raw| validate::settings(raw, &base_dir, &mut problems));
        if problems.is_empty()
            && let Some(settings) = result
        {
            return Ok(settings);
        }
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|(key, message)| ConfigError {
                    origin: self.origin_of(&key),
                    key,
                    message,
                })
                .collect(),
        ))
    }
}

/// The line of `text` where the dotted `key` is set, or else the header of the closest table that
/// holds it (where a missing key belongs).
fn line_of(text: &str, key: &str) -> Option<usize> {
    let clean = |s: &str| s.replace(['"', '\'', ' '], "");
    let key = clean(key.split('[').next().unwrap_or(key));
    let mut section = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(usize, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        let header = if let Some(rest) = t.strip_prefix("[[") {
            let name = clean(rest.split("]]").next().unwrap_or(""));
            let n = arrays
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            Some(format!("{name}.{n}"))
        } else {
            t.strip_prefix('[')
                .map(|rest| clean(rest.split(']').next().unwrap_or("")))
        };
        if let Some(h) = header {
            section = h;
            if (key == section || key.starts_with(&format!("{section}.")))
                && best.is_none_or(|(len, _)| section.len() >= len)
            {
                best = Some((section.len(), i + 1));
            }
            continue;
        }
        if let Some((k, _)) = t.split_once('=') {
            let full = if section.is_empty() {
                clean(k)
            } else {
                format!("{section}.{}", clean(k))
            };
            if full == key {
                return Some(i + 1);
            }
        }
    }
    best.map(|(_, line)| line)
}

/// Reads and validates in one step.
pub fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigErrors> {
    Source::read(path, env)?.settings()
}

/// Whether the file itself (before environment overrides) holds a secret value.
fn holds_secret(table: &toml::Table) -> bool {
    table.iter().any(|(key, value)| match value {
        toml::Value::Table(inner) => holds_secret(inner),
        toml::Value::Array(items) => items.iter().any(|i| match i {
            toml::Value::Table(inner) => holds_secret(inner),
            _ => false,
        }),
        toml::Value::String(s) => raw::SECRET_KEYS.contains(&key.as_str()) && !s.is_empty(),
        _ => false,
    })
}

#[cfg(unix)]
fn world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

#[cfg(not(unix))]
fn world_readable(_: &Path) -> bool {
    false
}

/// `<secret>_file = "path"` (for any secret key, e.g. `password_file`, `client_secret_file`) reads the
/// secret from that file (relative to the configuration's directory; one trailing newline dropped).
fn secret_files(
    table: &mut toml::Table,
    prefix: &str,
    base_dir: &Path,
    problems: &mut Vec<(String, String)>,
) {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if let Some(secret) = key.strip_suffix("_file")
            && raw::SECRET_KEYS.contains(&secret)
        {
            let Some(toml::Value::String(file)) = table.remove(&key) else {
                problems.push((dotted, "expected the path of a file".into()));
                continue;
            };
            if table.contains_key(secret) {
                problems.push((
                    dotted,
                    format!("set either `{secret}` or `{key}`, not both"),
                ));
                continue;
            }
            let path = base_dir.join(&file);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let value = text.strip_suffix('\n').unwrap_or(&text);
                    let value = value.strip_suffix('\r').unwrap_or(value);
                    table.insert(secret.to_owned(), toml::Value::String(value.to_owned()));
                }
                Err(e) => problems.push((dotted, format!("{}: {e}", path.display()))),
            }
            continue;
        }
        match table.get_mut(&key) {
            Some(toml::Value::Table(inner)) => secret_files(inner, &dotted, base_dir, problems),
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        secret_files(inner, &format!("{dotted}.{i}"), base_dir, problems);
                    }
                }
            }
            _ => {}
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let mut root = toml::Value::Table(std::mem::take(table));
    let result = set_in(&mut root, path, raw);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    result
}

/// Sets `path` below `node`; list entries are addressed by index (`API__TOKENS__0__SHA256`).
fn set_in(node: &mut toml::Value, path: &[String], raw: &str) -> Result<(), String> {
    let (part, rest) = path.split_first().ok_or("empty key")?;
    match node {
        toml::Value::Table(t) if rest.is_empty() => {
            let keep_text = raw::SECRET_KEYS.contains(&part.as_str())
                || matches!(t.get(part), Some(toml::Value::String(_)));
            let value = if keep_text {
                toml::Value::String(raw.to_owned())
            } else {
                parse_scalar(raw)
            };
            t.insert(part.clone(), value);
            Ok(())
        }
        toml::Value::Table(t) => {
            let child = t
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            set_in(child, rest, raw)
        }
        toml::Value::Array(items) => {
            let i: usize = part
                .parse()
                .map_err(|_| format!("`{part}`: this key is a list; name an entry by its index"))?;
            let len = items.len();
            let child = items
                .get_mut(i)
                .ok_or_else(|| format!("the list has {len} entries; there is no entry {i}"))?;
            if rest.is_empty() {
                return Err("name a key inside the list entry".into());
            }
            set_in(child, rest, raw)
        }
        _ => Err(format!(
            "`{part}` cannot be set inside a value that is not a section"
        )),
    }
}

/// An environment value as a TOML value (`8` → integer, `true` → boolean, `["a"]` → array), else text.
fn parse_scalar(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn redact(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        match value {
            toml::Value::Table(inner) => redact(inner),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        redact(inner);
                    }
                }
            }
            _ if raw::SECRET_KEYS.contains(&key.as_str()) => {
                *value = toml::Value::String("<redacted>".into());
            }
            // A URL may carry a password in its user info.
            toml::Value::String(text) => {
                if let Ok(mut url) = Url::parse(text)
                    && url.password().is_some()
                {
                    let _ = url.set_password(Some("redacted"));
                    *text = url.to_string();
                }
            }
            _ => {}
        }
    }
}

/// Which population DB operation answers the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMode {
    /// `XacThucThongTinCongDan`: does a citizen with this number and name exist?
    Exists,
    /// `XacMinhThongTinNhanThan`: the record, compared field by field.
    Full,
}

impl IdentityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMode::Exists => "exists",
            IdentityMode::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Option<IdentityMode> {
        match s {
            "exists" => Some(IdentityMode::Exists),
            "full" => Some(IdentityMode::Full),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
