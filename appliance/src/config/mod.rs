//! The configuration document: its types, parsing, and validation.
//!
//! A config is one JSON document (see `docs/config.md`). [`Config::parse`] turns
//! bytes into a config that has passed every check that needs no IO: unknown
//! fields, types, names, references between sections, value ranges. Checks that
//! read files or resolve names (certificates, backend addresses) happen when a
//! [`crate::snapshot::Snapshot`] is built from it. Either step fails with a
//! [`ConfigError`] naming the field path and the reason, and nothing is applied.
#![forbid(unsafe_code)]

pub mod acme;
mod default;
mod failover;
mod pool;
mod replication;

pub use default::{appliance_default, embedded_default};
pub use failover::Failover;
pub use pool::*;
pub use replication::{is_fingerprint, PeerSettings, ReplicationSettings};

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A field of the config that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// Where in the document, as `pools[0].backends[1].address`; `.` for the
    /// document as a whole.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses to accept connections on.
    pub listeners: Vec<Listener>,
    /// Certificates for HTTPS listeners, chosen by SNI.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// TLS settings shared by all HTTPS listeners.
    #[serde(default)]
    pub tls: TlsSettings,
    /// Pools of backends that routes proxy to.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// What to do with a request, by Host and path prefix.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Limits on client connections.
    #[serde(default)]
    pub client: ClientSettings,
    /// The admin API's own listener.
    #[serde(default)]
    pub admin: AdminSettings,
    /// How backend names are resolved.
    #[serde(default)]
    pub dns: DnsSettings,
    /// Replication with other appliances.
    #[serde(default)]
    pub replication: ReplicationSettings,
    /// This appliance's part in an active-backup pair (VRRP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    /// Certificates this appliance obtains and renews itself (ACME). Local
    /// to each appliance: in a pair, only the master orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<acme::Acme>,
    /// On the appliance: static addresses PID 1 gives the interfaces at boot
    /// (when the kernel command line names none). Changes apply at reboot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<NetInterface>,
}

/// One static address of an interface, as `edgebox.net=` on the kernel
/// command line says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    /// The kernel's name for it, e.g. `eth0`.
    pub interface: String,
    /// `ADDRESS/PREFIX`, e.g. `192.0.2.10/24`.
    pub address: String,
    /// The default route's next hop, if this interface has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::IpAddr>,
}

impl NetInterface {
    /// The same settings as PID 1 uses them; the error says what is wrong.
    pub fn to_net(&self) -> Result<crate::init::cmdline::NetConfig, String> {
        let mut spec = format!("{},{}", self.interface, self.address);
        if let Some(gw) = self.gateway {
            spec.push_str(&format!(",gw={gw}"));
        }
        crate::init::cmdline::parse_net(&spec)
    }
}

/// Resolving backend names (`host:port` and SRV names in pools).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Name servers to ask (`ip:port`); empty: the system's
    /// (`/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<SocketAddr>,
    /// Every name is resolved again this often; addresses that appear join
    /// their pool, those that vanish are drained.
    pub interval_ms: u64,
    /// One lookup gives up after this long.
    pub timeout_ms: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            interval_ms: 5_000,
            timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// HTTPS address of the admin API (served by the control plane).
    pub address: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            address: ([127, 0, 0, 1], 9443).into(),
        }
    }
}

/// One address to accept connections on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// A unique name, used in logs.
    pub name: String,
    /// `ip:port`; port 0 picks a free port (printed at start).
    pub address: SocketAddr,
    /// `https` (TLS, HTTP/1.1 and HTTP/2) or `http` (plain HTTP/1.1).
    pub protocol: Protocol,
    /// On an `http` listener: answer every request with a redirect to HTTPS on
    /// this port instead of routing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_to_https_port: Option<u16>,
    /// Connections from these networks start with a PROXY protocol header
    /// (v1 or v2) naming the real client; from anywhere else, none is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<AcceptProxy>,
    /// `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` sent by a client in these networks (a CDN, a
    /// balancer in front) are kept and appended to; from anyone else they
    /// are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Where PROXY protocol headers are accepted from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptProxy {
    /// The balancers' networks, e.g. `10.0.0.0/8`.
    pub from: Vec<ipnet::IpNet>,
}

