//! The HTTP client every adapter uses: rustls only, TLS 1.2 or newer, connect and total timeouts always
//! set, the platform's trust store plus an optional CA bundle (government root CAs), an optional client
//! certificate for mTLS. There is deliberately no switch to accept invalid certificates.
//!
//! No redirect is ever followed: a 3xx would re-send the body (citizen data) and the credentials
//! (`Authorization`, `AuthHash`, a login) to a place nobody configured, possibly over plain http or to
//! another host, past the pins and the URL rules. [`refuse_redirect`] turns it into a permanent error
//! that records only the target's host.

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
    /// SHA-256 digests of the public keys (SubjectPublicKeyInfo) the upstream's certificate may
    /// carry. When not empty, the certificate must pass the usual checks *and* match one pin.
    pub pin_sha256: Vec<[u8; 32]>,
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
            pin_sha256: Vec::new(),
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
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dvc-connector/", env!("CARGO_PKG_VERSION")));
    if !options.pin_sha256.is_empty() {
        builder = builder.use_preconfigured_tls(pinned::config(options)?);
        return builder
            .build()
            .map_err(|e| ClientBuildError::Build(e.to_string()));
    }
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

/// A 3xx answer is refused for good (`redirect_refused`), naming only where it pointed: the clients
/// follow no redirect, so nothing was re-sent.
pub fn refuse_redirect(response: &reqwest::Response) -> Result<(), crate::UpstreamError> {
    let status = response.status();
    if !status.is_redirection() {
        return Ok(());
    }
    let target = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| response.url().join(l).ok())
        .map(|u| format!("{}://{}", u.scheme(), u.host_str().unwrap_or("(no host)")))
        .unwrap_or_else(|| "(no Location)".into());
    Err(crate::UpstreamError::permanent(
        "redirect_refused",
        format!(
            "the upstream answered HTTP {} redirecting to {target}; redirects are never followed and nothing was re-sent",
            status.as_u16()
        ),
    ))
}

/// Reads one pin as operators write it: the base64 SHA-256 of the certificate's public key, with or
/// without curl's `sha256//` prefix. `openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin
/// -outform der | openssl dgst -sha256 -binary | base64` prints it.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let b64 = text.trim().strip_prefix("sha256//").unwrap_or(text.trim());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "expected the base64 SHA-256 of a public key (44 characters)".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "a SHA-256 digest is 32 bytes, this one is {} bytes; expected the base64 SHA-256 of a public key",
            bytes.len()
        )
    })
}

/// The TLS configuration of a pinned upstream, built here because reqwest has no pinning of its own:
/// the same trust as the unpinned client (the platform's roots plus the CA bundle, or the bundle
/// only), TLS 1.2+, the client certificate, and then the pin check on top.
mod pinned {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
    use sha2::{Digest, Sha256};

    use super::{ClientBuildError, HttpOptions};

