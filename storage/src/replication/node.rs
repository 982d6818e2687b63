//! One appliance's side of replication, as a state machine: no sockets, no
//! clock, no disk. The glue (the control plane's QUIC transport) feeds it
//! what arrives and carries out what it asks for:
//!
//! - [`Pull`]: a sync with one peer, request after response: the root
//!   digest, and where it differs, the bucket digests, the summaries of
//!   the differing buckets, and the items the peer has newer.
//! - [`Node::adopt`]: a newer item from a peer. An item that needs blobs
//!   (a site: its manifest, then every file the manifest names; a host-map
//!   shard) waits until they are all present; [`Node::poll_fetch`] says
//!   which blob to fetch from which peer next (from the offset already
//!   received, so a broken transfer resumes), [`Node::fetched`] takes the
//!   outcome (a blob that does not match its hash is refused and asked of
//!   another peer).
//! - [`Node::poll_event`]: an item whose blobs are all here is
//!   [`Event::Ready`]: the glue applies it (moves the site's ref, say) and
//!   calls [`Node::applied`]; only then is it in the catalog, served to
//!   others and counted in the digest. So no node ever serves, or offers, a
//!   site whose blobs it lacks.
//! - [`Node::serve`]: the answer to a peer's request.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::catalog::{bucket_of, Catalog, Item, Offer, Value, Version, BUCKETS};
use super::wire::{Request, Response, PROTOCOL};
use crate::Hash;

/// A peer, as the glue numbers them.
pub type PeerId = usize;

/// What the node needs to know of the blob store.
pub trait BlobIndex {
    /// Whether the whole, verified blob is here.
    fn has(&self, hash: &Hash) -> bool;
    /// How many bytes of it a broken transfer left (to resume from).
    fn partial(&self, hash: &Hash) -> u64;
    /// The blobs a manifest that is here names; `None` if it is not a valid
    /// manifest.
    fn manifest_blobs(&self, manifest: &Hash) -> Option<Vec<Hash>>;
}

/// Why a sync with a peer stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The peer answered something that does not fit the request.
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    /// The peer refused the request.
    #[error("the peer refused: {0}")]
    Refused(String),
}

/// What a sync step asks for next.
#[derive(Debug, Default)]
pub struct Next {
    /// The next request to send, or `None`: the sync is done.
    pub request: Option<Request>,
    /// Items the peer has newer than ours, to [`Node::adopt`].
    pub items: Vec<Item>,
}

/// Items asked for in one request at most.
const ITEMS_PER_REQUEST: usize = 256;
/// Buckets asked for in one request at most.
const BUCKETS_PER_REQUEST: usize = 32;

/// A pull from one peer: which of its items are newer than ours.
#[derive(Debug)]
pub struct Pull {
    asked: Option<Request>,
    buckets: VecDeque<u8>,
    keys: VecDeque<(String, Version)>,
    /// Only keys this takes are asked for.
    wanted: fn(&str) -> bool,
    glimpse: Glimpse,
    done: bool,
}

/// What a finished [`Pull`] showed of the peer's catalog, kept to tell an
/// operator which generation of a site the peer has: of each bucket that
/// differed from ours, every key and version; every other bucket held what
/// ours held then.
#[derive(Debug, Clone, Default)]
pub struct Glimpse {
    /// Our bucket digests when the peer's were compared with them.
    ours: Vec<Hash>,
    differing: BTreeSet<u8>,
    theirs: BTreeMap<String, Version>,
}

/// A key on a peer, as far as the last pull showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Has(Version),
    /// Neither an item nor a tombstone.
    Lacks,
    /// Our bucket of the key changed since the pull: wait for the next.
    Unknown,
}

impl Glimpse {
    /// Our catalog is about to change in `bucket`: if the peer's bucket was
    /// the same as ours, keep what that was.
    fn freeze(&mut self, bucket: u8, ours: &Catalog) {
        if self.differing.contains(&bucket)
            || self.ours.get(usize::from(bucket)) != Some(&ours.bucket(bucket))
        {
            return;
        }
        self.theirs.extend(ours.summaries(bucket));
        self.differing.insert(bucket);
    }

