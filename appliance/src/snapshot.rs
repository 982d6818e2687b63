//! The immutable, fully checked form of a config that the cores serve from.
//!
//! A [`Snapshot`] is built from a [`Config`] on the control side: certificates
//! read and matched to their keys, backend names resolved, routes compiled into a
//! [`Router`]. Building either succeeds completely or fails with the field that
//! is wrong; cores only ever see finished snapshots, through [`Shared`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::balance::health::Health;
use crate::balance::{outlier, BackendShared, Maglev};
use crate::config::{self, Action, Config, ConfigError};
use crate::hostmap::HostMap;
use crate::static_files::ServedSite;

/// The published sites, by name.
pub type Sites = std::collections::BTreeMap<String, Arc<ServedSite>>;
use crate::router::{HostPattern, Router};
use crate::tls::tickets::TicketKeys;

/// A route as requests meet it: what it does, and the
/// `Strict-Transport-Security` value of its HTTPS responses.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub action: RouteAction,
    pub hsts: Option<HeaderValue>,
}

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

/// One backend: an address a pool sends requests to.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Its address as text (`10.0.1.5:8080`): its name in logs and metrics.
    pub name: Arc<str>,
    /// The config entry it comes from (`app.internal:8080` for each address
    /// that name resolved to): what the admin API drains and weighs.
    pub config_address: Arc<str>,
    pub addr: SocketAddr,
    /// Its weight as configured (0: no new requests).
    pub weight: u32,
    pub draining: bool,
    /// What every core knows of it; the same object for as long as the
    /// backend stays in its pool, whatever the config changes.
    pub shared: Arc<BackendShared>,
}

/// How a pool picks backends.
#[derive(Debug, Clone)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    PeakEwma,
    /// Consistent hashing on `key`, with the pool's Maglev table.
    Hash {
        key: config::HashOn,
        table: Arc<Maglev>,
    },
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Backend>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
    pub outlier: outlier::Policy,
    pub count_5xx: bool,
    pub slow_start_ms: u64,
    pub panic_threshold_percent: u32,
    pub retries: config::Retries,
    pub limits: config::Limits,
    pub drain_timeout_ms: u64,
    pub proxy_protocol: bool,
    pub health_check: Option<config::HealthCheck>,
}

/// The upstreams a snapshot is built from, with names a pending change
/// resolved on top.
#[derive(Debug, Clone, Copy)]
pub struct Resolving<'a> {
    pub upstreams: &'a Upstreams,
    pub extra: &'a HashMap<String, Vec<SocketAddr>>,
}

impl Resolving<'_> {
    fn addresses(&self, address: &str) -> Option<Vec<SocketAddr>> {
        match self.extra.get(address) {
            Some(a) => Some(a.clone()),
            None => self.upstreams.addresses(address),
        }
    }
}

/// What one snapshot hands the next about backends: their shared state, by
/// pool and address, and what their names resolved to. The control plane
/// keeps it; building a snapshot only reads it, and [`Upstreams::commit`]
/// takes in what a published snapshot has.
#[derive(Debug, Default)]
pub struct Upstreams {
    states: HashMap<(Arc<str>, SocketAddr), Arc<BackendShared>>,
    /// Backend addresses that are names (`host:port`, SRV) → what they
    /// resolved to last.
    pub resolved: HashMap<String, Vec<SocketAddr>>,
    /// A snapshot has been published: backends new from here on join in
    /// slow start, and wait for a first passed health check.
    running: bool,
}

impl Upstreams {
    /// The shared state of backend `addr` in pool `pool`, if it has one.
    pub fn state(&self, pool: &str, addr: SocketAddr) -> Option<&Arc<BackendShared>> {
        self.states.get(&(Arc::from(pool), addr))
    }

    /// Every backend with its shared state.
    pub fn states(&self) -> impl Iterator<Item = (&str, SocketAddr, &Arc<BackendShared>)> {
        self.states.iter().map(|((p, a), s)| (&**p, *a, s))
    }

    /// The addresses a config backend stands for: itself, or what its name
    /// resolved to (`None`: not resolved yet).
    pub fn addresses(&self, address: &str) -> Option<Vec<SocketAddr>> {
        match address.parse::<SocketAddr>() {
            Ok(a) => Some(vec![a]),
            Err(_) => self.resolved.get(address).cloned(),
        }
    }

