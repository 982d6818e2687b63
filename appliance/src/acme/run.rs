//! The ACME driver on the control thread: follows the config and the host
//! map for the names wanted, starts the orders the [`Schedule`] says are
//! due (only on the pair's master, or on an appliance without failover),
//! runs each [`Order`] over HTTPS to the CA ([`super::http`]), provisions
//! its challenges for the data plane, and keeps what it gets in its shard
//! (a blob named by the catalog item `certs/XX`, which replicates it to the
//! peers) before the cores serve it. It also asks a CA that offers them for
//! renewal windows ([`super::ari`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use edgebox_storage::replication::Value;
use serde::{Deserialize, Serialize};

use super::http::{client_tls, send};
use super::jws::AccountKey;
use super::order::{ChallengeKind, Method, Order, Problem, Request, Session, Step};
use super::schedule::Schedule;
use crate::control::Control;
use crate::tls::managed::{alpn_challenge_cert, Entry, Managed};
use rustls_pki_types::pem::PemObject;

/// Orders running at once (one until the account exists).
const CONCURRENT: usize = 4;

/// The control plane's ACME state.
#[derive(Debug)]
pub struct Manager {
    pub schedule: Schedule,
    /// The account for the configured directory, once loaded.
    account: Option<Arc<Account>>,
    /// The config and host-map generations the wanted names were taken at.
    wanted_at: Option<(u64, u64)>,
    /// Hosts of the host map changed one by one since then (`None`: the
    /// map was replaced whole, look at all of it).
    changed_hosts: Option<BTreeSet<String>>,
    pub running: usize,
    pub issued: u64,
    pub failed: u64,
    /// Why this appliance does not order now, if it does not.
    pub idle_reason: Option<&'static str>,
    /// Shards whose stored blob lacks what is served here (a peer's
    /// version replaced ours): written again on the next tick.
    dirty: BTreeSet<u8>,
    /// When to ask the CA for each certificate's renewal window (RFC
    /// 9773), if it offers them: (Unix ms, name), and by name.
    ari: BTreeSet<(u64, String)>,
    ari_next: std::collections::HashMap<String, u64>,
    /// A directory fetch (for `renewalInfo`) is out.
    fetching_directory: bool,
}

impl Default for Manager {
    fn default() -> Self {
        Self {
            schedule: Schedule::new(100),
            account: None,
            wanted_at: None,
            changed_hosts: Some(BTreeSet::new()),
            running: 0,
            issued: 0,
            failed: 0,
            idle_reason: Some("no acme section"),
            dirty: BTreeSet::new(),
            ari: BTreeSet::new(),
            ari_next: Default::default(),
            fetching_directory: false,
        }
    }
}

impl Manager {
    /// Asks for `name`'s renewal window at `at_ms` (replacing the time it
    /// had).
    fn ari_at(&mut self, name: &str, at_ms: u64) {
        if let Some(old) = self.ari_next.insert(name.to_owned(), at_ms) {
            self.ari.remove(&(old, name.to_owned()));
        }
        self.ari.insert((at_ms, name.to_owned()));
    }

