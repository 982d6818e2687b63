//! This appliance's replication state as the control plane keeps it: the
//! protocol's [`Node`] (the catalog and what is on its way), the catalog's
//! persistence, what to announce, and what peers and sites look like for
//! the admin API and the metrics. Owned by [`crate::control::Control`], so
//! that every change, local or replicated, passes one place.
//!
//! ```text
//! <data>/replication/catalog.json   the catalog's items other than sites (0600: it
//!                                   holds the ticket secret and certificate keys)
//! <data>/replication/identity.key   this appliance's key (identity.rs)
//! ```
//!
//! Sites are not in `catalog.json`: a site's item is its ref (or
//! tombstone) in the content store, whose generation *is* the item's
//! Lamport clock, so the two cannot disagree after a crash. The other
//! items are written after their change is made durable; a crash between
//! the two is found at the next start (the config or host map differs from
//! its item) and made a local change then.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgebox_storage::replication::{BlobIndex, Item, Limits, Node, Value, Version};
use edgebox_storage::Hash;
use serde::{Deserialize, Serialize};

use super::shared::{self, CONFIG_KEY, SHARD_PREFIX, SITE_PREFIX, TICKETS_KEY};
use crate::config::Config;
use crate::hostmap::HostMap;
use crate::tls::tickets::TicketKeys;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    items: Vec<Item>,
}

/// A peer as the admin API and the metrics show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    pub fingerprint: String,
    /// `connecting`, `connected`, `unreachable` or `refused`.
    pub state: &'static str,
    /// When the state last changed (ms since the Unix epoch).
    pub since_ms: u64,
    /// When a sync with it last completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub blobs_received: u64,
    /// Errors by kind: `connect`, `refused`, `timeout`, `protocol`,
    /// `corrupt`, `apply`.
    pub errors: BTreeMap<&'static str, u64>,
}

/// Counters of what replication did here.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Items applied from peers, by kind (`site`, `config`, `hostmap`,
    /// `tickets`).
    pub applied: BTreeMap<&'static str, u64>,
    /// Concurrent changes of one key resolved (the loser dropped).
    pub conflicts: u64,
    /// Items that could not be applied here (they stay as they were).
    pub apply_failures: u64,
}

/// The kind of a catalog key, for metrics and checks.
pub fn kind_of(key: &str) -> Option<&'static str> {
    if let Some(site) = key.strip_prefix(SITE_PREFIX) {
        return edgebox_storage::sites::check_site_name(site)
            .is_ok()
            .then_some("site");
    }
    if shared::shard_of_key(key).is_some() {
        return Some("hostmap");
    }
    if crate::acme::shard::of_key(key).is_some() {
        return Some("certs");
    }
    if key.starts_with(crate::acme::ACCOUNT_PREFIX) {
        return Some("acme-account");
    }
    match key {
        CONFIG_KEY => Some("config"),
        TICKETS_KEY => Some("tickets"),
        _ => None,
    }
}

/// Whether an item from a peer is one this appliance understands: a known
/// key with a value of its kind.
pub fn acceptable(item: &Item) -> bool {
    matches!(
        (kind_of(&item.key), &item.value),
        (Some("site"), Value::Site { .. } | Value::Deleted)
            | (Some("config"), Value::Doc { .. })
            | (Some("hostmap"), Value::Blob { .. } | Value::Deleted)
            | (Some("tickets"), Value::Secret { .. })
            | (Some("certs"), Value::Blob { .. } | Value::Deleted)
            | (Some("acme-account"), Value::Secret { .. })
    )
}

/// The keys replicated when the shared config is not: sites only.
pub fn sites_only(key: &str) -> bool {
    key.starts_with(SITE_PREFIX)
}

