//! TLS session tickets whose keys rotate and are shared by every core.
//!
//! One [`TicketKeys`] serves the whole process: a ticket issued on one core is
//! accepted on any other, so a client resumes wherever `SO_REUSEPORT` puts its
//! next connection. Cores read the key ring through `arc-swap` (no lock); the
//! control plane calls [`TicketKeys::rotate`] every rotation period. A ticket is
//! accepted while its key is current or previous, so for one to two periods.
//!
//! Format: `key name (16) || nonce (12) || AES-256-GCM(state) with the key name
//! as associated data`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const NAME_LEN: usize = 16;

struct TicketKey {
    name: [u8; NAME_LEN],
    key: RandomizedNonceKey,
}

impl TicketKey {
    fn generate(rng: &SystemRandom) -> Result<Self, TicketKeyError> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = [0u8; 32];
        rng.fill(&mut name).map_err(|_| TicketKeyError)?;
        rng.fill(&mut secret).map_err(|_| TicketKeyError)?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &secret).map_err(|_| TicketKeyError)?;
        Ok(Self { name, key })
    }
}

struct KeyRing {
    current: Arc<TicketKey>,
    previous: Option<Arc<TicketKey>>,
}

/// The system random generator failed while making a key.
#[derive(Debug, thiserror::Error)]
#[error("could not generate a session-ticket key: the system random generator failed")]
pub struct TicketKeyError;

/// The process-wide ticket keys; hand it to rustls as its ticketer.
pub struct TicketKeys {
    ring: ArcSwap<KeyRing>,
    rng: SystemRandom,
    lifetime_s: u32,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("lifetime_s", &self.lifetime_s)
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Fresh keys, rotated every `rotation_s` seconds by the caller.
    pub fn new(rotation_s: u64) -> Result<Arc<Self>, TicketKeyError> {
        let rng = SystemRandom::new();
        let ring = KeyRing {
            current: Arc::new(TicketKey::generate(&rng)?),
            previous: None,
        };
        let lifetime_s = u32::try_from(rotation_s.saturating_mul(2)).unwrap_or(u32::MAX);
        Ok(Arc::new(Self {
            ring: ArcSwap::from_pointee(ring),
            rng,
            lifetime_s,
        }))
    }

    /// Makes a new current key; the current one becomes the previous one and
    /// the previous one is forgotten (its tickets stop working).
    pub fn rotate(&self) -> Result<(), TicketKeyError> {
        let fresh = Arc::new(TicketKey::generate(&self.rng)?);
        let previous = Some(Arc::clone(&self.ring.load().current));
        self.ring.store(Arc::new(KeyRing {
            current: fresh,
            previous,
        }));
        Ok(())
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
            .chain(ring.previous.as_ref())
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

    #[test]
    fn a_ticket_survives_one_rotation_but_not_two() {
        let keys = TicketKeys::new(3600).unwrap();
        let ticket = keys.encrypt(b"session state").unwrap();
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
        keys.rotate().unwrap();
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
        let newer = keys.encrypt(b"newer").unwrap();
        keys.rotate().unwrap();
        assert_eq!(keys.decrypt(&ticket), None);
        assert_eq!(keys.decrypt(&newer).unwrap(), b"newer");
        assert_eq!(keys.lifetime(), 7200);
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
