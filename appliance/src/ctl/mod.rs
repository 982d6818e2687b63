//! `edgebox ctl`: the admin API from the command line.
//!
//! Address, token and trust come from flags or the environment
//! (`EDGEBOX_ADMIN`, `EDGEBOX_TOKEN`, `EDGEBOX_ADMIN_CERT`). Output is a
//! human table or document by default and the API's JSON with `--json`.

pub mod client;

use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};

use client::Trust;
pub use client::{Client, CtlError, ReqBody};

/// How to reach and trust the admin API (shared by `ctl` and `publish`).
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The admin API.
    #[arg(long, env = "EDGEBOX_ADMIN", default_value = "https://127.0.0.1:9443")]
    admin: String,
    /// The admin token (shown once at the appliance's first start).
    #[arg(long, env = "EDGEBOX_TOKEN", hide_env_values = true)]
    token: String,
    /// The admin API's certificate, pinned (default: `<data>/tls/admin.crt`).
    #[arg(long, env = "EDGEBOX_ADMIN_CERT")]
    admin_cert: Option<PathBuf>,
    /// Accept any admin certificate (only for a first look).
    #[arg(long, conflicts_with = "admin_cert")]
    insecure: bool,
}

impl AdminArgs {
    /// A client for the admin API; `data` is where the admin certificate is
    /// looked for by default.
    pub fn client(&self, data: &std::path::Path) -> Result<Client, CtlError> {
        let trust = if self.insecure {
            Trust::Insecure
        } else {
            let cert = self
                .admin_cert
                .clone()
                .unwrap_or_else(|| data.join("tls/admin.crt"));
            client::pinned(&cert).map_err(|e| {
                CtlError::Usage(format!(
                    "{e}\n(give the admin certificate with --admin-cert or EDGEBOX_ADMIN_CERT, or --insecure)"
                ))
            })?
        };
        Client::new(&self.admin, self.token.clone(), trust)
    }
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    conn: AdminArgs,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Version, uptime, generations, per-core load.
    Status,
    /// The whole config document (default: print it).
    Config {
        #[command(subcommand)]
        action: Option<DocAction>,
    },
    /// The listeners, a JSON array (default: print them).
    Listeners {
        #[command(subcommand)]
        action: Option<DocAction>,
    },
    /// The routes, a JSON array (default: print them).
    Routes {
        #[command(subcommand)]
        action: Option<DocAction>,
    },
    /// Pools of backends (default: list them).
    Pools {
        #[command(subcommand)]
        action: Option<PoolAction>,
    },
    /// One backend of a pool.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// TLS certificates; private keys are never shown (default: list them).
    Certs {
        #[command(subcommand)]
        action: Option<CertAction>,
    },
    /// Certificates obtained by ACME: each name's state, expiry, issuer and
    /// last error (default: list them).
    Acme {
        #[command(subcommand)]
        action: Option<AcmeAction>,
    },
    /// The host → pool map.
    Hostmap {
        #[command(subcommand)]
        action: HostmapAction,
    },
    /// Published static sites (default: list them).
    Sites {
        #[command(subcommand)]
        action: Option<SiteAction>,
    },
    /// The content store: garbage collection and scrubbing.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Replication peers: state, lag, bytes, errors.
    Peers,
    /// The active-backup pair (default: show this appliance's state).
    Failover {
        #[command(subcommand)]
        action: Option<FailoverAction>,
    },
    /// Prometheus metrics.
    Metrics,
    /// Recent log events.
    Logs {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The admin token.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The boot slots and their versions; with FILE, install that update
    /// (from `edgebox-image build`) into the inactive slot, to boot on trial
    /// at the next reboot.
    Update {
        /// The update file (`edgebox.update` beside the image).
        file: Option<PathBuf>,
        /// Reboot into it once it is written.
        #[arg(long, requires = "file")]
        reboot: bool,
        /// Install an update that writes a data format this version cannot
        /// read (so it cannot be rolled back).
        #[arg(long, requires = "file")]
        accept_no_rollback: bool,
    },
    /// Stop serving (requests in flight finish first).
    Shutdown,
    /// Reboot the appliance (refused with 409 where edgebox is not PID 1).
    Reboot,
    /// Power the appliance off (refused with 409 where edgebox is not PID 1).
    Poweroff,
}

#[derive(Debug, Subcommand)]
enum DocAction {
    /// Print it.
    Get,
    /// Replace it with a JSON file (`-` for stdin).
    Put {
        file: PathBuf,
        /// Only if it is still at this ETag (from `get --json` output).
        #[arg(long)]
        if_match: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PoolAction {
    /// Every pool with its backends, weights and states.
    List,
    /// One pool as JSON.
    Get { name: String },
    /// One pool's backends as they are now: health, ejections, load, latency.
    Show { name: String },
    /// Create or replace a pool from a JSON file.
    Put { name: String, file: PathBuf },
    /// Remove a pool (refused while a route or the host map uses it).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum BackendAction {
    /// Add a backend (HOST:PORT) to a pool.
    Add {
        pool: String,
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend from a pool at once (drain it first for no errors).
    Remove { pool: String, address: String },
    /// No new requests; those in flight finish.
    Drain {
        pool: String,
        address: String,
        /// Wait until nothing is in flight to it (nor a WebSocket open).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Back into rotation.
    Enable { pool: String, address: String },
    /// Set a backend's share of new requests (0 sends none).
    Weight {
        pool: String,
        address: String,
        weight: u32,
    },
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// Every certificate with the names it serves.
    List,
    /// Upload (or replace) a certificate and its key.
    Put {
        name: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Names it is chosen for (default: those in the certificate).
        #[arg(long = "for")]
        names: Vec<String>,
        /// Serve it when no name matches.
        #[arg(long)]
        default: bool,
    },
    /// Remove a certificate and its key.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum AcmeAction {
    /// Every managed name with its certificate and ACME state.
    List,
    /// Order a new certificate for a name now (within the hourly budget).
    Renew { name: String },
}

#[derive(Debug, Subcommand)]
enum HostmapAction {
    /// Replace the whole map with an NDJSON file (`{"host":…,"pool":…}` a line).
    Import { file: PathBuf },
    /// Print the whole map as NDJSON.
    Export,
    /// The pool one host is mapped to.
    Get { host: String },
    /// Map one host to a pool.
    Set { host: String, pool: String },
    /// Remove one host from the map.
    Delete { host: String },
}

#[derive(Debug, Subcommand)]
enum SiteAction {
    /// Every site with its generation and kept generations.
    List,
    /// One site as JSON: its generation, manifest and history.
    Get { site: String },
    /// Serve a kept earlier generation again.
    Rollback { site: String, generation: u64 },
    /// Stop serving a site.
    Delete { site: String },
}

#[derive(Debug, Subcommand)]
enum StoreAction {
    /// Remove blobs no kept generation needs (older than the grace period).
    Gc {
        #[arg(long, default_value_t = 3600)]
        grace_s: u64,
    },
    /// Re-hash every blob; corrupt ones are quarantined and reported.
    Scrub,
}

#[derive(Debug, Subcommand)]
enum FailoverAction {
    /// State, master, priority and its reasons, recent transitions.
    Status,
    /// Hand the virtual addresses to the peer, make-before-break; returns
    /// once the peer holds them (this appliance then stays backup).
    Release {
        /// How long to wait for the peer, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        wait_ms: u64,
    },
    /// End a release: advertise the configured priority again.
    Reclaim,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Replace the token; prints the new one (the old one stops working).
    Rotate,
}

/// Runs one `edgebox ctl` command; `data` is where the admin certificate is
/// looked for by default.
pub fn run(args: CtlArgs, data: PathBuf) -> Result<(), CtlError> {
    let client = args.conn.client(&data)?;
    let json_out = args.json;
    let get = |path: &str| client.send(Method::GET, path, ReqBody::Empty, &[]);
    let send = |m: Method, path: &str, body: Value| {
        client.send(
            m,
            path,
            ReqBody::Bytes(Bytes::from(body.to_string())),
            &[("content-type", "application/json")],
        )
    };
    let empty = |m: Method, path: &str| client.send(m, path, ReqBody::Empty, &[]);
    let out = match args.command {
        CtlCommand::Status => show(get("/v1/status")?, json_out, render_status)?,
        CtlCommand::Config { action } => doc(&client, "/v1/config", action, json_out)?,
        CtlCommand::Listeners { action } => doc(&client, "/v1/listeners", action, json_out)?,
        CtlCommand::Routes { action } => doc(&client, "/v1/routes", action, json_out)?,
        CtlCommand::Pools { action } => match action.unwrap_or(PoolAction::List) {
            PoolAction::List => show(get("/v1/pools")?, json_out, render_pools)?,
            PoolAction::Get { name } => pretty(get(&format!("/v1/pools/{}", seg(&name)))?)?,
            PoolAction::Show { name } => show(
                get(&format!("/v1/pools/{}/status", seg(&name)))?,
                json_out,
                render_pool_status,
            )?,
            PoolAction::Put { name, file } => {
                let body = read_json_file(&file)?;
                pretty(send(
                    Method::PUT,
                    &format!("/v1/pools/{}", seg(&name)),
                    body,
                )?)?
            }
            PoolAction::Delete { name } => {
                empty(Method::DELETE, &format!("/v1/pools/{}", seg(&name)))?;
                format!("deleted pool {name}\n")
            }
        },
        CtlCommand::Backend { action } => backend(&get, &send, &empty, action, json_out)?,
        CtlCommand::Certs { action } => match action.unwrap_or(CertAction::List) {
            CertAction::List => show(get("/v1/certificates")?, json_out, render_certs)?,
            CertAction::Put {
                name,
                cert,
                key,
                names,
                default,
            } => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
                        .map_err(|e| CtlError::Usage(format!("{}: {e}", p.display())))
                };
                let body = json!({"cert": read(&cert)?, "key": read(&key)?, "names": names, "default": default});
                pretty(send(
                    Method::PUT,
                    &format!("/v1/certificates/{}", seg(&name)),
                    body,
                )?)?
            }
            CertAction::Delete { name } => {
                empty(Method::DELETE, &format!("/v1/certificates/{}", seg(&name)))?;
                format!("deleted certificate {name}\n")
            }
        },
        CtlCommand::Hostmap { action } => match action {
            HostmapAction::Import { file } => {
                let f = std::fs::File::open(&file)
                    .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?;
                let reply = client.send(
                    Method::PUT,
                    "/v1/hostmap",
                    ReqBody::File(f),
                    &[("content-type", "application/x-ndjson")],
                )?;
                show(reply, json_out, |v| {
                    format!(
                        "imported {} entries (host map generation {})\n",
                        v["entries"], v["generation"]
                    )
                })?
            }
            HostmapAction::Export => String::from_utf8_lossy(&get("/v1/hostmap")?).into_owned(),
            HostmapAction::Get { host } => pretty(get(&format!("/v1/hostmap/{}", seg(&host)))?)?,
            HostmapAction::Set { host, pool } => pretty(send(
                Method::PUT,
                &format!("/v1/hostmap/{}", seg(&host)),
                json!({ "pool": pool }),
            )?)?,
            HostmapAction::Delete { host } => {
                empty(Method::DELETE, &format!("/v1/hostmap/{}", seg(&host)))?;
                format!("deleted {host}\n")
            }
        },
        CtlCommand::Sites { action } => match action.unwrap_or(SiteAction::List) {
            SiteAction::List => show(get("/v1/sites")?, json_out, render_sites)?,
            SiteAction::Get { site } => pretty(get(&format!("/v1/sites/{}", seg(&site)))?)?,
            SiteAction::Rollback { site, generation } => {
                let path = format!("/v1/sites/{}/rollback", seg(&site));
                show(
                    send(Method::POST, &path, json!({ "generation": generation }))?,
                    json_out,
                    |v| {
                        format!(
                            "{site} now serves generation {} (manifest {})\n",
                            v["generation"],
                            s(&v["manifest"])
                        )
                    },
                )?
            }
            SiteAction::Delete { site } => {
                empty(Method::DELETE, &format!("/v1/sites/{}", seg(&site)))?;
                format!("deleted site {site}\n")
            }
        },
        CtlCommand::Store { action } => match action {
            StoreAction::Gc { grace_s } => show(
                empty(Method::POST, &format!("/v1/store/gc?grace_s={grace_s}"))?,
                json_out,
                |v| {
                    format!(
                        "removed {} blobs ({} bytes); {} reachable, {} kept in grace\n",
                        v["removed"], v["removed_bytes"], v["reachable"], v["in_grace"]
                    )
                },
            )?,
            StoreAction::Scrub => show(empty(Method::POST, "/v1/store/scrub")?, json_out, |v| {
                let lost: Vec<String> = v["lost"].as_array().into_iter().flatten().map(s).collect();
                format!(
                    "checked {} blobs ({} bytes): {} corrupt{}\n",
                    v["checked"],
                    v["checked_bytes"],
                    v["corrupt"].as_array().map_or(0, Vec::len),
                    if lost.is_empty() {
                        String::new()
                    } else {
                        format!("; lost: {}", lost.join(", "))
                    }
                )
            })?,
        },
        CtlCommand::Peers => show(get("/v1/replication")?, json_out, render_peers)?,
        CtlCommand::Acme { action } => match action.unwrap_or(AcmeAction::List) {
            AcmeAction::List => show(get("/v1/acme")?, json_out, render_acme)?,
            AcmeAction::Renew { name } => show(
                empty(Method::POST, &format!("/v1/acme/{}/renew", seg(&name)))?,
                json_out,
                |v| format!("{}: renewal due now ({})\n", name, s(&v["state"])),
            )?,
        },
        CtlCommand::Failover { action } => match action.unwrap_or(FailoverAction::Status) {
            FailoverAction::Status => show(get("/v1/failover")?, json_out, render_failover)?,
            FailoverAction::Release { wait_ms } => show(
                empty(
                    Method::POST,
                    &format!("/v1/failover/release?wait_ms={wait_ms}"),
                )?,
                json_out,
                |v| {
                    format!(
                        "handed over: {} is master now\n{}",
                        s(&v["master"]),
                        render_failover(v)
                    )
                },
            )?,
            FailoverAction::Reclaim => show(
                empty(Method::POST, "/v1/failover/reclaim")?,
                json_out,
                render_failover,
            )?,
        },
        CtlCommand::Metrics => String::from_utf8_lossy(&get("/metrics")?).into_owned(),
        CtlCommand::Logs { limit } => show(
            get(&format!("/v1/logs?limit={limit}"))?,
            json_out,
            render_logs,
        )?,
        CtlCommand::Token {
            action: TokenAction::Rotate,
        } => show(empty(Method::POST, "/v1/token/rotate")?, json_out, |v| {
            format!(
                "new token: {}\n(the old one no longer works)\n",
                v["token"].as_str().unwrap_or_default()
            )
        })?,
        CtlCommand::Update { file: None, .. } => show(get("/v1/update")?, json_out, render_update)?,
        CtlCommand::Update {
            file: Some(file),
            reboot,
            accept_no_rollback,
        } => {
            let f = std::fs::File::open(&file)
                .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?;
            let reply = client.send(
                Method::POST,
                if accept_no_rollback {
                    "/v1/update?accept_no_rollback=true"
                } else {
                    "/v1/update"
                },
                ReqBody::File(f),
                &[("content-type", "application/octet-stream")],
            )?;
            let mut out = show(reply, json_out, |v| {
                format!(
                    "slot {} holds edgebox image {}{}; it boots on trial at the next reboot\n",
                    s(&v["slot"]),
                    s(&v["version"]),
                    if v["signed"] == json!(true) {
                        " (signature checked)"
                    } else {
                        " (unsigned)"
                    },
                )
            })?;
            if reboot {
                out.push_str(&system(&empty, "reboot")?);
            }
            out
        }
        CtlCommand::Shutdown => system(&empty, "shutdown")?,
        CtlCommand::Reboot => system(&empty, "reboot")?,
        CtlCommand::Poweroff => system(&empty, "poweroff")?,
    };
    print!("{out}");
    Ok(())
}

/// `GET /v1/update` for people.
fn render_update(v: &Value) -> String {
    let mut out = format!(
        "edgebox image {} (binary {})\n",
        s(&v["version"]),
        s(&v["edgebox"])
    );
    if v["available"] != json!(true) {
        out.push_str(&format!("no boot slots: {}\n", s(&v["reason"])));
        return out;
    }
    let (running, next) = (s(&v["running"]), s(&v["next_boot"]));
    for slot in v["slots"].as_array().into_iter().flatten() {
        let name = s(&slot["slot"]);
        let mut notes = Vec::new();
        if name == running {
            notes.push("running");
        }
        if name == next {
            notes.push("boots next");
        }
        out.push_str(&format!(
            "slot {name}: {:<8} {:<24} {}\n",
            s(&slot["state"]),
            slot["version"].as_str().unwrap_or("-"),
            notes.join(", ")
        ));
    }
    if let Some(f) = v["failed_update"].as_object() {
        out.push_str(&format!(
            "the update to {} (slot {}) did not become healthy: {}\n",
            s(&f["version"]),
            s(&f["slot"]),
            f.get("reason")
                .and_then(Value::as_str)
                .unwrap_or("it left no report (it did not get as far as the data partition)")
        ));
    }
    out
}

fn system(
    empty: &dyn Fn(Method, &str) -> Result<Bytes, CtlError>,
    action: &str,
) -> Result<String, CtlError> {
    empty(Method::POST, &format!("/v1/system/{action}"))?;
    Ok(format!("{action} requested\n"))
}

fn backend(
    get: &dyn Fn(&str) -> Result<Bytes, CtlError>,
    send: &dyn Fn(Method, &str, Value) -> Result<Bytes, CtlError>,
    empty: &dyn Fn(Method, &str) -> Result<Bytes, CtlError>,
    action: BackendAction,
    json_out: bool,
) -> Result<String, CtlError> {
    let path =
        |pool: &str, address: &str| format!("/v1/pools/{}/backends/{}", seg(pool), seg(address));
    let reply = match action {
        BackendAction::Add {
            pool,
            address,
            weight,
        } => send(
            Method::POST,
            &format!("/v1/pools/{}/backends", seg(&pool)),
            json!({"address": address, "weight": weight}),
        )?,
        BackendAction::Remove { pool, address } => {
            empty(Method::DELETE, &path(&pool, &address))?;
            return Ok(format!("removed {address} from {pool}\n"));
        }
        BackendAction::Drain {
            pool,
            address,
            wait,
            timeout,
        } => {
            let reply = empty(Method::POST, &format!("{}/drain", path(&pool, &address)))?;
            if wait {
                wait_idle(get, &path(&pool, &address), timeout)?
            } else {
                reply
            }
        }
        BackendAction::Enable { pool, address } => {
            empty(Method::POST, &format!("{}/enable", path(&pool, &address)))?
        }
        BackendAction::Weight {
            pool,
            address,
            weight,
        } => send(
            Method::PATCH,
            &path(&pool, &address),
            json!({ "weight": weight }),
        )?,
    };
    show(reply, json_out, |v| {
        let idle = if v["idle"] == true { "  idle" } else { "" };
        format!(
            "{}  weight {}  {}  {} in flight{idle}\n",
            v["address"].as_str().unwrap_or_default(),
            v["weight"],
            v["state"].as_str().unwrap_or_default(),
            v["active"].as_u64().unwrap_or_default() + v["tunnels"].as_u64().unwrap_or_default()
        )
    })
}

/// Polls a draining backend until it reports itself idle; its last view.
fn wait_idle(
    get: &dyn Fn(&str) -> Result<Bytes, CtlError>,
    path: &str,
    timeout_s: u64,
) -> Result<Bytes, CtlError> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    loop {
        let reply = get(path)?;
        if parse(&reply)?["idle"] == true {
            return Ok(reply);
        }
        if std::time::Instant::now() >= until {
            return Err(CtlError::Usage(format!(
                "still not idle after {timeout_s} s (requests in flight or tunnels open)"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn doc(
    client: &Client,
    path: &str,
    action: Option<DocAction>,
    json_out: bool,
) -> Result<String, CtlError> {
    match action.unwrap_or(DocAction::Get) {
        DocAction::Get if json_out => {
            Ok(
                String::from_utf8_lossy(&client.send(Method::GET, path, ReqBody::Empty, &[])?)
                    .into_owned(),
            )
        }
        DocAction::Get => pretty(client.send(Method::GET, path, ReqBody::Empty, &[])?),
        DocAction::Put { file, if_match } => {
            let body = read_json_file(&file)?;
            let mut headers = vec![("content-type", "application/json")];
            if let Some(tag) = &if_match {
                headers.push(("if-match", tag.as_str()));
            }
            client.send(
                Method::PUT,
                path,
                ReqBody::Bytes(Bytes::from(body.to_string())),
                &headers,
            )?;
            Ok(format!("applied {} to {path}\n", file.display()))
        }
    }
}

fn read_json_file(file: &PathBuf) -> Result<Value, CtlError> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CtlError::Usage(e.to_string()))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| CtlError::Usage(format!("{}: not JSON: {e}", file.display())))
}

/// A path segment, percent-encoded where needed (IPv6 brackets, `/`, `%`).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn parse(bytes: &Bytes) -> Result<Value, CtlError> {
    serde_json::from_slice(bytes)
        .map_err(|e| CtlError::Connect(format!("the API answered something other than JSON: {e}")))
}

fn pretty(bytes: Bytes) -> Result<String, CtlError> {
    let v = parse(&bytes)?;
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&v).unwrap_or_default()
    ))
}

fn show(
    bytes: Bytes,
    json_out: bool,
    render: impl FnOnce(&Value) -> String,
) -> Result<String, CtlError> {
    if json_out {
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    Ok(render(&parse(&bytes)?))
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let l: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", l.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn render_status(v: &Value) -> String {
    let mut out =
        format!(
        "edgebox {}{}  up {:.0} s  config generation {}  host map generation {} ({} entries){}\n\n",
        s(&v["version"]),
        match (v["image_version"].as_str(), v["slot"].as_str()) {
            (Some(image), Some(slot)) => format!("  image {image} (slot {slot})"),
            _ => String::new(),
        },
        v["uptime_s"].as_f64().unwrap_or_default(),
        v["generations"]["config"],
        v["generations"]["hostmap"],
        v["hostmap_entries"],
        if v["shutting_down"] == true { "  SHUTTING DOWN" } else { "" }
    );
    let rows: Vec<Vec<String>> = v["cores"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                s(&c["core"]),
                s(&c["connections_active"]),
                s(&c["connections_total"]),
                s(&c["requests_total"]),
            ]
        })
        .collect();
    out.push_str(&table(&["CORE", "OPEN CONNS", "CONNS", "REQUESTS"], &rows));
    out
}

