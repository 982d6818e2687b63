//! How ACME certificates are kept and replicated: in 256 shards by the first
//! byte of the name's BLAKE3 (as the host map is), each shard one blob named
//! by the catalog item `certs/XX`. A shard holds its certificates and keys
//! inline, each distinct intermediate chain once. So a new certificate
//! rewrites one shard (a 256th of them) and the catalog stays at most 256
//! items, however many names there are; the start-up reads 256 blobs.
//! Pure: bytes in, bytes out.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

/// The catalog key prefix of a certificate shard.
pub const PREFIX: &str = "certs/";

/// The shard a name is in.
pub fn shard_of(name: &str) -> u8 {
    crate::replication::shared::shard_of(name)
}

pub fn key(shard: u8) -> String {
    format!("{PREFIX}{shard:02x}")
}

/// The shard a catalog key names.
pub fn of_key(key: &str) -> Option<u8> {
    let hex = key.strip_prefix(PREFIX)?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// One certificate of a shard: its leaf, the chain above it (shared by the
/// certificates with the same one), and its key (PKCS#8).
#[derive(Debug)]
pub struct Entry {
    pub leaf: CertificateDer<'static>,
    pub chain: Arc<[CertificateDer<'static>]>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Self {
            leaf: self.leaf.clone(),
            chain: Arc::clone(&self.chain),
            key: self.key.clone_key(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    /// Distinct intermediate chains, base64 DER each.
    chains: Vec<Vec<String>>,
    certs: BTreeMap<String, DocCert>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocCert {
    leaf: String,
    chain: usize,
    /// PKCS#8, base64.
    key: String,
}

/// A shard's blob.
pub fn encode<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Entry)>) -> Vec<u8> {
    let mut chains: Vec<Arc<[CertificateDer<'static>]>> = Vec::new();
    let mut certs = BTreeMap::new();
    for (name, e) in entries {
        let chain = match chains.iter().position(|c| c[..] == e.chain[..]) {
            Some(i) => i,
            None => {
                chains.push(Arc::clone(&e.chain));
                chains.len() - 1
            }
        };
        certs.insert(
            name.to_owned(),
            DocCert {
                leaf: STANDARD.encode(&e.leaf),
                chain,
                key: STANDARD.encode(e.key.secret_pkcs8_der()),
            },
        );
    }
    let doc = Doc {
        chains: chains
            .iter()
            .map(|c| c.iter().map(|d| STANDARD.encode(d)).collect())
            .collect(),
        certs,
    };
    // Plain data with string keys: serialising cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// A shard's certificates, by name; refuses the whole shard if any part of
/// it is malformed or a name is not in this shard.
pub fn decode(shard: u8, bytes: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    let doc: Doc =
        serde_json::from_slice(bytes).map_err(|e| format!("not a certificate shard: {e}"))?;
    let b64 = |s: &str, what: &str| {
        STANDARD
            .decode(s)
            .map_err(|e| format!("{what}: not base64: {e}"))
    };
    let chains = doc
        .chains
        .iter()
        .map(|c| {
            c.iter()
                .map(|d| b64(d, "chain").map(CertificateDer::from))
                .collect::<Result<Vec<_>, _>>()
                .map(Arc::<[CertificateDer<'static>]>::from)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = BTreeMap::new();
    for (name, c) in doc.certs {
        if shard_of(&name) != shard {
            return Err(format!("{name} does not belong in shard {shard:02x}"));
        }
        let chain = chains
            .get(c.chain)
            .cloned()
            .ok_or_else(|| format!("{name}: no chain {}", c.chain))?;
        out.insert(
            name.clone(),
            Entry {
                leaf: CertificateDer::from(b64(&c.leaf, &name)?),
                chain,
                key: PrivatePkcs8KeyDer::from(b64(&c.key, &name)?),
            },
        );
    }
    Ok(out)
}

impl Entry {
    /// From an issued chain (leaf first) and its key.
    pub fn new(
        mut chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, String> {
        let PrivateKeyDer::Pkcs8(key) = key else {
            return Err("the key is not PKCS#8".into());
        };
        if chain.is_empty() {
            return Err("an empty certificate chain".into());
        }
        let leaf = chain.remove(0);
        Ok(Self {
            leaf,
            chain: chain.into(),
            key,
        })
    }

    /// The full chain, leaf first, as a handshake sends it.
    pub fn full_chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.leaf.clone())
            .chain(self.chain.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, chain: &Arc<[CertificateDer<'static>]>) -> Entry {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Entry {
            leaf: leaf.der().clone(),
            chain: Arc::clone(chain),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    /// Names that fall in shard `s`.
    fn names_in(s: u8, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("shop{i}.test"))
            .filter(|name| shard_of(name) == s)
            .take(n)
            .collect()
    }

    #[test]
    fn a_shard_round_trips_and_keeps_each_chain_once() {
        let inter: Arc<[CertificateDer<'static>]> =
            vec![CertificateDer::from(vec![0x30, 1, 2])].into();
        let other: Arc<[CertificateDer<'static>]> = Arc::from(Vec::new());
        let names = names_in(7, 3);
        let entries = [
            entry(&names[0], &inter),
            entry(&names[1], &inter),
            entry(&names[2], &other),
        ];
        let bytes = encode(names.iter().map(String::as_str).zip(&entries));
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["chains"].as_array().unwrap().len(), 2, "{doc}");
        let back = decode(7, &bytes).unwrap();
        assert_eq!(back.len(), 3);
        for (name, e) in names.iter().zip(&entries) {
            let b = &back[name];
            assert_eq!(b.leaf, e.leaf);
            assert_eq!(b.chain[..], e.chain[..]);
            assert_eq!(b.key.secret_pkcs8_der(), e.key.secret_pkcs8_der());
        }
        assert!(
            Arc::ptr_eq(&back[&names[0]].chain, &back[&names[1]].chain),
            "shared again"
        );
    }

    #[test]
    fn a_malformed_shard_is_refused_whole() {
        let chain: Arc<[CertificateDer<'static>]> = Arc::from(Vec::new());
        let names = names_in(9, 1);
        let bytes = encode([(names[0].as_str(), &entry(&names[0], &chain))]);
        assert!(decode(10, &bytes).unwrap_err().contains("does not belong"));
        let text = String::from_utf8(bytes).unwrap();
        let bad_chain = text.replace("\"chain\":0", "\"chain\":5");
        assert!(decode(9, bad_chain.as_bytes())
            .unwrap_err()
            .contains("no chain"));
        assert!(decode(9, b"{}").is_err());
        assert!(decode(9, text.replace("\"leaf\":\"", "\"leaf\":\"!").as_bytes()).is_err());
        assert_eq!(of_key("certs/0a"), Some(10));
        assert_eq!(of_key("certs/0A"), None);
        assert_eq!(of_key("certs/100"), None);
        assert_eq!(of_key(&key(255)), Some(255));
    }
}
