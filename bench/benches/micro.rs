//! Micro-benchmarks of the request path's lookups and the store's hashing:
//! `cargo bench -p bench --bench micro`. Each uses the code the data plane
//! runs, on data of the size the issue names.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgebox::config::Config;
use edgebox::hostmap::HostMap;
use edgebox::router::{normalize_host, HostPattern, Router};
use edgebox::snapshot::{Generations, Sites, Snapshot};
use edgebox_storage::{FileEntry, Hash, Manifest};

const HOSTS: usize = 1_000_000;
const PODS: usize = 1_000;

/// A snapshot whose host map sends 1 000 000 shop domains to 1 000 pods,
/// built as the control plane builds it, with the map.
fn snapshot_with_hostmap() -> (Snapshot, HostMap) {
    let pools: Vec<_> = (0..PODS)
        .map(|p| serde_json::json!({ "name": format!("pod-{p}"), "backends": [{ "address": format!("10.1.{}.{}:8080", p / 250, p % 250 + 1) }] }))
        .collect();
    let config = serde_json::json!({
        "listeners": [{ "name": "http", "address": "127.0.0.1:8080", "protocol": "http" }],
        "pools": pools,
        "routes": [{ "path_prefix": "/", "action": "welcome" }],
    });
    let config = Config::parse(config.to_string().as_bytes()).unwrap();
    let mut hostmap = HostMap::default();
    for h in 0..HOSTS {
        hostmap
            .insert(
                &format!("shop{h}.example.com"),
                &format!("pod-{}", h % PODS),
            )
            .unwrap();
    }
    let tls = edgebox::snapshot::TlsState {
        tickets: edgebox::tls::tickets::TicketKeys::new(3600).unwrap(),
        managed: edgebox::tls::managed::Managed::new(),
    };
    let snap = Snapshot::build(
        config,
        &hostmap,
        &Sites::new(),
        Path::new("/"),
        &tls,
        Generations::default(),
        &edgebox::snapshot::Resolving {
            upstreams: &Default::default(),
            extra: &Default::default(),
        },
    )
    .unwrap();
    (snap, hostmap)
}

fn host_to_pod(c: &mut Criterion) {
    let (snapshot, hostmap) = snapshot_with_hostmap();
    let mut g = c.benchmark_group("host_to_pod_1m");
    g.bench_function("hit", |b| {
        b.iter(|| {
            let host = normalize_host(black_box("Shop654321.example.com:443")).unwrap();
            black_box(snapshot.hostmap.get(host.as_ref()))
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            let host = normalize_host(black_box("nowhere.example.org")).unwrap();
            black_box(snapshot.hostmap.get(host.as_ref()))
        })
    });
    // One entry set, as `PUT /v1/hostmap/{host}` does it: a copy of the map
    // (sharing its entries), the insert, and the next snapshot's index.
    g.bench_function("update_one_entry", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let mut m = hostmap.clone();
            m.insert(&format!("shop{}.example.com", i % HOSTS as u64), "pod-7")
                .unwrap();
            black_box(snapshot.with_hostmap(&m, Generations::default()).unwrap())
        })
    });
    g.finish();
}

fn route_matching(c: &mut Criterion) {
    // 100 exact hosts with 5 path prefixes each, a wildcard and a catch-all.
    let mut router = Router::new();
    for h in 0..100 {
        let host = HostPattern::parse(&format!("www{h}.example.com")).unwrap();
        for (i, prefix) in ["/", "/api/", "/static/", "/admin/", "/img/"]
            .iter()
            .enumerate()
        {
            router.insert(Some(&host), prefix, h * 10 + i);
        }
    }
    router.insert(
        Some(&HostPattern::parse("*.example.net").unwrap()),
        "/",
        9_000,
    );
    router.insert(None, "/", 9_999);
    let mut g = c.benchmark_group("route");
    g.bench_function("exact_host_longest_prefix", |b| {
        b.iter(|| {
            black_box(router.route(
                black_box("www57.example.com"),
                black_box("/static/css/site.css"),
            ))
        })
    });
    g.bench_function("wildcard", |b| {
        b.iter(|| black_box(router.route(black_box("shop.example.net"), black_box("/x"))))
    });
    g.bench_function("catch_all", |b| {
        b.iter(|| black_box(router.route(black_box("other.org"), black_box("/x"))))
    });
    g.finish();
}

fn blake3_hashing(c: &mut Criterion) {
    let data = vec![0x5au8; 16 << 20];
    let mut g = c.benchmark_group("blake3");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("16MiB", |b| {
        b.iter(|| black_box(Hash::of(black_box(&data))))
    });
    g.finish();
}

fn manifest_lookup(c: &mut Criterion) {
    let files: BTreeMap<String, FileEntry> = (0..10_000)
        .map(|i| {
            let path = format!("section{}/page{i}/index.html", i % 50);
            let entry = FileEntry {
                hash: Hash::of(path.as_bytes()),
                size: 1024,
                content_type: "text/html; charset=utf-8".into(),
                variants: BTreeMap::new(),
            };
            (path, entry)
        })
        .collect();
    let manifest = Manifest {
        format: edgebox_storage::manifest::FORMAT,
        files,
        settings: Default::default(),
    };
    let mut g = c.benchmark_group("manifest_lookup_10k");
    g.bench_function("file", |b| {
        b.iter(|| black_box(manifest.lookup(black_box("/section7/page4257/index.html"))))
    });
    g.bench_function("directory_index", |b| {
        b.iter(|| black_box(manifest.lookup(black_box("/section7/page4257/"))))
    });
    g.bench_function("missing", |b| {
        b.iter(|| black_box(manifest.lookup(black_box("/nope.html"))))
    });
    g.finish();
}

criterion_group!(
    benches,
    host_to_pod,
    route_matching,
    blake3_hashing,
    manifest_lookup
);
criterion_main!(benches);
