//! Sites: a ref per site naming its current manifest, with the last few
//! generations kept for rollback.
//!
//! `<root>/refs/<site>.json` is replaced atomically. A ref only ever points at
//! a manifest that is present, valid, and whose blobs are all present:
//! [`Store::publish`] checks all of it before the ref moves.
//!
//! A generation only grows, also across a deletion: deleting a site leaves
//! a tombstone (`<root>/tombstones/<site>.json`) with the generation of the
//! deletion, so that the deletion replicates to peers as a change like any
//! other and a later publish takes a larger generation. Replication gives
//! the generation itself ([`Store::publish_at`], [`Store::delete_at`]).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::blobs::{sync_dir, write_atomic, Blobs};
use crate::manifest::{Manifest, ManifestError};
use crate::replication::{Value, Version};
use crate::Hash;

/// How many generations of each site are kept (for rollback, and from GC).
pub const KEEP_GENERATIONS: usize = 5;

/// A site's ref: what it serves now and what it served before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRef {
    pub generation: u64,
    pub manifest: Hash,
    /// The last [`KEEP_GENERATIONS`] publishes, oldest first; the last is the
    /// current one.
    pub history: Vec<Published>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub generation: u64,
    pub manifest: Hash,
    /// Milliseconds since the Unix epoch.
    pub published_ms: u64,
}

/// Why a site operation was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// Not a usable site name.
    #[error("site names are 1 to 64 of A-Z a-z 0-9 - _ . and do not start with '.'")]
    BadName,
    /// There is no such site.
    #[error("no site named {0}")]
    NoSuchSite(String),
    /// The site has no such generation (any more).
    #[error("site {site} has no generation {generation} (kept: {kept:?})")]
    NoSuchGeneration {
        site: String,
        generation: u64,
        kept: Vec<u64>,
    },
    /// The manifest blob is not in the store.
    #[error("manifest {0} is not in the store")]
    ManifestMissing(Hash),
    /// The manifest blob is not a valid manifest.
    #[error("manifest {hash}: {source}")]
    BadManifest { hash: Hash, source: ManifestError },
    /// Blobs the manifest names are not in the store (upload them first).
    #[error("{} blobs the manifest names are missing, first {}", .0.len(), .0[0])]
    MissingBlobs(Vec<Hash>),
    /// The site is at this generation or a later one already.
    #[error("site {site} is at generation {current}, not before {generation}")]
    Stale {
        site: String,
        generation: u64,
        current: u64,
    },
    /// The disk failed or is full; the previous generation still serves.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Blobs and sites under one root.
#[derive(Debug, Clone)]
pub struct Store {
    blobs: Blobs,
}

pub fn check_site_name(name: &str) -> Result<(), SiteError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SiteError::BadName)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A deleted site: the generation its deletion took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    pub generation: u64,
    pub deleted_ms: u64,
}

