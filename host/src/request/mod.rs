//! The request path: one file per phase, in the order they run, and a driver that only
//! sequences them.
//!
//! ```text
//! authenticate ─► parse ─► classify ─► route ─► admit ─► attempt ┬► exchange ─► respond
//!  (key)          (body)   (plugins)   (split,  (limits,  (loop:  │   (adapt,    (complete,
//!                                       flags)   budget)   URLs,  │    send)      held or
//!                                                          retry, └► validate     stream)
//!                                                          fallback)  (plugins)
//!                                                                  ─► mirror ─► finish
//!                                                                     (shadow)  (ledger, metrics,
//!                                                                                trace, log)
//! ```
//!
//! Each phase is a function over the per-request [`RequestCtx`] returning
//! `Result<_, GatewayError>`; [`process`] runs them in order and the first error ends the
//! request. [`finish`](finish::finish) is its one exit: the answer or the error becomes the
//! client's response there, and every outcome is settled, counted and logged once.

pub mod admit;
pub mod attempt;
pub mod authenticate;
pub mod cache;
pub mod classify;
pub mod context;
pub mod exchange;
pub mod finish;
pub mod fit;
pub mod mirror;
pub mod parse;
pub mod protocol;
pub mod respond;
pub mod route;
pub mod validate;

use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::base::body::GatewayBody;
use crate::base::protocols::Protocol;
use crate::base::{Endpoint, GatewayError};
use crate::services::Services;
use crate::services::governance::feedback;
use crate::services::observe::telemetry::RequestTelemetry;
use context::RequestCtx;
use exchange::{Answer, StreamEnd};
use validate::PluginValidator;

/// One proxied OpenAI request, start to finish.
pub async fn handle(
    services: &Arc<Services>,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> Response<GatewayBody> {
    let _in_flight = services.metrics.in_flight();
    let telemetry = RequestTelemetry::start(
        &services.tracer,
        req.method(),
        endpoint.path(),
        req.headers(),
    );
    let mut ctx = RequestCtx::new(services.snapshot(), endpoint, telemetry);
    // Names the request for `POST /v1/feedback`: on every response and ledger row.
    let request_id = feedback::new_request_id(crate::base::clock::now_ms());
    let header = http::HeaderValue::from_str(&request_id).ok();
    ctx.account.request_id = Some(Arc::from(request_id));
    let result = process(services, &mut ctx, req).await;
    let mut resp = finish::finish(services, &mut ctx, result);
    if let Some(h) = header {
        resp.headers_mut().insert(feedback::HEADER_REQUEST_ID, h);
    }
    resp
}

/// One request in another client protocol (Responses, Anthropic Messages): the same phases
/// over its body translated to chat/completions, and the answer translated back.
pub async fn handle_protocol(
    services: &Arc<Services>,
    mut req: Request<Incoming>,
    protocol: Protocol,
) -> Response<GatewayBody> {
    let _in_flight = services.metrics.in_flight();
    if protocol == Protocol::Messages {
        protocol::accept_x_api_key(req.headers_mut());
    }
    let telemetry = RequestTelemetry::start(
        &services.tracer,
        req.method(),
        protocol.path().unwrap_or(Endpoint::ChatCompletions.path()),
        req.headers(),
    );
    let mut ctx = RequestCtx::new(services.snapshot(), Endpoint::ChatCompletions, telemetry);
    ctx.protocol = protocol;
    let result = process(services, &mut ctx, req).await;
    let resp = finish::finish(services, &mut ctx, result);
    protocol::translate_answer(
        resp,
        ctx.passed_through,
        protocol,
        std::mem::take(&mut ctx.echo),
    )
    .await
}

/// The phases, in order.
async fn process(
    services: &Services,
    ctx: &mut RequestCtx,
    req: Request<Incoming>,
) -> Result<Answer, GatewayError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    authenticate::authenticate(services, ctx, headers)?;
    let request = parse::parse(ctx, body, headers).await?;
    let routing_started = SystemTime::now();
    let mut pass = classify::start_pass(services, ctx, &request, headers);
    let decision = classify::classify(services, ctx, &mut pass)?;
    let chosen = route::route(&services.rollouts, ctx, decision, &request, headers)?;
    let chosen = fit::fit(services, ctx, &request, chosen).await?;
    protocol::check_target(ctx, &chosen)?;
    admit::admit(services, ctx, headers, &request, &chosen, routing_started).await?;
    // Tags a `classify` plugin added (`prompt_version:v2`, `router:local`) go on the
    // ledger row, so `spend --by tag` compares them.
    ctx.account.add_tags(pass.tags());
    let caching = cache::lookup(services, ctx, &request, headers, &chosen).await?;
    if let cache::Lookup::Hit(answer) = caching {
        return Ok(answer);
    }
    let (cache_capture, cache_served) = caching.capture(&request);
    let _in_flight = services.plugins.stats.start(&chosen.backend.name);
    let (mirroring, capture) = mirror::sample(services, ctx, &request);
    let stream_end = Arc::new(StreamEnd {
        capture,
        cache_capture,
        ..StreamEnd::default()
    });
    let validator = pass
        .validates()
        .then(|| PluginValidator::new(&pass, &request));
    let exchanged = attempt::attempt(attempt::AttemptPhase {
        services,
        ctx,
        request: &request,
        headers,
        pass: &pass,
        validator: validator.as_ref(),
        stream_end: stream_end.clone(),
    })
    .await;
    fit::note_in_attempts(ctx);
    let exchanged = exchanged?;
    let mut exchanged = respond::respond(respond::RespondPhase {
        services,
        ctx,
        request: &request,
        exchanged,
        validator,
        stream_end: &stream_end,
    });
    cache::keep(
        services,
        ctx,
        caching,
        &request,
        &mut exchanged,
        cache_served,
    );
    // A shadow answers the translated chat request; an answer passed through in the
    // client's protocol has nothing to be compared with.
    if let Some(m) = mirroring
        && !ctx.passed_through
    {
        mirror::send(services, ctx, m, &request, headers, &exchanged);
    }
    Ok(exchanged.answer)
}
