//! The status dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `.ci/run`) driven over the WebDriver protocol. It loads the page
//! against a daemon with dead letters, signs in with an admin token, presses retry on one, and sees it
//! leave the dead-letter list.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::jobs_api::{ADMIN, start};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is needed: install Debian's chromium and chromium-driver (.ci/run does)");
        let stdout = child.stdout.take().expect("stdout");
        let port = {
            use std::io::BufRead;
            let mut port = None;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    port = rest.trim_end_matches('.').parse::<u16>().ok();
                    break;
                }
            }
            port.expect("chromedriver port")
        };
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let profile = tempfile::tempdir().expect("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let session: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .expect("new session")
            .json()
            .expect("json");
        let session = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_owned();
        Driver {
            child,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let response: Value = self
            .http
            .request(method, url)
            .json(&body)
            .send()
            .expect("webdriver")
            .json()
            .expect("json");
        response["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }));
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        self.cmd(
            reqwest::Method::POST,
            "/elements",
            json!({"using": "css selector", "value": css}),
        )
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
        .collect()
    }

    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find_all(css).into_iter().next() {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            json!({}),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{e}/text"),
            json!({}),
        )
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    fn property(&self, css: &str, name: &str) -> Value {
        let e = self.find(css);
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{e}/property/{name}"),
            json!({}),
        )
    }

    fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let png = self.cmd(reqwest::Method::GET, "/screenshot", json!({}));
        if let Some(b64) = png.as_str()
            && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64)
        {
            let _ = std::fs::write(path, bytes);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_operator_retries_a_dead_letter_from_the_dashboard() {
    dvc_connector::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut daemon, _api, _) = start(dir.path(), &rt);
    let ops = daemon.listen_addr("ops_addr");
    let page = format!("http://{ops}/?lang=en");
    let driver = Driver::start();

    driver.go(&page);
    assert!(
        driver.text("#readiness").starts_with("Ready"),
        "{}",
        driver.text("#readiness")
    );
    let rows = driver.find_all("#dead-letters tr[id^=job-]");
    assert_eq!(rows.len(), 2, "two dead letters listed");
    let first = driver.find("#dead-letters tr[id^=job-]");
    let job_id = driver
        .cmd(
            reqwest::Method::GET,
            &format!("/element/{first}/attribute/id"),
            json!({}),
        )
        .as_str()
        .and_then(|id| id.strip_prefix("job-"))
        .expect("row id")
        .to_owned();
    assert_eq!(
        driver.property(&format!("#retry-{job_id}"), "disabled"),
        true,
        "no actions before sign-in"
    );

    driver.type_into("#token", ADMIN);
    driver.click("#sign-in");
    driver.find("#sign-out");
    assert_eq!(
        driver.property(&format!("#retry-{job_id}"), "disabled"),
        false
    );
    driver.click(&format!("#retry-{job_id}"));
    assert!(
        driver.text("#message").contains("queued again"),
        "{}",
        driver.text("#message")
    );
    assert!(
        driver.find_all(&format!("#job-{job_id}")).is_empty(),
        "the retried job left the dead-letter list"
    );
    assert_eq!(driver.find_all("#dead-letters tr[id^=job-]").len(), 1);
    driver.screenshot(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));

    // A wrong token does not sign in.
    driver.click("#sign-out");
    driver.type_into("#token", "not-the-token");
    driver.click("#sign-in");
    assert!(driver.text("#message").contains("not valid"));
    drop(driver);
    daemon.sigterm();
    assert!(
        daemon
            .wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success()
    );
}
