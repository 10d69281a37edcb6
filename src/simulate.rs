//! `dvc-connector simulate …`: runs an upstream simulator as a process, for integrators and demos.

use anyhow::Context;

use crate::cli::{SimTarget, SimulateArgs};

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    crate::telemetry::init(crate::settings::LogFormat::Auto, "info");
    let listen = args.listen.unwrap_or_else(|| match args.target {
        SimTarget::Population => ([127, 0, 0, 1], 7101).into(),
        SimTarget::Postal => ([127, 0, 0, 1], 7102).into(),
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
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
    };
    crate::app::shutdown_signal().await;
    running.stop().await;
    Ok(())
}
