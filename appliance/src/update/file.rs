//! The update file: a short text header, then the unified kernel image.
//!
//! ```text
//! EDGEBOX-UPDATE 1
//! version 0.1.0
//! data-format 1
//! size 20873216
//! sha256 5d41402abc4b2a76b9719d911017c592…
//! signature 9f2c…                     (absent in an unsigned update)
//!
//! <size bytes: the unified kernel image>
//! ```
//!
//! The Ed25519 signature covers the header up to and including the
//! `sha256` line, so it binds the version, the data format the update
//! writes ([`super::DATA_FORMAT`] of its build), the size and the payload's
//! digest. [`Verifier`] is sans-IO: it is fed the upload as it arrives,
//! refuses an untrusted header before a byte of payload is passed on, and
//! its [`Verifier::finish`] says whether what was passed on may be
//! installed.
#![forbid(unsafe_code)]

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// The first line of every update file.
pub const MAGIC: &str = "EDGEBOX-UPDATE 1\n";
/// The longest header accepted.
const MAX_HEADER: usize = 1024;
/// The largest payload accepted (a unified kernel image is about 20 MiB).
pub const MAX_PAYLOAD: u64 = 256 << 20;

/// What the appliance trusts: the public key baked into its image, and
/// whether the image was built to take unsigned updates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    pub key: Option<[u8; 32]>,
    pub allow_unsigned: bool,
}

/// A header that passed the trust check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: String,
    /// The data partition's format the update writes.
    pub data_format: u32,
    pub size: u64,
    pub sha256: [u8; 32],
    pub signed: bool,
}

/// Why an update is refused. The message is what the operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(msg.into()))
}

/// The header text a signature covers.
fn signed_text(version: &str, data_format: u32, size: u64, sha256: &[u8; 32]) -> String {
    format!(
        "{MAGIC}version {version}\ndata-format {data_format}\nsize {size}\nsha256 {}\n",
        hex(sha256)
    )
}

/// Writes an update file's header for `payload`, signed with `key` if one
/// is given. Ed25519 signatures are deterministic, so the same inputs give
/// the same bytes.
pub fn header(
    version: &str,
    data_format: u32,
    payload: &[u8],
    key: Option<&Ed25519KeyPair>,
) -> Vec<u8> {
    let sha: [u8; 32] = digest::digest(&digest::SHA256, payload)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes");
    let mut text = signed_text(version, data_format, payload.len() as u64, &sha);
    if let Some(key) = key {
        let sig = key.sign(text.as_bytes());
        text.push_str(&format!("signature {}\n", hex(sig.as_ref())));
    }
    text.push('\n');
    text.into_bytes()
}

/// The raw public key of a signing key.
pub fn public_key(key: &Ed25519KeyPair) -> [u8; 32] {
    key.public_key()
        .as_ref()
        .try_into()
        .expect("an Ed25519 public key is 32 bytes")
}

/// An image version as an update file carries it: 1 to 64 printable
/// characters, without quotes or backslashes (it also goes into
/// os-release).
pub fn check_version(version: &str) -> Result<(), Refused> {
    let printable = version
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if version.is_empty() || version.len() > 64 || !printable {
        return refuse("the version must be 1 to 64 printable characters");
    }
    Ok(())
}

/// Checks a header's text against `trust`.
pub fn parse_header(text: &str, trust: &Trust) -> Result<Header, Refused> {
    let Some(body) = text.strip_prefix(MAGIC) else {
        return refuse("not an edgebox update file (it must start with \"EDGEBOX-UPDATE 1\"; edgebox-image build writes one beside the image)");
    };
    let mut fields = body.lines();
    let mut field = |name: &str| -> Result<String, Refused> {
        match fields
            .next()
            .and_then(|l| l.strip_prefix(name)?.strip_prefix(' '))
        {
            Some(v) => Ok(v.to_owned()),
            None => refuse(format!("update header: expected the {name} line")),
        }
    };
    let version = field("version")?;
    check_version(&version).map_err(|e| Refused(format!("update header: {}", e.0)))?;
    let data_format: u32 = field("data-format")?
        .parse()
        .map_err(|_| Refused("update header: data-format is not a number".into()))?;
    let size: u64 = field("size")?
        .parse()
        .map_err(|_| Refused("update header: size is not a number".into()))?;
    if size == 0 || size > MAX_PAYLOAD {
        return refuse(format!(
            "update header: size {size} is out of range (1 to {MAX_PAYLOAD} bytes)"
        ));
    }
    let sha256 = unhex::<32>(&field("sha256")?)
        .ok_or_else(|| Refused("update header: sha256 is not 64 hex digits".into()))?;
    let rest: Vec<&str> = fields.collect();
    let signature = match rest.as_slice() {
        [] => None,
        [sig] => Some(
            sig.strip_prefix("signature ")
                .and_then(unhex::<64>)
                .ok_or_else(|| {
                    Refused("update header: the signature line must be 128 hex digits".into())
                })?,
        ),
        _ => return refuse("update header: unexpected lines after sha256"),
    };
    let signed = match (signature, trust.key) {
        (Some(sig), Some(key)) => {
            UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(
                    signed_text(&version, data_format, size, &sha256).as_bytes(),
                    &sig,
                )
                .map_err(|_| {
                    Refused(format!(
                        "the update's signature is not by this appliance's update key ({}); refused",
                        hex(&key)
                    ))
                })?;
            true
        }
        (None, _) if trust.allow_unsigned => false,
        (Some(_), None) if trust.allow_unsigned => false,
        (None, _) => return refuse("the update is unsigned, and this appliance's image was not built to take unsigned updates (edgebox-image build --allow-unsigned-updates); sign it with the image's key (--signing-key)"),
        (Some(_), None) => return refuse("the update is signed, but this appliance's image has no update key to check it with; refused"),
    };
    Ok(Header {
        version,
        data_format,
        size,
        sha256,
        signed,
    })
}

