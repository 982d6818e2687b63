//! Garbage collection and scrubbing.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::sites::{SiteError, Store};
use crate::Hash;

/// What a garbage collection removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Blobs reachable from some site's kept generations.
    pub reachable: usize,
    /// Unreachable blobs removed.
    pub removed: usize,
    pub removed_bytes: u64,
    /// Unreachable blobs kept because they are younger than the grace period
    /// (an upload for a publish that has not happened yet).
    pub in_grace: usize,
}

/// What a scrub found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScrubReport {
    pub checked: usize,
    pub checked_bytes: u64,
    /// Blobs whose bytes no longer match their name; moved to quarantine.
    pub corrupt: Vec<Hash>,
    /// `site/path` of every file that used a corrupt blob (lost until
    /// re-published or repaired from a peer).
    pub lost: BTreeSet<String>,
}

impl Store {
    /// Every blob some site needs: the manifests of each site's kept
    /// generations and everything they name.
    pub fn reachable(&self) -> Result<HashSet<Hash>, SiteError> {
        let mut out = HashSet::new();
        for (_, r) in self.sites()? {
            for p in &r.history {
                out.insert(p.manifest);
                // A manifest that cannot be read has nothing more to keep.
                if let Ok(m) = self.manifest(&p.manifest) {
                    out.extend(m.blobs());
                }
            }
        }
        Ok(out)
    }

    /// Removes blobs no site's kept generations reach, unless they were
    /// written or touched within `grace` of `now`.
    pub fn gc(&self, grace: Duration, now: SystemTime) -> Result<GcReport, SiteError> {
        self.gc_keeping(grace, now, &HashSet::new())
    }

    /// [`Store::gc`], keeping `keep` as well (what replication holds: the
    /// host map's shards, the blobs of a site on its way). Partial blobs
    /// untouched for `grace` go too.
    pub fn gc_keeping(
        &self,
        grace: Duration,
        now: SystemTime,
        keep: &HashSet<Hash>,
    ) -> Result<GcReport, SiteError> {
        let mut reachable = self.reachable()?;
        reachable.extend(keep);
        self.remove_stale_partials(grace, now);
        let mut report = GcReport {
            reachable: reachable.len(),
            ..GcReport::default()
        };
        for h in self.blobs().list()? {
            if reachable.contains(&h) {
                continue;
            }
            let path = self.blobs().path(&h);
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < grace {
                report.in_grace += 1;
                continue;
            }
            fs::remove_file(&path)?;
            report.removed += 1;
            report.removed_bytes += meta.len();
        }
        Ok(report)
    }

