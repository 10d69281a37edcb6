//! The command line as an integrator meets it.

use std::process::Command;

use crate::helpers::{binary, repo_file};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_development_config_checks_clean() {
    let dev = repo_file("config/dev.toml");
    let (code, out, err) = run(&["check-config", dev.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration is valid"));
}

#[test]
fn a_config_with_three_mistakes_reports_all_three_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[store]\npath = \"s\"\nencryption = \"off\"\nbackend = \"rocks\"\n\n[queue]\nlease = \"forever\"\nturbo = true\n",
    )
    .expect("write");
    let (code, _out, err) = run(&["check-config", path.to_str().expect("path")]);
    assert_eq!(code, 2, "{err}");
    for key in ["store.backend", "queue.lease", "queue.turbo"] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!(": {key}: ")) && l.contains("bad.toml")),
            "{key} not reported with file and key:\n{err}"
        );
    }
    assert!(err.contains("3 problem(s)"), "{err}");
}

#[test]
fn printing_the_config_redacts_every_secret() {
    let dev = repo_file("config/dev.toml");
    let out = Command::new(binary())
        .args(["check-config", "--print", dev.to_str().expect("path")])
        .env(
            "DVC_CONNECTOR__UPSTREAMS__POSTAL__SECRET_KEY",
            "env-secret-xyz",
        )
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("customer_code = \"DVCDEV01\""), "{text}");
    for secret in [
        "env-secret-xyz",
        "dev-secret",
        "dev-password",
        "dev-callback-secret",
    ] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
}

#[test]
fn version_and_help_answer() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("dvc-connector "));
    let (code, out, _) = run(&["run", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--config"));
}

#[test]
fn the_queue_benchmark_runs_in_rounds_and_reports_each_rounds_ratio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run(&[
        "bench",
        "queue",
        "--backend",
        "redb",
        "--producers",
        "1,4",
        "--duration",
        "300ms",
        "--rounds",
        "2",
        "--dir",
        dir.path().to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    for round in ["round 1:", "round 2:"] {
        assert_eq!(
            out.lines().filter(|l| l.starts_with(round)).count(),
            2,
            "{round} for each producer count:\n{out}"
        );
    }
    assert!(out.contains("medians of 2 rounds"), "{out}");
    // The ratio column holds the median of the rounds' ratios and their range.
    let row = out
        .lines()
        .find(|l| l.starts_with("| redb | 4 |"))
        .unwrap_or_else(|| panic!("no row for 4 producers:\n{out}"));
    let ratio = row.split('|').nth(6).expect("ratio column").trim();
    assert!(
        ratio.contains(" (") && ratio.contains('–') && ratio.ends_with(')'),
        "{ratio}"
    );
    // The process's own CPU: per job, and how many cores it kept busy (the rest were idle).
    let column = |n: usize| -> f64 {
        row.split('|')
            .nth(n)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or_else(|| panic!("column {n} of {row}"))
    };
    let (per_job, busy) = (column(8), column(9));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(per_job > 0.0, "{row}");
    assert!(busy > 0.0 && busy <= cores + 0.1, "{row}");
    let (code, _, err) = run(&["bench", "queue", "--rounds", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--rounds"), "{err}");
}