    /// What the peer has of `key`, judged against our catalog now.
    pub fn seen(&self, key: &str, ours: &Catalog) -> Seen {
        let bucket = bucket_of(key);
        if self.differing.contains(&bucket) {
            return self.theirs.get(key).map_or(Seen::Lacks, |v| Seen::Has(*v));
        }
        if self.ours.get(usize::from(bucket)) != Some(&ours.bucket(bucket)) {
            return Seen::Unknown;
        }
        ours.get(key).map_or(Seen::Lacks, |i| Seen::Has(i.version))
    }
}

impl Pull {
    /// A pull and its first request.
    pub fn start() -> (Self, Request) {
        Self::start_with(|_| true)
    }

    /// A pull of only the keys `wanted` takes (a node that replicates sites
    /// but not config, say).
    pub fn start_with(wanted: fn(&str) -> bool) -> (Self, Request) {
        let first = Request::Digest { protocol: PROTOCOL };
        (
            Self {
                asked: Some(first.clone()),
                buckets: VecDeque::new(),
                keys: VecDeque::new(),
                wanted,
                glimpse: Glimpse::default(),
                done: false,
            },
            first,
        )
    }

    /// What the peer's catalog looked like, once the pull is done.
    pub fn glimpse(&self) -> Option<&Glimpse> {
        self.done.then_some(&self.glimpse)
    }

    /// Takes the answer to the last request; says what to ask next and
    /// which items to adopt.
    pub fn handle(&mut self, response: Response, ours: &Catalog) -> Result<Next, SyncError> {
        let asked = self
            .asked
            .take()
            .ok_or_else(|| SyncError::Protocol("an answer to nothing".into()))?;
        let mut next = Next::default();
        match (asked, response) {
            (_, Response::Error { message }) => return Err(SyncError::Refused(message)),
            (Request::Digest { .. }, Response::Digest { root, .. }) => {
                if root == ours.root() {
                    self.glimpse.ours = ours.buckets();
                    self.done = true;
                    return Ok(next);
                }
                next.request = Some(Request::Buckets { protocol: PROTOCOL });
            }
            (Request::Buckets { .. }, Response::Buckets { digests }) => {
                if digests.len() != BUCKETS {
                    return Err(SyncError::Protocol(format!(
                        "{} bucket digests, not {BUCKETS}",
                        digests.len()
                    )));
                }
                let mine = ours.buckets();
                self.buckets = (0..BUCKETS)
                    .filter(|&i| digests[i] != mine[i])
                    .map(|i| i as u8)
                    .collect();
                self.glimpse.differing = self.buckets.iter().copied().collect();
                self.glimpse.ours = mine;
            }
            (Request::Summaries { buckets, .. }, Response::Summaries { items }) => {
                for (key, version) in items {
                    if !buckets.contains(&bucket_of(&key)) {
                        return Err(SyncError::Protocol(format!(
                            "{key} is not in the buckets asked for"
                        )));
                    }
                    let probe = Item {
                        key: key.clone(),
                        version,
                        value: Value::Deleted,
                    };
                    self.glimpse.theirs.insert(key.clone(), version);
                    if (self.wanted)(&key) && ours.offer(&probe) == Offer::Newer {
                        self.keys.push_back((key, version));
                    }
                }
            }
            (Request::Items { keys, .. }, Response::Items { items }) => {
                for item in items {
                    if !keys.contains(&item.key) {
                        return Err(SyncError::Protocol(format!(
                            "{} was not asked for",
                            item.key
                        )));
                    }
                    if item.version.tiebreak != item.value.tiebreak() {
                        return Err(SyncError::Protocol(format!(
                            "{}: its version does not fit its value",
                            item.key
                        )));
                    }
                    next.items.push(item);
                }
            }
            (asked, got) => {
                return Err(SyncError::Protocol(format!(
                    "asked {asked:?}, got {}",
                    kind(&got)
                )))
            }
        }
        if next.request.is_none() {
            next.request = self.next_request();
        }
        self.done = next.request.is_none();
        self.asked.clone_from(&next.request);
        Ok(next)
    }

    fn next_request(&mut self) -> Option<Request> {
        if !self.keys.is_empty() {
            let n = self.keys.len().min(ITEMS_PER_REQUEST);
            let keys = self.keys.drain(..n).map(|(k, _)| k).collect();
            return Some(Request::Items {
                protocol: PROTOCOL,
                keys,
            });
        }
        if !self.buckets.is_empty() {
            let n = self.buckets.len().min(BUCKETS_PER_REQUEST);
            let buckets = self.buckets.drain(..n).collect();
            return Some(Request::Summaries {
                protocol: PROTOCOL,
                buckets,
            });
        }
        None
    }
}

