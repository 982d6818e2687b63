//! The admin API against the running binary: every resource, every error,
//! changes applied live and kept across restarts.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

fn shop_with(backends: &[std::net::SocketAddr]) -> Shop {
    Shop::start(backends, 2, |_| {})
}

/// Which backend answers the next request to `shop.test`.
fn answered_by(shop: &Shop, path: &str) -> String {
    let out = shop.curl(&["-sS", "-D", "-", "-o", "/dev/null", &shop.url(path)]);
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| format!("(no backend: {})", out.stdout.lines().next().unwrap_or("")))
}

#[test]
fn requests_without_the_token_are_refused() {
    let shop = shop_with(&[]);
    let eb = &shop.eb;
    for auth in [
        vec![],
        vec!["-H", "Authorization: Bearer wrong"],
        vec!["-H", "Authorization: Basic dGVzdA=="],
    ] {
        let mut extra = vec!["-H", "Authorization:"];
        extra.extend(auth);
        let r = eb.api("GET", "/v1/status", None, &extra).expect(401);
        assert_eq!(
            r.www_authenticate.as_deref(),
            Some("Bearer realm=\"edgebox\"")
        );
        assert!(r.json()["error"].as_str().unwrap().contains("token"));
    }
    eb.api("GET", "/v1/status", None, &[]).expect(200);
}

