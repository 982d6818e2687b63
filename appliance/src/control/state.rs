//! The control plane's state, and the one way a change is applied.
//!
//! [`Control::apply_config`] and [`Control::apply_hostmap`] take a whole new
//! config or host map and, in order: check it completely (parsing rules,
//! certificates, backend names, listener addresses bound), write it to disk
//! (temporary file, fsync, rename, fsync directory), then publish the new
//! snapshot to every core. A failure at any step leaves everything as it was:
//! nothing persisted, nothing published, sockets bound for it closed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::admin::token::TokenStore;
use crate::config::{Config, ConfigError};
use crate::hostmap::HostMap;
use crate::logging::LogRing;
use crate::server::listeners;
use crate::snapshot::{Generations, ListenerKey, Shared, Sites, Snapshot, Upstreams};
use crate::static_files::ServedSite;
use crate::store::Store;

/// Why a change was refused; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The change is invalid (a field, with the reason).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The change could not be written to disk (disk full, read-only).
    #[error("could not persist the change: {0}")]
    Persist(std::io::Error),
    /// The content store refused or failed.
    #[error(transparent)]
    Site(#[from] edgebox_storage::SiteError),
}

pub struct Control {
    pub shared: Arc<Shared>,
    pub store: Store,
    pub data: PathBuf,
    pub config: Config,
    pub hostmap: Arc<HostMap>,
    /// The content store (blobs, site refs) under `<data>/store`.
    pub content: edgebox_storage::Store,
    /// The published sites, as the current snapshot serves them.
    pub sites: Sites,
    pub gens: Generations,
    pub cores: usize,
    pub started: Instant,
    pub token: TokenStore,
    pub logs: Arc<LogRing>,
    /// Where a newly bound admin listener goes when `admin.address` changes.
    pub admin_rebind: tokio::sync::mpsc::UnboundedSender<std::net::TcpListener>,
    /// Backends' shared state and resolved names, handed from snapshot to
    /// snapshot.
    pub upstreams: Upstreams,
    /// The active health checks, following every published snapshot.
    pub health: super::health::HealthChecks,
    /// Resolves backend names (made on first need).
    pub resolver: Option<std::sync::Arc<crate::discovery::Resolver>>,
    /// Changes in the host map's journal since it was last written whole.
    pub hostmap_journal: usize,
    /// Replication: the catalog of what peers share, what is on its way,
    /// the peers' state.
    pub replica: crate::replication::Replica,
    /// A shutdown was asked for (it may still be handing the virtual
    /// addresses over before it stops accepting).
    pub stopping: bool,
    /// The certificates' expiry, read once per config generation (for
    /// `/metrics`).
    pub cert_expiry: std::cell::RefCell<Option<(u64, Vec<Option<i64>>)>>,
    /// Certificates obtained by ACME: what is due, the account, counters.
    pub acme: crate::acme::run::Manager,
}

/// A change of a site made through the admin API.
#[derive(Debug, Clone, Copy)]
pub enum SiteOp {
    Publish(edgebox_storage::Hash),
    /// Serve the manifest of an earlier generation again, as a new one.
    Rollback(u64),
    Delete,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("gens", &self.gens)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

/// A change that passed every check and is ready to be committed.
#[derive(Debug)]
pub struct Prepared {
    snapshot: Snapshot,
    kind: PreparedKind,
}

#[derive(Debug)]
enum PreparedKind {
    Config {
        config: Box<Config>,
        sockets: Vec<(ListenerKey, Vec<std::os::fd::OwnedFd>)>,
        admin: Option<std::net::TcpListener>,
        /// `replication.listen`'s socket, when it changed.
        replication: Option<std::net::UdpSocket>,
        /// Names this change resolved, kept once it is published.
        resolved: std::collections::HashMap<String, Vec<SocketAddr>>,
    },
    /// A whole new host map (an import).
    HostMap(HostMap),
    /// The host map with one entry changed.
    HostMapEntry(HostMap, crate::hostmap::Change),
    /// The host map with a peer's changes of a shard.
    HostMapChanges(HostMap, Vec<crate::hostmap::Change>),
}

impl Control {
    /// Validates, persists and publishes `new` as the whole config; its
    /// backend names must be resolved already (in `resolved`, or known).
    pub fn apply_config(
        &mut self,
        new: Config,
        resolved: crate::discovery::Resolved,
    ) -> Result<(), ApplyError> {
        let prepared = self.prepare_config(new, resolved)?;
        self.commit(prepared)
    }

