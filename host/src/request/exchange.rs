//! Phase `exchange`: one try of one target at one URL: adapt the request for the target
//! (`adapt` plugins), send it, and read the answer (complete) or its first chunk (stream).
//!
//! A Responses or Messages request to a target whose backend speaks that protocol
//! (`backends[].api`) is sent as the client's own body instead, to that API's path, unless an
//! `adapt` plugin rewrote it; its answer is read in that format (`base::protocols::native`).
//!
//! The attempt loop calls [`exchange`] once per attempt; everything the attempts of one
//! request share is an [`Exchange`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response};

use super::attempt::{Answer as LoopAnswer, Candidate};
use super::respond::{self, Reply, complete, held, stream};
use crate::base::body::GatewayBody;
use crate::base::openai::{RequestBody, Usage};
use crate::base::protocols::{Protocol, native};
use crate::base::{Endpoint, GatewayError};
use crate::config::{Runtime, Target};
use crate::services::Services;
use crate::services::governance::Settler;
use crate::services::observe::telemetry::{self, AttemptModel, AttemptSpan, RequestTelemetry};
use crate::services::plugins::ChunkHook;
use crate::services::shadow::CaptureSlot;
use crate::services::upstream::client;
use crate::services::upstream::pool::Slot;

/// What every attempt of one request shares.
pub struct Exchange<'a> {
    pub services: &'a Services,
    /// The config the request runs under.
    pub config: &'a Runtime,
    pub endpoint: Endpoint,
    /// The path the client called (the access line names it: `/v1/responses` for a
    /// translated stream, not the chat path it was sent upstream as).
    pub client_path: &'static str,
    pub started: Instant,
    pub route: Arc<str>,
    /// The client's request, as parsed (each attempt adapts this original).
    pub request: &'a RequestBody,
    pub client_headers: &'a HeaderMap,
    pub telemetry: &'a RequestTelemetry,
    /// Where a relayed stream's end-of-stream work waits.
    pub stream_end: Arc<StreamEnd>,
    /// A streamed answer is held until complete (a `validate` plugin judges streams).
    pub hold_stream: bool,
    /// The `chunks` plugins a relayed stream's text goes through (WIT `0.2`).
    pub chunks: Option<ChunkHook>,
    /// How much of an upstream answer may be held: `[server] max_event_bytes` for one line
    /// or event of a stream, `max_answer_bytes` for an answer read whole.
    pub max_event: usize,
    pub max_answer: usize,
    /// The client's own body and protocol (Responses, Messages): what a target whose backend
    /// speaks that protocol gets instead of the translated request.
    pub native: Option<(Protocol, &'a Bytes)>,
    /// The request asks for stored Responses state: only a backend keeping it can take it.
    pub stateful: bool,
}

/// What a relayed stream does when it ends, put in place once the attempt loop knows which
/// target answered (the stream's body is not polled before that).
#[derive(Default)]
pub struct StreamEnd {
    /// The request's ledger settlement.
    pub settler: Mutex<Option<Settler>>,
    /// The request's server span and access record.
    pub telemetry: Mutex<Option<RequestTelemetry>>,
    /// Where the shadow comparison waits for the served stream (sampled requests only).
    pub capture: Option<CaptureSlot>,
    /// Where the response cache waits for the served stream (a cache miss only).
    pub cache_capture: Option<CaptureSlot>,
}

/// An answer as the client will get it.
pub enum Answer {
    /// Read whole (complete, or a held stream): accounted now.
    Complete(Response<GatewayBody>),
    /// Relayed live: accounted when the stream ends.
    Streaming(Response<GatewayBody>),
}

impl Answer {
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        match self {
            Answer::Complete(r) | Answer::Streaming(r) => r.headers_mut(),
        }
    }

    pub fn into_response(self) -> Response<GatewayBody> {
        match self {
            Answer::Complete(r) | Answer::Streaming(r) => r,
        }
    }
}

/// One answered exchange, as the attempt loop sees it.
pub struct Exchanged {
    pub answer: Answer,
    pub target: Target,
    pub upstream_time: Duration,
    /// The complete answer's body (not for streams relayed live), for validation and
    /// shadow comparison; for a held stream, the complete answer put together from it.
    pub body: Option<Bytes>,
    /// A held stream's events as served (what the shadow comparison reads for a stream).
    pub events: Option<Bytes>,
    /// The usage that body reported (read once, with the rest of the probe).
    pub usage: Option<Usage>,
    /// The answer is in the client's own protocol (the request was passed through).
    pub native: bool,
}

impl LoopAnswer for Exchanged {
    fn complete_body(&self) -> Option<&Bytes> {
        // `validate` plugins judge chat answers; one passed through is not one.
        self.body.as_ref().filter(|_| !self.native)
    }
}

