//! Each core's open blobs: read (up to 256 KiB) or memory-mapped, verified
//! once, shared as `Bytes`.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};

use bytes::Bytes;
use edgebox_storage::{Blobs, Hash};

/// Mapped bytes kept per core before the least recently used are dropped.
const BUDGET: u64 = 512 << 20;

/// Blobs up to this size are read into memory rather than mapped: a
/// mapping of a file that something truncates raises SIGBUS when touched,
/// and a copy cannot. Most of a site's files are this small.
const READ_UP_TO: u64 = 256 << 10;

/// Why a blob cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob is not in the store (deleted, quarantined).
    #[error("blob {0} is not in the store")]
    Missing(Hash),
    /// The bytes on disk do not hash to the blob's name; they are never served.
    #[error("blob {0} does not match its name")]
    Corrupt(Hash),
    /// The disk failed.
    #[error("blob {hash}: {source}")]
    Io { hash: Hash, source: io::Error },
}

struct Entry {
    bytes: Bytes,
    last_used: u64,
}

pub struct BlobCache {
    blobs: Blobs,
    entries: RefCell<HashMap<Hash, Entry>>,
    mapped: Cell<u64>,
    clock: Cell<u64>,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("entries", &self.entries.borrow().len())
            .field("mapped", &self.mapped.get())
            .finish()
    }
}

impl BlobCache {
    pub fn new(blobs: Blobs) -> Self {
        Self {
            blobs,
            entries: RefCell::default(),
            mapped: Cell::new(0),
            clock: Cell::new(0),
        }
    }

    /// The blob's bytes. The first use on this core maps the file and checks
    /// its BLAKE3 against its name (blocking this core while it reads and
    /// hashes the file); later uses are a lookup.
    pub fn get(&self, hash: &Hash) -> Result<Bytes, BlobError> {
        let now = self.clock.get() + 1;
        self.clock.set(now);
        if let Some(e) = self.entries.borrow_mut().get_mut(hash) {
            e.last_used = now;
            return Ok(e.bytes.clone());
        }
        let bytes = self.map(hash)?;
        if Hash::from(blake3::hash(&bytes)) != *hash {
            tracing::error!(blob = %hash, "a blob does not match its name; it will not be served (run a scrub)");
            return Err(BlobError::Corrupt(*hash));
        }
        self.evict_for(bytes.len() as u64);
        self.mapped.set(self.mapped.get() + bytes.len() as u64);
        self.entries.borrow_mut().insert(
            *hash,
            Entry {
                bytes: bytes.clone(),
                last_used: now,
            },
        );
        Ok(bytes)
    }

    fn map(&self, hash: &Hash) -> Result<Bytes, BlobError> {
        let io_err = |source: io::Error| match source.kind() {
            io::ErrorKind::NotFound => BlobError::Missing(*hash),
            _ => BlobError::Io {
                hash: *hash,
                source,
            },
        };
        let file = File::open(self.blobs.path(hash)).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len == 0 {
            return Ok(Bytes::new());
        }
        if len <= READ_UP_TO {
            let mut bytes = Vec::with_capacity(len as usize);
            (&file)
                .take(READ_UP_TO + 1)
                .read_to_end(&mut bytes)
                .map_err(io_err)?;
            return Ok(Bytes::from(bytes));
        }
        // SAFETY: blob files are immutable: the store writes a blob once under
        // a temporary name and renames it into place, and never writes to a
        // blob file again (removal and quarantine unlink or rename it, which
        // leaves existing mappings intact). So the mapped bytes cannot change
        // under us while the `Mmap` lives. The hash check above the call still
        // guards against anything else writing there.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        Ok(Bytes::from_owner(map))
    }

    /// Drops least recently used mappings until `incoming` more fits.
    fn evict_for(&self, incoming: u64) {
        let mut entries = self.entries.borrow_mut();
        while self.mapped.get() + incoming > BUDGET && !entries.is_empty() {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some(e) = entries.remove(&oldest) {
                self.mapped
                    .set(self.mapped.get().saturating_sub(e.bytes.len() as u64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_blob_truncated_after_it_was_served_is_still_served_whole() {
        // Mapped, the truncation would make the next touch of its bytes a
        // SIGBUS that kills the process (this test's too).
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let content = vec![7u8; 100_000];
        let h = blobs.put(&content).unwrap();
        let cache = BlobCache::new(blobs.clone());
        let first = cache.get(&h).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(blobs.path(&h), std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(blobs.path(&h))
            .unwrap();
        f.set_len(10).unwrap();
        assert_eq!(first.iter().map(|&b| u64::from(b)).sum::<u64>(), 700_000);
        assert_eq!(cache.get(&h).unwrap(), content);
        // Another core, meeting it truncated, refuses it.
        assert!(matches!(
            BlobCache::new(blobs).get(&h),
            Err(BlobError::Corrupt(_))
        ));
    }

    #[test]
    fn serves_verified_bytes_and_refuses_corrupt_ones() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let good = blobs.put(b"hello world").unwrap();
        let empty = blobs.put(b"").unwrap();
        let bad = blobs.put(b"will be damaged").unwrap();
        let mut damaged = std::fs::read(blobs.path(&bad)).unwrap();
        damaged[0] ^= 1;
        std::fs::write(blobs.path(&bad), damaged).unwrap();

        let cache = BlobCache::new(blobs);
        assert_eq!(&cache.get(&good).unwrap()[..], b"hello world");
        assert_eq!(
            &cache.get(&good).unwrap()[..],
            b"hello world",
            "from the cache"
        );
        assert!(cache.get(&empty).unwrap().is_empty());
        assert!(matches!(cache.get(&bad), Err(BlobError::Corrupt(_))));
        assert!(matches!(
            cache.get(&Hash::of(b"absent")),
            Err(BlobError::Missing(_))
        ));
    }
}
