//! Certificates edgebox obtains itself (ACME), and the answers to the CA's
//! challenges, as every core's handshakes and plain-HTTP requests see them.
//!
//! The control plane writes (a new certificate, a challenge provisioned or
//! withdrawn) by publishing a new map through `arc-swap`; cores only read.
//! Certificates are kept as DER and parsed into a rustls [`CertifiedKey`]
//! on a core's first handshake for the name, then kept in that core's own
//! bounded cache: so a table of 100 000 names costs its bytes, not 100 000
//! parsed keys, and no handshake takes a lock. The certificate table is a
//! persistent map, so adding one name copies a path of the map, not the
//! whole map.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::acme::shard::Entry;

/// The path prefix of HTTP-01 challenges (RFC 8555 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// How many parsed certificates each core keeps.
pub const CORE_CACHE: usize = 4096;

/// One certificate as stored: its chain and key, not yet parsed.
#[derive(Debug)]
pub struct Stored {
    /// Unique for the process's life: a core's cache entry for an older
    /// certificate of the same name is not taken for this one.
    pub id: u64,
    pub entry: Entry,
    /// Validity of the leaf, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Default)]
pub struct Managed {
    certs: ArcSwap<imbl::HashMap<Arc<str>, Arc<Stored>>>,
    /// TLS-ALPN-01: the challenge certificate for a name.
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: token → key authorization.
    http: ArcSwap<HashMap<String, String>>,
    ids: AtomicU64,
    /// The distinct intermediate chains, each kept once however many
    /// certificates a CA issued under it (written by the control plane).
    chains: std::sync::Mutex<Vec<Arc<[CertificateDer<'static>]>>>,
}

thread_local! {
    /// This core's parsed certificates, by [`Stored::id`].
    static PARSED: RefCell<HashMap<u64, Arc<CertifiedKey>>> = RefCell::new(HashMap::new());
}

impl Managed {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Installs (or replaces) the certificate of `name`. With `check`, the
    /// key is first proven to fit the leaf (a parse of both), so nothing
    /// unusable is ever served; certificates read back from this
    /// appliance's own store were checked when they came in.
    pub fn install(
        &self,
        name: &str,
        mut entry: Entry,
        check: bool,
    ) -> Result<Arc<Stored>, String> {
        let (not_before, not_after) = super::validity::validity(&entry.leaf)
            .ok_or("cannot read the certificate's validity")?;
        if check {
            CertifiedKey::from_der(
                entry.full_chain(),
                PrivateKeyDer::Pkcs8(entry.key.clone_key()),
                &super::provider(),
            )
            .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
        }
        entry.chain = self.intern(&entry.chain);
        let stored = Arc::new(Stored {
            id: self.ids.fetch_add(1, Ordering::Relaxed) + 1,
            entry,
            not_before,
            not_after,
        });
        self.certs.rcu(|m| {
            let mut m = imbl::HashMap::clone(m);
            m.insert(Arc::from(name), Arc::clone(&stored));
            m
        });
        Ok(stored)
    }

    fn intern(&self, chain: &Arc<[CertificateDer<'static>]>) -> Arc<[CertificateDer<'static>]> {
        let mut known = self.chains.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = known.iter().find(|c| c[..] == chain[..]) {
            return Arc::clone(c);
        }
        known.push(Arc::clone(chain));
        Arc::clone(chain)
    }

    pub fn remove(&self, name: &str) {
        self.certs.rcu(|m| {
            let mut m = imbl::HashMap::clone(m);
            m.remove(name);
            m
        });
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stored>> {
        self.certs.load().get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.certs.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.load().is_empty()
    }

    /// Every name with its certificate.
    pub fn all(&self) -> Vec<(Arc<str>, Arc<Stored>)> {
        self.certs
            .load()
            .iter()
            .map(|(n, s)| (Arc::clone(n), Arc::clone(s)))
            .collect()
    }

    /// The certificate for `name` (lower case, no trailing dot), parsed on
    /// this thread's first use.
    pub fn resolve(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let stored = self.certs.load().get(name).cloned()?;
        PARSED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(k) = cache.get(&stored.id) {
                return Some(Arc::clone(k));
            }
            let signing = super::provider()
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(stored.entry.key.clone_key()))
                .ok()?;
            let key = Arc::new(CertifiedKey::new(stored.entry.full_chain(), signing));
            if cache.len() >= CORE_CACHE {
                // Any entry makes room: a name handshaking often is back
                // after one parse.
                if let Some(&old) = cache.keys().next() {
                    cache.remove(&old);
                }
            }
            cache.insert(stored.id, Arc::clone(&key));
            Some(key)
        })
    }

