//! Backend names: `host:port` entries resolved to all their A and AAAA
//! addresses, SRV names (`_service._tcp.name`) to their targets and ports,
//! by the name servers of the config's `dns` section (or the system's).
//!
//! Resolution runs on the control thread's runtime and never blocks it or a
//! core: a config change with a new name awaits its lookup before it is
//! prepared; [`watch`] resolves every name again each `dns.interval_ms`
//! (sooner while one of its addresses is down, or after a failed lookup)
//! and publishes a new snapshot when an answer changed. A failed lookup
//! keeps the addresses last known.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

use crate::config::{is_srv_name, Config, ConfigError, DnsSettings};
use crate::snapshot::Upstreams;

/// The addresses each name resolved to.
pub type Resolved = HashMap<String, Vec<SocketAddr>>;

/// A resolver for one `dns` section.
pub struct Resolver {
    inner: TokioResolver,
    settings: DnsSettings,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `settings.servers`, or the system's name servers.
    pub fn new(settings: &DnsSettings) -> Result<Self, String> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if settings.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                format!(
                    "no name servers: dns.servers is empty and the system's cannot be read ({e})"
                )
            })?
        } else {
            let mut group = NameServerConfigGroup::new();
            for s in &settings.servers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[s.ip()],
                    s.port(),
                    true,
                ));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                provider,
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = Duration::from_millis(settings.timeout_ms);
        opts.attempts = 2;
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        // Answers are looked up again on the interval; a cache would only
        // hide a change for as long as its TTL.
        opts.cache_size = 0;
        Ok(Self {
            inner: builder.build(),
            settings: settings.clone(),
        })
    }

    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// The addresses `address` (a config backend's) stands for.
    pub async fn resolve(&self, address: &str) -> Result<Vec<SocketAddr>, String> {
        if let Ok(a) = address.parse::<SocketAddr>() {
            return Ok(vec![a]);
        }
        let mut out = Vec::new();
        if is_srv_name(address) {
            let srv = self
                .inner
                .srv_lookup(address)
                .await
                .map_err(|e| e.to_string())?;
            for record in srv.iter() {
                let ips = self
                    .inner
                    .lookup_ip(record.target().clone())
                    .await
                    .map_err(|e| format!("{}: {e}", record.target()))?;
                out.extend(ips.iter().map(|ip| SocketAddr::new(ip, record.port())));
            }
        } else {
            let (host, port) = address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("{address}: expected host:port"))?;
            let ips = self
                .inner
                .lookup_ip(host)
                .await
                .map_err(|e| e.to_string())?;
            out.extend(ips.iter().map(|ip| SocketAddr::new(ip, port)));
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("resolves to no address".to_owned());
        }
        Ok(out)
    }
}

/// The names among `config`'s backends, with where each first appears.
fn names(config: &Config) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, p) in config.pools.iter().enumerate() {
        for (j, b) in p.backends.iter().enumerate() {
            if b.address.parse::<SocketAddr>().is_err() && !out.iter().any(|(a, _)| *a == b.address)
            {
                out.push((
                    b.address.clone(),
                    format!("pools[{i}].backends[{j}].address"),
                ));
            }
        }
    }
    out
}

/// The names of `config` (with the field where each first appears) that
/// `upstreams` has no addresses for.
pub fn unresolved(config: &Config, upstreams: &Upstreams) -> Vec<(String, String)> {
    names(config)
        .into_iter()
        .filter(|(name, _)| upstreams.addresses(name).is_none())
        .collect()
}

/// Resolves `names`: each must resolve, or the change is refused naming
/// its field.
pub async fn resolve_all(
    resolver: &Resolver,
    names: Vec<(String, String)>,
) -> Result<Resolved, ConfigError> {
    let mut out = Resolved::new();
    for (name, field) in names {
        let addrs = resolver
            .resolve(&name)
            .await
            .map_err(|e| ConfigError::new(field, format!("cannot resolve: {e}")))?;
        out.insert(name, addrs);
    }
    Ok(out)
}

/// Resolves every name of `config`, for a start. With `strict` (a config
/// given to start with) a name that does not resolve stops the start;
/// otherwise (the persisted config, at a restart) it starts with no
/// addresses, and [`watch`] keeps trying.
pub fn resolve_at_start(config: &Config, strict: bool) -> Result<Resolved, ConfigError> {
    let wanted = names(config);
    if wanted.is_empty() {
        return Ok(Resolved::new());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConfigError::new("dns", e))?;
    runtime.block_on(async {
        let resolver = Resolver::new(&config.dns).map_err(|e| ConfigError::new("dns", e))?;
        let mut out = Resolved::new();
        for (name, field) in wanted {
            match resolver.resolve(&name).await {
                Ok(addrs) => {
                    out.insert(name, addrs);
                }
                Err(e) if strict => {
                    return Err(ConfigError::new(field, format!("cannot resolve: {e}")))
                }
                Err(e) => {
                    tracing::error!("{field}: cannot resolve {name} ({e}); retrying");
                    out.insert(name, Vec::new());
                }
            }
        }
        Ok(out)
    })
}

