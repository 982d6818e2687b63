//! edgebox's content-addressed store: blobs named by their BLAKE3 hash, site
//! manifests, refs, garbage collection and scrubbing.
//!
//! ```text
//! <data>/store/blobs/<2 hex>/<64 hex>   immutable; the file's BLAKE3 is its name
//! <data>/store/tmp/                     writes in progress
//! <data>/store/refs/<site>.json         {generation, manifest, history}, replaced atomically
//! <data>/store/quarantine/              blobs a scrub found corrupt
//! <data>/store/partial/<64 hex>         the verified prefix of a blob on its way from a peer
//! <data>/store/tombstones/<site>.json   {generation}: a deleted site, so the deletion replicates
//! ```
//!
//! Publishing a site: upload the blobs it is missing ([`Blobs::writer`], which
//! verifies each against the hash it was promised), upload the manifest (also
//! a blob), then move the ref ([`Store::publish`]), which refuses unless every
//! blob is present. Each write is fsynced and renamed into place, so a crash or
//! power cut leaves the old generation or the new one, never half of one.
//! The replication protocol between appliances is [`replication`].
//!
//! ```
//! use edgebox_storage::{Blobs, Hash, Store};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path()).unwrap();
//! let h = store.blobs().put(b"hello").unwrap();
//! assert_eq!(h, Hash::of(b"hello"));
//! assert!(store.blobs().contains(&h));
//! ```
#![forbid(unsafe_code)]

pub mod blobs;
mod hash;
pub mod maintenance;
pub mod manifest;
pub mod partial;
pub mod replication;
pub mod sites;
pub mod verified;

pub use blobs::{BlobWriter, Blobs, PutError};
pub use hash::{BadHash, Hash};
pub use maintenance::{GcReport, ScrubReport};
pub use manifest::{Encoding, FileEntry, Manifest, SiteSettings, Variant};
pub use partial::Partial;
pub use sites::{SiteError, SiteRef, Store};
