//! The HTTP client every adapter uses: rustls only, TLS 1.2 or newer, connect and total timeouts always
//! set, the platform's trust store plus an optional CA bundle (government root CAs), an optional client
//! certificate for mTLS. There is deliberately no switch to accept invalid certificates.

use std::time::Duration;

/// Transport options of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Extra trusted CA certificates, PEM (one or more).
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Trust only `ca_bundle_pem`, not the platform's roots (a closed government network).
    pub ca_bundle_only: bool,
    /// Client certificate and private key, PEM, for mTLS.
    pub identity_pem: Option<Vec<u8>>,
    /// At most this many idle connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            ca_bundle_pem: None,
            ca_bundle_only: false,
            identity_pem: None,
            pool_max_idle_per_host: 32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("CA bundle: {0}")]
    CaBundle(String),
    #[error("client certificate: {0}")]
    Identity(String),
    #[error("HTTP client: {0}")]
    Build(String),
}

/// Builds the client. The rustls crypto provider must be installed (the daemon does it at start).
pub fn client(options: &HttpOptions) -> Result<reqwest::Client, ClientBuildError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout)
        .pool_max_idle_per_host(options.pool_max_idle_per_host)
        .tls_version_min(reqwest::tls::Version::TLS_1_2)
        .user_agent(concat!("dvc-connector/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &options.ca_bundle_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientBuildError::CaBundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(ClientBuildError::CaBundle(
                "no certificate in the bundle".into(),
            ));
        }
        builder = if options.ca_bundle_only {
            builder.tls_certs_only(certs)
        } else {
            builder.tls_certs_merge(certs)
        };
    }
    if let Some(pem) = &options.identity_pem {
        let identity = reqwest::Identity::from_pem(pem)
            .map_err(|e| ClientBuildError::Identity(e.to_string()))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| ClientBuildError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = HttpOptions {
            ca_bundle_pem: Some(b"not a certificate".to_vec()),
            ..HttpOptions::default()
        };
        assert!(matches!(
            client(&options),
            Err(ClientBuildError::CaBundle(_))
        ));
    }

    #[test]
    fn the_default_client_builds() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        assert!(client(&HttpOptions::default()).is_ok());
    }
}

/// Reads a response body, refusing more than `max` bytes (a hostile or broken upstream cannot exhaust
/// memory).
pub async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, crate::UpstreamError> {
    let too_large = || {
        crate::UpstreamError::permanent(
            "response_too_large",
            format!("the answer is larger than {max} bytes"),
        )
    };
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(crate::UpstreamError::transport)?
    {
        if out.len() + chunk.len() > max {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Replaces every run of 9 or more digits (an identification number, a phone number) with its masked
/// form, so that upstream messages can be kept for operators without personal data.
pub fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= 9 {
            let chars: Vec<char> = run.chars().collect();
            out.extend(&chars[..3]);
            out.push_str(&"*".repeat(chars.len() - 5));
            out.extend(&chars[chars.len() - 2..]);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod mask_tests {
    use super::mask_digit_runs;

    #[test]
    fn long_digit_runs_are_masked_and_short_ones_kept() {
        assert_eq!(
            mask_digit_runs("ID 001190012345 not found (code 404)"),
            "ID 001*******45 not found (code 404)"
        );
        assert_eq!(mask_digit_runs("phone 0912345678"), "phone 091*****78");
        assert_eq!(mask_digit_runs("12345678"), "12345678");
    }
}
