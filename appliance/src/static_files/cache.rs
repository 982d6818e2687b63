//! Each core's open blobs, verified once: small ones read into memory and
//! shared as `Bytes`, large ones kept open and read a chunk at a time for
//! each response ([`crate::response::FileRange`]). Nothing is memory-mapped:
//! a mapping of a file that something truncates raises SIGBUS when touched,
//! which would kill the process; a read only comes up short.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::rc::Rc;

use bytes::Bytes;
use edgebox_storage::{Blobs, Hash};

/// Bytes of blobs kept per core (read in, or open for large ones) before
/// the least recently used are dropped. At most this over [`READ_UP_TO`]
/// files are held open.
const BUDGET: u64 = 512 << 20;

/// Blobs up to this size are read into memory; larger ones are read for
/// each response. Most of a site's files are this small.
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

/// A verified blob: its bytes, or the open file they are read from.
#[derive(Debug, Clone)]
pub enum Blob {
    Bytes(Bytes),
    File { file: Rc<File>, len: u64 },
}

impl Blob {
    pub fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Entry {
    blob: Blob,
    last_used: u64,
}

pub struct BlobCache {
    blobs: Blobs,
    entries: RefCell<HashMap<Hash, Entry>>,
    held: Cell<u64>,
    clock: Cell<u64>,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("entries", &self.entries.borrow().len())
            .field("held", &self.held.get())
            .finish()
    }
}

impl BlobCache {
    pub fn new(blobs: Blobs) -> Self {
        Self {
            blobs,
            entries: RefCell::default(),
            held: Cell::new(0),
            clock: Cell::new(0),
        }
    }

    /// The blob. The first use on this core reads the file and checks its
    /// BLAKE3 against its name (blocking this core while it reads and hashes
    /// it); later uses are a lookup, and for a large blob a check that its
    /// file still has its length: one that was truncated is read and hashed
    /// again, and so refused.
    pub fn get(&self, hash: &Hash) -> Result<Blob, BlobError> {
        let now = self.clock.get() + 1;
        self.clock.set(now);
        if let Some(e) = self.entries.borrow_mut().get_mut(hash) {
            let intact = match &e.blob {
                Blob::Bytes(_) => true,
                Blob::File { file, len } => file.metadata().is_ok_and(|m| m.len() == *len),
            };
            if intact {
                e.last_used = now;
                return Ok(e.blob.clone());
            }
        }
        self.forget(hash);
        let blob = self.load(hash)?;
        self.evict_for(blob.len());
        self.held.set(self.held.get() + blob.len());
        self.entries.borrow_mut().insert(
            *hash,
            Entry {
                blob: blob.clone(),
                last_used: now,
            },
        );
        Ok(blob)
    }

    fn load(&self, hash: &Hash) -> Result<Blob, BlobError> {
        let io_err = |source: io::Error| match source.kind() {
            io::ErrorKind::NotFound => BlobError::Missing(*hash),
            _ => BlobError::Io {
                hash: *hash,
                source,
            },
        };
        let mut file = File::open(self.blobs.path(hash)).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let corrupt = || {
            tracing::error!(blob = %hash, "a blob does not match its name; it will not be served (run a scrub)");
            BlobError::Corrupt(*hash)
        };
        if len <= READ_UP_TO {
            let mut bytes = Vec::with_capacity(len as usize);
            (&file)
                .take(READ_UP_TO + 1)
                .read_to_end(&mut bytes)
                .map_err(io_err)?;
            if Hash::from(blake3::hash(&bytes)) != *hash {
                return Err(corrupt());
            }
            return Ok(Blob::Bytes(Bytes::from(bytes)));
        }
        let mut hasher = blake3::Hasher::new();
        let read = io::copy(&mut (&mut file).take(len), &mut hasher).map_err(io_err)?;
        if read != len || Hash::from(hasher.finalize()) != *hash {
            return Err(corrupt());
        }
        Ok(Blob::File {
            file: Rc::new(file),
            len,
        })
    }

    fn forget(&self, hash: &Hash) {
        if let Some(e) = self.entries.borrow_mut().remove(hash) {
            self.held.set(self.held.get().saturating_sub(e.blob.len()));
        }
    }

