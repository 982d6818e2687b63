//! The catalog: everything an appliance replicates, as items under keys,
//! each with a version, and digests that let two catalogs find where they
//! differ without listing everything.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Hash;

/// How many buckets the keys are spread over for anti-entropy.
pub const BUCKETS: usize = 256;

/// An item's version: a Lamport clock, and for equal clocks a tie-break
/// drawn from the value, so that two nodes that changed the same key
/// concurrently pick the same winner (the larger value hash).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub lamport: u64,
    pub tiebreak: u64,
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Value {
    /// A published site: its manifest (which names its blobs).
    Site { manifest: Hash },
    /// A document carried inline (the shared config).
    Doc { text: String },
    /// A document kept as a blob (a host-map shard).
    Blob { hash: Hash },
    /// A secret carried inline, only over the authenticated channel (the
    /// session-ticket key secret), hex.
    Secret { hex: String },
    /// The key was deleted (a tombstone, so the deletion replicates).
    Deleted,
}

impl Value {
    /// The value's canonical bytes (what its hash and tie-break cover).
    fn canonical(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The tie-break of a value: the first 8 bytes of its hash (for a
    /// site, of its manifest's: the larger manifest hash wins).
    pub fn tiebreak(&self) -> u64 {
        let h = match self {
            Self::Site { manifest } => *manifest.as_bytes(),
            other => *blake3::hash(&other.canonical()).as_bytes(),
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[..8]);
        u64::from_be_bytes(b)
    }

    /// The blob the value needs present before it can be applied (a site's
    /// manifest names more; see [`super::node::BlobIndex`]).
    pub fn root_blob(&self) -> Option<Hash> {
        match self {
            Self::Site { manifest } => Some(*manifest),
            Self::Blob { hash } => Some(*hash),
            _ => None,
        }
    }
}

/// One key with its version and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub key: String,
    pub version: Version,
    pub value: Value,
}

impl Item {
    /// The item's contribution to its bucket's digest.
    fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&(self.key.len() as u64).to_be_bytes());
        h.update(self.key.as_bytes());
        h.update(&self.version.lamport.to_be_bytes());
        h.update(&self.version.tiebreak.to_be_bytes());
        h.update(&self.value.canonical());
        *h.finalize().as_bytes()
    }
}

/// Which bucket a key is in.
pub fn bucket_of(key: &str) -> u8 {
    blake3::hash(key.as_bytes()).as_bytes()[0]
}

/// How an offered item compares with what the catalog has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Newer than ours (or we have none): worth taking.
    Newer,
    /// The very same.
    Same,
    /// Older than ours.
    Older,
}

/// The items, with a digest per bucket kept up to date as they change.
#[derive(Debug, Clone)]
pub struct Catalog {
    items: BTreeMap<String, Item>,
    /// The keys of each bucket, so that a bucket's summaries (asked for on
    /// every pull that found it different) do not scan every item.
    keys: Vec<BTreeSet<String>>,
    /// XOR of the item digests in each bucket: a change is two XORs.
    buckets: Vec<[u8; 32]>,
    /// The largest clock of any key seen (reported to peers, for their
    /// logs and metrics).
    clock: u64,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            keys: vec![BTreeSet::new(); BUCKETS],
            buckets: vec![[0; 32]; BUCKETS],
            clock: 0,
        }
    }
}

fn xor(into: &mut [u8; 32], d: &[u8; 32]) {
    for (a, b) in into.iter_mut().zip(d) {
        *a ^= b;
    }
}

