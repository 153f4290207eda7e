//! Phase `finish`: the one exit of every request. Settle the ledger row, count, trace and
//! log the outcome once, and turn an error into the client's answer.
//!
//! A streamed answer leaves here with its accounting still to do: the stream does it when it
//! ends (`respond::stream`), from the settler and telemetry the driver put in its
//! [`StreamEnd`](super::exchange::StreamEnd).

use std::time::Duration;

use http::{Response, StatusCode};

use super::context::RequestCtx;
use super::exchange::Answer;
use crate::base::GatewayError;
use crate::base::body::GatewayBody;
use crate::base::respond::{HEADER_ATTEMPTS, stamp};
use crate::services::Services;
use crate::services::governance::{Ending, Labels, Settler};
use crate::services::observe::telemetry;

/// The client's answer to this request, however the phases ended.
pub fn finish(
    services: &Services,
    ctx: &mut RequestCtx,
    result: Result<Answer, GatewayError>,
) -> Response<GatewayBody> {
    match result {
        Ok(Answer::Complete(resp)) => {
            // Settled first, so the access log and the span carry the request's cost.
            if let Some(cost) = settle(services, ctx, resp.status().as_u16(), None) {
                ctx.telemetry.set_cost(cost);
            }
            record(services, ctx, resp.status(), None);
            resp
        }
        // Streams are counted when they end (see `respond::stream`).
        Ok(Answer::Streaming(resp)) => resp,
        Err(e) => {
            let status = e.status();
            log_failure(ctx, &e);
            if e.is_upstream_failure() || matches!(e, GatewayError::UpstreamError { .. }) {
                services
                    .metrics
                    .upstream_error(&ctx.backend_label(), e.kind());
            }
            if let Some(cost) = settle(services, ctx, status.as_u16(), Some(&e)) {
                ctx.telemetry.set_cost(cost);
            }
            record(services, ctx, status, Some(e.kind()));
            let mut resp = e.to_response::<GatewayBody>();
            if let Some(t) = &ctx.target {
                stamp(
                    resp.headers_mut(),
                    &t.backend.name,
                    ctx.upstream_model.as_deref(),
                );
            }
            if let Some(h) = ctx.attempts.take() {
                resp.headers_mut().insert(HEADER_ATTEMPTS, h);
            }
            resp
        }
    }
}

/// Take the request's account for settling, with its labels; `None` without governance or
/// when already settled.
pub fn settler(services: &Services, ctx: &mut RequestCtx) -> Option<Settler> {
    let gov = services.governance.as_ref()?;
    gov.settler(
        &mut ctx.account,
        Labels {
            runtime: &ctx.snapshot.config,
            route: ctx.route.as_ref().map(|r| &*r.name),
            backend: ctx.target.as_ref().map(|t| &*t.backend.name),
            model: ctx.upstream_model.as_deref(),
            started: ctx.started,
        },
    )
}

/// Settle a request whose answer is complete (or that failed); its cost, when priced.
fn settle(
    services: &Services,
    ctx: &mut RequestCtx,
    status: u16,
    error: Option<&GatewayError>,
) -> Option<f64> {
    // A cache hit bills nothing, but counts against the caller's token limits as the
    // upstream's answer did (an estimate when the cached answer reported no usage).
    let reached = ctx.upstream_time > Duration::ZERO || ctx.cache_hit;
    let usage = ctx.account.usage;
    let completion_estimate = if error.is_none() {
        ctx.account.completion_estimate.or(Some(0))
    } else {
        None
    };
    let outcome = error
        .map(|e| e.kind().to_string())
        .unwrap_or_else(|| "ok".into());
    settler(services, ctx).map(|s| {
        s.settle(Ending {
            status,
            outcome,
            usage,
            completion_estimate,
            ttft_ms: None,
            reached_upstream: reached && error.is_none(),
            cached: ctx.cache_hit,
        })
    })
}

/// Count, trace and log a request answered in one piece (a stream does it when it ends).
fn record(services: &Services, ctx: &mut RequestCtx, status: StatusCode, error: Option<&str>) {
    let took = ctx.started.elapsed();
    let route = ctx.route_label();
    let backend = ctx.backend_label();
    services
        .metrics
        .request(&route, &backend, status.as_u16(), took);
    let upstream = (ctx.upstream_time > Duration::ZERO).then_some(ctx.upstream_time);
    if let Some(u) = upstream {
        services.metrics.overhead(took.saturating_sub(u));
    }
    if let Some(t) = &ctx.target {
        // What `classify` plugins see as the backend's health and latency.
        services.plugins.stats.record(
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
            path: ctx.client_path(),
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
