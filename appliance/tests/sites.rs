//! Static sites: published with `edgebox publish`, served over HTTPS.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use common::*;
use serde_json::json;

/// A site directory: path → bytes.
fn write_site(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (path, bytes) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

fn www(shop_cfg: &mut serde_json::Value) {
    shop_cfg["routes"] = json!([{"action": {"static": {"site": "www"}}}]);
}

#[test]
fn a_published_directory_is_served_byte_exact() {
    let shop = Shop::start(&[], 2, www);
    let eb = &shop.eb;
    let dir = eb.dir().join("site");
    let mut files = BTreeMap::new();
    files.insert(
        "index.html".to_owned(),
        "<h1>home, version 1</h1>\n".repeat(400).into_bytes(),
    );
    files.insert("docs/index.html".to_owned(), b"<h1>docs</h1>\n".repeat(40));
    files.insert(
        "css/site.css".to_owned(),
        b"body { margin: 0 }\n".repeat(100),
    );
    files.insert("404.html".to_owned(), b"<h1>nothing here</h1>\n".to_vec());
    files.insert("img/logo.png".to_owned(), noise(1, 30_000));
    files.insert("big/video.bin".to_owned(), noise(2, 100 << 20));
    write_site(&dir, &files);

    assert_eq!(shop.status(&[&shop.url("/")]), "404", "not published yet");
    let out = eb.publish(&dir, "www");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.starts_with("published site www generation 1: 6 files"),
        "{said}"
    );

    // Every file, byte-exact, over HTTP/1.1 and HTTP/2.
    for version in ["--http1.1", "--http2"] {
        for (path, bytes) in &files {
            let got = eb.dir().join("got");
            let url = shop.url(&format!("/{path}"));
            let out = shop.curl(&[version, "-o", &path_of(&got), "-w", "%{http_code}", &url]);
            assert_eq!(out.stdout, "200", "{path}");
            assert!(
                std::fs::read(&got).unwrap() == *bytes,
                "{path} differs over {version}"
            );
        }
    }
    // Index files and the 404 page.
    assert_eq!(
        shop.curl(&[&shop.url("/docs/")]).stdout.as_bytes(),
        &files["docs/index.html"][..]
    );
    let out = shop.curl(&["-w", "%{http_code}", &shop.url("/missing.html")]);
    assert_eq!(out.stdout, "<h1>nothing here</h1>\n404");

    // ETag → 304.
    let head = shop.curl(&["-sS", "-I", &shop.url("/css/site.css")]).stdout;
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(
        shop.status(&[
            "-H",
            &format!("If-None-Match: {etag}"),
            &shop.url("/css/site.css")
        ]),
        "304"
    );
    assert!(
        head.contains(&format!("content-length: {}", files["css/site.css"].len())),
        "HEAD: {head}"
    );
    // The site's own series: its 304 counted, its requests and bytes.
    let metrics = eb.api("GET", "/metrics", None, &[]).expect(200).body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "edgebox_site_not_modified_total{site=\"www\"} 1"),
        "{metrics}"
    );
    let requests: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgebox_site_requests_total{site=\"www\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        requests >= 16,
        "{requests}: every file twice, an index, a 404, a HEAD, a 304"
    );

    // A range in the middle of the 100 MiB file.
    let part = eb.dir().join("part");
    let out = shop.curl(&[
        "-r",
        "50000000-50999999",
        "-o",
        &path_of(&part),
        "-w",
        "%{http_code}",
        &shop.url("/big/video.bin"),
    ]);
    assert_eq!(out.stdout, "206");
    assert!(std::fs::read(&part).unwrap() == files["big/video.bin"][50_000_000..51_000_000]);
    assert_eq!(
        shop.status(&["-r", "200000000-", &shop.url("/big/video.bin")]),
        "416"
    );

    // Precompressed variants, decoded back to the original.
    for (encoding, header) in [
        ("br", "content-encoding: br"),
        ("gzip", "content-encoding: gzip"),
    ] {
        let packed = eb.dir().join("packed");
        let out = shop.curl(&[
            "-D",
            "-",
            "-H",
            &format!("Accept-Encoding: {encoding}"),
            "-o",
            &path_of(&packed),
            &shop.url("/"),
        ]);
        assert!(
            out.stdout.contains(header) && out.stdout.contains("vary: Accept-Encoding"),
            "{}",
            out.stdout
        );
        let packed = std::fs::read(&packed).unwrap();
        let mut plain = Vec::new();
        if encoding == "br" {
            brotli::Decompressor::new(&packed[..], 4096)
                .read_to_end(&mut plain)
                .unwrap();
        } else {
            flate2::read::GzDecoder::new(&packed[..])
                .read_to_end(&mut plain)
                .unwrap();
        }
        assert!(
            plain == files["index.html"],
            "{encoding} variant decodes to the original"
        );
        assert!(packed.len() < plain.len() / 5);
    }

    // A second version: only what changed is uploaded; rollback brings back the first.
    files.insert(
        "index.html".to_owned(),
        "<h1>home, version 2</h1>\n".repeat(400).into_bytes(),
    );
    write_site(&dir, &files);
    let out = eb.publish(&dir, "www");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("generation 2") && said.contains("uploaded 3 blobs"),
        "the page and its two variants: {said}"
    );
    assert!(shop
        .curl(&[&shop.url("/")])
        .stdout
        .starts_with("<h1>home, version 2"));
    eb.api(
        "POST",
        "/v1/sites/www/rollback",
        Some("{\"generation\": 1}"),
        &[],
    )
    .expect(200);
    assert!(shop
        .curl(&[&shop.url("/")])
        .stdout
        .starts_with("<h1>home, version 1"));
    let site = eb.api("GET", "/v1/sites/www", None, &[]).expect(200).json();
    assert_eq!(site["generation"], 3);

    let scrub = eb
        .api("POST", "/v1/store/scrub", None, &[])
        .expect(200)
        .json();
    assert_eq!(scrub["corrupt"], json!([]));
    // Deleting the site: 404 again, and GC may take its blobs.
    eb.api("DELETE", "/v1/sites/www", None, &[]).expect(204);
    assert_eq!(shop.status(&[&shop.url("/")]), "404");
    let gc = eb
        .api("POST", "/v1/store/gc?grace_s=0", None, &[])
        .expect(200)
        .json();
    assert!(gc["removed"].as_u64().unwrap() >= 9, "{gc}");
}

