//! What of an appliance's state its peers share, as catalog values: the
//! shared part of the config (one document), and the host map in 256
//! shards (one blob each). Pure: no sockets; the config's certificate files
//! are read and written here.
//!
//! **Shared** (the same on every peer): `certificates` (with their keys,
//! carried inline), `tls`, `pools`, `routes`, `client`, and the host map.
//! **Local** (each appliance its own): `listeners`, `admin`, `dns`,
//! `network`, `replication`, `failover`. A replicated config is this appliance's local
//! part with the peer's shared part: [`merge`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Certificate, ClientSettings, Config, Pool, Route, TlsSettings};
use crate::hostmap::{Change, Entry, HostMap};

/// The catalog key of the shared config.
pub const CONFIG_KEY: &str = "config";
/// The catalog key of the session-ticket secret.
pub const TICKETS_KEY: &str = "tickets";
/// The prefix of a site's catalog key.
pub const SITE_PREFIX: &str = "site/";
/// The prefix of a host-map shard's catalog key.
pub const SHARD_PREFIX: &str = "hostmap/";

/// The shared part of a config, certificates inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    pub certificates: Vec<SharedCertificate>,
    pub tls: TlsSettings,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
    pub client: ClientSettings,
}

/// A certificate with its chain and key as PEM text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub cert_pem: String,
    pub key_pem: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// The shared part of `config`, reading its certificate files (relative
/// paths from `base`).
pub fn extract(config: &Config, base: &Path) -> Result<SharedConfig, String> {
    let mut certificates = Vec::with_capacity(config.certificates.len());
    for (i, c) in config.certificates.iter().enumerate() {
        let read = |p: &Path, what: &str| {
            std::fs::read_to_string(base.join(p))
                .map_err(|e| format!("certificates[{i}].{what}: {}: {e}", p.display()))
        };
        certificates.push(SharedCertificate {
            name: c.name.clone(),
            cert_pem: read(&c.cert, "cert")?,
            key_pem: read(&c.key, "key")?,
            names: c.names.clone(),
            default: c.default,
        });
    }
    Ok(SharedConfig {
        certificates,
        tls: config.tls.clone(),
        pools: config.pools.clone(),
        routes: config.routes.clone(),
        client: config.client.clone(),
    })
}

impl SharedConfig {
    /// The catalog value's text: the same shared config, the same text.
    pub fn to_doc(&self) -> String {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_doc(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("the shared config does not parse: {e}"))
    }
}

/// `local`'s local part with `shared`'s shared part; the certificates are
/// written to `data` (as uploaded ones are) for the config to name.
pub fn merge(local: &Config, shared: SharedConfig, data: &Path) -> std::io::Result<Config> {
    let mut certificates = Vec::with_capacity(shared.certificates.len());
    for (i, c) in shared.certificates.into_iter().enumerate() {
        let label = c.name.clone().unwrap_or_else(|| format!("replicated-{i}"));
        let (cert, key) = crate::tls::store_uploaded(data, &label, &c.cert_pem, &c.key_pem)?;
        certificates.push(Certificate {
            name: c.name,
            cert,
            key,
            names: c.names,
            default: c.default,
        });
    }
    Ok(Config {
        certificates,
        tls: shared.tls,
        pools: shared.pools,
        routes: shared.routes,
        client: shared.client,
        ..local.clone()
    })
}

// ------------------------------------------------------------ host map

/// The shard a host is in.
pub fn shard_of(host: &str) -> u8 {
    blake3::hash(host.as_bytes()).as_bytes()[0]
}

pub fn shard_key(shard: u8) -> String {
    format!("{SHARD_PREFIX}{shard:02x}")
}

