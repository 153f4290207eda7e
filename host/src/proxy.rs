//! The request lifecycle: the one place that knows the order of the phases.
//!
//! ```text
//! read body ─► parse ─► route ─► upstream attempt ─► respond (complete or streamed)
//! ```
//!
//! Each phase is a function over the per-request [`RequestCtx`] returning
//! `Result<_, GatewayError>`; the first error becomes the client's answer through
//! `GatewayError::to_response`, and every outcome is counted and logged once, here.
//! Later stages (authentication, plugins, fallback, shadow, ledger) slot in as further
//! phases of this same sequence. Telemetry (`ctx.telemetry`, `ctx.attempt`) follows the
//! request: a server span from start to finish, a CLIENT span per upstream attempt, and one
//! access-log line at the end (for streams, when the stream ends).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::GatewayBody;
use crate::config::{Endpoint, Route, Runtime, Target};
use crate::error::{GatewayError, snippet};
use crate::gateway::Gateway;
use crate::metrics;
use crate::openai::{self, RequestBody, ResponseProbe};
use crate::router;
use crate::sse::{StreamBody, StreamOutcome, StreamSummary};
use crate::telemetry::{self, AnswerFacts, Attempt, RequestTelemetry};
use crate::upstream;

/// Response header naming the backend that served the answer.
pub const HEADER_BACKEND: &str = "x-switchyard-backend";
/// Response header naming the model sent upstream.
pub const HEADER_MODEL: &str = "x-switchyard-model";

/// Largest upstream answer the gateway buffers (non-streamed answers and error bodies).
const MAX_UPSTREAM_BODY: usize = 256 * 1024 * 1024;

/// What the gateway knows about one request as it moves through the phases.
pub struct RequestCtx {
    pub endpoint: Endpoint,
    pub started: Instant,
    /// The config version this request runs under, start to finish.
    pub runtime: Arc<Runtime>,
    pub route: Option<Arc<Route>>,
    pub target: Option<Target>,
    /// The model name sent upstream.
    pub upstream_model: Option<Arc<str>>,
    /// Time spent waiting on the upstream (for the gateway-overhead metric).
    pub upstream_time: Duration,
    /// The request's server span and access-log record.
    pub telemetry: RequestTelemetry,
    /// The upstream attempt in progress (its span ends with it).
    pub attempt: Option<Attempt>,
}

impl RequestCtx {
    fn route_label(&self) -> Arc<str> {
        self.route
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| Arc::from(metrics::NONE))
    }

    fn backend_label(&self) -> Arc<str> {
        self.target
            .as_ref()
            .map(|t| t.backend.name.clone())
            .unwrap_or_else(|| Arc::from(metrics::NONE))
    }
}

