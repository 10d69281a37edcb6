use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A configuration file; a `[store]` section that says nothing of encryption says `off` (the tests
/// of encryption write their own).
fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("connector.toml");
    let text = if text.contains("encryption") {
        text.to_owned()
    } else {
        text.replacen("[store]\n", "[store]\nencryption = \"off\"\n", 1)
    };
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

#[test]
fn template_placeholders_are_refused_and_a_missing_secret_names_its_variable() {
    let (_dir, path) = write_config(
        "[store]\npath = \"s\"\n[upstreams.portal.national]\nbase_url = \"https://lgsp.CHANGE-ME.gov.vn\"\nusername = \"u\"\nagency_code = \"CHANGE-ME\"\n[upstreams.postal]\nbase_url = \"https://vnpost.invalid\"\ncustomer_code = \"C\"\ncustomer_key = \"k\"\nsecret_key = \"s\"\n",
    );
    let errors = load(&path, no_env()).expect_err("placeholders");
    let found = |key: &str| {
        errors
            .0
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.message.clone())
    };
    assert!(
        found("upstreams.portal.national.base_url").is_some_and(|m| m.contains("placeholder")),
        "{errors}"
    );
    assert!(
        found("upstreams.portal.national.agency_code").is_some_and(|m| m.contains("placeholder")),
        "{errors}"
    );
    assert!(
        found("upstreams.postal.base_url").is_some_and(|m| m.contains("placeholder")),
        "{errors}"
    );
    assert!(
        found("upstreams.portal.national.password")
            .is_some_and(|m| m.contains("DVC_CONNECTOR__UPSTREAMS__PORTAL__NATIONAL__PASSWORD")),
        "{errors}"
    );
}

#[test]
fn file_problems_carry_their_line_and_plain_type_names() {
    let (_dir, path) = write_config(
        "[store]\npath = \"s\"\n\n[queue]\nlease_concurrency = 3\nlane_concurrency = \"many\"\n",
    );
    let errors = load(&path, no_env()).expect_err("mistakes");
    let text = errors.to_string();
    let line = |key: &str| {
        errors
            .0
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.origin.rsplit(':').next().unwrap_or("").to_owned())
    };
    assert_eq!(
        line("queue.lane_concurrency").as_deref(),
        Some("7"),
        "{text}"
    );
    assert!(text.contains("expected an integer"), "{text}");
    assert!(!text.contains("i64"), "{text}");
}

#[test]
fn a_vnpost_endpoint_may_be_a_whole_url_held_to_the_upstream_rule() {
    let section = "[upstreams.postal]\nbase_url = \"https://api.vnpost.vn\"\ncustomer_code = \"C\"\ncustomer_key = \"k\"\nsecret_key = \"s\"\n";
    let (_dir, path) = write_config(&format!(
        "[store]\npath = \"s\"\n{section}token_path = \"https://auth.vnpost.vn/token\"\n"
    ));
    let settings = load(&path, no_env()).expect("valid");
    let postal = settings.upstreams.postal.expect("postal");
    assert_eq!(postal.profile.token_path, "https://auth.vnpost.vn/token");
    let (_dir, path) = write_config(&format!(
        "[store]\npath = \"s\"\n{section}token_path = \"http://auth.vnpost.vn/token\"\n"
    ));
    let errors = load(&path, no_env()).expect_err("plain http");
    assert_eq!(errors.0[0].key, "upstreams.postal.token_path");
}

#[test]
fn a_national_target_without_a_routing_code_is_warned_about() {
    let section = "[upstreams.portal.national]\nbase_url = \"https://dvc.h56.gov.vn\"\nusername = \"u\"\npassword = \"p\"\nagency_code = \"A\"\n";
    let (_dir, path) = write_config(&format!("[store]\npath = \"s\"\n{section}"));
    let advice = load(&path, no_env()).expect("valid").advice();
    assert!(advice[0].contains("routing_code"), "{advice:?}");
    let (_dir, path) = write_config(&format!(
        "[store]\npath = \"s\"\n{section}routing_code = \"DVCQG\"\n"
    ));
    assert!(load(&path, no_env()).expect("valid").advice().is_empty());
}

