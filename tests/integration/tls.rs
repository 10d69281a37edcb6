//! The connector's own listeners over TLS, through the real binary: certificates made for the test by
//! a test CA, the API demanding the portal's client certificate (mTLS), the ops listener serving TLS,
//! the CLI reaching it with `--ca-file`, and `check-config` naming each broken TLS file.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

use crate::helpers::{Proc, binary, write_config};

const ADMIN_TOKEN: &str = "tls-test-admin-token";

/// A CA, a server certificate for localhost signed by it, and a client certificate signed by it.
struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
    /// Client certificate followed by its key.
    client_pem: String,
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.distinguished_name.push(DnType::CommonName, name);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");

    let server_key = KeyPair::generate().expect("key");
    let mut sp = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &ca).expect("server cert");

    let client_key = KeyPair::generate().expect("key");
    let mut cp = CertificateParams::new(vec!["portal".to_owned()]).expect("params");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca).expect("client cert");

    Pki {
        ca_pem: ca.pem(),
        server_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_pem: format!("{}{}", client.pem(), client_key.serialize_pem()),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

fn client(ca_pem: Option<&str>, identity_pem: Option<&str>) -> reqwest::Client {
    dvc_upstream::http::client(&dvc_upstream::http::HttpOptions {
        ca_bundle_pem: ca_pem.map(|p| p.as_bytes().to_vec()),
        ca_bundle_only: ca_pem.is_some(),
        identity_pem: identity_pem.map(|p| p.as_bytes().to_vec()),
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        ..dvc_upstream::http::HttpOptions::default()
    })
    .expect("client")
}

/// The status and body, or the error's full chain (a refused handshake is an error, not a status).
async fn call(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            Ok((status, response.text().await.unwrap_or_default()))
        }
        Err(e) => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            Err(chain)
        }
    }
}

#[test]
fn the_api_serves_tls_and_demands_the_portals_client_certificate_and_ops_serves_tls() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ours = pki("Test Province CA");
    let theirs = pki("Some Other CA");
    let ca = write(d, "ca.pem", &ours.ca_pem);
    let cert = write(d, "server.pem", &ours.server_pem);
    let key = write(d, "server.key", &ours.server_key_pem);
    let sha = hex(&Sha256::digest(ADMIN_TOKEN.as_bytes()));
    let extra = format!(
        r#"
[api.tls]
certificate = "{cert}"
private_key = "{key}"
client_ca = "{ca}"
[ops.tls]
certificate = "{cert}"
private_key = "{key}"
[[api.tokens]]
name = "ops"
sha256 = "{sha}"
scopes = ["admin"]
"#
    );
    let config = write_config(d, "redb", &d.join("store"), &extra);
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().expect("path")]);
    let api_port = daemon
        .listen_addr("api_addr")
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();
    let ops_port = daemon
        .listen_addr("ops_addr")
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();
    let api = format!("https://localhost:{api_port}");
    let ops = format!("https://localhost:{ops_port}");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let portal = client(Some(&ours.ca_pem), Some(&ours.client_pem));
        let jobs = format!("{api}/v1/jobs");
        let (status, body) = call(&portal, &jobs, Some(ADMIN_TOKEN))
            .await
            .expect("mTLS call");
        assert_eq!(status, 200, "{body}");
        // TLS does not replace the token: a trusted client certificate without one is still 401.
        let (status, _) = call(&portal, &jobs, None).await.expect("mTLS call");
        assert_eq!(status, 401);

        let no_identity = client(Some(&ours.ca_pem), None);
        let refused = call(&no_identity, &jobs, Some(ADMIN_TOKEN)).await;
        assert!(
            refused.is_err(),
            "no client certificate must not get an answer: {refused:?}"
        );

        let foreign_identity = client(Some(&ours.ca_pem), Some(&theirs.client_pem));
        let refused = call(&foreign_identity, &jobs, Some(ADMIN_TOKEN)).await;
        assert!(
            refused.is_err(),
            "a client certificate from another CA: {refused:?}"
        );

        let distrustful = client(Some(&theirs.ca_pem), Some(&ours.client_pem));
        let refused = call(&distrustful, &jobs, Some(ADMIN_TOKEN))
            .await
            .expect_err("the server's certificate is not signed by the client's CA");
        assert!(
            refused.contains("certificate") || refused.contains("UnknownIssuer"),
            "{refused}"
        );

        let plain = reqwest::Client::new();
        let refused = call(
            &plain,
            &format!("http://127.0.0.1:{api_port}/v1/jobs"),
            Some(ADMIN_TOKEN),
        )
        .await;
        assert!(
            !matches!(refused, Ok((200, _))),
            "plain HTTP on the TLS port must not be served: {refused:?}"
        );

        let ops_client = client(Some(&ours.ca_pem), None);
        let (status, body) = call(&ops_client, &format!("{ops}/healthz"), None)
            .await
            .expect("ops over TLS");
        assert_eq!((status, body.trim()), (200, "ok"));

        // After the refused handshakes, the API still answers.
        let (status, _) = call(&portal, &jobs, Some(ADMIN_TOKEN))
            .await
            .expect("still serving");
        assert_eq!(status, 200);
    });

    // The operator's CLI reaches the TLS ops listener with the CA file, and not without it.
    let status = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(["status", "--ops", &ops, "--output", "json"])
            .args(args)
            .output()
            .expect("status runs")
    };
    let with_ca = status(&["--ca-file", &ca]);
    assert!(
        with_ca.status.success(),
        "{}",
        String::from_utf8_lossy(&with_ca.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&with_ca.stdout).expect("json");
    assert_eq!(view["store_writable"], true);
    let without = status(&[]);
    assert!(
        !without.status.success(),
        "the platform roots do not know the test CA"
    );

    daemon.sigterm();
    let exit = daemon.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(exit.success(), "{:?}", daemon.err_lines);
}