    pub(super) fn config(options: &HttpOptions) -> Result<rustls::ClientConfig, ClientBuildError> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let bundle = match &options.ca_bundle_pem {
            None => Vec::new(),
            Some(pem) => CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientBuildError::CaBundle(e.to_string()))?,
        };
        if options.ca_bundle_pem.is_some() && bundle.is_empty() {
            return Err(ClientBuildError::CaBundle(
                "no certificate in the bundle".into(),
            ));
        }
        let inner: Arc<dyn ServerCertVerifier> = if options.ca_bundle_only {
            let mut roots = rustls::RootCertStore::empty();
            for cert in bundle {
                roots
                    .add(cert)
                    .map_err(|e| ClientBuildError::CaBundle(e.to_string()))?;
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| ClientBuildError::CaBundle(e.to_string()))?
        } else {
            Arc::new(
                rustls_platform_verifier::Verifier::new_with_extra_roots(bundle, provider.clone())
                    .map_err(|e| ClientBuildError::CaBundle(e.to_string()))?,
            )
        };
        let verifier = Arc::new(Pinned {
            inner,
            pins: options.pin_sha256.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ClientBuildError::Build(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &options.identity_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let chain = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ClientBuildError::Identity(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(pem)
                    .map_err(|e| ClientBuildError::Identity(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ClientBuildError::Identity(e.to_string()))?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The usual verification, then the pin: a certificate from a trusted CA whose key is not pinned
    /// (a mis-issued or intercepting certificate) is refused.
    #[derive(Debug)]
    struct Pinned {
        inner: Arc<dyn ServerCertVerifier>,
        pins: Vec<[u8; 32]>,
    }

    #[derive(Debug)]
    struct PinMismatch;

    impl std::fmt::Display for PinMismatch {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the certificate's public key matches no pin_sha256")
        }
    }

    impl std::error::Error for PinMismatch {}

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )?;
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            let digest: [u8; 32] = Sha256::digest(cert.subject_public_key_info().as_ref()).into();
            if self.pins.contains(&digest) {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(PinMismatch)),
                )))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_with_or_without_the_curl_prefix_and_wrong_lengths_refused() {
        let pin = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let digest = parse_pin(pin).expect("valid");
        assert_eq!(parse_pin(&format!("sha256//{pin}")), Ok(digest));
        assert_eq!(digest[0], 0xe3, "sha256 of the empty string");
        assert!(parse_pin("AAAA").expect_err("short").contains("3 bytes"));
        assert!(parse_pin("not base64!").is_err());
    }

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

/// Masks every number of 9 or more digits (an identification number, a phone number) so that upstream
/// messages can be kept for operators without personal data: the first three and last two digits stay,
/// the others become `*`. A number may be written in groups joined by one kind of separator — a space, a
/// dot or a hyphen (`0912 345 678`, `0912.345.678`, `001-190-012-345`) — and is masked as a whole, its
/// separators kept; groups joined by different separators (`2024-11-27 09`) are separate numbers.
pub fn mask_digit_runs(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // One group: digit runs joined by a single separator of one kind.
        let start = i;
        let mut separator: Option<char> = None;
        let mut end = i;
        loop {
            while end < chars.len() && chars[end].is_ascii_digit() {
                end += 1;
            }
            let joins = end + 1 < chars.len()
                && matches!(chars[end], ' ' | '.' | '-')
                && separator.is_none_or(|s| s == chars[end])
                && chars[end + 1].is_ascii_digit();
            if !joins {
                break;
            }
            separator = Some(chars[end]);
            end += 1;
        }
        let group = &chars[start..end];
        let digits = group.iter().filter(|c| c.is_ascii_digit()).count();
        if digits >= 9 {
            let mut seen = 0;
            for &c in group {
                if c.is_ascii_digit() {
                    seen += 1;
                    out.push(if seen <= 3 || seen > digits - 2 {
                        c
                    } else {
                        '*'
                    });
                } else {
                    out.push(c);
                }
            }
        } else {
            out.extend(group);
        }
        i = end;
    }
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

    #[test]
    fn numbers_written_in_groups_are_masked_as_a_whole() {
        assert_eq!(
            mask_digit_runs("gọi 0912 345 678 nhé"),
            "gọi 091* *** *78 nhé"
        );
        assert_eq!(mask_digit_runs("0912.345.678"), "091*.***.*78");
        assert_eq!(
            mask_digit_runs("CCCD 001-190-012-345."),
            "CCCD 001-***-***-*45."
        );
        // Different separators are different numbers: a date and an hour stay readable.
        assert_eq!(mask_digit_runs("2024-11-27 09:30"), "2024-11-27 09:30");
        assert_eq!(mask_digit_runs("mã 12 34"), "mã 12 34");
    }
}

#[cfg(test)]
mod cap_tests {
    #[test]
    fn a_huge_message_is_cut_to_a_kilobyte_at_a_character_boundary() {
        let e = crate::UpstreamError::permanent("portal_9", "ố".repeat(3_000_000));
        assert!(
            e.message.len() <= crate::MAX_MESSAGE_BYTES,
            "{}",
            e.message.len()
        );
        assert!(e.message.ends_with('…'));
        assert!(e.message.starts_with("ốố"));
        let short = crate::UpstreamError::permanent("x", "short");
        assert_eq!(short.message, "short");
    }
}
