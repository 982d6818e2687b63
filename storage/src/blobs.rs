//! Blobs on disk, named by their BLAKE3 hash.
//!
//! ```text
//! <root>/blobs/<2 hex>/<64 hex>   immutable; the file's BLAKE3 is its name
//! <root>/tmp/                     writes in progress
//! <root>/quarantine/              blobs that failed a scrub
//! <root>/partial/                 blobs on their way from a peer (crate::partial)
//! ```
//!
//! A blob is written to `tmp/`, hashed while written, fsynced, checked against
//! the hash the writer was promised (if any), renamed into place, and the
//! directory fsynced. A crash leaves at most a temporary file, which is removed
//! at the next open or garbage collection; never a blob with a wrong name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::Hash;

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The bytes do not hash to the name they were uploaded under.
    #[error("content hashes to {actual}, not {expected}")]
    Mismatch { expected: Hash, actual: Hash },
    /// Bytes received for a blob (or the outboard proving them) do not
    /// match its name; the verified part received before them is kept.
    #[error("bytes received for {0} do not match it")]
    Corrupt(Hash),
    /// The disk failed or is full.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The content-addressed blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Blobs {
    /// Opens (creating) the store under `root`, removing temporary files a
    /// crash may have left. Only one process may use a store.
    pub fn open(root: &Path) -> io::Result<Self> {
        for dir in ["blobs", "tmp", "quarantine", "partial"] {
            fs::create_dir_all(root.join(dir))?;
        }
        let b = Self {
            root: root.to_owned(),
        };
        for entry in fs::read_dir(b.tmp_dir())?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(b)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn path(&self, h: &Hash) -> PathBuf {
        self.blobs_dir().join(h.prefix()).join(h.to_string())
    }

    pub fn contains(&self, h: &Hash) -> bool {
        self.path(h).is_file()
    }

    /// Marks a blob as recently wanted, so garbage collection's grace period
    /// protects it until a publish references it. False if absent.
    pub fn touch(&self, h: &Hash) -> bool {
        match OpenOptions::new().write(true).open(self.path(h)) {
            Ok(f) => f.set_modified(SystemTime::now()).is_ok(),
            Err(_) => false,
        }
    }

    /// Starts writing a blob.
    pub fn writer(&self) -> io::Result<BlobWriter> {
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_dir().join(format!("{}-{seq}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok(BlobWriter {
            file,
            tmp,
            hasher: blake3::Hasher::new(),
            len: 0,
            blobs: self.clone(),
            finished: false,
        })
    }

    /// Stores `bytes` and returns their hash.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash, PutError> {
        let mut w = self.writer()?;
        w.write(bytes)?;
        Ok(w.finish(None)?.0)
    }

    /// Reads a whole blob and checks it against its name.
    pub fn read_verified(&self, h: &Hash) -> io::Result<Vec<u8>> {
        let bytes = fs::read(self.path(h))?;
        if Hash::of(&bytes) != *h {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {h} does not match its name"),
            ));
        }
        Ok(bytes)
    }

    /// Re-hashes a blob from disk.
    pub fn rehash(&self, h: &Hash) -> io::Result<Hash> {
        let mut file = File::open(self.path(h))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finalize().into())
    }

    /// Every blob file's hash (files with other names are skipped).
    pub fn list(&self) -> io::Result<Vec<Hash>> {
        let mut out = Vec::new();
        for prefix in fs::read_dir(self.blobs_dir())?.flatten() {
            for entry in fs::read_dir(prefix.path())?.flatten() {
                if let Some(h) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.push(h);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Moves a blob out of the store into `quarantine/`.
    pub fn quarantine(&self, h: &Hash) -> io::Result<()> {
        fs::rename(
            self.path(h),
            self.root.join("quarantine").join(h.to_string()),
        )?;
        sync_dir(self.path(h).parent().unwrap_or(&self.root))
    }
}

/// A blob being written: bytes in, hashed as they go.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    tmp: PathBuf,
    hasher: blake3::Hasher,
    len: u64,
    blobs: Blobs,
    finished: bool,
}

impl BlobWriter {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the blob durable under its hash; with `expected`, refuses (and
    /// deletes) content that hashes to anything else. Returns the hash and
    /// the size.
    pub fn finish(mut self, expected: Option<Hash>) -> Result<(Hash, u64), PutError> {
        let actual: Hash = self.hasher.finalize().into();
        if let Some(expected) = expected {
            if expected != actual {
                return Err(PutError::Mismatch { expected, actual });
            }
        }
        let target = self.blobs.path(&actual);
        if target.is_file() {
            // Already there (same bytes by construction): keep the old one.
            self.blobs.touch(&actual);
            return Ok((actual, self.len));
        }
        self.file.sync_all()?;
        let dir = target.parent().unwrap_or(&self.blobs.root).to_owned();
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            sync_dir(&self.blobs.blobs_dir())?;
        }
        fs::rename(&self.tmp, &target)?;
        self.finished = true;
        sync_dir(&dir)?;
        Ok((actual, self.len))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a file so that a crash leaves either the old file or the new one:
/// a temporary file beside it (created with `mode`), fsync, rename over
/// `path`, fsync of the directory. Creates the parent directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{seq}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_names_blobs_by_hash_and_dedupes() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let h = b.put(b"hello").unwrap();
        assert_eq!(h, Hash::of(b"hello"));
        assert_eq!(fs::read(b.path(&h)).unwrap(), b"hello");
        assert_eq!(b.put(b"hello").unwrap(), h);
        assert_eq!(b.list().unwrap(), vec![h]);
        assert!(
            fs::read_dir(b.tmp_dir()).unwrap().next().is_none(),
            "no temporary left"
        );
    }

    #[test]
    fn a_mismatching_upload_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let mut w = b.writer().unwrap();
        w.write(b"not what was promised").unwrap();
        let promised = Hash::of(b"something else");
        assert!(matches!(
            w.finish(Some(promised)),
            Err(PutError::Mismatch { .. })
        ));
        assert!(b.list().unwrap().is_empty());
        assert!(fs::read_dir(b.tmp_dir()).unwrap().next().is_none());
    }

    #[test]
    fn an_abandoned_upload_leaves_nothing_and_a_crashed_one_is_cleaned_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let mut w = b.writer().unwrap();
        w.write(b"half").unwrap();
        drop(w);
        assert!(fs::read_dir(b.tmp_dir()).unwrap().next().is_none());
        // A crash: the writer never ran its drop.
        let mut w = b.writer().unwrap();
        w.write(b"half").unwrap();
        std::mem::forget(w);
        assert_eq!(fs::read_dir(b.tmp_dir()).unwrap().count(), 1);
        let b = Blobs::open(dir.path()).unwrap();
        assert!(fs::read_dir(b.tmp_dir()).unwrap().next().is_none());
        assert!(b.list().unwrap().is_empty());
    }

    #[test]
    fn write_atomic_replaces_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        write_atomic(&path, b"first", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn read_verified_catches_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let h = b.put(b"precious bytes").unwrap();
        assert_eq!(b.read_verified(&h).unwrap(), b"precious bytes");
        let mut bytes = fs::read(b.path(&h)).unwrap();
        bytes[3] ^= 0x20;
        fs::write(b.path(&h), bytes).unwrap();
        assert!(b.read_verified(&h).is_err());
        assert_ne!(b.rehash(&h).unwrap(), h);
    }
}
