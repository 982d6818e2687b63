//! This appliance's identity among its peers, and how peers are pinned.
//!
//! The identity is an ECDSA P-256 key pair made on first start and kept in
//! `<data>/replication/identity.key` (mode 0600). Its fingerprint is the
//! SHA-256 of the public key (the DER SubjectPublicKeyInfo), 64 lowercase
//! hex digits: what `edgebox identity` prints and what peers pin. The TLS
//! certificate around the key is made anew at each start and means
//! nothing by itself; only the key is checked.
//!
//! Connections are QUIC with TLS 1.3 and a client certificate both ways.
//! The verifiers below accept exactly the pinned keys (a server: the
//! fingerprint configured for the address dialled; a client: any of the
//! configured peers) and check the handshake signature, which proves the
//! peer holds the key. There is no CA and no name check.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::fsutil::write_atomic;

/// The ALPN protocol of replication connections.
pub const ALPN: &[u8] = b"edgebox-replication/1";
/// The server name a client asks for (nothing checks it).
pub const SERVER_NAME: &str = "edgebox-peer";

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a private key edgebox can use: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("could not make the identity's certificate: {0}")]
    Certificate(String),
}

/// This appliance's key pair and its certificate.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Where the identity's key is kept.
pub fn key_path(data: &Path) -> PathBuf {
    data.join("replication").join("identity.key")
}

fn hex(bytes: &[u8]) -> String {
    crate::admin::token::hex(bytes)
}

/// The fingerprint of a public key (DER SubjectPublicKeyInfo).
pub fn fingerprint_of_spki(spki: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki).as_ref())
}

/// The fingerprint of the key in a certificate.
pub fn fingerprint_of(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(fingerprint_of_spki(
        parsed.subject_public_key_info().as_ref(),
    ))
}

impl Identity {
    /// The identity kept in `data`, made (and kept) first if there is none.
    pub fn load_or_create(data: &Path) -> Result<Self, IdentityError> {
        let path = key_path(data);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate()
                    .map_err(|e| IdentityError::Certificate(e.to_string()))?;
                let pem = key.serialize_pem();
                write_atomic(&path, pem.as_bytes(), 0o600).map_err(io)?;
                tracing::info!(path = %path.display(), "made this appliance's replication identity");
                pem
            }
            Err(e) => return Err(io(e)),
        };
        let bad = |reason: String| IdentityError::BadKey {
            path: path.clone(),
            reason,
        };
        let pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let cert = params
            .self_signed(&pair)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        use rcgen::PublicKeyData;
        Ok(Self {
            fingerprint: fingerprint_of_spki(&pair.subject_public_key_info()),
            cert: cert.der().clone(),
            key,
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The QUIC server side: accepts clients whose key is in `pins`.
    pub fn server_config(
        &self,
        pins: Arc<Pins>,
        timeout: Duration,
    ) -> Result<quinn::ServerConfig, String> {
        let provider = crate::tls::provider();
        let verifier = Arc::new(Pinned {
            accept: Accept::AnyOf(pins),
            provider: Arc::clone(&provider),
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport(timeout)));
        Ok(config)
    }

    /// The QUIC client side for dialling a peer pinned as `fingerprint`.
    pub fn client_config(
        &self,
        fingerprint: &str,
        timeout: Duration,
    ) -> Result<quinn::ClientConfig, String> {
        let provider = crate::tls::provider();
        let verifier = Arc::new(Pinned {
            accept: Accept::Exactly(fingerprint.to_owned()),
            provider: Arc::clone(&provider),
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport(timeout)));
        Ok(config)
    }
}

/// Both sides' transport settings: a peer silent for `timeout` is gone;
/// keep-alives make an idle link not look silent.
fn transport(timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(timeout).ok());
    t.keep_alive_interval(Some(timeout / 3));
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(16u32.into());
    // Windows for a fast link: 8 MiB a stream, 32 MiB a connection.
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(32 << 20);
    t
}

/// The fingerprints accepted from connecting peers; replaced when the
/// config's peers change.
#[derive(Debug, Default)]
pub struct Pins(ArcSwap<HashSet<String>>);

impl Pins {
    pub fn set(&self, fingerprints: HashSet<String>) {
        self.0.store(Arc::new(fingerprints));
    }

    pub fn contains(&self, fingerprint: &str) -> bool {
        self.0.load().contains(fingerprint)
    }
}

fn end_entity_fingerprint(cert: &CertificateDer<'_>) -> Result<String, rustls::Error> {
    fingerprint_of(cert).ok_or(rustls::Error::InvalidCertificate(
        rustls::CertificateError::BadEncoding,
    ))
}

/// Which keys a verifier accepts.
#[derive(Debug)]
enum Accept {
    /// The peer dialled: the fingerprint configured for it.
    Exactly(String),
    /// A connecting peer: any configured one.
    AnyOf(Arc<Pins>),
}

/// A verifier of pinned keys, for either side of a connection.
#[derive(Debug)]
struct Pinned {
    accept: Accept,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let fp = end_entity_fingerprint(end_entity)?;
        match &self.accept {
            Accept::Exactly(expected) if fp == *expected => Ok(()),
            Accept::Exactly(expected) => Err(rustls::Error::General(format!(
                "the peer's fingerprint is {fp}, not the pinned {expected}"
            ))),
            Accept::AnyOf(pins) if pins.contains(&fp) => Ok(()),
            Accept::AnyOf(_) => Err(rustls::Error::General(format!(
                "fingerprint {fp} is not a configured peer"
            ))),
        }
    }
}

/// The handshake-signature methods, the same for both sides: TLS 1.3
/// only, checked with the provider's algorithms.
macro_rules! signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General(
                "replication speaks TLS 1.3 only".into(),
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    signatures!();
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_made_once_kept_private_and_its_fingerprint_is_its_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), again.fingerprint(), "the same key");
        assert!(crate::config::is_fingerprint(a.fingerprint()));
        // The certificate is new each time, the fingerprint read from it is
        // the key's.
        assert_eq!(
            fingerprint_of(&again.cert).as_deref(),
            Some(a.fingerprint())
        );
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            Identity::load_or_create(other.path())
                .unwrap()
                .fingerprint(),
            a.fingerprint()
        );
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        let e = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity.key"), "{e}");
    }
}