fn kind(r: &Response) -> &'static str {
    match r {
        Response::Digest { .. } => "a digest",
        Response::Buckets { .. } => "bucket digests",
        Response::Summaries { .. } => "summaries",
        Response::Items { .. } => "items",
        Response::Blob { .. } => "a blob",
        Response::Error { .. } => "an error",
    }
}

/// One blob to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub peer: PeerId,
    pub hash: Hash,
    /// Bytes already here: ask for the rest.
    pub offset: u64,
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Whole and verified; it is in the store.
    Done,
    /// Whole, but its bytes do not hash to its name: refused.
    Corrupt,
    /// Broken off, refused or timed out; what arrived is kept for resuming.
    Failed,
}

/// What the glue must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Every blob of this item is here: apply it, then call
    /// [`Node::applied`] (or [`Node::apply_failed`]).
    Ready(Item),
    /// Two changes of one key had the same clock: `winner` replaced
    /// `loser` (the same on every node).
    Conflict {
        key: String,
        winner: Version,
        loser: Version,
    },
    /// `peer` sent a blob that does not match its hash.
    Corrupt { peer: PeerId, hash: Hash },
}

/// An adopted item waiting for its blobs.
#[derive(Debug, Clone)]
struct Pending {
    item: Item,
    /// Peers that offered it (they have its blobs).
    sources: BTreeSet<PeerId>,
}

/// Limits on fetching.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Blobs in flight from one peer at most.
    pub fetches_per_peer: usize,
    /// A peer that failed a blob is not asked for it again before this.
    pub retry_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fetches_per_peer: 4,
            retry_ms: 1_000,
        }
    }
}

/// One appliance's replication state.
#[derive(Debug, Default)]
pub struct Node {
    pub catalog: Catalog,
    pending: BTreeMap<String, Pending>,
    /// Blob → the peer it is being fetched from.
    inflight: BTreeMap<Hash, PeerId>,
    /// (blob, peer) → not before this time.
    backoff: BTreeMap<(Hash, PeerId), u64>,
    events: VecDeque<Event>,
    limits: Limits,
    /// Blobs of items applied here that were lost (found corrupt), to fetch
    /// again, with the peers to ask.
    repairs: BTreeMap<Hash, BTreeSet<PeerId>>,
    /// What the last finished pull from each peer showed of its catalog.
    glimpses: BTreeMap<PeerId, Glimpse>,
}

impl Node {
    pub fn new(catalog: Catalog, limits: Limits) -> Self {
        Self {
            catalog,
            limits,
            ..Self::default()
        }
    }

    /// New limits from now on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The item a change made here (a publish, a config change) would be:
    /// later than the key's version here and than one on its way. `None`
    /// if the key holds `value` already. Nothing changes until
    /// [`Node::commit`], once the glue has made the change durable.
    pub fn propose(&self, key: &str, value: Value) -> Option<Item> {
        if self.catalog.get(key).is_some_and(|i| i.value == value) {
            return None;
        }
        let seen = self.pending.get(key).map_or(0, |p| p.item.version.lamport);
        Some(Item {
            key: key.to_owned(),
            version: self.catalog.next_version(key, &value, seen),
            value,
        })
    }

    /// A proposed local change is made (its blobs are in the store): it
    /// joins the catalog, superseding whatever was on its way for the key.
    pub fn commit(&mut self, item: Item) {
        if self
            .pending
            .get(&item.key)
            .is_some_and(|p| p.item.version < item.version)
        {
            self.pending.remove(&item.key);
        }
        if self.catalog.offer(&item) == Offer::Newer {
            self.insert(item);
        }
    }

    /// Puts `item` in the catalog; what the peers were last seen to have
    /// stays known.
    fn insert(&mut self, item: Item) -> Option<Item> {
        let bucket = bucket_of(&item.key);
        for g in self.glimpses.values_mut() {
            g.freeze(bucket, &self.catalog);
        }
        self.catalog.insert(item)
    }

    /// A pull from `peer` finished: what it showed of the peer's catalog.
    pub fn synced(&mut self, peer: PeerId, glimpse: Glimpse) {
        self.glimpses.insert(peer, glimpse);
    }

