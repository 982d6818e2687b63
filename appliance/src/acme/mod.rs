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
//!   stored in the content store and the replication catalog
//!   (`cert/NAME`), so a peer serves them too.

pub mod jws;
pub mod order;
pub mod run;
pub mod schedule;

pub use order::ChallengeKind;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Decodes base64url without padding (as ACME and EAB keys use it).
pub fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// The catalog key prefix of an ACME certificate (with its key).
pub const CERT_PREFIX: &str = "cert/";
/// The catalog key prefix of an ACME account (per directory URL).
pub const ACCOUNT_PREFIX: &str = "acme-account/";

/// The catalog key of the account for a CA directory.
pub fn account_key_name(directory_url: &str) -> String {
    let h = blake3::hash(directory_url.as_bytes());
    format!("{ACCOUNT_PREFIX}{}", &h.to_hex()[..16])
}

/// A certificate and its key as one PEM document (key first), as stored.
pub fn bundle(key_pem: &str, chain_pem: &str) -> String {
    format!("{}\n{}", key_pem.trim_end(), chain_pem.trim_start())
}

/// Splits a stored bundle into its chain and key.
pub fn unbundle(
    pem: &[u8],
) -> Result<
    (
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ),
    String,
> {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("no usable key: {e}"))?;
    Ok((chain, key))
}
