use super::*;

fn parse(json: &str) -> Result<Config, ConfigError> {
    Config::parse(json.as_bytes())
}

const MINIMAL: &str = r#"{
  "listeners": [{"name": "web", "address": "127.0.0.1:8080", "protocol": "http"}],
  "pools": [{"name": "app", "backends": [{"address": "127.0.0.1:3000"}]}],
  "routes": [{"host": "shop.example.com", "action": {"proxy": {"pool": "app"}}}]
}"#;

fn err_path(json: &str) -> String {
    match parse(json) {
        Ok(_) => panic!("accepted an invalid config: {json}"),
        Err(e) => e.path,
    }
}

#[test]
fn minimal_config_parses_with_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.pools[0].timeouts, PoolTimeouts::default());
    assert_eq!(c.routes[0].path_prefix, "/");
    assert_eq!(c.client.idle_timeout_ms, 60_000);
}

#[test]
fn the_documented_example_parses() {
    let doc = include_str!("../../../docs/config.md");
    let start = doc
        .find("```json\n")
        .expect("docs/config.md has a json example")
        + 8;
    let end = start + doc[start..].find("```").expect("closed code block");
    let c = parse(&doc[start..end]).unwrap();
    assert!(c.pools.len() >= 2 && c.routes.len() >= 4 && c.certificates.len() >= 2);
}

#[test]
fn embedded_defaults_are_valid_and_round_trip() {
    let (cert, key) = (Path::new("/d/tls/cert.pem"), Path::new("/d/tls/key.pem"));
    for c in [embedded_default(cert, key), appliance_default(cert, key)] {
        c.validate().unwrap();
        assert_eq!(parse(&c.to_json_pretty()).unwrap(), c);
    }
    let appliance = appliance_default(cert, key);
    assert_eq!(appliance.listeners[0].address.to_string(), "0.0.0.0:443");
    assert_eq!(appliance.listeners[1].redirect_to_https_port, Some(443));
    assert_eq!(appliance.admin.address.to_string(), "0.0.0.0:9443");
}

use std::path::Path;

#[test]
fn structural_errors_name_the_field() {
    let bad_addr = MINIMAL.replace("127.0.0.1:8080", "localhost-8080");
    assert_eq!(err_path(&bad_addr), "listeners[0].address");
    let unknown = MINIMAL.replace(
        "\"protocol\": \"http\"",
        "\"protocol\": \"http\", \"prot\": 1",
    );
    assert_eq!(err_path(&unknown), "listeners[0].prot");
    let wrong_type = MINIMAL.replace("[{\"address\": \"127.0.0.1:3000\"}]", "\"x\"");
    assert_eq!(err_path(&wrong_type), "pools[0].backends");
    assert_eq!(err_path("{"), ".");
}