#[test]
fn errors_have_their_status_and_a_json_body() {
    let shop = shop_with(&[]);
    let eb = &shop.eb;
    // 404: unknown resource, missing item.
    eb.api("GET", "/v1/nothing", None, &[]).expect(404);
    eb.api("GET", "/v1/pools/missing", None, &[]).expect(404);
    eb.api("DELETE", "/v1/pools/app/backends/10.9.9.9:1", None, &[])
        .expect(404);
    // 405 for a known resource.
    eb.api("DELETE", "/v1/status", None, &[]).expect(405);
    // 400: not JSON.
    let r = eb
        .api("PUT", "/v1/routes", Some("[{\"action\": "), &[])
        .expect(400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    // 422: JSON of the wrong shape, and an invalid change; both name the field.
    let r = eb
        .api(
            "PUT",
            "/v1/routes",
            Some("[{\"action\": {\"proxy\": {\"pool\": 5}}}]"),
            &[],
        )
        .expect(422);
    assert_eq!(r.json()["field"], "[0].action.proxy.pool");
    let r = eb
        .api(
            "PUT",
            "/v1/routes",
            Some("[{\"action\": {\"proxy\": {\"pool\": \"nope\"}}}]"),
            &[],
        )
        .expect(422);
    assert_eq!(r.json()["field"], "routes[0].action.proxy.pool");
    // 412: If-Match on a generation that is gone.
    let current = eb.api("GET", "/v1/config", None, &[]).expect(200);
    let etag = current.etag.clone().unwrap();
    eb.api(
        "PUT",
        "/v1/config",
        Some(&current.body),
        &["-H", "If-Match: \"c0\""],
    )
    .expect(412);
    let ok = eb
        .api(
            "PUT",
            "/v1/config",
            Some(&current.body),
            &["-H", &format!("If-Match: {etag}")],
        )
        .expect(200);
    assert_ne!(ok.etag.unwrap(), etag, "a change makes a new ETag");
    // 409: adding a backend that is there.
    let body = json!({"address": "127.0.0.1:1"}).to_string();
    eb.api("POST", "/v1/pools/app/backends", Some(&body), &[])
        .expect(201);
    eb.api("POST", "/v1/pools/app/backends", Some(&body), &[])
        .expect(409);
    // 413: too large.
    let huge = format!("[\"{}\"]", "x".repeat(2 << 20));
    eb.api("PUT", "/v1/routes", Some(&huge), &[]).expect(413);
}

#[test]
fn a_refused_change_leaves_the_previous_config_serving() {
    let a = Backend::start("a");
    let shop = shop_with(&[a.addr]);
    let eb = &shop.eb;
    let before = eb.api("GET", "/v1/config", None, &[]).expect(200);
    // A change with a certificate that does not exist: refused whole.
    let mut bad: Value = before.json();
    bad["pools"][0]["backends"] = json!([{"address": "127.0.0.1:1"}]);
    bad["certificates"][0]["key"] = json!("/does/not/exist.key");
    let r = eb
        .api("PUT", "/v1/config", Some(&bad.to_string()), &[])
        .expect(422);
    assert_eq!(r.json()["field"], "certificates[0].key");
    let after = eb.api("GET", "/v1/config", None, &[]).expect(200);
    assert_eq!(after.body, before.body);
    assert_eq!(after.etag, before.etag);
    assert_eq!(answered_by(&shop, "/"), "a", "the old pool still serves");
}

#[test]
fn pools_and_backends_weights_and_drain() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let shop = shop_with(&[a.addr]);
    let eb = &shop.eb;
    // Add b, then only b serves once a is drained.
    let r = eb
        .api(
            "POST",
            "/v1/pools/app/backends",
            Some(&json!({"address": b.addr.to_string(), "weight": 3}).to_string()),
            &[],
        )
        .expect(201);
    let added = r.json();
    assert_eq!(
        [&added["address"], &added["weight"], &added["state"]],
        [&json!(b.addr.to_string()), &json!(3), &json!("enabled")]
    );
    assert_eq!(added["idle"], false, "not draining");
    assert_eq!(added["endpoints"][0]["health"], "unchecked");
    let a_path = format!("/v1/pools/app/backends/{}", a.addr);
    let r = eb
        .api("POST", &format!("{a_path}/drain"), None, &[])
        .expect(200);
    assert_eq!(r.json()["state"], "draining");
    for _ in 0..6 {
        assert_eq!(answered_by(&shop, "/"), "b");
    }
    eb.api("POST", &format!("{a_path}/enable"), None, &[])
        .expect(200);
    // Weights 1 (a) and 3 (b): a serves 1 in 4 on one connection.
    let urls: Vec<String> = (0..8).map(|_| shop.url("/")).collect();
    let mut args = vec!["--http1.1"];
    args.extend(urls.iter().map(String::as_str));
    let out = shop.curl(&args);
    let served: Vec<String> = serde_json::Deserializer::from_str(&out.stdout)
        .into_iter::<Value>()
        .map(|v| v.unwrap()["backend"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(served.iter().filter(|s| *s == "a").count(), 2, "{served:?}");
    // PATCH the weight to 0: a gets nothing.
    let r = eb
        .api("PATCH", &a_path, Some("{\"weight\": 0}"), &[])
        .expect(200);
    assert_eq!(r.json()["weight"], 0);
    for _ in 0..4 {
        assert_eq!(answered_by(&shop, "/"), "b");
    }
    // Remove b: an empty rotation (a has weight 0) answers 503.
    eb.api(
        "DELETE",
        &format!("/v1/pools/app/backends/{}", b.addr),
        None,
        &[],
    )
    .expect(204);
    assert_eq!(shop.status(&[&shop.url("/")]), "503");
    // A pool in use cannot go; once unused it can.
    let r = eb.api("DELETE", "/v1/pools/app", None, &[]).expect(422);
    assert_eq!(r.json()["field"], "routes[0].action.proxy.pool");
    eb.api(
        "PUT",
        "/v1/routes",
        Some("[{\"action\": \"welcome\"}]"),
        &[],
    )
    .expect(200);
    eb.api("DELETE", "/v1/pools/app", None, &[]).expect(204);
    // PUT creates (201) then replaces (200); the name comes from the path.
    let pool = json!({"backends": [{"address": a.addr.to_string()}]}).to_string();
    eb.api("PUT", "/v1/pools/fresh", Some(&pool), &[])
        .expect(201);
    let r = eb
        .api("PUT", "/v1/pools/fresh", Some(&pool), &[])
        .expect(200);
    assert_eq!(r.json()["name"], "fresh");
    eb.api(
        "PUT",
        "/v1/pools/fresh",
        Some("{\"name\": \"other\", \"backends\": []}"),
        &[],
    )
    .expect(422);
}

#[test]
fn certificates_are_uploaded_served_and_never_shown_with_their_key() {
    let shop = shop_with(&[]);
    let eb = &shop.eb;
    let leaf = shop.pki.leaf("api", &["api.test"]);
    let upload = leaf.upload();
    let r = eb
        .api(
            "PUT",
            "/v1/certificates/api",
            Some(&upload.to_string()),
            &[],
        )
        .expect(201);
    assert_eq!(r.json()["names"], json!(["api.test"]));
    let list = eb.api("GET", "/v1/certificates", None, &[]).expect(200);
    assert!(!list.body.contains("PRIVATE KEY"));
    assert_eq!(list.json().as_array().unwrap().len(), 2);
    // The new certificate is served for its name, verified by curl.
    eb.api(
        "PUT",
        "/v1/routes",
        Some("[{\"action\": \"welcome\"}]"),
        &[],
    )
    .expect(200);
    let out = status_as(&shop.pki, "api.test", eb.addr("https"));
    assert_eq!(out.stdout, "200", "{}", out.stderr);
    // A key that does not fit the certificate is refused whole.
    let other = shop.pki.leaf("other", &["other.test"]);
    let mismatched = json!({"cert": leaf.upload()["cert"], "key": other.upload()["key"]});
    let r = eb
        .api(
            "PUT",
            "/v1/certificates/broken",
            Some(&mismatched.to_string()),
            &[],
        )
        .expect(422);
    assert!(r.json()["field"].as_str().unwrap().ends_with(".key"));
    eb.api("GET", "/v1/certificates/broken", None, &[])
        .expect(404);
    eb.api("DELETE", "/v1/certificates/api", None, &[])
        .expect(204);
    let certs: Vec<_> = std::fs::read_dir(eb.dir().join("data/certs"))
        .unwrap()
        .collect();
    assert!(
        certs.is_empty(),
        "files of deleted or refused certificates are removed"
    );
}

#[test]
fn listeners_are_added_and_removed_live() {
    let shop = shop_with(&[]);
    let eb = &shop.eb;
    eb.api(
        "PUT",
        "/v1/routes",
        Some("[{\"action\": {\"respond\": {\"body\": \"hello\\n\"}}}]"),
        &[],
    )
    .expect(200);
    let mut listeners = eb.api("GET", "/v1/listeners", None, &[]).expect(200).json();
    listeners
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "address": "127.0.0.1:0", "protocol": "http"}));
    let applied = eb
        .api("PUT", "/v1/listeners", Some(&listeners.to_string()), &[])
        .expect(200)
        .json();
    let extra: std::net::SocketAddr = applied[2]["address"].as_str().unwrap().parse().unwrap();
    assert_ne!(extra.port(), 0, "the port taken is written into the config");
    let hello = || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-H",
                "Host: x.test",
                &format!("http://{extra}/"),
            ])
            .output()
            .unwrap()
    };
    wait_for("the new listener to serve", || {
        (String::from_utf8_lossy(&hello().stdout) == "hello\n").then_some(())
    });
    // An address in use is refused with the field.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clash = listeners.clone();
    clash[2]["address"] = json!(taken.local_addr().unwrap().to_string());
    let r = eb
        .api("PUT", "/v1/listeners", Some(&clash.to_string()), &[])
        .expect(422);
    assert_eq!(r.json()["field"], "listeners[2].address");
    // Removed: the port stops accepting.
    listeners.as_array_mut().unwrap().pop();
    eb.api("PUT", "/v1/listeners", Some(&listeners.to_string()), &[])
        .expect(200);
    wait_for("the listener to close", || {
        std::net::TcpStream::connect(extra).is_err().then_some(())
    });
}