    /// Takes in the backends of the snapshot just published: new ones are
    /// kept from now on, drains are stamped, and backends that left are
    /// marked as draining (for their tunnels' deadline) and forgotten.
    pub fn commit(&mut self, snap: &Snapshot, now_ms: u64) {
        let mut states = HashMap::with_capacity(self.states.len());
        for p in &snap.pools {
            for b in &p.backends {
                b.shared.set_draining(b.draining, now_ms);
                states.insert((Arc::clone(&p.name), b.addr), Arc::clone(&b.shared));
            }
        }
        for (key, gone) in &self.states {
            if !states.contains_key(key) {
                gone.set_draining(true, now_ms);
            }
        }
        self.states = states;
        self.running = true;
    }

    /// The shared state for a backend of a snapshot being built: the one it
    /// has, or a new one (not kept unless the snapshot is published).
    fn state_for(
        &self,
        pool: &str,
        addr: SocketAddr,
        checked: bool,
        now_ms: u64,
    ) -> Arc<BackendShared> {
        if let Some(s) = self.state(pool, addr) {
            return Arc::clone(s);
        }
        let s = if self.running {
            BackendShared::joining(now_ms)
        } else {
            BackendShared::default()
        };
        s.health.set(match (checked, self.running) {
            (false, _) => Health::Unchecked,
            (true, false) => Health::Up,
            (true, true) => Health::Down,
        });
        Arc::new(s)
    }
}

#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// `None`: as the open-files limit allows ([`Shared::auto_max_connections`]).
    pub max_connections: Option<usize>,
    /// 0: no limit.
    pub max_connections_per_address: usize,
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
    pub router: Router<CompiledRoute>,
    /// `tls.hsts`: for HTTPS responses whose route has none (host-map
    /// entries included).
    pub hsts: Option<HeaderValue>,
    /// The host map as requests see it.
    pub hostmap: HostIndex,
    pub pools: Vec<Pool>,
    /// For HTTPS listeners; `None` when the config has neither
    /// certificates nor an `acme` section.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What `tls` chooses certificates with (which names the configured
    /// certificates cover, for ACME).
    pub certs: Option<Arc<crate::tls::CertResolver>>,
    /// Certificates obtained by ACME and the challenges being answered:
    /// one object for the process's life, shared by every snapshot.
    pub managed: Arc<crate::tls::managed::Managed>,
    pub client: ClientLimits,
}

/// The host map as requests see it: host → index into the snapshot's
/// `pools`. It shares the host map's entries (a persistent map), so making
/// one costs the number of pools, not of hosts.
#[derive(Debug, Clone, Default)]
pub struct HostIndex {
    entries: imbl::HashMap<Arc<str>, u32>,
    /// The host map's pool number → index into `pools`.
    pools: Vec<Option<u32>>,
}

impl HostIndex {
    /// Fails, naming a host, if an entry names a pool `config` lacks.
    pub fn new(hostmap: &HostMap, config: &Config) -> Result<Self, ConfigError> {
        let index: HashMap<&str, u32> = (0u32..)
            .zip(&config.pools)
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut pools = vec![None; hostmap.pool_numbers()];
        for (n, name, uses) in hostmap.pools_used() {
            match index.get(name) {
                Some(&i) => pools[n as usize] = Some(i),
                None => {
                    // The error path alone looks for a host to name.
                    let host = hostmap
                        .iter()
                        .find(|(_, p)| *p == name)
                        .map_or_else(String::new, |(h, _)| h.to_owned());
                    return Err(ConfigError::new(
                        format!("hostmap[{host:?}].pool"),
                        format!("no pool named {name:?} ({uses} entries name it)"),
                    ));
                }
            }
        }
        Ok(Self {
            entries: hostmap.index().clone(),
            pools,
        })
    }

