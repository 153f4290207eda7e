//! The two OTLP transports: gRPC and HTTP/protobuf, over one pooled hyper client.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_sdk::Resource;

use crate::wire::{ScopeBatch, encode_resource};

/// gRPC method of the OTLP trace service.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (HTTP/2 without TLS, prior knowledge), usually port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, usually port 4318, path `/v1/traces`.
    HttpProtobuf,
}

impl Protocol {
    /// `grpc`, or `http` / `http/protobuf` (the values of `OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "grpc" => Some(Protocol::Grpc),
            "http" | "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// Sends encoded batches to one collector.
#[derive(Debug)]
pub struct Exporter {
    protocol: Protocol,
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The `Resource` message, encoded once.
    resource: Vec<u8>,
    timeout: Duration,
}

impl Exporter {
    /// An exporter for `endpoint` (`http://host:port`; for HTTP a base URL gets `/v1/traces`).
    /// The error quotes the endpoint and says what is wrong; the caller names the setting.
    pub fn new(
        endpoint: &str,
        protocol: Protocol,
        resource: &Resource,
        timeout: Duration,
    ) -> Result<Exporter, String> {
        let url = match protocol {
            Protocol::Grpc => format!("{}{GRPC_PATH}", endpoint.trim_end_matches('/')),
            Protocol::HttpProtobuf => match endpoint.split_once("://") {
                // OTLP/HTTP posts to `<base>/v1/traces`; accept the base URL users usually give.
                Some((_, rest)) if !rest.trim_end_matches('/').contains('/') => {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                }
                _ => endpoint.to_string(),
            },
        };
        // No TLS: collectors usually run beside the process (an agent or sidecar), and a
        // silent failure on every export would be worse than saying so at start.
        if endpoint.starts_with("https://") {
            return Err(format!(
                "\"{endpoint}\": OTLP over TLS is not supported yet; send to a local collector over http://"
            ));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("\"{endpoint}\": not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!("\"{endpoint}\": expected http://host:port"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(60));
        if protocol == Protocol::Grpc {
            builder.http2_only(true);
        }
        let mut res = Vec::new();
        encode_resource(&mut res, resource);
        Ok(Exporter {
            protocol,
            uri,
            client: builder.build(connector),
            resource: res,
            timeout,
        })
    }

    /// Length of the encoded `Resource` message (the room a [`ScopeBatch`] leaves for it).
    pub fn resource_len(&self) -> usize {
        self.resource.len()
    }

    /// Send one batch, made with room for [`Exporter::resource_len`] bytes; the error says
    /// what the collector answered.
    pub async fn export(&self, batch: ScopeBatch) -> Result<(), String> {
        let grpc = self.protocol == Protocol::Grpc;
        let body = batch.into_body(&self.resource, grpc);
        let content_type = if grpc {
            "application/grpc"
        } else {
            "application/x-protobuf"
        };
        let mut req = Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        if grpc {
            req.headers_mut()
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        let answer = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach the collector: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("the collector's answer broke off: {e}"))?;
            let trailers = body.trailers().cloned();
            if !parts.status.is_success() {
                return Err(format!("the collector answered HTTP {}", parts.status));
            }
            if grpc {
                // A gRPC status comes in the trailers, or in the headers of a
                // trailers-only answer.
                let status = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .or_else(|| parts.headers.get("grpc-status"));
                let code = status.and_then(|v| v.to_str().ok()).unwrap_or("");
                if code != "0" {
                    let message = trailers
                        .as_ref()
                        .and_then(|t| t.get("grpc-message"))
                        .or_else(|| parts.headers.get("grpc-message"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    return Err(format!(
                        "the collector answered gRPC status {} {message}",
                        if code.is_empty() { "(none)" } else { code }
                    ));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}s", self.timeout.as_secs())),
        }
    }
}
