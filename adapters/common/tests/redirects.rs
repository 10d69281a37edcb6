//! No client follows a redirect: a 307 from the gateway or a 308 on a login is a permanent
//! `redirect_refused` error naming only the target's host, and the target receives nothing — not the
//! body, not the credentials.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use dvc_upstream::ErrorClass;
use dvc_upstream::http::{HttpOptions, client};
use dvc_upstream::sim::{Capture, serve};
use dvc_upstream::token::TokenSource;

/// A server that answers every request with `status` pointing at `target`.
async fn redirecting(status: StatusCode, target: String) -> dvc_upstream::sim::Running {
    let router = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { (status, [(header::LOCATION, format!("{target}/elsewhere"))]).into_response() }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    serve(listener, router).expect("serve")
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    client(&HttpOptions {
        timeout: Duration::from_secs(2),
        ..HttpOptions::default()
    })
    .expect("client")
}

#[tokio::test]
async fn a_307_from_the_gateway_resends_nothing_and_is_refused_for_good() {
    let target = Capture::start(|_| (200, "{}".into())).await;
    let gateway = redirecting(StatusCode::TEMPORARY_REDIRECT, target.base_url()).await;
    let token_server = Capture::start(|_| {
        (
            200,
            r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#.into(),
        )
    })
    .await;
    let tokens = TokenSource::new(
        format!("{}/token", token_server.base_url()),
        "id",
        "secret",
        Duration::from_secs(30),
    );
    let http = http();
    let url = format!("{}/dancu/soap", gateway.base_url());
    let error = tokens
        .send(&http, 1 << 20, |authorization| {
            http.post(&url)
                .header(header::AUTHORIZATION, authorization)
                .header("AuthHash", "b2ZmaWNlcjpwYXNz")
                .body("<SoDinhDanh>001190012345</SoDinhDanh>")
        })
        .await
        .expect_err("refused");
    assert_eq!(
        (error.class, error.code.as_str()),
        (ErrorClass::Permanent, "redirect_refused")
    );
    assert!(error.message.contains("307"), "{}", error.message);
    assert!(
        error.message.contains("http://127.0.0.1"),
        "{}",
        error.message
    );
    assert!(
        target.requests().is_empty(),
        "the redirect target received {:?}",
        target.requests()
    );
}

#[tokio::test]
async fn a_redirected_token_endpoint_gets_no_credentials_elsewhere() {
    let target = Capture::start(|_| (200, "{}".into())).await;
    let token_endpoint = redirecting(StatusCode::PERMANENT_REDIRECT, target.base_url()).await;
    let tokens = TokenSource::new(
        format!("{}/token", token_endpoint.base_url()),
        "id",
        "secret",
        Duration::from_secs(30),
    );
    let error = tokens.header(&http(), false).await.expect_err("refused");
    assert_eq!(error.code, "redirect_refused");
    assert!(target.requests().is_empty());
}
