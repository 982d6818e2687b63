//! TLS termination with rustls (aws-lc-rs provider).
//!
//! TLS 1.3 and 1.2 with rustls' default suites (AEAD only, forward-secret key
//! exchange), certificates chosen by SNI ([`sni`]), ALPN `h2` and `http/1.1`,
//! and stateless resumption with session tickets shared by all cores
//! ([`tickets`]). There is no server-side session cache, so no lock is taken
//! during a handshake.

pub mod managed;
pub mod self_signed;
pub mod sni;
pub mod tickets;
pub mod validity;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{self, ConfigError};
use crate::router::HostPattern;
use managed::Managed;
use sni::SniTable;
use tickets::TicketKeys;

/// ALPN protocols offered, in order of preference. `acme-tls/1` is chosen
/// only by a CA validating a TLS-ALPN-01 challenge (no other client offers
/// it); such a connection is closed after the handshake.
pub const ALPN: [&[u8]; 3] = [b"h2", b"http/1.1", managed::ACME_TLS_ALPN];

/// Picks the certificate for a handshake from the client's SNI name: a
/// configured certificate naming it exactly, then one obtained by ACME,
/// then a configured wildcard, then the default (none when every
/// certificate comes from ACME: the handshake then fails, as Caddy's does).
#[derive(Debug)]
pub struct CertResolver {
    table: Option<SniTable<Arc<CertifiedKey>>>,
    managed: Arc<Managed>,
}

impl CertResolver {
    /// Whether a configured certificate covers `name` (exactly or by a
    /// wildcard; the default does not count).
    pub fn covers(&self, name: &str) -> bool {
        self.table.as_ref().is_some_and(|t| t.covers(name))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(sni::normalize);
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == managed::ACME_TLS_ALPN))
        {
            // RFC 8737 3: a validation handshake gets the challenge
            // certificate or nothing.
            return self.managed.alpn_challenge(name.as_deref()?);
        }
        let table = self.table.as_ref();
        let Some(name) = name else {
            return table.map(|t| Arc::clone(t.lookup(None)));
        };
        if let Some(k) = table.and_then(|t| t.exact(&name)) {
            return Some(Arc::clone(k));
        }
        if let Some(k) = self.managed.resolve(&name) {
            return Some(k);
        }
        table.map(|t| Arc::clone(t.wildcard(&name).unwrap_or_else(|| t.lookup(None))))
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads every certificate and key named in the config (relative paths from
/// `base`) and checks that each key matches its certificate; the resolver
/// also serves what `managed` holds.
pub fn load_certificates(
    certs: &[config::Certificate],
    base: &Path,
    managed: &Arc<Managed>,
) -> Result<CertResolver, ConfigError> {
    let provider = provider();
    let mut loaded = Vec::with_capacity(certs.len());
    for (i, c) in certs.iter().enumerate() {
        let at = |field: &str| format!("certificates[{i}].{field}");
        let cert_path = base.join(&c.cert);
        let key_path = base.join(&c.key);
        let chain = read_chain(&cert_path).map_err(|e| ConfigError::new(at("cert"), e))?;
        let key = read_key(&key_path).map_err(|e| ConfigError::new(at("key"), e))?;
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            ConfigError::new(
                at("key"),
                format!(
                    "{}: does not fit {}: {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            )
        })?;
        let names = if c.names.is_empty() {
            dns_names(&certified.cert[0]).map_err(|e| {
                ConfigError::new(at("cert"), format!("{}: {e}", cert_path.display()))
            })?
        } else {
            c.names
                .iter()
                .map(|n| HostPattern::parse(n))
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError::new(at("names"), e))?
        };
        loaded.push((Arc::new(certified), names, c.default));
    }
    let table = loaded
        .iter()
        .find(|(_, _, is_default)| *is_default)
        .or(loaded.first())
        .map(|(key, _, _)| {
            let mut table = SniTable::new(Arc::clone(key));
            for (key, names, _) in &loaded {
                for name in names {
                    table.insert(name, Arc::clone(key));
                }
            }
            table
        });
    Ok(CertResolver {
        table,
        managed: Arc::clone(managed),
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a valid PEM certificate file: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block in this PEM file",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{}: no usable private key in this PEM file: {e}",
            path.display()
        )
    })
}

/// The DNS names a certificate is valid for, as SNI patterns.
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<HostPattern>, String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("cannot read the certificate: {e}"))?;
    Ok(parsed
        .valid_dns_names()
        .filter_map(|n| HostPattern::parse(n).ok())
        .collect())
}

/// The DNS names of a certificate file's leaf and its SHA-256 (hex).
pub fn certificate_info(path: &Path) -> Result<(Vec<String>, String), String> {
    let chain = read_chain(path)?;
    let names = dns_names(&chain[0])?
        .into_iter()
        .map(|p| match p {
            HostPattern::Exact(n) => n,
            HostPattern::Wildcard(n) => format!("*.{n}"),
        })
        .collect();
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &chain[0]);
    Ok((names, crate::admin::token::hex(sha.as_ref())))
}

/// When the leaf of a certificate file expires (seconds since the epoch).
pub fn not_after(path: &Path) -> Option<i64> {
    let chain = read_chain(path).ok()?;
    validity::not_after(&chain[0])
}

/// Where certificates uploaded through the admin API are kept.
fn uploads(data: &Path) -> std::path::PathBuf {
    data.join("certs")
}

/// Writes an uploaded certificate and key under `<data>/certs/`, named after
/// the certificate's name and a hash of their content (so a new upload never
/// overwrites files the running config uses). Returns their paths.
pub fn store_uploaded(
    data: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    h.update(cert_pem.as_bytes());
    h.update(key_pem.as_bytes());
    let id = &crate::admin::token::hex(h.finish().as_ref())[..16];
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = uploads(data);
    let cert = dir.join(format!("{safe}-{id}.crt"));
    let key = dir.join(format!("{safe}-{id}.key"));
    crate::fsutil::write_atomic(&key, key_pem.as_bytes(), 0o600)?;
    crate::fsutil::write_atomic(&cert, cert_pem.as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// Removes uploaded files the config no longer names.
pub fn prune_uploaded(data: &Path, config: &config::Config) {
    let Ok(dir) = std::fs::read_dir(uploads(data)) else {
        return;
    };
    let used: std::collections::HashSet<&Path> = config
        .certificates
        .iter()
        .flat_map(|c| [c.cert.as_path(), c.key.as_path()])
        .collect();
    for entry in dir.flatten() {
        let path = entry.path();
        if !used.contains(path.as_path()) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The rustls configuration of the admin API: one certificate, HTTP/1.1.
pub fn admin_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = read_chain(cert)?;
    let key = read_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The rustls configuration every HTTPS listener uses; without `tickets`,
/// no session tickets are issued and every handshake is full.
pub fn server_config(
    certs: Arc<CertResolver>,
    tickets: Option<Arc<TicketKeys>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    match tickets {
        Some(tickets) => config.ticketer = tickets,
        None => config.send_tls13_tickets = 0,
    }
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}