    /// What `peer` has of `key`, as its last finished pull showed (kept
    /// while the peer is away: a stopped peer shows what it had).
    pub fn seen(&self, peer: PeerId, key: &str) -> Seen {
        self.glimpses
            .get(&peer)
            .map_or(Seen::Unknown, |g| g.seen(key, &self.catalog))
    }

    /// [`Node::propose`] and [`Node::commit`] at once. The item to
    /// announce, if anything changed.
    pub fn local(&mut self, key: &str, value: Value) -> Option<Item> {
        let item = self.propose(key, value)?;
        self.commit(item.clone());
        Some(item)
    }

    /// A newer item from `peer` (out of a [`Pull`]).
    pub fn adopt(&mut self, item: Item, peer: PeerId) {
        self.catalog.observe(item.version.lamport);
        if self.catalog.offer(&item) != Offer::Newer {
            return;
        }
        match self.pending.get_mut(&item.key) {
            Some(p) if p.item.version == item.version => {
                p.sources.insert(peer);
            }
            Some(p) if p.item.version > item.version => {}
            _ => {
                self.pending.insert(
                    item.key.clone(),
                    Pending {
                        item,
                        sources: BTreeSet::from([peer]),
                    },
                );
            }
        }
    }

    /// The blobs `item` needs that are not here; `None` while its manifest
    /// (which says what else it needs) is itself missing.
    fn missing(item: &Item, blobs: &dyn BlobIndex) -> Option<Vec<Hash>> {
        let Some(root) = item.value.root_blob() else {
            return Some(Vec::new());
        };
        if !blobs.has(&root) {
            return None;
        }
        match &item.value {
            Value::Site { manifest } => {
                let names = blobs.manifest_blobs(manifest)?;
                Some(names.into_iter().filter(|h| !blobs.has(h)).collect())
            }
            _ => Some(Vec::new()),
        }
    }

    /// A blob that was here is lost (found corrupt and put aside): fetch it
    /// again from one of `peers`.
    pub fn repair(&mut self, hash: Hash, peers: impl IntoIterator<Item = PeerId>) {
        self.repairs.entry(hash).or_default().extend(peers);
    }

    /// Blobs waiting to be repaired.
    pub fn repairs(&self) -> usize {
        self.repairs.len()
    }

    /// The next blob to fetch, and from whom; `None` when nothing more may
    /// start now.
    pub fn poll_fetch(&mut self, now_ms: u64, blobs: &dyn BlobIndex) -> Option<Fetch> {
        let mut busy: BTreeMap<PeerId, usize> = BTreeMap::new();
        for p in self.inflight.values() {
            *busy.entry(*p).or_default() += 1;
        }
        self.repairs
            .retain(|h, peers| !blobs.has(h) && !peers.is_empty());
        let wanted = self.pending.values().flat_map(|pending| {
            let hashes: Vec<Hash> = match Self::missing(&pending.item, blobs) {
                None => pending.item.value.root_blob().into_iter().collect(),
                Some(m) => m,
            };
            hashes.into_iter().map(move |h| (h, &pending.sources))
        });
        let repairs = self.repairs.iter().map(|(h, peers)| (*h, peers));
        let mut chosen = None;
        for (hash, sources) in wanted.chain(repairs) {
            if self.inflight.contains_key(&hash) {
                continue;
            }
            let peer = sources.iter().copied().find(|p| {
                busy.get(p).copied().unwrap_or(0) < self.limits.fetches_per_peer
                    && self.backoff.get(&(hash, *p)).is_none_or(|&t| now_ms >= t)
            });
            if let Some(peer) = peer {
                chosen = Some((hash, peer));
                break;
            }
        }
        let (hash, peer) = chosen?;
        self.inflight.insert(hash, peer);
        Some(Fetch {
            peer,
            hash,
            offset: blobs.partial(&hash),
        })
    }