/// Entry point for every HTTP request the server accepts.
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<GatewayBody> {
    let method = req.method().clone();
    let path = req.uri().path();
    match (path, &method) {
        ("/v1/chat/completions", &Method::POST) => proxy(gw, req, Endpoint::ChatCompletions).await,
        ("/v1/completions", &Method::POST) => proxy(gw, req, Endpoint::Completions).await,
        ("/v1/embeddings", &Method::POST) => proxy(gw, req, Endpoint::Embeddings).await,
        ("/v1/models", &Method::GET) => json(
            StatusCode::OK,
            openai::models_list(gw.runtime().model_names()),
        ),
        ("/healthz", &Method::GET) => text(StatusCode::OK, "ok\n"),
        ("/readyz", &Method::GET) => {
            if gw.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        ("/metrics", &Method::GET) => {
            let mut r = Response::new(GatewayBody::from(gw.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (p, &Method::GET) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            let rt = gw.runtime();
            match rt.model_names().find(|n| *n == id) {
                Some(n) => json(
                    StatusCode::OK,
                    Bytes::from(
                        serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "switchyard"})
                            .to_string(),
                    ),
                ),
                None => GatewayError::UnknownModel(id.to_string()).to_response(),
            }
        }
        (
            "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/embeddings"
            | "/v1/models"
            | "/healthz"
            | "/readyz"
            | "/metrics",
            _,
        ) => GatewayError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
        }
        .to_response(),
        _ => GatewayError::NotFound {
            method: method.to_string(),
            path: path.to_string(),
        }
        .to_response(),
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// One proxied OpenAI request, start to finish.
async fn proxy(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> Response<GatewayBody> {
    let _in_flight = gw.metrics.in_flight();
    let started = Instant::now();
    let telemetry = RequestTelemetry::start(req.method(), endpoint_path(endpoint), req.headers());
    let mut ctx = RequestCtx {
        endpoint,
        started,
        runtime: gw.runtime(),
        route: None,
        target: None,
        upstream_model: None,
        upstream_time: Duration::ZERO,
        telemetry,
        attempt: None,
    };
    match run(&gw, &mut ctx, req).await {
        Ok(Answer::Complete(resp)) => {
            finish(&gw, &mut ctx, resp.status(), None);
            resp
        }
        // Streams are counted when they end (see `stream_answer`).
        Ok(Answer::Streaming(resp)) => resp,
        Err(e) => {
            let status = e.status();
            log_failure(&ctx, &e);
            if e.is_upstream_failure() || matches!(e, GatewayError::UpstreamError { .. }) {
                gw.metrics.upstream_error(&ctx.backend_label(), e.kind());
            }
            if let Some(a) = ctx.attempt.take() {
                let upstream_status = match &e {
                    GatewayError::UpstreamError { status, .. } => Some(status.as_u16()),
                    GatewayError::UpstreamStatus { status, .. } => Some(*status),
                    _ => None,
                };
                a.failed(&gw.metrics, e.kind(), upstream_status);
            }
            finish(&gw, &mut ctx, status, Some(e.kind()));
            let mut resp = e.to_response::<GatewayBody>();
            if let Some(t) = &ctx.target {
                stamp(resp.headers_mut(), t, ctx.upstream_model.as_deref());
            }
            resp
        }
    }
}

enum Answer {
    Complete(Response<GatewayBody>),
    Streaming(Response<GatewayBody>),
}

/// The phases, in order.
async fn run(
    gw: &Arc<Gateway>,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Answer, GatewayError> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, &parts.headers, ctx.runtime.server.max_body_bytes).await?;
    let request = RequestBody::parse(bytes, ctx.endpoint)?;
    ctx.telemetry.request_model = Some(request.model.clone());
    ctx.telemetry.stream = request.stream;

    let routing_started = std::time::SystemTime::now();
    let route = router::route(&ctx.runtime, &request.model)?.clone();
    let target = router::choose_target(&route).clone();
    let model: Arc<str> = Arc::from(router::upstream_model(&target, &request.model));
    telemetry::routing_span(
        &ctx.telemetry,
        &route.name,
        &target.backend.name,
        &model,
        routing_started,
    )
    .end();
    ctx.route = Some(route);
    ctx.target = Some(target.clone());
    ctx.upstream_model = Some(model.clone());

    let url = router::pick_url(&target);
    let body = request.upstream_body(&model, true);
    let mut upstream_req =
        upstream::build_request(&target.backend, url.uri(ctx.endpoint), body, &parts.headers)?;
    let attempt = Attempt::start(
        &ctx.telemetry,
        ctx.endpoint,
        &target.backend.name,
        &url.base,
        &model,
        telemetry::request_params(&ctx.telemetry, &request, ctx.endpoint),
    );
    attempt.inject(upstream_req.headers_mut());
    ctx.attempt = Some(attempt);
    let sent = Instant::now();
    let resp = upstream::send(&target.backend, url, upstream_req).await?;
    ctx.upstream_time = sent.elapsed();

    if !resp.status().is_success() {
        return Err(upstream_failure(&target, resp).await);
    }
    if request.stream {
        stream_answer(
            gw,
            ctx,
            &target,
            &model,
            resp,
            request.strip_usage_chunk(true),
            sent,
        )
        .await
        .map(Answer::Streaming)
    } else {
        let (resp, facts) = complete_answer(ctx, &target, &model, resp, sent).await?;
        ctx.telemetry.usage = facts.usage;
        if let Some(a) = ctx.attempt.take() {
            a.succeeded(&gw.metrics, &facts);
        }
        Ok(Answer::Complete(resp))
    }
}

/// Read the client's body, refusing more than `limit` bytes (by header before reading).
async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(GatewayError::BodyTooLarge { limit })
            } else {
                Err(GatewayError::BodyRead(upstream::error_chain(&*e)))
            }
        }
    }
}