    /// The resolver for `settings`: the one in use, or a new one when the
    /// settings changed.
    pub fn resolver(
        &mut self,
        settings: &crate::config::DnsSettings,
    ) -> Result<std::sync::Arc<crate::discovery::Resolver>, String> {
        if let Some(r) = &self.resolver {
            if r.settings() == settings {
                return Ok(std::sync::Arc::clone(r));
            }
        }
        let r = std::sync::Arc::new(crate::discovery::Resolver::new(settings)?);
        self.resolver = Some(std::sync::Arc::clone(&r));
        Ok(r)
    }

    /// Backend names resolved to new addresses: the same config, host map
    /// and sites, served with them. Addresses that appeared join their pools
    /// (in slow start); those that vanished drain.
    pub fn apply_resolved(
        &mut self,
        changed: crate::discovery::Resolved,
    ) -> Result<(), ApplyError> {
        let snapshot = self.build_with(
            self.config.clone(),
            &self.hostmap,
            &self.sites,
            self.gens,
            &changed,
        )?;
        self.upstreams.resolved.extend(changed);
        self.publish(snapshot);
        Ok(())
    }

    /// Validates, persists and publishes `new` as the whole host map.
    pub fn apply_hostmap(&mut self, new: HostMap) -> Result<(), ApplyError> {
        let prepared = self.prepare_hostmap(new)?;
        self.commit(prepared)
    }

    /// Every check of a new config, with its sockets bound and its snapshot
    /// built; nothing is applied yet.
    pub fn prepare_config(
        &self,
        mut new: Config,
        resolved: crate::discovery::Resolved,
    ) -> Result<Prepared, ApplyError> {
        new.validate()?;
        let sockets = self.bind_new_listeners(&mut new)?;
        let admin = if new.admin.address == self.config.admin.address {
            None
        } else {
            Some(bind_admin(new.admin.address).map_err(|e| ConfigError::new("admin.address", e))?)
        };
        let replication = match new.replication.listen {
            Some(addr) if new.replication.listen != self.config.replication.listen => Some(
                crate::replication::bind(addr)
                    .map_err(|e| ConfigError::new("replication.listen", e))?,
            ),
            _ => None,
        };
        let gens = Generations {
            config: self.gens.config + 1,
            ..self.gens
        };
        let snapshot = self.build_with(new.clone(), &self.hostmap, &self.sites, gens, &resolved)?;
        Ok(Prepared {
            snapshot,
            kind: PreparedKind::Config {
                config: Box::new(new),
                sockets,
                admin,
                replication,
                resolved,
            },
        })
    }

    /// Every check of a new host map, with its snapshot made.
    pub fn prepare_hostmap(&self, new: HostMap) -> Result<Prepared, ApplyError> {
        let snapshot = self.snapshot_with_hostmap(&new)?;
        Ok(Prepared {
            snapshot,
            kind: PreparedKind::HostMap(new),
        })
    }

    /// One entry set or removed: checked, with its snapshot made, at a cost
    /// that does not grow with the host map (its copy shares all entries).
    pub fn prepare_hostmap_entry(
        &self,
        change: crate::hostmap::Change,
    ) -> Result<Prepared, ApplyError> {
        use crate::hostmap::Change;
        let mut map = HostMap::clone(&self.hostmap);
        match &change {
            Change::Set { host, pool } => {
                if !self.config.pools.iter().any(|p| p.name == *pool) {
                    return Err(ConfigError::new("pool", format!("no pool named {pool:?}")).into());
                }
                map.insert(host, pool)
                    .map_err(|e| ConfigError::new("host", e))?;
            }
            Change::Delete { host } => {
                map.remove(host);
            }
        }
        let snapshot = self.snapshot_with_hostmap(&map)?;
        Ok(Prepared {
            snapshot,
            kind: PreparedKind::HostMapEntry(map, change),
        })
    }