    /// Up to `n` names whose renewal window is due for asking.
    fn ari_due(&mut self, now_ms: u64, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.ari.first() {
                Some((at, _)) if *at <= now_ms => {}
                _ => break,
            }
            if let Some((_, name)) = self.ari.pop_first() {
                self.ari_next.remove(&name);
                out.push(name);
            }
        }
        out
    }

    /// Host-map entries changed (set or deleted) one by one.
    pub fn hosts_changed<'a>(&mut self, hosts: impl IntoIterator<Item = &'a str>) {
        if let Some(changed) = &mut self.changed_hosts {
            changed.extend(hosts.into_iter().map(str::to_owned));
        }
    }

    /// The host map was replaced whole.
    pub fn hostmap_replaced(&mut self) {
        self.changed_hosts = None;
    }

    /// The ACME families of `/metrics`: bounded, whatever the number of
    /// names (one series per state and result).
    pub fn render_prometheus(&self, managed: &Managed, now_s: i64, o: &mut String) {
        use crate::metrics::prometheus::family;
        use std::fmt::Write;
        family(o, "edgebox_acme_names", "gauge", "Names edgebox obtains certificates for, by ACME state (failed: the last order failed; a certificate held before is still served).");
        for (state, n) in self.schedule.counts() {
            let _ = writeln!(o, "edgebox_acme_names{{state=\"{state}\"}} {n}");
        }
        family(
            o,
            "edgebox_acme_orders_total",
            "counter",
            "ACME orders finished since start, by result.",
        );
        let _ = writeln!(
            o,
            "edgebox_acme_orders_total{{result=\"issued\"}} {}",
            self.issued
        );
        let _ = writeln!(
            o,
            "edgebox_acme_orders_total{{result=\"failed\"}} {}",
            self.failed
        );
        let all = managed.all();
        family(
            o,
            "edgebox_acme_certificates",
            "gauge",
            "Certificates obtained by ACME (here or by a peer) being served.",
        );
        let _ = writeln!(o, "edgebox_acme_certificates {}", all.len());
        let soon = all
            .iter()
            .filter(|(_, s)| s.not_after - now_s < crate::metrics::state::SOON_S)
            .count();
        let expired = all.iter().filter(|(_, s)| s.not_after <= now_s).count();
        family(o, "edgebox_acme_certificates_expiring_soon", "gauge", "ACME certificates expiring within 14 days (renewal is due at two thirds of the lifetime, so these are renewals that keep failing), or expired.");
        let _ = writeln!(o, "edgebox_acme_certificates_expiring_soon {soon}");
        family(
            o,
            "edgebox_acme_certificates_expired",
            "gauge",
            "ACME certificates past their notAfter, still the only one held for their name.",
        );
        let _ = writeln!(o, "edgebox_acme_certificates_expired {expired}");
    }
}

struct Account {
    directory_url: String,
    key: AccountKey,
    session: Mutex<Session>,
    tls: Arc<rustls::ClientConfig>,
    /// The account URL as last stored in the catalog.
    stored_kid: Mutex<Option<String>>,
    /// Whether the account is in the catalog at all.
    saved: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("directory_url", &self.directory_url)
            .finish_non_exhaustive()
    }
}

/// The account as the catalog keeps it (a secret: replicated only over the
/// authenticated channel, stored 0600).
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory_url: String,
    /// PKCS#8, base64url.
    key: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Starts what is due, every second, for as long as the control thread runs.
