//! The entry points of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer):
//! each takes arbitrary bytes, feeds them to a parser of untrusted input the
//! way edgebox does, and checks what must hold for every input, so that a
//! wrong answer is found as well as a panic. They are here, not in `fuzz/`,
//! so that they build with the rest and that the unit test below replays the
//! committed corpus (`fuzz/corpus/TARGET/`, the seeds and every input a
//! fuzzer found a bug with) on every `cargo test`.
//!
//! docs/security.md says how to run the fuzzers.

use crate::config::Config;

/// A target: takes any bytes, panics on a bug.
pub type Target = fn(&[u8]);

/// The targets, by the names of `fuzz/fuzz_targets/*.rs`.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("admin_body", admin_body),
    ("manifest", manifest),
    ("hostmap_import", hostmap_import),
    ("cmdline", cmdline),
    ("replication_message", replication_message),
    ("proxy_header", proxy_header),
    ("routing_path", routing_path),
    ("http2_frames", http2_frames),
    ("vrrp_packet", vrrp_packet),
    ("acme_answers", acme_answers),
];

/// The config document: a document taken is valid, and reads back the same
/// after it is written out.
pub fn config(data: &[u8]) {
    if let Ok(c) = Config::parse(data) {
        let again = Config::parse(c.to_json_pretty().as_bytes());
        assert_eq!(again.as_ref(), Ok(&c), "the config does not read back");
    }
}

/// An admin API body: the first byte picks the endpoint.
pub fn admin_body(data: &[u8]) {
    if let Some((&kind, body)) = data.split_first() {
        let _ = crate::admin::fuzz_body(kind, body);
    }
}

/// A site manifest: one taken reads back the same from its canonical bytes.
pub fn manifest(data: &[u8]) {
    use edgebox_storage::Manifest;
    if let Ok(m) = Manifest::parse(data) {
        assert_eq!(Manifest::parse(&m.to_bytes()).as_ref(), Ok(&m));
    }
}

/// The host-map import (NDJSON), in chunks cut where the first byte says: a
/// map taken is the same however it was cut, and reads back the same after
/// it is written out.
pub fn hostmap_import(data: &[u8]) {
    use crate::hostmap::Importer;
    let Some((&cut, text)) = data.split_first() else {
        return;
    };
    let whole = import(text, text.len().max(1));
    let chunked = import(text, usize::from(cut).max(1));
    assert_eq!(
        whole.as_ref().map(|m| m.sorted()).ok(),
        chunked.as_ref().map(|m| m.sorted()).ok(),
        "the import depends on where the stream was cut"
    );
    if let Ok(map) = whole {
        let mut out = Vec::new();
        map.write_ndjson(&mut out).expect("writing to memory");
        let again = import(&out, out.len().max(1)).expect("a written map reads back");
        assert_eq!(again.sorted(), map.sorted());
    }

    fn import(text: &[u8], chunk: usize) -> Result<crate::hostmap::HostMap, ()> {
        let mut importer = Importer::new();
        for piece in text.chunks(chunk) {
            importer.push(piece).map_err(drop)?;
        }
        importer.finish().map_err(drop)
    }
}

/// The kernel command line PID 1 reads its network settings from.
pub fn cmdline(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::init::cmdline::parse(text);
    }
}

/// A replication message: the first byte picks a request, a response or a
/// notice; one decoded encodes and decodes back the same.
pub fn replication_message(data: &[u8]) {
    use edgebox_storage::replication::wire::{self, Notice, Request, Response};
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    fn round_trip<T>(m: T, decode: impl Fn(&[u8]) -> Result<T, wire::DecodeError>)
    where
        T: serde::Serialize + PartialEq + std::fmt::Debug,
    {
        let bytes = wire::encode(&m);
        let n = wire::length(bytes[..4].try_into().expect("a 4-byte prefix"))
            .expect("an encoded message is within the limit");
        assert_eq!(decode(&bytes[4..4 + n]).as_ref(), Ok(&m));
    }
    match kind % 3 {
        0 => {
            if let Ok(m) = wire::decode_request(body) {
                round_trip(m, wire::decode_request);
            }
        }
        1 => {
            if let Ok(m) = wire::decode::<Response>(body) {
                round_trip(m, wire::decode::<Response>);
            }
        }
        _ => {
            if let Ok(m) = wire::decode::<Notice>(body) {
                round_trip(m, wire::decode::<Notice>);
            }
        }
    }
    let _ = wire::decode::<Request>(body);
}

/// A PROXY protocol header (v1 or v2): a header found lies within the bytes.
pub fn proxy_header(data: &[u8]) {
    if let Ok(Some(h)) = crate::proxy_protocol::decode(data) {
        assert!(h.len <= data.len(), "a header longer than its input");
    }
}

/// The path routing matches, for a path a request may have (its escapes
/// valid): normalising is idempotent, and leaves no dot segment.
pub fn routing_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if !crate::router::valid_escapes(path) {
        return;
    }
    let once = crate::router::routing_path(path);
    let twice = crate::router::routing_path(&once);
    assert_eq!(once, twice, "routing_path is not idempotent for {path:?}");
    if once.starts_with('/') {
        assert!(
            !once.split('/').any(|s| s == "." || s == ".."),
            "a dot segment is left in {once:?} (from {path:?})"
        );
    }
}