#[test]
fn the_host_map_routes_each_shop_to_its_pool() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let shop = Shop::start(&[a.addr], 2, |cfg| {
        cfg["pools"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "pod-b", "backends": [{"address": b.addr.to_string()}]}));
        cfg["routes"] = json!([{"host": "exact.test", "action": {"respond": {"body": "exact\n"}}}, {"action": {"proxy": {"pool": "app"}}}]);
    });
    let eb = &shop.eb;
    // 100 000 entries, streamed; every tenth shop on pod-b.
    let file = eb.dir().join("hostmap.ndjson");
    let mut text = String::new();
    for i in 0..100_000 {
        let pool = if i % 10 == 0 { "pod-b" } else { "app" };
        text.push_str(&format!(
            "{{\"host\":\"shop{i}.test\",\"pool\":\"{pool}\"}}\n"
        ));
    }
    text.push_str("{\"host\":\"exact.test\",\"pool\":\"pod-b\"}\n");
    std::fs::write(&file, &text).unwrap();
    let start = std::time::Instant::now();
    let r = eb
        .api(
            "PUT",
            "/v1/hostmap",
            None,
            &[
                "-H",
                "content-type: application/x-ndjson",
                "--data-binary",
                &format!("@{}", file.display()),
            ],
        )
        .expect(200);
    eprintln!("imported 100 001 host map entries in {:?}", start.elapsed());
    assert_eq!(r.json()["entries"], 100_001);
    let via = |host: &str| {
        let h = format!("Host: {host}");
        let out = shop.curl(&[
            "-sS",
            "-H",
            &h,
            "-D",
            "-",
            "-o",
            "/dev/null",
            &shop.url("/"),
        ]);
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("x-backend: ").map(|s| s.trim().to_owned()))
            .unwrap_or_default()
    };
    assert_eq!(via("shop10.test"), "b");
    assert_eq!(via("shop11.test"), "a");
    assert_eq!(via("SHOP99990.test"), "b");
    assert_eq!(
        via("not-mapped.test"),
        "a",
        "falls through to the catch-all route"
    );
    assert_eq!(
        shop.curl(&["-H", "Host: exact.test", &shop.url("/")])
            .stdout,
        "exact\n",
        "an exact route beats the map"
    );
    // Single entries.
    eb.api(
        "PUT",
        "/v1/hostmap/shop11.test",
        Some("{\"pool\": \"pod-b\"}"),
        &[],
    )
    .expect(200);
    assert_eq!(via("shop11.test"), "b");
    eb.api(
        "PUT",
        "/v1/hostmap/new.test",
        Some("{\"pool\": \"pod-b\"}"),
        &[],
    )
    .expect(201);
    assert_eq!(
        eb.api("GET", "/v1/hostmap/NEW.test", None, &[])
            .expect(200)
            .json(),
        json!({"host": "new.test", "pool": "pod-b"})
    );
    eb.api("DELETE", "/v1/hostmap/new.test", None, &[])
        .expect(204);
    eb.api("GET", "/v1/hostmap/new.test", None, &[]).expect(404);
    let r = eb
        .api(
            "PUT",
            "/v1/hostmap/x.test",
            Some("{\"pool\": \"nope\"}"),
            &[],
        )
        .expect(422);
    assert_eq!(r.json()["field"], "pool", "{}", r.body);
    // A bad line refuses the whole import, naming the line.
    std::fs::write(
        &file,
        "{\"host\":\"ok.test\",\"pool\":\"app\"}\n{\"host\":\"bad host\",\"pool\":\"app\"}\n",
    )
    .unwrap();
    let r = eb
        .api(
            "PUT",
            "/v1/hostmap",
            None,
            &["--data-binary", &format!("@{}", file.display())],
        )
        .expect(422);
    assert_eq!(r.json()["field"], "line 2");
    assert_eq!(via("shop10.test"), "b", "the previous map still serves");
    // Export: every entry, sorted.
    let export = eb.api("GET", "/v1/hostmap", None, &[]).expect(200);
    assert_eq!(export.body.lines().count(), 100_001);
}

