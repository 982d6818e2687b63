//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a TCP
//! balancer in front sends at the start of a connection to say whom the
//! connection is really from, and the one edgebox sends to backends that
//! want to know. Pure functions on bytes.
//!
//! Version 2 is what edgebox sends (binary, `PROXY` over TCP, or `LOCAL`
//! for its own health checks). Both versions are read, from the listeners'
//! trusted sources only.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's fixed signature.
const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// The longest header read: version 1's 107 bytes, or version 2's 16 plus
/// addresses and TLVs, which edgebox caps.
pub const MAX_HEADER: usize = 1_024;

/// A version 2 header saying the connection is from `source` to
/// `destination` (an IPv4 pair is sent as IPv4; a mixed pair as IPv6, with
/// IPv4 addresses mapped).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// A version 2 `LOCAL` header: the connection is the proxy's own (a
/// health check), with no client behind it.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// What a complete header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length: the connection's own bytes start after it.
    pub len: usize,
    /// The real client and the address it connected to; `None` for `LOCAL`
    /// (v2) or `UNKNOWN` (v1): the sender's own connection.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not the start of a header of either version.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A header, but not one this reads (version, command, family).
    #[error("unsupported PROXY header: {0}")]
    Unsupported(&'static str),
    /// A header whose fields make no sense.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// Longer than [`MAX_HEADER`].
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
}

/// Reads a header at the start of `buf`: `Ok(None)` while more bytes are
/// needed.
pub fn decode(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == SIGNATURE[0] {
        let n = buf.len().min(SIGNATURE.len());
        if buf[..n] != SIGNATURE[..n] {
            return Err(DecodeError::NotProxy);
        }
        return decode_v2(buf);
    }
    if buf[0] == b'P' {
        let n = buf.len().min(6);
        if buf[..n] != b"PROXY "[..n] {
            return Err(DecodeError::NotProxy);
        }
        return decode_v1(buf);
    }
    Err(DecodeError::NotProxy)
}

fn decode_v2(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(DecodeError::Unsupported("version"));
    }
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + length;
    if total > MAX_HEADER {
        return Err(DecodeError::TooLong);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    match version_command & 0x0f {
        0 => {
            return Ok(Some(Header {
                len: total,
                addresses: None,
            }))
        }
        1 => {}
        _ => return Err(DecodeError::Unsupported("command")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let addresses = match buf[13] {
        // TCP (or UDP) over IPv4.
        0x11 | 0x12 => {
            if body.len() < 12 {
                return Err(DecodeError::Malformed("IPv4 addresses cut short"));
            }
            let s = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let d = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            (
                SocketAddr::new(s.into(), port(&body[8..])),
                SocketAddr::new(d.into(), port(&body[10..])),
            )
        }
        0x21 | 0x22 => {
            if body.len() < 36 {
                return Err(DecodeError::Malformed("IPv6 addresses cut short"));
            }
            let ip = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[..16]);
                let v6 = Ipv6Addr::from(o);
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            };
            (
                SocketAddr::new(ip(&body[0..]), port(&body[32..])),
                SocketAddr::new(ip(&body[16..]), port(&body[34..])),
            )
        }
        // UNSPEC: no addresses given.
        0x00 => {
            return Ok(Some(Header {
                len: total,
                addresses: None,
            }))
        }
        _ => return Err(DecodeError::Unsupported("address family")),
    };
    Ok(Some(Header {
        len: total,
        addresses: Some(addresses),
    }))
}

fn decode_v1(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
    // "PROXY TCP4 src dst sport dport\r\n", at most 107 bytes.
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= 107 {
            Err(DecodeError::Malformed("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    if end + 2 > 107 {
        return Err(DecodeError::Malformed("longer than 107 bytes"));
    }
    let line =
        std::str::from_utf8(&buf[6..end]).map_err(|_| DecodeError::Malformed("not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.as_slice() {
        ["UNKNOWN", ..] => Ok(Some(Header {
            len,
            addresses: None,
        })),
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, DecodeError> {
                let ip: IpAddr = s.parse().map_err(|_| DecodeError::Malformed("address"))?;
                if ip.is_ipv4() != (*family == "TCP4") {
                    return Err(DecodeError::Malformed("address of the other family"));
                }
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, DecodeError> {
                if s.len() > 1 && s.starts_with('0') {
                    return Err(DecodeError::Malformed("port with a leading zero"));
                }
                s.parse().map_err(|_| DecodeError::Malformed("port"))
            };
            Ok(Some(Header {
                len,
                addresses: Some((
                    SocketAddr::new(ip(src)?, port(sport)?),
                    SocketAddr::new(ip(dst)?, port(dport)?),
                )),
            }))
        }
        _ => Err(DecodeError::Malformed("fields")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v2_round_trips_for_both_families() {
        for (s, d) in [
            ("203.0.113.7:51234", "10.0.2.15:443"),
            ("[2001:db8::7]:51234", "[2001:db8::1]:443"),
            ("203.0.113.7:1", "[2001:db8::1]:443"),
        ] {
            let h = encode_v2(sa(s), sa(d));
            let mut with_data = h.clone();
            with_data.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let got = decode(&with_data).unwrap().unwrap();
            assert_eq!(got.len, h.len());
            assert_eq!(got.addresses, Some((sa(s), sa(d))), "{s} → {d}");
        }
    }

    #[test]
    fn a_header_in_pieces_asks_for_more_at_every_cut() {
        let h = encode_v2(sa("192.0.2.1:1000"), sa("192.0.2.2:443"));
        for cut in 0..h.len() {
            assert_eq!(decode(&h[..cut]), Ok(None), "cut at {cut}");
        }
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 443\r\n";
        for cut in 0..v1.len() {
            assert_eq!(decode(&v1[..cut]), Ok(None), "v1 cut at {cut}");
        }
        assert_eq!(
            decode(v1).unwrap().unwrap().addresses,
            Some((sa("192.0.2.1:1000"), sa("192.0.2.2:443")))
        );
    }

    #[test]
    fn local_and_unknown_carry_no_addresses() {
        let local = encode_v2_local();
        assert_eq!(
            decode(&local),
            Ok(Some(Header {
                len: 16,
                addresses: None
            }))
        );
        let unknown = b"PROXY UNKNOWN\r\nGET";
        assert_eq!(decode(unknown).unwrap().unwrap().addresses, None);
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(DecodeError::NotProxy));
        assert_eq!(decode(b"\x16\x03\x01"), Err(DecodeError::NotProxy), "TLS");
        assert_eq!(decode(b"PRI * HTTP/2.0"), Err(DecodeError::NotProxy));
        let mut bad_version = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        bad_version[12] = 0x11;
        assert!(matches!(
            decode(&bad_version),
            Err(DecodeError::Unsupported(_))
        ));
        let mut huge = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        huge[14..16].copy_from_slice(&60_000u16.to_be_bytes());
        assert_eq!(decode(&huge), Err(DecodeError::TooLong));
        let mut short = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        short[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert!(matches!(decode(&short), Err(DecodeError::Malformed(_))));
        for v1 in [
            &b"PROXY TCP4 192.0.2.1 2001:db8::1 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1\r\n",
            b"PROXY TCP9 a b c d\r\n",
        ] {
            assert!(
                matches!(decode(v1), Err(DecodeError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(v1)
            );
        }
        assert!(decode(&[b'P'; 200]).is_err());
        assert!(decode(&[b"PROXY ".as_slice(), &[b'x'; 120]].concat()).is_err());
    }
}
