//! Optional authentication of adverts between two edgeboxes (`failover.
//! auth_key`). VRRPv3 has none (RFC 5798 dropped v2's), so anyone on the
//! segment could take the addresses with a priority-254 advert, or keep a
//! backup from taking over by replaying the dead master's. With a key, each
//! advert carries a trailer after its addresses:
//!
//! ```text
//! | sequence (8 bytes, big-endian) | HMAC-SHA256, first 16 bytes |
//! ```
//!
//! The MAC covers a label, the IP source and destination, the VRRP message
//! and the sequence; the sequence (the sender's clock in microseconds, kept
//! increasing) must grow from one accepted advert of a sender to the next,
//! so a recorded advert cannot be played again. keepalived does not speak
//! this: interop runs without a key. Pure.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use aws_lc_rs::hmac;

/// The bytes an authenticated advert carries after its message.
pub const TRAILER: usize = 8 + MAC;
const MAC: usize = 16;
const LABEL: &[u8] = b"edgebox vrrp auth v1";

/// Why an advert failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too short to carry a trailer, or the MAC does not match.
    Mac,
    /// A sequence not above the last one accepted from its sender.
    Replayed,
}

fn tag(key: &hmac::Key, src: IpAddr, dst: IpAddr, msg: &[u8], seq: u64) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(LABEL);
    for a in [src, dst] {
        match a {
            IpAddr::V4(v4) => ctx.update(&v4.octets()),
            IpAddr::V6(v6) => ctx.update(&v6.octets()),
        }
    }
    ctx.update(msg);
    ctx.update(&seq.to_be_bytes());
    ctx.sign()
}

/// The key as used for the MAC.
pub fn key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// Appends the trailer for `seq` to `msg`, sent from `src` to `dst`.
pub fn seal(key: &hmac::Key, src: IpAddr, dst: IpAddr, msg: &mut Vec<u8>, seq: u64) {
    let t = tag(key, src, dst, msg, seq);
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(&t.as_ref()[..MAC]);
}

/// Checks `bytes` from `src` to `dst`; the message without its trailer and
/// the sequence. `last` is the last sequence accepted from `src`.
pub fn open<'a>(
    key: &hmac::Key,
    src: IpAddr,
    dst: IpAddr,
    bytes: &'a [u8],
    last: Option<u64>,
) -> Result<(&'a [u8], u64), Refused> {
    let Some(split) = bytes.len().checked_sub(TRAILER) else {
        return Err(Refused::Mac);
    };
    let (msg, trailer) = bytes.split_at(split);
    let (seq, mac) = trailer.split_at(8);
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| Refused::Mac)?);
    let want = tag(key, src, dst, msg, seq);
    // Constant-time comparison, as a MAC check must be.
    if aws_lc_rs::constant_time::verify_slices_are_equal(&want.as_ref()[..MAC], mac).is_err() {
        return Err(Refused::Mac);
    }
    if last.is_some_and(|l| seq <= l) {
        return Err(Refused::Replayed);
    }
    Ok((msg, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_advert_opens_once_and_nothing_else_does() {
        let k = key(b"a shared secret of the pair");
        let (src, dst): (IpAddr, IpAddr) =
            ("10.0.2.15".parse().unwrap(), "10.0.2.16".parse().unwrap());
        let msg = vec![0x31, 51, 150, 1, 0, 5, 0xab, 0xcd, 10, 0, 2, 100];
        let mut sealed = msg.clone();
        seal(&k, src, dst, &mut sealed, 1_000);
        assert_eq!(sealed.len(), msg.len() + TRAILER);
        assert_eq!(open(&k, src, dst, &sealed, None), Ok((&msg[..], 1_000)));
        assert_eq!(
            open(&k, src, dst, &sealed, Some(999)),
            Ok((&msg[..], 1_000))
        );
        // Played again: refused.
        assert_eq!(
            open(&k, src, dst, &sealed, Some(1_000)),
            Err(Refused::Replayed)
        );
        // Another key, sender, destination, any flipped bit, a cut trailer,
        // or no trailer at all (keepalived's adverts): refused.
        let other = key(b"another secret of another pair");
        assert_eq!(open(&other, src, dst, &sealed, None), Err(Refused::Mac));
        assert_eq!(open(&k, dst, src, &sealed, None), Err(Refused::Mac));
        assert_eq!(open(&k, src, src, &sealed, None), Err(Refused::Mac));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(
                open(&k, src, dst, &bad, None),
                Err(Refused::Mac),
                "bit flipped at {i}"
            );
        }
        assert_eq!(
            open(&k, src, dst, &sealed[..sealed.len() - 1], None),
            Err(Refused::Mac)
        );
        assert_eq!(open(&k, src, dst, &msg, None), Err(Refused::Mac));
        assert_eq!(open(&k, src, dst, &[], None), Err(Refused::Mac));
    }
}
