//! Replication between edgebox processes on loopback: sites, config and
//! session tickets reach every peer, a peer that was away catches up, a
//! damaged blob is refused and repaired, concurrent publishes converge, and
//! only pinned peers are let in.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// An appliance of a group, before or while it runs.
struct Member {
    dir: Option<tempfile::TempDir>,
    fingerprint: String,
    udp: u16,
    eb: Option<Edgebox>,
}

/// Appliances that replicate with each other, serving `shop.test` (one
/// certificate, the same everywhere) from the site `shop`.
struct Group {
    pki: Pki,
    leaf: Leaf,
    members: Vec<Member>,
}

impl Group {
    /// `n` appliances with their identities made; none started.
    fn new(n: usize) -> Self {
        let pki = Pki::new();
        let leaf = pki.leaf("shop", &["shop.test"]);
        let members = (0..n)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let fingerprint = identity(dir.path());
                Member {
                    dir: Some(dir),
                    fingerprint,
                    udp: free_udp_port(),
                    eb: None,
                }
            })
            .collect();
        Self { pki, leaf, members }
    }

    fn peer(&self, j: usize) -> Value {
        let m = &self.members[j];
        json!({
            "address": format!("127.0.0.1:{}", m.udp),
            "fingerprint": m.fingerprint,
            "name": format!("node{j}"),
        })
    }

    /// Member `i`'s config, replicating with `peers`.
    fn config(&self, i: usize, peers: &[usize]) -> Value {
        let mut c = config(
            &[&self.leaf],
            json!([]),
            json!([{"action": {"static": {"site": "shop"}}}]),
        );
        c["replication"] = json!({
            "listen": format!("127.0.0.1:{}", self.members[i].udp),
            "peers": peers.iter().map(|&j| self.peer(j)).collect::<Vec<_>>(),
            "sync_interval_ms": 1000,
            "timeout_ms": 3000,
        });
        c
    }

    /// Starts member `i` replicating with `peers`.
    fn start_with(&mut self, i: usize, peers: &[usize]) {
        let config = self.config(i, peers);
        let dir = self.members[i].dir.take().unwrap();
        self.members[i].eb = Some(Edgebox::start_in(dir, &config, 1));
    }

    /// Starts member `i` replicating with every other member.
    fn start(&mut self, i: usize) {
        let peers: Vec<usize> = (0..self.members.len()).filter(|&j| j != i).collect();
        self.start_with(i, &peers);
    }

    fn eb(&self, i: usize) -> &Edgebox {
        self.members[i].eb.as_ref().unwrap()
    }

    /// Stops member `i`, keeping its data.
    fn stop(&mut self, i: usize) {
        let eb = self.members[i].eb.take().unwrap();
        self.members[i].dir = Some(eb.stop());
    }

    /// Starts member `i` again on its data (its persisted config).
    fn restart(&mut self, i: usize) {
        let dir = self.members[i].dir.take().unwrap();
        self.members[i].eb = Some(Edgebox::restart(dir, 1));
    }

    /// What member `i` answers for `path` on its HTTP listener.
    fn get(&self, i: usize, path: &str) -> Vec<u8> {
        let url = format!("http://{}{path}", self.eb(i).addr("http"));
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-H", "Host: shop.test", &url])
            .output()
            .unwrap();
        out.stdout
    }

    fn replication(&self, i: usize) -> Value {
        self.eb(i)
            .api("GET", "/v1/replication", None, &[])
            .expect(200)
            .json()
    }

    /// Waits until member `i` serves `body` at `path`; how long it took.
    fn wait_serves(&self, i: usize, path: &str, body: &[u8]) -> Duration {
        let start = Instant::now();
        wait_for(&format!("node{i} to serve {path}"), || {
            (self.get(i, path) == body).then_some(())
        });
        start.elapsed()
    }

    /// Waits until every running member's catalog has the same root.
    fn wait_converged(&self) {
        wait_for("the catalogs to converge", || {
            let roots: std::collections::HashSet<String> = (0..self.members.len())
                .filter(|&i| self.members[i].eb.is_some())
                .map(|i| {
                    self.replication(i)["catalog"]["root"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            (roots.len() == 1).then_some(())
        });
    }

    /// Where member `i` sees each peer with `site`: (peer, state,
    /// generation).
    fn site_on_peers(&self, i: usize, site: &str) -> Vec<(String, &'static str, Option<u64>)> {
        let v = self
            .eb(i)
            .api("GET", &format!("/v1/sites/{site}"), None, &[])
            .expect(200)
            .json();
        let states = ["same", "behind", "ahead", "missing", "unknown"];
        v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let state = states.iter().find(|s| p["state"] == **s).unwrap();
                (
                    p["peer"].as_str().unwrap().to_owned(),
                    *state,
                    p["generation"].as_u64(),
                )
            })
            .collect()
    }

    fn site_generation(&self, i: usize) -> u64 {
        self.eb(i)
            .api("GET", "/v1/sites/shop", None, &[])
            .expect(200)
            .json()["generation"]
            .as_u64()
            .unwrap()
    }
}

