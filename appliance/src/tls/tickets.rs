//! TLS session tickets whose keys rotate and are shared by every core, and
//! by every appliance that shares the secret.
//!
//! One [`TicketKeys`] serves the whole process: a ticket issued on one core is
//! accepted on any other, so a client resumes wherever `SO_REUSEPORT` puts its
//! next connection. Cores read the key ring through `arc-swap` (no lock).
//!
//! The keys are derived from a 32-byte secret and the time: the key of
//! period `e` (the Unix time divided by the rotation period) is
//! HKDF-SHA256(secret, period). Appliances given the same secret (it
//! replicates between peers, `docs/replication.md`) make the same keys at
//! the same time, so a ticket issued by one resumes on the other after a
//! failover. A ticket is issued under the current period's key and accepted
//! under the current, previous and next one (the next: a peer whose clock
//! is a little ahead), so for one to two periods. When the secret changes,
//! tickets of the old secret keep opening for their one to two periods. The control plane calls [`TicketKeys::tick`] every
//! second; it does work only when a period begins.
//!
//! Format: `key name (16) || nonce (12) || AES-256-GCM(state) with the key name
//! as associated data`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const NAME_LEN: usize = 16;

/// A ticket-key secret.
pub type Secret = [u8; 32];

struct TicketKey {
    name: [u8; NAME_LEN],
    key: RandomizedNonceKey,
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        NAME_LEN + 32
    }
}

impl TicketKey {
    /// The key of period `epoch` under `secret`.
    fn derive(secret: &Secret, rotation_s: u64, epoch: u64) -> Result<Self, TicketKeyError> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"edgebox session-ticket keys");
        let info = [
            b"period".as_slice(),
            &rotation_s.to_be_bytes(),
            &epoch.to_be_bytes(),
        ];
        let mut out = [0u8; NAME_LEN + 32];
        salt.extract(secret)
            .expand(&info, KeyLen)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| TicketKeyError)?;
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&out[..NAME_LEN]);
        let key =
            RandomizedNonceKey::new(&AES_256_GCM, &out[NAME_LEN..]).map_err(|_| TicketKeyError)?;
        Ok(Self { name, key })
    }
}

struct KeyRing {
    epoch: u64,
    /// Tickets are sealed with this one.
    current: Arc<TicketKey>,
    /// And opened with any of these too.
    others: Vec<Arc<TicketKey>>,
}

/// The key material could not be made.
#[derive(Debug, thiserror::Error)]
#[error("could not make a session-ticket key: the system random generator or HKDF failed")]
pub struct TicketKeyError;

/// The secret and what the ring was made from.
struct Source {
    secret: Secret,
    /// The secret before the last change, until its period ends.
    retiring: Option<(Secret, u64)>,
}

/// The process-wide ticket keys; hand it to rustls as its ticketer.
pub struct TicketKeys {
    ring: ArcSwap<KeyRing>,
    source: Mutex<Source>,
    rotation_s: u64,
    lifetime_s: u32,
    /// Seconds of the Unix time at the last tick (tests move it by hand).
    now_s: AtomicU64,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("lifetime_s", &self.lifetime_s)
            .finish_non_exhaustive()
    }
}

