//! Sites: a ref per site naming its current manifest, with the last few
//! generations kept for rollback.
//!
//! `<root>/refs/<site>.json` is replaced atomically. A ref only ever points at
//! a manifest that is present, valid, and whose blobs are all present:
//! [`Store::publish`] checks all of it before the ref moves.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::blobs::{sync_dir, write_atomic, Blobs};
use crate::manifest::{Manifest, ManifestError};
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

impl Store {
    /// Opens (creating) the store under `root` (`<data>/store`).
    pub fn open(root: &Path) -> io::Result<Self> {
        let blobs = Blobs::open(root)?;
        fs::create_dir_all(root.join("refs"))?;
        Ok(Self { blobs })
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

    /// A site's ref, if the site exists.
    pub fn site(&self, site: &str) -> Result<Option<SiteRef>, SiteError> {
        check_site_name(site)?;
        match fs::read(self.ref_path(site)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                SiteError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("ref of {site}: {e}"),
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every site, sorted by name.
    pub fn sites(&self) -> Result<Vec<(String, SiteRef)>, SiteError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.refs_dir())?.flatten() {
            let name = entry.file_name();
            let Some(site) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if check_site_name(site).is_err() {
                continue;
            }
            if let Some(r) = self.site(site)? {
                out.push((site.to_owned(), r));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
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
    /// blob it names are present. Returns the new ref.
    pub fn publish(&self, site: &str, manifest: Hash) -> Result<SiteRef, SiteError> {
        check_site_name(site)?;
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
        let generation = previous.as_ref().map_or(1, |r| r.generation + 1);
        let mut history = previous.map(|r| r.history).unwrap_or_default();
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

    /// Removes a site (its blobs go at the next garbage collection).
    pub fn delete(&self, site: &str) -> Result<(), SiteError> {
        check_site_name(site)?;
        match fs::remove_file(self.ref_path(site)) {
            Ok(()) => Ok(sync_dir(&self.refs_dir())?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(SiteError::NoSuchSite(site.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }
}
