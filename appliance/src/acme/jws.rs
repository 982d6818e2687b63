//! The account key and the JSON Web Signatures every ACME request carries
//! (RFC 8555 6.2, RFC 7515): ES256 over `protected.payload`, the key as a JWK
//! on `newAccount` and by its account URL (`kid`) after that, and the key's
//! thumbprint (RFC 7638) that key authorizations end with. Pure computation.
#![forbid(unsafe_code)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An ACME account's key: ECDSA P-256, kept as PKCS#8.
pub struct AccountKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKey")
            .field("thumbprint", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

impl AccountKey {
    pub fn generate() -> Result<Self, String> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "cannot generate an account key".to_owned())?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map_err(|e| format!("not a P-256 account key: {e}"))?;
        Ok(Self {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as a JWK, members in the order RFC 7638 hashes them.
    pub fn jwk(&self) -> Value {
        // An uncompressed point: 0x04, x, y.
        let point = self.pair.public_key().as_ref();
        json!({
            "crv": "P-256",
            "kty": "EC",
            "x": b64(&point[1..33]),
            "y": b64(&point[33..65]),
        })
    }

    /// RFC 7638: SHA-256 of the JWK's required members, sorted, no spaces.
    pub fn thumbprint(&self) -> String {
        let point = self.pair.public_key().as_ref();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64(&point[1..33]),
            b64(&point[33..65])
        );
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// The key authorization of a challenge token (RFC 8555 8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint())
    }

    /// A flattened JWS of `payload` (`None`: POST-as-GET, an empty payload)
    /// for `url`, signed by the account `kid`, or carrying the JWK when there
    /// is no account yet.
    pub fn sign(
        &self,
        url: &str,
        nonce: &str,
        kid: Option<&str>,
        payload: Option<&Value>,
    ) -> Result<Vec<u8>, String> {
        let mut protected = json!({ "alg": "ES256", "nonce": nonce, "url": url });
        match kid {
            Some(kid) => protected["kid"] = json!(kid),
            None => protected["jwk"] = self.jwk(),
        }
        let protected = b64(protected.to_string().as_bytes());
        let payload = payload.map_or_else(String::new, |p| b64(p.to_string().as_bytes()));
        let signature = self
            .pair
            .sign(
                &SystemRandom::new(),
                format!("{protected}.{payload}").as_bytes(),
            )
            .map_err(|_| "cannot sign with the account key".to_owned())?;
        Ok(json!({
            "protected": protected,
            "payload": payload,
            "signature": b64(signature.as_ref()),
        })
        .to_string()
        .into_bytes())
    }

    /// External account binding (RFC 8555 7.3.4): the account's JWK signed
    /// with the CA's MAC key (HS256).
    pub fn eab(&self, kid: &str, hmac_key: &[u8], url: &str) -> Value {
        let protected = b64(json!({ "alg": "HS256", "kid": kid, "url": url })
            .to_string()
            .as_bytes());
        let payload = b64(self.jwk().to_string().as_bytes());
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, hmac_key);
        let tag = aws_lc_rs::hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
        json!({ "protected": protected, "payload": payload, "signature": b64(tag.as_ref()) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    /// Checks a flattened JWS with the key's public half; returns its
    /// protected header and payload.
    pub(crate) fn verify(key: &AccountKey, jws: &[u8]) -> (Value, Option<Value>) {
        let jws: Value = serde_json::from_slice(jws).unwrap();
        let part = |n: &str| jws[n].as_str().unwrap().to_owned();
        let (protected, payload, sig) = (part("protected"), part("payload"), part("signature"));
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.pair.public_key().as_ref());
        public
            .verify(
                format!("{protected}.{payload}").as_bytes(),
                &URL_SAFE_NO_PAD.decode(sig).unwrap(),
            )
            .expect("the signature verifies");
        let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(protected).unwrap()).unwrap();
        let body = (!payload.is_empty())
            .then(|| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap());
        (header, body)
    }

    #[test]
    fn a_signed_request_verifies_and_names_its_key_or_account() {
        let key = AccountKey::generate().unwrap();
        let jws = key
            .sign("https://ca/new-acct", "n1", None, Some(&json!({"a": 1})))
            .unwrap();
        let (header, body) = verify(&key, &jws);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["nonce"], "n1");
        assert_eq!(header["url"], "https://ca/new-acct");
        assert_eq!(header["jwk"], key.jwk());
        assert!(header.get("kid").is_none());
        assert_eq!(body, Some(json!({"a": 1})));

        let jws = key
            .sign("https://ca/order/1", "n2", Some("https://ca/acct/7"), None)
            .unwrap();
        let (header, body) = verify(&key, &jws);
        assert_eq!(header["kid"], "https://ca/acct/7");
        assert!(header.get("jwk").is_none());
        assert_eq!(body, None, "POST-as-GET has an empty payload");
    }

    #[test]
    fn the_key_survives_its_pkcs8_form() {
        let key = AccountKey::generate().unwrap();
        let again = AccountKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(key.thumbprint(), again.thumbprint());
        assert!(AccountKey::from_pkcs8(b"nonsense").is_err());
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638's method on a key with known coordinates: the thumbprint
        // is the SHA-256 of exactly this text.
        let key = AccountKey::generate().unwrap();
        let jwk = key.jwk();
        let text = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        assert_eq!(key.thumbprint(), b64(sha.as_ref()));
        assert_eq!(key.thumbprint().len(), 43);
        assert_eq!(
            key.key_authorization("tok"),
            format!("tok.{}", key.thumbprint())
        );
    }

    #[test]
    fn external_account_binding_is_an_hs256_mac_of_the_jwk() {
        let key = AccountKey::generate().unwrap();
        let eab = key.eab("kid-1", b"secret", "https://ca/new-acct");
        let protected = eab["protected"].as_str().unwrap();
        let payload = eab["payload"].as_str().unwrap();
        let mac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"secret");
        aws_lc_rs::hmac::verify(
            &mac,
            format!("{protected}.{payload}").as_bytes(),
            &URL_SAFE_NO_PAD
                .decode(eab["signature"].as_str().unwrap())
                .unwrap(),
        )
        .expect("the MAC verifies");
        let jwk: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(jwk, key.jwk());
    }
}