/// A fresh random secret.
pub fn random_secret() -> Result<Secret, TicketKeyError> {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| TicketKeyError)?;
    Ok(secret)
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TicketKeys {
    /// Keys from a fresh random secret (until [`TicketKeys::set_secret`]),
    /// a new one every `rotation_s` seconds.
    pub fn new(rotation_s: u64) -> Result<Arc<Self>, TicketKeyError> {
        Self::with_secret(random_secret()?, rotation_s, unix_s())
    }

    /// Keys from `secret` at Unix time `now_s`.
    pub fn with_secret(
        secret: Secret,
        rotation_s: u64,
        now_s: u64,
    ) -> Result<Arc<Self>, TicketKeyError> {
        let rotation_s = rotation_s.max(1);
        let source = Source {
            secret,
            retiring: None,
        };
        let ring = Self::ring(&source, rotation_s, now_s / rotation_s)?;
        let lifetime_s = u32::try_from(rotation_s.saturating_mul(2)).unwrap_or(u32::MAX);
        Ok(Arc::new(Self {
            ring: ArcSwap::from_pointee(ring),
            source: Mutex::new(source),
            rotation_s,
            lifetime_s,
            now_s: AtomicU64::new(now_s),
        }))
    }

    fn ring(source: &Source, rotation_s: u64, epoch: u64) -> Result<KeyRing, TicketKeyError> {
        let key = |secret: &Secret, e: u64| TicketKey::derive(secret, rotation_s, e).map(Arc::new);
        let mut others = vec![
            key(&source.secret, epoch.saturating_sub(1))?,
            key(&source.secret, epoch + 1)?,
        ];
        if let Some((old, until)) = &source.retiring {
            // The old secret's tickets of its last period keep their one to
            // two periods.
            if epoch <= until + 1 {
                others.push(key(old, epoch)?);
                others.push(key(old, epoch.saturating_sub(1))?);
            }
        }
        Ok(KeyRing {
            epoch,
            current: key(&source.secret, epoch)?,
            others,
        })
    }

    fn rebuild(&self, source: &Source, now_s: u64) -> Result<(), TicketKeyError> {
        let ring = Self::ring(source, self.rotation_s, now_s / self.rotation_s)?;
        self.ring.store(Arc::new(ring));
        Ok(())
    }

    /// The time is now `now_s` (Unix seconds): a new period makes a new
    /// current key.
    pub fn tick(&self, now_s: u64) -> Result<(), TicketKeyError> {
        self.now_s.store(now_s, Ordering::Relaxed);
        if now_s / self.rotation_s == self.ring.load().epoch {
            return Ok(());
        }
        let source = self.source.lock().unwrap_or_else(|e| e.into_inner());
        self.rebuild(&source, now_s)
    }

    /// [`TicketKeys::tick`] with the system clock.
    pub fn tick_now(&self) -> Result<(), TicketKeyError> {
        self.tick(unix_s())
    }

    /// Derives the keys from `secret` from now on; tickets of the old
    /// secret keep opening for their one to two periods.
    pub fn set_secret(&self, secret: Secret) -> Result<(), TicketKeyError> {
        let mut source = self.source.lock().unwrap_or_else(|e| e.into_inner());
        if source.secret == secret {
            return Ok(());
        }
        let now_s = self.now_s.load(Ordering::Relaxed);
        let old = std::mem::replace(&mut source.secret, secret);
        source.retiring = Some((old, now_s / self.rotation_s));
        self.rebuild(&source, now_s)
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let ring = self.ring.load();
        let key = &ring.current;
        let mut sealed = plain.to_vec();
        let nonce = key
            .key
            .seal_in_place_append_tag(Aad::from(&key.name), &mut sealed)
            .ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(&key.name);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let ring = self.ring.load();
        let key = std::iter::once(&ring.current)
            .chain(&ring.others)
            .find(|k| k.name.as_slice() == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .key
            .open_in_place(nonce, Aad::from(&key.name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    const SECRET: Secret = [7; 32];

    #[test]
    fn a_ticket_opens_for_one_to_two_periods() {
        let keys = TicketKeys::with_secret(SECRET, 3600, 10 * 3600).unwrap();
        let ticket = keys.encrypt(b"session state").unwrap();
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
        keys.tick(10 * 3600 + 3599).unwrap();
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
        keys.tick(11 * 3600).unwrap();
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state", "previous");
        let newer = keys.encrypt(b"newer").unwrap();
        keys.tick(12 * 3600).unwrap();
        assert_eq!(keys.decrypt(&ticket), None, "two periods on");
        assert_eq!(keys.decrypt(&newer).unwrap(), b"newer");
        assert_eq!(keys.lifetime(), 7200);
    }

    #[test]
    fn appliances_with_one_secret_open_each_others_tickets() {
        let a = TicketKeys::with_secret(SECRET, 60, 6_000).unwrap();
        // B's clock is 30 s behind, in the previous period.
        let b = TicketKeys::with_secret(SECRET, 60, 5_970).unwrap();
        let from_a = a.encrypt(b"a's session").unwrap();
        let from_b = b.encrypt(b"b's session").unwrap();
        assert_eq!(
            b.decrypt(&from_a).unwrap(),
            b"a's session",
            "the next period's key"
        );
        assert_eq!(a.decrypt(&from_b).unwrap(), b"b's session");
        let c = TicketKeys::with_secret([8; 32], 60, 6_000).unwrap();
        assert_eq!(c.decrypt(&from_a), None, "another secret");
    }

    #[test]
    fn a_new_secret_still_opens_the_old_ones_tickets_until_the_next_period() {
        let keys = TicketKeys::with_secret(SECRET, 60, 6_000).unwrap();
        let old = keys.encrypt(b"old").unwrap();
        keys.set_secret([9; 32]).unwrap();
        let new = keys.encrypt(b"new").unwrap();
        assert_eq!(keys.decrypt(&old).unwrap(), b"old");
        let peer = TicketKeys::with_secret([9; 32], 60, 6_000).unwrap();
        assert_eq!(
            peer.decrypt(&new).unwrap(),
            b"new",
            "issued under the new one"
        );
        keys.tick(6_060).unwrap();
        assert_eq!(keys.decrypt(&old).unwrap(), b"old", "the previous period's");
        assert_eq!(keys.decrypt(&new).unwrap(), b"new");
        keys.tick(6_120).unwrap();
        assert_eq!(keys.decrypt(&old), None);
    }

    #[test]
    fn tampered_truncated_or_foreign_tickets_are_refused() {
        let keys = TicketKeys::new(60).unwrap();
        let other = TicketKeys::new(60).unwrap();
        let ticket = keys.encrypt(b"state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(keys.decrypt(&bad), None, "flipped byte {i}");
        }
        assert_eq!(keys.decrypt(&ticket[..ticket.len() - 1]), None);
        assert_eq!(keys.decrypt(&ticket[..10]), None);
        assert_eq!(keys.decrypt(&[]), None);
        assert_eq!(other.decrypt(&ticket), None);
    }

    #[test]
    fn tickets_are_randomised() {
        let keys = TicketKeys::new(60).unwrap();
        assert_ne!(
            keys.encrypt(b"same").unwrap(),
            keys.encrypt(b"same").unwrap()
        );
    }
}