/// A directory to publish: `index.html` saying `text`, and `big.bin`, a
/// blob of several verified groups.
fn site(root: &Path, name: &str, text: &str, seed: u64) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), text).unwrap();
    std::fs::write(dir.join("big.bin"), noise(seed, 300_000)).unwrap();
    dir
}

/// The manifest hash `edgebox publish` printed.
fn manifest_of(out: &std::process::Output) -> String {
    let text = ok(out.clone());
    text.rsplit("manifest ").next().unwrap().trim().to_owned()
}

#[test]
fn a_publish_on_one_is_served_by_the_others_byte_for_byte() {
    let mut g = Group::new(3);
    for i in 0..3 {
        g.start(i);
    }
    wait_for("every peer connected", || {
        (0..3)
            .all(|i| {
                g.replication(i)["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["state"] == "connected")
            })
            .then_some(())
    });
    let scratch = tempfile::tempdir().unwrap();
    let dir = site(scratch.path(), "v1", "<h1>v1</h1>", 1);
    let out = g.eb(0).publish(&dir, "shop");
    ok(out);
    let to_b = g.wait_serves(1, "/", b"<h1>v1</h1>");
    let to_c = g.wait_serves(2, "/", b"<h1>v1</h1>");
    println!(
        "propagation of a publish: A to B {} ms, A to C {} ms (from the end of the publish)",
        to_b.as_millis(),
        to_c.as_millis()
    );
    let big = noise(1, 300_000);
    for i in 1..3 {
        assert!(
            g.get(i, "/big.bin") == big,
            "node{i} serves big.bin byte for byte"
        );
        assert_eq!(g.site_generation(i), 1);
    }
    g.wait_converged();
    let r = g.replication(1);
    assert_eq!(r["fingerprint"], g.members[1].fingerprint);
    let from_a = r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "node0")
        .unwrap()
        .clone();
    assert!(from_a["bytes_received"].as_u64().unwrap() > 0, "{from_a}");
    let metrics = g.eb(1).api("GET", "/metrics", None, &[]).expect(200).body;
    assert!(
        metrics.contains("edgebox_replication_peer_up{peer=\"node0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgebox_replication_applied_total{kind=\"site\"} 1"),
        "{metrics}"
    );
    // `edgebox ctl peers` says the same.
    let table = ok(g.eb(1).ctl(&["peers"]));
    assert!(
        table.contains("node0") && table.contains("connected"),
        "{table}"
    );
    // A deletion replicates too.
    g.eb(0)
        .api("DELETE", "/v1/sites/shop", None, &[])
        .expect(204);
    wait_for("the deletion to reach node2", || {
        (g.eb(2).api("GET", "/v1/sites/shop", None, &[]).status == 404).then_some(())
    });
}