impl Listener {
    /// Whether a connection from `peer` must start with a PROXY header.
    pub fn expects_proxy_header(&self, peer: std::net::IpAddr) -> bool {
        self.proxy_protocol
            .as_ref()
            .is_some_and(|p| in_any(&p.from, peer))
    }

    /// Whether forwarding headers from `client` are believed.
    pub fn trusts(&self, client: std::net::IpAddr) -> bool {
        in_any(&self.trusted_proxies, client)
    }
}

/// Whether `ip` (an IPv4-mapped IPv6 address counting as IPv4) is in one of
/// `nets`.
fn in_any(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Https,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// A unique name; certificates uploaded through the admin API have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// PEM file with the certificate chain, leaf first. A relative path is
    /// relative to the config file's directory.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Server names (exact or `*.example.com`) this certificate is chosen for.
    /// Empty: the DNS names in the certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Serve this certificate when no name matches (or the client sent no SNI).
    /// Without one marked, the first certificate is the default.
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// A client must finish its handshake within this time.
    pub handshake_timeout_ms: u64,
    /// Session-ticket keys are replaced this often; a ticket stays valid for
    /// two periods.
    pub ticket_rotation_s: u64,
    /// Issue TLS session tickets, so clients can resume. Off: every handshake
    /// is full (the benchmarks' handshake scenario turns it off everywhere).
    pub session_tickets: bool,
    /// `Strict-Transport-Security` on every HTTPS response whose route sets
    /// none of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
}

/// `Strict-Transport-Security` (RFC 6797), sent on HTTPS responses only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    /// `max-age`; 0 tells browsers to forget the policy.
    pub max_age_s: u64,
    #[serde(default)]
    pub include_subdomains: bool,
    /// Asks to be in browsers' preload lists (hstspreload.org requires
    /// `include_subdomains` and a year or more).
    #[serde(default)]
    pub preload: bool,
}

impl Hsts {
    /// The header's value.
    pub fn value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age_s);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        within(&format!("{at}.max_age_s"), self.max_age_s, 0, 63_072_000)?;
        if self.preload && (!self.include_subdomains || self.max_age_s < 31_536_000) {
            return Err(ConfigError::new(
                format!("{at}.preload"),
                "preload needs include_subdomains and a max_age_s of a year (31536000) or more",
            ));
        }
        Ok(())
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 10_000,
            ticket_rotation_s: 3_600,
            session_tickets: true,
            hsts: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSettings {
    /// A client must send a request's headers within this time.
    pub header_timeout_ms: u64,
    /// A client connection that moves no byte for this long is closed.
    pub idle_timeout_ms: u64,
    /// On shutdown, requests in flight get this long to finish.
    pub shutdown_grace_ms: u64,
    /// Client connections open at once, at most; more are closed as they
    /// come. 0: as many as the open-files limit leaves room for (half of
    /// it less a reserve, a proxied connection also holding one to a
    /// backend).
    pub max_connections: u64,
    /// Connections open at once from one client address, at most (shared
    /// out between the cores); 0: no limit.
    pub max_connections_per_address: u64,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            shutdown_grace_ms: 30_000,
            max_connections: 0,
            max_connections_per_address: 0,
        }
    }
}

/// A routing rule: requests whose Host and path match get `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `shop.example.com`, `*.example.com` (any depth below it), or absent for
    /// any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Matches this path and everything below it, on segment boundaries.
    #[serde(default = "root")]
    pub path_prefix: String,
    pub action: Action,
    /// `Strict-Transport-Security` for this route's HTTPS responses (else
    /// `tls.hsts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
}

fn root() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Forward to a pool.
    Proxy { pool: String },
    /// Redirect to `to` (a URL); the request's path and query are not appended.
    Redirect {
        to: String,
        #[serde(default = "default_redirect_status")]
        status: u16,
    },
    /// A fixed response.
    Respond {
        #[serde(default = "default_respond_status")]
        status: u16,
        #[serde(default)]
        body: String,
        #[serde(default = "default_content_type")]
        content_type: String,
    },
    /// edgebox's built-in welcome page.
    Welcome,
    /// Files of a site published to the content store.
    Static { site: String },
}