pub async fn run(control: Rc<RefCell<Control>>) {
    let managed = Arc::clone(&control.borrow().shared.managed);
    let started = std::time::Instant::now();
    let preload = tokio::task::spawn_blocking(move || {
        managed.preload();
        managed.len()
    });
    if let Ok(n) = preload.await {
        if n > 0 {
            tracing::info!(
                certificates = n,
                took_ms = started.elapsed().as_millis() as u64,
                "acme: certificates read"
            );
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let due = control.borrow_mut().acme_due(wall_ms());
        for name in due {
            tokio::task::spawn_local(order_one(Rc::clone(&control), name));
        }
        ask_renewal_info(&control);
    }
}

/// Unix milliseconds now.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Control {
    /// Brings the wanted names up to date and takes the names due now.
    pub fn acme_due(&mut self, now_ms: u64) -> Vec<String> {
        for shard in std::mem::take(&mut self.acme.dirty) {
            if let Err(e) = self.acme_write_shard(shard, None) {
                tracing::error!("acme: could not write certificate shard {shard:02x}: {e}");
                self.acme.dirty.insert(shard);
            }
        }
        let Some(cfg) = self.config.acme.clone() else {
            if !self.acme.schedule.is_empty() {
                self.acme.schedule.want(&BTreeSet::new());
            }
            self.acme.idle_reason = Some("no acme section");
            // Looked at whole when a section comes: nothing to keep.
            self.acme.wanted_at = None;
            self.acme.changed_hosts = Some(BTreeSet::new());
            return Vec::new();
        };
        self.acme.schedule.per_hour = cfg.orders_per_hour;
        let at = (self.gens.config, self.gens.hostmap);
        let changed = self.acme.changed_hosts.replace(BTreeSet::new());
        let whole = self.acme.wanted_at.map(|(config, _)| config) != Some(at.0);
        if self.acme.wanted_at != Some(at) && !whole {
            if let Some(hosts) = changed {
                // Entries set or deleted one by one: only they are looked
                // at, so a change costs the same with a million shops.
                self.acme.wanted_at = Some(at);
                for host in hosts {
                    let wanted = cfg.names.contains(&host) || self.acme_wants_host(&cfg, &host);
                    if wanted && self.acme.schedule.add(&host) {
                        self.acme_found(&host);
                    } else if !wanted {
                        self.acme.schedule.remove(&host);
                    }
                }
            }
        }
        if self.acme.wanted_at != Some(at) {
            self.acme.wanted_at = Some(at);
            let names = self.acme_wanted(&cfg);
            let (added, removed) = self.acme.schedule.want(&names);
            if !added.is_empty() || removed > 0 {
                tracing::info!(
                    added = added.len(),
                    removed,
                    names = names.len(),
                    "acme: names to cover changed"
                );
            }
            // A name new to the schedule may have a certificate already
            // (kept from before, or a peer's).
            for name in added {
                self.acme_found(&name);
            }
        }
        self.acme.idle_reason = self.acme_idle_reason();
        if self.acme.idle_reason.is_some() {
            return Vec::new();
        }
        let limit = match &self.acme.account {
            Some(a) if lock(&a.session).kid.is_some() => CONCURRENT,
            _ => 1,
        };
        let mut due = Vec::new();
        while self.acme.running < limit {
            let Some(name) = self.acme.schedule.due(now_ms) else {
                break;
            };
            self.acme.running += 1;
            due.push(name);
        }
        due
    }

    /// The names a certificate is wanted for: those listed, and the host
    /// map's hosts that no configured certificate covers.
    fn acme_wanted(&self, cfg: &crate::config::acme::Acme) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = cfg.names.iter().cloned().collect();
        if cfg.hostmap {
            let snap = self.shared.snapshot.load();
            for (host, _) in self.hostmap.iter() {
                if wants_host(&snap, host) {
                    names.insert(host.to_owned());
                }
            }
        }
        names
    }

    /// Whether the host map's `host` (in it now) gets a certificate.
    fn acme_wants_host(&self, cfg: &crate::config::acme::Acme, host: &str) -> bool {
        cfg.hostmap
            && self.hostmap.get(host).is_some()
            && wants_host(&self.shared.snapshot.load(), host)
    }

    /// Why this appliance may not order now, if it may not.
    fn acme_idle_reason(&self) -> Option<&'static str> {
        idle_reason(
            self.stopping,
            self.config.failover.is_some(),
            self.shared.failover.status().map(|s| s.state),
        )
    }

    /// Writes shard `shard` as served here, with `new` (a certificate not
    /// served yet) in it: a blob, then the catalog item naming it (durable,
    /// and announced to the peers).
    fn acme_write_shard(&mut self, shard: u8, new: Option<(&str, &Entry)>) -> Result<(), String> {
        let held: Vec<_> = self
            .shared
            .managed
            .shard(shard)
            .into_iter()
            .filter(|(n, _)| new.is_none_or(|(name, _)| name != &**n))
            .collect();
        let bytes = super::shard::encode(held.iter().map(|(n, s)| (&**n, &s.entry)).chain(new));
        let hash = self
            .content
            .blobs()
            .put(&bytes)
            .map_err(|e| format!("could not store the certificate: {e}"))?;
        self.replica
            .local(&super::shard::key(shard), Value::Blob { hash });
        Ok(())
    }

    /// A name new to the schedule may have a certificate already (kept
    /// from before, or a peer's): it is renewed when due, not ordered.
    fn acme_found(&mut self, name: &str) {
        if let Some(stored) = self.shared.managed.get(name) {
            self.acme_held(name, &stored);
        }
    }

    fn acme_held(&mut self, name: &str, stored: &crate::tls::managed::Stored) {
        let (nb, na) = (secs_to_ms(stored.not_before), secs_to_ms(stored.not_after));
        self.acme.schedule.held(name, nb, na);
        // The CA's renewal window for it, if the CA offers them, soon.
        self.acme.ari_at(name, 0);
    }

    /// Serves a certificate (checked first when `check`), and renews it
    /// when due.
    fn acme_serve(&mut self, name: &str, entry: Entry, check: bool) -> Result<(u64, u64), String> {
        let stored = self.shared.managed.install(name, entry, check)?;
        self.acme_held(name, &stored);
        Ok((secs_to_ms(stored.not_before), secs_to_ms(stored.not_after)))
    }

    /// A peer's certificate shard. Each name keeps the certificate that
    /// expires last, ours or the shard's; what we hold that the shard lacks
    /// is written back, so both converge.
    pub fn apply_cert_shard(&mut self, shard: u8, value: &Value) -> Result<(), String> {
        let theirs = match value {
            Value::Blob { hash } => {
                let bytes = self
                    .content
                    .blobs()
                    .read_verified(hash)
                    .map_err(|e| e.to_string())?;
                super::shard::decode(shard, &bytes)?
            }
            Value::Deleted => BTreeMap::new(),
            _ => return Err("not a certificate shard".into()),
        };
        let mut ours_newer = false;
        for (name, entry) in theirs.iter() {
            let na = crate::tls::validity::not_after(&entry.leaf)
                .ok_or_else(|| format!("{name}: cannot read the certificate's validity"))?;
            match self.shared.managed.get(name) {
                Some(held) if held.not_after >= na => ours_newer |= held.entry.leaf != entry.leaf,
                _ => {
                    self.acme_serve(name, entry.clone(), true)?;
                }
            }
        }
        let held = self.shared.managed.shard(shard).len();
        if ours_newer || held > theirs.len() {
            self.acme.dirty.insert(shard);
        }
        Ok(())
    }

    /// Tells the data plane where the certificate shards are stored (at
    /// start): each is read when first needed, and all of them soon after
    /// the start by [`run`], off the data plane.
    pub fn open_acme_certs(&mut self) {
        let sources: Vec<(u8, edgebox_storage::Hash)> = self
            .replica
            .node
            .catalog
            .items()
            .filter_map(|i| match (super::shard::of_key(&i.key), &i.value) {
                (Some(shard), Value::Blob { hash }) => Some((shard, *hash)),
                _ => None,
            })
            .collect();
        if !sources.is_empty() {
            tracing::info!(shards = sources.len(), "acme: certificate shards found");
        }
        self.shared
            .managed
            .open(self.content.blobs().clone(), sources);
    }

    /// Writes the account's URL to the catalog once the CA has given it.
    fn acme_save_account(&mut self) {
        let Some(a) = self.acme.account.clone() else {
            return;
        };
        let kid = lock(&a.session).kid.clone();
        let saved = a.saved.load(std::sync::atomic::Ordering::Relaxed);
        if saved && *lock(&a.stored_kid) == kid {
            return;
        }
        let stored = StoredAccount {
            directory_url: a.directory_url.clone(),
            key: super::jws::b64(a.key.pkcs8()),
            kid: kid.clone(),
        };
        let hex = crate::admin::token::hex(
            serde_json::to_string(&stored)
                .unwrap_or_default()
                .as_bytes(),
        );
        self.replica.local(
            &super::account_key_name(&a.directory_url),
            Value::Secret { hex },
        );
        *lock(&a.stored_kid) = kid;
        a.saved.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The account for the configured directory: loaded from the catalog
    /// (made here or replicated), or made now.
    fn acme_account(&mut self) -> Result<Arc<Account>, Problem> {
        let cfg = self
            .config
            .acme
            .clone()
            .ok_or_else(|| Problem::client("the acme section was removed"))?;
        if let Some(a) = &self.acme.account {
            if a.directory_url == cfg.directory_url {
                return Ok(Arc::clone(a));
            }
        }
        let tls = client_tls(cfg.ca_file.as_deref())?;
        let item = self
            .replica
            .node
            .catalog
            .get(&super::account_key_name(&cfg.directory_url))
            .map(|i| i.value.clone());
        let stored = match item {
            Some(Value::Secret { hex }) => crate::admin::token::parse_hex_bytes(&hex)
                .and_then(|b| serde_json::from_slice::<StoredAccount>(&b).ok())
                .filter(|s| s.directory_url == cfg.directory_url),
            _ => None,
        };
        let from_catalog = stored.is_some();
        let (key, kid) = match stored {
            Some(s) => {
                let pkcs8 = super::decode_b64url(&s.key)
                    .ok_or_else(|| Problem::client("the stored account key is not base64url"))?;
                (
                    AccountKey::from_pkcs8(&pkcs8).map_err(Problem::client)?,
                    s.kid,
                )
            }
            None => (AccountKey::generate().map_err(Problem::client)?, None),
        };
        let eab = match &cfg.external_account {
            Some(e) => Some((
                e.key_id.clone(),
                super::decode_b64url(&e.hmac_key).ok_or_else(|| {
                    Problem::client("acme.external_account.hmac_key is not base64url")
                })?,
            )),
            None => None,
        };
        let account = Arc::new(Account {
            directory_url: cfg.directory_url.clone(),
            key,
            session: Mutex::new(Session {
                directory_url: cfg.directory_url.clone(),
                directory: None,
                kid: kid.clone(),
                contact: cfg.contact(),
                eab,
            }),
            tls,
            stored_kid: Mutex::new(kid),
            saved: std::sync::atomic::AtomicBool::new(from_catalog),
        });
        self.acme.account = Some(Arc::clone(&account));
        // A new key is kept before it is first used, so a crash after the
        // CA made the account does not lose it.
        self.acme_save_account();
        Ok(account)
    }
}