#[test]
fn encryption_at_rest_is_on_unless_the_settings_say_otherwise() {
    let (_dir, path) = write_config("[store]\npath = \"s\"\nencryption = \"on\"\n");
    let errors = load(&path, no_env()).expect_err("a key is required");
    assert_eq!(errors.0[0].key, "store.encryption_key_files");
    let (dir, path) = write_config("[store]\npath = \"s\"\n# encryption: the default\n");
    assert!(load(&path, no_env()).is_err(), "on by default");
    let key = dir.path().join("store.key");
    std::fs::write(&key, "ab".repeat(32)).expect("key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(
            &path,
            "[store]\npath = \"s\"\nencryption_key_files = [\"store.key\"]\n",
        )
        .expect("config");
        let errors = load(&path, no_env()).expect_err("a key others can read");
        assert!(errors.0[0].message.contains("chmod 600"), "{errors}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let settings = load(&path, no_env()).expect("with a key");
    assert_eq!(settings.store.encryption, crate::settings::Encryption::On);
    assert!(settings.store.keyring().expect("ring").is_some());
    // Generated: a key beside the store, made once, mode 0600.
    let (dir, path) = write_config("[store]\npath = \"s\"\nencryption = \"generated\"\n");
    let settings = load(&path, no_env()).expect("generated");
    let first = settings.store.record_key().expect("record key");
    assert_eq!(
        settings.store.record_key().expect("again"),
        first,
        "made once"
    );
    let made = dir.path().join("s").join(crate::settings::GENERATED_KEY);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&made).expect("made").permissions().mode() & 0o777,
        0o600
    );
    assert!(settings.store.keyring().expect("ring").is_some());
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn the_development_example_is_valid() {
    let settings = load(&repo_file("config/dev.toml"), no_env()).expect("dev config loads");
    assert_eq!(settings.store.backend, crate::queue::Backend::Redb);
    assert!(
        settings.store.path.is_absolute()
            || settings.store.path.starts_with(env!("CARGO_MANIFEST_DIR"))
    );
    assert_eq!(settings.upstreams.portal.len(), 2);
    assert_eq!(settings.api.tokens.len(), 2);
    assert_eq!(settings.queue.lease, Duration::from_secs(60));
}

#[test]
fn the_production_template_needs_only_its_blanks_filled() {
    let hash = "a".repeat(64);
    // The store key is a blank too: a file the operator makes (here, in a temporary directory).
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("store.key");
    std::fs::write(&key, "cd".repeat(32)).expect("key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let template = std::fs::read_to_string(repo_file("config/production.toml")).expect("template");
    assert!(template.contains("\"/etc/dvc-connector/store.key\""));
    let filled = keys.path().join("production.toml");
    std::fs::write(
        &filled,
        template
            .replace("/etc/dvc-connector/store.key", &key.display().to_string())
            // The template's placeholders are blanks too.
            .replace("CHANGE-ME", "h56"),
    )
    .expect("filled");
    let env = [
        ("API__TOKENS__0__SHA256", hash.as_str()),
        ("API__TOKENS__1__SHA256", hash.as_str()),
        ("UPSTREAMS__POPULATION__CLIENT_SECRET", "s1"),
        ("UPSTREAMS__POSTAL__SECRET_KEY", "s2"),
        ("UPSTREAMS__PORTAL__NATIONAL__PASSWORD", "s3"),
        ("CALLBACKS__SECRET", "s4"),
    ]
    .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_owned()));
    let settings = load(&filled, env).expect("template loads");
    assert_eq!(
        settings.upstreams.portal["national"]
            .password
            .expose_secret(),
        "s3"
    );
    // Without the environment, each blank is reported.
    let errors = load(&repo_file("config/production.toml"), no_env()).expect_err("blanks");
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "store.encryption_key_files[0]",
        "upstreams.population.service_url",
        "upstreams.portal.national.agency_code",
        "api.tokens.0.sha256",
        "upstreams.population.client_secret",
        "upstreams.postal.secret_key",
        "upstreams.portal.national.password",
        "callbacks.secret",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
}