    /// Makes a TLS-ALPN-01 challenge answerable for `name`.
    pub fn add_alpn_challenge(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.alpn.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.to_owned(), Arc::clone(&cert));
            m
        });
    }

    pub fn remove_alpn_challenge(&self, name: &str) {
        self.alpn.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(name);
            m
        });
    }

    pub fn alpn_challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.load().get(name).cloned()
    }

    pub fn add_http_challenge(&self, token: &str, key_authorization: &str) {
        self.http.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_owned(), key_authorization.to_owned());
            m
        });
    }

    pub fn remove_http_challenge(&self, token: &str) {
        self.http.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            m
        });
    }

    /// The key authorization for an HTTP-01 request's path, if it is one
    /// this appliance has provisioned.
    pub fn http_challenge(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        let map = self.http.load();
        if map.is_empty() {
            return None;
        }
        map.get(token).cloned()
    }
}

/// The certificate answering a TLS-ALPN-01 challenge for `name`: self-signed,
/// for `name` alone, with the critical acmeIdentifier extension holding the
/// SHA-256 of the key authorization (RFC 8737 3).
pub fn alpn_challenge_cert(name: &str, key_authorization: &str) -> Result<CertifiedKey, String> {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest.as_ref()));
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    // Not `CertifiedKey::from_der`: its check parses the certificate with
    // webpki, which refuses the critical extension a CA looks for.
    let signing = super::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(name: &str) -> Entry {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Entry::new(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn a_certificate_is_parsed_once_per_core_and_replaced_whole() {
        let m = Managed::new();
        let e = issue("shop.test");
        let chain = e.full_chain();
        let first = m.install("shop.test", e, true).unwrap();
        let a = m.resolve("shop.test").unwrap();
        let b = m.resolve("shop.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "parsed once on this thread");
        assert_eq!(a.cert, chain);
        assert!(m.resolve("other.test").is_none());
        // Another thread parses its own.
        let m2 = Arc::clone(&m);
        let c = std::thread::spawn(move || m2.resolve("shop.test").unwrap())
            .join()
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        // A renewal is served at once, not the cached old one.
        let e2 = issue("shop.test");
        let chain2 = e2.full_chain();
        let second = m.install("shop.test", e2, true).unwrap();
        assert_ne!(first.id, second.id);
        assert_eq!(m.resolve("shop.test").unwrap().cert, chain2);
        m.remove("shop.test");
        assert!(m.resolve("shop.test").is_none());
    }

    #[test]
    fn a_key_that_does_not_fit_is_refused() {
        let m = Managed::new();
        let mut e = issue("shop.test");
        e.key = issue("shop.test").key;
        let err = m.install("shop.test", e, true).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        assert!(m.is_empty());
    }

    #[test]
    fn challenges_are_answered_only_while_provisioned() {
        let m = Managed::new();
        assert_eq!(m.http_challenge("/.well-known/acme-challenge/tok"), None);
        m.add_http_challenge("tok", "tok.thumb");
        assert_eq!(
            m.http_challenge("/.well-known/acme-challenge/tok")
                .as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(m.http_challenge("/.well-known/acme-challenge/other"), None);
        assert_eq!(m.http_challenge("/tok"), None);
        m.remove_http_challenge("tok");
        assert_eq!(m.http_challenge("/.well-known/acme-challenge/tok"), None);

        let cert = alpn_challenge_cert("shop.test", "tok.thumb").unwrap();
        m.add_alpn_challenge("shop.test", Arc::new(cert));
        assert!(m.alpn_challenge("shop.test").is_some());
        assert!(m.alpn_challenge("other.test").is_none());
        m.remove_alpn_challenge("shop.test");
        assert!(m.alpn_challenge("shop.test").is_none());
    }

    #[test]
    fn the_alpn_challenge_certificate_carries_the_digest_in_a_critical_extension() {
        let cert = alpn_challenge_cert("shop.test", "tok.thumb").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"tok.thumb");
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], digest.as_ref());
    }
}