impl Catalog {
    pub fn get(&self, key: &str) -> Option<&Item> {
        self.items.get(key)
    }

    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Takes in a clock value seen elsewhere (a peer's).
    pub fn observe(&mut self, lamport: u64) {
        self.clock = self.clock.max(lamport);
    }

    /// The version a local change of `key` to `value` takes: one after the
    /// key's clock (the item's here, or `seen`, a newer one on its way).
    /// The clock is per key: a key's changes are ordered, different keys'
    /// need not be, and a site's generations stay 1, 2, 3 on one appliance.
    pub fn next_version(&self, key: &str, value: &Value, seen: u64) -> Version {
        let mine = self.items.get(key).map_or(0, |i| i.version.lamport);
        Version {
            lamport: mine.max(seen) + 1,
            tiebreak: value.tiebreak(),
        }
    }

    /// A local change of `key` to `value`, at [`Catalog::next_version`].
    /// Nothing changes (and `None` is returned) if it already holds it.
    pub fn change(&mut self, key: &str, value: Value) -> Option<Item> {
        if self.items.get(key).is_some_and(|i| i.value == value) {
            return None;
        }
        let item = Item {
            key: key.to_owned(),
            version: self.next_version(key, &value, 0),
            value,
        };
        self.insert(item.clone());
        Some(item)
    }

    pub fn offer(&self, item: &Item) -> Offer {
        match self.items.get(&item.key) {
            None => Offer::Newer,
            Some(ours) if item.version > ours.version => Offer::Newer,
            Some(ours) if item.version == ours.version => Offer::Same,
            Some(_) => Offer::Older,
        }
    }

    /// Puts `item` in, replacing what the key held, and returns that.
    pub fn insert(&mut self, item: Item) -> Option<Item> {
        self.observe(item.version.lamport);
        let bucket = usize::from(bucket_of(&item.key));
        xor(&mut self.buckets[bucket], &item.digest());
        if !self.items.contains_key(&item.key) {
            self.keys[bucket].insert(item.key.clone());
        }
        let old = self.items.insert(item.key.clone(), item);
        if let Some(o) = &old {
            xor(&mut self.buckets[bucket], &o.digest());
        }
        old
    }

    /// One digest of everything: equal catalogs have equal roots.
    pub fn root(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        for b in &self.buckets {
            h.update(b);
        }
        h.finalize().into()
    }

    /// One bucket's digest.
    pub fn bucket(&self, bucket: u8) -> Hash {
        Hash::from_bytes(self.buckets[usize::from(bucket)])
    }

    /// Each bucket's digest.
    pub fn buckets(&self) -> Vec<Hash> {
        self.buckets.iter().map(|b| Hash::from_bytes(*b)).collect()
    }

    /// The keys and versions in `bucket`.
    pub fn summaries(&self, bucket: u8) -> Vec<(String, Version)> {
        self.keys[usize::from(bucket)]
            .iter()
            .filter_map(|k| self.items.get_key_value(k))
            .map(|(k, i)| (k.clone(), i.version))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(n: u8) -> Value {
        Value::Site {
            manifest: Hash::of(&[n]),
        }
    }

    #[test]
    fn changes_advance_their_key_and_same_values_do_nothing() {
        let mut c = Catalog::default();
        let a = c.change("site/a", site(1)).unwrap();
        assert_eq!(a.version.lamport, 1);
        assert!(c.change("site/a", site(1)).is_none(), "the same value");
        assert_eq!(c.change("site/a", site(2)).unwrap().version.lamport, 2);
        // Another key has its own clock; a newer one seen on its way counts.
        assert_eq!(c.change("site/b", site(2)).unwrap().version.lamport, 1);
        assert_eq!(c.next_version("site/b", &site(3), 41).lamport, 42);
        c.observe(50);
        assert_eq!(c.clock(), 50);
    }

    #[test]
    fn equal_catalogs_have_equal_roots_in_any_order() {
        let items: Vec<Item> = (0..50u8)
            .map(|n| Item {
                key: format!("site/s{n}"),
                version: Version {
                    lamport: u64::from(n),
                    tiebreak: site(n).tiebreak(),
                },
                value: site(n),
            })
            .collect();
        let mut a = Catalog::default();
        let mut b = Catalog::default();
        for i in &items {
            a.insert(i.clone());
        }
        for i in items.iter().rev() {
            b.insert(i.clone());
        }
        assert_eq!(a.root(), b.root());
        // Replacing an item and putting it back restores the digest.
        let before = a.root();
        let old = a.get("site/s7").unwrap().clone();
        let mut newer = old.clone();
        newer.version.lamport = 99;
        a.insert(newer);
        assert_ne!(a.root(), before);
        let bucket = bucket_of("site/s7");
        assert_ne!(
            a.buckets()[usize::from(bucket)],
            b.buckets()[usize::from(bucket)]
        );
        a.insert(old);
        assert_eq!(a.root(), before);
    }

    #[test]
    fn a_bucket_lists_each_of_its_keys_once_at_its_latest_version() {
        let mut c = Catalog::default();
        for round in 1..=3u8 {
            for n in 0..600u16 {
                c.change(&format!("site/s{n}"), site(round));
            }
        }
        let mut seen = 0;
        for b in 0..=u8::MAX {
            let listed = c.summaries(b);
            let scanned: Vec<(String, Version)> = c
                .items()
                .filter(|i| bucket_of(&i.key) == b)
                .map(|i| (i.key.clone(), i.version))
                .collect();
            assert_eq!(listed, scanned, "bucket {b}");
            assert!(listed.iter().all(|(_, v)| v.lamport == 3), "bucket {b}");
            seen += listed.len();
        }
        assert_eq!(seen, 600);
    }

    #[test]
    fn concurrent_changes_have_one_winner_everywhere() {
        // Two nodes at the same clock change the same key differently.
        let mut a = Catalog::default();
        let mut b = Catalog::default();
        let x = a.change("site/shop", site(1)).unwrap();
        let y = b.change("site/shop", site(2)).unwrap();
        assert_eq!(x.version.lamport, y.version.lamport);
        let winner = if x.version > y.version { &x } else { &y };
        // Each takes the other's; both end with the same item.
        if a.offer(&y) == Offer::Newer {
            a.insert(y.clone());
        }
        if b.offer(&x) == Offer::Newer {
            b.insert(x.clone());
        }
        assert_eq!(a.get("site/shop"), Some(winner));
        assert_eq!(b.get("site/shop"), Some(winner));
        assert_eq!(a.root(), b.root());
    }
}
