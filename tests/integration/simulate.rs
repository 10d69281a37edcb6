//! The simulators as a process: `dvc-connector simulate …` starts, says where it listens, answers.

use std::time::Duration;

use crate::helpers::Proc;

#[test]
fn the_population_simulator_starts_and_issues_tokens() {
    dvc_connector::tls::install_crypto_provider();
    let mut sim = Proc::spawn(&["simulate", "population", "--listen", "127.0.0.1:0"]);
    let line = sim
        .wait_for(
            "population simulator listening on",
            false,
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("no start line: {:?}", sim.err_lines));
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("address")
        .to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (status, body) = rt.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{base}/token"))
            .basic_auth("dvc-dev", Some("dev-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .expect("token request");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("access_token"));
    sim.sigterm();
    let status = sim.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success());
}