    /// A peer's changes of one host-map shard, checked, with the snapshot.
    pub fn prepare_hostmap_changes(
        &self,
        changes: Vec<crate::hostmap::Change>,
    ) -> Result<Prepared, ApplyError> {
        let mut map = HostMap::clone(&self.hostmap);
        for change in &changes {
            if let crate::hostmap::Change::Set { pool, .. } = change {
                if !self.config.pools.iter().any(|p| p.name == *pool) {
                    return Err(ConfigError::new("pool", format!("no pool named {pool:?}")).into());
                }
            }
            map.apply(change).map_err(|e| ConfigError::new("host", e))?;
        }
        let snapshot = self.snapshot_with_hostmap(&map)?;
        Ok(Prepared {
            snapshot,
            kind: PreparedKind::HostMapChanges(map, changes),
        })
    }

    /// A change of a site through the admin API: the ref moves (after every
    /// blob is checked) to the generation after the site's here and after
    /// any of a peer's on its way, and the site is served and announced.
    /// Publishing the manifest the site serves already changes nothing.
    pub fn change_site(
        &mut self,
        name: &str,
        op: SiteOp,
    ) -> Result<Option<edgebox_storage::SiteRef>, ApplyError> {
        use edgebox_storage::replication::Value;
        use edgebox_storage::SiteError;
        let current = self.content.site(name)?;
        let value = match op {
            SiteOp::Publish(manifest) => Value::Site { manifest },
            SiteOp::Rollback(generation) => {
                let r = current.ok_or_else(|| SiteError::NoSuchSite(name.to_owned()))?;
                let Some(old) = r.history.iter().find(|p| p.generation == generation) else {
                    return Err(SiteError::NoSuchGeneration {
                        site: name.to_owned(),
                        generation,
                        kept: r.history.iter().map(|p| p.generation).collect(),
                    }
                    .into());
                };
                Value::Site {
                    manifest: old.manifest,
                }
            }
            SiteOp::Delete => {
                current.ok_or_else(|| SiteError::NoSuchSite(name.to_owned()))?;
                Value::Deleted
            }
        };
        let key = format!("{}{name}", crate::replication::shared::SITE_PREFIX);
        let Some(mut item) = self.replica.node.propose(&key, value) else {
            return Ok(self.content.site(name)?);
        };
        item.version.lamport = item.version.lamport.max(self.content.generation(name)? + 1);
        match item.value {
            Value::Site { manifest } => {
                self.content
                    .publish_at(name, manifest, item.version.lamport)?;
            }
            _ => self.content.delete_at(name, item.version.lamport)?,
        }
        self.replica.committed(item);
        self.refresh_site(name)?;
        Ok(self.content.site(name)?)
    }

    /// The current snapshot with `map` as its host map, a generation on.
    fn snapshot_with_hostmap(&self, map: &HostMap) -> Result<Snapshot, ConfigError> {
        let gens = Generations {
            hostmap: self.gens.hostmap + 1,
            ..self.gens
        };
        self.shared.snapshot.load().with_hostmap(map, gens)
    }

    /// Re-reads one site's ref (after a publish, rollback or delete, which
    /// the content store has already made durable) and publishes a snapshot
    /// that serves it.
    pub fn refresh_site(&mut self, name: &str) -> Result<(), ApplyError> {
        let mut sites = self.sites.clone();
        match self.content.site(name)? {
            Some(r) => {
                let manifest = self.content.manifest(&r.manifest)?;
                sites.insert(
                    name.to_owned(),
                    Arc::new(ServedSite {
                        name: Arc::from(name),
                        generation: r.generation,
                        manifest,
                    }),
                );
            }
            None => {
                sites.remove(name);
            }
        }
        let gens = Generations {
            sites: self.gens.sites + 1,
            ..self.gens
        };
        let snapshot = self.build(self.config.clone(), &self.hostmap, &sites, gens)?;
        self.publish(snapshot);
        self.sites = sites;
        self.gens = gens;
        Ok(())
    }

