//! Raw configuration → [`Settings`], collecting every problem as (dotted key, what was expected).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::raw::{RawFlows, RawOfficer, RawRetry, RawRetryOverride, RawSettings, RawToken};
use super::*;
use crate::queue::{Backend, RetryPolicies, RetryPolicy};

type Problems = Vec<(String, String)>;

/// Deserializes, removing each unknown or mistyped key (and noting it) until the rest fits.
/// None when the document cannot be made to fit at all.
pub(super) fn deserialize_all(
    mut table: toml::Table,
    problems: &mut Problems,
) -> Option<RawSettings> {
    for _ in 0..256 {
        let value = toml::Value::Table(table.clone());
        match serde_path_to_error::deserialize::<_, RawSettings>(value) {
            Ok(raw) => return Some(raw),
            Err(error) => {
                let path: Vec<String> = error
                    .path()
                    .iter()
                    .filter_map(|segment| match segment {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                        _ => None,
                    })
                    .collect();
                // toml appends "in `path`" on a second line; the key is reported separately.
                let message = error
                    .inner()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let message = if message.starts_with("unknown field") {
                    format!("unknown key ({message})")
                } else if path
                    .last()
                    .is_some_and(|k| super::raw::SECRET_KEYS.contains(&k.as_str()))
                {
                    // serde quotes the offending value; a secret's value is never printed.
                    "expected text (the value is a secret and is not shown)".to_owned()
                } else {
                    message
                };
                problems.push((path.join("."), plain_types(&message)));
                if !remove(&mut table, &path) {
                    return None;
                }
            }
        }
    }
    None
}

/// serde names Rust types (`expected i64`); an integrator reads TOML.
fn plain_types(message: &str) -> String {
    let mut out = message.to_owned();
    for (rust, plain) in [
        ("expected i64", "expected an integer"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected i32", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list ([…])"),
        ("expected a map", "expected a table"),
        ("expected struct", "expected a table"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

fn remove(table: &mut toml::Table, path: &[String]) -> bool {
    let mut root = toml::Value::Table(std::mem::take(table));
    let removed = remove_in(&mut root, path);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    removed
}

fn remove_in(node: &mut toml::Value, path: &[String]) -> bool {
    let Some((part, rest)) = path.split_first() else {
        return false;
    };
    match node {
        toml::Value::Table(t) if rest.is_empty() => t.remove(part).is_some(),
        toml::Value::Table(t) => t.get_mut(part).is_some_and(|child| remove_in(child, rest)),
        toml::Value::Array(items) => match part.parse::<usize>() {
            Ok(i) if i < items.len() && rest.is_empty() => {
                items.remove(i);
                true
            }
            Ok(i) => items.get_mut(i).is_some_and(|child| remove_in(child, rest)),
            Err(_) => false,
        },
        _ => false,
    }
}

/// A URL as it may be printed: without a password in its user info.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_password(None);
    url.to_string()
}

/// Parses `500ms`, `30s`, `10m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("`{text}` has no unit; expected a duration like 500ms, 30s, 10m, 1h or 7d")
    })?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a duration like 500ms, 30s, 10m, 1h or 7d"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("`{text}`: expected a duration like 500ms, 30s, 10m, 1h or 7d"))
}

