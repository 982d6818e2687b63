//! Certificates edgebox obtains and renews itself, from an ACME CA
//! (RFC 8555), for the names the `acme` section lists and the hosts of the
//! host map. docs/acme.md has the operator's view.
//!
//! - [`order`]: one order, sans-IO (requests out, responses in).
//! - [`jws`]: the account key and request signatures.
//! - [`schedule`]: which name is due when (renewal at two thirds of the
//!   lifetime, back-off, the hourly budget), sans-IO.
//! - [`run`]: the control thread's driver: HTTPS to the CA, the
//!   challenges provisioned in [`crate::tls::managed`], certificates
//!   kept in [`shard`]s (blobs named by the catalog items `certs/XX`),
//!   so a peer serves them too.

pub mod ari;
pub mod http;
pub mod import;
pub mod jws;
pub mod order;
pub mod run;
pub mod schedule;
pub mod shard;

pub use order::ChallengeKind;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Decodes base64url without padding (as ACME and EAB keys use it).
pub fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// The catalog key prefix of an ACME account (per directory URL).
pub const ACCOUNT_PREFIX: &str = "acme-account/";

/// The catalog key of the account for a CA directory.
pub fn account_key_name(directory_url: &str) -> String {
    let h = blake3::hash(directory_url.as_bytes());
    format!("{ACCOUNT_PREFIX}{}", &h.to_hex()[..16])
}
