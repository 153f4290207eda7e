//! The request lifecycle: the one place that knows the order of the phases.
//!
//! ```text
//! read body ─► parse ─► route ─► flags (override, pin) ─► attempt loop (fallback, breaker,
//! pool; `attempt`) ─► respond (complete or streamed) ─► mirror to shadow (`shadow`)
//! ```
//!
//! Each phase is a function over the per-request [`RequestCtx`] returning
//! `Result<_, GatewayError>`; the first error becomes the client's answer through
//! `GatewayError::to_response`, and every outcome is counted and logged once, here.
//! Later stages (authentication, plugins, fallback, shadow, ledger, tracing) slot in as
//! further phases of this same sequence.

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
use crate::plugins::{self, Pass, ValidateOutcome};
use crate::router;
use crate::sse::{StreamBody, StreamOutcome, StreamSummary};
use crate::telemetry::{self, AnswerFacts, Attempt, RequestTelemetry};
use crate::upstream;
use crate::{attempt, flags, pool, shadow};

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
    /// The `x-switchyard-attempts` value, once the attempt loop ran.
    pub attempts: Option<HeaderValue>,
    /// Caller, tags and reservations (phase `auth`/`admit`), settled into the ledger.
    pub account: crate::governance::Account,
    /// The request's server span and access-log record.
    pub telemetry: RequestTelemetry,
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
        (p, _) if p.starts_with("/admin/") => {
            if let Some(refusal) = crate::admin::refusal(&gw.runtime(), &req) {
                return refusal;
            }
            if p.starts_with("/admin/keys") || p.starts_with("/admin/spend") {
                crate::governance::admin::handle(gw, req).await
            } else {
                crate::admin::handle(gw, req).await
            }
        }
        ("/readyz", &Method::GET) => {
            if gw.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        ("/metrics", &Method::GET) => {
            let mut text = gw.metrics.render();
            pool::render_metrics(&gw.runtime(), &mut text);
            attempt::render_metrics(&mut text);
            shadow::render_metrics(&mut text);
            gw.plugins.metrics.render(&mut text);
            if let Some(g) = &gw.governance {
                g.render_metrics(&mut text);
            }
            let mut r = Response::new(GatewayBody::from(text));
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
    let telemetry = RequestTelemetry::start(req.method(), endpoint_path(endpoint), req.headers());
    let mut ctx = RequestCtx {
        endpoint,
        started: Instant::now(),
        runtime: gw.runtime(),
        route: None,
        target: None,
        upstream_model: None,
        upstream_time: Duration::ZERO,
        attempts: None,
        account: Default::default(),
        telemetry,
    };
    match run(&gw, &mut ctx, req).await {
        Ok(Answer::Complete(resp)) => {
            // Settled first, so the access log and the span carry the request's cost.
            if let Some(cost) =
                crate::governance::settle(&gw, &mut ctx, resp.status().as_u16(), None)
            {
                ctx.telemetry.set_cost(cost);
            }
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
            if let Some(cost) = crate::governance::settle(&gw, &mut ctx, status.as_u16(), Some(&e))
            {
                ctx.telemetry.set_cost(cost);
            }
            finish(&gw, &mut ctx, status, Some(e.kind()));
            let mut resp = e.to_response::<GatewayBody>();
            if let Some(t) = &ctx.target {
                stamp(resp.headers_mut(), t, ctx.upstream_model.as_deref());
            }
            if let Some(h) = ctx.attempts.take() {
                resp.headers_mut().insert(attempt::HEADER_ATTEMPTS, h);
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
    // The key check's span, when there is a check (client auth on).
    let mut auth = if crate::governance::client_auth_on(gw, ctx) {
        telemetry::child_span(&ctx.telemetry, "auth")
    } else {
        telemetry::Span::default()
    };
    let authenticated = crate::governance::authenticate(gw, ctx, &parts.headers);
    if let Err(e) = &authenticated {
        auth.fail(e.kind());
    }
    auth.end();
    authenticated?;
    if let Some(k) = &ctx.account.key {
        ctx.telemetry
            .set_principal(Arc::from(k.id.as_str()), Some(Arc::from(k.team.as_str())));
    }
    let bytes = read_body(body, &parts.headers, ctx.runtime.server.max_body_bytes).await?;
    let request = RequestBody::parse(bytes, ctx.endpoint)?;
    ctx.telemetry.request_model = Some(request.model.clone());
    ctx.telemetry.stream = request.stream;
    let routing_started = std::time::SystemTime::now();
    let caller_info = plugins::CallerInfo {
        key_id: ctx.account.key.as_ref().map(|k| k.id.clone()),
        team: ctx.account.key.as_ref().map(|k| k.team.clone()),
        tags: ctx
            .account
            .key
            .as_ref()
            .map(|k| k.tags.clone())
            .unwrap_or_default(),
    };
    let mut pass = Pass::new(
        &gw.plugins,
        &request,
        ctx.endpoint,
        &parts.headers,
        caller_info,
    )
    .observed(ctx.telemetry.parent(), gw.metrics.clone());

    // Phase classify: a policy may pick the route and the target.
    let decision = pass.classify(&ctx.runtime, &gw.plugins.stats)?;
    let route = match decision.route {
        Some(r) => r,
        None => router::route(&ctx.runtime, &request.model)?.clone(),
    };
    ctx.route = Some(route.clone());
    // With virtual keys the caller is the authenticated key, and identity headers are
    // ignored (any client could set them); without keys the gateway trusts its network and
    // takes the team from `x-switchyard-team`.
    let caller = match &ctx.account.key {
        Some(k) => flags::Caller {
            key_id: Some(k.id.clone()),
            team: Some(k.team.clone()),
        },
        None => flags::Caller::from_headers(&parts.headers),
    };
    let chosen = match decision.target {
        Some(t) => t,
        None => flags::choose(&route, &caller, &parts.headers, &ctx.runtime.backends)?,
    };
    // Admission (limits, budget) prices the request at the chosen target.
    ctx.upstream_model = Some(Arc::from(router::upstream_model(&chosen, &request.model)));
    ctx.target = Some(chosen.clone());
    crate::governance::admit(gw, ctx, &parts.headers, &request, request.bytes().len()).await?;
    let _in_flight = gw.plugins.stats.start(&chosen.backend.name);
    telemetry::routing_span(
        &ctx.telemetry,
        &route.name,
        &chosen.backend.name,
        ctx.upstream_model.as_ref(),
        routing_started,
    )
    .end();
    let mut candidates = Vec::with_capacity(1 + route.fallback.len());
    candidates.push(chosen);
    candidates.extend(route.fallback.iter().cloned());

    // Fallback: the attempt loop decides who gets the request; `exchange` is one try.
    let last_tried: std::sync::Mutex<Option<(Target, Arc<str>)>> = std::sync::Mutex::new(None);
    let (endpoint, started) = (ctx.endpoint, ctx.started);
    // Shadow sampling is decided up front: a mirrored stream keeps a copy for comparison.
    let mirror = route.shadow.as_ref().filter(|s| shadow::sampled(s));
    let (capture, served_stream) = if mirror.is_some() && request.stream {
        let (slot, rx) = shadow::capture_channel();
        (Some(slot), Some(rx))
    } else {
        (None, None)
    };
    // A stream is settled into the ledger when it ends; the settler is put here once the
    // attempt loop knows which target answered (the body is not polled before that).
    let settle_slot: SettleSlot = Arc::default();
    // Likewise the server span and access line of a stream end with the stream.
    let tel_slot: TelSlot = Arc::default();
    let tel = &ctx.telemetry;
    // Phase validate runs inside the attempt loop, so a rejected answer moves on to the
    // next fallback; `validate` plugins win over any other configured check.
    // A stream is held until complete when a `validate` plugin asks to judge streams.
    let hold_stream = request.stream && pass.validates() && pass.holds_streams();
    let plugin_validator = pass
        .validates()
        .then(|| PluginValidator::new(&pass, &request));
    let other_validator = gw.validator.load_full();
    let validator: Option<&dyn attempt::Validate> = match &plugin_validator {
        Some(v) => Some(v),
        None => other_validator.as_ref().map(|v| &***v),
    };
    let (result, trail) = attempt::run(
        &candidates,
        route.flags.retries,
        &ctx.runtime.traffic,
        validator,
        |target, url, slot| {
            let model: Arc<str> = Arc::from(router::upstream_model(&target, &request.model));
            if let Ok(mut l) = last_tried.lock() {
                *l = Some((target.clone(), model.clone()));
            }
            // Phase adapt, per attempt: a fallback to another model family gets its own
            // rewrite of the client's original request.
            let adapted = pass.adapt(&target, &model);
            exchange(
                gw,
                endpoint,
                started,
                route.name.clone(),
                adapted,
                &request,
                &parts.headers,
                target,
                model,
                url,
                slot,
                capture.clone(),
                settle_slot.clone(),
                tel,
                tel_slot.clone(),
                hold_stream,
            )
        },
    )
    .await;
    if let Ok(Some((t, m))) = last_tried.into_inner() {
        ctx.target = Some(t);
        ctx.upstream_model = Some(m);
    }
    crate::governance::record_attempts(gw, ctx, &trail);
    let header = HeaderValue::from_str(&trail.header_value()).ok();
    if trail.eventful() {
        tracing::info!(route = %route.name, attempts = %trail.header_value(), answered = result.is_ok(), "fallback: more than one attempt");
    }
    ctx.attempts = header;
    let mut exchanged = result?;
    ctx.upstream_time = exchanged.upstream_time;
    if let Some(new) = plugin_validator.and_then(|v| v.replacement())
        && let Answer::Complete(resp) = &mut exchanged.answer
    {
        // A `validate` plugin replaced the answer: serve (and account) the replacement, as
        // events when the client asked for a stream (which was held).
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        *resp.body_mut() = if request.stream {
            let include_usage = !request.strip_usage_chunk(true);
            let events = crate::held::to_events(endpoint, &new, include_usage);
            exchanged.events = Some(events.clone());
            GatewayBody::from(events)
        } else {
            GatewayBody::from(new.clone())
        };
        exchanged.usage = ResponseProbe::read(&new).and_then(|p| p.usage);
        exchanged.body = Some(new);
    }
    match &exchanged.body {
        Some(body) => {
            ctx.account.usage = exchanged.usage;
            ctx.telemetry.usage = ctx.account.usage;
            if ctx.account.usage.is_none() {
                let model = ctx.upstream_model.as_deref().unwrap_or("");
                ctx.account.completion_estimate =
                    Some(crate::governance::estimate_completion(model, body));
            }
        }
        None => {
            if let Ok(mut slot) = settle_slot.lock() {
                *slot = crate::governance::settler(gw, ctx);
            }
            ctx.telemetry.ttft = Some(ctx.started.elapsed());
            if let Ok(mut slot) = tel_slot.lock() {
                *slot = Some(std::mem::take(&mut ctx.telemetry));
            }
        }
    }
    if let Some(h) = ctx.attempts.take() {
        exchanged
            .answer
            .headers_mut()
            .insert(attempt::HEADER_ATTEMPTS, h);
    }
    if let Some(sh) = mirror {
        // Fire and forget: a bounded queue, never a wait.
        // A stream relayed live delivers its copy when it ends; a held one is at hand.
        let served = match served_stream {
            Some(rx) if exchanged.body.is_none() => shadow::Served::Stream(rx),
            Some(_) => shadow::Served::Complete(exchanged.events.clone()),
            None => shadow::Served::Complete(exchanged.body.clone()),
        };
        shadow::mirror(
            &route,
            sh,
            ctx.endpoint,
            &request,
            &parts.headers,
            &exchanged.target,
            served,
            exchanged.upstream_time,
            gw.validator.load_full(),
            &ctx.telemetry.parent(),
        );
    }
    Ok(exchanged.answer)
}

/// Where a streamed answer's server span and access record wait for the stream's end.
type TelSlot = Arc<std::sync::Mutex<Option<RequestTelemetry>>>;

/// Where a streamed answer's ledger settlement waits for the stream's end.
type SettleSlot = Arc<std::sync::Mutex<Option<crate::governance::Settler>>>;

/// One answered exchange, as the attempt loop sees it.
struct Exchanged {
    answer: Answer,
    target: Target,
    upstream_time: Duration,
    /// The complete answer's body (not for streams relayed live), for validation and
    /// shadow comparison; for a held stream, the complete answer put together from it.
    body: Option<Bytes>,
    /// A held stream's events as served (what the shadow comparison reads for a stream).
    events: Option<Bytes>,
    /// The usage that body reported (read once, with the rest of the probe).
    usage: Option<openai::Usage>,
}

impl attempt::Answer for Exchanged {
    fn complete_body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }
}

impl Answer {
    fn headers_mut(&mut self) -> &mut HeaderMap {
        match self {
            Answer::Complete(r) | Answer::Streaming(r) => r.headers_mut(),
        }
    }
}

/// One exchange with one URL of one target: send, then read the answer (complete) or its
/// first chunk (stream). The in-flight slot is held until the answer is fully relayed.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    gw: &Arc<Gateway>,
    endpoint: Endpoint,
    started: Instant,
    route: Arc<str>,
    adapted: Result<Option<RequestBody>, GatewayError>,
    request: &RequestBody,
    client_headers: &HeaderMap,
    target: Target,
    model: Arc<str>,
    url: usize,
    slot: pool::Slot,
    capture: Option<shadow::CaptureSlot>,
    settle_slot: SettleSlot,
    tel: &RequestTelemetry,
    tel_slot: TelSlot,
    hold_stream: bool,
) -> Result<Exchanged, GatewayError> {
    let url = &target.backend.urls[url];
    let adapted = adapted?;
    let request = adapted.as_ref().unwrap_or(request);
    let body = request.upstream_body(&model, true);
    let mut upstream_req =
        upstream::build_request(&target.backend, url.uri(endpoint), body, client_headers)?;
    // One CLIENT span per attempt; its context travels upstream in `traceparent`.
    let attempt = Attempt::start(
        tel,
        endpoint,
        &target.backend.name,
        &url.peer,
        &model,
        telemetry::request_params(tel, request, endpoint),
    );
    attempt.inject(upstream_req.headers_mut());
    let failed = |a: Attempt, e: GatewayError| {
        let status = match &e {
            GatewayError::UpstreamError { status, .. } => Some(status.as_u16()),
            GatewayError::UpstreamStatus { status, .. } => Some(*status),
            _ => None,
        };
        a.failed(&gw.metrics, e.kind(), status);
        e
    };
    let sent = Instant::now();
    let resp = match upstream::send(&target.backend, url, upstream_req).await {
        Ok(r) => r,
        Err(e) => return Err(failed(attempt, e)),
    };

    if !resp.status().is_success() {
        let e = upstream_failure(&target, resp).await;
        // An upstream that answered (with an error) still took this long.
        gw.metrics.upstream(&target.backend.name, sent.elapsed());
        return Err(failed(attempt, e));
    }
    if request.stream && !hold_stream {
        let (answer, upstream_time) = stream_answer(
            gw,
            started,
            route,
            &target,
            &model,
            resp,
            request.strip_usage_chunk(true),
            sent,
            slot,
            capture,
            settle_slot,
            attempt,
            tel_slot,
            endpoint,
        )
        .await?;
        Ok(Exchanged {
            answer: Answer::Streaming(answer),
            target,
            upstream_time,
            body: None,
            events: None,
            usage: None,
        })
    } else {
        let answer = if request.stream {
            let strip_usage = request.strip_usage_chunk(true);
            held_answer(tel, &target, &model, resp, sent, endpoint, strip_usage).await
        } else {
            complete_answer(tel, &target, &model, resp, sent).await
        };
        let whole = match answer {
            Ok(w) => w,
            Err(e) => return Err(failed(attempt, e)),
        };
        let usage = whole.facts.usage;
        attempt.succeeded(&gw.metrics, whole.facts);
        gw.metrics
            .upstream(&target.backend.name, whole.upstream_time);
        drop(slot);
        Ok(Exchanged {
            answer: Answer::Complete(whole.resp),
            target,
            upstream_time: whole.upstream_time,
            body: Some(whole.body),
            events: whole.events,
            usage,
        })
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

/// An answer read whole before it is served.
struct Whole {
    /// What the client gets.
    resp: Response<GatewayBody>,
    /// The complete answer (for a held stream: put together from its chunks).
    body: Bytes,
    upstream_time: Duration,
    facts: AnswerFacts,
    /// A held stream's events, as served.
    events: Option<Bytes>,
}

/// A complete (non-streamed) answer: read it, check it is JSON, relay it byte for byte.
async fn complete_answer(
    tel: &RequestTelemetry,
    target: &Target,
    model: &str,
    resp: Response<Incoming>,
    sent: Instant,
) -> Result<Whole, GatewayError> {
    let (parts, body) = resp.into_parts();
    let bytes = collect_upstream(target, body, MAX_UPSTREAM_BODY).await?;
    let upstream_time = sent.elapsed();
    let Some(probe) = ResponseProbe::read(&bytes) else {
        return Err(GatewayError::UpstreamGarbage {
            backend: target.backend.name.to_string(),
            detail: format!("expected a JSON object, got: {}", snippet(&bytes, 120)),
        });
    };
    let facts = telemetry::answer_facts(tel, probe, &bytes);
    let mut out = Response::new(GatewayBody::from(bytes.clone()));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    stamp(out.headers_mut(), target, Some(model));
    Ok(Whole {
        resp: out,
        body: bytes,
        upstream_time,
        facts,
        events: None,
    })
}

/// A streamed answer held until complete (`validate_streams = "buffer"`): read it whole,
/// put the complete answer together for validation and accounting, serve the events.
async fn held_answer(
    tel: &RequestTelemetry,
    target: &Target,
    model: &str,
    resp: Response<Incoming>,
    sent: Instant,
    endpoint: Endpoint,
    strip_usage: bool,
) -> Result<Whole, GatewayError> {
    let (parts, body) = resp.into_parts();
    let sse = collect_upstream(target, body, MAX_UPSTREAM_BODY).await?;
    let upstream_time = sent.elapsed();
    let held = crate::held::assemble(endpoint, &sse, strip_usage).map_err(|detail| {
        GatewayError::UpstreamBroken {
            backend: target.backend.name.to_string(),
            detail,
        }
    })?;
    let facts = match ResponseProbe::read(&held.complete) {
        Some(probe) => telemetry::answer_facts(tel, probe, &held.complete),
        None => AnswerFacts::default(),
    };
    let mut out = Response::new(GatewayBody::from(held.events.clone()));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    out.headers_mut().remove(header::CONTENT_LENGTH);
    stamp(out.headers_mut(), target, Some(model));
    Ok(Whole {
        resp: out,
        body: held.complete,
        upstream_time,
        facts,
        events: Some(held.events),
    })
}

/// A streamed answer: wait for the first chunk (so a failure before any byte can still be
/// answered with a proper error), then relay frames as they come.
#[allow(clippy::too_many_arguments)]
async fn stream_answer(
    gw: &Arc<Gateway>,
    started: Instant,
    route: Arc<str>,
    target: &Target,
    model: &str,
    resp: Response<Incoming>,
    strip_usage: bool,
    sent: Instant,
    slot: pool::Slot,
    capture: Option<shadow::CaptureSlot>,
    settle_slot: SettleSlot,
    attempt: Attempt,
    tel_slot: TelSlot,
    tel_endpoint: Endpoint,
) -> Result<(Response<GatewayBody>, Duration), GatewayError> {
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
    let upstream_time = sent.elapsed();
    gw.metrics
        .overhead(started.elapsed().saturating_sub(upstream_time));
    gw.metrics.upstream(&target.backend.name, upstream_time);
    let upstream_model = model.to_string();

    let metrics = gw.metrics.clone();
    let backend_label = target.backend.name.clone();
    let capturing = capture.is_some();
    let on_end = Box::new(move |s: StreamSummary| {
        // The URL's in-flight slot is held until the stream ends.
        drop(slot);
        let cost = settle_slot
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .map(|settler| crate::governance::settle_stream(settler, &s));
        if let Some(tx) = capture.and_then(|c| c.lock().ok().and_then(|mut g| g.take())) {
            let sse = if s.outcome == StreamOutcome::Completed {
                s.captured.clone()
            } else {
                None
            };
            let _ = tx.send(shadow::StreamServed {
                sse,
                took: started.elapsed(),
            });
        }
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
        match error {
            None => attempt.succeeded(
                &metrics,
                AnswerFacts {
                    response_model: s.model.clone(),
                    finish_reasons: s.finish_reasons.clone(),
                    usage: s.usage,
                    first_token: Some(upstream_time),
                    ..AnswerFacts::default()
                },
            ),
            Some(kind) => attempt.failed(&metrics, kind, None),
        }
        if let Some(mut tel) = tel_slot.lock().ok().and_then(|mut g| g.take()) {
            tel.usage = s.usage;
            if let Some(c) = cost {
                tel.set_cost(c);
            }
            tel.finish_span(200, &route, &backend_label, error);
            telemetry::access_log(
                &tel,
                &telemetry::AccessRecord {
                    method: "POST",
                    path: endpoint_path(tel_endpoint),
                    route: &route,
                    backend: &backend_label,
                    upstream_model: &upstream_model,
                    status: 200,
                    latency: took,
                    upstream: Some(upstream_time),
                    error,
                },
            );
        }
    });
    let mut stream = StreamBody::new(
        body,
        first,
        strip_usage,
        backend.timeout,
        backend.name.to_string(),
        started,
        on_end,
    );
    if capturing {
        stream.capture();
    }
    let mut out = Response::new(GatewayBody::Stream(Box::new(stream)));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    stamp(out.headers_mut(), target, Some(model));
    Ok((out, upstream_time))
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
    }
    if let Some(t) = &ctx.target {
        // What `classify` plugins see as the backend's health and latency.
        gw.plugins.stats.record(
            &t.backend.name,
            status.is_success(),
            ctx.upstream_time.as_secs_f64() * 1e3,
        );
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

/// `validate` plugins as the attempt loop's answer check: a rejection moves the request to
/// the next fallback; a replacement is kept and served once the loop has its answer.
struct PluginValidator<'a> {
    pass: &'a Pass,
    client_model: String,
    replaced: std::sync::Mutex<Option<Bytes>>,
}

impl<'a> PluginValidator<'a> {
    fn new(pass: &'a Pass, request: &RequestBody) -> PluginValidator<'a> {
        PluginValidator {
            pass,
            client_model: request.model.to_string(),
            replaced: std::sync::Mutex::new(None),
        }
    }

    fn replacement(self) -> Option<Bytes> {
        self.replaced.into_inner().ok().flatten()
    }
}

impl attempt::Validate for PluginValidator<'_> {
    /// One `validate` span per answer checked (under the request's span, the plugin calls
    /// under it), with the backend and the verdict.
    fn validate(&self, target: &Target, body: &Bytes) -> attempt::Verdict {
        let model = router::upstream_model(target, &self.client_model);
        let mut span = telemetry::span_under(self.pass.trace(), "validate");
        if span.is_recording() {
            span.set("switchyard.backend", &target.backend.name);
        }
        let outcome = self
            .pass
            .validate(&span.as_parent(), body, &target.backend.name, model);
        let (verdict, label) = match outcome {
            Ok(ValidateOutcome::Accept) => (attempt::Verdict::Accept, "accepted"),
            Ok(ValidateOutcome::Replace { body, plugin }) => {
                span.set("switchyard.validate.plugin", &plugin);
                if let Ok(mut r) = self.replaced.lock() {
                    *r = Some(body);
                }
                (attempt::Verdict::Accept, "replaced")
            }
            Ok(ValidateOutcome::Reject { plugin, reason }) => {
                span.set("switchyard.validate.plugin", &plugin);
                span.set("switchyard.validate.reason", &reason);
                let why = format!("plugin `{plugin}`: {reason}");
                (attempt::Verdict::Reject(why), "rejected")
            }
            // `on_error = "reject"`: a failing validator does not let the answer through.
            Err(e) => {
                span.fail(e.kind());
                (attempt::Verdict::Reject(e.to_string()), "failed")
            }
        };
        span.set("switchyard.validate.verdict", label);
        verdict
    }
}
