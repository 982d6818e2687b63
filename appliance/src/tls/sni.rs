//! Choosing a certificate by the client's SNI name. Pure lookup, no IO.

use std::collections::HashMap;

use crate::router::HostPattern;

/// Certificates (or anything) by server name: exact names, then `*.suffix`
/// wildcards covering exactly one label (as certificates do, RFC 6125), then
/// the default.
#[derive(Debug, Clone)]
pub struct SniTable<T> {
    exact: HashMap<String, T>,
    wildcard: HashMap<String, T>,
    default: T,
}

impl<T: Clone> SniTable<T> {
    pub fn new(default: T) -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Adds a name; the first certificate to claim a name keeps it.
    pub fn insert(&mut self, name: &HostPattern, value: T) {
        let map = match name {
            HostPattern::Exact(_) => &mut self.exact,
            HostPattern::Wildcard(_) => &mut self.wildcard,
        };
        let (HostPattern::Exact(key) | HostPattern::Wildcard(key)) = name;
        map.entry(key.clone()).or_insert(value);
    }

    pub fn lookup(&self, server_name: Option<&str>) -> &T {
        let Some(name) = server_name else {
            return &self.default;
        };
        let name = normalize(name);
        self.exact(&name)
            .or_else(|| self.wildcard(&name))
            .unwrap_or(&self.default)
    }

    /// The value claiming exactly `name` (normalised, see [`normalize`]).
    pub fn exact(&self, name: &str) -> Option<&T> {
        self.exact.get(name)
    }

    /// The value of the one-label wildcard covering `name` (normalised).
    pub fn wildcard(&self, name: &str) -> Option<&T> {
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// Whether a name is claimed, exactly or by a wildcard (not by the
    /// default).
    pub fn covers(&self, name: &str) -> bool {
        self.exact(name).is_some() || self.wildcard(name).is_some()
    }
}

/// A server name as the tables key it: no trailing dot, lower case
/// (borrowed when it already is).
pub fn normalize(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SniTable<&'static str> {
        let mut t = SniTable::new("default");
        let p = |s| HostPattern::parse(s).unwrap();
        t.insert(&p("shop.example.com"), "shop");
        t.insert(&p("*.example.com"), "wild");
        t.insert(&p("example.com"), "apex");
        t.insert(&p("shop.example.com"), "late-claim");
        t
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default() {
        let t = table();
        assert_eq!(*t.lookup(Some("shop.example.com")), "shop");
        assert_eq!(*t.lookup(Some("SHOP.example.com.")), "shop");
        assert_eq!(*t.lookup(Some("blog.example.com")), "wild");
        assert_eq!(*t.lookup(Some("example.com")), "apex");
        assert_eq!(*t.lookup(Some("a.blog.example.com")), "default");
        assert_eq!(*t.lookup(Some("example.org")), "default");
        assert_eq!(*t.lookup(None), "default");
    }
}
