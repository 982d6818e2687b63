//! The embedded default config: what `edgebox serve` runs with no `--config`.

use std::path::Path;

use super::{
    Action, AdminSettings, Certificate, ClientSettings, Config, Listener, Protocol, Route,
    TlsSettings,
};

/// HTTPS on 127.0.0.1:8443 with the given (self-signed) certificate, HTTP on
/// 127.0.0.1:8080 redirecting to it, and the welcome page for every request.
pub fn embedded_default(cert: &Path, key: &Path) -> Config {
    Config {
        listeners: vec![
            Listener {
                name: "https".into(),
                address: ([127, 0, 0, 1], 8443).into(),
                protocol: Protocol::Https,
                redirect_to_https_port: None,
            },
            Listener {
                name: "http".into(),
                address: ([127, 0, 0, 1], 8080).into(),
                protocol: Protocol::Http,
                redirect_to_https_port: Some(8443),
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
        }],
        client: ClientSettings::default(),
        admin: AdminSettings::default(),
    }
}