#[test]
fn semantic_errors_name_the_field() {
    assert_eq!(
        err_path(&MINIMAL.replace("\"pool\": \"app\"", "\"pool\": \"nope\"")),
        "routes[0].action.proxy.pool"
    );
    assert_eq!(
        err_path(&MINIMAL.replace("127.0.0.1:3000", "127.0.0.1:0")),
        "pools[0].backends[0].address"
    );
    assert_eq!(
        err_path(&MINIMAL.replace("127.0.0.1:3000", "bad host:80")),
        "pools[0].backends[0].address"
    );
    assert_eq!(
        err_path(&MINIMAL.replace("shop.example.com", "shop.*.com")),
        "routes[0].host"
    );
    assert_eq!(
        err_path(&MINIMAL.replace("\"protocol\": \"http\"", "\"protocol\": \"https\"")),
        "listeners[0].protocol"
    );
    assert_eq!(
        err_path(&MINIMAL.replace("\"name\": \"app\"", "\"name\": \"a p p\"")),
        "pools[0].name"
    );
    let twice = MINIMAL.replace(
        "\"routes\": [",
        "\"routes\": [{\"host\": \"SHOP.example.com\", \"path_prefix\": \"/\", \"action\": \"welcome\"},",
    );
    assert_eq!(err_path(&twice), "routes[1].path_prefix");
    let zero = MINIMAL.replace(
        "\"backends\"",
        "\"timeouts\": {\"connect_ms\": 0}, \"backends\"",
    );
    assert_eq!(err_path(&zero), "pools[0].timeouts.connect_ms");
    assert_eq!(err_path(r#"{"listeners": []}"#), "listeners");
}

#[test]
fn host_port_accepts_names_and_literals() {
    for ok in [
        "127.0.0.1:80",
        "[::1]:8080",
        "app-1.internal:3000",
        "localhost:1",
    ] {
        check_host_port("p", ok).unwrap();
    }
    for bad in [
        "",
        "app",
        ":80",
        "app:",
        "app:99999",
        "-a.b:80",
        "a..b:80",
        "[::1]",
    ] {
        assert!(check_host_port("p", bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn network_settings_are_checked_as_on_the_command_line() {
    let with = |net: &str| MINIMAL.replacen('{', &format!("{{\"network\": {net}, "), 1);
    let c = parse(&with(
        r#"[{"interface": "eth0", "address": "192.0.2.10/24", "gateway": "192.0.2.1"}]"#,
    ))
    .unwrap();
    let net = c.network[0].to_net().unwrap();
    assert_eq!((net.iface.as_str(), net.prefix), ("eth0", 24));
    assert_eq!(parse(&c.to_json_pretty()).unwrap(), c);
    for (bad, path, needle) in [
        (
            r#"[{"interface": "eth0", "address": "192.0.2.10"}]"#,
            "network[0]",
            "no /PREFIX",
        ),
        (
            r#"[{"interface": "eth0", "address": "10.0.0.1/8", "gateway": "2001:db8::1"}]"#,
            "network[0]",
            "different IP versions",
        ),
        (
            r#"[{"interface": "eth0", "address": "10.0.0.1/8"}, {"interface": "eth0", "address": "10.0.0.2/8"}]"#,
            "network[1].interface",
            "twice",
        ),
    ] {
        let e = parse(&with(bad)).unwrap_err();
        assert_eq!(e.path, path, "{bad}");
        assert!(e.reason.contains(needle), "{bad}: {e}");
    }
    assert_eq!(
        err_path(&with(r#"[{"interface": "eth0", "addr": "10.0.0.1/8"}]"#)),
        "network[0].addr"
    );
}

#[test]
fn failover_settings_are_checked_naming_the_field() {
    let with = |failover: &str| MINIMAL.replacen('{', &format!("{{\"failover\": {failover},"), 1);
    let good = r#"{"interface": "eth0", "vrid": 51, "virtual_addresses": ["10.0.2.100/24"], "peers": ["10.0.2.16"]}"#;
    let c = parse(&with(good)).unwrap();
    let f = c.failover.unwrap();
    assert_eq!((f.priority, f.advert_ms, f.preempt), (100, 40, true));
    for (bad, path) in [
        (good.replace("51", "0"), "failover.vrid"),
        (
            good.replace("\"vrid\"", "\"advert_ms\": 55, \"vrid\""),
            "failover.advert_ms",
        ),
        (
            good.replace("\"vrid\"", "\"advert_ms\": 5, \"vrid\""),
            "failover.advert_ms",
        ),
        (good.replace("\"eth0\"", "\"\""), "failover.interface"),
        (
            good.replace("[\"10.0.2.100/24\"]", "[]"),
            "failover.virtual_addresses",
        ),
        (
            good.replace(
                "[\"10.0.2.100/24\"]",
                "[\"10.0.2.100/24\", \"2001:db8::1/64\"]",
            ),
            "failover.virtual_addresses[1]",
        ),
        (
            good.replace("10.0.2.16", "2001:db8::2"),
            "failover.peers[0]",
        ),
        (
            good.replace("\"vrid\"", "\"priority\": 0, \"vrid\""),
            "failover.priority",
        ),
        (
            good.replace("\"vrid\"", "\"colour\": 1, \"vrid\""),
            "failover.colour",
        ),
        (
            good.replace("\"vrid\"", "\"auth_key\": \"short\", \"vrid\""),
            "failover.auth_key",
        ),
    ] {
        assert_eq!(err_path(&with(&bad)), path, "{bad}");
    }
}
