//! The command line. `main` parses it and dispatches; each command's work lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dvc-connector",
    version,
    about = "Durable connector between a provincial public-service portal and the population DB, VNPost \
             and the national portal",
    long_about = "dvc-connector runs beside the provincial portal. It accepts identity checks, postal \
                  shipments and dossier status updates over a local HTTP API, makes each one durable \
                  before answering, and delivers it to its upstream with retries, per-dossier ordering \
                  and idempotency.\n\nExit status: 0 success, 1 failure, 2 invalid configuration or usage."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run {
        /// The configuration file (TOML); DVC_CONNECTOR__SECTION__KEY variables override it.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a configuration file and report every problem (file or variable, key, what was expected).
    CheckConfig {
        /// The configuration file (TOML) the daemon would run with; `DVC_CONNECTOR__…` variables
        /// in the environment apply as they would to `run`.
        #[arg(value_name = "FILE")]
        config: PathBuf,
        /// Also print the configuration as read (file plus environment), with secrets redacted.
        #[arg(long)]
        print: bool,
    },
    /// The demo: the three simulators and the daemon in one process (temporary store, nothing to set
    /// up), a realistic day of portal traffic through the real API with upstream faults and an outage,
    /// live progress, and a summary checked against what the simulators received.
    Demo(DemoArgs),
    /// Run an upstream simulator (no government access needed) until SIGTERM or SIGINT.
    Simulate(SimulateArgs),
    /// The audit log of population-DB lookups: verify its hash chain, or find a citizen's lookups.
    Audit(AuditArgs),
    /// One screen on a running daemon: store, lanes, depths, overdue time, retries, dead letters.
    Status {
        /// The daemon's ops listener.
        #[arg(
            long,
            default_value = "http://127.0.0.1:9090",
            env = "DVC_CONNECTOR_OPS"
        )]
        ops: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Read a stopped daemon's store directly (read-only; redb backend).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// With --store: the store's encryption key files (`store.encryption_key_files`), newest first.
        #[arg(long, value_name = "FILE")]
        key_file: Vec<PathBuf>,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
    /// Inspect and repair jobs through a running daemon's admin API (token in DVC_CONNECTOR_TOKEN).
    Jobs(JobsArgs),
    /// Measure performance (not a test: figures go to docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Crash-qualification child process (used by the integration tests; see docs/STORE.md).
    #[command(hide = true)]
    QualifyChild(QualifyArgs),
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The daemon's API address.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8080",
        env = "DVC_CONNECTOR_API"
    )]
    pub api: String,
    /// An `admin` bearer token. Prefer the environment variable, which stays out of shell history.
    #[arg(
        long,
        global = true,
        env = "DVC_CONNECTOR_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// The read-only way in, offered only by the commands that read (`list`, `show`).
#[derive(Debug, Clone, Default, Args)]
pub struct OfflineStoreArgs {
    /// Read a stopped daemon's store directly (read-only; redb backend) instead of calling the API.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// With --store: the store's encryption key files (`store.encryption_key_files`), newest first.
    #[arg(long, value_name = "FILE", requires = "store")]
    pub key_file: Vec<PathBuf>,
}

