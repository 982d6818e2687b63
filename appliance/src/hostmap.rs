//! The host → pool map ("which pod serves this shop's domain"). Pure data.
//!
//! Thousands to millions of entries, so it is kept apart from the config
//! document: its own file, its own generation, imported as a stream of NDJSON
//! lines `{"host": "shop1.example.com", "pool": "pod-17"}`. A request whose Host
//! has no exact route is looked up here before wildcard and catch-all routes.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::router::HostPattern;

/// One line of an import or export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub host: String,
    pub pool: String,
}

/// Why an import was refused; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ImportError {
    /// 1-based line number in the import.
    pub line: usize,
    pub reason: String,
}

/// Host (lowercase, exact) → pool name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostMap {
    entries: BTreeMap<String, String>,
}

impl HostMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, host: &str) -> Option<&str> {
        self.entries.get(host).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(h, p)| (h.as_str(), p.as_str()))
    }

    /// Adds or replaces one entry; the host must be an exact DNS name.
    pub fn insert(&mut self, host: &str, pool: &str) -> Result<(), String> {
        let host = normalize(host)?;
        self.entries.insert(host, pool.to_owned());
        Ok(())
    }

    pub fn remove(&mut self, host: &str) -> Option<String> {
        let host = normalize(host).ok()?;
        self.entries.remove(&host)
    }

    /// Writes one NDJSON line per entry, sorted by host.
    pub fn write_ndjson(&self, mut out: impl Write) -> std::io::Result<()> {
        for (host, pool) in &self.entries {
            write_line(&mut out, host, pool)?;
        }
        Ok(())
    }

    /// Writes up to `max` entries that sort after `after` (all when `None`),
    /// and returns the last host written: the cursor for the next chunk.
    pub fn write_ndjson_after(
        &self,
        after: Option<&str>,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Option<String> {
        use std::ops::Bound;
        let start = match after {
            Some(h) => Bound::Excluded(h),
            None => Bound::Unbounded,
        };
        let mut last = None;
        for (host, pool) in self
            .entries
            .range::<str, _>((start, Bound::Unbounded))
            .take(max)
        {
            // Writing into a Vec cannot fail.
            let _ = write_line(&mut *out, host, pool);
            last = Some(host);
        }
        last.cloned()
    }
}

fn write_line(mut out: impl Write, host: &str, pool: &str) -> std::io::Result<()> {
    serde_json::to_writer(&mut out, &EntryRef { host, pool })?;
    out.write_all(b"\n")
}

#[derive(Serialize)]
struct EntryRef<'a> {
    host: &'a str,
    pool: &'a str,
}

fn normalize(host: &str) -> Result<String, String> {
    match HostPattern::parse(host) {
        Ok(HostPattern::Exact(h)) => Ok(h),
        Ok(HostPattern::Wildcard(_)) => Err("wildcards belong in routes, not the host map".into()),
        Err(e) => Err(e.to_owned()),
    }
}

/// Builds a [`HostMap`] from NDJSON arriving in arbitrary chunks.
#[derive(Debug, Default)]
pub struct Importer {
    partial: Vec<u8>,
    line: usize,
    map: HostMap,
}

/// The longest line accepted.
const MAX_LINE: usize = 4096;

impl Importer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the stream.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), ImportError> {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = chunk.split_at(nl);
            chunk = &rest[1..];
            if self.partial.is_empty() {
                self.line(head)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line)?;
            }
        }
        self.partial.extend_from_slice(chunk);
        if self.partial.len() > MAX_LINE {
            return Err(ImportError {
                line: self.line + 1,
                reason: format!("line longer than {MAX_LINE} bytes"),
            });
        }
        Ok(())
    }

    /// Ends the stream (a last line without a newline counts).
    pub fn finish(mut self) -> Result<HostMap, ImportError> {
        let last = std::mem::take(&mut self.partial);
        self.line(&last)?;
        Ok(self.map)
    }

    fn line(&mut self, bytes: &[u8]) -> Result<(), ImportError> {
        self.line += 1;
        let fail = |reason: String| ImportError {
            line: self.line,
            reason,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let entry: Entry = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
        let host =
            normalize(&entry.host).map_err(|e| fail(format!("host {:?}: {e}", entry.host)))?;
        if self.map.entries.insert(host, entry.pool).is_some() {
            return Err(fail(format!("host {:?} is listed twice", entry.host)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(chunks: &[&[u8]]) -> Result<HostMap, ImportError> {
        let mut i = Importer::new();
        for c in chunks {
            i.push(c)?;
        }
        i.finish()
    }

    #[test]
    fn lines_may_be_split_anywhere() {
        let text = b"{\"host\":\"A.example.com\",\"pool\":\"p1\"}\n\n{\"host\":\"b.example.com\",\"pool\":\"p2\"}";
        let whole = import(&[text]).unwrap();
        for cut in 0..text.len() {
            assert_eq!(
                import(&[&text[..cut], &text[cut..]]).unwrap(),
                whole,
                "cut at {cut}"
            );
        }
        assert_eq!(whole.len(), 2);
        assert_eq!(whole.get("a.example.com"), Some("p1"));
    }

    #[test]
    fn errors_name_the_line() {
        let bad = |text: &[u8]| import(&[text]).unwrap_err();
        assert_eq!(
            bad(b"{\"host\":\"a.test\",\"pool\":\"p\"}\n{\"host\":\"a b\",\"pool\":\"p\"}\n").line,
            2
        );
        assert_eq!(bad(b"\n\n{\"host\":\"a.test\"}\n").line, 3);
        assert_eq!(bad(b"{\"host\":\"*.a.test\",\"pool\":\"p\"}").line, 1);
        let twice =
            bad(b"{\"host\":\"a.test\",\"pool\":\"p\"}\n{\"host\":\"A.test\",\"pool\":\"q\"}\n");
        assert_eq!(twice.line, 2);
        assert!(twice.reason.contains("twice"));
        assert_eq!(bad(&vec![b'x'; MAX_LINE + 10]).line, 1);
    }

    #[test]
    fn export_round_trips() {
        let mut m = HostMap::default();
        m.insert("Shop.example.com", "pod-1").unwrap();
        m.insert("b.example.com", "pod-2").unwrap();
        assert!(m.insert("*.x.com", "p").is_err());
        let mut out = Vec::new();
        m.write_ndjson(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"host\":\"b.example.com\",\"pool\":\"pod-2\"}\n{\"host\":\"shop.example.com\",\"pool\":\"pod-1\"}\n"
        );
        assert_eq!(import(&[&out]).unwrap(), m);
        let mut chunked = Vec::new();
        let mut cursor = None;
        while let Some(last) = m.write_ndjson_after(cursor.as_deref(), 1, &mut chunked) {
            cursor = Some(last);
        }
        assert_eq!(chunked, out);
        assert_eq!(m.remove("SHOP.example.com").as_deref(), Some("pod-1"));
    }
}
