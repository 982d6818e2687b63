//! Certificates edgebox obtains itself (ACME), and the answers to the CA's
//! challenges, as every core's handshakes and plain-HTTP requests see them.
//!
//! The control plane writes (a new certificate, a challenge provisioned or
//! withdrawn) by publishing new maps through `arc-swap`; cores only read.
//!
//! Certificates are in the 256 shards they are stored in
//! ([`crate::acme::shard`]). A shard is read from its blob the first time
//! anything needs it (a handshake for one of its names, the control plane,
//! or the preload that follows the start), so start-up does not grow with
//! the number of certificates. Each is kept as DER and parsed into a rustls
//! [`CertifiedKey`] on a core's first handshake for the name, then kept in
//! that core's own bounded cache: so 100 000 names cost their bytes, not
//! 100 000 parsed keys, and no handshake takes a lock once its shard is
//! read. A shard's table is a persistent map, so adding one name copies a
//! path of it, not the whole map.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use edgebox_storage::{Blobs, Hash};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::acme::shard::shard_of;
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
    /// The issuer's name, read when first asked for (the admin API).
    issuer: OnceLock<Option<String>>,
}

impl Stored {
    /// The issuer's distinguished name, as text.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer
            .get_or_init(|| {
                let (_, cert) = x509_parser::parse_x509_certificate(&self.entry.leaf).ok()?;
                Some(cert.issuer().to_string())
            })
            .as_deref()
    }
}

type Table = imbl::HashMap<Arc<str>, Arc<Stored>>;

/// One shard: where it is stored, and its table once read.
#[derive(Debug, Default)]
struct Slot {
    source: Mutex<Option<Hash>>,
    table: OnceLock<ArcSwap<Table>>,
}

