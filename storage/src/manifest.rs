//! A site's manifest: every path, the blob that holds it, and how to serve it.
//! A manifest is itself stored as a blob (canonical JSON), so a site version is
//! named by one hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Hash;

/// The manifest format edgebox writes.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`] for now.
    pub format: u32,
    /// Normalised path (`css/site.css`, no leading slash) → file.
    pub files: BTreeMap<String, FileEntry>,
    #[serde(default)]
    pub settings: SiteSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub hash: Hash,
    pub size: u64,
    pub content_type: String,
    /// Precompressed copies, by content coding.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<Encoding, Variant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Br,
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Br => "br",
            Self::Gzip => "gzip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub hash: Hash,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteSettings {
    /// Served for a directory path (`/docs/` → `docs/index.html`).
    pub index: String,
    /// Served with status 404 when no file matches; none: a plain 404.
    pub not_found: Option<String>,
    pub cache: CachePolicy,
}

impl Default for SiteSettings {
    fn default() -> Self {
        Self {
            index: "index.html".into(),
            not_found: None,
            cache: CachePolicy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CachePolicy {
    /// `Cache-Control: public, max-age=N` for ordinary files.
    pub max_age_s: u64,
    /// Files under these path prefixes (fingerprinted assets) get
    /// `public, max-age=31536000, immutable`.
    pub immutable_prefixes: Vec<String>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            max_age_s: 300,
            immutable_prefixes: Vec::new(),
        }
    }
}

/// What is wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ManifestError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Why a path cannot be in a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute paths are not allowed")]
    Absolute,
    #[error("'..' is not allowed")]
    Parent,
    #[error("NUL bytes and backslashes are not allowed")]
    BadCharacter,
    #[error("longer than 1024 bytes")]
    TooLong,
}

/// A site path in its one accepted form: relative, `/`-separated, no empty,
/// `.` or `..` segments, no NUL or backslash. `./a//b` becomes `a/b`.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if path.len() > 1024 {
        return Err(PathError::TooLong);
    }
    if path.contains(['\0', '\\']) {
        return Err(PathError::BadCharacter);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    let mut parts = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(PathError::Parent),
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts.join("/"))
}

impl Manifest {
    pub fn new(files: BTreeMap<String, FileEntry>, settings: SiteSettings) -> Self {
        Self {
            format: FORMAT,
            files,
            settings,
        }
    }

