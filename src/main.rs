//! The `dvc-connector` binary: parse the command line, load settings, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use dvc_connector::app::{self, Application};
use dvc_connector::cli::{BenchCommand, Cli, Command};
use dvc_connector::{bench, demo, jobs_cli, qualify, settings, simulate, status, telemetry};

/// jemalloc instead of glibc's malloc, for every command (the daemon, and the benchmark's load generator
/// with it). Under load glibc's allocator took ~18 % of the daemon's CPU, much of it freeing on one
/// thread what another allocated; with jemalloc's per-thread caches the daemon spends less CPU per event
/// and the accept tail is lower, for ~2 MiB more resident when idle (docs/BENCHMARKS.md, 2026-12-07).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Everything this process creates — the store, its log and keys, the audit log — is for its own
    // account only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    dvc_connector::tls::install_crypto_provider();
    match cli.command {
        Command::CheckConfig { config, print } => check_config(&config, print),
        Command::Run { config } => {
            let loaded = settings::Source::read(&config, std::env::vars())
                .and_then(|source| Ok((source.settings()?, source.warnings().to_vec())));
            let (settings, warnings) = match loaded {
                Ok(s) => s,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init(settings.log.format, &settings.log.level);
            for warning in warnings.into_iter().chain(settings.advice()) {
                tracing::warn!("{warning}");
            }
            exit(runtime().and_then(|rt| {
                rt.block_on(async {
                    let stop = app::shutdown_signal();
                    let app = Application::build(&settings).await?;
                    app.run_until_stopped(stop).await
                })
            }))
        }
        Command::Status {
            ops,
            output,
            store,
            key_file,
            tls,
        } => exit(runtime().and_then(|rt| {
            rt.block_on(async {
                match store {
                    Some(dir) => status::run_offline(&dir, &key_file, output).await,
                    None => status::run(&ops, &tls, output).await,
                }
            })
        })),
        Command::Jobs(args) => exit(runtime().and_then(|rt| rt.block_on(jobs_cli::run(args)))),
        Command::Demo(args) => match runtime().and_then(|rt| rt.block_on(demo::run(args))) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                eprintln!("dvc-connector: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Audit(args) => match dvc_connector::audit_cli::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                eprintln!("dvc-connector: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Simulate(args) => exit(runtime().and_then(|rt| rt.block_on(simulate::run(args)))),
        Command::Bench(BenchCommand::Queue(args)) => {
            exit(runtime().and_then(|rt| rt.block_on(bench::queue(args))))
        }
        Command::Bench(BenchCommand::E2e(args)) => {
            exit(runtime().and_then(|rt| rt.block_on(bench::e2e::run(args))))
        }
        Command::QualifyChild(args) => {
            exit(runtime().and_then(|rt| rt.block_on(qualify::child(args))))
        }
    }
}

fn check_config(path: &std::path::Path, print: bool) -> ExitCode {
    let source = match settings::Source::read(path, std::env::vars()) {
        Ok(source) => source,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    for warning in source.warnings() {
        eprintln!("warning: {warning}");
    }
    match source.settings() {
        Ok(settings) => {
            for advice in settings.advice() {
                eprintln!("warning: {advice}");
            }
            if print {
                print!("{}", source.redacted());
            }
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} problem(s)", path.display(), errors.0.len());
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dvc-connector: {error:#}");
            ExitCode::FAILURE
        }
    }
}
