//! Phase `fit`: does the request fit the chosen target's context window?
//!
//! The window is the target's `context_window`, else what its backend reported on
//! `/v1/models` (the worker's `max_model_len`). The prompt is counted with the target
//! model's tokenizer where the gateway has it (tiktoken for OpenAI models), else by the
//! backend's own `POST /tokenize` when it reported its window (the worker, vLLM), else
//! estimated from the body's bytes; the completion is the request's `max_completion_tokens` or
//! `max_tokens`. A request that does not fit goes to the route's `context_fallback` (when
//! it fits there) instead of failing upstream; without one it is a 400
//! `context_length_exceeded` before any upstream call. A request whose target has no known
//! window is not checked.

use std::sync::Arc;

use super::context::RequestCtx;
use crate::base::GatewayError;
use crate::base::openai::RequestBody;
use crate::config::Target;
use crate::services::Services;
use crate::services::context::Overflow;
use crate::services::governance::{estimate_tokens, tokens};

/// What a request needs of a target's window, in tokens.
struct Need {
    prompt: u64,
    completion: u64,
}

async fn need(services: &Services, ctx: &RequestCtx, request: &RequestBody, t: &Target) -> Need {
    let model = t.upstream_model(&request.model);
    let body = request.bytes();
    let prompt = match tokens::count_prompt(model, ctx.endpoint, body) {
        Some(n) => n,
        None => {
            let up = ctx.snapshot.upstream(&t.backend);
            match services.context.count_remote(up, body).await {
                Some(n) => n,
                None => estimate_tokens(body.len()),
            }
        }
    };
    let completion = request
        .get::<u64>("max_completion_tokens")
        .or_else(|| request.get::<u64>("max_tokens"))
        .unwrap_or(0);
    Need { prompt, completion }
}

fn window(services: &Services, ctx: &RequestCtx, request: &RequestBody, t: &Target) -> Option<u64> {
    ctx.route
        .as_ref()
        .and_then(|r| r.context_window(t))
        .or_else(|| {
            services
                .context
                .discovered(&t.backend.name, t.upstream_model(&request.model))
        })
}

pub async fn fit(
    services: &Services,
    ctx: &mut RequestCtx,
    request: &RequestBody,
    chosen: Target,
) -> Result<Target, GatewayError> {
    let Some(limit) = window(services, ctx, request, &chosen) else {
        return Ok(chosen);
    };
    // A token is at least a byte of the text, and the body's JSON framing outweighs the
    // chat template's markers: a body whose bytes fit fits, without counting (or asking the
    // backend's /tokenize).
    let completion = request
        .get::<u64>("max_completion_tokens")
        .or_else(|| request.get::<u64>("max_tokens"))
        .unwrap_or(0);
    if (request.bytes().len() as u64).saturating_add(completion) <= limit {
        return Ok(chosen);
    }
    let n = need(services, ctx, request, &chosen).await;
    let requested = n.prompt.saturating_add(n.completion);
    if requested <= limit {
        return Ok(chosen);
    }
    let route = ctx.route.clone();
    let fallback = route.as_ref().and_then(|r| r.context_fallback.clone());
    if let (Some(r), Some(fb)) = (&route, fallback) {
        let fits = match window(services, ctx, request, &fb) {
            None => true,
            Some(w) => {
                let n = need(services, ctx, request, &fb).await;
                n.prompt.saturating_add(n.completion) <= w
            }
        };
        if fits {
            services.context.count(&r.name, Overflow::Fallback);
            tracing::info!(route = %r.name, backend = %chosen.backend.name, window = limit, requested, to = %fb.backend.name, "request longer than the context window: context_fallback");
            ctx.context_skipped = Some(Arc::from(format!(
                "{} context_window_exceeded",
                chosen.backend.name
            )));
            ctx.target = Some(fb.clone());
            return Ok(fb);
        }
    }
    if let Some(r) = &route {
        services.context.count(&r.name, Overflow::Rejected);
    }
    Err(GatewayError::ContextLengthExceeded {
        window: limit,
        requested,
        prompt: n.prompt,
        completion: n.completion,
    })
}

/// The skipped target leads the `x-switchyard-attempts` trail.
pub fn note_in_attempts(ctx: &mut RequestCtx) {
    let Some(skipped) = ctx.context_skipped.take() else {
        return;
    };
    let value = match ctx.attempts.as_ref().and_then(|v| v.to_str().ok()) {
        Some(rest) => format!("{skipped}, {rest}"),
        None => skipped.to_string(),
    };
    ctx.attempts = http::HeaderValue::from_str(&value).ok();
}