/// The replication state; see the module documentation.
#[derive(Debug)]
pub struct Replica {
    pub node: Node,
    /// This appliance's identity's fingerprint.
    pub fingerprint: String,
    dir: PathBuf,
    /// Host-map shards changed here since their items were made.
    pub dirty: BTreeSet<u8>,
    /// Local changes not yet pushed to peers.
    pub announce: Vec<Item>,
    /// Wakes the replicator (something to announce, settings changed).
    pub changed: Arc<tokio::sync::Notify>,
    /// A planned failover handover: the connected peers are asked to take
    /// this virtual router over (`Notice::TakeOver`).
    pub take_over: Option<u8>,
    /// Asks whether a peer answers over the replication link now (the
    /// failover tells a dead peer from a lost VRRP path by it): each is
    /// answered once every connected peer answered or failed to in time.
    pub probes: Vec<tokio::sync::oneshot::Sender<bool>>,
    /// The peers, by the protocol's peer number.
    pub peers: Vec<Option<PeerStatus>>,
    /// When each pending item was first adopted (for lag).
    pub adopted_ms: HashMap<String, u64>,
    pub counters: Counters,
    /// A new UDP socket for `replication.listen`, bound by a config change.
    pub new_socket: Option<std::net::UdpSocket>,
    /// Items that failed to apply, not retried before the time given.
    pub failed: HashMap<String, (Version, u64)>,
    manifests: std::cell::RefCell<HashMap<Hash, Arc<Vec<Hash>>>>,
}

/// What the protocol needs to know of the content store.
#[derive(Debug)]
pub struct StoreIndex<'a> {
    store: &'a edgebox_storage::Store,
    manifests: &'a std::cell::RefCell<HashMap<Hash, Arc<Vec<Hash>>>>,
}

impl BlobIndex for StoreIndex<'_> {
    fn has(&self, hash: &Hash) -> bool {
        self.store.blobs().contains(hash)
    }

    fn partial(&self, hash: &Hash) -> u64 {
        self.store.blobs().partial_len(hash)
    }

    fn manifest_blobs(&self, manifest: &Hash) -> Option<Vec<Hash>> {
        if let Some(known) = self.manifests.borrow().get(manifest) {
            return Some(known.to_vec());
        }
        let m = self.store.manifest(manifest).ok()?;
        let blobs: BTreeSet<Hash> = m.blobs().collect();
        let blobs: Vec<Hash> = blobs.into_iter().collect();
        let mut cache = self.manifests.borrow_mut();
        if cache.len() > 4_096 {
            cache.clear();
        }
        cache.insert(*manifest, Arc::new(blobs.clone()));
        Some(blobs)
    }
}

/// Why the replication state could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ReplicaError {
    pub path: PathBuf,
    pub reason: String,
}