/// One exchange with URL `url` of `cand`, with the request `adapted` for it (`None`: as the
/// client sent it). The in-flight `slot` is held until the answer is fully relayed.
pub async fn exchange(
    x: &Exchange<'_>,
    cand: Candidate,
    url: usize,
    slot: Slot,
    adapted: Result<Option<RequestBody>, GatewayError>,
) -> Result<Exchanged, GatewayError> {
    let Candidate { target, upstream } = cand;
    let model: Arc<str> = Arc::from(target.upstream_model(&x.request.model));
    let url = &upstream.backend.urls[url];
    let adapted = adapted?;
    let api = upstream.backend.api;
    let passthrough = match x.native.filter(|(p, _)| api.passes_through(*p)) {
        // An `adapt` plugin rewrote the request (masked it, say): the client's own body must
        // not leave instead. Sent as the rewritten chat request where the backend takes one.
        Some(_) if adapted.is_some() => {
            if !api.serves(Protocol::OpenAi) || x.stateful {
                return Err(GatewayError::Unsupported {
                    param: "model".into(),
                    reason: format!(
                        "an adapt plugin rewrote this request for backend '{}' (api = \"{}\"), \
                         which can only be sent the client's own body",
                        target.backend.name,
                        api.name()
                    ),
                });
            }
            None
        }
        other => other,
    };
    let request = adapted.as_ref().unwrap_or(x.request);
    let mut upstream_req = match passthrough {
        Some((protocol, original)) => native_request(
            &upstream.backend,
            url,
            protocol,
            original,
            &model,
            x.client_headers,
        )?,
        None => {
            let body = request.upstream_body(&model, true);
            client::build_request(
                &upstream.backend,
                url.uri(x.endpoint),
                body,
                x.client_headers,
            )?
        }
    };
    // One CLIENT span per attempt; its context travels upstream in `traceparent`.
    let span = AttemptSpan::start(
        x.telemetry,
        x.endpoint,
        &target.backend.name,
        &url.peer,
        AttemptModel {
            sent: &model,
            metric_label: x.config.metric_model(&model),
        },
        telemetry::request_params(x.telemetry, request, x.endpoint),
    );
    span.inject(upstream_req.headers_mut());
    let metrics = &x.services.metrics;
    let failed = |a: AttemptSpan, e: GatewayError| {
        let status = match &e {
            GatewayError::UpstreamError { status, .. } => Some(status.as_u16()),
            GatewayError::UpstreamStatus { status, .. } => Some(*status),
            _ => None,
        };
        a.failed(metrics, e.kind(), status);
        e
    };
    let sent = Instant::now();
    let resp = match client::send(&upstream, url, upstream_req).await {
        Ok(r) => r,
        Err(e) => return Err(failed(span, e)),
    };

    if !resp.status().is_success() {
        let e = respond::upstream_failure(&target, resp).await;
        // An upstream that answered (with an error) still took this long.
        metrics.upstream(&target.backend.name, sent.elapsed());
        return Err(failed(span, e));
    }
    let native = passthrough.map(|(p, _)| p);
    let reply = Reply {
        target: target.clone(),
        model,
        resp,
        sent,
        slot,
        span,
        native,
    };
    // A stream passed through is relayed as it comes: a `validate` plugin holding streams
    // judges chat answers, which it is not.
    if request.stream && (!x.hold_stream || native.is_some()) {
        let (answer, upstream_time) = stream::stream_answer(x, reply).await?;
        return Ok(Exchanged {
            answer: Answer::Streaming(answer),
            target,
            upstream_time,
            body: None,
            events: None,
            usage: None,
            native: native.is_some(),
        });
    }
    let Reply {
        model,
        resp,
        sent,
        slot,
        span,
        ..
    } = reply;
    let answer = if request.stream {
        let strip_usage = request.strip_usage_chunk(true);
        held::held_answer(held::HeldArgs {
            tel: x.telemetry,
            target: &target,
            model: &model,
            resp,
            sent,
            endpoint: x.endpoint,
            strip_usage,
            max_answer: x.max_answer,
        })
        .await
    } else {
        complete::complete_answer(x.telemetry, &target, &model, resp, sent, x.max_answer).await
    };
    let mut whole = match answer {
        Ok(w) => w,
        Err(e) => return Err(failed(span, e)),
    };
    if let Some(p) = native {
        let read = native::read_complete(p, &whole.body);
        whole.facts.usage = read.as_ref().and_then(|c| c.usage);
        whole.facts.finish_reasons = read.and_then(|c| c.finish).into_iter().collect();
    }
    let usage = whole.facts.usage;
    span.succeeded(metrics, whole.facts);
    metrics.upstream(&target.backend.name, whole.upstream_time);
    drop(slot);
    Ok(Exchanged {
        answer: Answer::Complete(whole.resp),
        target,
        upstream_time: whole.upstream_time,
        body: Some(whole.body),
        events: whole.events,
        usage,
        native: native.is_some(),
    })
}

/// The client's own body for a backend that speaks its protocol: the path of that API
/// under the backend's base, the model the target names, and for Anthropic's API its key
/// header and version (the client's `anthropic-version` and `anthropic-beta` when sent).
fn native_request(
    backend: &crate::config::Backend,
    url: &crate::config::BackendUrl,
    protocol: Protocol,
    original: &Bytes,
    model: &str,
    client_headers: &HeaderMap,
) -> Result<http::Request<http_body_util::Full<Bytes>>, GatewayError> {
    let (Some(uri), Some(body)) = (
        url.native_uri(protocol),
        native::with_model(original, model),
    ) else {
        return Err(GatewayError::Internal(
            "a passed-through request without its body".into(),
        ));
    };
    let mut req = client::build_request(backend, uri, body, client_headers)?;
    if protocol == Protocol::Messages {
        let h = req.headers_mut();
        for name in ["anthropic-version", "anthropic-beta"] {
            if let Some(v) = client_headers.get(name) {
                h.insert(name, v.clone());
            }
        }
        backend.authorize(h);
    }
    Ok(req)
}