#[test]
fn every_mistake_is_reported_with_its_key_not_just_the_first() {
    let (_dir, path) = write_config(
        r#"
[store]
path = "store"
colour = "blue"

[queue]
lease = 30
lane_concurrency = 0

[api]
listen = "localhost"
"#,
    );
    let errors = load(&path, no_env()).expect_err("three mistakes and a half");
    let found: Vec<(&str, &str)> = errors
        .0
        .iter()
        .map(|e| (e.key.as_str(), e.message.as_str()))
        .collect();
    let has =
        |key: &str, fragment: &str| found.iter().any(|(k, m)| *k == key && m.contains(fragment));
    assert!(has("store.colour", "unknown key"), "{found:?}");
    assert!(has("queue.lease", "invalid type"), "{found:?}");
    assert!(has("queue.lane_concurrency", "from 1 to 1024"), "{found:?}");
    assert!(has("api.listen", "IP:PORT"), "{found:?}");
    assert_eq!(found.len(), 4, "{found:?}");
    for e in &errors.0 {
        // The file, and the line the key is on.
        let (file, line) = e.origin.rsplit_once(':').expect("file:line");
        assert_eq!(file, path.display().to_string());
        assert!(line.parse::<usize>().is_ok_and(|n| n > 0), "{}", e.origin);
    }
}

#[test]
fn the_environment_overrides_the_file_and_is_named_in_errors() {
    let (_dir, path) = write_config("[store]\npath = \"s\"\n[queue]\nlease = \"30s\"\n");
    let env = vec![
        ("DVC_CONNECTOR__QUEUE__LEASE".to_owned(), "90s".to_owned()),
        (
            "DVC_CONNECTOR__QUEUE__LANE_CONCURRENCY".to_owned(),
            "4".to_owned(),
        ),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ];
    let settings = load(&path, env).expect("loads");
    assert_eq!(settings.queue.lease, Duration::from_secs(90));
    assert_eq!(settings.queue.lane_concurrency, 4);

    let bad = vec![("DVC_CONNECTOR__QUEUE__LEASE".to_owned(), "soon".to_owned())];
    let errors = load(&path, bad).expect_err("bad env value");
    assert_eq!(errors.0.len(), 1);
    assert_eq!(
        errors.0[0].origin,
        "environment variable DVC_CONNECTOR__QUEUE__LEASE"
    );
    assert_eq!(errors.0[0].key, "queue.lease");
}

#[test]
fn secrets_never_print() {
    let env = vec![(
        "DVC_CONNECTOR__UPSTREAMS__POPULATION__CLIENT_SECRET".to_owned(),
        "hunter2-from-env".to_owned(),
    )];
    let source = Source::read(&repo_file("config/dev.toml"), env).expect("reads");
    let printed = source.redacted();
    for secret in [
        "hunter2-from-env",
        "dev-secret",
        "dev-password",
        "dev-callback-secret",
    ] {
        assert!(!printed.contains(secret), "{secret} printed");
    }
    assert!(printed.contains("<redacted>"));
    let settings = source.settings().expect("valid");
    let debug = format!("{settings:?}");
    assert!(!debug.contains("hunter2-from-env") && !debug.contains("dev-password"));
}

#[test]
fn a_relative_store_path_is_taken_from_the_files_directory() {
    let (dir, path) = write_config("[store]\npath = \"data/queue\"\n");
    let settings = load(&path, no_env()).expect("loads");
    assert_eq!(settings.store.path, dir.path().join("data/queue"));
}

#[test]
fn the_store_cache_is_a_size_of_at_least_a_mebibyte_from_the_file_or_the_environment() {
    let (_dir, path) = write_config("[store]\npath = \"q\"\n");
    let settings = load(&path, no_env()).expect("loads");
    assert_eq!(settings.store.cache_bytes, crate::queue::kv::CACHE_BYTES);

    let (_dir, path) = write_config("[store]\npath = \"q\"\ncache = \"96MiB\"\n");
    let settings = load(&path, no_env()).expect("loads");
    assert_eq!(settings.store.cache_bytes, 96 << 20);
    let env = vec![("DVC_CONNECTOR__STORE__CACHE".to_owned(), "8MiB".to_owned())];
    let settings = load(&path, env).expect("loads");
    assert_eq!(settings.store.cache_bytes, 8 << 20);

    for bad in ["\"512KiB\"", "\"lots\"", "0", "true"] {
        let (_dir, path) = write_config(&format!("[store]\npath = \"q\"\ncache = {bad}\n"));
        let errors = load(&path, no_env()).expect_err(bad);
        assert!(
            errors.0.iter().any(|e| e.key == "store.cache"),
            "{bad}: {errors}"
        );
    }
}

#[test]
fn a_file_that_is_not_toml_says_so() {
    let (_dir, path) = write_config("[store\npath = 1");
    let errors = load(&path, no_env()).expect_err("syntax");
    assert!(
        errors.0[0].message.starts_with("not valid TOML"),
        "{errors}"
    );
}