/// Read a complete upstream body within the backend's timeout.
async fn collect_upstream(
    target: &Target,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let backend = &target.backend;
    match tokio::time::timeout(backend.timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(GatewayError::UpstreamTimeout {
            backend: backend.name.to_string(),
            phase: "reading the answer",
            secs: backend.timeout.as_secs_f64(),
        }),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(GatewayError::UpstreamBroken {
            backend: backend.name.to_string(),
            detail: format!("while reading the answer: {}", upstream::error_chain(&*e)),
        }),
    }
}

/// A non-2xx upstream answer: relayed as-is when OpenAI-shaped, else wrapped.
async fn upstream_failure(target: &Target, resp: Response<Incoming>) -> GatewayError {
    let status = resp.status();
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let body = match collect_upstream(target, resp.into_body(), 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return e,
    };
    if openai::is_openai_error_body(&body) {
        GatewayError::UpstreamError {
            backend: target.backend.name.to_string(),
            status,
            body,
            retry_after,
        }
    } else {
        GatewayError::UpstreamStatus {
            backend: target.backend.name.to_string(),
            status: status.as_u16(),
            snippet: snippet(&body, 200),
        }
    }
}

/// A complete (non-streamed) answer: read it, check it is JSON, relay it byte for byte.
async fn complete_answer(
    ctx: &mut RequestCtx,
    target: &Target,
    model: &str,
    resp: Response<Incoming>,
    sent: Instant,
) -> Result<(Response<GatewayBody>, AnswerFacts), GatewayError> {
    let (parts, body) = resp.into_parts();
    let bytes = collect_upstream(target, body, MAX_UPSTREAM_BODY).await?;
    ctx.upstream_time = sent.elapsed();
    let Some(probe) = ResponseProbe::read(&bytes) else {
        return Err(GatewayError::UpstreamGarbage {
            backend: target.backend.name.to_string(),
            detail: format!("expected a JSON object, got: {}", snippet(&bytes, 120)),
        });
    };
    let facts = telemetry::answer_facts(&ctx.telemetry, probe, &bytes);
    let mut out = Response::new(GatewayBody::from(bytes));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    stamp(out.headers_mut(), target, Some(model));
    Ok((out, facts))
}