    /// Parses and checks a manifest from untrusted bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(".", e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Paths in normal form, serveable content types, settings that point at
    /// files that exist.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(bad(
                "format",
                format!("unsupported manifest format {}", self.format),
            ));
        }
        for (path, f) in &self.files {
            let at = |field: &str| format!("files[{path:?}].{field}");
            match normalize_path(path) {
                Ok(p) if p == *path => {}
                Ok(_) => {
                    return Err(bad(
                        format!("files[{path:?}]"),
                        "path is not in normal form",
                    ))
                }
                Err(e) => return Err(bad(format!("files[{path:?}]"), e.to_string())),
            }
            if f.content_type.is_empty()
                || !f.content_type.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err(bad(at("content_type"), "must be visible ASCII"));
            }
        }
        if normalize_path(&self.settings.index).map(|p| p.contains('/')) != Ok(false) {
            return Err(bad("settings.index", "must be a file name"));
        }
        if let Some(nf) = &self.settings.not_found {
            if !self.files.contains_key(nf) {
                return Err(bad(
                    "settings.not_found",
                    format!("{nf:?} is not a file of this site"),
                ));
            }
        }
        Ok(())
    }

    /// The canonical bytes stored as the manifest blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Every blob the manifest needs: files and their variants.
    pub fn blobs(&self) -> impl Iterator<Item = Hash> + '_ {
        self.files
            .values()
            .flat_map(|f| std::iter::once(f.hash).chain(f.variants.values().map(|v| v.hash)))
    }

    /// The file for a request path (`/docs/` → the index file there, `/` →
    /// the top index). `None`: no such file.
    pub fn lookup(&self, request_path: &str) -> Option<(&str, &FileEntry)> {
        let trimmed = request_path.trim_start_matches('/');
        let candidate = if trimmed.is_empty() || trimmed.ends_with('/') {
            format!("{trimmed}{}", self.settings.index)
        } else {
            trimmed.to_owned()
        };
        let path = normalize_path(&candidate).ok()?;
        self.files
            .get_key_value(&path)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// The `Cache-Control` value for a path.
    pub fn cache_control(&self, path: &str) -> String {
        let c = &self.settings.cache;
        if c.immutable_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        {
            "public, max-age=31536000, immutable".into()
        } else {
            format!("public, max-age={}", c.max_age_s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: &[u8], ct: &str) -> FileEntry {
        FileEntry {
            hash: Hash::of(bytes),
            size: bytes.len() as u64,
            content_type: ct.into(),
            variants: BTreeMap::new(),
        }
    }

    fn site() -> Manifest {
        let mut files = BTreeMap::new();
        files.insert("index.html".into(), entry(b"home", "text/html"));
        files.insert("docs/index.html".into(), entry(b"docs", "text/html"));
        files.insert("assets/app.3f2a.js".into(), entry(b"js", "text/javascript"));
        files.insert("404.html".into(), entry(b"gone", "text/html"));
        let settings = SiteSettings {
            not_found: Some("404.html".into()),
            cache: CachePolicy {
                immutable_prefixes: vec!["assets/".into()],
                ..CachePolicy::default()
            },
            ..SiteSettings::default()
        };
        Manifest::new(files, settings)
    }

    #[test]
    fn paths_are_normalised_and_escapes_refused() {
        assert_eq!(normalize_path("./a//b/c.txt"), Ok("a/b/c.txt".into()));
        assert_eq!(normalize_path("a/./b"), Ok("a/b".into()));
        assert_eq!(normalize_path("../etc/passwd"), Err(PathError::Parent));
        assert_eq!(normalize_path("a/../../b"), Err(PathError::Parent));
        assert_eq!(normalize_path("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(normalize_path("a\0b"), Err(PathError::BadCharacter));
        assert_eq!(normalize_path("a\\..\\b"), Err(PathError::BadCharacter));
        assert_eq!(normalize_path("./"), Err(PathError::Empty));
        assert_eq!(normalize_path(&"a".repeat(2000)), Err(PathError::TooLong));
    }

    #[test]
    fn lookup_serves_index_files_and_nothing_outside() {
        let m = site();
        assert_eq!(m.lookup("/").unwrap().0, "index.html");
        assert_eq!(m.lookup("/docs/").unwrap().0, "docs/index.html");
        assert_eq!(
            m.lookup("/assets/app.3f2a.js").unwrap().0,
            "assets/app.3f2a.js"
        );
        assert!(
            m.lookup("/docs").is_none(),
            "a directory without the slash is not a file"
        );
        assert!(m.lookup("/../index.html").is_none());
        assert!(m.lookup("/missing").is_none());
    }

    #[test]
    fn cache_policy_per_path() {
        let m = site();
        assert_eq!(
            m.cache_control("assets/app.3f2a.js"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(m.cache_control("index.html"), "public, max-age=300");
    }

    #[test]
    fn round_trip_and_validation() {
        let m = site();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        let mut bad_path = site();
        let e = bad_path.files.remove("index.html").unwrap();
        bad_path.files.insert("../index.html".into(), e);
        assert!(Manifest::parse(&bad_path.to_bytes())
            .unwrap_err()
            .field
            .starts_with("files["));
        let mut bad_nf = site();
        bad_nf.settings.not_found = Some("nope.html".into());
        assert_eq!(
            Manifest::parse(&bad_nf.to_bytes()).unwrap_err().field,
            "settings.not_found"
        );
        assert!(Manifest::parse(b"{\"format\": 2, \"files\": {}}").is_err());
        assert!(Manifest::parse(b"not json").is_err());
    }

    #[test]
    fn blobs_lists_files_and_variants() {
        let mut m = site();
        let v = Variant {
            hash: Hash::of(b"gz"),
            size: 2,
        };
        m.files
            .get_mut("index.html")
            .unwrap()
            .variants
            .insert(Encoding::Gzip, v);
        let all: Vec<Hash> = m.blobs().collect();
        assert_eq!(all.len(), 5);
        assert!(all.contains(&Hash::of(b"gz")));
    }
}
