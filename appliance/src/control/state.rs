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
use crate::snapshot::{Generations, ListenerKey, Shared, Snapshot};
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
}

pub struct Control {
    pub shared: Arc<Shared>,
    pub store: Store,
    pub data: PathBuf,
    pub config: Config,
    pub hostmap: Arc<HostMap>,
    pub gens: Generations,
    pub cores: usize,
    pub started: Instant,
    pub token: TokenStore,
    pub logs: Arc<LogRing>,
    /// Where a newly bound admin listener goes when `admin.address` changes.
    pub admin_rebind: tokio::sync::mpsc::UnboundedSender<std::net::TcpListener>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("gens", &self.gens)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Validates, persists and publishes `new` as the whole config.
    pub fn apply_config(&mut self, mut new: Config) -> Result<(), ApplyError> {
        new.validate()?;
        let fresh = self.bind_new_listeners(&mut new)?;
        let admin = if new.admin.address == self.config.admin.address {
            None
        } else {
            Some(bind_admin(new.admin.address).map_err(|e| ConfigError::new("admin.address", e))?)
        };
        let gens = Generations {
            config: self.gens.config + 1,
            ..self.gens
        };
        let snapshot = Snapshot::build(
            new.clone(),
            &self.hostmap,
            &self.data,
            &self.shared.tickets,
            gens,
        )?;
        self.store
            .save_config(gens.config, &new)
            .map_err(ApplyError::Persist)?;
        {
            let mut waiting = self
                .shared
                .new_sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (key, sockets) in fresh {
                for (core, fd) in sockets.into_iter().enumerate() {
                    waiting.insert((core, key.clone()), fd);
                }
            }
        }
        self.publish(snapshot);
        self.config = new;
        self.gens = gens;
        if let Some(listener) = admin {
            let _ = self.admin_rebind.send(listener);
        }
        tracing::info!(generation = gens.config, "applied a new config");
        Ok(())
    }

    /// Validates, persists and publishes `new` as the whole host map.
    pub fn apply_hostmap(&mut self, new: HostMap) -> Result<(), ApplyError> {
        let gens = Generations {
            hostmap: self.gens.hostmap + 1,
            ..self.gens
        };
        let snapshot = Snapshot::build(
            self.config.clone(),
            &new,
            &self.data,
            &self.shared.tickets,
            gens,
        )?;
        self.store
            .save_hostmap(gens.hostmap, &new)
            .map_err(ApplyError::Persist)?;
        self.publish(snapshot);
        self.hostmap = Arc::new(new);
        self.gens = gens;
        tracing::info!(
            generation = gens.hostmap,
            entries = self.hostmap.len(),
            "applied a new host map"
        );
        Ok(())
    }

    fn publish(&self, snapshot: Snapshot) {
        self.shared.snapshot.store(Arc::new(snapshot));
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
            let bound = listeners::bind(std::slice::from_ref(l), self.cores)
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