fn default_redirect_status() -> u16 {
    308
}
fn default_respond_status() -> u16 {
    200
}
fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_owned()
}

impl Config {
    /// Parses and validates a JSON document.
    pub fn parse(json: &[u8]) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = match e.path().to_string() {
                p if p == "?" || p.is_empty() => ".".to_owned(),
                p => p,
            };
            ConfigError::new(path, e.into_inner())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Every check that needs no IO.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listeners()?;
        self.validate_certificates()?;
        pool::validate_pools(&self.pools)?;
        self.validate_routes()?;
        self.replication.validate()?;
        if let Some(a) = &self.acme {
            let has = |p| self.listeners.iter().any(|l| l.protocol == p);
            a.validate(has(Protocol::Http), has(Protocol::Https))?;
        }
        if let Some(f) = &self.failover {
            f.validate()?;
            for (i, name) in f.critical_pools.iter().enumerate() {
                if !self.pools.iter().any(|p| p.name == *name) {
                    return Err(ConfigError::new(
                        format!("failover.critical_pools[{i}]"),
                        format_args!("no pool named {name:?}"),
                    ));
                }
            }
        }
        let mut interfaces = HashSet::new();
        for (i, n) in self.network.iter().enumerate() {
            n.to_net()
                .map_err(|reason| ConfigError::new(format!("network[{i}]"), reason))?;
            if !interfaces.insert(n.interface.as_str()) {
                return Err(ConfigError::new(
                    format!("network[{i}].interface"),
                    "this interface is configured twice",
                ));
            }
        }
        within(
            "tls.handshake_timeout_ms",
            self.tls.handshake_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within(
            "tls.ticket_rotation_s",
            self.tls.ticket_rotation_s,
            1,
            MAX_TICKET_ROTATION_S,
        )?;
        if let Some(h) = &self.tls.hsts {
            h.validate("tls.hsts")?;
        }
        within(
            "client.header_timeout_ms",
            self.client.header_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within(
            "client.idle_timeout_ms",
            self.client.idle_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within("dns.interval_ms", self.dns.interval_ms, 100, MAX_TIMEOUT_MS)?;
        within("dns.timeout_ms", self.dns.timeout_ms, 1, 60_000)?;
        for (i, s) in self.dns.servers.iter().enumerate() {
            if s.port() == 0 {
                return Err(ConfigError::new(
                    format!("dns.servers[{i}]"),
                    "port must be from 1 to 65535",
                ));
            }
        }
        within(
            "client.shutdown_grace_ms",
            self.client.shutdown_grace_ms,
            0,
            MAX_TIMEOUT_MS,
        )?;
        within(
            "client.max_connections",
            self.client.max_connections,
            0,
            10_000_000,
        )?;
        within(
            "client.max_connections_per_address",
            self.client.max_connections_per_address,
            0,
            10_000_000,
        )?;
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::new("listeners", "at least one is needed"));
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |field: &str| format!("listeners[{i}].{field}");
            if l.address == self.admin.address && l.address.port() != 0 {
                return Err(ConfigError::new(
                    at("address"),
                    "the admin API listens there",
                ));
            }
            check_name(&at("name"), &l.name)?;
            if !names.insert(&l.name) {
                return Err(ConfigError::new(at("name"), "duplicate listener name"));
            }
            if l.address.port() != 0 && !addresses.insert(l.address) {
                return Err(ConfigError::new(at("address"), "address used twice"));
            }
            if l.protocol == Protocol::Https {
                if l.redirect_to_https_port.is_some() {
                    return Err(ConfigError::new(
                        at("redirect_to_https_port"),
                        "only for http listeners",
                    ));
                }
                if self.certificates.is_empty() && self.acme.is_none() {
                    return Err(ConfigError::new(
                        at("protocol"),
                        "an https listener needs at least one entry in certificates, or an acme section",
                    ));
                }
            }
            if l.redirect_to_https_port == Some(0) {
                return Err(ConfigError::new(
                    at("redirect_to_https_port"),
                    "must be a port from 1 to 65535",
                ));
            }
        }
        Ok(())
    }

