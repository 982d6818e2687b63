//! `edgebox ctl` against a running edgebox, as an operator uses it.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::*;

fn ctl(eb: &Edgebox, args: &[&str]) -> Output {
    eb.ctl(args)
}

fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "ctl succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn ctl_manages_pools_backends_host_map_and_config() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let eb = &shop.eb;

    let status = ok(ctl(eb, &["status"]));
    assert!(
        status.contains("CORE  OPEN CONNS  CONNS  REQUESTS"),
        "{status}"
    );

    ok(ctl(
        eb,
        &[
            "backend",
            "add",
            "app",
            &b.addr.to_string(),
            "--weight",
            "2",
        ],
    ));
    let drained = ok(ctl(eb, &["backend", "drain", "app", &a.addr.to_string()]));
    assert!(drained.contains("draining"), "{drained}");
    let table = ok(ctl(eb, &["pools", "list"]));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(
        rows[0].split_whitespace().collect::<Vec<_>>(),
        ["POOL", "BACKEND", "WEIGHT", "STATE"]
    );
    assert!(
        rows.iter().any(|r| r
            .split_whitespace()
            .eq(["app", &a.addr.to_string(), "1", "draining"])),
        "{table}"
    );
    assert!(
        rows.iter().any(|r| r
            .split_whitespace()
            .eq(["app", &b.addr.to_string(), "2", "enabled"])),
        "{table}"
    );
    // The resource alone lists, as `list` does.
    assert_eq!(ok(ctl(eb, &["pools"])), table);
    assert_eq!(shop.status(&[&shop.url("/")]), "200");

    // --json gives the API's JSON.
    let pools: serde_json::Value =
        serde_json::from_str(&ok(ctl(eb, &["--json", "pools", "list"]))).unwrap();
    assert_eq!(pools[0]["backends"][0]["state"], "draining");

    // Host map import from a file, then single changes.
    let file = eb.dir().join("map.ndjson");
    std::fs::write(
        &file,
        "{\"host\":\"s1.test\",\"pool\":\"app\"}\n{\"host\":\"s2.test\",\"pool\":\"app\"}\n",
    )
    .unwrap();
    let imported = ok(ctl(eb, &["hostmap", "import", file.to_str().unwrap()]));
    assert!(imported.starts_with("imported 2 entries"), "{imported}");
    ok(ctl(eb, &["hostmap", "set", "s3.test", "app"]));
    ok(ctl(eb, &["hostmap", "delete", "s1.test"]));
    assert_eq!(
        ok(ctl(eb, &["hostmap", "export"])),
        "{\"host\":\"s2.test\",\"pool\":\"app\"}\n{\"host\":\"s3.test\",\"pool\":\"app\"}\n"
    );

    // config get, edit, put; a refused put names the field and changes nothing.
    let config = ok(ctl(eb, &["config", "get"]));
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v["routes"] = serde_json::json!([{"action": {"proxy": {"pool": "missing"}}}]);
    let bad = eb.dir().join("bad.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    let err = fails(ctl(eb, &["config", "put", bad.to_str().unwrap()]));
    assert!(
        err.contains("422") && err.contains("routes[0].action.proxy.pool"),
        "{err}"
    );
    assert_eq!(ok(ctl(eb, &["config", "get"])), config);
    let err = fails(ctl(
        eb,
        &[
            "config",
            "put",
            bad.to_str().unwrap(),
            "--if-match",
            "\"c0\"",
        ],
    ));
    assert!(
        err.contains("422"),
        "an invalid change is reported as invalid even when stale: {err}"
    );
}

#[test]
fn ctl_refuses_a_wrong_token_or_certificate() {
    let shop = Shop::start(&[], 1, |_| {});
    let eb = &shop.eb;
    let err = fails(ctl(eb, &["--token", "wrong", "status"]));
    assert!(err.contains("401"), "{err}");
    // Another certificate than the admin API's: refused before any request.
    let other = shop.pki.leaf("other", &["127.0.0.1"]);
    let err = fails(ctl(
        eb,
        &["--admin-cert", other.cert.to_str().unwrap(), "status"],
    ));
    assert!(
        err.contains("certificate other than the pinned one"),
        "{err}"
    );
    ok(ctl(eb, &["--insecure", "status"]));
}

#[test]
fn the_token_is_shown_once_and_kept_only_as_a_hash() {
    let shop = Shop::start(&[], 1, |_| {});
    let banner = shop.eb.banner.join("\n");
    assert!(
        banner.contains(&format!("admin token: {TOKEN}")),
        "{banner}"
    );
    let hash_file = shop.eb.dir().join("data/admin/token.sha256");
    let stored = std::fs::read_to_string(&hash_file).unwrap();
    assert!(!stored.contains(TOKEN));
    let eb = Edgebox::restart(shop.eb.stop(), 1);
    let banner = eb.banner.join("\n");
    assert!(!banner.contains(TOKEN), "shown again: {banner}");
    ok(ctl(&eb, &["status"]));
}

#[test]
fn ctl_lists_rolls_back_and_scrubs_sites() {
    let shop = Shop::start(&[], 1, |cfg| {
        cfg["routes"] = serde_json::json!([{"action": {"static": {"site": "www"}}}])
    });
    let eb = &shop.eb;
    let dir = eb.dir().join("site");
    std::fs::create_dir_all(&dir).unwrap();
    for v in 1..=2 {
        std::fs::write(dir.join("index.html"), format!("version {v}\n")).unwrap();
        assert!(eb.publish(&dir, "www").status.success());
    }
    let table = ok(ctl(eb, &["sites", "list"]));
    assert!(
        table.lines().nth(1).unwrap().starts_with("www   2"),
        "{table}"
    );
    ok(ctl(eb, &["sites", "rollback", "www", "1"]));
    assert_eq!(shop.curl(&[&shop.url("/")]).stdout, "version 1\n");
    let scrub = ok(ctl(eb, &["store", "scrub"]));
    assert!(scrub.contains(": 0 corrupt"), "{scrub}");
    let err = fails(ctl(eb, &["sites", "rollback", "www", "99"]));
    assert!(err.contains("404"), "{err}");
}