/// Checks an update as it streams in.
pub struct Verifier {
    trust: Trust,
    head: Vec<u8>,
    header: Option<Header>,
    hash: digest::Context,
    seen: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("header", &self.header)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(trust: Trust) -> Verifier {
        Verifier {
            trust,
            head: Vec::new(),
            header: None,
            hash: digest::Context::new(&digest::SHA256),
            seen: 0,
        }
    }

    /// The header, once it has been read and trusted.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Takes the next bytes of the file; returns the payload bytes among
    /// them (to be written), or why the update is refused.
    pub fn push<'a>(&mut self, mut data: &'a [u8]) -> Result<&'a [u8], Refused> {
        if self.header.is_none() {
            let before = self.head.len();
            let take = data.len().min(MAX_HEADER + 2 - before);
            self.head.extend_from_slice(&data[..take]);
            let Some(end) = self.head.windows(2).position(|w| w == b"\n\n") else {
                if self.head.len() > MAX_HEADER {
                    return refuse(
                        "not an edgebox update file (no header end in its first 1024 bytes)",
                    );
                }
                if !MAGIC
                    .as_bytes()
                    .starts_with(&self.head[..self.head.len().min(MAGIC.len())])
                {
                    return refuse(
                        "not an edgebox update file (it must start with \"EDGEBOX-UPDATE 1\")",
                    );
                }
                return Ok(&[]);
            };
            let text = std::str::from_utf8(&self.head[..end + 1])
                .map_err(|_| Refused("update header: not UTF-8".into()))?;
            self.header = Some(parse_header(text, &self.trust)?);
            data = &data[end + 2 - before..];
        }
        let size = self.header.as_ref().map_or(0, |h| h.size);
        self.seen += data.len() as u64;
        if self.seen > size {
            return refuse(format!(
                "the update is longer than its header says ({size} bytes)"
            ));
        }
        self.hash.update(data);
        Ok(data)
    }

    /// Whether everything pushed makes the update its header describes.
    pub fn finish(self) -> Result<Header, Refused> {
        let Some(header) = self.header else {
            return refuse("the update ended inside its header");
        };
        if self.seen != header.size {
            return refuse(format!(
                "the update is truncated: {} of {} bytes",
                self.seen, header.size
            ));
        }
        if self.hash.finish().as_ref() != header.sha256 {
            return refuse("the update's SHA-256 does not match its header: it was damaged or tampered with; nothing was installed");
        }
        Ok(header)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn file(version: &str, payload: &[u8], key: Option<&Ed25519KeyPair>) -> Vec<u8> {
        let mut f = header(version, 1, payload, key);
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `bytes` in chunks of `chunk`; the payload passed on, and the
    /// outcome.
    fn run(trust: &Trust, bytes: &[u8], chunk: usize) -> (Vec<u8>, Result<Header, Refused>) {
        let mut v = Verifier::new(trust.clone());
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            match v.push(c) {
                Ok(p) => out.extend_from_slice(p),
                Err(e) => return (out, Err(e)),
            }
        }
        (out, v.finish())
    }

    fn trusting(k: &Ed25519KeyPair) -> Trust {
        Trust {
            key: Some(public_key(k)),
            allow_unsigned: false,
        }
    }

    #[test]
    fn a_signed_update_passes_in_any_chunking_and_yields_its_payload() {
        let k = key(1);
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let f = file("1.2.3", &payload, Some(&k));
        for chunk in [1, 3, 17, 100, 4096, f.len()] {
            let (out, r) = run(&trusting(&k), &f, chunk);
            let h = r.unwrap();
            assert_eq!(out, payload, "chunk {chunk}");
            assert_eq!(
                (h.version.as_str(), h.size, h.signed),
                ("1.2.3", 5000, true)
            );
        }
        // The same inputs make the same bytes.
        assert_eq!(f, file("1.2.3", &payload, Some(&k)));
    }

    #[test]
    fn tampering_anywhere_is_refused() {
        let k = key(1);
        let payload = b"kernel and initramfs".repeat(50);
        let f = file("2.0", &payload, Some(&k));
        let header_len = header("2.0", 1, &payload, Some(&k)).len();
        // A flipped payload byte: passed on, then refused at the end.
        let mut bad = f.clone();
        bad[header_len + 10] ^= 1;
        let (_, r) = run(&trusting(&k), &bad, 64);
        assert!(r.unwrap_err().0.contains("SHA-256 does not match"));
        // A changed version or digest: the signature no longer holds, and
        // no payload is passed on.
        let text = String::from_utf8_lossy(&f[..header_len]).into_owned();
        for (from, to) in [
            ("version 2.0", "version 2.1"),
            ("data-format 1", "data-format 2"),
            ("sha256 ", "sha256 0"),
        ] {
            let mut t = text.replacen(from, to, 1);
            if from.starts_with("sha256") {
                // Keep the length: replace the first digit instead.
                t = text.clone();
                let at = t.find("sha256 ").unwrap() + 7;
                let c = if &t[at..=at] == "0" { "1" } else { "0" };
                t.replace_range(at..=at, c);
            }
            let mut bad = t.into_bytes();
            bad.extend_from_slice(&payload);
            let (out, r) = run(&trusting(&k), &bad, 64);
            assert!(out.is_empty(), "{from}");
            assert!(r
                .unwrap_err()
                .0
                .contains("not by this appliance's update key"));
        }
        // Truncated, and too long.
        let (_, r) = run(&trusting(&k), &f[..f.len() - 1], 64);
        assert!(r.unwrap_err().0.contains("truncated"));
        let mut long = f.clone();
        long.push(0);
        let (_, r) = run(&trusting(&k), &long, 64);
        assert!(r.unwrap_err().0.contains("longer than its header"));
    }

    #[test]
    fn only_the_trusted_key_and_unsigned_only_when_allowed() {
        let (k, other) = (key(1), key(2));
        let payload = b"x".repeat(100);
        let (out, r) = run(&trusting(&k), &file("1", &payload, Some(&other)), 7);
        assert!(out.is_empty());
        assert!(r
            .unwrap_err()
            .0
            .contains("not by this appliance's update key"));
        let unsigned = file("1", &payload, None);
        let (out, r) = run(&trusting(&k), &unsigned, 7);
        assert!(out.is_empty());
        assert!(r.unwrap_err().0.contains("unsigned"));
        let (_, r) = run(&Trust::default(), &file("1", &payload, Some(&k)), 7);
        assert!(r.unwrap_err().0.contains("no update key"));
        let allow = Trust {
            key: None,
            allow_unsigned: true,
        };
        let (out, r) = run(&allow, &unsigned, 7);
        assert_eq!(out, payload);
        assert!(!r.unwrap().signed);
    }

    #[test]
    fn other_files_are_named_for_what_they_are() {
        let k = key(1);
        for (bytes, needle) in [
            (&b"MZ\x90\x00 a PE file"[..], "not an edgebox update file"),
            (b"EDGEBOX-UPDATE 1\nversion \n\n", "version must be"),
            (
                b"EDGEBOX-UPDATE 1\nversion 1\nsize 1\n\n",
                "data-format line",
            ),
            (
                b"EDGEBOX-UPDATE 1\nversion 1\ndata-format x\n\n",
                "data-format is not",
            ),
            (
                b"EDGEBOX-UPDATE 1\nversion 1\ndata-format 1\nsize x\n\n",
                "size is not",
            ),
            (
                b"EDGEBOX-UPDATE 1\nversion 1\ndata-format 1\nsize 0\n\n",
                "out of range",
            ),
            (
                b"EDGEBOX-UPDATE 1\nversion 1\ndata-format 1\nsize 10\nsha256 ab\n\n",
                "64 hex",
            ),
            (b"EDGEBOX-UPDATE 1\nversion 1\n", "inside its header"),
        ] {
            let (_, r) = run(&trusting(&k), bytes, 5);
            let e = r.unwrap_err().0;
            assert!(e.contains(needle), "{e}");
        }
        let (_, r) = run(&trusting(&k), &[b'E'; 2000], 100);
        assert!(r.unwrap_err().0.contains("not an edgebox update file"));
    }

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex::<4>(&hex(&b)), Some(b));
        assert_eq!(unhex::<4>("0001abf"), None);
        assert_eq!(unhex::<4>("0001abfg"), None);
    }
}
