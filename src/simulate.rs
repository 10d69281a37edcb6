//! `dvc-connector simulate …`: the upstream simulators from `adapters/` as a process, for integrators
//! and the demo. `config/dev.toml` points at their default addresses.

use std::net::SocketAddr;

use anyhow::Context;
use dvc_upstream::sim::{FaultPlan, Running};

use crate::cli::{SimTarget, SimulateArgs};

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    crate::telemetry::init(crate::settings::LogFormat::Auto, "info");
    let faults: FaultPlan = match &args.faults {
        None => FaultPlan::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a fault plan", path.display()))?
        }
    };
    let targets = match args.target {
        SimTarget::All => vec![SimTarget::Population, SimTarget::Postal, SimTarget::Portal],
        one => vec![one],
    };
    let mut running = Vec::new();
    for target in targets {
        let listen = args.listen.unwrap_or_else(|| default_addr(target));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        running.push(start(target, listener, &args, faults.clone())?);
    }
    crate::app::shutdown_signal().await;
    for r in running {
        r.stop().await;
    }
    Ok(())
}

fn default_addr(target: SimTarget) -> SocketAddr {
    let port = match target {
        SimTarget::Population | SimTarget::All => 7101,
        SimTarget::Postal => 7102,
        SimTarget::Portal => 7103,
    };
    ([127, 0, 0, 1], port).into()
}

fn start(
    target: SimTarget,
    listener: tokio::net::TcpListener,
    args: &SimulateArgs,
    faults: FaultPlan,
) -> anyhow::Result<Running> {
    let running = match target {
        SimTarget::Population | SimTarget::All => {
            use dvc_population::simulator::{self, SimulatorConfig};
            let mut config = SimulatorConfig::with_fixture().map_err(anyhow::Error::msg)?;
            if let Some(path) = &args.citizens {
                config.citizens = simulator::load_citizens(path).map_err(anyhow::Error::msg)?;
            }
            config.faults = faults;
            config.token_lifetime = args.token_lifetime;
            let citizens = config.citizens.len();
            let (running, _) = simulator::start(listener, config)?;
            let base = running.base_url();
            println!(
                "population simulator listening on {base} ({citizens} citizens; client dvc-dev/dev-secret)\n  token:   POST {base}/token\n  SOAP:    POST {base}/dancu/soap\n  control: {base}/_control/faults, {base}/_control/ledger, {base}/_control/revoke-tokens"
            );
            running
        }
        SimTarget::Postal => {
            use dvc_postal::simulator::{self, SimulatorConfig};
            let config = SimulatorConfig {
                faults,
                token_lifetime: args.token_lifetime,
                step_interval: args.step_interval,
                ..SimulatorConfig::default()
            };
            let (running, _) = simulator::start(listener, config)?;
            let base = running.base_url();
            println!(
                "postal simulator listening on {base} (customer DVCDEV01; key dev-customer/dev-secret)\n  token:    POST {base}/token\n  orders:   POST {base}/order/post, GET {base}/order/cancel\n  tracking: GET {base}/order/tracking?pagesize=N&lastId=…\n  control:  {base}/_control/faults, {base}/_control/ledger, {base}/_control/revoke-tokens"
            );
            running
        }
        SimTarget::Portal => {
            use dvc_portal::simulator::{self, Simulator, SimulatorConfig};
            let config = SimulatorConfig {
                faults,
                session_lifetime: args.session_lifetime,
                ..SimulatorConfig::default()
            };
            let national = Simulator::new(config.clone());
            let provincial = Simulator::new(config);
            let router = axum::Router::new()
                .nest("/provincial", simulator::router(provincial))
                .merge(simulator::router(national));
            let running = dvc_upstream::sim::serve(listener, router)?;
            let base = running.base_url();
            println!(
                "portal simulator listening on {base} (user dvc-dev/dev-password)\n  national:   POST {base}/auth, {base}/integration; control {base}/_control/…\n  provincial: POST {base}/provincial/auth, {base}/provincial/integration; control {base}/provincial/_control/…"
            );
            running
        }
    };
    Ok(running)
}