    /// Drops the least recently used blobs until `incoming` more fits.
    fn evict_for(&self, incoming: u64) {
        let mut entries = self.entries.borrow_mut();
        while self.held.get() + incoming > BUDGET && !entries.is_empty() {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some(e) = entries.remove(&oldest) {
                self.held.set(self.held.get().saturating_sub(e.blob.len()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{FileRange, ResBody};

    /// Every byte of `blob`, read as a response would read it.
    fn read_all(blob: &Blob) -> Result<Vec<u8>, crate::response::BodyError> {
        match blob {
            Blob::Bytes(b) => Ok(b.to_vec()),
            Blob::File { file, len } => {
                drain(ResBody::File(FileRange::new(Rc::clone(file), 0, *len)))
            }
        }
    }

    fn drain(mut body: ResBody) -> Result<Vec<u8>, crate::response::BodyError> {
        use http_body::Body;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut out = Vec::new();
        while let std::task::Poll::Ready(Some(frame)) =
            std::pin::Pin::new(&mut body).poll_frame(&mut cx)
        {
            out.extend_from_slice(frame?.data_ref().expect("data"));
        }
        Ok(out)
    }

    /// `len` bytes that do not repeat (BLAKE3's output stream).
    fn noise(len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        blake3::Hasher::new().finalize_xof().fill(&mut out);
        out
    }

    fn truncate(blobs: &Blobs, h: &Hash, to: u64) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(blobs.path(h), std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(blobs.path(h))
            .unwrap();
        f.set_len(to).unwrap();
    }

    #[test]
    fn a_small_blob_truncated_after_it_was_served_is_still_served_whole() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let content = vec![7u8; 100_000];
        let h = blobs.put(&content).unwrap();
        let cache = BlobCache::new(blobs.clone());
        let first = cache.get(&h).unwrap();
        truncate(&blobs, &h, 10);
        assert_eq!(read_all(&first).unwrap(), content);
        assert_eq!(read_all(&cache.get(&h).unwrap()).unwrap(), content);
        // Another core, meeting it truncated, refuses it.
        assert!(matches!(
            BlobCache::new(blobs).get(&h),
            Err(BlobError::Corrupt(_))
        ));
    }

    #[test]
    fn a_large_blob_truncated_under_a_response_cuts_it_and_is_refused_after() {
        // Mapped, as large blobs were, the truncation would make the next
        // touch of the bytes past the end a SIGBUS that kills the process
        // (this test's too).
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let content = noise(3 << 20);
        let h = blobs.put(&content).unwrap();
        let cache = BlobCache::new(blobs.clone());
        let blob = cache.get(&h).unwrap();
        assert!(matches!(blob, Blob::File { .. }));
        assert_eq!(read_all(&blob).unwrap(), content, "whole while intact");
        // A response under way: its first chunk is out, then the file shrinks.
        let Blob::File { file, len } = &blob else {
            unreachable!()
        };
        let mut range = ResBody::File(FileRange::new(Rc::clone(file), 0, *len));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        use http_body::Body;
        let first = std::pin::Pin::new(&mut range).poll_frame(&mut cx);
        assert!(matches!(first, std::task::Poll::Ready(Some(Ok(_)))));
        truncate(&blobs, &h, 1 << 20);
        let rest = drain(range);
        assert!(
            matches!(rest, Err(crate::response::BodyError::File(_))),
            "the response is cut, not padded or served short as if whole"
        );
        // The next request finds the length changed, hashes again: refused.
        assert!(matches!(cache.get(&h), Err(BlobError::Corrupt(_))));
    }

    #[test]
    fn serves_verified_bytes_and_refuses_corrupt_ones() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let good = blobs.put(b"hello world").unwrap();
        let empty = blobs.put(b"").unwrap();
        let bad = blobs.put(b"will be damaged").unwrap();
        let big = noise(1 << 20);
        let big_bad = blobs.put(&big).unwrap();
        for h in [bad, big_bad] {
            let mut damaged = std::fs::read(blobs.path(&h)).unwrap();
            damaged[0] ^= 1;
            std::fs::write(blobs.path(&h), damaged).unwrap();
        }

        let cache = BlobCache::new(blobs);
        assert_eq!(
            read_all(&cache.get(&good).unwrap()).unwrap(),
            b"hello world"
        );
        assert_eq!(
            read_all(&cache.get(&good).unwrap()).unwrap(),
            b"hello world",
            "from the cache"
        );
        assert!(cache.get(&empty).unwrap().is_empty());
        assert!(matches!(cache.get(&bad), Err(BlobError::Corrupt(_))));
        assert!(matches!(cache.get(&big_bad), Err(BlobError::Corrupt(_))));
        assert!(matches!(
            cache.get(&Hash::of(b"absent")),
            Err(BlobError::Missing(_))
        ));
    }
}