    fn remove_stale_partials(&self, grace: Duration, now: SystemTime) {
        let Ok(dir) = fs::read_dir(self.blobs().root().join("partial")) else {
            return;
        };
        for entry in dir.flatten() {
            let stale = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= grace);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Re-hashes every blob; one whose bytes do not match its name is moved to
    /// quarantine (so it is never served) and reported with the files it held.
    pub fn scrub(&self) -> Result<ScrubReport, SiteError> {
        let mut report = ScrubReport::default();
        for h in self.blobs().list()? {
            report.checked += 1;
            report.checked_bytes += fs::metadata(self.blobs().path(&h)).map_or(0, |m| m.len());
            if self.blobs().rehash(&h)? != h {
                self.blobs().quarantine(&h)?;
                report.corrupt.push(h);
            }
        }
        if report.corrupt.is_empty() {
            return Ok(report);
        }
        let corrupt: HashSet<Hash> = report.corrupt.iter().copied().collect();
        for (site, r) in self.sites()? {
            if corrupt.contains(&r.manifest) {
                report.lost.insert(format!("{site}/ (manifest)"));
                continue;
            }
            let Ok(m) = self.manifest(&r.manifest) else {
                continue;
            };
            for (path, f) in &m.files {
                let hit = corrupt.contains(&f.hash)
                    || f.variants.values().any(|v| corrupt.contains(&v.hash));
                if hit {
                    report.lost.insert(format!("{site}/{path}"));
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manifest::{FileEntry, Manifest, SiteSettings};

    fn publish(store: &Store, site: &str, files: &[(&str, &[u8])]) -> Hash {
        let mut map = BTreeMap::new();
        for (path, bytes) in files {
            let hash = store.blobs().put(bytes).unwrap();
            map.insert(
                path.to_string(),
                FileEntry {
                    hash,
                    size: bytes.len() as u64,
                    content_type: "text/plain".into(),
                    variants: BTreeMap::new(),
                },
            );
        }
        let m = Manifest::new(map, SiteSettings::default());
        let mh = store.blobs().put(&m.to_bytes()).unwrap();
        store.publish(site, mh).unwrap();
        mh
    }

    fn later(days: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(days * 86_400)
    }

    #[test]
    fn gc_keeps_what_kept_generations_reach_and_young_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        publish(&store, "shop", &[("a.txt", b"v1"), ("b.txt", b"shared")]);
        for i in 2..=crate::sites::KEEP_GENERATIONS as u32 + 1 {
            publish(
                &store,
                "shop",
                &[("a.txt", format!("v{i}").as_bytes()), ("b.txt", b"shared")],
            );
        }
        let orphan = store.blobs().put(b"uploaded, never published").unwrap();
        // Within the grace period nothing goes.
        let r = store
            .gc(Duration::from_secs(3600), SystemTime::now())
            .unwrap();
        assert_eq!(r.removed, 0);
        assert!(r.in_grace >= 2, "{r:?}");
        // Later: generation 1 (v1 and its manifest) fell out of the history,
        // and the orphan's grace ran out.
        let r = store.gc(Duration::from_secs(3600), later(1)).unwrap();
        assert_eq!(r.removed, 3, "{r:?}");
        assert!(!store.blobs().contains(&Hash::of(b"v1")));
        assert!(!store.blobs().contains(&orphan));
        assert!(store.blobs().contains(&Hash::of(b"v2")), "kept generation");
        assert!(store.blobs().contains(&Hash::of(b"shared")));
        // A deleted site's blobs go too.
        store.delete("shop").unwrap();
        let r = store.gc(Duration::ZERO, later(1)).unwrap();
        assert_eq!(store.blobs().list().unwrap().len(), 0, "{r:?}");
    }

    #[test]
    fn scrub_finds_a_flipped_byte_and_names_the_lost_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        publish(
            &store,
            "shop",
            &[("index.html", b"<h1>hi</h1>"), ("logo.svg", b"<svg/>")],
        );
        assert_eq!(store.scrub().unwrap().corrupt, vec![]);
        let victim = Hash::of(b"<svg/>");
        let path = store.blobs().path(&victim);
        let mut bytes = fs::read(&path).unwrap();
        bytes[1] ^= 1;
        fs::write(&path, bytes).unwrap();
        let r = store.scrub().unwrap();
        assert_eq!(r.corrupt, vec![victim]);
        assert_eq!(r.lost.iter().collect::<Vec<_>>(), ["shop/logo.svg"]);
        assert!(
            !store.blobs().contains(&victim),
            "quarantined, so never served"
        );
        assert_eq!(
            store.scrub().unwrap().corrupt,
            vec![],
            "clean after quarantine"
        );
    }

    #[test]
    fn publish_refuses_missing_blobs_and_rollback_restores() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let v1 = publish(&store, "shop", &[("a.txt", b"one")]);
        let v2 = publish(&store, "shop", &[("a.txt", b"two")]);
        assert_eq!(store.site("shop").unwrap().unwrap().manifest, v2);
        // A manifest naming a blob that was never uploaded.
        let mut map = BTreeMap::new();
        map.insert(
            "a.txt".to_string(),
            FileEntry {
                hash: Hash::of(b"never uploaded"),
                size: 14,
                content_type: "text/plain".into(),
                variants: BTreeMap::new(),
            },
        );
        let m = store
            .blobs()
            .put(&Manifest::new(map, SiteSettings::default()).to_bytes())
            .unwrap();
        assert!(
            matches!(store.publish("shop", m), Err(SiteError::MissingBlobs(v)) if v.len() == 1)
        );
        assert!(matches!(
            store.publish("shop", Hash::of(b"absent")),
            Err(SiteError::ManifestMissing(_))
        ));
        assert!(matches!(store.publish("../x", v1), Err(SiteError::BadName)));
        assert_eq!(
            store.site("shop").unwrap().unwrap().manifest,
            v2,
            "refused publishes change nothing"
        );
        let back = store.rollback("shop", 1).unwrap();
        assert_eq!((back.generation, back.manifest), (3, v1));
        assert!(matches!(
            store.rollback("shop", 99),
            Err(SiteError::NoSuchGeneration { .. })
        ));
        assert_eq!(store.sites().unwrap().len(), 1);
    }
}