/// How the CLI reaches a daemon whose listener serves TLS (`[api.tls]` / `[ops.tls]`).
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// PEM file of the CA that signed the daemon's certificate (with an https:// address).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "DVC_CONNECTOR_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// PEM file with a client certificate and its key, for a listener that requires mTLS.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "DVC_CONNECTOR_CLIENT_CERT"
    )]
    pub client_cert: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The CLI's HTTP client: the platform's roots plus `--ca-file`, and `--client-cert` for mTLS.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        use anyhow::Context as _;
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let options = dvc_upstream::http::HttpOptions {
            ca_bundle_pem: self.ca_file.as_ref().map(read).transpose()?,
            identity_pem: self.client_cert.as_ref().map(read).transpose()?,
            ..dvc_upstream::http::HttpOptions::default()
        };
        Ok(dvc_upstream::http::client(&options)?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Filters shared by `list` and `replay`.
#[derive(Debug, Clone, Args)]
pub struct JobFilterArgs {
    /// Job kind, e.g. portal.step.
    #[arg(long)]
    pub kind: Option<String>,
    /// Lane, e.g. portal:national.
    #[arg(long)]
    pub target: Option<String>,
    /// Dossier code (the ordering key).
    #[arg(long)]
    pub dossier: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// ready, leased, done, dead or discarded.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        filter: JobFilterArgs,
        /// At most this many jobs (all pages are followed up to it).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Oldest first instead: the jobs that have waited longest.
        #[arg(long)]
        oldest_first: bool,
        #[command(flatten)]
        offline: OfflineStoreArgs,
    },
    /// Show one job.
    Show {
        /// The job's id: the 26-character ULID `jobs list` shows.
        id: String,
        #[command(flatten)]
        offline: OfflineStoreArgs,
    },
    /// Put a dead job back to ready with a fresh attempt budget (needs the running daemon).
    Retry {
        /// The job's id: the 26-character ULID `jobs list` shows.
        id: String,
    },
    /// Take a ready or dead job out of delivery for good (needs the running daemon).
    Discard {
        /// The job's id: the 26-character ULID `jobs list` shows.
        id: String,
    },
    /// Retry every dead job matching the filters, with progress (needs the running daemon).
    Replay {
        #[command(flatten)]
        filter: JobFilterArgs,
        /// Do it without asking (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimTarget {
    /// The population DB behind the LGSP gateway (SOAP): /token, /dancu/soap.
    Population,
    /// VNPost: /token, /order/post, /order/cancel, /order/tracking.
    Postal,
    /// The portal protocol: national at /auth, /integration; provincial under /provincial.
    Portal,
    /// All three, each on its default port (or each on a free port with --listen 127.0.0.1:0).
    All,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that no line was altered, removed or reordered; exit 1 naming the first broken line.
    Verify {
        /// The audit log (`audit.path`, by default `audit.log` in the store directory).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List the lookups of one citizen (needs the audit key: the log holds only keyed hashes).
    Search {
        /// The audit log (`audit.path`, by default `audit.log` in the store directory).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The audit key file (`audit.key_file`).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// The 12-digit number whose lookups to list.
        #[arg(long)]
        citizen_id: String,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many dossiers to file (each: a verification, a record, 3–5 steps, some shipments).
    #[arg(long, default_value_t = 200)]
    pub dossiers: usize,
    /// Dossiers filed at the same time.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Without injected upstream faults and the portal outage.
    #[arg(long)]
    pub no_faults: bool,
    /// After the summary, keep the daemon and simulators running (dashboard, API) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Only drive the traffic, against an already running daemon's API (e.g. http://127.0.0.1:8080),
    /// with the token in DVC_CONNECTOR_TOKEN.
    #[arg(long, value_name = "URL")]
    pub against: Option<String>,
    /// Names this run's dossiers (`<run>-0001` …); default: a fresh one.
    #[arg(long)]
    pub run: Option<String>,
    /// Write what was accepted (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Which upstream to simulate.
    #[arg(value_enum)]
    pub target: SimTarget,
    /// Address to listen on (default: population 127.0.0.1:7101, postal :7102, portal :7103); port 0
    /// picks a free port (printed at start).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Registry of synthetic citizens (default: fixtures/population/citizens.json).
    #[arg(long, value_name = "FILE")]
    pub citizens: Option<PathBuf>,
    /// Initial fault plan (JSON, as accepted by PUT /_control/faults).
    #[arg(long, value_name = "FILE")]
    pub faults: Option<PathBuf>,
    /// Lifetime of issued tokens.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub token_lifetime: std::time::Duration,
    /// Portal: lifetime of a login session.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub session_lifetime: std::time::Duration,
    /// Postal: time between two status steps of an order (accelerated time).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub step_interval: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Durable enqueue and lease+complete throughput of each queue backend, next to the disk's fsync rate.
    Queue(QueueBenchArgs),
    /// The whole path: the daemon as a process, the real API, delivery to the portal simulator; also a
    /// 1,000,000-job backlog drain with --backlog.
    E2e(E2eBenchArgs),
}

#[derive(Debug, Args)]
pub struct E2eBenchArgs {
    /// Dossiers to file; each is a record PUT then --events steps.
    #[arg(long, default_value_t = 2000)]
    pub dossiers: usize,
    /// Steps per dossier.
    #[arg(long, default_value_t = 9)]
    pub events: usize,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Jobs of the portal lane running at once in the daemon [default: the daemon's own,
    /// `queue.lane_concurrency`].
    #[arg(long)]
    pub lane_concurrency: Option<usize>,
    /// The daemon's store backend (`store.backend`).
    #[arg(long, value_name = "BACKEND", default_value = "redb", value_parser = ["redb", "sled"])]
    pub store: String,
    /// Also measure a backlog of this many requests accepted while the portal is down (restart, drain).
    #[arg(long, default_value_t = 0)]
    pub backlog: usize,
    /// How long the daemon is left without requests after the drain (the one-hop measurement runs
    /// meanwhile) before its RSS is read again: idle after work, with its caches warm.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub settle: std::time::Duration,
    /// Run the default scenario this many times, each with a fresh daemon, store and simulator, and
    /// end with a table of every run and each column's median: the machine's speed drifts from
    /// minute to minute, so one run alone says little.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Directory for the temporary store; must be on the disk being measured (not tmpfs).
    #[arg(long, value_name = "DIR", default_value = "target/bench-e2e")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Backends to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "redb,sled")]
    pub backend: Vec<String>,
    /// Concurrent producer counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub producers: Vec<usize>,
    /// How long each enqueue measurement runs.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    /// Directory for the temporary stores; must be on the disk being measured (not tmpfs).
    #[arg(long, value_name = "DIR", default_value = "target/bench-queue")]
    pub dir: PathBuf,
    /// Payload bytes per job.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Repeat the enqueue measurements this many times, the producer counts taking turns in each
    /// round, and report medians: the disk's speed drifts from minute to minute, and a ratio of two
    /// runs minutes apart measures the drift as much as the queue.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
}

#[derive(Debug, Args)]
pub struct QualifyArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Where the worker delivers each job (an HTTP endpoint that records what it receives).
    #[arg(long)]
    pub ledger: String,
    /// Distinguishes the ordering keys of this run from those of earlier runs.
    #[arg(long)]
    pub run: u32,
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    #[arg(long, default_value_t = 3)]
    pub keys: usize,
    /// Jobs per key.
    #[arg(long, default_value_t = 1000)]
    pub jobs: usize,
    /// Abort the process at a named crash point: before_commit:N or after_commit:N (the N-th time).
    #[arg(long)]
    pub crash_at: Option<String>,
    /// Plant a bug the qualification must catch: `fifo` (each job under its own ordering key, so a
    /// key's jobs are no longer kept in order) or `double` (each delivery made twice).
    #[arg(long)]
    pub plant: Option<String>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::settings::parse_duration(s)
}
