//! What to answer for a static-file request, decided without IO: the file,
//! the encoding, the status (200, 206, 304, 404, 416) and the headers.

use edgebox_storage::{Encoding, Hash, Manifest};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

/// The answer, before any byte is read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub status: StatusCode,
    /// The blob to send (`None`: no body, e.g. 304, 416, or a plain 404).
    pub blob: Option<Hash>,
    /// Byte range of the blob to send, end exclusive.
    pub range: (u64, u64),
    /// The blob's whole size.
    pub size: u64,
    pub headers: Vec<(header::HeaderName, String)>,
    /// HEAD: headers only.
    pub head_only: bool,
}

/// Decides the answer for `path` of a site.
pub fn plan(m: &Manifest, method: &Method, path: &str, req: &HeaderMap) -> Plan {
    let head_only = method == Method::HEAD;
    if method != Method::GET && method != Method::HEAD {
        let mut p = bare(StatusCode::METHOD_NOT_ALLOWED, head_only);
        p.headers.push((header::ALLOW, "GET, HEAD".into()));
        return p;
    }
    // Paths arrive percent-encoded (`/a%20b.html`); files are named decoded.
    let decoded = crate::router::percent_decode(path);
    let (found, status) = match decoded.as_deref().and_then(|p| m.lookup(p)) {
        Some(f) => (Some(f), StatusCode::OK),
        None => match m.settings.not_found.as_deref() {
            Some(nf) => (
                m.files.get_key_value(nf).map(|(k, v)| (k.as_str(), v)),
                StatusCode::NOT_FOUND,
            ),
            None => (None, StatusCode::NOT_FOUND),
        },
    };
    let Some((file_path, file)) = found else {
        return bare(StatusCode::NOT_FOUND, head_only);
    };

    // Representation: a precompressed variant if the client accepts one.
    let encoding = if status == StatusCode::OK || status == StatusCode::NOT_FOUND {
        negotiate(req, file.variants.keys().copied())
    } else {
        None
    };
    let (blob, size) = match encoding.and_then(|e| file.variants.get(&e)) {
        Some(v) => (v.hash, v.size),
        None => (file.hash, file.size),
    };
    let mut etag = String::with_capacity(66);
    etag.push('"');
    etag.push_str(std::str::from_utf8(&blob.to_hex()).unwrap_or_default());
    etag.push('"');
    let mut headers = vec![
        (header::CONTENT_TYPE, file.content_type.clone()),
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, m.cache_control(file_path)),
    ];
    if !file.variants.is_empty() {
        headers.push((header::VARY, "Accept-Encoding".into()));
    }
    if let Some(e) = encoding {
        headers.push((header::CONTENT_ENCODING, e.token().into()));
    }
    if status == StatusCode::NOT_FOUND {
        return Plan {
            status,
            blob: Some(blob),
            range: (0, size),
            size,
            headers,
            head_only,
        };
    }
    headers.push((header::ACCEPT_RANGES, "bytes".into()));

    if none_match(req, &etag) {
        return Plan {
            status: StatusCode::NOT_MODIFIED,
            blob: None,
            range: (0, 0),
            size,
            headers,
            head_only,
        };
    }
    let range = match req.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_holds(req, &etag) => parse_range(r, size),
        _ => RangeAnswer::Whole,
    };
    match range {
        RangeAnswer::Whole => Plan {
            status: StatusCode::OK,
            blob: Some(blob),
            range: (0, size),
            size,
            headers,
            head_only,
        },
        RangeAnswer::Part(start, end) => {
            headers.push((
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            ));
            Plan {
                status: StatusCode::PARTIAL_CONTENT,
                blob: Some(blob),
                range: (start, end),
                size,
                headers,
                head_only,
            }
        }
        RangeAnswer::Unsatisfiable => {
            headers.push((header::CONTENT_RANGE, format!("bytes */{size}")));
            Plan {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                blob: None,
                range: (0, 0),
                size,
                headers,
                head_only,
            }
        }
    }
}

fn bare(status: StatusCode, head_only: bool) -> Plan {
    Plan {
        status,
        blob: None,
        range: (0, 0),
        size: 0,
        headers: Vec::new(),
        head_only,
    }
}

