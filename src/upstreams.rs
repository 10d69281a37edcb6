//! The upstream clients, built once at start-up from validated settings. Secrets leave their
//! `SecretString` only here, on their way into the clients; CA bundles and client certificates are read
//! from disk here too, so a missing or unreadable file stops the start with a clear error.

use std::collections::BTreeMap;

use anyhow::Context;
use dvc_population::client::{Officer, PopulationClient, PopulationConfig};
use dvc_portal::client::{PortalClient, PortalConfig};
use dvc_postal::client::{PostalClient, PostalConfig};
use dvc_upstream::http::HttpOptions;
use secrecy::ExposeSecret;

use crate::settings::{HttpSettings, OfficerCredentials, PopulationSettings, Upstreams};

/// One client per configured upstream; portal clients by target name.
#[derive(Debug, Clone)]
pub struct Clients {
    pub population: Option<PopulationClient>,
    /// The officers the population client may act for (shared: SIGHUP reloads them).
    pub officers: std::sync::Arc<Officers>,
    pub postal: Option<PostalClient>,
    pub portal: BTreeMap<String, PortalClient>,
}

pub fn build(upstreams: &Upstreams) -> anyhow::Result<Clients> {
    build_observed(upstreams, None)
}

/// As [`build`], with every upstream call reported to `observer` (the daemon's metrics).
pub fn build_observed(
    upstreams: &Upstreams,
    observer: Option<std::sync::Arc<dyn dvc_upstream::Observer>>,
) -> anyhow::Result<Clients> {
    let population = match &upstreams.population {
        None => None,
        Some(p) => {
            let mut config = PopulationConfig::new(
                p.service_url.as_str(),
                p.token_url.as_str(),
                &p.client_id,
                p.client_secret.expose_secret(),
            );
            config.record_url = p.record_url.as_ref().map(|u| u.to_string());
            config.lgsp_access_token = p
                .lgsp_access_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned());
            config.profile = p.profile.clone();
            config.http = http_options(&p.http).context("upstreams.population")?;
            let client = PopulationClient::new(config).context("upstreams.population")?;
            Some(match &observer {
                Some(o) => client.with_observer(o.clone()),
                None => client,
            })
        }
    };
    let postal = match &upstreams.postal {
        None => None,
        Some(p) => {
            let mut config = PostalConfig::new(
                p.base_url.as_str(),
                &p.customer_code,
                &p.customer_key,
                p.secret_key.expose_secret(),
            );
            config.profile = p.profile.clone();
            config.http = http_options(&p.http).context("upstreams.postal")?;
            let client = PostalClient::new(config).context("upstreams.postal")?;
            Some(match &observer {
                Some(o) => client.with_observer(o.clone()),
                None => client,
            })
        }
    };
    let mut portal = BTreeMap::new();
    for (name, t) in &upstreams.portal {
        let mut config = PortalConfig::new(
            name,
            t.base_url.as_str(),
            &t.username,
            t.password.expose_secret(),
            &t.agency_code,
        );
        config.routing_code = t.routing_code.clone();
        config.profile = t.profile.clone();
        config.http = http_options(&t.http).with_context(|| format!("upstreams.portal.{name}"))?;
        let client =
            PortalClient::new(config).with_context(|| format!("upstreams.portal.{name}"))?;
        let client = match &observer {
            Some(o) => client.with_observer(o.clone()),
            None => client,
        };
        portal.insert(name.clone(), client);
    }
    let officers = Officers::load(upstreams.population.as_ref())
        .map_err(|e| anyhow::anyhow!("upstreams.population.officers_file: {e}"))?;
    Ok(Clients {
        population,
        officers: std::sync::Arc::new(officers),
        postal,
        portal,
    })
}

/// Officers' gateway credentials: `[upstreams.population.officers]` and those of `officers_file`,
/// which [`Officers::reload`] reads again (on SIGHUP) without a restart.
#[derive(Debug, Default)]
pub struct Officers {
    inline: BTreeMap<String, OfficerCredentials>,
    file: Option<std::path::PathBuf>,
    current: std::sync::RwLock<BTreeMap<String, OfficerCredentials>>,
}

impl Officers {
    /// The configuration's officers and those of its officers file, read now.
    pub fn load(settings: Option<&PopulationSettings>) -> Result<Self, String> {
        let Some(settings) = settings else {
            return Ok(Self::default());
        };
        let officers = Self {
            inline: settings.officers.clone(),
            file: settings.officers_file.clone(),
            current: Default::default(),
        };
        officers.reload()?;
        Ok(officers)
    }

    /// Reads the officers file again and, if it is valid, uses its officers from now on; if not,
    /// keeps the current ones. Answers how many officers have credentials.
    pub fn reload(&self) -> Result<usize, String> {
        let mut all = self.inline.clone();
        if let Some(path) = &self.file {
            for (code, credentials) in crate::settings::read_officers_file(path)? {
                if all.contains_key(&code) {
                    return Err(format!(
                        "{}: officer `{code}` is also in the configuration",
                        path.display()
                    ));
                }
                all.insert(code, credentials);
            }
        }
        let count = all.len();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = all;
        Ok(count)
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, OfficerCredentials>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the gateway wants officers' credentials (some are configured).
    pub fn required(&self) -> bool {
        !self.current().is_empty()
    }

    pub fn knows(&self, code: &str) -> bool {
        self.current().contains_key(code)
    }

    /// The officer as the population client needs it: the code, and AuthHash credentials when
    /// configured.
    pub fn officer(&self, code: &str) -> Officer {
        Officer {
            code: code.to_owned(),
            auth_hash: self
                .current()
                .get(code)
                .map(|o| (o.key.clone(), o.password.expose_secret().into())),
        }
    }
}

pub(crate) fn http_options(h: &HttpSettings) -> anyhow::Result<HttpOptions> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(HttpOptions {
        connect_timeout: h.connect_timeout,
        timeout: h.timeout,
        ca_bundle_pem: h.ca_bundle.as_deref().map(read).transpose()?,
        ca_bundle_only: h.ca_bundle_only,
        identity_pem: h.client_certificate.as_deref().map(read).transpose()?,
        pin_sha256: h.pin_sha256.clone(),
        ..HttpOptions::default()
    })
}
