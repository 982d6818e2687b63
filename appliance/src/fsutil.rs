//! Files that must never be seen half-written: the store's atomic write.
#![forbid(unsafe_code)]

pub use edgebox_storage::blobs::write_atomic;