#[test]
fn a_peer_that_was_away_catches_up_by_itself() {
    let mut g = Group::new(3);
    for i in 0..3 {
        g.start(i);
    }
    let scratch = tempfile::tempdir().unwrap();
    ok(g.eb(0)
        .publish(&site(scratch.path(), "v1", "v1", 1), "shop"));
    g.wait_serves(2, "/", b"v1");
    wait_for("node0 to see node2 at generation 1", || {
        (g.site_on_peers(0, "shop")[1] == ("node2".into(), "same", Some(1))).then_some(())
    });
    g.stop(2);
    ok(g.eb(0)
        .publish(&site(scratch.path(), "v2", "v2", 2), "shop"));
    ok(g.eb(1)
        .publish(&site(scratch.path(), "docs", "docs v1", 3), "docs"));
    ok(g.eb(0)
        .publish(&site(scratch.path(), "v3", "v3", 4), "shop"));
    g.wait_serves(1, "/", b"v3");
    // node0 shows where each peer stands with the site: node1 has what it
    // serves, node2 (away) what it had when last seen.
    wait_for("node0 to see node1 at generation 3", || {
        (g.site_on_peers(0, "shop")
            == [
                ("node1".into(), "same", Some(3)),
                ("node2".into(), "behind", Some(1)),
            ])
        .then_some(())
    });
    let table = ok(g.eb(0).ctl(&["sites"]));
    assert!(table.contains("node1=3 node2=1 (behind)"), "{table}");
    g.restart(2);
    let caught_up = g.wait_serves(2, "/", b"v3");
    println!(
        "node2 served generation 3 {} ms after it started again",
        caught_up.as_millis()
    );
    assert_eq!(g.site_generation(2), 3);
    let docs = g
        .eb(2)
        .api("GET", "/v1/sites/docs", None, &[])
        .expect(200)
        .json();
    assert_eq!(docs["generation"], 1, "{docs}");
    assert!(g.get(2, "/big.bin") == noise(4, 300_000));
    g.wait_converged();
    wait_for("node0 to see node2 at generation 3", || {
        (g.site_on_peers(0, "shop")[1] == ("node2".into(), "same", Some(3))).then_some(())
    });
}

/// The blob's file in a member's store.
fn blob_path(g: &Group, i: usize, bytes: &[u8]) -> std::path::PathBuf {
    let hash = blake3::hash(bytes).to_hex().to_string();
    g.eb(i)
        .dir()
        .join("data/store/blobs")
        .join(&hash[..2])
        .join(hash)
}

