//! The immutable, fully checked form of a config that the cores serve from.
//!
//! A [`Snapshot`] is built from a [`Config`] on the control side: certificates
//! read and matched to their keys, backend names resolved, routes compiled into a
//! [`Router`]. Building either succeeds completely or fails with the field that
//! is wrong; cores only ever see finished snapshots, through [`Shared`].

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::{self, Action, Config, ConfigError};
use crate::hostmap::HostMap;
use crate::static_files::ServedSite;

/// The published sites, by name.
pub type Sites = std::collections::BTreeMap<String, Arc<ServedSite>>;
use crate::router::{HostPattern, Router};
use crate::tls::tickets::TicketKeys;

/// What a route does, with every reference resolved.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward to `snapshot.pools[index]`.
    Proxy(usize),
    Redirect {
        to: HeaderValue,
        status: StatusCode,
    },
    Respond {
        status: StatusCode,
        body: Bytes,
        content_type: HeaderValue,
    },
    Welcome,
    /// A site from the content store; `None` while it is not published.
    Static {
        site: Arc<str>,
        served: Option<Arc<ServedSite>>,
    },
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// As written in the config, for logs.
    pub name: Arc<str>,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Backend>,
    /// Each backend's share of new requests: its weight, or 0 while draining.
    pub weights: Vec<u32>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
}

#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// How many times the config and the host map have been changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    pub config: u64,
    pub hostmap: u64,
    /// Changes to the set of published sites (publishes, rollbacks, deletes).
    pub sites: u64,
}

#[derive(Debug)]
pub struct Snapshot {
    pub generations: Generations,
    pub config: Config,
    pub router: Router<RouteAction>,
    /// The host map, compiled: host → index into `pools`.
    pub hostmap: HashMap<Box<str>, u32>,
    pub pools: Vec<Pool>,
    /// For HTTPS listeners; `None` when the config has no certificates.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub client: ClientLimits,
}