/// A host of the host map gets a certificate unless a configured one
/// covers it or it cannot have one (an IP address, one label).
fn wants_host(snap: &crate::snapshot::Snapshot, host: &str) -> bool {
    let covered = snap.certs.as_ref().is_some_and(|c| c.covers(host));
    !covered && crate::config::acme::check_dns_name(host).is_ok()
}

/// Why an appliance does not order: it is stopping, or it is in a pair
/// and not its master (the master holds the addresses the CA validates
/// against, and one orderer spends the CA's limits once). `state` is the
/// failover's, `None` while it has not started.
fn idle_reason(
    stopping: bool,
    failover: bool,
    state: Option<crate::failover::machine::State>,
) -> Option<&'static str> {
    if stopping {
        return Some("stopping");
    }
    match (failover, state) {
        (false, _) | (true, Some(crate::failover::machine::State::Master)) => None,
        (true, _) => Some("backup: the master orders"),
    }
}

/// The account's state is only touched on the control thread; the mutex
/// makes it `Send` for the thread's start, and is never contended.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn secs_to_ms(s: i64) -> u64 {
    u64::try_from(s).unwrap_or(0).saturating_mul(1000)
}

/// How many renewal windows are asked for a second at most (100 000
/// certificates asked every six hours are about 5 a second).
const ARI_PER_TICK: usize = 20;

