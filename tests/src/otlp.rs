//! An in-process OTLP trace receiver on `127.0.0.1:0`, speaking gRPC (the collector's
//! `TraceService` from `opentelemetry-proto`, served by tonic over hyper) or OTLP/HTTP
//! protobuf (`POST /v1/traces`). It keeps every span it receives (flattened into
//! [`ReceivedSpan`]) or, as the benchmark's sink, only counts them.
//!
//! The counting sink does not build the protobuf messages: it walks the wire format just far
//! enough to count spans (see [`count_spans`]). It shares the benchmark's two cores with the
//! gateway, where a real collector would run on its own; decoding every span into owned
//! messages there cost about a quarter of a core at 20k requests/s and was charged to the
//! gateway's throughput.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::Value;
use tokio::net::TcpListener;

/// One received span, with ids as lowercase hex and attributes as JSON values.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub attributes: HashMap<String, Value>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// `service.name` of the resource that sent it.
    pub service: String,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }
}

pub const KIND_INTERNAL: i32 = 1;
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;

#[derive(Debug, Default)]
struct Store {
    keep: bool,
    spans: Mutex<Vec<ReceivedSpan>>,
    count: AtomicU64,
    requests: AtomicU64,
    /// Encoded bytes of the export requests (the counting sink's messages).
    bytes: AtomicU64,
}

