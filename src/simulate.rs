//! `dvc-connector simulate …`: runs an upstream simulator as a process, for integrators and demos.

use anyhow::Context;

use crate::cli::{SimTarget, SimulateArgs};

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    crate::telemetry::init(crate::settings::LogFormat::Auto, "info");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let faults = match &args.faults {
        None => Default::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a fault plan", path.display()))?
        }
    };
    let running = match args.target {
        SimTarget::Population => {
            use dvc_population::simulator::{self, SimulatorConfig};
            let mut config = SimulatorConfig::with_fixture().map_err(anyhow::Error::msg)?;
            if let Some(path) = &args.citizens {
                config.citizens = simulator::load_citizens(path).map_err(anyhow::Error::msg)?;
            }
            config.faults = faults;
            config.token_lifetime = args.token_lifetime;
            let citizens = config.citizens.len();
            let (running, _) = simulator::start(listener, config)?;
            println!(
                "population simulator listening on {} ({citizens} citizens; client dvc-dev/dev-secret)\n  token:   POST {}/token\n  SOAP:    POST {}/dancu/soap\n  control: {}/_control/faults, {}/_control/ledger, {}/_control/revoke-tokens",
                running.base_url(),
                running.base_url(),
                running.base_url(),
                running.base_url(),
                running.base_url(),
                running.base_url()
            );
            running
        }
    };
    crate::app::shutdown_signal().await;
    running.stop().await;
    Ok(())
}
