//! The `acme` section: certificates this appliance obtains and renews itself
//! (docs/acme.md). Local to each appliance, like `failover`: in a pair, the
//! master orders and both serve what it got, which replicates.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{within, ConfigError};
use crate::acme::ChallengeKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// The CA's directory, e.g.
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// The account's contact address (`mailto:` is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Names a certificate is obtained for, whatever the host map says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Every host of the host map gets a certificate too (unless a
    /// configured certificate covers it).
    #[serde(default = "yes")]
    pub hostmap: bool,
    /// The challenge types answered, in order of preference (default: both,
    /// HTTP-01 first; HTTP-01 needs an http listener, TLS-ALPN-01 an https
    /// one, reachable by the CA on ports 80 and 443).
    #[serde(default = "default_challenges")]
    pub challenges: Vec<ChallengeKind>,
    /// At most this many orders start in any hour.
    #[serde(default = "default_orders_per_hour")]
    pub orders_per_hour: u32,
    /// PEM roots trusted for the CA's own HTTPS instead of the built-in
    /// web PKI roots (a private CA, or a test CA such as pebble).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// External account binding, for CAs that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account: Option<ExternalAccount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalAccount {
    pub key_id: String,
    /// The MAC key as the CA gives it: base64url.
    pub hmac_key: String,
}

fn yes() -> bool {
    true
}

fn default_challenges() -> Vec<ChallengeKind> {
    vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01]
}

fn default_orders_per_hour() -> u32 {
    100
}

impl Acme {
    /// Checks that need no IO; `has_http` and `has_https` say which
    /// listeners the config has.
    pub fn validate(&self, has_http: bool, has_https: bool) -> Result<(), ConfigError> {
        let url = self.directory_url.as_str();
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| ConfigError::new("acme.directory_url", "must be an https:// URL"))?;
        if rest.is_empty() || rest.starts_with('/') || url.parse::<http::Uri>().is_err() {
            return Err(ConfigError::new("acme.directory_url", "not a valid URL"));
        }
        if let Some(email) = &self.email {
            let ok = email.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.contains('.') && !email.contains(char::is_whitespace)
            });
            if !ok {
                return Err(ConfigError::new("acme.email", "not an e-mail address"));
            }
        }
        for (i, n) in self.names.iter().enumerate() {
            check_dns_name(n).map_err(|e| ConfigError::new(format!("acme.names[{i}]"), e))?;
        }
        if self.challenges.is_empty() {
            return Err(ConfigError::new(
                "acme.challenges",
                "name at least one challenge type",
            ));
        }
        for (i, c) in self.challenges.iter().enumerate() {
            if self.challenges[..i].contains(c) {
                return Err(ConfigError::new(
                    format!("acme.challenges[{i}]"),
                    "named twice",
                ));
            }
            let (needed, listener) = match c {
                ChallengeKind::Http01 => (has_http, "http"),
                ChallengeKind::TlsAlpn01 => (has_https, "https"),
            };
            if !needed {
                return Err(ConfigError::new(
                    format!("acme.challenges[{i}]"),
                    format_args!("{} needs an {listener} listener", c.as_str()),
                ));
            }
        }
        within(
            "acme.orders_per_hour",
            u64::from(self.orders_per_hour),
            1,
            10_000,
        )?;
        if let Some(eab) = &self.external_account {
            if eab.key_id.is_empty() {
                return Err(ConfigError::new(
                    "acme.external_account.key_id",
                    "must not be empty",
                ));
            }
            if crate::acme::decode_b64url(&eab.hmac_key).is_none_or(|k| k.is_empty()) {
                return Err(ConfigError::new(
                    "acme.external_account.hmac_key",
                    "must be base64url (as the CA gives it)",
                ));
            }
        }
        Ok(())
    }

    /// The account's contact URIs.
    pub fn contact(&self) -> Vec<String> {
        self.email.iter().map(|e| format!("mailto:{e}")).collect()
    }
}

/// A name a certificate can be ordered for: a DNS name of at least two
/// labels, no wildcard (HTTP-01 and TLS-ALPN-01 cannot prove one), no IP.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if name.starts_with("*.") {
        return Err("a wildcard needs the DNS-01 challenge, which edgebox does not answer".into());
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address, not a DNS name".into());
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err("needs at least two labels (shop.example)".into());
    }
    for l in &labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!("{l:?} is not a lower-case DNS label"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label is all digits".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme(extra: serde_json::Value) -> Acme {
        let mut v = serde_json::json!({"directory_url": "https://ca.test/dir"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_and_each_mistake_named_by_its_field() {
        let a = acme(serde_json::json!({}));
        assert!(a.hostmap);
        assert_eq!(
            a.challenges,
            vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01]
        );
        a.validate(true, true).unwrap();
        let field = |a: Acme, http, https| a.validate(http, https).unwrap_err().path;
        assert_eq!(field(a.clone(), false, true), "acme.challenges[0]");
        assert_eq!(
            field(
                acme(serde_json::json!({"directory_url": "http://ca.test/dir"})),
                true,
                true
            ),
            "acme.directory_url"
        );
        assert_eq!(
            field(acme(serde_json::json!({"email": "nobody"})), true, true),
            "acme.email"
        );
        assert_eq!(
            field(
                acme(serde_json::json!({"names": ["shop.test", "*.shop.test"]})),
                true,
                true
            ),
            "acme.names[1]"
        );
        assert_eq!(
            field(
                acme(serde_json::json!({"names": ["Shop.test"]})),
                true,
                true
            ),
            "acme.names[0]"
        );
        assert_eq!(
            field(acme(serde_json::json!({"challenges": []})), true, true),
            "acme.challenges"
        );
        assert_eq!(
            field(
                acme(serde_json::json!({"challenges": ["tls-alpn-01", "tls-alpn-01"]})),
                true,
                true
            ),
            "acme.challenges[1]"
        );
        assert_eq!(
            field(acme(serde_json::json!({"orders_per_hour": 0})), true, true),
            "acme.orders_per_hour"
        );
        assert_eq!(
            field(
                acme(
                    serde_json::json!({"external_account": {"key_id": "k", "hmac_key": "not base64!"}})
                ),
                true,
                true
            ),
            "acme.external_account.hmac_key"
        );
        acme(serde_json::json!({"challenges": ["tls-alpn-01"], "email": "ops@shop.test"}))
            .validate(false, true)
            .unwrap();
        assert!(serde_json::from_value::<Acme>(
            serde_json::json!({"directory_url": "https://x.test/d", "typo": 1})
        )
        .is_err());
    }

    #[test]
    fn orderable_names() {
        for ok in ["shop.test", "a-1.b.example.com", "xn--bcher-kva.example"] {
            check_dns_name(ok).unwrap();
        }
        for bad in [
            "localhost",
            "*.shop.test",
            "10.0.0.1",
            "shop..test",
            "-a.test",
            "shop.123",
            "a_b.test",
            "",
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
    }
}
