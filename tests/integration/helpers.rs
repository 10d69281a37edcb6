//! Shared test plumbing: the binary, throwaway configurations, a ledger upstream, and a child process
//! whose output lines are collected as they come.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use dvc_connector::qualify::Delivery;

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dvc-connector")
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A plain GET: status, content type and body.
pub fn get(url: &str) -> (u16, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let response = reqwest::get(url).await.expect("request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, response.text().await.expect("body"))
    })
}

/// `/healthz` answers "ok" and `/readyz` 200 with a writable store, on the ops listener `ops`; the
/// readiness body, for more checks.
pub fn assert_healthy_and_ready(ops: &str) -> serde_json::Value {
    let (status, _, body) = get(&format!("http://{ops}/healthz"));
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, body) = get(&format!("http://{ops}/readyz"));
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ready["store"]["writable"], true);
    ready
}

/// A configuration for one test: both listeners on port 0, the store in `store_dir`, encryption at rest
/// explicitly off (the flows' tests turn it on: `flows::World`).
pub fn write_config(dir: &Path, backend: &str, store_dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("connector.toml");
    let text = format!(
        r#"
[api]
listen = "127.0.0.1:0"
# Tests send many unauthenticated requests from one address on purpose.
auth_failure_limit = 0
[ops]
listen = "127.0.0.1:0"
[store]
backend = "{backend}"
path = "{store}"
encryption = "off"
[queue]
lease = "5s"
lane_concurrency = 8
shutdown_grace = "2s"
idle_poll = "100ms"
[queue.retry]
base = "20ms"
cap = "200ms"
max_attempts = 1000
max_age = "1h"
[log]
format = "json"
level = "info"
{extra}
"#,
        store = store_dir.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running child whose stdout and stderr lines arrive on channels.
pub struct Proc {
    pub child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    pub out_lines: Vec<String>,
    pub err_lines: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Self::spawn_with_env(args, &[])
    }

    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(binary());
        command.args(args).envs(env.iter().copied());
        Self::spawn_command(command)
    }

    /// Any command (the daemon inside a container, for one), its output collected the same way.
    pub fn spawn_command(mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Proc {
            child,
            stdout,
            stderr,
            out_lines: Vec::new(),
            err_lines: Vec::new(),
        }
    }

    /// Waits for a stdout line (or, with `stderr`, a log line) containing `needle`.
    pub fn wait_for(&mut self, needle: &str, stderr: bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.pump();
            let lines = if stderr {
                &self.err_lines
            } else {
                &self.out_lines
            };
            if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn pump(&mut self) {
        self.out_lines.extend(self.stdout.try_iter());
        self.err_lines.extend(self.stderr.try_iter());
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends the named signal (`TERM`, `HUP`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for exit, collecting the rest of the output.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads until both pipes close.
    fn drain(&mut self) {
        self.out_lines.extend(self.stdout.iter());
        self.err_lines.extend(self.stderr.iter());
    }

    /// The address a listener reported in the JSON "started" log line.
    pub fn listen_addr(&mut self, field: &str) -> String {
        let line = self
            .wait_for("dvc-connector started", true, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("daemon did not start: {:?}", self.err_lines));
        let log: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        log[field].as_str().expect("address field").to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A loopback upstream that records every delivery in arrival order and refuses a share of them
/// with 500, so that retries happen.
#[derive(Clone)]
pub struct Ledger {
    pub url: String,
    pub entries: Arc<Mutex<Vec<Delivery>>>,
}

impl Ledger {
    pub fn start(runtime: &tokio::runtime::Runtime, fail_percent: u32) -> Ledger {
        let entries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let state = (entries.clone(), fail_percent);
        let url = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind ledger");
            let addr = listener.local_addr().expect("addr");
            let app = Router::new()
                .route("/deliver", post(record))
                .with_state(state);
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            format!("http://{addr}/deliver")
        });
        Ledger { url, entries }
    }

    /// Every delivery, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.entries
            .lock()
            .expect("ledger lock")
            .iter()
            .map(|d| Delivery {
                run: d.run,
                key: d.key.clone(),
                n: d.n,
                id: d.id.clone(),
            })
            .collect()
    }
}

async fn record(
    State((entries, fail_percent)): State<(Arc<Mutex<Vec<Delivery>>>, u32)>,
    Json(delivery): Json<Delivery>,
) -> StatusCode {
    if fastrand::u32(0..100) < fail_percent {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    entries.lock().expect("ledger lock").push(delivery);
    StatusCode::OK
}
