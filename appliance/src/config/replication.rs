//! The `replication` section: this appliance's address for its peers, the
//! peers it replicates with (pinned by fingerprint), and the limits.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{check_name, within, ConfigError};

/// Replication with other appliances (`docs/replication.md`). Local to each
/// appliance: it is not replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSettings {
    /// UDP `IP:PORT` peers connect to (QUIC). Needed once there are peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The appliances to replicate with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerSettings>,
    /// Replicate the shared config (pools, routes, certificates, the host
    /// map, TLS and client settings) and the session-ticket keys, not only
    /// sites.
    pub sync_config: bool,
    /// Bytes per second at most, to and from each peer (blobs and
    /// messages).
    pub max_bytes_per_s: u64,
    /// Blobs fetched from one peer at a time at most.
    pub max_streams_per_peer: u32,
    /// How often each peer's catalog is compared with this one's even
    /// without news (anti-entropy).
    pub sync_interval_ms: u64,
    /// A request to a peer (or a blob that stops moving) fails after this
    /// long; a peer silent for this long is disconnected and retried.
    pub timeout_ms: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            listen: None,
            peers: Vec::new(),
            sync_config: true,
            max_bytes_per_s: 50_000_000,
            max_streams_per_peer: 4,
            sync_interval_ms: 5_000,
            timeout_ms: 5_000,
        }
    }
}

/// A peer appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSettings {
    /// Its UDP `HOST:PORT` (its `replication.listen`).
    pub address: String,
    /// What `edgebox identity` prints on it: the SHA-256 of its public key,
    /// 64 lowercase hex digits. Only a peer with exactly this key is
    /// accepted, in both directions.
    pub fingerprint: String,
    /// A name for logs and metrics (default: the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl PeerSettings {
    /// The peer as logs and metrics name it.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.address)
    }
}

/// Whether `s` is a fingerprint as `edgebox identity` prints them.
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ReplicationSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.peers.is_empty() && self.listen.is_none() {
            return Err(ConfigError::new(
                "replication.listen",
                "needed when there are peers (they connect to it)",
            ));
        }
        if self.listen.is_some_and(|a| a.port() == 0) {
            return Err(ConfigError::new(
                "replication.listen",
                "must name a port (peers pin it in their config)",
            ));
        }
        within(
            "replication.max_bytes_per_s",
            self.max_bytes_per_s,
            65_536,
            100_000_000_000,
        )?;
        within(
            "replication.max_streams_per_peer",
            u64::from(self.max_streams_per_peer),
            1,
            64,
        )?;
        within(
            "replication.sync_interval_ms",
            self.sync_interval_ms,
            100,
            super::MAX_TIMEOUT_MS,
        )?;
        within("replication.timeout_ms", self.timeout_ms, 100, 600_000)?;
        let mut fingerprints = HashSet::new();
        let mut names = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let at = |field: &str| format!("replication.peers[{i}].{field}");
            if !is_fingerprint(&p.fingerprint) {
                return Err(ConfigError::new(
                    at("fingerprint"),
                    "must be 64 lowercase hex digits, as `edgebox identity` prints it",
                ));
            }
            if !fingerprints.insert(&p.fingerprint) {
                return Err(ConfigError::new(at("fingerprint"), "another peer has it"));
            }
            let port = p
                .address
                .rsplit_once(':')
                .and_then(|(host, port)| (!host.is_empty()).then_some(port))
                .and_then(|port| port.parse::<u16>().ok());
            if port.is_none_or(|p| p == 0) {
                return Err(ConfigError::new(
                    at("address"),
                    "must be HOST:PORT (IPv6 as [ADDR]:PORT)",
                ));
            }
            if let Some(name) = &p.name {
                check_name(&at("name"), name)?;
            }
            if !names.insert(p.label()) {
                return Err(ConfigError::new(at("name"), "another peer has it"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(address: &str, fingerprint: &str) -> PeerSettings {
        PeerSettings {
            address: address.into(),
            fingerprint: fingerprint.into(),
            name: None,
        }
    }

    #[test]
    fn each_wrong_field_is_named() {
        let fp = "ab".repeat(32);
        let ok = ReplicationSettings {
            listen: Some("127.0.0.1:7443".parse().unwrap()),
            peers: vec![peer("b.example:7443", &fp)],
            ..Default::default()
        };
        ok.validate().unwrap();
        type Edit = Box<dyn Fn(&mut ReplicationSettings)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.listen = None), "replication.listen"),
            (
                Box::new(|s| s.peers[0].fingerprint = "AB".repeat(32)),
                "replication.peers[0].fingerprint",
            ),
            (
                Box::new(|s| s.peers[0].fingerprint.pop().map(|_| ()).unwrap_or(())),
                "replication.peers[0].fingerprint",
            ),
            (
                Box::new(|s| s.peers[0].address = "b.example".into()),
                "replication.peers[0].address",
            ),
            (
                Box::new(|s| s.peers[0].address = ":7443".into()),
                "replication.peers[0].address",
            ),
            (
                Box::new(|s| {
                    let again = s.peers[0].clone();
                    s.peers.push(again);
                }),
                "replication.peers[1].fingerprint",
            ),
            (
                Box::new(|s| s.max_streams_per_peer = 0),
                "replication.max_streams_per_peer",
            ),
        ];
        for (edit, field) in cases {
            let mut s = ok.clone();
            edit(&mut s);
            assert_eq!(s.validate().unwrap_err().path, field);
        }
        let mut v6 = ok.clone();
        v6.peers[0].address = "[::1]:7443".into();
        v6.validate().unwrap();
    }
}