/// A streamed answer: wait for the first chunk (so a failure before any byte can still be
/// answered with a proper error), then relay frames as they come.
async fn stream_answer(
    gw: &Arc<Gateway>,
    ctx: &mut RequestCtx,
    target: &Target,
    model: &str,
    resp: Response<Incoming>,
    strip_usage: bool,
    sent: Instant,
) -> Result<Response<GatewayBody>, GatewayError> {
    let (parts, mut body) = resp.into_parts();
    let backend = &target.backend;
    let first = loop {
        let next = tokio::time::timeout(backend.first_byte_timeout, body.frame()).await;
        match next {
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout {
                    backend: backend.name.to_string(),
                    phase: "waiting for the first chunk of the stream",
                    secs: backend.first_byte_timeout.as_secs_f64(),
                });
            }
            Ok(None) => {
                return Err(GatewayError::UpstreamBroken {
                    backend: backend.name.to_string(),
                    detail: "the stream ended before its first chunk".into(),
                });
            }
            Ok(Some(Err(e))) => {
                return Err(GatewayError::UpstreamBroken {
                    backend: backend.name.to_string(),
                    detail: format!("before the first chunk: {}", upstream::error_chain(&e)),
                });
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) if !d.is_empty() => break d,
                _ => continue,
            },
        }
    };
    ctx.upstream_time = sent.elapsed();
    gw.metrics
        .overhead(ctx.started.elapsed().saturating_sub(ctx.upstream_time));
    gw.metrics.upstream(&target.backend.name, ctx.upstream_time);
    ctx.telemetry.ttft = Some(ctx.started.elapsed());

    let metrics = gw.metrics.clone();
    let route = ctx.route_label();
    let backend_label = ctx.backend_label();
    let started = ctx.started;
    let mut tel = std::mem::take(&mut ctx.telemetry);
    let attempt = ctx.attempt.take();
    let first_token = ctx.upstream_time;
    let upstream_model = model.to_string();
    let endpoint = ctx.endpoint;
    let on_end = Box::new(move |s: StreamSummary| {
        let mut error = None;
        if s.outcome == StreamOutcome::ClientGone {
            metrics.client_disconnect();
            error = Some("client_disconnected");
            tracing::info!(route = %route, backend = %backend_label, bytes = s.bytes, "client disconnected mid-stream; upstream request cancelled");
        }
        if let StreamOutcome::UpstreamFailed(why) = &s.outcome {
            metrics.upstream_error(&backend_label, "stream_broken");
            error = Some("stream_broken");
            tracing::warn!(route = %route, backend = %backend_label, error = %why, "stream ended early");
        }
        let took = started.elapsed();
        metrics.request(&route, &backend_label, 200, took);
        tel.usage = s.usage;
        if let Some(a) = attempt {
            match error {
                None => a.succeeded(
                    &metrics,
                    &AnswerFacts {
                        response_model: s.model,
                        finish_reasons: s.finish_reasons,
                        usage: s.usage,
                        first_token: Some(first_token),
                        ..AnswerFacts::default()
                    },
                ),
                Some(kind) => a.failed(&metrics, kind, None),
            }
        }
        tel.finish_span(200, &route, &backend_label, error);
        telemetry::access_log(
            &tel,
            &telemetry::AccessRecord {
                method: "POST",
                path: endpoint_path(endpoint),
                route: &route,
                backend: &backend_label,
                upstream_model: &upstream_model,
                status: 200,
                latency: took,
                upstream: Some(first_token),
                error,
            },
        );
    });
    let stream = StreamBody::new(
        body,
        first,
        strip_usage,
        backend.timeout,
        backend.name.to_string(),
        ctx.started,
        on_end,
    );
    let mut out = Response::new(GatewayBody::Stream(Box::new(stream)));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    stamp(out.headers_mut(), target, Some(model));
    Ok(out)
}

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if upstream::forwardable_response_header(name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Add `x-switchyard-backend` and `x-switchyard-model`.
fn stamp(headers: &mut HeaderMap, target: &Target, model: Option<&str>) {
    if let Ok(v) = HeaderValue::from_str(&target.backend.name) {
        headers.insert(HEADER_BACKEND, v);
    }
    if let Some(m) = model
        && let Ok(v) = HeaderValue::from_str(m)
    {
        headers.insert(HEADER_MODEL, v);
    }
}

/// The path of an endpoint (the server span's route and the access log's path).
fn endpoint_path(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
        Endpoint::Embeddings => "/v1/embeddings",
    }
}

/// Count, trace and log a request answered in one piece (streams: see `stream_answer`).
fn finish(gw: &Gateway, ctx: &mut RequestCtx, status: StatusCode, error: Option<&str>) {
    let took = ctx.started.elapsed();
    let route = ctx.route_label();
    let backend = ctx.backend_label();
    gw.metrics.request(&route, &backend, status.as_u16(), took);
    let upstream = (ctx.upstream_time > Duration::ZERO).then_some(ctx.upstream_time);
    if let Some(u) = upstream {
        gw.metrics.overhead(took.saturating_sub(u));
        gw.metrics.upstream(&backend, u);
    }
    ctx.telemetry
        .finish_span(status.as_u16(), &route, &backend, error);
    telemetry::access_log(
        &ctx.telemetry,
        &telemetry::AccessRecord {
            method: "POST",
            path: endpoint_path(ctx.endpoint),
            route: &route,
            backend: &backend,
            upstream_model: ctx.upstream_model.as_deref().unwrap_or("-"),
            status: status.as_u16(),
            latency: took,
            upstream,
            error,
        },
    );
}

fn log_failure(ctx: &RequestCtx, e: &GatewayError) {
    let route = ctx.route.as_ref().map(|r| &*r.name).unwrap_or("-");
    let backend = ctx.target.as_ref().map(|t| &*t.backend.name).unwrap_or("-");
    let status = e.status().as_u16();
    if e.status().is_server_error() || matches!(e, GatewayError::UpstreamError { .. }) {
        tracing::warn!(route, backend, status, kind = e.kind(), error = %e, "request failed");
    } else {
        tracing::info!(route, backend, status, kind = e.kind(), error = %e, "request rejected");
    }
}