    /// Persists a change made here and publishes it to the cores; its
    /// shared part becomes a change for the peers. If it cannot be
    /// persisted, nothing is published.
    pub fn commit(&mut self, prepared: Prepared) -> Result<(), ApplyError> {
        use crate::replication::shared;
        let sync = self.config.replication.sync_config;
        let config_before = match &prepared.kind {
            PreparedKind::Config { .. } if sync => Some(self.shared_doc()),
            _ => None,
        };
        let shards: Vec<u8> = match &prepared.kind {
            PreparedKind::HostMapEntry(_, change) => vec![shared::shard_of(change.host())],
            PreparedKind::HostMap(_) => (0..=255).collect(),
            _ => Vec::new(),
        };
        self.commit_replicated(prepared)?;
        if let Some(before) = config_before {
            match self.shared_doc() {
                Ok(after) if Ok(&after) != before.as_ref() => {
                    let value = edgebox_storage::replication::Value::Doc { text: after };
                    self.replica.local(shared::CONFIG_KEY, value);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("replication: the new config's shared part: {e}"),
            }
        }
        if sync && !shards.is_empty() {
            self.replica.dirty.extend(shards);
            self.replica.changed.notify_one();
        }
        Ok(())
    }

    /// The shared part of the config being served, as its catalog text.
    fn shared_doc(&self) -> Result<String, String> {
        crate::replication::shared::extract(&self.config, &self.data).map(|s| s.to_doc())
    }

    /// Persists and publishes a change (one of a peer's, or the inside of
    /// [`Control::commit`]): no new change for the peers comes of it.
    pub fn commit_replicated(&mut self, prepared: Prepared) -> Result<(), ApplyError> {
        let gens = prepared.snapshot.generations;
        match prepared.kind {
            PreparedKind::Config {
                config,
                sockets,
                admin,
                replication,
                resolved,
            } => {
                self.store
                    .save_config(gens.config, &config)
                    .map_err(ApplyError::Persist)?;
                {
                    let mut waiting = self
                        .shared
                        .new_sockets
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    for (key, per_core) in sockets {
                        for (core, fd) in per_core.into_iter().enumerate() {
                            waiting.insert((core, key.clone()), fd);
                        }
                    }
                }
                self.upstreams.resolved.extend(resolved);
                self.publish(prepared.snapshot);
                if config.failover != self.config.failover {
                    self.shared.failover.apply(config.failover.as_ref());
                }
                self.config = *config;
                if let Some(listener) = admin {
                    let _ = self.admin_rebind.send(listener);
                }
                if replication.is_some() {
                    self.replica.new_socket = replication;
                }
                self.replica.changed.notify_one();
                tracing::info!(generation = gens.config, "applied a new config");
            }
            PreparedKind::HostMapEntry(map, change) => {
                self.commit_hostmap_changes(prepared.snapshot, map, std::slice::from_ref(&change))?;
            }
            PreparedKind::HostMapChanges(map, changes) => {
                self.commit_hostmap_changes(prepared.snapshot, map, &changes)?;
            }
            PreparedKind::HostMap(map) => {
                self.store
                    .save_hostmap(gens.hostmap, &map)
                    .map_err(ApplyError::Persist)?;
                self.hostmap_journal = 0;
                self.publish(prepared.snapshot);
                self.hostmap = Arc::new(map);
                self.acme.hostmap_replaced();
                tracing::info!(
                    generation = gens.hostmap,
                    entries = self.hostmap.len(),
                    "applied a new host map"
                );
            }
        }
        self.gens = gens;
        Ok(())
    }

    /// Appends host-map changes to the journal and publishes them.
    fn commit_hostmap_changes(
        &mut self,
        snapshot: Snapshot,
        map: HostMap,
        changes: &[crate::hostmap::Change],
    ) -> Result<(), ApplyError> {
        let gens = snapshot.generations;
        self.store
            .append_hostmap(gens.hostmap, changes)
            .map_err(ApplyError::Persist)?;
        self.hostmap_journal += changes.len();
        // Written whole once the journal reaches a quarter of the map: a
        // constant cost per change, amortised.
        if self.hostmap_journal > (map.len() / 4).max(1_024) {
            match self.store.save_hostmap(gens.hostmap, &map) {
                Ok(()) => self.hostmap_journal = 0,
                Err(e) => tracing::warn!("could not compact the host map's journal: {e}"),
            }
        }
        self.publish(snapshot);
        self.hostmap = Arc::new(map);
        self.acme.hosts_changed(changes.iter().map(|c| c.host()));
        Ok(())
    }

    /// Publishes `snapshot` to the cores, after taking in its backends.
    pub fn publish(&mut self, snapshot: Snapshot) {
        self.upstreams.commit(&snapshot, crate::clock::now_ms());
        let snapshot = Arc::new(snapshot);
        self.shared.snapshot.store(Arc::clone(&snapshot));
        self.health.follow(&snapshot);
    }

    /// A snapshot of `config`, `hostmap` and `sites` as generation `gens`.
    fn build(
        &self,
        config: Config,
        hostmap: &HostMap,
        sites: &Sites,
        gens: Generations,
    ) -> Result<Snapshot, ConfigError> {
        self.build_with(config, hostmap, sites, gens, &Default::default())
    }

    /// As [`Control::build`], with names resolved for this change that the
    /// upstreams do not have yet.
    fn build_with(
        &self,
        config: Config,
        hostmap: &HostMap,
        sites: &Sites,
        gens: Generations,
        resolved: &std::collections::HashMap<String, Vec<SocketAddr>>,
    ) -> Result<Snapshot, ConfigError> {
        Snapshot::build(
            config,
            hostmap,
            sites,
            &self.data,
            &crate::snapshot::TlsState {
                tickets: Arc::clone(&self.shared.tickets),
                managed: Arc::clone(&self.shared.managed),
            },
            gens,
            &crate::snapshot::Resolving {
                upstreams: &self.upstreams,
                extra: resolved,
            },
        )
    }

    /// Binds one socket per core for each listener the current config does
    /// not have yet; a listener on port 0 gets its actual port written in.
    #[allow(clippy::type_complexity)]
    fn bind_new_listeners(
        &self,
        new: &mut Config,
    ) -> Result<Vec<(ListenerKey, Vec<std::os::fd::OwnedFd>)>, ConfigError> {
        let current: HashSet<ListenerKey> =
            self.config.listeners.iter().map(ListenerKey::of).collect();
        let mut fresh = Vec::new();
        for (i, l) in new.listeners.iter_mut().enumerate() {
            if current.contains(&ListenerKey::of(l)) {
                continue;
            }
            let vips = listeners::virtual_addresses(new.failover.as_ref());
            let bound = listeners::bind(std::slice::from_ref(l), self.cores, &vips)
                .map_err(|e| ConfigError::new(format!("listeners[{i}].address"), e.source))?;
            l.address = bound.addresses[0];
            let sockets = bound
                .per_core
                .into_iter()
                .filter_map(|mut s| s.pop().map(|(_, fd)| fd))
                .collect();
            fresh.push((ListenerKey::of(l), sockets));
        }
        Ok(fresh)
    }
}

/// Binds the admin API's listening socket.
pub fn bind_admin(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Every published site of the content store, as the data plane serves it.
pub fn load_sites(content: &edgebox_storage::Store) -> Result<Sites, edgebox_storage::SiteError> {
    let mut sites = Sites::new();
    for (name, r) in content.sites()? {
        let manifest = content.manifest(&r.manifest)?;
        sites.insert(
            name.clone(),
            Arc::new(ServedSite {
                name: Arc::from(name.as_str()),
                generation: r.generation,
                manifest,
            }),
        );
    }
    Ok(sites)
}
