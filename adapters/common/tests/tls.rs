//! The HTTP client against a real rustls server on loopback, with a CA and certificates made for the
//! test: a custom CA bundle is honoured, an untrusted server is refused (and classified as a
//! configuration problem), and a server that demands client certificates accepts our mTLS identity.

use std::net::SocketAddr;
use std::sync::Arc;

use dvc_upstream::http::{HttpOptions, client};
use dvc_upstream::{ErrorClass, UpstreamError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData as _,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    /// Client certificate followed by its key, as `client_certificate` holds them.
    client_pem: String,
    /// SHA-256 of the server certificate's SubjectPublicKeyInfo: what `pin_sha256` holds.
    server_pin: [u8; 32],
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Test Government Root CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");

    let server_key = KeyPair::generate().expect("key");
    let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = sp.signed_by(&server_key, &ca).expect("server cert");

    let client_key = KeyPair::generate().expect("key");
    let mut cp = CertificateParams::new(vec!["dvc-connector".to_owned()]).expect("params");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &ca).expect("client cert");

    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        server_cert: server_cert.der().clone(),
        server_key: server_key.serialize_der(),
        client_pem: format!("{}{}", client_cert.pem(), client_key.serialize_pem()),
        server_pin: sha2::Sha256::digest(server_key.subject_public_key_info()).into(),
    }
}

/// Serves `HTTP/1.1 200 ok` over TLS on an OS-chosen loopback port.
async fn tls_server(pki: &Pki, require_client_cert: bool) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("root");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone()));
    let config = builder
        .with_single_cert(vec![pki.server_cert.clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

async fn get(options: &HttpOptions, addr: SocketAddr) -> Result<String, UpstreamError> {
    let http = client(options).expect("client builds");
    let response = http
        .get(format!("https://localhost:{}/", addr.port()))
        .send()
        .await
        .map_err(UpstreamError::transport)?;
    response.text().await.map_err(UpstreamError::transport)
}

fn setup() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn a_server_signed_by_the_configured_ca_is_trusted() {
    setup();
    let pki = pki();
    let addr = tls_server(&pki, false).await;
    let options = HttpOptions {
        ca_bundle_pem: Some(pki.ca_pem.clone().into_bytes()),
        ca_bundle_only: true,
        ..HttpOptions::default()
    };
    assert_eq!(get(&options, addr).await.expect("trusted"), "ok");
}

#[tokio::test]
async fn a_server_the_client_does_not_trust_is_refused_as_a_configuration_problem() {
    setup();
    let pki = pki();
    let addr = tls_server(&pki, false).await;
    let other_ca = self::pki().ca_pem;
    let options = HttpOptions {
        ca_bundle_pem: Some(other_ca.into_bytes()),
        ca_bundle_only: true,
        ..HttpOptions::default()
    };
    let error = get(&options, addr).await.expect_err("untrusted");
    assert_eq!(
        (error.class, error.code.as_str()),
        (ErrorClass::Auth, "tls_certificate"),
        "{error:?}"
    );
}

#[tokio::test]
async fn mutual_tls_presents_the_configured_client_certificate() {
    setup();
    let pki = pki();
    let addr = tls_server(&pki, true).await;
    let trusted = HttpOptions {
        ca_bundle_pem: Some(pki.ca_pem.clone().into_bytes()),
        ca_bundle_only: true,
        ..HttpOptions::default()
    };
    assert!(
        get(&trusted, addr).await.is_err(),
        "no client certificate, no answer"
    );
    let with_identity = HttpOptions {
        identity_pem: Some(pki.client_pem.clone().into_bytes()),
        ..trusted
    };
    assert_eq!(get(&with_identity, addr).await.expect("mTLS"), "ok");
}

#[tokio::test]
async fn a_pinned_upstream_must_present_the_pinned_key_as_well_as_a_trusted_chain() {
    setup();
    let pki = pki();
    let addr = tls_server(&pki, true).await;
    let trusted = HttpOptions {
        ca_bundle_pem: Some(pki.ca_pem.clone().into_bytes()),
        ca_bundle_only: true,
        identity_pem: Some(pki.client_pem.clone().into_bytes()),
        ..HttpOptions::default()
    };
    let pinned = HttpOptions {
        pin_sha256: vec![[7; 32], pki.server_pin],
        ..trusted.clone()
    };
    assert_eq!(
        get(&pinned, addr)
            .await
            .expect("pinned key, trusted chain, mTLS"),
        "ok"
    );

    // A certificate from the trusted CA, but not the pinned key: what a mis-issued or intercepting
    // certificate looks like. Refused, and classified so that the lane pauses.
    let other_key = HttpOptions {
        pin_sha256: vec![self::pki().server_pin],
        ..trusted.clone()
    };
    let error = get(&other_key, addr).await.expect_err("pin mismatch");
    assert_eq!(
        (error.class, error.code.as_str()),
        (ErrorClass::Auth, "tls_pin_mismatch"),
        "{error:?}"
    );

    // The pin adds to the chain check, it does not replace it.
    let untrusted_but_pinned = HttpOptions {
        ca_bundle_pem: Some(self::pki().ca_pem.into_bytes()),
        ..pinned
    };
    let error = get(&untrusted_but_pinned, addr)
        .await
        .expect_err("untrusted chain");
    assert_eq!(
        (error.class, error.code.as_str()),
        (ErrorClass::Auth, "tls_certificate"),
        "{error:?}"
    );
}
