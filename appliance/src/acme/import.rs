//! Certificates written into a data directory while no edgebox runs on it,
//! as if obtained there: into the shards and the catalog, merged with what
//! the directory holds (a name keeps the certificate that expires last).
//! The scale bench seeds 100 000 certificates with it.

use std::collections::BTreeMap;
use std::path::Path;

use edgebox_storage::replication::Value;

use super::shard::{self, Entry};

/// Writes `certs` (name, certificate) into `data`; returns how many shards
/// it wrote.
pub fn import(data: &Path, certs: Vec<(String, Entry)>) -> Result<usize, String> {
    let content =
        edgebox_storage::Store::open(&data.join("store")).map_err(|e| format!("the store: {e}"))?;
    let config = crate::config::Config::parse(
        br#"{"listeners": [{"name": "h", "address": "127.0.0.1:0", "protocol": "http"}]}"#,
    )
    .map_err(|e| e.to_string())?;
    let tickets = crate::tls::tickets::TicketKeys::new(3600).map_err(|e| e.to_string())?;
    let mut replica = crate::replication::Replica::open(crate::replication::replica::Start {
        data,
        content: &content,
        config: &config,
        tickets: &tickets,
        limits: Default::default(),
    })
    .map_err(|e| e.to_string())?;
    let mut by_shard: BTreeMap<u8, BTreeMap<String, Entry>> = BTreeMap::new();
    for (name, entry) in certs {
        crate::config::acme::check_dns_name(&name).map_err(|e| format!("{name}: {e}"))?;
        by_shard
            .entry(shard::shard_of(&name))
            .or_default()
            .insert(name, entry);
    }
    let later = |a: &Entry, b: &Entry| {
        let na = |e: &Entry| crate::tls::validity::not_after(&e.leaf).unwrap_or(i64::MIN);
        na(a) >= na(b)
    };
    for (s, new) in &by_shard {
        let mut merged = match replica
            .node
            .catalog
            .get(&shard::key(*s))
            .map(|i| i.value.clone())
        {
            Some(Value::Blob { hash }) => {
                let bytes = content
                    .blobs()
                    .read_verified(&hash)
                    .map_err(|e| e.to_string())?;
                shard::decode(*s, &bytes)?
            }
            _ => BTreeMap::new(),
        };
        for (name, entry) in new {
            if merged.get(name).is_none_or(|held| later(entry, held)) {
                merged.insert(name.clone(), entry.clone());
            }
        }
        let bytes = shard::encode(merged.iter().map(|(n, e)| (n.as_str(), e)));
        let hash = content
            .blobs()
            .put(&bytes)
            .map_err(|e| format!("the store: {e}"))?;
        replica.local(&shard::key(*s), Value::Blob { hash });
    }
    replica.persist().map_err(|e| e.to_string())?;
    Ok(by_shard.len())
}