/// When each name is due to be resolved again.
#[derive(Debug, Default)]
pub struct Schedule {
    due_ms: HashMap<String, u64>,
    /// Failed lookups in a row, for the back-off.
    failures: HashMap<String, u32>,
}

/// The shortest wait before a name is looked up again after a failure (it
/// doubles with each, up to the interval), and while one of its addresses
/// is down.
pub const RETRY_MS: u64 = 1_000;

impl Schedule {
    /// Whether `name` should be looked up at `now_ms`; `unwell` says that one
    /// of its addresses is down or ejected (it may have moved).
    pub fn due(&self, name: &str, now_ms: u64, unwell: bool, last_ms: u64) -> bool {
        match self.due_ms.get(name) {
            None => true,
            Some(&due) => now_ms >= due || (unwell && now_ms >= last_ms + RETRY_MS),
        }
    }

    /// A lookup of `name` at `now_ms` succeeded or failed.
    pub fn done(&mut self, name: &str, now_ms: u64, ok: bool, interval_ms: u64) {
        let wait = if ok {
            self.failures.remove(name);
            interval_ms
        } else {
            let n = self.failures.entry(name.to_owned()).or_default();
            *n += 1;
            (RETRY_MS << (*n - 1).min(16)).min(interval_ms)
        };
        self.due_ms.insert(name.to_owned(), now_ms + wait);
    }

    /// Forgets names no longer in the config.
    pub fn keep(&mut self, names: &[String]) {
        self.due_ms.retain(|n, _| names.contains(n));
        self.failures.retain(|n, _| names.contains(n));
    }
}

/// How often [`watch`] looks at which names are due.
const TICK: Duration = Duration::from_millis(250);

/// Resolves the config's names again, forever, on the control thread:
/// every [`TICK`] it looks up the names that are due and publishes a new
/// snapshot when any answer changed.
pub async fn watch(control: std::rc::Rc<std::cell::RefCell<crate::control::Control>>) {
    let mut schedule = Schedule::default();
    let mut last_ms: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (config, unwell) = {
            let c = control.borrow();
            (c.config.clone(), unwell_names(&c.shared.snapshot.load()))
        };
        let wanted = names(&config);
        let all: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
        schedule.keep(&all);
        last_ms.retain(|n, _| all.contains(n));
        if wanted.is_empty() {
            continue;
        }
        let resolver = match control.borrow_mut().resolver(&config.dns) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("dns: {e}");
                continue;
            }
        };
        let mut changed = Resolved::new();
        for (name, field) in wanted {
            let now = crate::clock::now_ms();
            let last = last_ms.get(&name).copied().unwrap_or(0);
            if !schedule.due(&name, now, unwell.contains(&name), last) {
                continue;
            }
            let result = resolver.resolve(&name).await;
            let now = crate::clock::now_ms();
            last_ms.insert(name.clone(), now);
            schedule.done(&name, now, result.is_ok(), config.dns.interval_ms);
            match result {
                Ok(addrs) => {
                    let known = control.borrow().upstreams.resolved.get(&name).cloned();
                    if known.as_ref() != Some(&addrs) {
                        tracing::info!("{field}: {name} now resolves to {addrs:?} (was {known:?})");
                        changed.insert(name, addrs);
                    }
                }
                Err(e) => tracing::warn!(
                    "{field}: cannot resolve {name} ({e}); keeping the addresses last known"
                ),
            }
        }
        if !changed.is_empty() {
            if let Err(e) = control.borrow_mut().apply_resolved(changed) {
                tracing::error!("could not apply new backend addresses: {e}");
            }
        }
    }
}

/// The config names one of whose addresses is down or ejected now.
fn unwell_names(snap: &crate::snapshot::Snapshot) -> Vec<String> {
    let now = crate::clock::now_ms();
    snap.pools
        .iter()
        .flat_map(|p| p.backends.iter())
        .filter(|b| !b.shared.serves(now))
        .map(|b| b.config_address.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_looked_up_on_the_interval_and_sooner_when_unwell_or_failing() {
        let mut s = Schedule::default();
        assert!(s.due("a", 0, false, 0), "never looked up");
        s.done("a", 0, true, 5_000);
        assert!(!s.due("a", 4_999, false, 0));
        assert!(s.due("a", 5_000, false, 0));
        assert!(!s.due("a", 500, true, 0), "unwell, but looked up 0.5 s ago");
        assert!(s.due("a", 1_000, true, 0), "unwell: again after a second");
        // Failures back off 1, 2, 4 s..., never beyond the interval.
        let mut now = 10_000;
        let mut waits = Vec::new();
        for _ in 0..5 {
            s.done("a", now, false, 5_000);
            let next = (now..now + 10_000)
                .find(|&t| s.due("a", t, false, 0))
                .unwrap();
            waits.push(next - now);
            now = next;
        }
        assert_eq!(waits, [1_000, 2_000, 4_000, 5_000, 5_000]);
        s.done("a", now, true, 5_000);
        s.keep(&[]);
        assert!(s.due("a", now, false, 0), "forgotten");
    }
}
