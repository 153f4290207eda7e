//! Phase `respond`: from an upstream response to the client's answer.
//!
//! A complete answer is read whole, checked to be JSON and relayed byte for byte
//! (`complete`); a streamed one is relayed frame by frame as it arrives (`stream`), or, when
//! a `validate` plugin judges streams, held until complete, validated, then served as events
//! (`held`). Every answer carries `x-switchyard-backend` and `x-switchyard-model`; the
//! upstream's own headers are relayed except hop-by-hop and framing ones.

pub mod complete;
pub mod held;
pub mod stream;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::context::RequestCtx;
use super::exchange::{Answer, Exchanged, StreamEnd};
use super::finish::settler;
use super::validate::PluginValidator;
use crate::base::body::GatewayBody;
use crate::base::error::{GatewayError, error_chain, snippet};
use crate::base::openai::{self, RequestBody, ResponseProbe};
use crate::base::respond::HEADER_ATTEMPTS;
use crate::config::Target;
use crate::services::Services;
use crate::services::governance::estimate_completion;
use crate::services::observe::telemetry::{AnswerFacts, AttemptSpan};
use crate::services::upstream::client::forwardable_response_header;
use crate::services::upstream::pool::Slot;

/// One successful upstream response head, and what the attempt that got it holds.
pub struct Reply {
    pub target: Target,
    /// The model name sent upstream.
    pub model: std::sync::Arc<str>,
    pub resp: Response<Incoming>,
    /// When the request was sent.
    pub sent: Instant,
    /// The URL's in-flight slot: held until the answer is fully relayed.
    pub slot: Slot,
    pub span: AttemptSpan,
    /// The answer is in this client protocol's own format (the request was passed through).
    pub native: Option<crate::base::protocols::Protocol>,
}

/// An answer read whole before it is served.
pub struct Whole {
    /// What the client gets.
    pub resp: Response<GatewayBody>,
    /// The complete answer (for a held stream: put together from its chunks).
    pub body: Bytes,
    pub upstream_time: Duration,
    pub facts: AnswerFacts,
    /// A held stream's events, as served.
    pub events: Option<Bytes>,
}

/// Read a complete upstream body within the backend's timeout and `limit` bytes.
pub(super) async fn collect_upstream(
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
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::UpstreamBroken {
                backend: backend.name.to_string(),
                detail: format!(
                    "the answer is larger than {limit} bytes (the server's max_answer_bytes)"
                ),
            })
        }
        Ok(Err(e)) => Err(GatewayError::UpstreamBroken {
            backend: backend.name.to_string(),
            detail: format!("while reading the answer: {}", error_chain(&*e)),
        }),
    }
}

/// A non-2xx upstream answer: relayed as-is when OpenAI-shaped, else wrapped.
pub async fn upstream_failure(target: &Target, resp: Response<Incoming>) -> GatewayError {
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

pub(super) fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if forwardable_response_header(name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// What the respond phase works with.
pub struct RespondPhase<'a, 'p> {
    pub services: &'a Services,
    pub ctx: &'a mut RequestCtx,
    pub request: &'a RequestBody,
    pub exchanged: Exchanged,
    pub validator: Option<PluginValidator<'p>>,
    pub stream_end: &'a StreamEnd,
}

/// Phase `respond`: the answer the client gets. A `validate` plugin's replacement is served
/// (and accounted) in place of the upstream's; a complete answer's usage goes to the
/// account now, a relayed stream gets its end-of-stream work.
pub fn respond(p: RespondPhase<'_, '_>) -> Exchanged {
    let RespondPhase {
        services,
        ctx,
        request,
        mut exchanged,
        validator,
        stream_end,
    } = p;
    if let Some(new) = validator.and_then(PluginValidator::replacement)
        && let Answer::Complete(resp) = &mut exchanged.answer
    {
        // Served as events when the client asked for a stream (which was held).
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        *resp.body_mut() = if request.stream {
            let include_usage = !request.strip_usage_chunk(true);
            let events = held::to_events(ctx.endpoint, &new, include_usage);
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
                ctx.account.completion_estimate = Some(estimate_completion(model, body));
            }
        }
        None => {
            if let Ok(mut slot) = stream_end.settler.lock() {
                *slot = settler(services, ctx);
            }
            ctx.telemetry.ttft = Some(ctx.started.elapsed());
            if let Ok(mut slot) = stream_end.telemetry.lock() {
                *slot = Some(std::mem::take(&mut ctx.telemetry));
            }
        }
    }
    if let Some(h) = ctx.attempts.take() {
        exchanged.answer.headers_mut().insert(HEADER_ATTEMPTS, h);
    }
    exchanged
}