#[derive(Debug)]
pub struct Managed {
    slots: Box<[Slot]>,
    /// Where shards are read from (none: nothing stored, as in tests).
    blobs: OnceLock<Blobs>,
    /// TLS-ALPN-01: the challenge certificate for a name.
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: token → key authorization.
    http: ArcSwap<HashMap<String, String>>,
    ids: AtomicU64,
    /// The distinct intermediate chains, each kept once however many
    /// certificates a CA issued under it.
    chains: Mutex<Vec<Arc<[CertificateDer<'static>]>>>,
}

thread_local! {
    /// This core's parsed certificates, by [`Stored::id`].
    static PARSED: RefCell<HashMap<u64, Arc<CertifiedKey>>> = RefCell::new(HashMap::new());
}

impl Managed {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            slots: (0..256).map(|_| Slot::default()).collect(),
            blobs: OnceLock::new(),
            alpn: ArcSwap::default(),
            http: ArcSwap::default(),
            ids: AtomicU64::new(0),
            chains: Mutex::new(Vec::new()),
        })
    }

    /// Where the shards are stored: read from `blobs` when first needed.
    pub fn open(&self, blobs: Blobs, sources: impl IntoIterator<Item = (u8, Hash)>) {
        let _ = self.blobs.set(blobs);
        for (shard, hash) in sources {
            *lock(&self.slots[usize::from(shard)].source) = Some(hash);
        }
    }

    /// Shard `shard`'s table, read from its blob on first use. A shard that
    /// cannot be read serves nothing (and says so); it is read whole or
    /// not at all.
    fn table(&self, shard: u8) -> &ArcSwap<Table> {
        let slot = &self.slots[usize::from(shard)];
        slot.table.get_or_init(|| {
            let source = *lock(&slot.source);
            let (Some(hash), Some(blobs)) = (source, self.blobs.get()) else {
                return ArcSwap::default();
            };
            let read = blobs
                .read_verified(&hash)
                .map_err(|e| e.to_string())
                .and_then(|bytes| crate::acme::shard::decode(shard, &bytes));
            match read {
                Ok(entries) => {
                    let mut table = Table::new();
                    for (name, entry) in entries {
                        match self.stored(entry) {
                            Ok(s) => {
                                table.insert(Arc::from(name), s);
                            }
                            Err(e) => tracing::error!(name, "acme: a stored certificate is unusable: {e}"),
                        }
                    }
                    ArcSwap::from_pointee(table)
                }
                Err(e) => {
                    tracing::error!("acme: certificate shard {shard:02x} cannot be read, its names are not served: {e}");
                    ArcSwap::default()
                }
            }
        })
    }

    fn stored(&self, mut entry: Entry) -> Result<Arc<Stored>, String> {
        let (not_before, not_after) = super::validity::validity(&entry.leaf)
            .ok_or("cannot read the certificate's validity")?;
        entry.chain = self.intern(&entry.chain);
        Ok(Arc::new(Stored {
            id: self.ids.fetch_add(1, Ordering::Relaxed) + 1,
            entry,
            not_before,
            not_after,
            issuer: OnceLock::new(),
        }))
    }

    /// Reads every shard not read yet (after the start, off the data
    /// plane, so that handshakes rarely find one unread).
    pub fn preload(&self) {
        for shard in 0..=255 {
            self.table(shard);
        }
    }

    /// Installs (or replaces) the certificate of `name`. With `check`, the
    /// key is first proven to fit the leaf (a parse of both), so nothing
    /// unusable is ever served; certificates read back from this
    /// appliance's own store were checked when they came in.
    pub fn install(&self, name: &str, entry: Entry, check: bool) -> Result<Arc<Stored>, String> {
        if check {
            CertifiedKey::from_der(
                entry.full_chain(),
                PrivateKeyDer::Pkcs8(entry.key.clone_key()),
                &super::provider(),
            )
            .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
        }
        let stored = self.stored(entry)?;
        self.table(shard_of(name)).rcu(|m| {
            let mut m = Table::clone(m);
            m.insert(Arc::from(name), Arc::clone(&stored));
            m
        });
        Ok(stored)
    }

    fn intern(&self, chain: &Arc<[CertificateDer<'static>]>) -> Arc<[CertificateDer<'static>]> {
        let mut known = lock(&self.chains);
        if let Some(c) = known.iter().find(|c| c[..] == chain[..]) {
            return Arc::clone(c);
        }
        known.push(Arc::clone(chain));
        Arc::clone(chain)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stored>> {
        self.table(shard_of(name)).load().get(name).cloned()
    }

    /// Shard `shard`'s names with their certificates.
    pub fn shard(&self, shard: u8) -> Vec<(Arc<str>, Arc<Stored>)> {
        self.table(shard)
            .load()
            .iter()
            .map(|(n, s)| (Arc::clone(n), Arc::clone(s)))
            .collect()
    }

    /// Every name with its certificate (reads every shard).
    pub fn all(&self) -> Vec<(Arc<str>, Arc<Stored>)> {
        (0..=255).flat_map(|s| self.shard(s)).collect()
    }

    pub fn len(&self) -> usize {
        (0..=255).map(|s| self.table(s).load().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The certificate for `name` (lower case, no trailing dot), parsed on
    /// this thread's first use.
    pub fn resolve(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let stored = self.get(name)?;
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        issue_for(name)
    }

    pub(crate) fn issue_for(name: &str) -> Entry {
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
    }

    #[test]
    fn a_shard_is_read_from_its_blob_when_first_needed() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let names: Vec<String> = (0..)
            .map(|i| format!("shop{i}.test"))
            .filter(|n| shard_of(n) == 3)
            .take(2)
            .collect();
        let entries: Vec<Entry> = names.iter().map(|n| issue(n)).collect();
        let bytes = crate::acme::shard::encode(names.iter().map(String::as_str).zip(&entries));
        let hash = blobs.put(&bytes).unwrap();
        let missing = Hash::of(b"never stored");
        let m = Managed::new();
        m.open(blobs, [(3, hash), (4, missing)]);
        assert!(m.slots[3].table.get().is_none(), "nothing read at open");
        let key = m.resolve(&names[1]).expect("read on first use");
        assert_eq!(key.cert, entries[1].full_chain());
        assert!(m.slots[3].table.get().is_some());
        assert!(m.slots[5].table.get().is_none(), "only the shard needed");
        // A shard whose blob is gone serves nothing, and says so once.
        let in_4 = (0..)
            .map(|i| format!("x{i}.test"))
            .find(|n| shard_of(n) == 4)
            .unwrap();
        assert!(m.get(&in_4).is_none());
        m.preload();
        assert_eq!(m.len(), 2);
        // A new certificate joins its shard's table.
        let third = (0..)
            .map(|i| format!("y{i}.test"))
            .find(|n| shard_of(n) == 3)
            .unwrap();
        m.install(&third, issue(&third), true).unwrap();
        assert_eq!(m.shard(3).len(), 3);
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