/// Bytes from an HTTP/2 client through the frame budget, cut where the
/// first byte says: the verdict does not depend on the cuts.
pub fn http2_frames(data: &[u8]) {
    use crate::server::frame_budget::FrameBudget;
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let verdict = |chunk: usize| {
        let mut budget = FrameBudget::new(0);
        stream
            .chunks(chunk)
            .map(|c| budget.feed(c, 0))
            .find_map(Result::err)
    };
    assert_eq!(
        verdict(stream.len().max(1)),
        verdict(usize::from(cut).max(1))
    );
}

/// VRRP packets into a backup and a master, the first byte the TTL: a
/// packet taken as an advert encodes and decodes back to itself, and no packet
/// makes the owner (priority 255, the higher address) give way.
pub fn vrrp_packet(data: &[u8]) {
    use crate::failover::machine::{Action, Machine, Params, State};
    use crate::failover::packet::{Advert, GROUP_V4};
    use std::net::IpAddr;
    let Some((&ttl, bytes)) = data.split_first() else {
        return;
    };
    let (src, dst) = (IpAddr::from([10, 0, 2, 16]), IpAddr::V4(GROUP_V4));
    if let Ok(a) = Advert::decode(bytes, src, dst, ttl) {
        // Not byte for byte: the reserved bits are ignored on reception.
        let again = Advert::decode(&a.encode(src, dst), src, dst, 255);
        assert_eq!(again.as_ref(), Ok(&a), "an advert that does not read back");
    }
    let owner = |priority| {
        Machine::new(Params {
            vrid: 51,
            priority,
            advert_cs: 5,
            preempt: true,
            preempt_delay_us: 0,
            addresses: vec![IpAddr::from([10, 0, 2, 100])],
            primary: IpAddr::from([10, 0, 2, 200]),
            auth_key: None,
        })
    };
    let mut master = owner(255);
    master.start(0);
    let out = master.receive(1, src, dst, ttl, bytes);
    assert_eq!(master.state(), State::Master, "the owner gave way");
    assert!(!out.contains(&Action::Release));
    let mut backup = owner(100);
    backup.start(0);
    backup.receive(1, src, dst, ttl, bytes);
    assert_ne!(backup.state(), State::Initialize);
}

/// What an ACME CA or a peer sends: the first byte picks what.
/// - 0: a certificate shard from a peer (the next byte its number): one
///   taken reads back the same after it is written out;
/// - 1: a renewal window (RFC 9773): one taken ends after it starts, and
///   the moment picked is in it;
/// - 2: a CA's answers, split at 0xff bytes (each: a status byte, then the
///   body), to an order in any phase: the order ends or asks again, and
///   never panics, however wrong the answers.
pub fn acme_answers(data: &[u8]) {
    use crate::acme::{ari, order, shard};
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            let Some((&s, bytes)) = rest.split_first() else {
                return;
            };
            if let Ok(m) = shard::decode(s, bytes) {
                let again =
                    shard::decode(s, &shard::encode(m.iter().map(|(n, e)| (n.as_str(), e))))
                        .expect("a shard written out reads back");
                assert_eq!(again.len(), m.len());
                for (name, e) in &m {
                    let a = &again[name];
                    assert_eq!((&a.leaf, &a.chain[..]), (&e.leaf, &e.chain[..]));
                    assert_eq!(a.key.secret_pkcs8_der(), e.key.secret_pkcs8_der());
                }
            }
        }
        1 => {
            if let Ok(w) = ari::parse(rest) {
                assert!(w.start_ms < w.end_ms);
                let at = ari::pick(w, u64::from_le_bytes([rest.len() as u8; 8]));
                assert!((w.start_ms..w.end_ms).contains(&at));
            }
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = ari::rfc3339_ms(text);
            }
        }
        _ => {
            static KEY: std::sync::OnceLock<crate::acme::jws::AccountKey> =
                std::sync::OnceLock::new();
            let key = KEY.get_or_init(|| crate::acme::jws::AccountKey::generate().expect("a key"));
            let mut session = order::Session {
                directory_url: "https://ca.test/dir".into(),
                directory: None,
                kid: None,
                contact: Vec::new(),
                eab: None,
            };
            let mut o = order::Order::new(
                "shop.test",
                &[
                    order::ChallengeKind::Http01,
                    order::ChallengeKind::TlsAlpn01,
                ],
                vec![0x30, 0],
            );
            let mut answers = rest.split(|&b| b == 0xff);
            for _ in 0..256 {
                match o.next(&session, key) {
                    order::Step::Send(_) => {
                        let Some(answer) = answers.next() else {
                            return;
                        };
                        let (status, body) = answer
                            .split_first()
                            .map_or((200, &[][..]), |(&s, b)| (u16::from(s) + 200, b));
                        o.receive(
                            &mut session,
                            key,
                            order::Response {
                                status,
                                location: Some("https://ca.test/x".into()),
                                nonce: Some("n".into()),
                                retry_after: None,
                                body: body.to_vec(),
                            },
                        );
                    }
                    order::Step::Wait(_) | order::Step::Provision(_) => {}
                    order::Step::Done(_) | order::Step::Failed(_) => return,
                }
            }
            panic!("an order neither ended nor ran out of answers in 256 steps");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed corpus input, replayed: the seeds, and the inputs
    /// fuzzing found bugs with (regression tests).
    #[test]
    fn the_committed_corpus_passes_every_target() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (name, target) in super::TARGETS {
            let dir = corpus.join(name);
            let mut inputs = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.expect("a directory entry").path();
                let data = std::fs::read(&path).expect("a corpus file");
                let caught = std::panic::catch_unwind(|| target(&data));
                assert!(caught.is_ok(), "{name}: {path:?} fails");
                inputs += 1;
            }
            assert!(inputs > 0, "{name}: no seed in {dir:?}");
        }
    }
}