#[test]
fn status_metrics_logs_and_token_rotation() {
    let a = Backend::start("a");
    let shop = shop_with(&[a.addr]);
    let eb = &shop.eb;
    for _ in 0..5 {
        assert_eq!(shop.status(&[&shop.url("/")]), "200");
    }
    let status = eb.api("GET", "/v1/status", None, &[]).expect(200).json();
    assert_eq!(status["cores"].as_array().unwrap().len(), 2);
    let total: u64 = status["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["requests_total"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 5);
    let metrics = eb.api("GET", "/metrics", None, &[]).expect(200).body;
    let backend = format!("pool=\"app\",backend=\"{}\"", a.addr);
    for line in [
        "edgebox_responses_total{class=\"2xx\"} 5".to_owned(),
        format!("edgebox_backend_requests_total{{{backend}}} 5"),
        format!("edgebox_backend_request_duration_seconds_count{{{backend}}} 5"),
        "edgebox_tls_handshakes_total{kind=\"full\",version=\"1.3\"} 5".to_owned(),
        "edgebox_listener_requests_total{listener=\"https\"} 5".to_owned(),
        "edgebox_listener_connections_total{listener=\"https\"} 5".to_owned(),
        "edgebox_listener_responses_total{listener=\"https\",class=\"2xx\"} 5".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
    eb.api(
        "PUT",
        "/v1/routes",
        Some("[{\"action\": {\"proxy\": {\"pool\": \"nope\"}}}]"),
        &[],
    )
    .expect(422);
    eb.api(
        "PUT",
        "/v1/routes",
        Some("[{\"action\": \"welcome\"}]"),
        &[],
    )
    .expect(200);
    let logs = eb
        .api("GET", "/v1/logs?limit=5", None, &[])
        .expect(200)
        .json();
    assert!(logs.as_array().unwrap().iter().any(|l| l["message"]
        .as_str()
        .unwrap()
        .contains("applied a new config")));
    // Rotate: the old token stops working, the new one works.
    let new = eb
        .api("POST", "/v1/token/rotate", None, &[])
        .expect(200)
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    eb.api("GET", "/v1/status", None, &[]).expect(401);
    let auth = format!("Authorization: Bearer {new}");
    eb.api("GET", "/v1/status", None, &["-H", &auth])
        .expect(200);
}

/// Changes through the API survive a restart: config, uploaded certificates,
/// host map. The restart has no --config: edgebox serves what it persisted.
#[test]
fn a_restart_comes_back_with_the_last_accepted_state() {
    let a = Backend::start("a");
    let shop = shop_with(&[a.addr]);
    let eb = &shop.eb;
    let leaf = shop.pki.leaf("api", &["api.test"]);
    let upload = leaf.upload();
    eb.api(
        "PUT",
        "/v1/certificates/api",
        Some(&upload.to_string()),
        &[],
    )
    .expect(201);
    eb.api(
        "PUT",
        "/v1/pools/second",
        Some(&json!({"backends": [{"address": a.addr.to_string(), "weight": 7}]}).to_string()),
        &[],
    )
    .expect(201);
    eb.api(
        "PUT",
        "/v1/hostmap/shop1.test",
        Some("{\"pool\": \"second\"}"),
        &[],
    )
    .expect(201);
    let config = eb.api("GET", "/v1/config", None, &[]).expect(200);
    let certs = eb
        .api("GET", "/v1/certificates", None, &[])
        .expect(200)
        .body;
    let hostmap = eb.api("GET", "/v1/hostmap", None, &[]).expect(200).body;
    let pki = shop.pki;
    let dir = shop.eb.stop();

    let eb = Edgebox::restart(dir, 2);
    let again = eb.api("GET", "/v1/config", None, &[]).expect(200);
    assert_eq!(again.body, config.body);
    assert_eq!(again.etag, config.etag);
    assert_eq!(
        eb.api("GET", "/v1/certificates", None, &[])
            .expect(200)
            .body,
        certs
    );
    assert_eq!(
        eb.api("GET", "/v1/hostmap", None, &[]).expect(200).body,
        hostmap
    );
    // And it serves that state: the uploaded certificate, on the same port.
    let out = status_as(&pki, "api.test", eb.addr("https"));
    assert_eq!(out.stdout, "200", "{}", out.stderr);
}

#[test]
fn off_the_appliance_reboot_and_poweroff_are_refused_and_shutdown_stops() {
    let mut shop = shop_with(&[]);
    for action in ["reboot", "poweroff"] {
        let r = shop
            .eb
            .api("POST", &format!("/v1/system/{action}"), None, &[])
            .expect(409);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("works on the appliance only"),
            "{action}"
        );
    }
    shop.eb.api("GET", "/v1/status", None, &[]).expect(200);
    shop.eb
        .api("POST", "/v1/system/shutdown", None, &[])
        .expect(202);
    let status = shop.eb.wait_exit();
    assert_eq!(status.code(), Some(0), "a requested shutdown exits 0");
}