impl Snapshot {
    /// Checks and compiles `config`; relative certificate paths are taken from
    /// `base`.
    pub fn build(
        config: Config,
        hostmap: &HostMap,
        sites: &Sites,
        base: &Path,
        tickets: &Arc<TicketKeys>,
        generations: Generations,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let tls = match crate::tls::load_certificates(&config.certificates, base)? {
            Some(certs) => Some(
                crate::tls::server_config(
                    Arc::new(certs),
                    config.tls.session_tickets.then(|| Arc::clone(tickets)),
                )
                .map_err(|e| ConfigError::new("certificates", e))?,
            ),
            None => None,
        };
        let pools = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| build_pool(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut router = Router::new();
        for (i, r) in config.routes.iter().enumerate() {
            let host = r.host.as_deref().map(HostPattern::parse).transpose();
            let host = host.map_err(|e| ConfigError::new(format!("routes[{i}].host"), e))?;
            let action = compile_action(i, &r.action, &config.pools, sites)?;
            router.insert(host.as_ref(), &r.path_prefix, action);
        }
        let pool_index: HashMap<&str, u32> = (0u32..)
            .zip(&config.pools)
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut compiled = HashMap::with_capacity(hostmap.len());
        for (host, pool) in hostmap.iter() {
            let Some(&i) = pool_index.get(pool) else {
                return Err(ConfigError::new(
                    format!("hostmap[{host:?}].pool"),
                    format!("no pool named {pool:?}"),
                ));
            };
            compiled.insert(Box::from(host), i);
        }
        let client = ClientLimits {
            handshake_timeout: ms(config.tls.handshake_timeout_ms),
            header_timeout: ms(config.client.header_timeout_ms),
            idle_timeout: ms(config.client.idle_timeout_ms),
            shutdown_grace: ms(config.client.shutdown_grace_ms),
        };
        Ok(Self {
            generations,
            config,
            router,
            hostmap: compiled,
            pools,
            tls,
            client,
        })
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn build_pool(i: usize, p: &config::Pool) -> Result<Pool, ConfigError> {
    let backends = p
        .backends
        .iter()
        .enumerate()
        .map(|(j, b)| {
            let path = || format!("pools[{i}].backends[{j}].address");
            let addr = b
                .address
                .to_socket_addrs()
                .map_err(|e| ConfigError::new(path(), format!("cannot resolve: {e}")))?
                .next()
                .ok_or_else(|| ConfigError::new(path(), "resolves to no address"))?;
            Ok(Backend {
                name: Arc::from(b.address.as_str()),
                addr,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let weights = p
        .backends
        .iter()
        .map(|b| match b.state {
            config::BackendState::Enabled => b.weight,
            config::BackendState::Draining => 0,
        })
        .collect();
    Ok(Pool {
        name: Arc::from(p.name.as_str()),
        backends,
        weights,
        connect_timeout: ms(p.timeouts.connect_ms),
        response_header_timeout: ms(p.timeouts.response_header_ms),
        idle_timeout: ms(p.timeouts.idle_ms),
        max_idle_per_backend: p.max_idle_per_backend,
    })
}

fn compile_action(
    i: usize,
    action: &Action,
    pools: &[config::Pool],
    sites: &Sites,
) -> Result<RouteAction, ConfigError> {
    let at = |field: &str| format!("routes[{i}].action.{field}");
    let status = |field: &str, code: u16| {
        StatusCode::from_u16(code).map_err(|e| ConfigError::new(at(field), e))
    };
    let header =
        |field: &str, v: &str| HeaderValue::from_str(v).map_err(|e| ConfigError::new(at(field), e));
    Ok(match action {
        Action::Proxy { pool } => {
            RouteAction::Proxy(pools.iter().position(|p| &p.name == pool).ok_or_else(|| {
                ConfigError::new(at("proxy.pool"), format!("no pool named {pool:?}"))
            })?)
        }
        Action::Redirect { to, status: code } => RouteAction::Redirect {
            to: header("redirect.to", to)?,
            status: status("redirect.status", *code)?,
        },
        Action::Respond {
            status: code,
            body,
            content_type,
        } => RouteAction::Respond {
            status: status("respond.status", *code)?,
            body: Bytes::from(body.clone()),
            content_type: header("respond.content_type", content_type)?,
        },
        Action::Welcome => RouteAction::Welcome,
        Action::Static { site } => RouteAction::Static {
            site: Arc::from(site.as_str()),
            served: sites.get(site).cloned(),
        },
    })
}

/// What every thread shares. The control plane writes, cores read.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub tickets: Arc<TicketKeys>,
    /// Set by the control plane on SIGTERM/SIGINT or a shutdown request; cores
    /// poll it.
    pub shutting_down: AtomicBool,
    /// What the process does once stopped: an [`Exit`] as u8, set with the
    /// shutdown request.
    pub exit: std::sync::atomic::AtomicU8,
    /// Running under edgebox's own PID 1, which can power off and reboot.
    pub appliance: bool,
    /// Each core's statistics, indexed by core.
    pub stats: crate::metrics::AllStats,
    /// The content store's blobs, which cores map to serve sites.
    pub blobs: edgebox_storage::Blobs,
    /// Sockets bound by the control plane for listeners added at run time,
    /// waiting for their core to adopt them: (core, listener key) → socket.
    pub new_sockets: Mutex<HashMap<(usize, ListenerKey), OwnedFd>>,
}

/// What identifies a listening socket: a listener with the same name and
/// address keeps its sockets across config changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub name: String,
    pub address: SocketAddr,
}

impl ListenerKey {
    pub fn of(l: &config::Listener) -> Self {
        Self {
            name: l.name.clone(),
            address: l.address,
        }
    }
}

/// How `edgebox serve` ends, for whoever started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Stopped: a signal, or an admin shutdown request off the appliance.
    Stopped = 0,
    /// The appliance is to power off (PID 1 does it).
    PowerOff = 1,
    /// The appliance is to reboot (PID 1 does it).
    Reboot = 2,
}

impl Exit {
    pub fn from_u8(v: u8) -> Exit {
        match v {
            1 => Exit::PowerOff,
            2 => Exit::Reboot,
            _ => Exit::Stopped,
        }
    }
}