#[test]
fn durations_need_a_unit() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert!(parse_duration("30").is_err());
    assert!(parse_duration("3 weeks").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn upstream_profiles_come_from_the_file_with_the_specs_defaults() {
    let settings = load(&repo_file("config/dev.toml"), no_env()).expect("dev config");
    let postal = settings.upstreams.postal.as_ref().expect("postal");
    assert_eq!(postal.profile, dvc_postal::client::Profile::default());
    let national = &settings.upstreams.portal["national"];
    assert_eq!(national.profile.session_expired_codes, [2]);
    assert_eq!(national.routing_code, "DVCQG");
    let population = settings.upstreams.population.as_ref().expect("population");
    assert_eq!(population.profile.auth_hash_header, "AuthHash");
    assert_eq!(population.officers["CB-DEV-01"].key, "canbo01");

    let (_dir, path) = write_config(
        r#"
[store]
path = "s"
[upstreams.postal]
base_url = "https://vnpost.example.vn"
customer_code = "C"
customer_key = "K"
secret_key = "S"
order_path = "/apiVNPostNGSP/p1.0/order/post"
already_exists_statuses = [101, 103]
[upstreams.postal.status_codes]
10 = "accepted"
40 = "delivered"
[upstreams.portal.national]
base_url = "https://dvc.example.vn"
username = "u"
password = "p"
agency_code = "A"
auth_path = "/api/auth"
routing_header = "X-Dst-Code"
[upstreams.portal.national.statuses]
tiep_nhan = 2
da_tra = 10
"#,
    );
    let s = load(&path, no_env()).expect("profile overrides load");
    let postal = s.upstreams.postal.expect("postal");
    assert_eq!(postal.profile.order_path, "/apiVNPostNGSP/p1.0/order/post");
    assert_eq!(
        postal.profile.token_path, "/token",
        "unset keys keep the default"
    );
    assert_eq!(postal.profile.already_exists_statuses, [101, 103]);
    assert_eq!(
        postal.profile.status_table.state(40),
        Some(dvc_postal::wire::ShipmentState::Delivered)
    );
    assert_eq!(
        postal.profile.status_table.state(4),
        None,
        "a given table replaces the default"
    );
    let national = &s.upstreams.portal["national"];
    assert_eq!(
        (
            national.profile.auth_path.as_str(),
            national.profile.routing_header.as_str()
        ),
        ("/api/auth", "X-Dst-Code")
    );
    assert_eq!(national.profile.status_map.code("da_tra"), Some(10));
}

#[test]
fn pins_are_read_in_curl_form_and_reach_the_http_settings() {
    let (_dir, path) = write_config(
        r#"
[store]
path = "s"
[upstreams.portal.national]
base_url = "https://dvc.example.vn"
username = "u"
password = "p"
agency_code = "A"
pin_sha256 = ["sha256//47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="]
"#,
    );
    let s = load(&path, no_env()).expect("pins load");
    let pins = &s.upstreams.portal["national"].http.pin_sha256;
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0][..4], [0xe3, 0xb0, 0xc4, 0x42], "sha256 of nothing");
}

