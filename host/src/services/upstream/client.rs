//! Upstream HTTP: pooled clients, TLS, header hygiene, and one attempt against one URL.
//!
//! A hyper client is built per distinct (connect timeout, extra CA) pair and shared by every
//! backend and every config version that uses it (`Upstreams` keeps them), so a live reload
//! keeps warm connections. TLS is rustls with the platform roots plus webpki roots plus an
//! optional per-backend CA file; ALPN offers HTTP/2, so an upstream that speaks it gets
//! multiplexed streams. Client request headers travel upstream only when the backend's
//! `forward_headers` allowlist names them; the client's credentials, hop-by-hop headers and
//! those its `Connection` header names never do: the backend's key replaces the credentials.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

use super::Upstream;
use crate::base::error::{GatewayError, error_chain};
use crate::config::backend::never_forwarded;
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

/// Whether a client header goes upstream to `backend`: on the backend's `forward_headers`
/// list, not on the never-forwarded floor, and not named by the client's `Connection`
/// header (RFC 9110 §7.6.1: those are hop-by-hop too).
fn forwardable_request_header(
    backend: &Backend,
    name: &HeaderName,
    connection: Option<&HeaderValue>,
) -> bool {
    backend.forward_headers.allows(name)
        && !never_forwarded(name.as_str())
        && !connection.is_some_and(|c| names_in_connection(c, name.as_str()))
}

/// True when the `Connection` header value lists `name` as one of its options.
fn names_in_connection(connection: &HeaderValue, name: &str) -> bool {
    connection.to_str().is_ok_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case(name))
    })
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
    let connection = client_headers.get(header::CONNECTION);
    for (name, value) in client_headers {
        if forwardable_request_header(backend, name, connection) {
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
    let fut = upstream.client().request(req);
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

    /// Validate a config of one backend (and a route to it) with `extra` in its table.
    fn validated(extra: &str) -> Result<crate::config::Runtime, String> {
        let text = format!(
            "[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:9/v1\"\n{extra}\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"b\" }}]\n"
        );
        let file = crate::config::parse(&text).map_err(|p| format!("{p:?}"))?;
        crate::config::validate(file, crate::config::ConfigSource::Embedded)
            .map_err(|p| format!("{p:?}"))
    }

    fn backend(forward: Option<&[&str]>) -> Arc<Backend> {
        let extra = forward.map_or(String::new(), |l| format!("forward_headers = {l:?}"));
        validated(&extra).unwrap().backends[0].clone()
    }

    fn sent_upstream(b: &Backend, client: &[(&str, &str)]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for (k, v) in client {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: http::Uri = "http://127.0.0.1:9/v1/chat/completions".parse().unwrap();
        let req = build_request(b, &uri, Bytes::new(), &h).unwrap();
        let mut names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn only_allowlisted_client_headers_go_upstream() {
        let client = [
            ("authorization", "Bearer sk-client"),
            ("openai-organization", "org-1"),
            ("openai-project", "proj-1"),
            ("x-forwarded-for", "10.1.2.3"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("cookie", "a=b"),
            ("user-agent", "OpenAI/Python 1.0"),
            ("x-stainless-lang", "python"),
            ("openai-beta", "assistants=v2"),
        ];
        assert_eq!(
            sent_upstream(&backend(None), &client),
            [
                "content-type",
                "openai-beta",
                "user-agent",
                "x-stainless-lang"
            ]
        );
        // A backend's own list replaces the default; `Connection` still rules.
        assert_eq!(
            sent_upstream(&backend(Some(&["OpenAI-Organization", "x-hop"])), &client),
            ["content-type", "openai-organization"]
        );
    }

    #[test]
    fn listing_a_header_that_never_travels_is_a_config_error() {
        let text = validated("forward_headers = [\"Authorization\", \"bad header\"]").unwrap_err();
        assert!(text.contains("backends[0].forward_headers[0]"), "{text}");
        assert!(text.contains("never forwarded"), "{text}");
        assert!(text.contains("backends[0].forward_headers[1]"), "{text}");
    }
}
