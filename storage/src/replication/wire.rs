//! The replication wire format: each message a 4-byte big-endian length and
//! a JSON object. After a `Blob` response come the blob's outboard (32
//! bytes per group, see [`crate::verified`]; none for a blob of one group
//! or less) and then its bytes from the offset asked for, raw. Every
//! request and notice carries the protocol version; a peer of another
//! version is answered with an error and not synced with.
//!
//! Requests go on a stream of their own each (a QUIC bidirectional stream:
//! one request, one response); notices on a unidirectional stream.

use serde::{Deserialize, Serialize};

use super::catalog::{Item, Version};
use crate::Hash;

/// This protocol's version.
pub const PROTOCOL: u32 = 1;

/// The largest message accepted (a blob's bytes are not a message).
pub const MAX_MESSAGE: usize = 16 << 20;

/// What one peer asks of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The catalog's root digest and clock.
    Digest { protocol: u32 },
    /// Every bucket's digest.
    Buckets { protocol: u32 },
    /// The keys and versions in these buckets.
    Summaries { protocol: u32, buckets: Vec<u8> },
    /// These items, whole.
    Items { protocol: u32, keys: Vec<String> },
    /// A blob's bytes from `offset` on.
    Blob {
        protocol: u32,
        hash: Hash,
        offset: u64,
    },
}

impl Request {
    pub fn protocol(&self) -> u32 {
        match self {
            Self::Digest { protocol }
            | Self::Buckets { protocol }
            | Self::Summaries { protocol, .. }
            | Self::Items { protocol, .. }
            | Self::Blob { protocol, .. } => *protocol,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Digest {
        root: Hash,
        clock: u64,
    },
    Buckets {
        digests: Vec<Hash>,
    },
    Summaries {
        items: Vec<(String, Version)>,
    },
    Items {
        items: Vec<Item>,
    },
    /// The blob's outboard follows (for its `total` size), then `size` bytes
    /// of it from the offset asked for, then the stream ends.
    Blob {
        size: u64,
        total: u64,
    },
    /// The request was refused (unknown blob, other protocol, bad request).
    Error {
        message: String,
    },
}

/// What one peer tells another without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notice {
    /// Something changed here: the changed items (a publish is pushed at
    /// once, without waiting for the next sync), and the catalog's root and
    /// clock now.
    Changed {
        protocol: u32,
        root: Hash,
        clock: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        items: Vec<Item>,
    },
    /// The blob this peer sent does not match its hash: its copy is
    /// damaged (it checks, puts it aside and fetches it again).
    Damaged { protocol: u32, hash: Hash },
    /// A planned handover: the sender, master of virtual router `vrid`,
    /// has lowered its priority and asks this appliance to take the
    /// virtual addresses now (it lets them go once it hears this one's
    /// advert). Replication is the pair's second path besides VRRP.
    TakeOver { protocol: u32, vrid: u8 },
}

impl Notice {
    pub fn protocol(&self) -> u32 {
        match self {
            Self::Changed { protocol, .. }
            | Self::Damaged { protocol, .. }
            | Self::TakeOver { protocol, .. } => *protocol,
        }
    }
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes is larger than {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("message is not JSON of the protocol: {0}")]
    Malformed(String),
    #[error("message of protocol {0}; this one speaks {PROTOCOL}")]
    Protocol(u32),
}

/// A message with its length in front.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Plain data with string keys: serialising cannot fail.
    let json = serde_json::to_vec(message).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// The length a message's 4-byte prefix announces, if acceptable.
pub fn length(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n > MAX_MESSAGE {
        return Err(DecodeError::TooLarge(n));
    }
    Ok(n)
}

/// A message's JSON body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// A request's body, refusing other protocol versions.
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    // The version is read first, so that a newer peer's unknown request is
    // reported as a version mismatch, not as garbage.
    #[derive(Deserialize)]
    struct Versioned {
        protocol: u32,
    }
    let v: Versioned = decode(body)?;
    if v.protocol != PROTOCOL {
        return Err(DecodeError::Protocol(v.protocol));
    }
    decode(body)
}

#[cfg(test)]
mod tests {
    use super::super::catalog::Value;
    use super::*;

    #[test]
    fn messages_round_trip_with_their_length() {
        let r = Request::Items {
            protocol: PROTOCOL,
            keys: vec!["site/a".into()],
        };
        let bytes = encode(&r);
        let n = length(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, bytes.len() - 4);
        assert_eq!(decode_request(&bytes[4..]).unwrap(), r);
        let resp = Response::Digest {
            root: Hash::from_bytes([7; 32]),
            clock: 3,
        };
        assert_eq!(decode::<Response>(&encode(&resp)[4..]).unwrap(), resp);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            length(u32::MAX.to_be_bytes()),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(matches!(
            decode_request(b"{"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(br#"{"type":"digest","protocol":2}"#),
            Err(DecodeError::Protocol(2))
        ));
        assert!(matches!(
            decode_request(br#"{"type":"launch","protocol":1}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(decode::<Response>(br#"{"type":"digest","root":"zz","clock":1}"#).is_err());
    }

    /// Messages written by version 1 keep decoding (the fixtures are what
    /// version 1 sends; a change of the format must keep reading them or
    /// raise [`PROTOCOL`]).
    #[test]
    fn reads_the_messages_of_protocol_1() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replication-v1");
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let requests: Vec<serde_json::Value> =
            serde_json::from_slice(&read("requests.json")).unwrap();
        for r in &requests {
            decode_request(r.to_string().as_bytes()).unwrap();
        }
        assert_eq!(requests.len(), 5);
        let responses: Vec<serde_json::Value> =
            serde_json::from_slice(&read("responses.json")).unwrap();
        let decoded: Vec<Response> = responses
            .iter()
            .map(|r| decode(r.to_string().as_bytes()).unwrap())
            .collect();
        let Response::Items { items } = &decoded[3] else {
            panic!("{:?}", decoded[3])
        };
        assert_eq!(items[0].key, "site/shop");
        assert!(matches!(items[0].value, Value::Site { .. }));
        assert_eq!(items[1].value, Value::Deleted);
        let notices: Vec<Notice> = decode(&read("notice.json")).unwrap();
        assert!(
            matches!(&notices[0], Notice::Changed { clock: 12, items, .. } if items.is_empty())
        );
        assert!(
            matches!(&notices[1], Notice::Changed { items, .. } if items[0].key == "site/shop")
        );
        assert!(matches!(notices[2], Notice::Damaged { .. }));
    }
}
