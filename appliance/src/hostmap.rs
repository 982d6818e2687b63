//! The host → pool map ("which pod serves this shop's domain"). Pure data.
//!
//! Thousands to millions of entries, so it is kept apart from the config
//! document: its own file, its own generation, imported as a stream of NDJSON
//! lines `{"host": "shop1.example.com", "pool": "pod-17"}`. A request whose Host
//! has no exact route is looked up here before wildcard and catch-all routes.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

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

/// Host (lowercase, exact) → pool, for millions of hosts.
///
/// The entries are a persistent hash map (a HAMT, `imbl`): a copy shares
/// all of them, and one insert or removal copies only the few nodes on its
/// path, so a change of one entry costs the same whatever the map's size,
/// and a snapshot can take the map as it is. Pool names are interned: an
/// entry holds a pool's number, and the map counts how many entries name
/// each pool, so that a config cannot drop a pool the map still uses.
#[derive(Debug, Clone, Default)]
pub struct HostMap {
    entries: imbl::HashMap<Arc<str>, u32>,
    /// Pool number → name; numbers are never reused within one map.
    pools: Vec<Arc<str>>,
    /// Pool name → number.
    numbers: HashMap<Arc<str>, u32>,
    /// Pool number → entries naming it.
    uses: Vec<usize>,
}

impl PartialEq for HostMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(h, p)| other.get(h) == Some(p))
    }
}

impl Eq for HostMap {}

impl HostMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, host: &str) -> Option<&str> {
        self.entries.get(host).map(|&n| &*self.pools[n as usize])
    }

    /// The pool number of `host`, for [`HostMap::pool_name`] and snapshots.
    pub fn number(&self, host: &str) -> Option<u32> {
        self.entries.get(host).copied()
    }

    /// The name of pool number `n`.
    pub fn pool_name(&self, n: u32) -> Option<&str> {
        self.pools.get(n as usize).map(|p| &**p)
    }

    /// The pools entries name, with how many name each.
    pub fn pools_used(&self) -> impl Iterator<Item = (u32, &str, usize)> {
        self.pools
            .iter()
            .zip(&self.uses)
            .enumerate()
            .filter(|(_, (_, &n))| n > 0)
            .map(|(i, (p, &n))| (i as u32, &**p, n))
    }

    /// The number of pool numbers given out (the size a table indexed by
    /// them needs).
    pub fn pool_numbers(&self) -> usize {
        self.pools.len()
    }

    /// The entries, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(h, &n)| (&**h, &*self.pools[n as usize]))
    }

    /// The entries as lookups see them: host → pool number.
    pub fn index(&self) -> &imbl::HashMap<Arc<str>, u32> {
        &self.entries
    }

    fn intern(&mut self, pool: &str) -> u32 {
        if let Some(&n) = self.numbers.get(pool) {
            return n;
        }
        let n = self.pools.len() as u32;
        let name: Arc<str> = Arc::from(pool);
        self.pools.push(Arc::clone(&name));
        self.numbers.insert(name, n);
        self.uses.push(0);
        n
    }

    /// Adds or replaces one entry; the host must be an exact DNS name. The
    /// pool it named before, if any, is returned.
    pub fn insert(&mut self, host: &str, pool: &str) -> Result<Option<String>, String> {
        let host = normalize(host)?;
        Ok(self.insert_normalized(Arc::from(host), pool))
    }

    fn insert_normalized(&mut self, host: Arc<str>, pool: &str) -> Option<String> {
        let n = self.intern(pool);
        self.uses[n as usize] += 1;
        let old = self.entries.insert(host, n)?;
        self.uses[old as usize] -= 1;
        Some(self.pools[old as usize].to_string())
    }

    pub fn remove(&mut self, host: &str) -> Option<String> {
        let host = normalize(host).ok()?;
        let old = self.entries.remove(&*host)?;
        self.uses[old as usize] -= 1;
        Some(self.pools[old as usize].to_string())
    }

    /// Writes one NDJSON line per entry, sorted by host.
    pub fn write_ndjson(&self, mut out: impl Write) -> std::io::Result<()> {
        for (host, pool) in self.sorted() {
            write_line(&mut out, &host, &pool)?;
        }
        Ok(())
    }

    /// The entries sorted by host (for exports: the same map exports the
    /// same bytes).
    pub fn sorted(&self) -> Vec<(Arc<str>, Arc<str>)> {
        let mut all: Vec<(Arc<str>, Arc<str>)> = self
            .entries
            .iter()
            .map(|(h, &n)| (Arc::clone(h), Arc::clone(&self.pools[n as usize])))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// One change to a host map, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    Set { host: String, pool: String },
    Delete { host: String },
}