/// What the catalog starts from.
#[derive(Debug)]
pub struct Start<'a> {
    pub data: &'a Path,
    pub content: &'a edgebox_storage::Store,
    pub config: &'a Config,
    pub tickets: &'a TicketKeys,
    pub limits: Limits,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Replica {
    fn catalog_path(dir: &Path) -> PathBuf {
        dir.join("catalog.json")
    }

    /// Loads the catalog and brings it in line with what is served: the
    /// sites' refs, the config, the ticket secret. (The host map's shards
    /// are left to [`Replica::flush_shards`].)
    pub fn open(start: Start<'_>) -> Result<Self, ReplicaError> {
        let dir = start.data.join("replication");
        let path = Self::catalog_path(&dir);
        let err = |reason: String| ReplicaError {
            path: path.clone(),
            reason,
        };
        let file: CatalogFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogFile { items: Vec::new() },
            Err(e) => return Err(err(e.to_string())),
        };
        let mut r = Self {
            node: Node::new(Default::default(), start.limits),
            fingerprint: String::new(),
            dir,
            dirty: BTreeSet::new(),
            announce: Vec::new(),
            changed: Arc::default(),
            take_over: None,
            probes: Vec::new(),
            peers: Vec::new(),
            adopted_ms: HashMap::new(),
            counters: Counters::default(),
            new_socket: None,
            failed: HashMap::new(),
            manifests: Default::default(),
        };
        for item in file.items {
            if acceptable(&item) && !item.key.starts_with(SITE_PREFIX) {
                r.node.catalog.insert(item);
            }
        }
        let content_err = |e: edgebox_storage::SiteError| err(format!("the content store: {e}"));
        for (site, sref) in start.content.sites().map_err(content_err)? {
            r.seed(
                format!("{SITE_PREFIX}{site}"),
                Value::Site {
                    manifest: sref.manifest,
                },
                sref.generation,
            );
        }
        for (site, t) in start.content.tombstones().map_err(content_err)? {
            r.seed(format!("{SITE_PREFIX}{site}"), Value::Deleted, t.generation);
        }
        r.reconcile_config(start.config).map_err(err)?;
        // Every shard is compared with its item once there are peers (a
        // crash between the host map's write and its item's, or a host map
        // from before there were peers).
        r.dirty = (0..=255).collect();
        match r.node.catalog.get(TICKETS_KEY).map(|i| i.value.clone()) {
            Some(Value::Secret { hex }) => {
                let secret = parse_secret(&hex).ok_or_else(|| err("a bad ticket secret".into()))?;
                start
                    .tickets
                    .set_secret(secret)
                    .map_err(|e| err(e.to_string()))?;
            }
            _ => {
                let secret =
                    crate::tls::tickets::random_secret().map_err(|e| err(e.to_string()))?;
                start
                    .tickets
                    .set_secret(secret)
                    .map_err(|e| err(e.to_string()))?;
                let hex = crate::admin::token::hex(&secret);
                r.seed(TICKETS_KEY.into(), Value::Secret { hex }, 0);
            }
        }
        r.persist().map_err(|e| err(e.to_string()))?;
        Ok(r)
    }

    /// An item as found at start (its version given, not a new change).
    fn seed(&mut self, key: String, value: Value, lamport: u64) {
        let version = Version {
            lamport,
            tiebreak: value.tiebreak(),
        };
        self.node.catalog.insert(Item {
            key,
            version,
            value,
        });
    }

    /// The config an appliance starts with (a file, the persisted one, the
    /// default) makes no item by itself: only a change through the admin
    /// API does. So a new appliance, or one set up before it had peers,
    /// takes its peers' config instead of competing with it. But one that
    /// differs from its item (changed by a config file given at start, or
    /// a crash between writing it and its item) is a change made here.
    fn reconcile_config(&mut self, config: &Config) -> Result<(), String> {
        let Some(item) = self.node.catalog.get(CONFIG_KEY) else {
            return Ok(());
        };
        let text = shared::extract(config, Path::new("/"))?.to_doc();
        let value = Value::Doc { text };
        if item.value != value {
            self.local(CONFIG_KEY, value);
        }
        Ok(())
    }

    /// What the protocol needs of the content store.
    pub fn index<'a>(&'a self, content: &'a edgebox_storage::Store) -> StoreIndex<'a> {
        StoreIndex {
            store: content,
            manifests: &self.manifests,
        }
    }

    /// The node, and what it needs of the content store beside it.
    pub fn node_and_index<'a>(
        &'a mut self,
        content: &'a edgebox_storage::Store,
    ) -> (&'a mut Node, StoreIndex<'a>) {
        (
            &mut self.node,
            StoreIndex {
                store: content,
                manifests: &self.manifests,
            },
        )
    }

    /// Writes the catalog's items other than sites.
    pub fn persist(&self) -> std::io::Result<()> {
        let items: Vec<Item> = self
            .node
            .catalog
            .items()
            .filter(|i| !i.key.starts_with(SITE_PREFIX))
            .cloned()
            .collect();
        let bytes = serde_json::to_vec(&CatalogFile { items }).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&Self::catalog_path(&self.dir), &bytes, 0o600)
    }

    fn persist_logged(&self) {
        if let Err(e) = self.persist() {
            tracing::error!("could not write the replication catalog: {e}");
        }
    }

    /// A change made here and made durable already: it joins the catalog
    /// and is announced to the peers.
    pub fn local(&mut self, key: &str, value: Value) -> Option<Item> {
        let item = self.node.local(key, value)?;
        self.committed(item.clone());
        Some(item)
    }

    /// A change made here at the version [`Node::propose`] gave it (a
    /// site's, whose generation had to be known before it was written).
    pub fn committed(&mut self, item: Item) {
        self.node.commit(item.clone());
        if !item.key.starts_with(SITE_PREFIX) {
            self.persist_logged();
        }
        self.announce.push(item);
        self.changed.notify_one();
    }

    /// An item from a peer has been applied here.
    pub fn applied(&mut self, item: Item) {
        let kind = kind_of(&item.key).unwrap_or("other");
        let key = item.key.clone();
        self.adopted_ms.remove(&key);
        self.failed.remove(&key);
        self.node.applied(item);
        if !key.starts_with(SITE_PREFIX) {
            self.persist_logged();
        }
        *self.counters.applied.entry(kind).or_default() += 1;
    }

    /// An item from a peer could not be applied here; it is tried again
    /// after `retry_ms`.
    pub fn apply_failed(&mut self, item: &Item, retry_ms: u64) {
        self.node.apply_failed(item);
        self.adopted_ms.remove(&item.key);
        self.failed
            .insert(item.key.clone(), (item.version, now_ms() + retry_ms));
        self.counters.apply_failures += 1;
    }

    /// Takes a newer item offered by `peer`, unless it failed here lately.
    pub fn adopt(&mut self, item: Item, peer: usize) {
        if let Some((version, until)) = self.failed.get(&item.key) {
            if *version == item.version && now_ms() < *until {
                return;
            }
        }
        self.adopted_ms
            .entry(item.key.clone())
            .or_insert_with(now_ms);
        self.node.adopt(item, peer);
    }

    /// Blobs found damaged here (and put aside): fetched again from every
    /// configured peer that has them.
    pub fn repair(&mut self, hashes: &[Hash]) {
        let peers: Vec<usize> = (0..self.peers.len())
            .filter(|&i| self.peers[i].is_some())
            .collect();
        for h in hashes {
            self.node.repair(*h, peers.iter().copied());
        }
        self.changed.notify_one();
    }

    /// The blobs garbage collection must keep besides the sites' own: the
    /// host map's shards (peers fetch them) and what is on its way.
    pub fn keep(&self, content: &edgebox_storage::Store) -> std::collections::HashSet<Hash> {
        let mut keep: std::collections::HashSet<Hash> = self
            .node
            .catalog
            .items()
            .filter(|i| {
                i.key.starts_with(SHARD_PREFIX) || i.key.starts_with(crate::acme::shard::PREFIX)
            })
            .filter_map(|i| i.value.root_blob())
            .collect();
        keep.extend(self.node.protected(&self.index(content)));
        keep
    }

    /// Makes items of the host-map shards changed here (called a moment
    /// after changes, so that a burst of them makes one item per shard;
    /// only while there are peers, as it reads the whole map). A shard
    /// without an item gets one unless it is empty: an appliance with an
    /// empty host map takes its peers' entries.
    pub fn flush_shards(
        &mut self,
        map: &HostMap,
        content: &edgebox_storage::Store,
    ) -> Result<(), String> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        for (shard, bytes) in shared::shards(map, &dirty) {
            let value = if bytes.is_empty() {
                Value::Deleted
            } else {
                let hash = content
                    .blobs()
                    .put(&bytes)
                    .map_err(|e| format!("storing host-map shard {shard:02x}: {e}"))?;
                Value::Blob { hash }
            };
            let key = shared::shard_key(shard);
            if value == Value::Deleted && self.node.catalog.get(&key).is_none() {
                continue;
            }
            self.local(&key, value);
        }
        Ok(())
    }

    /// The entries a shard holds here as its item says (what a peer's
    /// version of it replaces).
    pub fn shard_entries(
        &self,
        shard: u8,
        content: &edgebox_storage::Store,
        map: &HostMap,
    ) -> Result<Vec<crate::hostmap::Entry>, String> {
        match self
            .node
            .catalog
            .get(&shared::shard_key(shard))
            .and_then(|i| i.value.root_blob())
        {
            Some(hash) => {
                let bytes = content
                    .blobs()
                    .read_verified(&hash)
                    .map_err(|e| format!("host-map shard {shard:02x}: {e}"))?;
                shared::parse_shard(shard, &bytes)
            }
            // No item: whatever the map holds in it.
            None => {
                let bytes = shared::shards(map, &BTreeSet::from([shard]));
                shared::parse_shard(shard, bytes.get(&shard).map_or(&[][..], |b| b))
            }
        }
    }
}