#[test]
fn a_damaged_blob_is_refused_and_repaired_from_another_peer() {
    let mut g = Group::new(3);
    g.start(0);
    g.start(2);
    let scratch = tempfile::tempdir().unwrap();
    let page = b"<h1>the only copy that matters</h1>".to_vec();
    let dir = scratch.path().join("s");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), &page).unwrap();
    ok(g.eb(0).publish(&dir, "shop"));
    g.wait_serves(2, "/", &page);
    // A's disk damages the page after C has it.
    let on_a = blob_path(&g, 0, &page);
    let mut damaged = std::fs::read(&on_a).unwrap();
    damaged[5] ^= 0x20;
    std::fs::write(&on_a, &damaged).unwrap();
    // B starts knowing only A: it fetches the page from A and must refuse it.
    g.start_with(1, &[0]);
    wait_for("node1 to refuse node0's damaged copy", || {
        let r = g.replication(1);
        let a = &r["peers"][0];
        (a["errors"]["corrupt"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    assert!(
        g.get(1, "/") != page,
        "nothing served before it is verified"
    );
    assert_eq!(
        g.eb(1).api("GET", "/v1/sites/shop", None, &[]).status,
        404,
        "the site is not published on node1 without its blob"
    );
    // Told, A checks its copy, puts it aside and fetches it again.
    wait_for("node0 to repair its copy", || {
        (std::fs::read(&on_a).ok()? == page).then_some(())
    });
    // B is given C as a peer too (a live change) and gets the page from it.
    let mut config = g
        .eb(1)
        .api("GET", "/v1/config", None, &[])
        .expect(200)
        .json();
    config["replication"]["peers"] = json!([g.peer(0), g.peer(2)]);
    g.eb(1)
        .api("PUT", "/v1/config", Some(&config.to_string()), &[])
        .expect(200);
    g.wait_serves(1, "/", &page);
    g.wait_serves(0, "/", &page);
    let logs = g.eb(0).logs().join("\n");
    assert!(logs.contains("damaged"), "node0 logged the damage");
}

#[test]
fn concurrent_publishes_converge_to_one_winner_everywhere() {
    let mut g = Group::new(3);
    for i in 0..3 {
        g.start(i);
    }
    let scratch = tempfile::tempdir().unwrap();
    ok(g.eb(0)
        .publish(&site(scratch.path(), "base", "base", 1), "shop"));
    for i in 1..3 {
        g.wait_serves(i, "/", b"base");
    }
    // A is cut off (its peers removed: a local setting), and A and B both
    // publish the next generation.
    let mut alone = g
        .eb(0)
        .api("GET", "/v1/config", None, &[])
        .expect(200)
        .json();
    let peers = alone["replication"]["peers"].clone();
    alone["replication"]["peers"] = json!([]);
    g.eb(0)
        .api("PUT", "/v1/config", Some(&alone.to_string()), &[])
        .expect(200);
    let on_a = manifest_of(
        &g.eb(0)
            .publish(&site(scratch.path(), "a", "from A", 2), "shop"),
    );
    let on_b = manifest_of(
        &g.eb(1)
            .publish(&site(scratch.path(), "b", "from B", 3), "shop"),
    );
    g.wait_serves(2, "/", b"from B");
    assert_eq!(g.site_generation(0), 2);
    assert_eq!(g.site_generation(1), 2);
    // Together again: the larger manifest hash wins, on every appliance.
    alone["replication"]["peers"] = peers;
    g.eb(0)
        .api("PUT", "/v1/config", Some(&alone.to_string()), &[])
        .expect(200);
    let winner: &[u8] = if on_a[..16] > on_b[..16] {
        b"from A"
    } else {
        b"from B"
    };
    for i in 0..3 {
        g.wait_serves(i, "/", winner);
        assert_eq!(g.site_generation(i), 2);
    }
    g.wait_converged();
    let conflicts: u64 = (0..3)
        .map(|i| g.replication(i)["counters"]["conflicts"].as_u64().unwrap())
        .sum();
    assert!(conflicts >= 1, "the conflict was reported");
    let logs: String = (0..3).map(|i| g.eb(i).logs().join("\n")).collect();
    assert!(logs.contains("two changes of one key at once"));
}

#[test]
fn a_config_change_on_b_is_served_by_a() {
    let mut g = Group::new(2);
    g.start(0);
    g.start(1);
    let routes = json!([
        {"path_prefix": "/ping", "action": {"respond": {"body": "pong from B's change"}}},
        {"action": {"static": {"site": "shop"}}}
    ]);
    g.eb(1)
        .api("PUT", "/v1/routes", Some(&routes.to_string()), &[])
        .expect(200);
    g.wait_serves(0, "/ping", b"pong from B's change");
    // A certificate uploaded on B, with its key, is served by A.
    let other = g.pki.leaf("other", &["other.test"]);
    g.eb(1)
        .api(
            "PUT",
            "/v1/certificates/other",
            Some(&other.upload().to_string()),
            &[],
        )
        .expect(201);
    let a = g.eb(0).addr("https");
    let r = resolve("other.test", a);
    let url = format!("https://other.test:{}/ping", a.port());
    wait_for("node0 to present other.test's certificate", || {
        (curl(&g.pki, &["--resolve", &r, &url]).stdout == "pong from B's change").then_some(())
    });
    // What is A's own stays A's.
    let config = g
        .eb(0)
        .api("GET", "/v1/config", None, &[])
        .expect(200)
        .json();
    assert_eq!(
        config["admin"]["address"],
        g.eb(0).admin.unwrap().to_string()
    );
    assert_eq!(
        config["replication"]["listen"],
        format!("127.0.0.1:{}", g.members[0].udp)
    );
}

#[test]
fn a_session_ticket_issued_by_a_resumes_on_b() {
    let mut g = Group::new(2);
    g.start(0);
    g.start(1);
    g.wait_converged();
    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let config = resuming_client(&g.pki, versions);
        let on = |i: usize| tls_request(&config, g.eb(i).addr("https"), "shop.test", b"HTTP/1.1 ");
        assert_eq!(on(0), rustls::HandshakeKind::Full);
        assert_eq!(
            on(1),
            rustls::HandshakeKind::Resumed,
            "{versions:?}: A's ticket resumes on B"
        );
    }
}

#[test]
fn an_unpinned_or_mismatched_peer_is_refused() {
    let mut g = Group::new(3);
    g.start_with(0, &[1]);
    // Node 2 knows node 0's real fingerprint, but node 0 does not pin node 2.
    g.start_with(2, &[0]);
    wait_for("node2 to be refused", || {
        let r = g.replication(2);
        (r["peers"][0]["state"] == "refused"
            || r["peers"][0]["errors"]["connect"].as_u64().is_some())
        .then_some(())
    });
    wait_for(
        "node0 to log the refusal with the address and fingerprint",
        || {
            let logs = g.eb(0).logs().join("\n");
            (logs.contains("refused a connection") && logs.contains(&g.members[2].fingerprint))
                .then_some(())
        },
    );
    // Node 1 pins a wrong fingerprint for node 0: it refuses node 0.
    let mut wrong = g.config(1, &[0]);
    wrong["replication"]["peers"][0]["fingerprint"] = json!("ab".repeat(32));
    let dir = g.members[1].dir.take().unwrap();
    g.members[1].eb = Some(Edgebox::start_in(dir, &wrong, 1));
    wait_for("node1 to refuse node0's key", || {
        let r = g.replication(1);
        (r["peers"][0]["state"] == "refused").then_some(())
    });
    let err = g.replication(1)["peers"][0]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains(&g.members[0].fingerprint), "{err}");
    // Nothing was replicated either way.
    let scratch = tempfile::tempdir().unwrap();
    ok(g.eb(0)
        .publish(&site(scratch.path(), "v1", "v1", 1), "shop"));
    std::thread::sleep(Duration::from_millis(1500));
    for i in [1, 2] {
        assert_eq!(g.eb(i).api("GET", "/v1/sites/shop", None, &[]).status, 404);
    }
}

#[test]
fn the_host_map_replicates_entry_by_entry_and_whole() {
    let mut g = Group::new(2);
    for i in 0..2 {
        let mut config = g.config(i, &[1 - i]);
        config["pools"] =
            json!([{"name": "app", "backends": [{"address": closed_port().to_string()}]}]);
        let dir = g.members[i].dir.take().unwrap();
        g.members[i].eb = Some(Edgebox::start_in(dir, &config, 1));
    }
    let lines: String = (0..2_000)
        .map(|n| format!("{{\"host\": \"shop{n}.example\", \"pool\": \"app\"}}\n"))
        .collect();
    let file = g.eb(0).dir().join("hosts.ndjson");
    std::fs::write(&file, lines).unwrap();
    ok(g.eb(0).ctl(&["hostmap", "import", &path_of(&file)]));
    let entry = |i: usize, host: &str| {
        g.eb(i)
            .api("GET", &format!("/v1/hostmap/{host}"), None, &[])
            .status
    };
    wait_for("node1 to have the imported entries", || {
        (entry(1, "shop1999.example") == 200 && entry(1, "shop0.example") == 200).then_some(())
    });
    // One entry set on B, one removed on A.
    g.eb(1)
        .api(
            "PUT",
            "/v1/hostmap/new.example",
            Some(r#"{"pool": "app"}"#),
            &[],
        )
        .expect(201);
    g.eb(0)
        .api("DELETE", "/v1/hostmap/shop7.example", None, &[])
        .expect(204);
    wait_for("both changes on both", || {
        (entry(0, "new.example") == 200 && entry(1, "shop7.example") == 404).then_some(())
    });
    g.wait_converged();
    let export = |i: usize| ok(g.eb(i).ctl(&["hostmap", "export"]));
    assert_eq!(export(0), export(1));
    assert_eq!(export(0).lines().count(), 2_000);
}

#[test]
fn a_message_that_does_not_decode_closes_that_connection_only() {
    use edgebox_storage::replication::wire::{self, Request, Response};
    let mut g = Group::new(3);
    g.start_with(0, &[1, 2]);
    g.start_with(1, &[0]);
    // The test speaks as node2, with node2's key: pinned, but a bad peer.
    let data = g.members[2].dir.as_ref().unwrap().path().join("data");
    let me = edgebox::replication::Identity::load_or_create(&data).unwrap();
    let node0 = format!("127.0.0.1:{}", g.members[0].udp).parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = me
            .client_config(&g.members[0].fingerprint, Duration::from_secs(3))
            .unwrap();
        let conn = endpoint
            .connect_with(config, node0, "edgebox-peer")
            .unwrap()
            .await
            .unwrap();
        // A good request is answered.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&wire::encode(&Request::Digest { protocol: 1 }))
            .await
            .unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(1 << 20).await.unwrap();
        let reply: Response = wire::decode(&answer[4..]).unwrap();
        assert!(matches!(reply, Response::Digest { .. }), "{reply:?}");
        // A request of another protocol version gets an error, not a hang.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&wire::encode(&json!({"type": "digest", "protocol": 99})))
            .await
            .unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(1 << 20).await.unwrap();
        let reply: Response = wire::decode(&answer[4..]).unwrap();
        assert!(matches!(reply, Response::Error { .. }), "{reply:?}");
        // Garbage closes the connection, with the bad-message code.
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(b"\x00\x00\x00\x05{\"x\":").await.unwrap();
        send.finish().unwrap();
        match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, quinn::VarInt::from_u32(1))
            }
            other => panic!("closed otherwise: {other}"),
        }
    });
    // Node 0 and node 1 go on replicating.
    let scratch = tempfile::tempdir().unwrap();
    ok(g.eb(1)
        .publish(&site(scratch.path(), "v1", "still fine", 1), "shop"));
    g.wait_serves(0, "/", b"still fine");
}

