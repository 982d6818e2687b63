//! The embedded default configs: what `edgebox serve` runs with no `--config`
//! and nothing persisted, on a workstation and on the appliance.

use std::path::Path;

use super::{
    Action, AdminSettings, Certificate, ClientSettings, Config, Listener, Protocol, Route,
    TlsSettings,
};

/// HTTPS on 127.0.0.1:8443 with the given (self-signed) certificate, HTTP on
/// 127.0.0.1:8080 redirecting to it, and the welcome page for every request.
pub fn embedded_default(cert: &Path, key: &Path) -> Config {
    welcome(cert, key, [127, 0, 0, 1], 8443, 8080)
}

/// The appliance's first config: the same on every address, on ports 443
/// and 80, with the admin API on 0.0.0.0:9443 (the appliance is managed
/// over the network; the API needs the token).
pub fn appliance_default(cert: &Path, key: &Path) -> Config {
    let mut c = welcome(cert, key, [0, 0, 0, 0], 443, 80);
    c.admin.address = ([0, 0, 0, 0], 9443).into();
    c
}

fn welcome(cert: &Path, key: &Path, ip: [u8; 4], https: u16, http: u16) -> Config {
    Config {
        listeners: vec![
            Listener {
                name: "https".into(),
                address: (ip, https).into(),
                protocol: Protocol::Https,
                redirect_to_https_port: None,
                proxy_protocol: None,
                trusted_proxies: Vec::new(),
            },
            Listener {
                name: "http".into(),
                address: (ip, http).into(),
                protocol: Protocol::Http,
                redirect_to_https_port: Some(https),
                proxy_protocol: None,
                trusted_proxies: Vec::new(),
            },
        ],
        certificates: vec![Certificate {
            name: Some("localhost".into()),
            cert: cert.to_owned(),
            key: key.to_owned(),
            names: Vec::new(),
            default: true,
        }],
        tls: TlsSettings::default(),
        pools: Vec::new(),
        routes: vec![Route {
            host: None,
            path_prefix: "/".into(),
            action: Action::Welcome,
            hsts: None,
        }],
        client: ClientSettings::default(),
        admin: AdminSettings::default(),
        dns: Default::default(),
        replication: Default::default(),
        failover: None,
        acme: None,
        network: Vec::new(),
    }
}