#[test]
fn a_blob_that_does_not_match_its_hash_is_refused() {
    let shop = Shop::start(&[], 1, www);
    let eb = &shop.eb;
    let claimed = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"; // BLAKE3("")
    let path = format!("/v1/blobs/{claimed}");
    let r = eb
        .api(
            "PUT",
            &path,
            Some("not empty"),
            &["-H", "content-type: application/octet-stream"],
        )
        .expect(422);
    assert_eq!(r.json()["field"], "hash");
    eb.api("HEAD", &path, None, &["-I"]).expect(404);
    let tmp: Vec<_> = std::fs::read_dir(eb.dir().join("data/store/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "nothing left behind");
    eb.api("PUT", &path, Some(""), &[]).expect(201);
    eb.api("HEAD", &path, None, &["-I"]).expect(200);
    // A manifest naming blobs that are not there is refused; nothing changes.
    let manifest = json!({"format": 1, "files": {"a.txt": {"hash": "0".repeat(64), "size": 1, "content_type": "text/plain"}}});
    let m = manifest.to_string();
    let hash = blake3::hash(m.as_bytes()).to_hex().to_string();
    eb.api("PUT", &format!("/v1/blobs/{hash}"), Some(&m), &[])
        .expect(201);
    let r = eb
        .api(
            "PUT",
            "/v1/sites/www",
            Some(&json!({"manifest": hash}).to_string()),
            &[],
        )
        .expect(422);
    assert!(r.json()["error"].as_str().unwrap().contains("missing"));
    eb.api("GET", "/v1/sites/www", None, &[]).expect(404);
    // A path that escapes the site is refused by the manifest check.
    let evil = json!({"format": 1, "files": {"../etc/passwd": {"hash": claimed, "size": 0, "content_type": "text/plain"}}}).to_string();
    let evil_hash = blake3::hash(evil.as_bytes()).to_hex().to_string();
    eb.api("PUT", &format!("/v1/blobs/{evil_hash}"), Some(&evil), &[])
        .expect(201);
    let r = eb
        .api(
            "PUT",
            "/v1/sites/www",
            Some(&json!({"manifest": evil_hash}).to_string()),
            &[],
        )
        .expect(422);
    assert!(
        r.json()["field"]
            .as_str()
            .unwrap()
            .starts_with("manifest.files["),
        "{}",
        r.body
    );
}

#[test]
fn a_large_blob_truncated_under_the_running_server_is_cut_off_and_never_served() {
    let shop = Shop::start(&[], 1, www);
    let eb = &shop.eb;
    let dir = eb.dir().join("site");
    let big = noise(3, 16 << 20);
    let mut files = BTreeMap::new();
    files.insert("big.bin".to_owned(), big.clone());
    files.insert("index.html".to_owned(), b"<h1>still here</h1>\n".to_vec());
    write_site(&dir, &files);
    assert!(eb.publish(&dir, "www").status.success());
    let got = eb.dir().join("got");
    let whole = shop.curl(&[
        "-o",
        &path_of(&got),
        "-w",
        "%{http_code}",
        &shop.url("/big.bin"),
    ]);
    assert_eq!(whole.stdout, "200");
    assert!(std::fs::read(&got).unwrap() == big);

    // A download under way (its first MiB read, the client reading no
    // more for now) when the blob's file is cut to 1 MiB.
    let hash = blake3::hash(&big).to_hex().to_string();
    let blob = eb
        .dir()
        .join("data/store/blobs")
        .join(&hash[..2])
        .join(&hash);
    let config = std::sync::Arc::new(tls_client(&shop.pki, &[b"http/1.1"]));
    let mut conn = rustls::ClientConnection::new(config, server_name("shop.test")).unwrap();
    let tcp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small window, so that little of the file is on its way ahead.
    tcp.set_recv_buffer_size(64 << 10).unwrap();
    tcp.connect(&eb.addr("https").into()).unwrap();
    let mut tcp: std::net::TcpStream = tcp.into();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    use std::io::Write;
    tls.write_all(b"GET /big.bin HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = vec![0u8; 1 << 20];
    tls.read_exact(&mut first).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    let head = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = first.len() - head + rest.len();
    assert!(
        body < big.len(),
        "the download was cut: {body} of {} bytes",
        big.len()
    );
    eprintln!("cut after {body} of {} bytes", big.len());
    // The process lives (a mapping would have raised SIGBUS), the next
    // request for the blob is refused, and the rest of the site is served.
    assert_eq!(shop.status(&[&shop.url("/big.bin")]), "500");
    assert_eq!(shop.status(&[&shop.url("/")]), "200");
    assert!(eb
        .logs()
        .iter()
        .any(|l| l.contains("does not match its name")));
}