#[test]
fn a_silent_peer_is_timed_out_and_retried() {
    let mut g = Group::new(2);
    g.start(0);
    g.start(1);
    let state = |g: &Group| {
        g.replication(0)["peers"][0]["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    wait_for("connected", || (state(&g) == "connected").then_some(()));
    let pid = rustix::process::Pid::from_raw(g.eb(1).pid()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let silent = Instant::now();
    wait_for("node1 to be timed out", || {
        (state(&g) != "connected").then_some(())
    });
    println!(
        "a silent peer was timed out after {} ms (timeout_ms 3000)",
        silent.elapsed().as_millis()
    );
    let scratch = tempfile::tempdir().unwrap();
    ok(g.eb(0)
        .publish(&site(scratch.path(), "v1", "while you slept", 1), "shop"));
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    g.wait_serves(1, "/", b"while you slept");
    wait_for("connected again", || {
        (state(&g) == "connected").then_some(())
    });
}

#[test]
fn a_full_disk_on_a_peer_keeps_its_previous_generation_serving() {
    let mut g = Group::new(2);
    // Node 1's data on a small disk (its identity made again there).
    let dir = g.members[1].dir.as_ref().unwrap().path().to_owned();
    let _ = std::fs::remove_dir_all(dir.join("data"));
    let Some(_disk) = SmallDisk::mount(&dir.join("data"), "4m") else {
        return;
    };
    g.members[1].fingerprint = identity(&dir);
    g.start(0);
    g.start(1);
    let scratch = tempfile::tempdir().unwrap();
    ok(g.eb(0)
        .publish(&site(scratch.path(), "v1", "small v1", 1), "shop"));
    g.wait_serves(1, "/", b"small v1");
    // Generation 2 does not fit on node 1's disk.
    let big = scratch.path().join("v2");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("index.html"), "big v2").unwrap();
    std::fs::write(big.join("huge.bin"), noise(9, 6 << 20)).unwrap();
    ok(g.eb(0).publish(&big, "shop"));
    wait_for("node1's fetch to fail on its disk", || {
        let r = g.replication(1);
        (r["peers"][0]["errors"]["disk"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    assert_eq!(g.get(1, "/"), b"small v1", "the previous generation serves");
    assert_eq!(g.site_generation(1), 1);
    assert_eq!(g.get(0, "/"), b"big v2");
}

#[test]
fn a_large_blob_resumes_after_a_broken_link_and_the_cap_holds() {
    let mut g = Group::new(2);
    g.start(0);
    // Node 1 fetches at 2 MB/s at most.
    let mut slow = g.config(1, &[0]);
    slow["replication"]["max_bytes_per_s"] = json!(2_000_000);
    let dir = g.members[1].dir.take().unwrap();
    g.members[1].eb = Some(Edgebox::start_in(dir, &slow, 1));
    let scratch = tempfile::tempdir().unwrap();
    let big = scratch.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("index.html"), "big").unwrap();
    let bytes = noise(5, 8 << 20);
    std::fs::write(big.join("movie.bin"), &bytes).unwrap();
    let hash = blake3::hash(&bytes).to_hex().to_string();
    ok(g.eb(0).publish(&big, "shop"));
    // Cut the link (kill node 1) once a few MB are in.
    let partial = g.eb(1).dir().join("data/store/partial").join(&hash);
    let started = Instant::now();
    let before = wait_for("a few MB to arrive", || {
        let n = std::fs::metadata(&partial).ok()?.len();
        (n >= 3 << 20).then_some(n)
    });
    let rate = before as f64 / started.elapsed().as_secs_f64();
    println!(
        "fetched {before} bytes at {:.2} MB/s under a 2 MB/s cap",
        rate / 1e6
    );
    assert!(rate < 2.6e6, "the cap holds: {rate:.0} B/s");
    let dir = g.members[1].eb.take().unwrap().kill();
    g.members[1].dir = Some(dir);
    let kept = std::fs::metadata(
        g.members[1]
            .dir
            .as_ref()
            .unwrap()
            .path()
            .join("data/store/partial")
            .join(&hash),
    )
    .unwrap()
    .len();
    assert!(kept >= 3 << 20, "the verified part is kept: {kept}");
    g.restart(1);
    g.wait_serves(1, "/", b"big");
    assert!(g.get(1, "/movie.bin") == bytes);
    // Only the rest came again (plus the outboard and messages).
    let received = g.replication(1)["peers"][0]["bytes_received"]
        .as_u64()
        .unwrap();
    println!(
        "after the restart node1 received {received} bytes of a blob of {}",
        bytes.len()
    );
    assert!(
        received < bytes.len() as u64 - kept + (256 << 10),
        "resumed, not started over: {received} bytes after keeping {kept}"
    );
}

#[test]
fn a_peer_that_starts_later_is_dialled_as_soon_as_it_calls() {
    // Long timeouts and sync intervals: node0 learns that node1 is up from
    // node1's own dial, not from its back-off or a timeout.
    let mut g = Group::new(2);
    let patient = |g: &Group, i: usize| {
        let mut c = g.config(i, &[1 - i]);
        c["replication"]["timeout_ms"] = json!(30_000);
        c["replication"]["sync_interval_ms"] = json!(60_000);
        c
    };
    let c0 = patient(&g, 0);
    g.members[0].eb = Some(Edgebox::start_in(g.members[0].dir.take().unwrap(), &c0, 1));
    // node0's dials fail meanwhile, its back-off grows: they are tried at
    // 0, 0.25, 0.75, 1.75, 3.75 and next at 7.75 s.
    std::thread::sleep(Duration::from_millis(4500));
    let c1 = patient(&g, 1);
    let started = Instant::now();
    g.members[1].eb = Some(Edgebox::start_in(g.members[1].dir.take().unwrap(), &c1, 1));
    let state = |i: usize| {
        g.replication(i)["peers"][0]["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    wait_for("node0's link to node1", || {
        (state(0) == "connected").then_some(())
    });
    let took = started.elapsed();
    println!(
        "node0 connected to node1 {} ms after node1 started",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(2),
        "node0 waited out its back-off: {took:?}"
    );
    let scratch = tempfile::tempdir().unwrap();
    ok(g.eb(0).publish(
        &site(scratch.path(), "v1", "made while node1 was away", 1),
        "shop",
    ));
    let served = g.wait_serves(1, "/", b"made while node1 was away");
    println!("node1 served it {} ms later", served.as_millis());
}