#[test]
fn profile_mistakes_are_reported_with_their_keys() {
    let (_dir, path) = write_config(
        r#"
[store]
path = "s"
[upstreams.postal]
base_url = "https://vnpost.example.vn"
customer_code = "C"
customer_key = "K"
secret_key = "S"
order_path = "order/post"
ca_bundle = "missing-ca.pem"
pin_sha256 = ["47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "AAAA"]
[upstreams.postal.status_codes]
x = "accepted"
4 = "arrived"
[upstreams.portal.national]
base_url = "ftp://dvc.example.vn"
username = "u"
password = "p"
agency_code = "A"
routing_header = "bad header"
[upstreams.portal.national.statuses]
done = 11
"#,
    );
    let errors = load(&path, no_env()).expect_err("mistakes");
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "upstreams.postal.order_path",
        "upstreams.postal.ca_bundle",
        "upstreams.postal.pin_sha256[1]",
        "upstreams.postal.status_codes.x",
        "upstreams.postal.status_codes.4",
        "upstreams.portal.national.base_url",
        "upstreams.portal.national.routing_header",
        "upstreams.portal.national.statuses.done",
    ] {
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
}

#[test]
fn officer_passwords_and_gateway_tokens_never_print() {
    let env = vec![(
        "DVC_CONNECTOR__UPSTREAMS__POPULATION__LGSP_ACCESS_TOKEN".to_owned(),
        "lgsp-token-xyz".to_owned(),
    )];
    let source = Source::read(&repo_file("config/dev.toml"), env).expect("reads");
    let printed = source.redacted();
    assert!(!printed.contains("dev-officer-password") && !printed.contains("lgsp-token-xyz"));
    let debug = format!("{:?}", source.settings().expect("valid"));
    assert!(!debug.contains("dev-officer-password") && !debug.contains("lgsp-token-xyz"));
}

#[test]
fn lane_protection_is_configured_per_lane() {
    let (_dir, path) = write_config(
        "[store]\npath = \"s\"\n[queue.circuit]\nfailures = 8\ncooldown = \"2s\"\nmax_cooldown = \"1m\"\n[queue.lanes.\"portal:national\"]\nconcurrency = 4\nrate_per_second = 2.5\n",
    );
    let s = load(&path, no_env()).expect("loads");
    assert_eq!(s.queue.circuit.failures, 8);
    assert_eq!(s.queue.circuit.max_cooldown, Duration::from_secs(60));
    let lane = &s.queue.lanes["portal:national"];
    assert_eq!(
        (lane.concurrency, lane.rate_per_second),
        (Some(4), Some(2.5))
    );

    let (_dir, bad) = write_config(
        "[store]\npath = \"s\"\n[queue.circuit]\ncooldown = \"2m\"\nmax_cooldown = \"1m\"\n[queue.lanes.postal]\nrate_per_second = -1.0\nconcurrency = 0\n",
    );
    let errors = load(&bad, no_env()).expect_err("mistakes");
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "queue.circuit.max_cooldown",
        "queue.lanes.postal.rate_per_second",
        "queue.lanes.postal.concurrency",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
}

#[test]
fn plain_http_upstreams_are_refused_unless_development_says_so() {
    let section = "[upstreams.portal.national]\nbase_url = \"http://dvc.example.vn\"\nusername = \"u\"\npassword = \"p\"\nagency_code = \"A\"\n";
    let (_dir, path) = write_config(&format!("[store]\npath = \"s\"\n{section}"));
    let errors = load(&path, no_env()).expect_err("http refused");
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].key, "upstreams.portal.national.base_url");
    assert!(errors.0[0].message.contains("allow_insecure_http"));
    let (_dir, dev) = write_config(&format!(
        "[store]\npath = \"s\"\n[upstreams]\nallow_insecure_http = true\n{section}"
    ));
    assert!(load(&dev, no_env()).is_ok());
    let https = section.replace("http://", "https://");
    let (_dir, prod) = write_config(&format!("[store]\npath = \"s\"\n{https}"));
    assert!(load(&prod, no_env()).is_ok());
}

#[test]
fn plain_http_is_allowed_per_upstream_and_callbacks_follow_the_same_rule() {
    let section = "[upstreams.portal.national]\nbase_url = \"http://dvc.example.vn\"\nusername = \"u\"\npassword = \"p\"\nagency_code = \"A\"\n";
    let allowed = format!("{section}allow_insecure_http = true\n");
    let (_dir, path) = write_config(&format!("[store]\npath = \"s\"\n{allowed}"));
    assert!(load(&path, no_env()).is_ok(), "this upstream's own setting");
    let callbacks = "[callbacks]\nurl = \"http://portal.example.vn/cb\"\nsecret = \"s\"\n";
    let (_dir, path) = write_config(&format!("[store]\npath = \"s\"\n{callbacks}"));
    let errors = load(&path, no_env()).expect_err("http callback refused");
    assert_eq!(errors.0[0].key, "callbacks.url");
    let (_dir, path) = write_config(&format!(
        "[store]\npath = \"s\"\n{callbacks}allow_insecure_http = true\n"
    ));
    assert!(load(&path, no_env()).is_ok());
    let (_dir, path) = write_config(&format!(
        "[store]\npath = \"s\"\n{}ca_bundle = \"missing-ca.pem\"\n",
        callbacks.replace("http://", "https://")
    ));
    let errors = load(&path, no_env()).expect_err("a CA bundle that is not there");
    assert_eq!(errors.0[0].key, "callbacks.ca_bundle", "{errors:?}");
}

