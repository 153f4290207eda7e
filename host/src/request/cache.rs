//! Phase `cache`: on a route with a `cache`, answer from the exact response cache before
//! any upstream call (a hit), or keep the answer the attempt loop gets for the next
//! identical request (a miss).
//!
//! Looked up after `admit`, so a hit is authenticated, limited and a ledger row like any
//! answer (with no cost and its saving). The key is the route, the resolved target and the
//! request's canonical form (`services::cache::Key`). Only requests whose answer should not
//! vary are cached (`temperature` 0 or a `seed`) unless the route says
//! `deterministic_only = false`; `cache-control: no-cache` skips the lookup (the fresh
//! answer is still kept), `no-store` skips the cache entirely.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::context::RequestCtx;
use super::exchange::{Answer, Exchanged};
use super::respond::held;
use crate::base::body::GatewayBody;
use crate::base::openai::{RequestBody, ResponseProbe};
use crate::base::respond::{HEADER_CACHE, stamp};
use crate::base::{Endpoint, GatewayError};
use crate::config::Target;
use crate::services::Services;
use crate::services::cache::{Entry, Key, KeyParts, Outcome, deterministic};
use crate::services::governance::estimate_completion;
use crate::services::shadow::{CaptureSlot, StreamServed, capture_channel};

/// How the cache met this request.
pub enum Lookup {
    /// The route has no cache.
    Off,
    Bypass,
    /// Not found (or not looked up, for `no-cache`): keep the answer.
    Miss(Keep),
    Hit(Answer),
}

/// Where a missed answer goes.
pub struct Keep {
    key: Key,
    ttl: Duration,
    backend: Arc<str>,
    model: Arc<str>,
    /// `cache-control: no-cache`: not looked up (reported as a bypass), the answer kept.
    refreshed: bool,
}

fn cache_control(headers: &HeaderMap) -> (bool, bool) {
    let mut no_cache = false;
    let mut no_store = false;
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            no_cache |= d == "no-cache";
            no_store |= d == "no-store";
        }
    }
    (no_cache, no_store)
}

pub async fn lookup(
    services: &Services,
    ctx: &mut RequestCtx,
    request: &RequestBody,
    headers: &HeaderMap,
    chosen: &Target,
) -> Result<Lookup, GatewayError> {
    let Some(route) = ctx.route.clone() else {
        return Ok(Lookup::Off);
    };
    let Some(rc) = route.cache.as_ref() else {
        return Ok(Lookup::Off);
    };
    let (no_cache, no_store) = cache_control(headers);
    let body = request.bytes();
    // A request passed through is answered in its own protocol, which the cache does not
    // keep (entries are chat answers, replayed or translated from there).
    if super::protocol::passes_through(ctx, chosen)
        || (rc.deterministic_only && !deterministic(body, ctx.endpoint == Endpoint::Embeddings))
        || no_store
    {
        services.cache.count(&route.name, Outcome::Bypass);
        return Ok(Lookup::Bypass);
    }
    let model: Arc<str> = Arc::from(chosen.upstream_model(&request.model));
    let Some(key) = Key::of(&KeyParts {
        route: &route.name,
        backend: &chosen.backend.name,
        model: &model,
        endpoint: ctx.endpoint.path(),
        body,
    }) else {
        services.cache.count(&route.name, Outcome::Bypass);
        return Ok(Lookup::Bypass);
    };
    let keep = Keep {
        key,
        ttl: rc.ttl,
        backend: chosen.backend.name.clone(),
        model,
        refreshed: no_cache,
    };
    if no_cache {
        services.cache.count(&route.name, Outcome::Bypass);
        return Ok(Lookup::Miss(keep));
    }
    let Some(entry) = services.cache.get(&key).await else {
        services.cache.count(&route.name, Outcome::Miss);
        return Ok(Lookup::Miss(keep));
    };
    services.cache.count(&route.name, Outcome::Hit);
    Ok(Lookup::Hit(hit(ctx, request, chosen, &entry)))
}

