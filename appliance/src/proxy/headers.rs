//! Header rewriting between client and backend. Pure functions, no IO.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection and must not be forwarded (RFC 9110,
/// 7.6.1), besides those the `Connection` header itself names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The comma-separated tokens of every `name` header, trimmed.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// `websocket`, when the request asks for a WebSocket upgrade in the
/// HTTP/1.1 way.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"));
    // Only WebSocket: any other protocol (h2c above all) would turn the
    // connection into a tunnel whose requests edgebox never sees, routes or
    // limits. Its Upgrade header is dropped with the other hop-by-hop ones
    // and the request goes on as an ordinary one.
    let websocket = tokens(headers, &header::UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"));
    (wants && websocket).then(|| HeaderValue::from_static("websocket"))
}

/// Joins split `cookie` fields into one, as an HTTP/1.1 backend needs it
/// (RFC 9113, 8.2.3: HTTP/2 clients may send one field per cookie; RFC 6265
/// allows one `Cookie` header).
pub fn merge_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes hop-by-hop headers, then restores the upgrade pair if `upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    let named: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        // Never let a client make us drop the headers we set ourselves.
        if name != header::HOST {
            headers.remove(&name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// What the proxy tells a backend about the client.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub client: IpAddr,
    /// `https` or `http`: how the client reached us.
    pub scheme: &'static str,
    /// The Host (or `:authority`) the client asked for, as sent.
    pub host: &'a str,
    /// The client is a trusted proxy (`listeners[].trusted_proxies`): what
    /// it says of the clients before it is believed.
    pub trusted: bool,
}

/// Sets the forwarding headers. From a trusted proxy, `X-Forwarded-For` and
/// `Forwarded` are appended to (as NGINX's `$proxy_add_x_forwarded_for`) and
/// its `X-Forwarded-Proto` and `X-Forwarded-Host` are kept when it sent
/// them. From anyone else what the client sent is dropped: the backend gets
/// only what edgebox saw (the client's address, the scheme and host of this
/// connection), so nobody can pose as another client.
pub fn add_forwarded(headers: &mut HeaderMap, origin: Origin<'_>) {
    let ip = origin.client.to_string();
    // Looked for in one pass over the names: mostly there are none.
    let forwarding = |n: &HeaderName| {
        *n == X_FORWARDED_FOR
            || *n == X_FORWARDED_PROTO
            || *n == X_FORWARDED_HOST
            || *n == header::FORWARDED
    };
    if !origin.trusted && headers.keys().any(forwarding) {
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &header::FORWARDED,
        ] {
            headers.remove(name);
        }
    }
    let prior = if origin.trusted {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    let xff = match prior {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip.clone(),
    };
    set(headers, X_FORWARDED_FOR.clone(), &xff);
    if !origin.trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        set(headers, X_FORWARDED_PROTO.clone(), origin.scheme);
    }
    if !origin.trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        set(headers, X_FORWARDED_HOST.clone(), origin.host);
    }

    let node = match origin.client {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
    let element = format!(
        "for={node};proto={};host={}",
        origin.scheme,
        quoted_if_needed(origin.host)
    );
    let prior = if origin.trusted {
        joined(headers, &header::FORWARDED)
    } else {
        None
    };
    let forwarded = match prior {
        Some(prior) => format!("{prior}, {element}"),
        None => element,
    };
    set(headers, header::FORWARDED, &forwarded);
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// RFC 7239 values are tokens or quoted strings; a host with a port or an IPv6
/// literal is not a token.
fn quoted_if_needed(value: &str) -> String {
    let token = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        value.to_owned()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The key a consistent-hash pool hashes for this request: the routed
/// host, a header's value, or a cookie's; `None` when the request has none
/// (it is then balanced round robin).
pub fn hash_key(on: &crate::config::HashOn, host: &str, headers: &HeaderMap) -> Option<u64> {
    use crate::config::HashKey;
    let name = on.name.as_deref().unwrap_or_default();
    match on.on {
        HashKey::Host => Some(crate::balance::hash_key(host.as_bytes())),
        HashKey::Header => headers
            .get(name)
            .map(|v| crate::balance::hash_key(v.as_bytes())),
        HashKey::Cookie => cookie(headers, name).map(|v| crate::balance::hash_key(v.as_bytes())),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-length", "5"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, None);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "content-length"]);
    }

    #[test]
    fn connection_cannot_remove_host() {
        let mut h = map(&[("connection", "host"), ("host", "a.test")]);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h["host"], "a.test");
    }

    #[test]
    fn upgrade_is_detected_and_kept() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let up = requested_upgrade(&h);
        assert_eq!(up.as_ref().unwrap(), "websocket");
        strip_hop_by_hop(&mut h, up);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(requested_upgrade(&map(&[("upgrade", "websocket")])), None);
    }

    #[test]
    fn split_cookies_are_joined_and_one_is_left_alone() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        merge_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
        let mut one = map(&[("cookie", "a=1; b=2")]);
        merge_cookies(&mut one);
        assert_eq!(one["cookie"], "a=1; b=2");
    }

    #[test]
    fn only_websocket_upgrades_pass() {
        for other in ["h2c", "TLS/1.0", "foo, bar"] {
            let mut h = map(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", other),
            ]);
            let up = requested_upgrade(&h);
            assert_eq!(up, None, "{other}");
            strip_hop_by_hop(&mut h, up);
            assert!(!h.contains_key("upgrade") && !h.contains_key("connection"));
            assert!(!h.contains_key("http2-settings"));
        }
        let h = map(&[("connection", "upgrade"), ("upgrade", "h2c, WebSocket")]);
        assert_eq!(requested_upgrade(&h).unwrap(), "websocket");
    }

    fn sent_by_client() -> HeaderMap {
        map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=203.0.113.9"),
        ])
    }

    #[test]
    fn a_trusted_proxy_s_headers_are_appended_to() {
        let mut h = sent_by_client();
        let origin = Origin {
            client: "192.0.2.7".parse().unwrap(),
            scheme: "https",
            host: "shop.example.com:8443",
            trusted: true,
        };
        add_forwarded(&mut h, origin);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 198.51.100.2, 192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http", "the proxy saw the client");
        assert_eq!(h["x-forwarded-host"], "shop.example.com:8443");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9, for=192.0.2.7;proto=https;host=\"shop.example.com:8443\""
        );
    }

    #[test]
    fn anyone_else_s_are_replaced() {
        let mut h = sent_by_client();
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        let origin = Origin {
            client: "192.0.2.7".parse().unwrap(),
            scheme: "https",
            host: "shop.example.com",
            trusted: false,
        };
        add_forwarded(&mut h, origin);
        assert_eq!(
            h["x-forwarded-for"], "192.0.2.7",
            "no forged leftmost entry"
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example.com");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=https;host=shop.example.com"
        );
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        let origin = Origin {
            client: "2001:db8::1".parse().unwrap(),
            scheme: "http",
            host: "a.test",
            trusted: false,
        };
        add_forwarded(&mut h, origin);
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";proto=http;host=a.test"
        );
    }
}
