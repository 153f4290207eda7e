//! The Responses API and Anthropic's Messages API on the request path.
//!
//! Such a request runs the same phases as a chat request, on its body translated to
//! chat/completions (phase `parse`, through `base::protocols`): routing, plugins, fallback,
//! ledger, tracing and shadow see a chat request. The client's answer is translated back
//! here, after `finish`: a complete answer as one JSON body, a stream event by event, and
//! for Anthropic clients errors in Anthropic's shape.
//!
//! A target whose backend speaks the client's protocol itself (`backends[].api`) gets the
//! client's own body instead (`exchange`), and its answer reaches the client untranslated.
//! [`check_target`] decides, after `fit`, whether the chosen target can take the request at
//! all: stored Responses state (`previous_response_id`, `store: true`) needs a backend that
//! keeps it, and an Anthropic-only backend answers nothing but Messages requests.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::context::RequestCtx;
use super::{authenticate, parse};
use crate::base::body::GatewayBody;
use crate::base::protocols::{self, Echo, Protocol, TranslatedStream, anthropic};
use crate::base::{Endpoint, GatewayError};
use crate::config::Target;
use crate::services::Services;
use crate::services::governance::{estimate_tokens, tokens};
use crate::services::observe::telemetry::RequestTelemetry;

/// Anthropic clients send their key as `x-api-key`: accepted as the caller's key when no
/// `Authorization` header says otherwise.
pub fn accept_x_api_key(headers: &mut HeaderMap) {
    if headers.contains_key(header::AUTHORIZATION) {
        return;
    }
    let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
}

/// Whether `target` gets this request in the client's own protocol (passed through).
pub fn passes_through(ctx: &RequestCtx, target: &Target) -> bool {
    ctx.original.is_some() && target.backend.api.passes_through(ctx.protocol)
}

/// Whether `target` can answer this request at all (a fallback that cannot is skipped).
pub fn serves(ctx: &RequestCtx, target: &Target) -> bool {
    target.backend.api.serves(ctx.protocol)
        && (ctx.stateful.is_none() || passes_through(ctx, target))
}

/// After `fit`: refuse the request when the chosen target cannot take it, before anything
/// is reserved or sent.
pub fn check_target(ctx: &mut RequestCtx, chosen: &Target) -> Result<(), GatewayError> {
    let api = chosen.backend.api;
    if !api.serves(ctx.protocol) {
        let route = ctx.route.as_ref().map_or("-", |r| &*r.name).to_owned();
        return Err(GatewayError::Unsupported {
            param: "model".into(),
            reason: format!(
                "route '{route}' sends this request to backend '{}', which speaks only {} \
                 (api = \"{}\"); call POST {} instead",
                chosen.backend.name,
                "Anthropic's Messages API",
                api.name(),
                protocols::MESSAGES,
            ),
        });
    }
    if passes_through(ctx, chosen) {
        return Ok(());
    }
    match ctx.stateful.take() {
        Some(GatewayError::Unsupported { param, reason }) => Err(GatewayError::Unsupported {
            reason: format!(
                "{reason}; backend '{}' (api = \"{}\") would need the request translated",
                chosen.backend.name,
                api.name()
            ),
            param,
        }),
        Some(other) => Err(other),
        None => Ok(()),
    }
}

/// The gateway's answer (chat/completions shaped) in the client's protocol.
pub async fn translate_answer(
    resp: Response<GatewayBody>,
    passed_through: bool,
    protocol: Protocol,
    echo: Echo,
) -> Response<GatewayBody> {
    let (mut parts, body) = resp.into_parts();
    if passed_through && parts.status.is_success() {
        return Response::from_parts(parts, body);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let is_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if parts.status.is_success() && is_stream {
        let Some(t) = protocols::stream_translator(protocol, echo) else {
            return Response::from_parts(parts, body);
        };
        let body = GatewayBody::Stream(Box::new(TranslatedStream::new(body, t)));
        return Response::from_parts(parts, body);
    }
    // A complete answer (or an error) is a buffer already: collecting it does not wait.
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => match e {},
    };
    let out = if parts.status.is_success() {
        match protocols::from_chat(protocol, &bytes, &echo) {
            Ok(b) => b,
            Err(detail) => {
                let e = GatewayError::Internal(format!("could not translate the answer: {detail}"));
                parts.status = e.status();
                error_in(protocol, e.status(), e.to_body())
            }
        }
    } else {
        error_in(protocol, parts.status, bytes)
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, GatewayBody::from(out))
}

/// An OpenAI-shaped error body in the client's protocol.
fn error_in(protocol: Protocol, status: StatusCode, openai: Bytes) -> Bytes {
    match protocol {
        Protocol::Messages => anthropic::error_body(status, &openai),
        Protocol::OpenAi | Protocol::Responses => openai,
    }
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the gateway counts them (the
/// model's tokenizer for OpenAI models, else the byte estimate), without calling upstream.
pub async fn count_tokens(
    services: &Arc<Services>,
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    let (mut parts, body) = req.into_parts();
    accept_x_api_key(&mut parts.headers);
    let telemetry = RequestTelemetry::start(
        &services.tracer,
        &parts.method,
        protocols::COUNT_TOKENS,
        &parts.headers,
    );
    let mut ctx = RequestCtx::new(services.snapshot(), Endpoint::ChatCompletions, telemetry);
    let result = async {
        authenticate::authenticate(services, &mut ctx, &parts.headers)?;
        let server = &ctx.config().server;
        let bytes = parse::read_body(
            body,
            &parts.headers,
            server.max_body_bytes,
            server.body_read_timeout,
        )
        .await?;
        // `max_tokens` is not part of a count_tokens body; the translation wants one.
        let mut v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| GatewayError::NotAnObject)?;
        if let Some(o) = v.as_object_mut() {
            o.entry("max_tokens").or_insert(serde_json::json!(1));
        }
        let t = protocols::to_chat(Protocol::Messages, v.to_string().as_bytes())?;
        let model = v["model"].as_str().unwrap_or("");
        Ok::<u64, GatewayError>(
            tokens::count_prompt(model, Endpoint::ChatCompletions, &t.chat)
                .unwrap_or_else(|| estimate_tokens(t.chat.len())),
        )
    }
    .await;
    match result {
        Ok(n) => crate::base::respond::json(
            StatusCode::OK,
            serde_json::json!({ "input_tokens": n }).to_string(),
        ),
        Err(e) => {
            let mut r = e.to_response::<GatewayBody>();
            *r.body_mut() =
                GatewayBody::from(error_in(Protocol::Messages, e.status(), e.to_body()));
            r
        }
    }
}
