//! dvc-connector: a durable sidecar between a provincial public-service portal and the systems it must
//! reach — the national population database (through the provincial LGSP gateway), the public postal
//! courier (VNPost) and the public-service portals (provincial and national).
//!
//! # Layout
//! - [`cli`]: the command line (`run`, `check-config`, `bench` …); `main.rs` only dispatches.
//! - [`settings`]: the TOML file and `DVC_CONNECTOR__…` overrides, validated once into [`settings::Settings`].
//! - [`app`]: [`app::Application`] opens the store, binds the API and ops listeners, starts the workers,
//!   and shuts them down in order.
//! - [`queue`]: the durable job queue — records, pure retry scheduling, the storage seam and its
//!   embedded backends, lane workers, lease expiry and retention.
//! - [`flows`]: the business flows — identity verification, postal shipments, dossier sync, callbacks —
//!   as records and jobs in the store, and the job handlers that call the adapters.
//! - [`api`]: the sidecar HTTP API — problem+json errors (en/vi), hashed bearer tokens with scopes,
//!   idempotency keys, and one file per resource (identity, shipments, dossiers, jobs).
//! - `ops`: health, readiness and `/metrics` on their own listener; [`metrics`]: the metric families.
//! - [`jobs_cli`]: `dvc-connector jobs …`, the operators' command line over the admin API;
//!   [`status`]: `dvc-connector status`, one screen from the ops listener.
//! - [`bench`]: `dvc-connector bench …` measurements; [`qualify`]: the crash-qualification child;
//!   [`simulate`]: `dvc-connector simulate …`, the upstream simulators from `adapters/` as a process.
//! - [`audit`]: the hash-chained audit log of population-DB lookups, and `dvc-connector audit …`.
//! - [`demo`]: `dvc-connector demo`, the simulators, the daemon and a day of traffic in one process.
//! - [`upstreams`]: the upstream clients (`adapters/`) built from settings at start-up.
//! - `table`: the CLI's aligned tables.
//! - `serve`: the listeners' accept loop — connection limit, header-read and idle timeouts, the
//!   client's address for each request.
//! - [`telemetry`]: logging; [`tls`]: the rustls crypto provider; `hex`: lowercase hex of digests.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod audit_cli;
pub mod bench;
pub mod cli;
pub mod demo;
pub mod flows;
mod hex;
pub mod jobs_cli;
pub mod metrics;
mod ops;
pub mod qualify;
pub mod queue;
mod serve;
pub mod settings;
pub mod simulate;
pub mod status;
mod table;
pub mod telemetry;
mod timefmt;
pub mod tls;
pub mod upstreams;
