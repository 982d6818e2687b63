//! Request routing: Host and path → a route's value. Pure data, no IO.
//!
//! A request's Host selects one *virtual host*, most specific first: the exact
//! name, then the longest `*.suffix` wildcard (which matches any depth below the
//! suffix), then the routes without a host. Within that virtual host the longest
//! matching path prefix wins; prefixes match on segment boundaries (`/api`
//! matches `/api` and `/api/x`, not `/apix`). There is no fall-through to a less
//! specific host, as in NGINX's `server_name` + `location`.
//!
//! Paths are matched in the form the most liberal backend would act on
//! ([`routing_path`]): percent-encoded unreserved characters decoded (RFC
//! 3986, 6.2.2.2, as NGINX does), `%2F` taken as `/`, `;` path parameters
//! dropped from each segment (as Java servlet containers do), then dot
//! segments removed (RFC 3986, 5.2.4). So `/%61dmin`, `/x/../admin`,
//! `/admin;v=1/x`, `/..;/admin` and `/admin%2Fx` are all routed under
//! `/admin`, whatever the backend makes of them. The request is forwarded
//! as the client sent it.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::HashMap;

/// A host as written in a route or certificate name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `shop.example.com`, lowercased.
    Exact(String),
    /// `*.example.com`, stored as `example.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if !is_dns_name(name) {
            return Err("must be a DNS name, optionally starting with '*.'");
        }
        Ok(if wild {
            Self::Wildcard(name.to_owned())
        } else {
            Self::Exact(name.to_owned())
        })
    }
}

fn is_dns_name(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// The host part of a Host header or `:authority`: port removed, trailing dot
/// removed, lowercased. `None` when it is not a plausible host.
pub fn normalize_host(authority: &str) -> Option<Cow<'_, str>> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal, with or without a port.
        let end = rest.find(']')?;
        return Some(Cow::Borrowed(&authority[..end + 2]));
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// Routes of one virtual host, longest prefix first.
#[derive(Debug, Clone)]
struct PathTable<T> {
    entries: Vec<(String, T)>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> PathTable<T> {
    fn insert(&mut self, prefix: &str, value: T) {
        let prefix = if prefix.len() > 1 {
            prefix.trim_end_matches('/')
        } else {
            prefix
        };
        let at = self
            .entries
            .iter()
            .position(|(p, _)| p.len() < prefix.len())
            .unwrap_or(self.entries.len());
        self.entries.insert(at, (prefix.to_owned(), value));
    }

    fn lookup(&self, path: &str) -> Option<&T> {
        self.entries
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, v)| v)
    }
}

/// `prefix` (no trailing slash unless it is `/`) covers `path`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A routing table from host patterns and path prefixes to values.
#[derive(Debug, Clone)]
pub struct Router<T> {
    exact: HashMap<String, PathTable<T>>,
    wildcard: HashMap<String, PathTable<T>>,
    any: Option<PathTable<T>>,
    longest_wildcard_labels: usize,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: None,
            longest_wildcard_labels: 0,
        }
    }
}

