//! ACME Renewal Information (RFC 9773): a CA that offers it (its directory
//! has `renewalInfo`) says when each certificate should be renewed, a
//! window that may come earlier than two thirds of the lifetime (a mass
//! revocation) or later (the CA's load). Pure: the certificate's ID, the
//! answer parsed, the moment picked in the window, when to ask again.
#![forbid(unsafe_code)]

use serde::Deserialize;

use super::jws::b64;

/// How long to wait before asking again when the CA names no time, and the
/// bounds on what it may name (RFC 9773 4.3: between a minute and a day;
/// six hours when it says nothing).
pub const DEFAULT_POLL_MS: u64 = 6 * 3600 * 1000;
const MIN_POLL_MS: u64 = 60 * 1000;
const MAX_POLL_MS: u64 = 24 * 3600 * 1000;

/// The ARI certificate identifier: base64url of the leaf's Authority Key
/// Identifier, a dot, base64url of its serial number's DER content bytes.
pub fn cert_id(leaf_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der).ok()?;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        })?;
    Some(id_of(aki, cert.raw_serial()))
}

fn id_of(aki: &[u8], serial: &[u8]) -> String {
    format!("{}.{}", b64(aki), b64(serial))
}

/// A renewal window, Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    suggested_window: RawWindow,
}

#[derive(Deserialize)]
struct RawWindow {
    start: String,
    end: String,
}

/// The CA's answer; a window that ends before it starts is refused.
pub fn parse(body: &[u8]) -> Result<Window, String> {
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("not a renewal information answer: {e}"))?;
    let start = rfc3339_ms(&a.suggested_window.start)
        .ok_or_else(|| format!("bad start {:?}", a.suggested_window.start))?;
    let end = rfc3339_ms(&a.suggested_window.end)
        .ok_or_else(|| format!("bad end {:?}", a.suggested_window.end))?;
    if end <= start {
        return Err("the window ends before it starts".into());
    }
    Ok(Window {
        start_ms: start,
        end_ms: end,
    })
}

/// The moment to renew: uniformly in the window, by `random` (RFC 9773
/// 4.2: clients spread over the window rather than all at its start).
pub fn pick(w: Window, random: u64) -> u64 {
    w.start_ms + random % (w.end_ms - w.start_ms)
}

/// When to ask again, from the answer's `Retry-After` (seconds).
pub fn next_poll_ms(retry_after_s: Option<u64>) -> u64 {
    retry_after_s.map_or(DEFAULT_POLL_MS, |s| {
        s.saturating_mul(1000).clamp(MIN_POLL_MS, MAX_POLL_MS)
    })
}

/// `2025-01-02T04:00:00Z`, `…T04:00:00.123+02:00`: Unix milliseconds (none
/// before 1970).
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        ms = first3.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' || !matches!(rb[0], b'+' | b'-') {
                return None;
            }
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = crate::tls::validity::days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_id_is_rfc_9773s() {
        // RFC 9773 4.1's example: keyIdentifier 69:88:5B:…:C8:D4, serial
        // 00:87:65:43:21.
        let aki = [
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
            0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4,
        ];
        assert_eq!(
            id_of(&aki, &[0x00, 0x87, 0x65, 0x43, 0x21]),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
    }

    #[test]
    fn a_real_leafs_id_is_its_issuers_key_id_and_its_serial() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["shop.test".into()]).unwrap();
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[
            0x00, 0x87, 0x65, 0x43, 0x21,
        ]));
        leaf.use_authority_key_identifier_extension = true;
        let leaf = leaf.signed_by(&key, &issuer).unwrap();
        let (_, parsed_ca) = x509_parser::parse_x509_certificate(ca_cert.der()).unwrap();
        let ski = parsed_ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        let id = cert_id(leaf.der()).unwrap();
        assert_eq!(id, format!("{}.AIdlQyE", b64(&ski)));
        assert_eq!(cert_id(ca_cert.der()), None, "no AKI, no ID");
        assert_eq!(cert_id(b"junk"), None);
    }

    #[test]
    fn windows_are_parsed_and_picked_within() {
        let w = parse(br#"{"suggestedWindow": {"start": "2025-01-02T04:00:00Z", "end": "2025-01-03T04:00:00Z"}, "explanationURL": "https://ca/why"}"#).unwrap();
        assert_eq!(w.start_ms, 1_735_790_400_000);
        assert_eq!(w.end_ms - w.start_ms, 86_400_000);
        for r in [0, 1, 86_399_999, 86_400_000, u64::MAX] {
            let at = pick(w, r);
            assert!((w.start_ms..w.end_ms).contains(&at), "{r}: {at}");
        }
        assert!(parse(br#"{"suggestedWindow": {"start": "2025-01-03T04:00:00Z", "end": "2025-01-02T04:00:00Z"}}"#).is_err());
        assert!(parse(
            br#"{"suggestedWindow": {"start": "yesterday", "end": "2025-01-02T04:00:00Z"}}"#
        )
        .is_err());
        assert!(parse(b"{}").is_err());
    }

    #[test]
    fn rfc3339_with_fractions_and_offsets() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(rfc3339_ms("1970-01-01T02:00:00+02:00"), Some(0));
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00-00:30"), Some(1_800_000));
        assert_eq!(
            rfc3339_ms("2025-01-02T04:00:00.123456789Z"),
            Some(1_735_790_400_123)
        );
        for bad in [
            "2025-01-02 04:00:00Z",
            "2025-13-02T04:00:00Z",
            "2025-01-02T04:00:00",
            "2025-01-02T04:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2025-01-02T04:00:00+2:00",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn polls_follow_retry_after_within_a_minute_and_a_day() {
        assert_eq!(next_poll_ms(None), 6 * 3600 * 1000);
        assert_eq!(next_poll_ms(Some(5)), 60_000);
        assert_eq!(next_poll_ms(Some(7200)), 7_200_000);
        assert_eq!(next_poll_ms(Some(10 * 86_400)), 86_400_000);
    }
}