/// The best encoding among `available` that the client accepts (q > 0),
/// preferring br over gzip at equal q.
fn negotiate(req: &HeaderMap, available: impl Iterator<Item = Encoding>) -> Option<Encoding> {
    let available: Vec<Encoding> = available.collect();
    if available.is_empty() {
        return None;
    }
    let mut best: Option<(Encoding, u32)> = None;
    for value in req.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(1000, |q| {
                    (q.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0) * 1000.0) as u32
                });
            let enc = match token.as_str() {
                "br" => Encoding::Br,
                "gzip" | "x-gzip" => Encoding::Gzip,
                _ => continue,
            };
            if q == 0 || !available.contains(&enc) {
                continue;
            }
            let better = match best {
                None => true,
                Some((b, bq)) => q > bq || (q == bq && enc == Encoding::Br && b != Encoding::Br),
            };
            if better {
                best = Some((enc, q));
            }
        }
    }
    best.map(|(e, _)| e)
}

/// `If-None-Match` lists `etag` (or `*`).
fn none_match(req: &HeaderMap, etag: &str) -> bool {
    req.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    })
}

/// A `Range` is honoured unless `If-Range` names another representation.
fn if_range_holds(req: &HeaderMap, etag: &str) -> bool {
    match req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v.trim() == etag,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    Whole,
    /// Start, end exclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (RFC 9110, 14.1.2). Several ranges, or anything
/// malformed, are answered with the whole file, which the RFC allows.
fn parse_range(value: &str, size: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if size == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Part(size.saturating_sub(n), size),
            None => RangeAnswer::Whole,
        },
        (start, "") => match num(start) {
            Some(s) if s < size => RangeAnswer::Part(s, size),
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Whole,
        },
        (start, end) => match (num(start), num(end)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= size {
                    RangeAnswer::Unsatisfiable
                } else {
                    RangeAnswer::Part(s, e.saturating_add(1).min(size))
                }
            }
            _ => RangeAnswer::Whole,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use edgebox_storage::{FileEntry, SiteSettings, Variant};
    use http::HeaderValue;

    use super::*;

    fn site() -> Manifest {
        let mut files = BTreeMap::new();
        let mut variants = BTreeMap::new();
        variants.insert(
            Encoding::Br,
            Variant {
                hash: Hash::of(b"br"),
                size: 2,
            },
        );
        variants.insert(
            Encoding::Gzip,
            Variant {
                hash: Hash::of(b"gz"),
                size: 3,
            },
        );
        files.insert(
            "index.html".into(),
            FileEntry {
                hash: Hash::of(b"home"),
                size: 1000,
                content_type: "text/html".into(),
                variants,
            },
        );
        files.insert(
            "404.html".into(),
            FileEntry {
                hash: Hash::of(b"gone"),
                size: 4,
                content_type: "text/html".into(),
                variants: BTreeMap::new(),
            },
        );
        let settings = SiteSettings {
            not_found: Some("404.html".into()),
            ..SiteSettings::default()
        };
        Manifest::new(files, settings)
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn header<'a>(p: &'a Plan, name: &header::HeaderName) -> Option<&'a str> {
        p.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn whole_file_with_validators() {
        let p = plan(&site(), &Method::GET, "/", &req(&[]));
        assert_eq!(p.status, StatusCode::OK);
        assert_eq!((p.blob, p.range), (Some(Hash::of(b"home")), (0, 1000)));
        assert_eq!(
            header(&p, &header::ETAG),
            Some(format!("\"{}\"", Hash::of(b"home")).as_str())
        );
        assert_eq!(header(&p, &header::VARY), Some("Accept-Encoding"));
        assert_eq!(header(&p, &header::CONTENT_ENCODING), None);
    }

    #[test]
    fn encodings_are_negotiated() {
        let m = site();
        let enc = |ae: &str| {
            let p = plan(
                &m,
                &Method::GET,
                "/index.html",
                &req(&[("accept-encoding", ae)]),
            );
            header(&p, &header::CONTENT_ENCODING).map(str::to_owned)
        };
        assert_eq!(enc("gzip, deflate, br").as_deref(), Some("br"));
        assert_eq!(enc("gzip").as_deref(), Some("gzip"));
        assert_eq!(enc("br;q=0.5, gzip;q=0.8").as_deref(), Some("gzip"));
        assert_eq!(enc("br;q=0, gzip;q=0").as_deref(), None);
        assert_eq!(enc("identity").as_deref(), None);
        let p = plan(
            &m,
            &Method::GET,
            "/index.html",
            &req(&[("accept-encoding", "br")]),
        );
        assert_eq!(
            (p.blob, p.size),
            (Some(Hash::of(b"br")), 2),
            "the variant's own bytes and ETag"
        );
    }

    #[test]
    fn conditional_requests() {
        let m = site();
        let etag = format!("\"{}\"", Hash::of(b"home"));
        let p = plan(
            &m,
            &Method::GET,
            "/",
            &req(&[("if-none-match", &format!("\"x\", {etag}"))]),
        );
        assert_eq!((p.status, p.blob), (StatusCode::NOT_MODIFIED, None));
        let p = plan(&m, &Method::GET, "/", &req(&[("if-none-match", "*")]));
        assert_eq!(p.status, StatusCode::NOT_MODIFIED);
        let p = plan(
            &m,
            &Method::GET,
            "/",
            &req(&[("if-none-match", "\"other\"")]),
        );
        assert_eq!(p.status, StatusCode::OK);
    }

    #[test]
    fn single_ranges() {
        let m = site();
        let r = |range: &str| {
            let p = plan(&m, &Method::GET, "/", &req(&[("range", range)]));
            (
                p.status.as_u16(),
                p.range,
                header(&p, &header::CONTENT_RANGE).map(str::to_owned),
            )
        };
        assert_eq!(
            r("bytes=0-99"),
            (206, (0, 100), Some("bytes 0-99/1000".into()))
        );
        assert_eq!(
            r("bytes=990-"),
            (206, (990, 1000), Some("bytes 990-999/1000".into()))
        );
        assert_eq!(
            r("bytes=-10"),
            (206, (990, 1000), Some("bytes 990-999/1000".into()))
        );
        assert_eq!(
            r("bytes=900-5000"),
            (206, (900, 1000), Some("bytes 900-999/1000".into()))
        );
        assert_eq!(r("bytes=1000-"), (416, (0, 0), Some("bytes */1000".into())));
        assert_eq!(r("bytes=-0"), (416, (0, 0), Some("bytes */1000".into())));
        assert_eq!(r("bytes=0-1,5-6").0, 200, "several ranges: the whole file");
        assert_eq!(r("bytes=9-1").0, 200);
        assert_eq!(r("items=0-1").0, 200);
        assert_eq!(r("bytes=a-b").0, 200);
        let stale = plan(
            &m,
            &Method::GET,
            "/",
            &req(&[("range", "bytes=0-1"), ("if-range", "\"old\"")]),
        );
        assert_eq!(
            stale.status,
            StatusCode::OK,
            "If-Range for another version: the whole file"
        );
    }

    #[test]
    fn encoded_paths_find_their_files() {
        let mut m = site();
        let e = m.files["404.html"].clone();
        m.files.insert("a b/ü.html".into(), e);
        let p = plan(&m, &Method::GET, "/a%20b/%C3%BC.html", &req(&[]));
        assert_eq!(
            (p.status, p.blob),
            (StatusCode::OK, Some(Hash::of(b"gone")))
        );
        let p = plan(&m, &Method::GET, "/a%2", &req(&[]));
        assert_eq!(
            p.status,
            StatusCode::NOT_FOUND,
            "a bad escape is simply not found"
        );
        let p = plan(&m, &Method::GET, "/%2e%2e/index.html", &req(&[]));
        assert_eq!(
            p.status,
            StatusCode::NOT_FOUND,
            "no climbing out, decoded or not"
        );
    }

    #[test]
    fn not_found_page_head_and_methods() {
        let m = site();
        let p = plan(&m, &Method::GET, "/missing", &req(&[]));
        assert_eq!(
            (p.status, p.blob),
            (StatusCode::NOT_FOUND, Some(Hash::of(b"gone")))
        );
        let p = plan(&m, &Method::HEAD, "/", &req(&[]));
        assert!(p.head_only && p.status == StatusCode::OK);
        let p = plan(&m, &Method::POST, "/", &req(&[]));
        assert_eq!(p.status, StatusCode::METHOD_NOT_ALLOWED);
        let mut bare_site = site();
        bare_site.settings.not_found = None;
        assert_eq!(plan(&bare_site, &Method::GET, "/x", &req(&[])).blob, None);
    }
}