fn render_pools(v: &Value) -> String {
    let mut rows = Vec::new();
    for p in v.as_array().into_iter().flatten() {
        for b in p["backends"].as_array().into_iter().flatten() {
            let state = b.get("state").map_or("enabled".to_owned(), s);
            rows.push(vec![
                s(&p["name"]),
                s(&b["address"]),
                s(&b["weight"]),
                state,
            ]);
        }
        if p["backends"].as_array().is_none_or(Vec::is_empty) {
            rows.push(vec![
                s(&p["name"]),
                "(no backends)".into(),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    table(&["POOL", "BACKEND", "WEIGHT", "STATE"], &rows)
}

fn render_pool_status(v: &Value) -> String {
    let ms = |x: &Value| x.as_f64().map_or("-".to_owned(), |m| format!("{m}"));
    let rows: Vec<Vec<String>> = v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            vec![
                s(&b["address"]),
                s(&b["state"]),
                s(&b["health"]),
                if b["ejected"] == true {
                    format!("{} ms", b["ejected_for_ms"])
                } else {
                    "-".into()
                },
                format!("{}%", b["share_percent"]),
                s(&b["active"]),
                s(&b["queued"]),
                s(&b["requests"]),
                s(&b["responses"]["5xx"]),
                s(&b["failures"]),
                s(&b["retries"]),
                ms(&b["p50_ms"]),
                ms(&b["p99_ms"]),
                b["last_check"]["result"].as_str().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    let mut out = format!(
        "pool {}: {} healthy, {} in flight, {} refused by limits, {} retries over budget\n\n",
        s(&v["pool"]),
        v["healthy"],
        v["active"],
        v["rejected"],
        v["retry_budget_exhausted"]
    );
    out.push_str(&table(
        &[
            "BACKEND",
            "STATE",
            "HEALTH",
            "EJECTED",
            "SHARE",
            "ACTIVE",
            "QUEUED",
            "REQUESTS",
            "5XX",
            "FAILED",
            "RETRIES",
            "P50 MS",
            "P99 MS",
            "LAST CHECK",
        ],
        &rows,
    ));
    out
}

fn render_certs(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let names: Vec<String> = c["names"].as_array().into_iter().flatten().map(s).collect();
            vec![
                s(&c["name"]),
                names.join(","),
                if c["default"] == true {
                    "yes".into()
                } else {
                    String::new()
                },
                s(&c["sha256"]).chars().take(16).collect(),
            ]
        })
        .collect();
    table(&["NAME", "SERVES", "DEFAULT", "SHA256"], &rows)
}

fn render_sites(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|site| {
            let kept: Vec<String> = site["history"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| s(&h["generation"]))
                .collect();
            vec![
                s(&site["site"]),
                s(&site["generation"]),
                s(&site["manifest"]).chars().take(16).collect(),
                kept.join(","),
                on_peers(&site["peers"]),
            ]
        })
        .collect();
    table(&["SITE", "GENERATION", "MANIFEST", "KEPT", "PEERS"], &rows)
}

/// `b=4 c=missing`: each peer's generation of a site, or its state.
fn on_peers(v: &Value) -> String {
    let peers: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["state"].as_str() {
            Some("same") => format!("{}={}", s(&p["peer"]), s(&p["generation"])),
            _ if p["generation"].is_u64() => format!(
                "{}={} ({})",
                s(&p["peer"]),
                s(&p["generation"]),
                s(&p["state"])
            ),
            _ => format!("{}={}", s(&p["peer"]), s(&p["state"])),
        })
        .collect();
    if peers.is_empty() {
        "-".to_owned()
    } else {
        peers.join(" ")
    }
}

/// `90d`, `5h`, `12m`, `30s`: how far `at` (Unix seconds) is from now.
fn from_now(at: &Value) -> String {
    let Some(at) = at.as_i64() else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let d = at - now;
    let a = d.unsigned_abs();
    let text = match a {
        0..=119 => format!("{a}s"),
        120..=7199 => format!("{}m", a / 60),
        7200..=172_799 => format!("{}h", a / 3600),
        _ => format!("{}d", a / 86_400),
    };
    if d < 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

fn render_acme(v: &Value) -> String {
    if v["enabled"] != true && v["certificates"].as_array().is_none_or(|c| c.is_empty()) {
        return "acme is not configured\n".to_owned();
    }
    let mut out = String::new();
    if v["enabled"] == true {
        let _ = writeln!(
            out,
            "{}: {}; orders issued {}, failed {}, running {}\n",
            s(&v["directory_url"]),
            if v["ordering"] == true {
                "ordering".to_owned()
            } else {
                format!("not ordering ({})", s(&v["idle_reason"]))
            },
            s(&v["orders"]["issued"]),
            s(&v["orders"]["failed"]),
            s(&v["orders"]["running"]),
        );
    }
    let rows: Vec<Vec<String>> = v["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                s(&c["name"]),
                s(&c["state"]),
                from_now(&c["not_after"]),
                s(&c["issuer"]),
                if c["state"] == "ordering" {
                    "now".into()
                } else {
                    from_now(&c["next_attempt"])
                },
                s(&c["last_error"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NAME", "STATE", "EXPIRES", "ISSUER", "NEXT", "LAST ERROR"],
        &rows,
    ));
    out
}

fn render_failover(v: &Value) -> String {
    if v["state"] == "disabled" {
        return "failover is not configured\n".to_owned();
    }
    let mut out = format!(
        "vrid {} on {}: {}, master {}, priority {} (configured {}), adverts every {} ms\nvirtual addresses: {}\n",
        s(&v["vrid"]),
        s(&v["interface"]),
        s(&v["state"]),
        if v["master"].is_null() { "unknown".to_owned() } else { s(&v["master"]) },
        s(&v["priority"]),
        s(&v["configured_priority"]),
        s(&v["advert_ms"]),
        v["virtual_addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect::<Vec<_>>()
            .join(", "),
    );
    for r in v["priority_reasons"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "priority lowered: {}", s(r));
    }
    if let Some(e) = v["error"].as_str() {
        let _ = writeln!(out, "error: {e}");
    }
    let rows: Vec<Vec<String>> = v["transitions"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(10)
        .map(|t| {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let ago = now_ms.saturating_sub(t["at_ms"].as_u64().unwrap_or(now_ms));
            vec![
                format!("{:.1} s ago", ago as f64 / 1000.0),
                format!("{} -> {}", s(&t["from"]), s(&t["to"])),
                s(&t["why"]),
            ]
        })
        .collect();
    out.push_str(&table(&["WHEN", "TRANSITION", "WHY"], &rows));
    out
}

fn render_peers(v: &Value) -> String {
    let mut out = format!(
        "this appliance: {} (catalog {} items, root {})\n",
        s(&v["fingerprint"]),
        s(&v["catalog"]["items"]),
        s(&v["catalog"]["root"])
            .chars()
            .take(16)
            .collect::<String>()
    );
    let rows: Vec<Vec<String>> = v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let errors: Vec<String> = p["errors"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            vec![
                s(&p["name"]),
                s(&p["address"]),
                s(&p["state"]),
                format!("{} ms", s(&p["lag_ms"])),
                s(&p["pending"]),
                s(&p["bytes_received"]),
                s(&p["bytes_sent"]),
                if errors.is_empty() {
                    "-".to_owned()
                } else {
                    errors.join(" ")
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PEER", "ADDRESS", "STATE", "LAG", "PENDING", "RECEIVED", "SENT", "ERRORS",
        ],
        &rows,
    ));
    for p in v["pending"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "waiting: {} generation {} for {} ms",
            s(&p["key"]),
            s(&p["generation"]),
            s(&p["waiting_ms"])
        );
    }
    out
}

fn render_logs(v: &Value) -> String {
    let mut out = String::new();
    for l in v.as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{} {:5} {}: {}",
            s(&l["time_ms"]),
            s(&l["level"]),
            s(&l["target"]),
            s(&l["message"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("[::1]:8080"), "%5B::1%5D:8080");
        assert_eq!(seg("shop.example.com"), "shop.example.com");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }

    #[derive(Debug, clap::Parser)]
    struct Ctl {
        #[command(flatten)]
        args: CtlArgs,
    }

    /// Every command and subcommand says in one line what it does.
    #[test]
    fn every_command_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(
            &<Ctl as clap::CommandFactory>::command(),
            "ctl",
            &mut missing,
        );
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    /// A resource named alone does what its list (or print) does.
    #[test]
    fn a_resource_alone_lists() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let mut all = vec!["ctl", "--token", "t"];
            all.extend_from_slice(args);
            Ctl::try_parse_from(all).map(|c| c.args.command)
        };
        assert!(matches!(
            parse(&["pools"]),
            Ok(CtlCommand::Pools { action: None })
        ));
        assert!(matches!(
            parse(&["certs"]),
            Ok(CtlCommand::Certs { action: None })
        ));
        assert!(matches!(
            parse(&["sites"]),
            Ok(CtlCommand::Sites { action: None })
        ));
        assert!(matches!(
            parse(&["config"]),
            Ok(CtlCommand::Config { action: None })
        ));
        assert!(parse(&["pools", "list"]).is_ok());
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}
