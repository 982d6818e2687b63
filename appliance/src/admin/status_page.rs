//! The status page (`GET /status`): one HTML file with its script and
//! style inline (no external assets), which asks for the admin token, keeps
//! it in the browser session, and polls the JSON API with it. The page
//! itself holds no data, so it is served without the token.
#![forbid(unsafe_code)]

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;

use super::body::Body;

const PAGE: &str = include_str!("status.html");

pub fn response() -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from_static(PAGE.as_bytes())));
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; form-action 'none'; frame-ancestors 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}
