//! The container image: `deploy/container/Dockerfile` built with podman from a context laid out as
//! the repository's (the binary under test where the Dockerfile takes the release binary, and the
//! repository's `.dockerignore`, which must let it through), then run: the daemon starts as its own
//! unprivileged user, keeps its store on the volume, answers `/healthz` and `/readyz`, and
//! `podman stop` (SIGTERM) ends it with exit status 0. `.ci/container-base` installs podman and makes
//! the base image, since these machines reach Debian's archive but no image registry.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::{Proc, assert_healthy_and_ready, binary, repo_file, write_config};

/// The image's user (deploy/container/Dockerfile).
const UID: u32 = 10001;

/// The project's own image store, where `.ci/container-base` puts the base image.
const STORE: &str = "/var/tmp/dvc-connector-podman";

/// podman on the project's image store, as this workplace runs it: runc, since crun refuses the
/// machine's hybrid cgroup hierarchy (and builds below run their `RUN` steps in a chroot, which needs no
/// namespaces). Nothing here is needed on an ordinary Docker or podman host.
fn podman() -> Command {
    let mut command = Command::new("podman");
    command.arg("--root").arg(format!("{STORE}/storage"));
    command.arg("--runroot").arg(format!("{STORE}/run"));
    command.args(["--storage-driver", "overlay", "--runtime", "runc"]);
    command
}

fn run_ok(mut command: Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| {
        panic!("{what}: {e} (podman is needed for this test: .ci/container-base installs it)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Removes the test's container and image however the test ends.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--ignore", &self.container])
            .output();
        let _ = podman()
            .args(["rmi", "--force", "--ignore", &self.image])
            .output();
    }
}

#[test]
fn the_image_runs_the_daemon_as_its_own_user_with_the_store_on_its_volume_and_stops_on_sigterm() {
    dvc_connector::tls::install_crypto_provider();
    let id = std::process::id();
    let cleanup = Cleanup {
        container: format!("dvc-connector-test-{id}"),
        image: format!("localhost/dvc-connector-test:{id}"),
    };

    let context = tempfile::tempdir().expect("tempdir");
    let release = context.path().join("target/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::copy(binary(), release.join("dvc-connector")).expect("copy the binary");
    std::fs::copy(
        repo_file(".dockerignore"),
        context.path().join(".dockerignore"),
    )
    .expect("copy .dockerignore");
    let dockerfile = repo_file("deploy/container/Dockerfile");
    let mut build = podman();
    build.args(["build", "--isolation", "chroot", "--pull=never", "--quiet"]);
    build.args(["-f", dockerfile.to_str().expect("path")]);
    build.args(["-t", &cleanup.image, context.path().to_str().expect("path")]);
    run_ok(build, "podman build");

    let mut inspect = podman();
    inspect.args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .Config.Volumes}} {{.Config.StopSignal}}",
        &cleanup.image,
    ]);
    let config = run_ok(inspect, "podman image inspect");
    assert_eq!(
        config.trim(),
        "dvc-connector:dvc-connector [\"/usr/local/bin/dvc-connector\"] \
         [\"run\",\"--config\",\"/etc/dvc-connector/connector.toml\"] \
         {\"/var/lib/dvc-connector\":{}} SIGTERM"
    );
    // The operator's configuration, mounted read-only; the state directory, owned by the image's user.
    let conf = tempfile::tempdir().expect("tempdir");
    write_config(conf.path(), "redb", Path::new("/var/lib/dvc-connector"), "");
    let state = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(state.path(), Some(UID), Some(UID))
        .expect("chown the state directory");

    let mut run = podman();
    run.args([
        "run",
        "--rm",
        "--name",
        &cleanup.container,
        "--network",
        "host",
    ]);
    // This sandbox refuses podman's default limits; an ordinary host needs neither flag.
    run.args([
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=1000:1000",
    ]);
    run.args([
        "-v",
        &format!("{}:/etc/dvc-connector:ro", conf.path().display()),
        "-v",
        &format!("{}:/var/lib/dvc-connector", state.path().display()),
        &cleanup.image,
    ]);
    let mut daemon = Proc::spawn_command(run);
    let ops = daemon.listen_addr("ops_addr");

    assert_healthy_and_ready(&ops);

    let mut whoami = podman();
    whoami.args(["exec", &cleanup.container, "id", "-u"]);
    assert_eq!(run_ok(whoami, "podman exec id").trim(), UID.to_string());
    let marker = std::fs::metadata(state.path().join("STORE")).expect("the store is on the volume");
    assert_eq!(marker.uid(), UID, "the store belongs to the image's user");

    let mut stop = podman();
    stop.args(["stop", "--time", "30", &cleanup.container]);
    run_ok(stop, "podman stop");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("the container ends after SIGTERM");
    assert!(status.success(), "exit {status:?}: {:?}", daemon.err_lines);
    assert!(
        daemon.err_lines.iter().any(|l| l.contains("\"stopped\"")),
        "the daemon shut down in order: {:?}",
        daemon.err_lines
    );
}