    /// The outcome of a [`Fetch`].
    pub fn fetched(&mut self, fetch: Fetch, outcome: Fetched, now_ms: u64) {
        if self.inflight.get(&fetch.hash) == Some(&fetch.peer) {
            self.inflight.remove(&fetch.hash);
        }
        match outcome {
            Fetched::Done => {
                self.backoff.retain(|(h, _), _| *h != fetch.hash);
                self.repairs.remove(&fetch.hash);
            }
            Fetched::Corrupt => {
                self.events.push_back(Event::Corrupt {
                    peer: fetch.peer,
                    hash: fetch.hash,
                });
                self.backoff
                    .insert((fetch.hash, fetch.peer), now_ms + 10 * self.limits.retry_ms);
            }
            Fetched::Failed => {
                self.backoff
                    .insert((fetch.hash, fetch.peer), now_ms + self.limits.retry_ms);
            }
        }
    }

    /// A peer is gone: its fetches have failed, and it is no source.
    pub fn peer_lost(&mut self, peer: PeerId) {
        self.inflight.retain(|_, p| *p != peer);
        for p in self.pending.values_mut() {
            p.sources.remove(&peer);
        }
        self.pending.retain(|_, p| !p.sources.is_empty());
        for peers in self.repairs.values_mut() {
            peers.remove(&peer);
        }
    }

    /// The next thing for the glue to act on.
    pub fn poll_event(&mut self, blobs: &dyn BlobIndex) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        let ready = self
            .pending
            .iter()
            .find(|(_, p)| Self::missing(&p.item, blobs).is_some_and(|m| m.is_empty()))
            .map(|(k, _)| k.clone())?;
        let p = self.pending.remove(&ready)?;
        Some(Event::Ready(p.item))
    }

    /// The glue applied `item` (it serves it now): it joins the catalog.
    pub fn applied(&mut self, item: Item) {
        if self.catalog.offer(&item) != Offer::Newer {
            return;
        }
        if let Some(old) = self.insert(item.clone()) {
            if old.version.lamport == item.version.lamport && old.value != item.value {
                self.events.push_back(Event::Conflict {
                    key: item.key,
                    winner: item.version,
                    loser: old.version,
                });
            }
        }
    }

    /// The glue could not apply `item` (disk full, invalid here): it is
    /// dropped, to be offered again by the next sync.
    pub fn apply_failed(&mut self, item: &Item) {
        self.pending.remove(&item.key);
    }

    /// Items waiting for blobs.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The items waiting for blobs, each with the peers that offered it.
    pub fn pending_items(&self) -> impl Iterator<Item = (&Item, &BTreeSet<PeerId>)> {
        self.pending.values().map(|p| (&p.item, &p.sources))
    }

    /// Every blob an item on its way needs, as far as known: garbage
    /// collection keeps them.
    pub fn protected(&self, blobs: &dyn BlobIndex) -> Vec<Hash> {
        let mut out: Vec<Hash> = self.repairs.keys().copied().collect();
        for p in self.pending.values() {
            if let Some(root) = p.item.value.root_blob() {
                out.push(root);
                if let Value::Site { manifest } = &p.item.value {
                    out.extend(blobs.manifest_blobs(manifest).unwrap_or_default());
                }
            }
        }
        out
    }

    /// The answer to a peer's request (a blob's bytes are the glue's to
    /// stream after the `Blob` answer).
    pub fn serve(
        &self,
        request: &Request,
        blobs: &dyn BlobIndex,
        size: &dyn Fn(&Hash) -> Option<u64>,
    ) -> Response {
        if request.protocol() != PROTOCOL {
            return Response::Error {
                message: format!(
                    "protocol {}; this node speaks {PROTOCOL}",
                    request.protocol()
                ),
            };
        }
        match request {
            Request::Digest { .. } => Response::Digest {
                root: self.catalog.root(),
                clock: self.catalog.clock(),
            },
            Request::Buckets { .. } => Response::Buckets {
                digests: self.catalog.buckets(),
            },
            Request::Summaries { buckets, .. } => Response::Summaries {
                items: buckets
                    .iter()
                    .take(BUCKETS)
                    .flat_map(|b| self.catalog.summaries(*b))
                    .collect(),
            },
            Request::Items { keys, .. } => Response::Items {
                items: keys
                    .iter()
                    .take(ITEMS_PER_REQUEST)
                    .filter_map(|k| self.catalog.get(k).cloned())
                    .collect(),
            },
            Request::Blob { hash, offset, .. } => match size(hash) {
                Some(total) if blobs.has(hash) && *offset <= total => Response::Blob {
                    size: total - offset,
                    total,
                },
                _ => Response::Error {
                    message: format!("no blob {hash} here"),
                },
            },
        }
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod sim_tests;
