//! Power cuts during a publish: after each restart the site is one whole
//! version, never a mix, and a scrub finds nothing corrupt.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const ROUNDS: u64 = 6;
const FILES: usize = 24;

/// Version `v` of the site: every file says which version it belongs to.
fn version(v: u64) -> BTreeMap<String, Vec<u8>> {
    (0..FILES)
        .map(|i| {
            let mut bytes = format!("version {v} file {i}\n").into_bytes();
            bytes.extend(noise(v * 1000 + i as u64, 2 << 20));
            (format!("f{i:02}.bin"), bytes)
        })
        .collect()
}

#[test]
fn a_killed_publish_leaves_the_old_or_the_new_site_whole() {
    // A reproducible run: the seed picks when each kill happens.
    let seed = std::env::var("EDGEBOX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122u64);
    eprintln!("crash test seed {seed} (set EDGEBOX_CRASH_SEED to repeat)");
    let shop = Shop::start(&[], 1, |cfg| {
        cfg["routes"] = json!([{"action": {"static": {"site": "www"}}}])
    });
    let pki = shop.pki;
    let mut eb = shop.eb;
    let site_dir = eb.dir().join("site");
    let mut published: Vec<u64> = Vec::new();
    let mut rng = seed;
    for round in 1..=ROUNDS {
        // Write version `round` and publish it while the power may go.
        std::fs::remove_dir_all(&site_dir).ok();
        std::fs::create_dir_all(&site_dir).unwrap();
        for (p, b) in version(round) {
            std::fs::write(site_dir.join(p), b).unwrap();
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(rng % 1500);
        let start = Instant::now();
        let publisher = {
            let (admin, dir) = (eb.admin.unwrap(), eb.dir().to_owned());
            let site_dir = site_dir.clone();
            std::thread::spawn(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_edgebox"))
                    .args(["publish", "--site", "www", "--parallel", "2"])
                    .arg(&site_dir)
                    .env("EDGEBOX_ADMIN", format!("https://{admin}"))
                    .env("EDGEBOX_TOKEN", TOKEN)
                    .env("EDGEBOX_DATA", dir.join("data"))
                    .output()
                    .unwrap()
            })
        };
        std::thread::sleep(delay);
        let dir = eb.kill();
        let out = publisher.join().unwrap();
        let completed = out.status.success();
        eprintln!(
            "round {round}: killed after {:?}; the publish {}",
            start.elapsed(),
            if completed {
                "had completed"
            } else {
                "was cut"
            }
        );
        if completed {
            published.push(round);
        }

        eb = Edgebox::restart(dir, 1);
        let https = eb.addr("https");
        let get = |path: &str| {
            let r = resolve("shop.test", https);
            let got = eb.dir().join("got");
            let out = curl(
                &pki,
                &[
                    "--resolve",
                    &r,
                    "-o",
                    &path_of(&got),
                    "-w",
                    "%{http_code}",
                    &format!("https://shop.test:{}/{path}", https.port()),
                ],
            );
            (out.stdout, std::fs::read(&got).unwrap_or_default())
        };
        let (status, first) = get("f00.bin");
        if status == "404" {
            assert!(
                published.is_empty(),
                "round {round}: a published site vanished"
            );
            continue;
        }
        let served: u64 = String::from_utf8_lossy(&first[..20])
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        // Whatever version is served, every file of it is whole.
        let expected = version(served);
        for (path, bytes) in &expected {
            let (status, got) = get(path);
            assert_eq!(status, "200", "round {round}: {path}");
            assert!(
                got == *bytes,
                "round {round}: {path} is not version {served} whole"
            );
        }
        // It is the last version whose publish completed, or a newer one whose
        // publish got its ref moved just before the power went.
        let last_done = published.last().copied().unwrap_or(0);
        assert!(
            served == round || served == last_done,
            "round {round}: serves version {served}, last completed {last_done}"
        );
        if served == round && !completed {
            published.push(round);
        }
        let scrub = eb
            .api("POST", "/v1/store/scrub", None, &[])
            .expect(200)
            .json();
        assert_eq!(scrub["corrupt"], json!([]), "round {round}");
        let tmp = std::fs::read_dir(eb.dir().join("data/store/tmp"))
            .unwrap()
            .count();
        assert_eq!(tmp, 0, "round {round}: temporary files left after restart");
    }
    assert!(
        !published.is_empty(),
        "no publish ever completed: the kills were all too early to test anything"
    );
}