/// A ticket secret from its hex form.
pub fn parse_secret(hex: &str) -> Option<crate::tls::tickets::Secret> {
    crate::admin::token::parse_hex(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        content: edgebox_storage::Store,
        config: Config,
        tickets: Arc<TicketKeys>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let content = edgebox_storage::Store::open(&dir.path().join("store")).unwrap();
        let (cert, key, _) = crate::tls::self_signed::ensure(dir.path(), "t", &[]).unwrap();
        let config = crate::config::embedded_default(&cert, &key);
        Fixture {
            dir,
            content,
            config,
            tickets: TicketKeys::new(3600).unwrap(),
        }
    }

    fn open(f: &Fixture) -> Replica {
        Replica::open(Start {
            data: f.dir.path(),
            content: &f.content,
            config: &f.config,
            tickets: &f.tickets,
            limits: Limits::default(),
        })
        .unwrap()
    }

    #[test]
    fn what_an_appliance_starts_with_makes_no_item_but_its_ticket_secret() {
        let f = fixture();
        let r = open(&f);
        assert!(r.node.catalog.get(CONFIG_KEY).is_none());
        let ticket = r.node.catalog.get(TICKETS_KEY).unwrap().clone();
        assert_eq!(
            ticket.version.lamport, 0,
            "any peer's secret wins over a new one"
        );
        drop(r);
        let r = open(&f);
        assert_eq!(
            r.node.catalog.get(TICKETS_KEY),
            Some(&ticket),
            "the secret is kept"
        );
    }

    #[test]
    fn the_catalog_follows_a_config_or_host_map_changed_behind_its_back() {
        let mut f = fixture();
        let mut map = HostMap::default();
        map.insert("a.example", "p").unwrap();
        let mut r = open(&f);
        // A change through the admin API; the host map as it was.
        let doc = shared::extract(&f.config, Path::new("/")).unwrap().to_doc();
        r.local(CONFIG_KEY, Value::Doc { text: doc });
        r.flush_shards(&map, &f.content).unwrap();
        let key = shared::shard_key(shared::shard_of("a.example"));
        assert_eq!(r.node.catalog.get(&key).unwrap().version.lamport, 1);
        let empty = shared::shard_key(shared::shard_of("a.example").wrapping_add(1));
        assert!(
            r.node.catalog.get(&empty).is_none(),
            "no item for an empty shard"
        );
        drop(r);
        // Changed again, and the catalog not written (a crash between the
        // two, or another config file).
        f.config.client.idle_timeout_ms = 1234;
        map.insert("a.example", "q").unwrap();
        let mut r = open(&f);
        assert_eq!(r.node.catalog.get(CONFIG_KEY).unwrap().version.lamport, 2);
        r.flush_shards(&map, &f.content).unwrap();
        assert_eq!(r.node.catalog.get(&key).unwrap().version.lamport, 2);
        assert_eq!(r.announce.len(), 2, "announced to peers");
        drop(r);
        // The host map emptied: the shard's item becomes a tombstone.
        let mut r = open(&f);
        r.flush_shards(&HostMap::default(), &f.content).unwrap();
        assert_eq!(r.node.catalog.get(&key).unwrap().value, Value::Deleted);
    }

    #[test]
    fn sites_are_their_refs() {
        let f = fixture();
        let blob = f.content.blobs().put(b"x").unwrap();
        let m = edgebox_storage::Manifest::new(
            BTreeMap::from([(
                "index.html".to_owned(),
                edgebox_storage::FileEntry {
                    hash: blob,
                    size: 1,
                    content_type: "text/html".into(),
                    variants: BTreeMap::new(),
                },
            )]),
            Default::default(),
        );
        let mh = f.content.blobs().put(&m.to_bytes()).unwrap();
        f.content.publish_at("shop", mh, 7).unwrap();
        f.content.delete_at("gone", 3).unwrap();
        let r = open(&f);
        let shop = r.node.catalog.get("site/shop").unwrap();
        assert_eq!(
            (shop.version.lamport, &shop.value),
            (7, &Value::Site { manifest: mh })
        );
        assert_eq!(
            r.node.catalog.get("site/gone").unwrap().value,
            Value::Deleted
        );
        let written =
            std::fs::read_to_string(f.dir.path().join("replication/catalog.json")).unwrap();
        assert!(!written.contains("site/"), "sites live in the store");
    }

    #[test]
    fn only_known_keys_with_values_of_their_kind_are_accepted() {
        let item = |key: &str, value: Value| Item {
            key: key.into(),
            version: Version::default(),
            value,
        };
        let blob = Value::Blob {
            hash: Hash::of(b"x"),
        };
        assert!(acceptable(&item("site/shop", Value::Deleted)));
        assert!(acceptable(&item("hostmap/0a", blob.clone())));
        assert!(!acceptable(&item("site/../etc", Value::Deleted)));
        assert!(!acceptable(&item("site/shop", blob.clone())));
        assert!(!acceptable(&item("hostmap/zz", blob)));
        assert!(!acceptable(&item("launch", Value::Deleted)));
        assert!(!acceptable(&item(
            "config",
            Value::Secret { hex: "00".into() }
        )));
        assert_eq!(parse_secret(&"0f".repeat(32)), Some([0x0f; 32]));
        assert_eq!(parse_secret("0f"), None);
    }
}