/// The client's answer from a cached entry, in the form it asked for.
fn hit(ctx: &mut RequestCtx, request: &RequestBody, chosen: &Target, entry: &Entry) -> Answer {
    let usage = ResponseProbe::read(&entry.complete).and_then(|p| p.usage);
    ctx.account.usage = usage;
    if usage.is_none() {
        // Counted against the caller's token limits as the upstream's answer was.
        ctx.account.completion_estimate = Some(estimate_completion(&entry.model, &entry.complete));
    }
    ctx.telemetry.usage = usage;
    ctx.target = Some(chosen.clone());
    ctx.upstream_model = Some(Arc::from(entry.model.as_str()));
    ctx.cache_hit = true;
    let (body, content_type) = if request.stream {
        let events = match &entry.events {
            Some(ev) if request.client_include_usage || !entry.events_have_usage => ev.clone(),
            // The stored events carry the usage chunk this client did not ask for.
            Some(ev) => held::assemble(ctx.endpoint, ev, true)
                .map(|h| h.events)
                .unwrap_or_else(|_| ev.clone()),
            None => held::to_events(ctx.endpoint, &entry.complete, request.client_include_usage),
        };
        (events, "text/event-stream")
    } else {
        (entry.complete.clone(), "application/json")
    };
    let mut resp = Response::new(GatewayBody::from(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(HEADER_CACHE, HeaderValue::from_static("hit"));
    stamp(h, &entry.backend, Some(&entry.model));
    Answer::Complete(resp)
}

impl Lookup {
    /// For a streamed miss: the slot the relay delivers its copy to, and the receiving end.
    pub fn capture(
        &self,
        request: &RequestBody,
    ) -> (
        Option<CaptureSlot>,
        Option<tokio::sync::oneshot::Receiver<StreamServed>>,
    ) {
        match self {
            Lookup::Miss(_) if request.stream => {
                let (slot, rx) = capture_channel();
                (Some(slot), Some(rx))
            }
            _ => (None, None),
        }
    }
}

/// After `respond`: say how the cache answered, and keep a missed answer that the chosen
/// target gave whole and well (a fallback's answer is not the chosen target's).
pub fn keep(
    services: &Services,
    ctx: &RequestCtx,
    lookup: Lookup,
    request: &RequestBody,
    exchanged: &mut Exchanged,
    served_stream: Option<tokio::sync::oneshot::Receiver<StreamServed>>,
) {
    let keep = match lookup {
        Lookup::Off | Lookup::Hit(_) => return,
        Lookup::Bypass => {
            exchanged
                .answer
                .headers_mut()
                .insert(HEADER_CACHE, HeaderValue::from_static("bypass"));
            return;
        }
        Lookup::Miss(k) => k,
    };
    let said = if keep.refreshed { "bypass" } else { "miss" };
    exchanged
        .answer
        .headers_mut()
        .insert(HEADER_CACHE, HeaderValue::from_static(said));
    let same_target = exchanged.target.backend.name == keep.backend
        && *exchanged.target.upstream_model(&request.model) == *keep.model;
    let ok = match &exchanged.answer {
        Answer::Complete(r) | Answer::Streaming(r) => r.status() == StatusCode::OK,
    };
    if !same_target || !ok {
        return;
    }
    let max_bytes = ctx.config().cache.max_bytes;
    let cache = services.cache.clone();
    let (backend, model) = (keep.backend.to_string(), keep.model.to_string());
    if let Some(body) = &exchanged.body {
        let entry = Entry {
            backend,
            model,
            complete: body.clone(),
            events: exchanged.events.clone(),
            events_have_usage: request.client_include_usage,
        };
        cache.put(keep.key, entry, keep.ttl, max_bytes);
        return;
    }
    let Some(rx) = served_stream else { return };
    let endpoint = ctx.endpoint;
    // The stream is still being relayed: kept when it ends complete.
    tokio::spawn(async move {
        let Ok(StreamServed { sse: Some(sse), .. }) = rx.await else {
            return;
        };
        let Ok(held) = held::assemble(endpoint, &sse, false) else {
            return;
        };
        let entry = Entry {
            backend,
            model,
            complete: held.complete,
            events: Some(sse),
            events_have_usage: true,
        };
        cache.put(keep.key, entry, keep.ttl, max_bytes);
    });
}