/// The shard a catalog key names.
pub fn shard_of_key(key: &str) -> Option<u8> {
    let hex = key.strip_prefix(SHARD_PREFIX)?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The NDJSON of each shard in `which` (sorted by host; an empty shard is
/// empty), in one pass over the map.
pub fn shards(map: &HostMap, which: &BTreeSet<u8>) -> BTreeMap<u8, Vec<u8>> {
    let mut entries: BTreeMap<u8, Vec<(&str, &str)>> =
        which.iter().map(|&s| (s, Vec::new())).collect();
    for (host, pool) in map.iter() {
        if let Some(list) = entries.get_mut(&shard_of(host)) {
            list.push((host, pool));
        }
    }
    entries
        .into_iter()
        .map(|(shard, mut list)| {
            list.sort_unstable();
            let mut out = Vec::with_capacity(list.len() * 48);
            for (host, pool) in list {
                crate::hostmap::write_entry(&mut out, host, pool);
            }
            (shard, out)
        })
        .collect()
}

/// A shard's entries, checked: NDJSON, hosts in this shard, each once.
pub fn parse_shard(shard: u8, bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let e: Entry =
            serde_json::from_slice(line).map_err(|e| format!("shard line {}: {e}", i + 1))?;
        if shard_of(&e.host) != shard {
            return Err(format!(
                "shard line {}: {} is not in this shard",
                i + 1,
                e.host
            ));
        }
        if out.last().is_some_and(|last| last.host >= e.host) {
            return Err(format!("shard line {}: not sorted, or twice", i + 1));
        }
        out.push(e);
    }
    Ok(out)
}

/// The changes that make `map`'s part of a shard `new`, given what the
/// shard held here before (`old`).
pub fn shard_changes(map: &HostMap, old: &[Entry], new: &[Entry]) -> Vec<Change> {
    let keep: BTreeSet<&str> = new.iter().map(|e| e.host.as_str()).collect();
    let mut changes: Vec<Change> = old
        .iter()
        .filter(|e| !keep.contains(e.host.as_str()) && map.get(&e.host).is_some())
        .map(|e| Change::Delete {
            host: e.host.clone(),
        })
        .collect();
    changes.extend(
        new.iter()
            .filter(|e| map.get(&e.host) != Some(e.pool.as_str()))
            .map(|e| Change::Set {
                host: e.host.clone(),
                pool: e.pool.clone(),
            }),
    );
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merged_config_keeps_local_settings_and_takes_the_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = crate::tls::self_signed::ensure(dir.path(), "a", &[]).unwrap();
        let mut a = crate::config::embedded_default(&cert, &key);
        a.routes[0].path_prefix = "/shop".into();
        a.tls.handshake_timeout_ms = 1234;
        let shared = extract(&a, Path::new("/")).unwrap();
        assert!(shared.certificates[0].key_pem.contains("PRIVATE KEY"));
        // Through the text and back, on another appliance.
        let text = shared.to_doc();
        let other = tempfile::tempdir().unwrap();
        let mut b = crate::config::embedded_default(&cert, &key);
        b.admin.address = "127.0.0.1:19443".parse().unwrap();
        b.listeners[0].address = "127.0.0.1:18443".parse().unwrap();
        let merged = merge(&b, SharedConfig::from_doc(&text).unwrap(), other.path()).unwrap();
        assert_eq!(merged.admin, b.admin, "local");
        assert_eq!(merged.listeners, b.listeners, "local");
        assert_eq!(merged.routes, a.routes, "shared");
        assert_eq!(merged.tls.handshake_timeout_ms, 1234);
        assert!(merged.certificates[0].cert.starts_with(other.path()));
        // The merged config's shared part is the very same text: applying a
        // peer's config makes no change of its own to send back.
        assert_eq!(extract(&merged, Path::new("/")).unwrap().to_doc(), text);
    }

    #[test]
    fn shards_split_the_map_and_changes_rebuild_it() {
        let mut map = HostMap::default();
        for i in 0..2_000 {
            map.insert(
                &format!("shop{i}.example"),
                if i % 2 == 0 { "a" } else { "b" },
            )
            .unwrap();
        }
        let all: BTreeSet<u8> = (0..=255).collect();
        let parts = shards(&map, &all);
        assert_eq!(parts.len(), 256);
        let mut copy = HostMap::default();
        for (shard, bytes) in &parts {
            let entries = parse_shard(*shard, bytes).unwrap();
            for c in shard_changes(&copy, &[], &entries) {
                copy.apply(&c).unwrap();
            }
        }
        assert_eq!(copy, map);
        // One shard changes: an entry moved, one removed, one added.
        let s = shard_of("shop0.example");
        let old = parse_shard(s, &parts[&s]).unwrap();
        let mut changed = map.clone();
        changed.insert("shop0.example", "b").unwrap();
        changed.remove(&old.last().unwrap().host.clone());
        let mut extra = 5_000;
        while shard_of(&format!("new{extra}.example")) != s {
            extra += 1;
        }
        changed.insert(&format!("new{extra}.example"), "a").unwrap();
        let new = shards(&changed, &BTreeSet::from([s]));
        let new = parse_shard(s, &new[&s]).unwrap();
        let changes = shard_changes(&copy, &old, &new);
        assert_eq!(changes.len(), 3, "{changes:?}");
        for c in &changes {
            copy.apply(c).unwrap();
        }
        assert_eq!(copy, changed);
    }

    #[test]
    fn a_shard_from_a_peer_is_checked() {
        let line = |h: &str| format!("{{\"host\":\"{h}\",\"pool\":\"p\"}}\n");
        let s = shard_of("a.example");
        assert!(parse_shard(s, line("a.example").as_bytes()).is_ok());
        assert!(parse_shard(s.wrapping_add(1), line("a.example").as_bytes()).is_err());
        let twice = line("a.example").repeat(2);
        assert!(parse_shard(s, twice.as_bytes()).is_err());
        assert!(parse_shard(s, b"{\"host\": 1}\n").is_err());
        assert_eq!(shard_of_key(&shard_key(0xab)), Some(0xab));
        assert_eq!(shard_of_key("hostmap/zz"), None);
    }
}
