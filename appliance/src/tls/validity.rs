//! When a certificate stops being valid: its `notAfter`, read from the DER
//! (RFC 5280, 4.1.2.5) by walking just the few fields in front of it. The
//! handshake code (rustls, webpki) checks validity but does not expose it;
//! the metrics and alerts need it. Pure.
#![forbid(unsafe_code)]

/// One DER element: its tag, its contents, and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The certificate's `notAfter` as seconds since the Unix epoch.
pub fn not_after(cert_der: &[u8]) -> Option<i64> {
    validity(cert_der).map(|(_, after)| after)
}

/// The certificate's `notBefore` and `notAfter`, seconds since the epoch.
pub fn validity(cert_der: &[u8]) -> Option<(i64, i64)> {
    let (SEQUENCE, cert, _) = element(cert_der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] EXPLICIT version, when present.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (tag, before, after) = element(validity)?;
    let before = time_of(tag, before)?;
    let (tag, time, _) = element(after)?;
    Some((before, time_of(tag, time)?))
}

/// `YYMMDDHHMMSSZ` (UTCTime, 1950–2049) or `YYYYMMDDHHMMSSZ`.
fn time_of(tag: u8, t: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, rest) = match tag {
        UTC_TIME if t.len() == 13 => {
            let yy = digits(&t[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &t[2..])
        }
        GENERALIZED_TIME if t.len() == 15 => (digits(&t[..4])?, &t[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let f = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, hour, min, sec) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(time_of(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            time_of(GENERALIZED_TIME, b"20500101000000Z"),
            Some(2_524_608_000)
        );
        assert_eq!(time_of(UTC_TIME, b"991301000000Z"), None, "month 13");
        assert_eq!(time_of(UTC_TIME, b"9912010000Z"), None, "short");
    }

    #[test]
    fn a_generated_certificates_not_after_is_read() {
        let mut params = rcgen::CertificateParams::new(vec!["shop.test".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            not_after(cert.der()),
            Some(days_from_civil(2031, 7, 9) * 86_400)
        );
        assert_eq!(
            validity(cert.der()),
            Some((
                days_from_civil(2030, 1, 2) * 86_400,
                days_from_civil(2031, 7, 9) * 86_400
            ))
        );
        assert_eq!(not_after(&cert.der()[..40]), None, "cut short");
        assert_eq!(not_after(b"not DER"), None);
    }
}
