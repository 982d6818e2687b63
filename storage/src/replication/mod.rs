//! Replication between appliances: the protocol, without IO.
//!
//! Everything an appliance replicates is an item of its [`Catalog`]: a
//! site (`site/<name>`: its manifest, or a tombstone), the shared config
//! (`config`), a shard of the host map (`hostmap/<00..ff>`: a blob), the
//! session-ticket secret (`tickets`). Each item has a [`Version`]: a
//! Lamport clock (a change takes the largest clock seen, plus one) and a
//! tie-break from its value, so that concurrent changes of one key end the
//! same way on every node (the larger hash wins, and the loss is
//! reported).
//!
//! Two nodes sync by anti-entropy ([`Pull`]): one digest of the whole
//! catalog, then the 256 bucket digests where they differ, then the
//! summaries of the differing buckets, then the items the other has newer.
//! An item that needs blobs waits in the [`Node`] until every blob is
//! fetched and verified; only then is it applied and joins the catalog.
//! [`wire`] is the versioned message format; the QUIC transport is the
//! appliance's (`appliance/src/replication/`).

pub mod catalog;
pub mod node;
pub mod wire;

pub use catalog::{bucket_of, Catalog, Item, Offer, Value, Version, BUCKETS};
pub use node::{
    BlobIndex, Event, Fetch, Fetched, Glimpse, Limits, Next, Node, PeerId, Pull, Seen, SyncError,
};
pub use wire::{Notice, Request, Response, PROTOCOL};