    fn validate_certificates(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, c) in self.certificates.iter().enumerate() {
            if let Some(name) = &c.name {
                check_name(&format!("certificates[{i}].name"), name)?;
                if !names.insert(name) {
                    return Err(ConfigError::new(
                        format!("certificates[{i}].name"),
                        "duplicate certificate name",
                    ));
                }
            }
        }
        let defaults = self.certificates.iter().filter(|c| c.default).count();
        if defaults > 1 {
            return Err(ConfigError::new(
                "certificates",
                "only one certificate may be the default",
            ));
        }
        for (i, c) in self.certificates.iter().enumerate() {
            for (j, name) in c.names.iter().enumerate() {
                crate::router::HostPattern::parse(name)
                    .map_err(|e| ConfigError::new(format!("certificates[{i}].names[{j}]"), e))?;
            }
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = |field: &str| format!("routes[{i}].{field}");
            let host = match &r.host {
                Some(h) => Some(
                    crate::router::HostPattern::parse(h)
                        .map_err(|e| ConfigError::new(at("host"), e))?,
                ),
                None => None,
            };
            if !r.path_prefix.starts_with('/') {
                return Err(ConfigError::new(at("path_prefix"), "must start with '/'"));
            }
            if r.path_prefix.contains(['?', '#']) {
                return Err(ConfigError::new(
                    at("path_prefix"),
                    "must not contain '?' or '#'",
                ));
            }
            if let Some(h) = &r.hsts {
                h.validate(&at("hsts"))?;
            }
            let canonical = crate::router::routing_path(&r.path_prefix);
            if canonical != r.path_prefix.as_str() {
                return Err(ConfigError::new(
                    at("path_prefix"),
                    format!(
                        "requests are matched in their decoded form, so this prefix would never match; write it as {canonical:?}"
                    ),
                ));
            }
            if !seen.insert((host, r.path_prefix.trim_end_matches('/').to_owned())) {
                return Err(ConfigError::new(
                    at("path_prefix"),
                    "another route has the same host and path prefix",
                ));
            }
            match &r.action {
                Action::Proxy { pool } => {
                    if !self.pools.iter().any(|p| &p.name == pool) {
                        return Err(ConfigError::new(
                            at("action.proxy.pool"),
                            format!("no pool named {pool:?}"),
                        ));
                    }
                }
                Action::Redirect { to, status } => {
                    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                        return Err(ConfigError::new(
                            at("action.redirect.status"),
                            "must be 301, 302, 303, 307 or 308",
                        ));
                    }
                    if http::HeaderValue::from_str(to).is_err() || to.is_empty() {
                        return Err(ConfigError::new(
                            at("action.redirect.to"),
                            "must be a URL of visible ASCII characters",
                        ));
                    }
                }
                Action::Respond {
                    status,
                    content_type,
                    ..
                } => {
                    if !(200..=599).contains(status) {
                        return Err(ConfigError::new(
                            at("action.respond.status"),
                            "must be from 200 to 599",
                        ));
                    }
                    if http::HeaderValue::from_str(content_type).is_err() {
                        return Err(ConfigError::new(
                            at("action.respond.content_type"),
                            "not a valid header value",
                        ));
                    }
                }
                Action::Welcome => {}
                Action::Static { site } => {
                    if edgebox_storage::sites::check_site_name(site).is_err() {
                        return Err(ConfigError::new(
                            at("action.static.site"),
                            "site names are 1 to 64 of A-Z a-z 0-9 - _ . and do not start with '.'",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The pretty JSON form, as documented and as persisted.
    pub fn to_json_pretty(&self) -> String {
        // A `Config` is plain data with string keys; serialising it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The longest timeout: one day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The longest session-ticket key rotation period: one week.
pub const MAX_TICKET_ROTATION_S: u64 = 604_800;

pub(crate) fn within(path: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            path,
            format_args!("must be from {min} to {max}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

#[cfg(test)]
mod tests;