impl Store {
    fn take(&self, req: ExportTraceServiceRequest) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut n = 0;
        let mut out = Vec::new();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(json_of)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    n += 1;
                    if self.keep {
                        out.push(ReceivedSpan {
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent_span_id: hex(&s.parent_span_id),
                            name: s.name,
                            kind: s.kind,
                            attributes: attrs(&s.attributes),
                            links: s
                                .links
                                .iter()
                                .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                                .collect(),
                            status_code: s.status.map(|st| st.code).unwrap_or(0),
                            start_ns: s.start_time_unix_nano,
                            end_ns: s.end_time_unix_nano,
                            service: service.clone(),
                        });
                    }
                }
            }
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        if self.keep {
            self.spans.lock().expect("lock").extend(out);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(json_of).unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn json_of(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::from(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(json_of).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => Value::Object(
            l.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map(json_of).unwrap_or(Value::Null),
                    )
                })
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::from(hex(b)),
        // Newer proto versions add variants; the gateway does not send them.
        #[allow(unreachable_patterns)]
        _ => Value::Null,
    }
}

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Which OTLP transport the receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    /// The value of `[telemetry] otlp_protocol`.
    pub fn config_name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// A running receiver. Stops when dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    store: Arc<Store>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Start a receiver that keeps every span (tests).
    pub async fn start(protocol: Protocol) -> OtlpReceiver {
        Self::start_with(protocol, true).await
    }

    /// Start a receiver that only counts spans (the benchmark's sink).
    pub async fn start_counting(protocol: Protocol) -> OtlpReceiver {
        Self::start_with(protocol, false).await
    }

    async fn start_with(protocol: Protocol, keep: bool) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind otlp");
        let addr = listener.local_addr().expect("otlp addr");
        let store = Arc::new(Store {
            keep,
            ..Store::default()
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let s = store.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = &mut rx => return,
                };
                let Ok((stream, _)) = conn else { continue };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(stream);
                let s = s.clone();
                tokio::spawn(async move {
                    if !s.keep {
                        let svc = service_fn(move |req| count_export(s.clone(), protocol, req));
                        let _ = match protocol {
                            Protocol::Grpc => {
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .serve_connection(io, svc)
                                    .await
                            }
                            Protocol::Http => {
                                hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, svc)
                                    .await
                            }
                        };
                        return;
                    }
                    match protocol {
                        Protocol::Grpc => {
                            let svc = TowerToHyperService::new(TraceServiceServer::new(Grpc(s)));
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        }
                        Protocol::Http => {
                            let svc = service_fn(move |req| http_export(s.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await;
                        }
                    }
                });
            }
        });
        OtlpReceiver {
            addr,
            protocol,
            store,
            _stop: tx,
        }
    }

    /// The `[telemetry]` table pointing the gateway here.
    pub fn config(&self, sample_ratio: f64, extra: &str) -> String {
        format!(
            "[telemetry]\notlp_endpoint = \"http://{}\"\notlp_protocol = \"{}\"\nsample_ratio = {sample_ratio}\n{extra}\n",
            self.addr,
            self.protocol.config_name()
        )
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans.lock().expect("lock").clone()
    }

    /// Spans received (kept or not).
    pub fn span_count(&self) -> u64 {
        self.store.count.load(Ordering::Relaxed)
    }

    /// Export calls received.
    pub fn export_requests(&self) -> u64 {
        self.store.requests.load(Ordering::Relaxed)
    }

    /// Encoded bytes received by the counting sink (protobuf messages, without framing).
    pub fn bytes_received(&self) -> u64 {
        self.store.bytes.load(Ordering::Relaxed)
    }

    /// Wait until `done` holds for the spans received so far; those spans, or a panic
    /// listing them.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if start.elapsed() > timeout {
                let all: Vec<(String, String, String)> = spans
                    .into_iter()
                    .map(|s| (s.service, s.trace_id, s.name))
                    .collect();
                panic!("the spans wanted did not arrive; received {all:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the spans of `trace_id` include one named each of `names`; all spans of
    /// that trace, or a panic listing what did arrive.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        names: &[&str],
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let start = Instant::now();
        loop {
            let spans: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                return spans;
            }
            if start.elapsed() > timeout {
                let all: Vec<(String, String)> = self
                    .spans()
                    .into_iter()
                    .map(|s| (s.trace_id, s.name))
                    .collect();
                panic!("trace {trace_id}: wanted spans {names:?}; received {all:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The counting sink's answer to one export call (either transport): count the spans and
/// answer success (for gRPC as a trailers-only response, status in the headers).
async fn count_export(
    store: Arc<Store>,
    protocol: Protocol,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let message = match protocol {
        // gRPC frames the message: 1 byte compression flag, 4 bytes length.
        Protocol::Grpc => body.get(5..).unwrap_or_default(),
        Protocol::Http => &body[..],
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    match count_spans(message) {
        Some(n) => {
            store.requests.fetch_add(1, Ordering::Relaxed);
            store
                .bytes
                .fetch_add(message.len() as u64, Ordering::Relaxed);
            store.count.fetch_add(n, Ordering::Relaxed);
            let h = resp.headers_mut();
            match protocol {
                Protocol::Grpc => {
                    h.insert(
                        "content-type",
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    h.insert("grpc-status", http::HeaderValue::from_static("0"));
                }
                Protocol::Http => {
                    h.insert(
                        "content-type",
                        http::HeaderValue::from_static("application/x-protobuf"),
                    );
                }
            }
        }
        None => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    Ok(resp)
}

/// Spans in an encoded `ExportTraceServiceRequest`, counted by walking the protobuf wire
/// format (`resource_spans` = 1 → `scope_spans` = 2 → `spans` = 2) without decoding the
/// spans themselves; `None` if the bytes are not well-formed at those levels.
pub fn count_spans(buf: &[u8]) -> Option<u64> {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// Calls `f(field, bytes)` for each length-delimited field of a message; skips the rest.
    fn fields(b: &[u8], mut f: impl FnMut(u64, &[u8]) -> Option<()>) -> Option<()> {
        let mut i = 0;
        while i < b.len() {
            let key = varint(b, &mut i)?;
            match key & 7 {
                0 => {
                    varint(b, &mut i)?;
                }
                1 => i += 8,
                5 => i += 4,
                2 => {
                    let len = usize::try_from(varint(b, &mut i)?).ok()?;
                    let v = b.get(i..i.checked_add(len)?)?;
                    i += len;
                    f(key >> 3, v)?;
                }
                _ => return None,
            }
        }
        (i == b.len()).then_some(())
    }
    let mut n = 0u64;
    fields(buf, |field, resource_spans| {
        if field != 1 {
            return Some(());
        }
        fields(resource_spans, |field, scope_spans| {
            if field != 2 {
                return Some(());
            }
            fields(scope_spans, |field, _span| {
                if field == 2 {
                    n += 1;
                }
                Some(())
            })
        })
    })?;
    Some(n)
}

async fn http_export(
    store: Arc<Store>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path_ok = req.uri().path() == "/v1/traces";
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    if !path_ok {
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return Ok(resp);
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(r) => {
            store.take(r);
            let out = ExportTraceServiceResponse {
                partial_success: None,
            }
            .encode_to_vec();
            *resp.body_mut() = Full::new(Bytes::from(out));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-protobuf"),
            );
        }
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn spans_are_counted_from_the_wire_format() {
        let span = |name: &str| Span {
            name: name.into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 7,
            ..Span::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![
                        ScopeSpans {
                            spans: vec![span("a"), span("b")],
                            ..ScopeSpans::default()
                        },
                        ScopeSpans {
                            spans: vec![span("c")],
                            ..ScopeSpans::default()
                        },
                    ],
                    ..ResourceSpans::default()
                },
                ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span("d")],
                        ..ScopeSpans::default()
                    }],
                    ..ResourceSpans::default()
                },
            ],
        };
        let bytes = req.encode_to_vec();
        assert_eq!(count_spans(&bytes), Some(4));
        assert_eq!(count_spans(&bytes[..bytes.len() - 3]), None);
    }
}