#[test]
fn a_mistyped_secret_is_reported_without_its_value() {
    let (_dir, path) = write_config(
        "[store]\npath = \"s\"\n[upstreams.portal.national]\nbase_url = \"https://dvc.example.vn\"\nusername = \"u\"\npassword = 98765432\nagency_code = \"A\"\n",
    );
    let errors = load(&path, no_env()).expect_err("mistyped secret");
    let printed = errors.to_string();
    assert!(
        printed.contains("upstreams.portal.national.password"),
        "{printed}"
    );
    assert!(!printed.contains("98765432"), "{printed}");
}

#[test]
fn credentials_in_a_url_are_not_printed() {
    let (_dir, path) = write_config(
        "[store]\npath = \"s\"\n[upstreams.postal]\nbase_url = \"http://op:s3cr3t-pw@vnpost.example.vn\"\ncustomer_code = \"C\"\ncustomer_key = \"K\"\nsecret_key = \"S\"\n[upstreams.portal.national]\nbase_url = \"ht tp://u:another-pw@x\"\nusername = \"u\"\npassword = \"p\"\nagency_code = \"A\"\n",
    );
    let printed = load(&path, no_env()).expect_err("two bad URLs").to_string();
    assert!(
        printed.contains("upstreams.postal.base_url")
            && printed.contains("upstreams.portal.national.base_url"),
        "{printed}"
    );
    assert!(
        !printed.contains("s3cr3t-pw") && !printed.contains("another-pw"),
        "{printed}"
    );
}

const PORTAL_WITH: &str = r#"
[store]
path = "store"
[upstreams.portal.national]
base_url = "https://portal.h56.gov.vn"
username = "u"
agency_code = "A"
"#;

#[test]
fn a_secret_can_come_from_a_file_named_by_its_file_key() {
    let (dir, path) = write_config(&format!("{PORTAL_WITH}password_file = \"portal.pass\"\n"));
    std::fs::write(dir.path().join("portal.pass"), "s3cret-from-file\n").expect("write");
    let settings = load(&path, no_env()).expect("valid");
    assert_eq!(
        settings.upstreams.portal["national"]
            .password
            .expose_secret(),
        "s3cret-from-file"
    );
    // Both forms at once, or a missing file, are errors naming the key.
    let (_dir, both) = write_config(&format!(
        "{PORTAL_WITH}password = \"x\"\npassword_file = \"portal.pass\"\n"
    ));
    let errors = load(&both, no_env()).expect_err("ambiguous");
    assert!(
        errors
            .to_string()
            .contains("upstreams.portal.national.password_file"),
        "{errors}"
    );
    let (_dir, missing) = write_config(&format!("{PORTAL_WITH}password_file = \"nope.pass\"\n"));
    let errors = load(&missing, no_env()).expect_err("missing file");
    assert!(errors.to_string().contains("nope.pass"), "{errors}");
}

#[cfg(unix)]
#[test]
fn a_world_readable_file_with_secrets_is_warned_about_and_a_private_one_is_not() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = write_config(&format!("{PORTAL_WITH}password = \"in-the-file\"\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let source = Source::read(&path, no_env()).expect("read");
    assert_eq!(source.warnings().len(), 1, "{:?}", source.warnings());
    assert!(
        !source.warnings()[0].contains("in-the-file"),
        "the secret is not echoed"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(
        Source::read(&path, no_env())
            .expect("read")
            .warnings()
            .is_empty()
    );
    // Secrets kept out of the file: no warning even when it is world-readable.
    let (dir, path) = write_config(&format!("{PORTAL_WITH}password_file = \"p\"\n"));
    std::fs::write(dir.path().join("p"), "x").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(
        Source::read(&path, no_env())
            .expect("read")
            .warnings()
            .is_empty()
    );
}

#[test]
fn audit_retention_is_read_and_must_cover_a_whole_segment() {
    let (_dir, path) = write_config(
        "[store]\npath = \"s\"\n[audit]\nrotate_every = \"7d\"\nretention = \"1825d\"\n",
    );
    let s = load(&path, no_env()).expect("loads");
    assert_eq!(s.audit.policy.rotate_every, Duration::from_secs(7 * 86_400));
    assert_eq!(
        s.audit.policy.retention,
        Some(Duration::from_secs(1825 * 86_400))
    );
    let (_dir, path) = write_config(
        "[store]\npath = \"s\"\n[audit]\nrotate_every = \"30d\"\nretention = \"1d\"\n",
    );
    let errors = load(&path, no_env()).expect_err("shorter than a segment");
    assert_eq!(errors.0[0].key, "audit.retention");
}
