//! edgebox's content-addressed store (not yet implemented).
//!
//! This crate will hold the BLAKE3 content-addressed blob store
//! (`<data>/store/blobs/<2 hex>/<64 hex>`, written through `tmp/`, fsynced and
//! renamed), site manifests (path → blob hash, size, content type, precompressed
//! variants), refs (site → generation and manifest hash, replaced atomically),
//! garbage collection and scrubbing, and the sans-IO replication protocol that
//! appliances speak to each other over QUIC. See `DESIGN.md`, "Storage" and
//! "Replication"; the work is tracked by the issue "Content-addressed store and
//! static sites".
#![forbid(unsafe_code)]
