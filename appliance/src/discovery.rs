//! Backend names: resolving `host:port` entries to the addresses behind
//! them.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::{Config, ConfigError};
use crate::snapshot::Upstreams;

/// Resolves the backend names of `config` that `upstreams` has no addresses
/// for yet.
pub fn resolve_new(
    config: &Config,
    upstreams: &Upstreams,
) -> Result<HashMap<String, Vec<SocketAddr>>, ConfigError> {
    let mut out = HashMap::new();
    for (i, p) in config.pools.iter().enumerate() {
        for (j, b) in p.backends.iter().enumerate() {
            if upstreams.addresses(&b.address).is_some() || out.contains_key(&b.address) {
                continue;
            }
            let path = || format!("pools[{i}].backends[{j}].address");
            let addrs: Vec<SocketAddr> = b
                .address
                .to_socket_addrs()
                .map_err(|e| ConfigError::new(path(), format!("cannot resolve: {e}")))?
                .collect();
            if addrs.is_empty() {
                return Err(ConfigError::new(path(), "resolves to no address"));
            }
            out.insert(b.address.clone(), addrs);
        }
    }
    Ok(out)
}