/// Asks the CA for the renewal windows that are due, if it offers them
/// (its directory has `renewalInfo`); fetches the directory first if no
/// order has yet.
fn ask_renewal_info(control: &Rc<RefCell<Control>>) {
    let mut c = control.borrow_mut();
    if c.config.acme.is_none() || c.acme.idle_reason.is_some() || c.acme.fetching_directory {
        return;
    }
    let now = wall_ms();
    if c.acme.ari.first().is_none_or(|(at, _)| *at > now) {
        return;
    }
    let Ok(account) = c.acme_account() else {
        return;
    };
    let directory = lock(&account.session).directory.clone();
    let Some(directory) = directory else {
        c.acme.fetching_directory = true;
        drop(c);
        let control = Rc::clone(control);
        tokio::task::spawn_local(async move {
            let url = account.directory_url.clone();
            let req = Request {
                method: Method::Get,
                url,
                body: None,
            };
            match send(&account.tls, &req).await {
                Ok(r) if r.status == 200 => {
                    match serde_json::from_slice::<super::order::Directory>(&r.body) {
                        Ok(d) => lock(&account.session).directory = Some(d),
                        Err(e) => tracing::warn!("acme: the CA's directory: {e}"),
                    }
                }
                Ok(r) => tracing::warn!(status = r.status, "acme: the CA's directory"),
                Err(e) => tracing::warn!("acme: the CA's directory: {e}"),
            }
            control.borrow_mut().acme.fetching_directory = false;
        });
        return;
    };
    let due = c.acme.ari_due(now, ARI_PER_TICK);
    let Some(base) = directory.renewal_info else {
        // This CA offers no renewal windows: two thirds of the lifetime.
        return;
    };
    for name in due {
        let Some(stored) = c.shared.managed.get(&name) else {
            continue;
        };
        let Some(id) = super::ari::cert_id(&stored.entry.leaf) else {
            continue;
        };
        let url = format!("{}/{id}", base.trim_end_matches('/'));
        let (control, account) = (Rc::clone(control), Arc::clone(&account));
        tokio::task::spawn_local(async move {
            let req = Request {
                method: Method::Get,
                url,
                body: None,
            };
            let answer = send(&account.tls, &req).await;
            let mut c = control.borrow_mut();
            let retry = match answer {
                Ok(r) if r.status == 200 => match super::ari::parse(&r.body) {
                    Ok(w) => {
                        let at = super::ari::pick(w, random_u64());
                        if c.acme.schedule.suggest(&name, at) {
                            tracing::info!(
                                name,
                                renew_at_s = at / 1000,
                                "acme: the CA's renewal window moves the renewal"
                            );
                        }
                        r.retry_after
                    }
                    Err(e) => {
                        tracing::warn!(name, "acme: renewal information: {e}");
                        None
                    }
                },
                Ok(r) => {
                    tracing::debug!(name, status = r.status, "acme: no renewal information");
                    None
                }
                Err(e) => {
                    tracing::debug!(name, "acme: renewal information: {e}");
                    None
                }
            };
            if c.acme.schedule.get(&name).is_some() {
                c.acme
                    .ari_at(&name, wall_ms() + super::ari::next_poll_ms(retry));
            }
        });
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Orders a certificate for `name`, and reports to the schedule.
async fn order_one(control: Rc<RefCell<Control>>, name: String) {
    let result = issue(&control, &name).await;
    let mut c = control.borrow_mut();
    c.acme.running = c.acme.running.saturating_sub(1);
    c.acme_save_account();
    let now = wall_ms();
    match result {
        Ok((nb, na)) => {
            c.acme.issued += 1;
            tracing::info!(
                name,
                not_after = na / 1000,
                "acme: certificate issued and served"
            );
            c.acme.schedule.finished(&name, Ok((nb, na)), now);
        }
        Err(p) => {
            c.acme.failed += 1;
            tracing::warn!(name, "acme: order failed: {p}");
            c.acme
                .schedule
                .finished(&name, Err((p.to_string(), p.retry_after)), now);
        }
    }
}

async fn issue(control: &Rc<RefCell<Control>>, name: &str) -> Result<(u64, u64), Problem> {
    let (account, kinds, managed) = {
        let mut c = control.borrow_mut();
        let account = c.acme_account()?;
        let kinds = c
            .config
            .acme
            .as_ref()
            .map(|a| a.challenges.clone())
            .unwrap_or_default();
        (account, kinds, Arc::clone(&c.shared.managed))
    };
    let key = rcgen::KeyPair::generate().map_err(|e| Problem::client(e.to_string()))?;
    let csr = rcgen::CertificateParams::new(vec![name.to_owned()])
        .and_then(|p| p.serialize_request(&key))
        .map_err(|e| Problem::client(format!("cannot make the certificate request: {e}")))?;
    let mut order = Order::new(name, &kinds, csr.der().to_vec());
    let outcome = drive(&mut order, &account, &managed).await;
    for c in order.provisioned() {
        match c.kind {
            ChallengeKind::Http01 => managed.remove_http_challenge(&c.token),
            ChallengeKind::TlsAlpn01 => managed.remove_alpn_challenge(&c.name),
        }
    }
    let chain_pem = outcome?;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::client(format!("the CA's certificate is not PEM: {e}")))?;
    let key_der =
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(Problem::client)?;
    let entry = Entry::new(chain, key_der).map_err(Problem::client)?;
    crate::tls::validity::validity(&entry.leaf)
        .ok_or_else(|| Problem::client("cannot read the issued certificate's dates"))?;
    // Kept, then served: a certificate served here is always one a restart
    // finds again.
    let mut c = control.borrow_mut();
    c.acme_write_shard(super::shard::shard_of(name), Some((name, &entry)))
        .map_err(Problem::client)?;
    c.acme_serve(name, entry, true).map_err(Problem::client)
}

async fn drive(order: &mut Order, account: &Account, managed: &Managed) -> Result<String, Problem> {
    loop {
        let step = order.next(&lock(&account.session), &account.key);
        match step {
            Step::Send(req) => {
                let r = send(&account.tls, &req).await?;
                order.receive(&mut lock(&account.session), &account.key, r);
            }
            Step::Wait(d) => tokio::time::sleep(d).await,
            Step::Provision(c) => match c.kind {
                ChallengeKind::Http01 => managed.add_http_challenge(&c.token, &c.key_authorization),
                ChallengeKind::TlsAlpn01 => {
                    let cert = alpn_challenge_cert(&c.name, &c.key_authorization)
                        .map_err(Problem::client)?;
                    managed.add_alpn_challenge(&c.name, Arc::new(cert));
                }
            },
            Step::Done(pem) => return Ok(pem),
            Step::Failed(p) => return Err(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::machine::State;

    #[test]
    fn in_a_pair_only_the_master_orders() {
        assert_eq!(
            idle_reason(false, false, None),
            None,
            "on its own it orders"
        );
        assert_eq!(idle_reason(false, true, Some(State::Master)), None);
        for not_master in [None, Some(State::Initialize), Some(State::Backup)] {
            assert_eq!(
                idle_reason(false, true, not_master),
                Some("backup: the master orders")
            );
        }
        assert_eq!(
            idle_reason(true, true, Some(State::Master)),
            Some("stopping")
        );
        assert_eq!(idle_reason(true, false, None), Some("stopping"));
    }
}