impl<T> Router<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; `host` `None` is any host.
    pub fn insert(&mut self, host: Option<&HostPattern>, path_prefix: &str, value: T) {
        let table = match host {
            Some(HostPattern::Exact(h)) => self.exact.entry(h.clone()).or_default(),
            Some(HostPattern::Wildcard(suffix)) => {
                let labels = suffix.split('.').count();
                self.longest_wildcard_labels = self.longest_wildcard_labels.max(labels);
                self.wildcard.entry(suffix.clone()).or_default()
            }
            None => self.any.get_or_insert_with(PathTable::default),
        };
        table.insert(path_prefix, value);
    }

    /// The value for a request. `host` must be normalised ([`normalize_host`]);
    /// `path` is the request path without the query.
    pub fn route(&self, host: &str, path: &str) -> Option<&T> {
        match self.route_exact(host, path) {
            Some(found) => found,
            None => self.route_inexact(host, path),
        }
    }

    /// `None` when no route names `host` exactly; otherwise that virtual
    /// host's answer (which may be no route for this path). Callers with
    /// another exact-host table (the host map) consult it between this and
    /// [`Router::route_inexact`].
    pub fn route_exact(&self, host: &str, path: &str) -> Option<Option<&T>> {
        let table = self.exact.get(host)?;
        Some(table.lookup(&routing_path(path)))
    }

    /// The wildcard and catch-all routes for a host that has no exact ones.
    pub fn route_inexact(&self, host: &str, path: &str) -> Option<&T> {
        self.inexact_host(host)?.lookup(&routing_path(path))
    }

    fn inexact_host(&self, host: &str) -> Option<&PathTable<T>> {
        if !self.wildcard.is_empty() {
            // Longest suffix first: strip one label at a time.
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if suffix.split('.').count() <= self.longest_wildcard_labels {
                    if let Some(t) = self.wildcard.get(suffix) {
                        return Some(t);
                    }
                }
                rest = suffix;
            }
        }
        self.any.as_ref()
    }
}

/// The path a request is routed by (see the module's documentation).
/// Borrows when there is nothing to decode, drop or remove (the common
/// case).
pub fn routing_path(path: &str) -> Cow<'_, str> {
    if !path.bytes().any(|b| b == b'%' || b == b';') {
        return remove_dot_segments(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut in_parameter = false;
    let mut i = 0;
    while i < bytes.len() {
        let mut c = bytes[i];
        let mut escape = None;
        if c == b'%' {
            let decoded = path
                .get(i + 1..i + 3)
                .filter(|hex| hex.bytes().all(|h| h.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .filter(|d| d.is_ascii_alphanumeric() || b"-._~/".contains(d));
            if let Some(d) = decoded {
                escape = Some(&path[i..i + 3]);
                c = d;
            }
        }
        i += escape.map_or(1, str::len);
        match c {
            b'/' => {
                in_parameter = false;
                out.push('/');
            }
            _ if in_parameter => {}
            b';' if escape.is_none() => in_parameter = true,
            _ => match escape {
                Some(_) => out.push(char::from(c)),
                // Anything else is kept as written (a byte of a UTF-8
                // sequence is pushed with the rest of its character).
                None => {
                    let start = i - 1;
                    let end = (start + 1..=bytes.len())
                        .find(|&e| path.is_char_boundary(e))
                        .unwrap_or(bytes.len());
                    out.push_str(&path[start..end]);
                    i = end;
                }
            },
        }
    }
    match remove_dot_segments(&out) {
        Cow::Borrowed(_) => Cow::Owned(out),
        Cow::Owned(o) => Cow::Owned(o),
    }
}

/// Whether every `%` in `path` begins an escape: `%` and two hex digits
/// (RFC 3986, 2.1). A request whose path has another is refused with 400, as
/// NGINX does: `/%6%61dmin` would be routed as `/%6admin` and read as
/// `/jdmin` by a backend that decodes twice. With only valid escapes,
/// [`routing_path`] is idempotent.
pub fn valid_escapes(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Decodes `%XX` escapes; `None` for a bad escape or a non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// RFC 3986 section 5.2.4, with `%2e`/`%2E` treated as `.`. Borrows when the
/// path has no dot segments (the common case).
pub fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    let has_dots = path
        .split('/')
        .any(|seg| matches!(decode_dots(seg).as_deref(), Some(".") | Some("..")));
    if !has_dots {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match decode_dots(seg).as_deref() {
            Some(".") => trailing_slash = i == last,
            Some("..") => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Cow::Owned(s)
}

/// The segment with `%2e` decoded, if it consists only of dots (and escapes).
fn decode_dots(seg: &str) -> Option<Cow<'_, str>> {
    if seg.is_empty() || seg.len() > 6 {
        return None;
    }
    if !seg.contains('%') {
        return Some(Cow::Borrowed(seg));
    }
    Some(Cow::Owned(seg.replace("%2e", ".").replace("%2E", ".")))
}

#[cfg(test)]
mod tests;
