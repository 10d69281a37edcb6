//! The development configuration, pointed (through environment overrides) at simulators on free ports,
//! builds clients that reach every upstream: the chain integrators set up from config and docs alone.

use dvc_connector::settings;
use dvc_connector::upstreams;

use crate::helpers::repo_file;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_config_reaches_all_three_simulators() {
    dvc_connector::tls::install_crypto_provider();
    let bind = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
    };
    let (pop, population_sim) = dvc_population::simulator::start(
        bind().await,
        dvc_population::simulator::SimulatorConfig::with_fixture().expect("fixture"),
    )
    .expect("population");
    let (post, postal_sim) =
        dvc_postal::simulator::start(bind().await, Default::default()).expect("postal");
    let (portal, portal_sim) =
        dvc_portal::simulator::start(bind().await, Default::default()).expect("portal");
    let env = vec![
        (
            "DVC_CONNECTOR__UPSTREAMS__POPULATION__SERVICE_URL".to_owned(),
            format!("{}/dancu/soap", pop.base_url()),
        ),
        (
            "DVC_CONNECTOR__UPSTREAMS__POPULATION__TOKEN_URL".to_owned(),
            format!("{}/token", pop.base_url()),
        ),
        (
            "DVC_CONNECTOR__UPSTREAMS__POSTAL__BASE_URL".to_owned(),
            post.base_url(),
        ),
        (
            "DVC_CONNECTOR__UPSTREAMS__PORTAL__NATIONAL__BASE_URL".to_owned(),
            portal.base_url(),
        ),
    ];
    let settings = settings::load(&repo_file("config/dev.toml"), env).expect("dev config");
    let metrics = std::sync::Arc::new(dvc_connector::metrics::Metrics::default());
    let clients =
        upstreams::build_observed(&settings.upstreams, Some(metrics.clone())).expect("clients");

    assert!(
        settings.upstreams.population.is_some(),
        "population configured"
    );
    let citizen =
        &dvc_population::simulator::parse_citizens(dvc_population::simulator::DEFAULT_CITIZENS)
            .expect("fixture")[0];
    let exists = clients
        .population
        .as_ref()
        .expect("population client")
        .check_exists(&dvc_population::client::ExistenceQuery {
            service_code: "033".into(),
            officer: clients.officers.officer("CB-DEV-01"),
            citizen_id: dvc_population::cccd::CitizenId::parse(&citizen.citizen_id).expect("id"),
            legacy_id: String::new(),
            full_name: citizen.full_name(),
        })
        .await
        .expect("population answers");
    assert!(exists.value);

    let mut order = dvc_postal::wire::CreateOrder {
        customer_code: settings
            .upstreams
            .postal
            .as_ref()
            .expect("postal")
            .customer_code
            .clone(),
        order_number: "DEV-1".into(),
        ..Default::default()
    };
    order.sender_name = "Trung tâm".into();
    order.sender_address = "Số 1".into();
    order.sender_tel = "0292000000".into();
    order.sender_province = "92".into();
    order.receiver_name = "Người nhận".into();
    order.receiver_address = "Số 2".into();
    order.receiver_tel = "0912000000".into();
    order.receiver_province = "92".into();
    clients
        .postal
        .as_ref()
        .expect("postal client")
        .create_order(&order)
        .await
        .expect("postal answers");
    assert_eq!(postal_sim.order_count(), 1);

    let national = clients.portal.get("national").expect("national target");
    national
        .sync_dossier(
            &dvc_portal::wire::DossierRecord {
                ma_ho_so: "DEV-1".into(),
                ma_tthc: "1.001776".into(),
                trang_thai_ho_so: "2".into(),
                ..Default::default()
            },
            false,
        )
        .await
        .expect("portal answers");
    assert!(portal_sim.dossier("DEV-1").is_some());
    assert!(
        portal_sim
            .ledger
            .snapshot()
            .iter()
            .all(|e| e.routing_code == "DVCQG"),
        "routing code from the config"
    );
    // The simulators judged every request by the contract: none broke a rule.
    assert_eq!(population_sim.violations(), vec![]);
    assert_eq!(postal_sim.violations(), vec![]);
    assert_eq!(portal_sim.violations(), vec![]);
}