impl Change {
    /// The host it changes.
    pub fn host(&self) -> &str {
        match self {
            Self::Set { host, .. } | Self::Delete { host } => host,
        }
    }
}

impl HostMap {
    /// Applies a change read back from the journal (hosts there are
    /// normalised already; a delete of a missing host does nothing).
    pub fn apply(&mut self, change: &Change) -> Result<(), String> {
        match change {
            Change::Set { host, pool } => {
                self.insert(host, pool)?;
            }
            Change::Delete { host } => {
                self.remove(host);
            }
        }
        Ok(())
    }
}

/// Appends one NDJSON line for an entry to `out`.
pub fn write_entry(out: &mut Vec<u8>, host: &str, pool: &str) {
    // Writing into a Vec cannot fail.
    let _ = write_line(out, host, pool);
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
        // Also checked here, not only on a partial line in `push`, so that
        // whether a long line is taken does not depend on how the stream was
        // cut (found by fuzz/, hostmap_import).
        if bytes.len() > MAX_LINE {
            return Err(fail(format!("line longer than {MAX_LINE} bytes")));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let entry: Entry = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
        let host =
            normalize(&entry.host).map_err(|e| fail(format!("host {:?}: {e}", entry.host)))?;
        if self
            .map
            .insert_normalized(Arc::from(host), &entry.pool)
            .is_some()
        {
            return Err(fail(format!("host {:?} is listed twice", entry.host)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_and_pools_are_counted() {
        let mut m = HostMap::default();
        for i in 0..1_000 {
            m.insert(&format!("shop{i}.example.com"), &format!("pod-{}", i % 3))
                .unwrap();
        }
        let before = m.clone();
        assert_eq!(
            m.insert("shop7.example.com", "pod-9").unwrap().as_deref(),
            Some("pod-1")
        );
        assert_eq!(
            before.get("shop7.example.com"),
            Some("pod-1"),
            "the copy is untouched"
        );
        assert_eq!(m.get("shop7.example.com"), Some("pod-9"));
        let uses: Vec<(String, usize)> =
            m.pools_used().map(|(_, p, n)| (p.to_owned(), n)).collect();
        assert_eq!(
            uses,
            [
                ("pod-0".into(), 334),
                ("pod-1".into(), 332),
                ("pod-2".into(), 333),
                ("pod-9".into(), 1)
            ]
        );
        m.remove("shop7.example.com");
        assert!(
            m.pools_used().all(|(_, p, _)| p != "pod-9"),
            "unused pools are not listed"
        );
        m.apply(&Change::Set {
            host: "a.test".into(),
            pool: "pod-0".into(),
        })
        .unwrap();
        m.apply(&Change::Delete {
            host: "nope.test".into(),
        })
        .unwrap();
        assert_eq!(m.get("a.test"), Some("pod-0"));
    }

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
        // A valid entry padded past the limit, whole or cut short of its end.
        let mut long = b"{\"host\":\"a.test\",".to_vec();
        long.resize(MAX_LINE + 1 - 11, b' ');
        long.extend_from_slice(b"\"pool\":\"p\"}\n");
        assert_eq!(long.len(), MAX_LINE + 2);
        assert_eq!(bad(&long).line, 1);
        assert_eq!(import(&[&long[..4000], &long[4000..]]).unwrap_err().line, 1);
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
        assert_eq!(m.remove("SHOP.example.com").as_deref(), Some("pod-1"));
    }
}