impl Store {
    /// Opens (creating) the store under `root` (`<data>/store`). A crash
    /// between the two steps of a deletion or of a publish after one left a
    /// ref and a tombstone: the later generation stands.
    pub fn open(root: &Path) -> io::Result<Self> {
        let blobs = Blobs::open(root)?;
        fs::create_dir_all(root.join("refs"))?;
        fs::create_dir_all(root.join("tombstones"))?;
        let store = Self { blobs };
        for (site, t) in store.tombstones().map_err(io::Error::other)? {
            match store.site(&site).map_err(io::Error::other)? {
                Some(r) if later(&r, &t) => fs::remove_file(store.tombstone_path(&site))?,
                Some(_) => fs::remove_file(store.ref_path(&site))?,
                None => {}
            }
        }
        Ok(store)
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    fn refs_dir(&self) -> PathBuf {
        self.blobs.root().join("refs")
    }

    fn ref_path(&self, site: &str) -> PathBuf {
        self.refs_dir().join(format!("{site}.json"))
    }

    fn tombstones_dir(&self) -> PathBuf {
        self.blobs.root().join("tombstones")
    }

    fn tombstone_path(&self, site: &str) -> PathBuf {
        self.tombstones_dir().join(format!("{site}.json"))
    }

    /// The tombstone of a deleted site.
    pub fn tombstone(&self, site: &str) -> Result<Option<Tombstone>, SiteError> {
        check_site_name(site)?;
        read_json(&self.tombstone_path(site), "tombstone", site)
    }

    /// Every deleted site's tombstone, sorted by name.
    pub fn tombstones(&self) -> Result<Vec<(String, Tombstone)>, SiteError> {
        list(&self.tombstones_dir(), |site| self.tombstone(site))
    }

    /// The generation a site is at: its ref's, or its deletion's.
    pub fn generation(&self, site: &str) -> Result<u64, SiteError> {
        Ok(self.version(site)?.map_or(0, |v| v.lamport))
    }

    /// The site's version as replication orders them: its generation, and
    /// the tie-break of what it holds.
    fn version(&self, site: &str) -> Result<Option<Version>, SiteError> {
        if let Some(r) = self.site(site)? {
            return Ok(Some(version_of(r.generation, Some(r.manifest))));
        }
        Ok(self
            .tombstone(site)?
            .map(|t| version_of(t.generation, None)))
    }

    /// Refuses a change to `generation` (with `manifest`, or a deletion)
    /// unless it is later than what the site holds: a larger generation, or
    /// the same one with the larger tie-break (a concurrent change on a peer
    /// that won).
    fn check_later(
        &self,
        site: &str,
        generation: u64,
        manifest: Option<Hash>,
    ) -> Result<(), SiteError> {
        match self.version(site)? {
            Some(current) if version_of(generation, manifest) <= current => Err(SiteError::Stale {
                site: site.to_owned(),
                generation,
                current: current.lamport,
            }),
            _ => Ok(()),
        }
    }

    /// A site's ref, if the site exists.
    pub fn site(&self, site: &str) -> Result<Option<SiteRef>, SiteError> {
        check_site_name(site)?;
        read_json(&self.ref_path(site), "ref", site)
    }

    /// Every site, sorted by name.
    pub fn sites(&self) -> Result<Vec<(String, SiteRef)>, SiteError> {
        list(&self.refs_dir(), |site| self.site(site))
    }

    /// Reads and checks a manifest blob.
    pub fn manifest(&self, hash: &Hash) -> Result<Manifest, SiteError> {
        let bytes = match self.blobs.read_verified(hash) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SiteError::ManifestMissing(*hash))
            }
            Err(e) => return Err(e.into()),
        };
        Manifest::parse(&bytes).map_err(|source| SiteError::BadManifest {
            hash: *hash,
            source,
        })
    }

    /// Points `site` at `manifest`, after checking that the manifest and every
    /// blob it names are present, as the next generation. Returns the new ref.
    pub fn publish(&self, site: &str, manifest: Hash) -> Result<SiteRef, SiteError> {
        let generation = self.generation(site)? + 1;
        self.publish_at(site, manifest, generation)
    }

    /// [`Store::publish`] as generation `generation`, which must be later
    /// than the site's: a larger one, or the same one if it wins the
    /// tie-break (a publish replicated from a peer; a concurrent one that
    /// won replaces this appliance's in the history).
    pub fn publish_at(
        &self,
        site: &str,
        manifest: Hash,
        generation: u64,
    ) -> Result<SiteRef, SiteError> {
        check_site_name(site)?;
        self.check_later(site, generation, Some(manifest))?;
        let m = self.manifest(&manifest)?;
        let missing: Vec<Hash> = m
            .blobs()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|h| !self.blobs.contains(h))
            .collect();
        if !missing.is_empty() {
            return Err(SiteError::MissingBlobs(missing));
        }
        let previous = self.site(site)?;
        let mut history = previous.map(|r| r.history).unwrap_or_default();
        history.retain(|p| p.generation != generation);
        history.push(Published {
            generation,
            manifest,
            published_ms: now_ms(),
        });
        let excess = history.len().saturating_sub(KEEP_GENERATIONS);
        history.drain(..excess);
        let new = SiteRef {
            generation,
            manifest,
            history,
        };
        let bytes = serde_json::to_vec_pretty(&new).map_err(io::Error::other)?;
        write_atomic(&self.ref_path(site), &bytes, 0o644)?;
        match fs::remove_file(self.tombstone_path(site)) {
            Ok(()) => sync_dir(&self.tombstones_dir())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(new)
    }

    /// Serves an earlier generation again, as a new generation.
    pub fn rollback(&self, site: &str, generation: u64) -> Result<SiteRef, SiteError> {
        let current = self
            .site(site)?
            .ok_or_else(|| SiteError::NoSuchSite(site.to_owned()))?;
        let Some(old) = current.history.iter().find(|p| p.generation == generation) else {
            return Err(SiteError::NoSuchGeneration {
                site: site.to_owned(),
                generation,
                kept: current.history.iter().map(|p| p.generation).collect(),
            });
        };
        self.publish(site, old.manifest)
    }

    /// Removes a site (its blobs go at the next garbage collection), as the
    /// next generation. Returns that generation.
    pub fn delete(&self, site: &str) -> Result<u64, SiteError> {
        let current = self
            .site(site)?
            .ok_or_else(|| SiteError::NoSuchSite(site.to_owned()))?;
        let generation = current.generation + 1;
        self.delete_at(site, generation)?;
        Ok(generation)
    }

    /// [`Store::delete`] as generation `generation`, which must be later
    /// than the site's, as for [`Store::publish_at`] (a deletion replicated
    /// from a peer). A site this store never had gets its tombstone too: the
    /// deletion is the newest news.
    pub fn delete_at(&self, site: &str, generation: u64) -> Result<(), SiteError> {
        check_site_name(site)?;
        self.check_later(site, generation, None)?;
        let t = Tombstone {
            generation,
            deleted_ms: now_ms(),
        };
        let bytes = serde_json::to_vec(&t).map_err(io::Error::other)?;
        write_atomic(&self.tombstone_path(site), &bytes, 0o644)?;
        match fs::remove_file(self.ref_path(site)) {
            Ok(()) => Ok(sync_dir(&self.refs_dir())?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A site's version: its generation and the tie-break of its manifest (or
/// of a deletion), as replication orders them.
fn version_of(generation: u64, manifest: Option<Hash>) -> Version {
    let value = match manifest {
        Some(manifest) => Value::Site { manifest },
        None => Value::Deleted,
    };
    Version {
        lamport: generation,
        tiebreak: value.tiebreak(),
    }
}

/// Whether a ref is later than a tombstone of the same site.
fn later(r: &SiteRef, t: &Tombstone) -> bool {
    version_of(r.generation, Some(r.manifest)) > version_of(t.generation, None)
}

/// A site's JSON file (`what` of `site`), if there is one.
fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &str,
    site: &str,
) -> Result<Option<T>, SiteError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            SiteError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} of {site}: {e}"),
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What `read` finds for each `<site>.json` in `dir`, sorted by name.
fn list<T>(
    dir: &Path,
    read: impl Fn(&str) -> Result<Option<T>, SiteError>,
) -> Result<Vec<(String, T)>, SiteError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let Some(site) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if check_site_name(site).is_err() {
            continue;
        }
        if let Some(t) = read(site)? {
            out.push((site.to_owned(), t));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manifest::{FileEntry, SiteSettings};

    fn manifest(store: &Store, body: &[u8]) -> Hash {
        let blob = store.blobs().put(body).unwrap();
        let files = BTreeMap::from([(
            "index.html".to_owned(),
            FileEntry {
                hash: blob,
                size: body.len() as u64,
                content_type: "text/html".into(),
                variants: BTreeMap::new(),
            },
        )]);
        let m = Manifest::new(files, SiteSettings::default());
        store.blobs().put(&m.to_bytes()).unwrap()
    }

    #[test]
    fn generations_only_grow_also_across_a_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m1 = manifest(&store, b"one");
        assert_eq!(store.publish("shop", m1).unwrap().generation, 1);
        assert_eq!(store.delete("shop").unwrap(), 2);
        assert!(store.site("shop").unwrap().is_none());
        assert_eq!(store.tombstone("shop").unwrap().unwrap().generation, 2);
        assert_eq!(store.generation("shop").unwrap(), 2);
        // Published again: after the deletion, and the tombstone is gone.
        assert_eq!(store.publish("shop", m1).unwrap().generation, 3);
        assert!(store.tombstone("shop").unwrap().is_none());
    }

    #[test]
    fn a_replicated_generation_must_be_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m1 = manifest(&store, b"one");
        let m2 = manifest(&store, b"two");
        assert_eq!(store.publish_at("shop", m1, 7).unwrap().generation, 7);
        assert!(matches!(
            store.publish_at("shop", m2, 6),
            Err(SiteError::Stale { current: 7, .. })
        ));
        // The same generation: the larger tie-break (manifest hash) wins, as
        // on every peer, and replaces the loser in the history.
        let (small, large) = if m1.as_bytes() < m2.as_bytes() {
            (m1, m2)
        } else {
            (m2, m1)
        };
        let dir2 = tempfile::tempdir().unwrap();
        let other = Store::open(dir2.path()).unwrap();
        for m in [small, large] {
            let bytes = store.blobs().read_verified(&m).unwrap();
            other.blobs().put(&bytes).unwrap();
        }
        for b in [b"one".as_slice(), b"two"] {
            other.blobs().put(b).unwrap();
        }
        other.publish_at("shop", large, 7).unwrap();
        assert!(matches!(
            other.publish_at("shop", small, 7),
            Err(SiteError::Stale { .. })
        ));
        other.publish_at("shop", small, 6).unwrap_err();
        let other2 = tempfile::tempdir().unwrap();
        let third = Store::open(other2.path()).unwrap();
        for m in [small, large] {
            third
                .blobs()
                .put(&store.blobs().read_verified(&m).unwrap())
                .unwrap();
        }
        for b in [b"one".as_slice(), b"two"] {
            third.blobs().put(b).unwrap();
        }
        third.publish_at("shop", small, 7).unwrap();
        let r = third.publish_at("shop", large, 7).unwrap();
        assert_eq!((r.manifest, r.history.len()), (large, 1));
        // A deletion of a site never seen here is kept as a tombstone.
        store.delete_at("gone", 4).unwrap();
        assert!(store.publish_at("gone", m1, 3).is_err());
        assert_eq!(store.tombstones().unwrap().len(), 1);
    }

    #[test]
    fn a_crash_between_the_steps_of_a_deletion_ends_as_the_later_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m1 = manifest(&store, b"one");
        store.publish("shop", m1).unwrap();
        // The tombstone was written, the ref not yet removed.
        let t = Tombstone {
            generation: 2,
            deleted_ms: 0,
        };
        fs::write(
            store.tombstone_path("shop"),
            serde_json::to_vec(&t).unwrap(),
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.site("shop").unwrap().is_none());
        // A publish wrote its ref, the old tombstone was not removed yet.
        store.publish_at("shop", m1, 3).unwrap();
        fs::write(
            store.tombstone_path("shop"),
            serde_json::to_vec(&t).unwrap(),
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.site("shop").unwrap().unwrap().generation, 3);
        assert!(store.tombstone("shop").unwrap().is_none());
    }
}