#[test]
fn check_config_names_each_broken_tls_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ours = pki("Test Province CA");
    let other = pki("Some Other CA");
    let cert = write(d, "server.pem", &ours.server_pem);
    let key = write(d, "server.key", &ours.server_key_pem);
    let not_a_cert = write(d, "notes.txt", "this is not a certificate\n");
    // The key of another certificate: both files parse, but they do not make a pair.
    let wrong_key = write(d, "other.key", &other.server_key_pem);
    let check = |extra: &str| {
        let config = write_config(d, "redb", &d.join("store"), extra);
        let out = std::process::Command::new(binary())
            .args(["check-config", config.to_str().expect("path")])
            .output()
            .expect("check-config runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };

    let (code, text) = check(&format!(
        "[api.tls]\ncertificate = \"{cert}\"\nprivate_key = \"{wrong_key}\"\n\
         [ops.tls]\ncertificate = \"{not_a_cert}\"\nprivate_key = \"{key}\"\n"
    ));
    assert_eq!(code, Some(2), "{text}");
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).map(str::to_owned);
    let api = line("api.tls").unwrap_or_else(|| panic!("{text}"));
    assert!(api.contains("other.key"), "{api}");
    let ops = line("ops.tls").unwrap_or_else(|| panic!("{text}"));
    assert!(ops.contains("notes.txt"), "{ops}");

    let (code, text) = check(&format!(
        "[api.tls]\ncertificate = \"{cert}\"\nclient_ca = \"{d}/missing-ca.pem\"\n",
        d = d.display()
    ));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("api.tls.private_key"), "{text}");
    assert!(text.contains("api.tls.client_ca"), "{text}");

    let (code, text) = check(&format!(
        "[api.tls]\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\nclient_ca = \"{cert}\"\n\
         [ops.tls]\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\n"
    ));
    assert_eq!(code, Some(0), "{text}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
