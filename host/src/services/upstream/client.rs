//! Upstream HTTP: pooled clients, TLS, header hygiene, and one attempt against one URL.
//!
//! A hyper client is built per distinct (connect timeout, extra CA) pair and shared by every
//! backend and every config version that uses it (`Upstreams` keeps them), so a live reload
//! keeps warm connections. TLS is rustls with the platform roots plus webpki roots plus an
//! optional per-backend CA file; ALPN offers HTTP/2, so an upstream that speaks it gets
//! multiplexed streams. The client's own credentials never travel upstream: the backend's
//! key replaces them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

use super::Upstream;
use crate::base::error::{GatewayError, error_chain};
use crate::config::{Backend, BackendUrl};

/// The pooled upstream client type.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A new client: connections time out after `connect_timeout`, TLS trusts the webpki
/// roots, `native_roots` and `extra_roots`.
pub fn build_client(
    connect_timeout: Duration,
    native_roots: &[CertificateDer<'static>],
    extra_roots: &[CertificateDer<'static>],
) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Platform roots may include certificates rustls cannot parse; skipping them is
    // what browsers do too.
    let _ = roots.add_parsable_certificates(native_roots.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| format!("certificate is not a usable CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(4096)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https);
    Ok(client)
}

/// Client headers that never travel upstream: hop-by-hop headers, the client's
/// credentials, the gateway's own control headers, and `accept-encoding` (the gateway reads
/// usage from the answer, so it asks for it uncompressed).
fn forwardable_request_header(name: &str) -> bool {
    !matches!(
        name,
        "host"
            | "authorization"
            | "api-key"
            | "x-api-key"
            | "proxy-authorization"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "content-type"
            | "accept-encoding"
            | "expect"
            | "cookie"
    ) && !name.starts_with("x-switchyard-")
}

/// Upstream response headers that are not relayed to the client (hop-by-hop and framing;
/// hyper sets framing for the client connection itself).
pub fn forwardable_response_header(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "content-encoding"
    )
}

/// Build the upstream request: the client's forwardable headers, the backend's key.
pub fn build_request(
    backend: &Backend,
    uri: &http::Uri,
    body: Bytes,
    client_headers: &HeaderMap,
) -> Result<Request<Full<Bytes>>, GatewayError> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri.clone();
    let headers = req.headers_mut();
    for (name, value) in client_headers {
        if forwardable_request_header(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(auth) = &backend.auth {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    Ok(req)
}

/// Send one request to one URL and wait for the response head, within the backend's
/// first-byte timeout. Errors say which backend and what happened.
pub async fn send(
    upstream: &Upstream,
    url: &BackendUrl,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, GatewayError> {
    let backend = &upstream.backend;
    let fut = upstream.client.request(req);
    match tokio::time::timeout(backend.first_byte_timeout, fut).await {
        Err(_) => Err(GatewayError::UpstreamTimeout {
            backend: backend.name.to_string(),
            phase: "waiting for the response to start",
            secs: backend.first_byte_timeout.as_secs_f64(),
        }),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(classify_client_error(&backend.name, &url.authority, &e)),
    }
}

fn classify_client_error(
    backend: &str,
    authority: &str,
    e: &hyper_util::client::legacy::Error,
) -> GatewayError {
    let chain = error_chain(e);
    if e.is_connect() {
        GatewayError::UpstreamConnect {
            backend: backend.to_string(),
            detail: format!("{authority}: {chain}"),
        }
    } else {
        GatewayError::UpstreamBroken {
            backend: backend.to_string(),
            detail: format!("{authority}: {chain}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_and_hop_headers_are_not_forwarded() {
        for h in [
            "authorization",
            "x-api-key",
            "connection",
            "host",
            "accept-encoding",
            "x-switchyard-pin",
        ] {
            assert!(!forwardable_request_header(h), "{h}");
        }
        for h in [
            "openai-organization",
            "openai-beta",
            "traceparent",
            "user-agent",
        ] {
            assert!(forwardable_request_header(h), "{h}");
        }
    }
}