fn parse_size(value: &toml::Value) -> Result<usize, String> {
    let expected = "expected a size in bytes, or a number with KiB or MiB";
    match value {
        toml::Value::Integer(n) if *n > 0 => usize::try_from(*n).map_err(|_| expected.to_owned()),
        toml::Value::String(s) => {
            let s = s.trim();
            let (number, mult) = if let Some(n) = s.strip_suffix("MiB") {
                (n, 1 << 20)
            } else if let Some(n) = s.strip_suffix("KiB") {
                (n, 1 << 10)
            } else {
                (s, 1)
            };
            number
                .trim()
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{s}`: {expected}"))
        }
        _ => Err(expected.to_owned()),
    }
}

/// Collects one section's checks; each getter records a problem and returns a fallback.
struct Checker<'a> {
    problems: &'a mut Problems,
    /// Upstream URLs may be plain http:// (development against the simulators only).
    allow_http: bool,
}

impl Checker<'_> {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push((key.to_owned(), message.into()));
    }

    /// Officers' gateway credentials by officer code, under `prefix`.
    fn officers(
        &mut self,
        prefix: &str,
        raw: BTreeMap<String, RawOfficer>,
    ) -> BTreeMap<String, OfficerCredentials> {
        let mut officers = BTreeMap::new();
        for (code, o) in raw {
            let key = self
                .required(&format!("{prefix}.{code}.key"), o.key.as_deref())
                .map(str::to_owned);
            let password = self.secret(&format!("{prefix}.{code}.password"), o.password);
            if let (Some(key), Some(password)) = (key, password) {
                officers.insert(code, OfficerCredentials { key, password });
            }
        }
        officers
    }

    /// `[[api.tokens]]` entries (or a tokens file's `[[tokens]]`), under `prefix`; `names` are the
    /// names taken so far.
    fn tokens(
        &mut self,
        prefix: &str,
        raw: &[RawToken],
        names: &mut BTreeSet<String>,
    ) -> Vec<TokenSettings> {
        let mut tokens = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let key = format!("{prefix}.{i}");
            let name = self
                .required(&format!("{key}.name"), t.name.as_deref())
                .unwrap_or_default()
                .to_owned();
            if !name.is_empty() && !names.insert(name.clone()) {
                self.fail(
                    &format!("{key}.name"),
                    format!("`{name}` is used by another token"),
                );
            }
            let sha256 = match self.required(&format!("{key}.sha256"), t.sha256.as_deref()) {
                Some(hex) => decode_sha256(hex).unwrap_or_else(|| {
                    self.fail(
                        &format!("{key}.sha256"),
                        "expected 64 hex digits (sha256 of the token)",
                    );
                    [0; 32]
                }),
                None => [0; 32],
            };
            let mut scopes = BTreeSet::new();
            match &t.scopes {
                None => self.fail(
                    &format!("{key}.scopes"),
                    "missing; expected a list of \"portal\" and/or \"admin\"",
                ),
                Some(list) => {
                    for s in list {
                        match s.as_str() {
                            "portal" => {
                                scopes.insert(Scope::Portal);
                            }
                            "admin" => {
                                scopes.insert(Scope::Admin);
                            }
                            other => self.fail(
                                &format!("{key}.scopes"),
                                format!(
                                    "unknown scope `{other}`; expected \"portal\" or \"admin\""
                                ),
                            ),
                        }
                    }
                    if list.is_empty() {
                        self.fail(&format!("{key}.scopes"), "must name at least one scope");
                    }
                }
            }
            tokens.push(TokenSettings {
                name,
                sha256,
                scopes,
            });
        }
        tokens
    }

    fn duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                self.fail(
                    key,
                    format!("`{text}` is too short; expected at least {min:?}"),
                );
                default
            }
            Err(message) => {
                self.fail(key, message);
                default
            }
        }
    }

    fn int(&mut self, key: &str, value: Option<i64>, default: u64, range: (u64, u64)) -> u64 {
        let Some(n) = value else { return default };
        match u64::try_from(n) {
            Ok(n) if (range.0..=range.1).contains(&n) => n,
            _ => {
                self.fail(
                    key,
                    format!(
                        "{n} is out of range; expected an integer from {} to {}",
                        range.0, range.1
                    ),
                );
                default
            }
        }
    }

    fn limits(
        &mut self,
        section: &str,
        header_read_timeout: Option<&str>,
        idle_timeout: Option<&str>,
        max_connections: Option<i64>,
        default_connections: u64,
    ) -> ListenerLimits {
        ListenerLimits {
            header_read_timeout: self.duration(
                &format!("{section}.header_read_timeout"),
                header_read_timeout,
                Duration::from_secs(10),
                Duration::from_millis(100),
            ),
            idle_timeout: self.duration(
                &format!("{section}.idle_timeout"),
                idle_timeout,
                Duration::from_secs(60),
                Duration::from_millis(100),
            ),
            max_connections: self.int(
                &format!("{section}.max_connections"),
                max_connections,
                default_connections,
                (1, 100_000),
            ) as usize,
        }
    }

    fn addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let fallback: SocketAddr = default
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let Some(text) = value else { return fallback };
        text.parse().unwrap_or_else(|_| {
            self.fail(
                key,
                format!("`{text}` is not an address; expected IP:PORT such as 127.0.0.1:8080"),
            );
            fallback
        })
    }

    fn required<'v>(&mut self, key: &str, value: Option<&'v str>) -> Option<&'v str> {
        match value {
            Some(v) if !v.trim().is_empty() => {
                self.no_placeholder(key, v);
                Some(v)
            }
            Some(_) => {
                self.fail(key, "must not be empty");
                None
            }
            None => {
                self.fail(key, "missing; this key is required");
                None
            }
        }
    }

    fn url(&mut self, key: &str, value: Option<&str>) -> Option<Url> {
        let text = self.required(key, value)?;
        match Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            Ok(url) => {
                self.fail(
                    key,
                    format!(
                        "`{}`: expected an http:// or https:// URL with a host",
                        shown(&url)
                    ),
                );
                None
            }
            // The text is not echoed: a malformed URL may still hold credentials.
            Err(e) => {
                self.fail(key, format!("not a valid URL ({e})"));
                None
            }
        }
    }

    /// An upstream URL: https://, unless development explicitly allows http://.
    fn upstream_url(&mut self, key: &str, value: Option<&str>, allow: Option<bool>) -> Option<Url> {
        let url = self.url(key, value)?;
        if url.scheme() == "http" && !allow.unwrap_or(self.allow_http) {
            self.fail(
                key,
                format!("`{}`: plain http:// is refused for upstreams; use https://, or set upstreams.allow_insecure_http = true for development against the simulators", shown(&url)),
            );
            return None;
        }
        Some(url)
    }

    fn secret(&mut self, key: &str, value: Option<SecretString>) -> Option<SecretString> {
        use secrecy::ExposeSecret;
        match value {
            Some(s) if !s.expose_secret().is_empty() => Some(s),
            Some(_) => {
                self.fail(key, "must not be empty");
                None
            }
            None => {
                let var = format!(
                    "{ENV_PREFIX}{}",
                    key.replace('.', "__").to_ascii_uppercase()
                );
                self.fail(
                    key,
                    format!("missing; this secret is required: set {var} in the environment (or `{}_file`, or the key itself in the file)", key.rsplit('.').next().unwrap_or(key)),
                );
                None
            }
        }
    }

    /// Refuses a value the templates leave for the integrator to replace (`CHANGE-ME`, `example.*`,
    /// `*.invalid`): a placeholder that reaches an upstream fails far from where it was written.
    fn no_placeholder(&mut self, key: &str, value: &str) {
        let lower = value.to_ascii_lowercase();
        let host = url::Url::parse(value)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        let placeholder = lower.contains("change-me")
            || host.as_deref().is_some_and(|h| {
                h.ends_with(".invalid")
                    || h == "example.com"
                    || h.starts_with("example.")
                    || h.ends_with(".example.com")
                    || h.ends_with(".example")
            });
        if placeholder {
            self.fail(
                key,
                format!("`{value}` is a placeholder of the template: put the real value here"),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn http(
        &mut self,
        section: &str,
        connect: Option<&str>,
        total: Option<&str>,
        ca_bundle: Option<&str>,
        ca_bundle_only: Option<bool>,
        client_certificate: Option<&str>,
        pins: Option<&[String]>,
        base_dir: &Path,
    ) -> HttpSettings {
        let connect_timeout = self.duration(
            &format!("{section}.connect_timeout"),
            connect,
            Duration::from_secs(5),
            Duration::from_millis(1),
        );
        let timeout = self.duration(
            &format!("{section}.timeout"),
            total,
            Duration::from_secs(30),
            Duration::from_millis(1),
        );
        if timeout < connect_timeout {
            self.fail(
                &format!("{section}.timeout"),
                "must not be shorter than connect_timeout",
            );
        }
        let mut file = |key: &str, value: Option<&str>| {
            let path = base_dir.join(value?);
            if !path.is_file() {
                self.fail(
                    &format!("{section}.{key}"),
                    format!("`{}` is not a readable file", path.display()),
                );
            }
            Some(path)
        };
        let ca_bundle = file("ca_bundle", ca_bundle);
        let client_certificate = file("client_certificate", client_certificate);
        if ca_bundle_only == Some(true) && ca_bundle.is_none() {
            self.fail(&format!("{section}.ca_bundle_only"), "needs ca_bundle");
        }
        let mut pin_sha256 = Vec::new();
        for (i, pin) in pins.unwrap_or_default().iter().enumerate() {
            match dvc_upstream::http::parse_pin(pin) {
                Ok(digest) => pin_sha256.push(digest),
                Err(message) => self.fail(&format!("{section}.pin_sha256[{i}]"), message),
            }
        }
        if pins.is_some_and(<[String]>::is_empty) {
            self.fail(
                &format!("{section}.pin_sha256"),
                "an empty list would pin nothing; remove the key or list the pins",
            );
        }
        HttpSettings {
            connect_timeout,
            timeout,
            ca_bundle,
            ca_bundle_only: ca_bundle_only.unwrap_or(false),
            client_certificate,
            pin_sha256,
        }
    }

    /// `[api.tls]` / `[ops.tls]`: both files required, and the certificate, key and client CAs must
    /// parse into a working server configuration (so `check-config` finds what `run` would).
    fn server_tls(
        &mut self,
        section: &str,
        raw: Option<&super::raw::RawServerTls>,
        base_dir: &Path,
    ) -> Option<ServerTlsSettings> {
        let raw = raw?;
        let file = |c: &mut Self, key: &str, value: Option<&str>, required: bool| {
            let Some(value) = value else {
                if required {
                    c.fail(&format!("{section}.{key}"), "missing; expected a PEM file");
                }
                return None;
            };
            let path = base_dir.join(value);
            if !path.is_file() {
                c.fail(
                    &format!("{section}.{key}"),
                    format!("`{}` is not a readable file", path.display()),
                );
                return None;
            }
            Some(path)
        };
        let certificate = file(self, "certificate", raw.certificate.as_deref(), true);
        let private_key = file(self, "private_key", raw.private_key.as_deref(), true);
        let client_ca = match &raw.client_ca {
            None => None,
            Some(value) => Some(file(self, "client_ca", Some(value), true)?),
        };
        let settings = ServerTlsSettings {
            certificate: certificate?,
            private_key: private_key?,
            client_ca,
        };
        if let Err(e) = crate::tls::server_config(
            &settings.certificate,
            &settings.private_key,
            settings.client_ca.as_deref(),
        ) {
            self.fail(section, format!("{e:#}"));
            return None;
        }
        Some(settings)
    }

    fn path_value(&mut self, key: &str, value: Option<&String>, default: &str) -> String {
        match value {
            None => default.to_owned(),
            Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => p.clone(),
            Some(p) => {
                self.fail(key, format!("`{p}`: expected a path starting with '/'"));
                default.to_owned()
            }
        }
    }

    /// A path on the upstream's `base_url`, or a whole URL of its own (VNPost's gateways put the token,
    /// order, cancel and tracking endpoints on different hosts), held to the upstream URL rule.
    fn endpoint_value(
        &mut self,
        key: &str,
        value: Option<&String>,
        default: &str,
        allow_http: Option<bool>,
    ) -> String {
        match value {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => self
                .upstream_url(key, Some(url), allow_http)
                .map_or_else(|| default.to_owned(), |u| u.to_string()),
            _ => self.path_value(key, value, default),
        }
    }

    fn header_name(&mut self, key: &str, value: Option<&String>, default: &str) -> String {
        match value {
            None => default.to_owned(),
            Some(h)
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                h.clone()
            }
            Some(h) => {
                self.fail(key, format!("`{h}` is not a valid HTTP header name"));
                default.to_owned()
            }
        }
    }
}

pub(super) fn settings(raw: RawSettings, base_dir: &Path, problems: &mut Problems) -> Settings {
    let allow_http = raw.upstreams.allow_insecure_http.unwrap_or(false);
    let mut c = Checker {
        problems,
        allow_http,
    };

    let listen = c.addr("api.listen", raw.api.listen.as_deref(), "127.0.0.1:8080");
    let body_limit = match &raw.api.body_limit {
        None => 1 << 20,
        Some(v) => parse_size(v).unwrap_or_else(|m| {
            c.fail("api.body_limit", m);
            1 << 20
        }),
    };
    let mut names = BTreeSet::new();
    let tokens = c.tokens("api.tokens", &raw.api.tokens, &mut names);
    let tokens_file = raw.api.tokens_file.as_deref().map(|f| base_dir.join(f));
    // Checked here (check-config, start); the daemon itself reads it at start and on SIGHUP.
    if let Some(path) = &tokens_file {
        match read_tokens_file(path) {
            Ok(more) => {
                for t in more {
                    if !names.insert(t.name.clone()) {
                        c.fail(
                            "api.tokens_file",
                            format!(
                                "`{}` in {} is also a token in the configuration",
                                t.name,
                                path.display()
                            ),
                        );
                    }
                }
            }
            Err(message) => c.fail("api.tokens_file", message),
        }
    }
    let api = ApiSettings {
        listen,
        limits: c.limits(
            "api",
            raw.api.header_read_timeout.as_deref(),
            raw.api.idle_timeout.as_deref(),
            raw.api.max_connections,
            1024,
        ),
        body_limit,
        tokens,
        tokens_file,
        rate_limit: c.int("api.rate_limit", raw.api.rate_limit, 20_000, (0, 1_000_000)) as u32,
        auth_failure_limit: c.int(
            "api.auth_failure_limit",
            raw.api.auth_failure_limit,
            10,
            (0, 1_000_000),
        ) as u32,
        tls: c.server_tls("api.tls", raw.api.tls.as_ref(), base_dir),
    };

    let ops = OpsSettings {
        listen: c.addr("ops.listen", raw.ops.listen.as_deref(), "127.0.0.1:9090"),
        limits: c.limits(
            "ops",
            raw.ops.header_read_timeout.as_deref(),
            raw.ops.idle_timeout.as_deref(),
            raw.ops.max_connections,
            64,
        ),
        tls: c.server_tls("ops.tls", raw.ops.tls.as_ref(), base_dir),
    };
    if ops.listen == api.listen && api.listen.port() != 0 {
        c.fail("ops.listen", "must differ from api.listen");
    }

    let backend = match raw.store.backend.as_deref() {
        None => Backend::Redb,
        Some(name) => Backend::parse(name).unwrap_or_else(|| {
            c.fail(
                "store.backend",
                format!("unknown backend `{name}`; expected \"redb\" or \"sled\""),
            );
            Backend::Redb
        }),
    };
    let path = match c.required("store.path", raw.store.path.as_deref()) {
        Some(p) => base_dir.join(p),
        None => PathBuf::new(),
    };
    let encryption_key_files: Vec<PathBuf> = raw
        .store
        .encryption_key_files
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|p| base_dir.join(p))
        .collect();
    for (i, file) in encryption_key_files.iter().enumerate() {
        if let Err(message) = read_key(file) {
            c.fail(&format!("store.encryption_key_files[{i}]"), message);
        } else if let Ok(meta) = std::fs::metadata(file) {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                c.fail(
                    &format!("store.encryption_key_files[{i}]"),
                    format!(
                        "{} is readable by others (mode {mode:o}): chmod 600 it",
                        file.display()
                    ),
                );
            }
        }
    }
    let encryption = match raw.store.encryption.as_deref() {
        None | Some("on") => Encryption::On,
        Some("generated") => Encryption::Generated,
        Some("off") => Encryption::Off,
        Some(other) => {
            c.fail(
                "store.encryption",
                format!("`{other}`: expected \"on\", \"generated\" or \"off\""),
            );
            Encryption::On
        }
    };
    match encryption {
        Encryption::On if encryption_key_files.is_empty() => c.fail(
            "store.encryption_key_files",
            "required: job and record values are encrypted at rest by default. Make a key (openssl rand -hex 32 > /etc/dvc-connector/store.key; chmod 600 /etc/dvc-connector/store.key) and list it here, or say store.encryption = \"generated\" (development: a key beside the store) or \"off\" explicitly",
        ),
        Encryption::Generated | Encryption::Off if !encryption_key_files.is_empty() => c.fail(
            "store.encryption_key_files",
            "key files are used only with store.encryption = \"on\"",
        ),
        _ => {}
    }
    let default_cache = crate::queue::kv::CACHE_BYTES;
    let cache_bytes = match &raw.store.cache {
        None => default_cache,
        Some(v) => match parse_size(v) {
            Ok(n) if n >= 1 << 20 => n,
            Ok(_) => {
                c.fail("store.cache", "expected at least 1MiB");
                default_cache
            }
            Err(m) => {
                c.fail("store.cache", m);
                default_cache
            }
        },
    };
    let store = StoreSettings {
        backend,
        path,
        encryption,
        encryption_key_files,
        cache_bytes,
    };

    let q = &raw.queue;
    let second = Duration::from_secs(1);
    let lease = c.duration(
        "queue.lease",
        q.lease.as_deref(),
        Duration::from_secs(60),
        second,
    );
    let queue = QueueSettings {
        lease,
        lane_concurrency: c.int("queue.lane_concurrency", q.lane_concurrency, 16, (1, 1024))
            as usize,
        idle_poll: c.duration(
            "queue.idle_poll",
            q.idle_poll.as_deref(),
            second,
            Duration::from_millis(10),
        ),
        auth_pause: c.duration(
            "queue.auth_pause",
            q.auth_pause.as_deref(),
            Duration::from_secs(60),
            second,
        ),
        shutdown_grace: c.duration(
            "queue.shutdown_grace",
            q.shutdown_grace.as_deref(),
            Duration::from_secs(10),
            Duration::ZERO,
        ),
        retention: c.duration(
            "queue.retention",
            q.retention.as_deref(),
            Duration::from_secs(7 * 86_400),
            Duration::from_secs(60),
        ),
        purge_interval: c.duration(
            "queue.purge_interval",
            q.purge_interval.as_deref(),
            Duration::from_secs(600),
            second,
        ),
        purge_batch: c.int("queue.purge_batch", q.purge_batch, 1000, (1, 100_000)) as usize,
        retry: retry_policies(&mut c, &q.retry),
        circuit: crate::queue::protection::BreakerSettings {
            failures: c.int("queue.circuit.failures", q.circuit.failures, 5, (0, 10_000)) as u32,
            cooldown: c.duration(
                "queue.circuit.cooldown",
                q.circuit.cooldown.as_deref(),
                Duration::from_secs(5),
                Duration::from_millis(10),
            ),
            max_cooldown: c.duration(
                "queue.circuit.max_cooldown",
                q.circuit.max_cooldown.as_deref(),
                Duration::from_secs(300),
                Duration::from_millis(10),
            ),
        },
        lanes: BTreeMap::new(),
    };
    let mut queue = queue;
    for (lane, l) in &q.lanes {
        let key = format!("queue.lanes.{lane}");
        let concurrency = l
            .concurrency
            .map(|n| c.int(&format!("{key}.concurrency"), Some(n), 1, (1, 1024)) as usize);
        let rate_per_second = match l.rate_per_second {
            Some(r) if r.is_finite() && r > 0.0 => Some(r),
            Some(r) => {
                c.fail(
                    &format!("{key}.rate_per_second"),
                    format!("{r}: expected a positive number of jobs per second"),
                );
                None
            }
            None => None,
        };
        queue.lanes.insert(
            lane.clone(),
            LaneSettings {
                concurrency,
                rate_per_second,
            },
        );
    }
    if queue.circuit.max_cooldown < queue.circuit.cooldown {
        c.fail(
            "queue.circuit.max_cooldown",
            "must not be shorter than cooldown",
        );
    }
    if queue.shutdown_grace >= queue.lease {
        c.fail(
            "queue.shutdown_grace",
            "must be shorter than queue.lease, or a slow job could run twice",
        );
    }

    let log = LogSettings {
        format: match raw.log.format.as_deref() {
            None | Some("auto") => LogFormat::Auto,
            Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                c.fail(
                    "log.format",
                    format!("unknown format `{other}`; expected \"auto\", \"human\" or \"json\""),
                );
                LogFormat::Auto
            }
        },
        level: match raw.log.level.clone() {
            None => "info".to_owned(),
            Some(level) => {
                if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
                    c.fail("log.level", format!("`{level}`: expected a level (error, warn, info, debug, trace) or a tracing filter"));
                }
                level
            }
        },
    };

    let mut upstreams = Upstreams::default();
    if let Some(p) = raw.upstreams.population {
        let s = "upstreams.population";
        let service_url = c.upstream_url(
            &format!("{s}.service_url"),
            p.service_url.as_deref(),
            p.allow_insecure_http,
        );
        let record_url = p.record_url.as_deref().and_then(|u| {
            c.upstream_url(&format!("{s}.record_url"), Some(u), p.allow_insecure_http)
        });
        let token_url = c.upstream_url(
            &format!("{s}.token_url"),
            p.token_url.as_deref(),
            p.allow_insecure_http,
        );
        let client_id = c
            .required(&format!("{s}.client_id"), p.client_id.as_deref())
            .map(str::to_owned);
        let client_secret = c.secret(&format!("{s}.client_secret"), p.client_secret);
        let defaults = dvc_population::client::Profile::default();
        let profile = dvc_population::client::Profile {
            content_type: p.content_type.clone().unwrap_or(defaults.content_type),
            lgsp_access_token_header: c.header_name(
                &format!("{s}.lgsp_access_token_header"),
                p.lgsp_access_token_header.as_ref(),
                &defaults.lgsp_access_token_header,
            ),
            auth_hash_header: c.header_name(
                &format!("{s}.auth_hash_header"),
                p.auth_hash_header.as_ref(),
                &defaults.auth_hash_header,
            ),
        };
        let officers = c.officers(&format!("{s}.officers"), p.officers);
        let officers_file = p.officers_file.as_deref().map(|f| base_dir.join(f));
        // Checked here (check-config, start); the daemon itself reads it at start and on SIGHUP.
        if let Some(path) = &officers_file {
            match read_officers_file(path) {
                Ok(more) => {
                    for code in more.keys().filter(|code| officers.contains_key(*code)) {
                        c.fail(
                            &format!("{s}.officers_file"),
                            format!(
                                "officer `{code}` in {} is also in the configuration",
                                path.display()
                            ),
                        );
                    }
                }
                Err(message) => c.fail(&format!("{s}.officers_file"), message),
            }
        }
        let http = c.http(
            s,
            p.connect_timeout.as_deref(),
            p.timeout.as_deref(),
            p.ca_bundle.as_deref(),
            p.ca_bundle_only,
            p.client_certificate.as_deref(),
            p.pin_sha256.as_deref(),
            base_dir,
        );
        if let (Some(service_url), Some(token_url), Some(client_id), Some(client_secret)) =
            (service_url, token_url, client_id, client_secret)
        {
            upstreams.population = Some(PopulationSettings {
                service_url,
                record_url,
                token_url,
                client_id,
                client_secret,
                lgsp_access_token: p.lgsp_access_token,
                profile,
                officers,
                officers_file,
                http,
            });
        }
    }
    if let Some(p) = raw.upstreams.postal {
        let s = "upstreams.postal";
        let base_url = c.upstream_url(
            &format!("{s}.base_url"),
            p.base_url.as_deref(),
            p.allow_insecure_http,
        );
        let customer_code = c
            .required(&format!("{s}.customer_code"), p.customer_code.as_deref())
            .map(str::to_owned);
        let customer_key = c
            .required(&format!("{s}.customer_key"), p.customer_key.as_deref())
            .map(str::to_owned);
        let secret_key = c.secret(&format!("{s}.secret_key"), p.secret_key);
        let d = dvc_postal::client::Profile::default();
        let mut status_table = d.status_table.clone();
        if let Some(codes) = &p.status_codes {
            status_table.0.clear();
            for (code, state) in codes {
                match (code.trim().parse::<i64>(), dvc_postal::wire::ShipmentState::parse(state)) {
                    (Ok(n), Some(st)) => {
                        status_table.0.insert(n, st);
                    }
                    (Err(_), _) => c.fail(&format!("{s}.status_codes.{code}"), "expected a numeric StatusCode as the key"),
                    (_, None) => c.fail(
                        &format!("{s}.status_codes.{code}"),
                        format!("`{state}`: expected accepted, in_transit, out_for_delivery, delivered, delivery_failed, returned or cancelled"),
                    ),
                }
            }
        }
        let profile = dvc_postal::client::Profile {
            token_path: c.endpoint_value(
                &format!("{s}.token_path"),
                p.token_path.as_ref(),
                &d.token_path,
                p.allow_insecure_http,
            ),
            order_path: c.endpoint_value(
                &format!("{s}.order_path"),
                p.order_path.as_ref(),
                &d.order_path,
                p.allow_insecure_http,
            ),
            cancel_path: c.endpoint_value(
                &format!("{s}.cancel_path"),
                p.cancel_path.as_ref(),
                &d.cancel_path,
                p.allow_insecure_http,
            ),
            tracking_path: c.endpoint_value(
                &format!("{s}.tracking_path"),
                p.tracking_path.as_ref(),
                &d.tracking_path,
                p.allow_insecure_http,
            ),
            success_status: p.success_status.unwrap_or(d.success_status),
            already_exists_statuses: p
                .already_exists_statuses
                .clone()
                .unwrap_or(d.already_exists_statuses),
            status_table,
        };
        let http = c.http(
            s,
            p.connect_timeout.as_deref(),
            p.timeout.as_deref(),
            p.ca_bundle.as_deref(),
            p.ca_bundle_only,
            p.client_certificate.as_deref(),
            p.pin_sha256.as_deref(),
            base_dir,
        );
        if let (Some(base_url), Some(customer_code), Some(customer_key), Some(secret_key)) =
            (base_url, customer_code, customer_key, secret_key)
        {
            upstreams.postal = Some(PostalSettings {
                base_url,
                customer_code,
                customer_key,
                secret_key,
                profile,
                http,
            });
        }
    }
    for (name, t) in raw.upstreams.portal {
        let s = format!("upstreams.portal.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-')
        {
            c.fail(
                &s,
                "target names use lower-case letters, digits, '-' and '_'",
            );
        }
        let base_url = c.upstream_url(
            &format!("{s}.base_url"),
            t.base_url.as_deref(),
            t.allow_insecure_http,
        );
        let username = c
            .required(&format!("{s}.username"), t.username.as_deref())
            .map(str::to_owned);
        let password = c.secret(&format!("{s}.password"), t.password);
        let agency_code = c
            .required(&format!("{s}.agency_code"), t.agency_code.as_deref())
            .map(str::to_owned);
        let routing_code = t.routing_code.clone().unwrap_or_default();
        let d = dvc_portal::client::Profile::default();
        let mut status_map = d.status_map.clone();
        if let Some(words) = &t.statuses {
            status_map.0.clear();
            for (word, code) in words {
                match u8::try_from(*code) {
                    Ok(n) if (1..=10).contains(&n) => {
                        status_map.0.insert(word.to_lowercase(), n);
                    }
                    _ => c.fail(
                        &format!("{s}.statuses.{word}"),
                        format!("{code}: expected a TrangThaiHoSo code from 1 to 10"),
                    ),
                }
            }
        }
        let profile = dvc_portal::client::Profile {
            auth_path: c.path_value(
                &format!("{s}.auth_path"),
                t.auth_path.as_ref(),
                &d.auth_path,
            ),
            integration_path: c.path_value(
                &format!("{s}.integration_path"),
                t.integration_path.as_ref(),
                &d.integration_path,
            ),
            routing_header: c.header_name(
                &format!("{s}.routing_header"),
                t.routing_header.as_ref(),
                &d.routing_header,
            ),
            session_expired_codes: t
                .session_expired_codes
                .clone()
                .unwrap_or(d.session_expired_codes),
            already_exists_code: t.already_exists_code.unwrap_or(d.already_exists_code),
            does_not_exist_code: t.does_not_exist_code.unwrap_or(d.does_not_exist_code),
            status_map,
        };
        let http = c.http(
            &s,
            t.connect_timeout.as_deref(),
            t.timeout.as_deref(),
            t.ca_bundle.as_deref(),
            t.ca_bundle_only,
            t.client_certificate.as_deref(),
            t.pin_sha256.as_deref(),
            base_dir,
        );
        if let (Some(base_url), Some(username), Some(password), Some(agency_code)) =
            (base_url, username, password, agency_code)
        {
            upstreams.portal.insert(
                name.clone(),
                PortalTarget {
                    name,
                    base_url,
                    username,
                    password,
                    agency_code,
                    routing_code,
                    profile,
                    http,
                },
            );
        }
    }

    // The callback receiver is an upstream like the others: https unless allowed, and the same TLS
    // options (a CA bundle, a client certificate, pins).
    let callbacks = raw.callbacks.and_then(|cb| {
        let url = c.upstream_url("callbacks.url", cb.url.as_deref(), cb.allow_insecure_http);
        let secret = c.secret("callbacks.secret", cb.secret);
        let http = c.http(
            "callbacks",
            cb.connect_timeout.as_deref(),
            cb.timeout.as_deref().or(Some("10s")),
            cb.ca_bundle.as_deref(),
            cb.ca_bundle_only,
            cb.client_certificate.as_deref(),
            cb.pin_sha256.as_deref(),
            base_dir,
        );
        Some(CallbackSettings {
            url: url?,
            secret: secret?,
            http,
        })
    });

    let flows = flows(&mut c, &raw.flows);
    let audit = AuditSettings {
        path: raw
            .audit
            .path
            .as_deref()
            .map_or_else(|| store.path.join("audit.log"), |p| base_dir.join(p)),
        key_file: raw.audit.key_file.as_deref().map(|p| base_dir.join(p)),
        policy: AuditPolicy {
            rotate_every: c.duration(
                "audit.rotate_every",
                raw.audit.rotate_every.as_deref(),
                Duration::from_secs(30 * 86_400),
                Duration::from_secs(60),
            ),
            retention: raw.audit.retention.as_deref().map(|r| {
                c.duration(
                    "audit.retention",
                    Some(r),
                    Duration::from_secs(365 * 86_400),
                    Duration::from_secs(60),
                )
            }),
        },
    };
    if let Some(retention) = audit.policy.retention
        && retention < audit.policy.rotate_every
    {
        c.fail(
            "audit.retention",
            "must not be shorter than audit.rotate_every (a segment is removed whole)",
        );
    }
    if let Some(file) = &audit.key_file
        && let Err(message) = read_key(file)
    {
        c.fail("audit.key_file", message);
    }

    Settings {
        api,
        ops,
        store,
        queue,
        log,
        upstreams,
        callbacks,
        flows,
        audit,
    }
}

fn flows(c: &mut Checker<'_>, raw: &RawFlows) -> FlowSettings {
    let i = &raw.identity;
    let default_mode = match i.default_mode.as_deref() {
        None => super::IdentityMode::Exists,
        Some(m) => super::IdentityMode::parse(m).unwrap_or_else(|| {
            c.fail(
                "flows.identity.default_mode",
                format!("`{m}`: expected \"exists\" or \"full\""),
            );
            super::IdentityMode::Exists
        }),
    };
    let identity = IdentityFlowSettings {
        default_mode,
        cache_window: c.duration(
            "flows.identity.cache_window",
            i.cache_window.as_deref(),
            Duration::from_secs(600),
            Duration::ZERO,
        ),
        integration_code: i.integration_code.clone().unwrap_or_default(),
        agency_code: i.agency_code.clone().unwrap_or_default(),
    };
    let p = &raw.postal;
    let sender = p.sender.as_ref().and_then(|s| {
        let mut field = |name: &str, v: &Option<String>| {
            c.required(&format!("flows.postal.sender.{name}"), v.as_deref())
                .map(str::to_owned)
        };
        let name = field("name", &s.name);
        let phone = field("phone", &s.phone);
        let address = field("address", &s.address);
        let province_code = field("province_code", &s.province_code);
        // The sender's codes are checked against the administrative catalogue here, once, so a
        // shipment that uses them needs no further check.
        let catalogue = dvc_upstream::admin::catalogue();
        let province_code = province_code.and_then(|p| match catalogue.province(&p) {
            Ok(found) => Some(found.code),
            Err(e) => {
                c.fail("flows.postal.sender.province_code", format!("`{p}`: {e}"));
                None
            }
        });
        let ward_code = match (s.ward_code.as_deref().map(str::trim), &province_code) {
            (Some(w), Some(p)) => match catalogue.ward(p, w) {
                Ok(code) => Some(code),
                Err(e) => {
                    c.fail("flows.postal.sender.ward_code", format!("`{w}`: {e}"));
                    None
                }
            },
            _ => None,
        };
        let district_code = dvc_upstream::admin::district(s.district_code.as_deref())
            .unwrap_or_else(|d| {
                c.fail(
                    "flows.postal.sender.district_code",
                    format!(
                        "`{d}`: a district code (up to 5 digits); leave the key out when unknown"
                    ),
                );
                None
            });
        Some(Sender {
            name: name?,
            phone: phone?,
            address: address?,
            province_code: province_code?,
            ward_code,
            district_code: district_code.map(str::to_owned),
            email: s
                .email
                .as_deref()
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
        })
    });
    let postal = PostalFlowSettings {
        tracking_interval: c.duration(
            "flows.postal.tracking_interval",
            p.tracking_interval.as_deref(),
            Duration::from_secs(30),
            Duration::from_millis(50),
        ),
        tracking_page_size: c.int(
            "flows.postal.tracking_page_size",
            p.tracking_page_size,
            200,
            (1, 1000),
        ) as u32,
        result_returned_step: p.result_returned_step.unwrap_or(true),
        result_returned_content: p
            .result_returned_content
            .clone()
            .unwrap_or_else(|| "Đã trả kết quả qua dịch vụ bưu chính công ích".to_owned()),
        sender,
    };
    FlowSettings { identity, postal }
}

fn retry_policies(c: &mut Checker<'_>, raw: &RawRetry) -> RetryPolicies {
    let defaults = RetryPolicy::default();
    let default = policy(
        c,
        "queue.retry",
        &RawRetryOverride {
            base: raw.base.clone(),
            cap: raw.cap.clone(),
            max_attempts: raw.max_attempts,
            max_age: raw.max_age.clone(),
        },
        &defaults,
    );
    let mut per_kind = std::collections::HashMap::new();
    for (kind, over) in &raw.kinds {
        per_kind.insert(
            kind.clone(),
            policy(c, &format!("queue.retry.kinds.{kind}"), over, &default),
        );
    }
    RetryPolicies { default, per_kind }
}

fn policy(
    c: &mut Checker<'_>,
    section: &str,
    raw: &RawRetryOverride,
    fallback: &RetryPolicy,
) -> RetryPolicy {
    let ms = Duration::from_millis(1);
    let p = RetryPolicy {
        base: c.duration(
            &format!("{section}.base"),
            raw.base.as_deref(),
            fallback.base,
            ms,
        ),
        cap: c.duration(
            &format!("{section}.cap"),
            raw.cap.as_deref(),
            fallback.cap,
            ms,
        ),
        max_attempts: c.int(
            &format!("{section}.max_attempts"),
            raw.max_attempts,
            u64::from(fallback.max_attempts),
            (1, 10_000),
        ) as u32,
        max_age: c.duration(
            &format!("{section}.max_age"),
            raw.max_age.as_deref(),
            fallback.max_age,
            Duration::from_secs(1),
        ),
    };
    if p.cap < p.base {
        c.fail(&format!("{section}.cap"), "must not be smaller than base");
    }
    p
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.trim().as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Reads a tokens file (`api.tokens_file`): `[[tokens]]` entries shaped like `[[api.tokens]]`. The
/// daemon reads it at start and again on SIGHUP; every problem is named with the file and the key.
pub fn read_tokens_file(path: &Path) -> Result<Vec<TokenSettings>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        tokens: Vec<RawToken>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: File = toml::from_str(&text)
        .map_err(|e| format!("{}: {}", path.display(), toml_error(&text, &e)))?;
    let mut problems = Problems::new();
    let tokens = Checker {
        problems: &mut problems,
        allow_http: false,
    }
    .tokens("tokens", &file.tokens, &mut BTreeSet::new());
    if problems.is_empty() {
        Ok(tokens)
    } else {
        Err(problems
            .iter()
            .map(|(key, message)| format!("{}: {key}: {message}", path.display()))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// Reads an officers file (`upstreams.population.officers_file`): one table per officer code with its
/// `key` and `password`, as under `[upstreams.population.officers]`. The daemon reads it at start and
/// again on SIGHUP; every problem is named with the file and the key. A file readable by every user
/// of the machine is refused: it holds passwords.
pub fn read_officers_file(path: &Path) -> Result<BTreeMap<String, OfficerCredentials>, String> {
    if super::world_readable(path) {
        return Err(format!(
            "{} holds officers' passwords and is readable by every user of this machine; chmod 600 it",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw: BTreeMap<String, RawOfficer> = toml::from_str(&text)
        .map_err(|e| format!("{}: {}", path.display(), toml_error(&text, &e)))?;
    let mut problems = Problems::new();
    let officers = Checker {
        problems: &mut problems,
        allow_http: false,
    }
    .officers("", raw);
    if problems.is_empty() {
        Ok(officers)
    } else {
        Err(problems
            .iter()
            .map(|(key, message)| {
                // The secret's environment-variable hint is for the configuration, not this file.
                let message = if message.starts_with("missing") {
                    "missing"
                } else {
                    message
                };
                format!(
                    "{}: {}: {message}",
                    path.display(),
                    key.trim_start_matches('.')
                )
            })
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// A TOML error as `line L, column C: message`, without the excerpt of the file that the parser's
/// own rendering shows: the line at fault may hold a password, and this message goes to the log.
pub(super) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", e.message().trim())
        }
        None => e.message().trim().to_owned(),
    }
}

#[cfg(test)]
mod toml_error_tests {
    #[test]
    fn the_line_at_fault_is_named_but_not_shown() {
        let text = "[CB-01]\nkey = \"k\"\npassword = s3cret\n";
        let e = toml::from_str::<toml::Table>(text).expect_err("a bare word is not a value");
        let shown = super::toml_error(text, &e);
        assert!(shown.starts_with("line 3, column "), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            e.to_string().contains("s3cret"),
            "the parser's own rendering would show it"
        );
    }
}
