//! Building responses: JSON and text answers, and the headers every proxied answer carries.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::body::GatewayBody;

/// Response header naming the backend that served the answer.
pub const HEADER_BACKEND: http::HeaderName = http::HeaderName::from_static("x-switchyard-backend");
/// Response header naming the model sent upstream.
pub const HEADER_MODEL: http::HeaderName = http::HeaderName::from_static("x-switchyard-model");
/// Response header saying how the response cache answered: `hit`, `miss` or `bypass` (on
/// routes with a cache only).
pub const HEADER_CACHE: http::HeaderName = http::HeaderName::from_static("x-switchyard-cache");
/// Response header listing every upstream attempt: `backend@host:port outcome, ...`.
pub const HEADER_ATTEMPTS: http::HeaderName =
    http::HeaderName::from_static("x-switchyard-attempts");

/// A JSON answer.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<GatewayBody>) -> Response<GatewayBody> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Add `x-switchyard-backend` and, when known, `x-switchyard-model`.
pub fn stamp(headers: &mut HeaderMap, backend: &str, model: Option<&str>) {
    if let Ok(v) = HeaderValue::from_str(backend) {
        headers.insert(HEADER_BACKEND, v);
    }
    if let Some(m) = model
        && let Ok(v) = HeaderValue::from_str(m)
    {
        headers.insert(HEADER_MODEL, v);
    }
}