    /// The pool (index into the snapshot's `pools`) `host` is mapped to.
    pub fn get(&self, host: &str) -> Option<usize> {
        let n = *self.entries.get(host)?;
        self.pools
            .get(n as usize)
            .copied()
            .flatten()
            .map(|i| i as usize)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Snapshot {
    /// This snapshot with another host map (and generations): the config's
    /// compiled parts are shared or copied as they are, so the cost does not
    /// grow with the host map.
    pub fn with_hostmap(
        &self,
        hostmap: &HostMap,
        generations: Generations,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            generations,
            config: self.config.clone(),
            router: self.router.clone(),
            hsts: self.hsts.clone(),
            hostmap: HostIndex::new(hostmap, &self.config)?,
            pools: self.pools.clone(),
            tls: self.tls.clone(),
            certs: self.certs.clone(),
            managed: Arc::clone(&self.managed),
            client: self.client.clone(),
        })
    }

    /// Checks and compiles `config`; relative certificate paths are taken from
    /// `base`.
    pub fn build(
        config: Config,
        hostmap: &HostMap,
        sites: &Sites,
        base: &Path,
        tls_state: &TlsState,
        generations: Generations,
        upstreams: &Resolving<'_>,
    ) -> Result<Self, ConfigError> {
        let now_ms = crate::clock::now_ms();
        config.validate()?;
        let (tls, certs) = if config.certificates.is_empty() && config.acme.is_none() {
            (None, None)
        } else {
            let certs = Arc::new(crate::tls::load_certificates(
                &config.certificates,
                base,
                &tls_state.managed,
            )?);
            let tls = crate::tls::server_config(
                Arc::clone(&certs),
                config
                    .tls
                    .session_tickets
                    .then(|| Arc::clone(&tls_state.tickets)),
            )
            .map_err(|e| ConfigError::new("certificates", e))?;
            (Some(tls), Some(certs))
        };
        let pools = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| build_pool(i, p, upstreams, now_ms))
            .collect::<Result<Vec<_>, _>>()?;
        let mut router = Router::new();
        for (i, r) in config.routes.iter().enumerate() {
            let host = r.host.as_deref().map(HostPattern::parse).transpose();
            let host = host.map_err(|e| ConfigError::new(format!("routes[{i}].host"), e))?;
            let action = compile_action(i, &r.action, &config.pools, sites)?;
            let hsts = r.hsts.as_ref().map(hsts_value).transpose()?;
            router.insert(
                host.as_ref(),
                &r.path_prefix,
                CompiledRoute { action, hsts },
            );
        }
        let hsts = config.tls.hsts.as_ref().map(hsts_value).transpose()?;
        let compiled = HostIndex::new(hostmap, &config)?;
        let client = ClientLimits {
            handshake_timeout: ms(config.tls.handshake_timeout_ms),
            header_timeout: ms(config.client.header_timeout_ms),
            idle_timeout: ms(config.client.idle_timeout_ms),
            shutdown_grace: ms(config.client.shutdown_grace_ms),
            max_connections: match config.client.max_connections {
                0 => None,
                n => Some(n as usize),
            },
            max_connections_per_address: config.client.max_connections_per_address as usize,
        };
        Ok(Self {
            generations,
            config,
            router,
            hsts,
            hostmap: compiled,
            pools,
            tls,
            certs,
            managed: Arc::clone(&tls_state.managed),
            client,
        })
    }
}

