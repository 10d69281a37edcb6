//! Integration tests: the real `dvc-connector` binary, on loopback ports chosen by the OS, with a
//! temporary store per test.

mod bad_input;
mod cli;
mod container;
mod crash;
mod daemon;
mod dashboard;
mod flows;
mod helpers;
mod jobs_api;
mod layers;
mod metrics;
mod recovery;
mod security;
mod simulate;
mod tls;
mod upstream_fields;
mod upstreams;
