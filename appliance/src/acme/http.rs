//! HTTPS to the CA for the ACME driver: a connection per request on the
//! control thread's runtime (hyper over tokio-rustls), trusting the web
//! PKI's roots or `acme.ca_file`'s, with a deadline and a size limit.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;

use super::order::{Method, Problem, Request, Response};

/// One request to the CA gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from the CA (a certificate chain is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// TLS to the CA: the roots of `ca_file`, or the web PKI's.
pub fn client_tls(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, Problem> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Problem::client(format!("acme.ca_file {}: {e}", path.display())))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    Problem::client(format!("acme.ca_file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    Problem::client(format!("acme.ca_file {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(Problem::client(format!(
                    "acme.ca_file {}: no certificate in it",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Problem::client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One request to the CA on a connection of its own.
pub async fn send(tls: &Arc<rustls::ClientConfig>, req: &Request) -> Result<Response, Problem> {
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(tls, req)).await {
        Ok(r) => r.map_err(|e| Problem {
            kind: "connection".into(),
            detail: format!("{}: {e}", req.url),
            retry_after: None,
        }),
        Err(_) => Err(Problem {
            kind: "connection".into(),
            detail: format!(
                "{}: no answer within {} s",
                req.url,
                REQUEST_TIMEOUT.as_secs()
            ),
            retry_after: None,
        }),
    }
}

async fn exchange(tls: &Arc<rustls::ClientConfig>, req: &Request) -> Result<Response, String> {
    let uri: http::Uri = req.url.parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("the CA's URLs must be https".into());
    }
    let host = uri.host().ok_or("no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?;
    let server = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(server, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let method = match req.method {
        Method::Get => http::Method::GET,
        Method::Head => http::Method::HEAD,
        Method::Post => http::Method::POST,
    };
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("edgebox/", env!("CARGO_PKG_VERSION")),
        );
    if req.body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/jose+json");
    }
    let request = builder
        .body(Full::new(bytes::Bytes::from(
            req.body.clone().unwrap_or_default(),
        )))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = response.status().as_u16();
    let location = header("location");
    let nonce = header("replay-nonce");
    let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok(Response {
        status,
        location,
        nonce,
        retry_after,
        body,
    })
}
