//! The HTTP side of `edgebox ctl`: one request at a time over HTTPS, with the
//! admin certificate pinned.

use std::io::Read;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How the admin API's certificate is trusted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only this exact certificate (the admin API's self-signed one).
    Pinned(CertificateDer<'static>),
    /// Any certificate: for a first look at a fresh appliance only.
    Insecure,
}

/// A failed request, as the user should read it.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The admin API could not be reached or spoke no HTTP.
    #[error("{0}")]
    Connect(String),
    /// The admin API refused the request.
    #[error("{status}: {message}")]
    Api { status: StatusCode, message: String },
    /// A local file or argument is wrong.
    #[error("{0}")]
    Usage(String),
}

pub struct Client {
    /// `https://host:port` of the admin API.
    pub base: String,
    host: String,
    port: u16,
    token: String,
    tls: Arc<rustls::ClientConfig>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A request body: nothing, bytes, or a file streamed as it is read.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    Bytes(Bytes),
    File(std::fs::File),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match this {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Bytes(b) => {
                let b = std::mem::take(b);
                *this = ReqBody::Empty;
                Poll::Ready((!b.is_empty()).then(|| Ok(Frame::data(b))))
            }
            // ctl sends one request at a time; a blocking read is fine here.
            ReqBody::File(f) => {
                let mut buf = vec![0u8; 256 * 1024];
                match f.read(&mut buf) {
                    Ok(0) => Poll::Ready(None),
                    Ok(n) => {
                        buf.truncate(n);
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
                    }
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
        }
    }
}

impl Client {
    pub fn new(url: &str, token: String, trust: Trust) -> Result<Self, CtlError> {
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            CtlError::Usage(format!("{url}: the admin URL must start with https://"))
        })?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                p.parse()
                    .map_err(|_| CtlError::Usage(format!("{url}: bad port")))?,
            ),
            _ => (authority.to_owned(), 443),
        };
        let tls = tls_config(trust)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CtlError::Connect(e.to_string()))?;
        Ok(Self {
            base: format!("https://{authority}"),
            host,
            port,
            token,
            tls: Arc::new(tls),
            runtime,
        })
    }

    /// Whether `HEAD path` answers 200 (true) or 404 (false).
    pub fn exists(&self, path: &str) -> Result<bool, CtlError> {
        match self.send(Method::HEAD, path, ReqBody::Empty, &[]) {
            Ok(_) => Ok(true),
            Err(CtlError::Api { status, .. }) if status == StatusCode::NOT_FOUND => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends one request; returns the body of a 2xx response, or the API's
    /// error message.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: ReqBody,
        headers: &[(&str, &str)],
    ) -> Result<Bytes, CtlError> {
        self.runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| CtlError::Connect(format!("{}: {e}", self.base)))?;
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| CtlError::Usage(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| CtlError::Connect(format!("{}: TLS: {e}", self.base)))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| CtlError::Connect(e.to_string()))?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", format!("{}:{}", self.host, self.port))
                .header("authorization", format!("Bearer {}", self.token));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(body).map_err(|e| CtlError::Usage(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| CtlError::Connect(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CtlError::Connect(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                return Ok(bytes);
            }
            let message = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => match (v["error"].as_str(), v["field"].as_str()) {
                    (Some(e), Some(f)) => format!("{f}: {e}"),
                    (Some(e), None) => e.to_owned(),
                    _ => String::from_utf8_lossy(&bytes).into_owned(),
                },
                Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
            };
            Err(CtlError::Api { status, message })
        })
    }
}

/// A rustls client configuration that trusts the admin API as `trust` says
/// (handshake signatures are always verified).
pub fn tls_config(trust: Trust) -> Result<rustls::ClientConfig, CtlError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| CtlError::Usage(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier { trust, provider }))
            .with_no_client_auth(),
    )
}

/// Reads the admin certificate to pin.
pub fn pinned(path: &Path) -> Result<Trust, CtlError> {
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::from_pem_file(path)
        .map_err(|e| CtlError::Usage(format!("{}: {e}", path.display())))?;
    Ok(Trust::Pinned(cert))
}

#[derive(Debug)]
struct PinnedVerifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Trust::Insecure => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(p) if p.as_ref() == end_entity.as_ref() => {
                Ok(ServerCertVerified::assertion())
            }
            Trust::Pinned(_) => Err(rustls::Error::General(
                "the admin API presented a certificate other than the pinned one".into(),
            )),
        }
    }

    // The handshake signatures are always checked: they prove the server
    // holds the pinned certificate's key.
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
