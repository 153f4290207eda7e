//! A small HTTP client for tests: complete bodies, or stream frames exactly as they arrived
//! (so a test can tell whether the gateway coalesced or split chunks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A streamed response, frame by frame.
#[derive(Debug, Clone)]
pub struct StreamResp {
    pub status: u16,
    pub headers: HeaderMap,
    pub frames: Vec<Bytes>,
    /// Time from sending the request to the first body frame.
    pub first_frame: Option<Duration>,
    /// The body ended with an error (connection cut) rather than cleanly.
    pub broken: bool,
}

impl StreamResp {
    /// The whole body.
    pub fn body(&self) -> String {
        self.frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    /// The `data:` payloads, in order.
    pub fn events(&self) -> Vec<String> {
        self.body()
            .split("\n\n")
            .filter_map(|e| {
                e.lines()
                    .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                    .map(str::to_string)
            })
            .collect()
    }

    /// The JSON events (everything but `[DONE]`).
    pub fn json_events(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter(|e| e.as_str() != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap_or(Value::Null))
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The test client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Self::with_roots(&[])
    }

    /// A client that also trusts `roots` (self-signed test certificates).
    pub fn with_roots(roots: &[CertificateDer<'static>]) -> Self {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).expect("add root");
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(store)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .build(https),
        }
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(method).uri(url);
        let mut has_ct = false;
        for (k, v) in headers {
            has_ct |= k.eq_ignore_ascii_case("content-type");
            b = b.header(*k, *v);
        }
        if !has_ct {
            b = b.header("content-type", "application/json");
        }
        b.body(Full::new(body)).expect("request")
    }

    /// POST a body and read the whole answer.
    pub async fn post(&self, url: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::POST, url, body, headers).await
    }

    /// POST JSON.
    pub async fn post_json(&self, url: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        self.post(url, Bytes::from(body.to_string()), headers).await
    }

    /// GET.
    pub async fn get(&self, url: &str) -> Resp {
        self.send(Method::GET, url, Bytes::new(), &[]).await
    }

    /// GET with extra headers.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(Method::GET, url, Bytes::new(), headers).await
    }

    /// Any method, with headers, reading the whole answer.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let req = self.request(method, url, body.into(), headers);
        let resp = self.inner.request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// POST and keep each body frame as it arrived.
    pub async fn post_stream(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> StreamResp {
        self.post_stream_limit(url, body, headers, usize::MAX).await
    }

    /// Like `post_stream`, but stop reading (and drop the connection) after `max_frames`.
    pub async fn post_stream_limit(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
        max_frames: usize,
    ) -> StreamResp {
        let start = Instant::now();
        let req = self.request(Method::POST, url, Bytes::from(body.to_string()), headers);
        let resp = self.inner.request(req).await.expect("request failed");
        let (parts, mut body) = resp.into_parts();
        let mut frames = Vec::new();
        let mut first_frame = None;
        let mut broken = false;
        while frames.len() < max_frames {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        first_frame.get_or_insert_with(|| start.elapsed());
                        frames.push(d);
                    }
                }
                Some(Err(_)) => {
                    broken = true;
                    break;
                }
                None => break,
            }
        }
        StreamResp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            frames,
            first_frame,
            broken,
        }
    }
}