/// What every snapshot's TLS shares with the others, for the process's
/// life: the session-ticket keys and the ACME certificates.
#[derive(Debug, Clone)]
pub struct TlsState {
    pub tickets: Arc<TicketKeys>,
    pub managed: Arc<crate::tls::managed::Managed>,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn build_pool(
    i: usize,
    p: &config::Pool,
    upstreams: &Resolving<'_>,
    now_ms: u64,
) -> Result<Pool, ConfigError> {
    let name: Arc<str> = Arc::from(p.name.as_str());
    let checked = p.health_check.is_some();
    let mut backends = Vec::with_capacity(p.backends.len());
    // Weights as configured, draining or not (for the hash table).
    let mut configured = Vec::with_capacity(p.backends.len());
    for (j, b) in p.backends.iter().enumerate() {
        let addrs = upstreams.addresses(&b.address).ok_or_else(|| {
            ConfigError::new(
                format!("pools[{i}].backends[{j}].address"),
                "not resolved yet",
            )
        })?;
        let config_address: Arc<str> = Arc::from(b.address.as_str());
        let draining = b.state == config::BackendState::Draining;
        for addr in addrs {
            // A name may resolve to an address another entry lists too: the
            // first entry keeps it.
            if backends.iter().any(|x: &Backend| x.addr == addr) {
                continue;
            }
            configured.push(b.weight);
            backends.push(Backend {
                name: Arc::from(addr.to_string()),
                config_address: Arc::clone(&config_address),
                addr,
                weight: if draining { 0 } else { b.weight },
                draining,
                shared: upstreams.upstreams.state_for(&name, addr, checked, now_ms),
            });
        }
    }
    let balance = match &p.balance {
        config::Balance::RoundRobin => Balance::RoundRobin,
        config::Balance::LeastRequest => Balance::LeastRequest,
        config::Balance::PeakEwma => Balance::PeakEwma,
        config::Balance::ConsistentHash(key) => {
            let names: Vec<&str> = backends.iter().map(|b| &*b.name).collect();
            // The table weighs backends as configured, draining or not, so
            // that a drain moves no other backend's keys.
            Balance::Hash {
                key: key.clone(),
                table: Arc::new(Maglev::new(&names, &configured)),
            }
        }
    };
    let o = &p.outlier_detection;
    Ok(Pool {
        name,
        backends,
        balance,
        connect_timeout: ms(p.timeouts.connect_ms),
        response_header_timeout: ms(p.timeouts.response_header_ms),
        idle_timeout: ms(p.timeouts.idle_ms),
        max_idle_per_backend: p.max_idle_per_backend,
        outlier: outlier::Policy {
            consecutive: o.consecutive_failures,
            base_ms: o.ejection_ms,
            max_ms: o.max_ejection_ms,
            max_percent: o.max_ejected_percent,
        },
        count_5xx: o.count_5xx,
        slow_start_ms: p.slow_start_ms,
        panic_threshold_percent: p.panic_threshold_percent,
        retries: p.retries.clone(),
        limits: p.limits.clone(),
        drain_timeout_ms: p.drain_timeout_ms,
        proxy_protocol: p.proxy_protocol.is_some(),
        health_check: p.health_check.clone(),
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

fn hsts_value(h: &config::Hsts) -> Result<HeaderValue, ConfigError> {
    HeaderValue::from_str(&h.value()).map_err(|e| ConfigError::new("hsts", e))
}

/// What every thread shares. The control plane writes, cores read.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub tickets: Arc<TicketKeys>,
    /// Certificates obtained by ACME, and challenge answers.
    pub managed: Arc<crate::tls::managed::Managed>,
    /// Set by the control plane on SIGTERM/SIGINT or a shutdown request; cores
    /// poll it.
    pub shutting_down: AtomicBool,
    /// Set by the control plane during a planned failover handover
    /// (`failover.handover_hold_ms`): cores drop new connections' SYNs on
    /// their listeners until it is cleared.
    pub hold_accepts: AtomicBool,
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
    /// Client connections open, on all cores (`client.max_connections`).
    pub open_connections: std::sync::atomic::AtomicUsize,
    /// `client.max_connections` when it is 0: what the open-files limit
    /// leaves room for.
    pub auto_max_connections: usize,
    /// VRRP, when the config has a `failover` section.
    pub failover: crate::failover::Slot,
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

/// A snapshot of a config with one plain-HTTP listener and `pools`, built
/// through `upstreams` (and taken in by it, as a published one would be).
#[cfg(test)]
pub(crate) fn for_test(pools: serde_json::Value, upstreams: &mut Upstreams) -> Snapshot {
    let config = Config::parse(
        serde_json::json!({
            "listeners": [{"name": "h", "address": "127.0.0.1:0", "protocol": "http"}],
            "pools": pools,
        })
        .to_string()
        .as_bytes(),
    )
    .expect("a valid test config");
    let tls = TlsState {
        tickets: TicketKeys::new(3600).expect("ticket keys"),
        managed: crate::tls::managed::Managed::new(),
    };
    let snap = Snapshot::build(
        config,
        &HostMap::default(),
        &Sites::new(),
        Path::new("."),
        &tls,
        Generations::default(),
        &Resolving {
            upstreams,
            extra: &HashMap::new(),
        },
    )
    .expect("a test snapshot");
    upstreams.commit(&snap, crate::clock::now_ms());
    snap
}
