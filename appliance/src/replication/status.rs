//! What replication looks like to an operator: `GET /v1/replication`,
//! `edgebox ctl peers` and the `edgebox_replication_*` metrics, all from
//! one [`View`].

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::replica::{now_ms, Counters, PeerStatus};
use crate::control::Control;
use crate::metrics::{escape, family};

#[derive(Debug, Serialize)]
pub struct View {
    /// This appliance's fingerprint (what its peers pin).
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    pub sync_config: bool,
    pub catalog: CatalogView,
    /// Changes from peers waiting for their blobs.
    pub pending: Vec<PendingView>,
    /// Blobs lost here, being fetched again.
    pub repairs: usize,
    pub peers: Vec<PeerView>,
    pub counters: Counters,
}

#[derive(Debug, Serialize)]
pub struct CatalogView {
    pub items: usize,
    pub sites: usize,
    /// Equal on two appliances when they hold the same.
    pub root: String,
}

#[derive(Debug, Serialize)]
pub struct PendingView {
    pub key: String,
    pub generation: u64,
    pub waiting_ms: u64,
    /// The peers it can come from.
    pub from: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PeerView {
    #[serde(flatten)]
    pub status: PeerStatus,
    /// How long the oldest change from this peer has waited here (0: none).
    pub lag_ms: u64,
    /// Changes from it waiting for their blobs.
    pub pending: usize,
}

/// One site on one peer, as far as the last finished sync with it showed.
#[derive(Debug, Serialize)]
pub struct SiteOnPeer {
    pub peer: String,
    /// `same` (the generation served here), `behind`, `ahead`, `missing`
    /// (neither the site nor its deletion there), or `unknown` (no
    /// finished sync with the peer yet).
    pub state: &'static str,
    /// The generation of the site's last change there (a publish, or a
    /// deletion), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// Where each peer stands with `site`.
pub fn site_on_peers(c: &Control, site: &str) -> Vec<SiteOnPeer> {
    use edgebox_storage::replication::Seen;
    let r = &c.replica;
    let key = format!("{}{site}", super::shared::SITE_PREFIX);
    let ours = r.node.catalog.get(&key).map(|i| i.version);
    r.peers
        .iter()
        .enumerate()
        .filter_map(|(id, p)| {
            let peer = p.as_ref()?.name.clone();
            let (state, generation) = match r.node.seen(id, &key) {
                Seen::Unknown => ("unknown", None),
                Seen::Lacks => ("missing", None),
                Seen::Has(v) => {
                    let state = match ours.map(|o| v.cmp(&o)) {
                        Some(std::cmp::Ordering::Equal) => "same",
                        Some(std::cmp::Ordering::Less) => "behind",
                        Some(std::cmp::Ordering::Greater) | None => "ahead",
                    };
                    (state, Some(v.lamport))
                }
            };
            Some(SiteOnPeer {
                peer,
                state,
                generation,
            })
        })
        .collect()
}

pub fn view(c: &Control) -> View {
    let now = now_ms();
    let r = &c.replica;
    let name = |id: usize| {
        r.peers
            .get(id)
            .and_then(|p| p.as_ref())
            .map_or_else(|| format!("#{id}"), |p| p.name.clone())
    };
    let mut pending = Vec::new();
    let mut per_peer: BTreeMap<usize, (u64, usize)> = BTreeMap::new();
    for (item, sources) in r.node.pending_items() {
        let waiting_ms = r
            .adopted_ms
            .get(&item.key)
            .map_or(0, |t| now.saturating_sub(*t));
        for s in sources {
            let e = per_peer.entry(*s).or_default();
            e.0 = e.0.max(waiting_ms);
            e.1 += 1;
        }
        pending.push(PendingView {
            key: item.key.clone(),
            generation: item.version.lamport,
            waiting_ms,
            from: sources.iter().map(|&s| name(s)).collect(),
        });
    }
    let peers = r
        .peers
        .iter()
        .enumerate()
        .filter_map(|(id, p)| {
            let (lag_ms, pending) = per_peer.get(&id).copied().unwrap_or_default();
            Some(PeerView {
                status: p.clone()?,
                lag_ms,
                pending,
            })
        })
        .collect();
    let catalog = &r.node.catalog;
    View {
        fingerprint: r.fingerprint.clone(),
        listen: c.config.replication.listen,
        sync_config: c.config.replication.sync_config,
        catalog: CatalogView {
            items: catalog.len(),
            sites: catalog
                .items()
                .filter(|i| i.key.starts_with(super::shared::SITE_PREFIX))
                .count(),
            root: catalog.root().to_string(),
        },
        pending,
        repairs: r.node.repairs(),
        peers,
        counters: r.counters.clone(),
    }
}

/// The `edgebox_replication_*` families.
pub fn render_prometheus(v: &View, o: &mut String) {
    let peer_gauge =
        |o: &mut String, name: &str, kind: &str, help: &str, get: &dyn Fn(&PeerView) -> String| {
            family(o, name, kind, help);
            for p in &v.peers {
                let _ = writeln!(
                    o,
                    "{name}{{peer=\"{}\"}} {}",
                    escape(&p.status.name),
                    get(p)
                );
            }
        };
    peer_gauge(
        o,
        "edgebox_replication_peer_up",
        "gauge",
        "1 while the connection to the peer is up.",
        &|p| u8::from(p.status.state == "connected").to_string(),
    );
    peer_gauge(
        o,
        "edgebox_replication_peer_lag_seconds",
        "gauge",
        "How long the oldest change from the peer has waited here for its blobs (0: none waits).",
        &|p| format!("{:.3}", p.lag_ms as f64 / 1000.0),
    );
    peer_gauge(
        o,
        "edgebox_replication_peer_last_sync_timestamp_seconds",
        "gauge",
        "When a sync with the peer last completed (Unix time; 0: never).",
        &|p| format!("{:.3}", p.status.last_sync_ms.unwrap_or(0) as f64 / 1000.0),
    );
    peer_gauge(
        o,
        "edgebox_replication_received_bytes_total",
        "counter",
        "Bytes received from the peer (messages and blobs).",
        &|p| p.status.bytes_received.to_string(),
    );
    peer_gauge(
        o,
        "edgebox_replication_sent_bytes_total",
        "counter",
        "Bytes sent to the peer (messages and blobs).",
        &|p| p.status.bytes_sent.to_string(),
    );
    peer_gauge(
        o,
        "edgebox_replication_blobs_received_total",
        "counter",
        "Blobs fetched from the peer, verified.",
        &|p| p.status.blobs_received.to_string(),
    );
    family(
        o,
        "edgebox_replication_errors_total",
        "counter",
        "Failures talking to a peer, by kind (connect, refused, timeout, protocol, corrupt, disk).",
    );
    for p in &v.peers {
        for (kind, n) in &p.status.errors {
            let _ = writeln!(
                o,
                "edgebox_replication_errors_total{{peer=\"{}\",kind=\"{kind}\"}} {n}",
                escape(&p.status.name)
            );
        }
    }
    family(
        o,
        "edgebox_replication_site_lag_seconds",
        "gauge",
        "How long a site's newer generation has waited here for its blobs; only sites that wait.",
    );
    for p in v
        .pending
        .iter()
        .filter(|p| p.key.starts_with(super::shared::SITE_PREFIX))
    {
        let site = &p.key[super::shared::SITE_PREFIX.len()..];
        let _ = writeln!(
            o,
            "edgebox_replication_site_lag_seconds{{site=\"{}\"}} {:.3}",
            escape(site),
            p.waiting_ms as f64 / 1000.0
        );
    }
    family(
        o,
        "edgebox_replication_pending_items",
        "gauge",
        "Changes from peers waiting for their blobs.",
    );
    let _ = writeln!(o, "edgebox_replication_pending_items {}", v.pending.len());
    family(
        o,
        "edgebox_replication_repairs_pending",
        "gauge",
        "Blobs lost here (found damaged), being fetched again.",
    );
    let _ = writeln!(o, "edgebox_replication_repairs_pending {}", v.repairs);
    family(
        o,
        "edgebox_replication_applied_total",
        "counter",
        "Changes from peers applied here, by kind (site, config, hostmap, tickets).",
    );
    for (kind, n) in &v.counters.applied {
        let _ = writeln!(
            o,
            "edgebox_replication_applied_total{{kind=\"{kind}\"}} {n}"
        );
    }
    family(o, "edgebox_replication_conflicts_total", "counter", "Concurrent changes of one key resolved here (the losing one dropped, the same on every appliance).");
    let _ = writeln!(
        o,
        "edgebox_replication_conflicts_total {}",
        v.counters.conflicts
    );
    family(o, "edgebox_replication_apply_failures_total", "counter", "Changes from peers that could not be applied here (this appliance kept its own; tried again later).");
    let _ = writeln!(
        o,
        "edgebox_replication_apply_failures_total {}",
        v.counters.apply_failures
    );
}
