//! Shadow traffic on the request path: whether this request is mirrored (decided before
//! the attempt loop, so a mirrored stream keeps a copy of what it relays), and the hand-off
//! of the mirror job once the answer is known. One random draw and one non-blocking send;
//! the rest happens off the request path (`services::shadow`). Capture (`routes[].capture`)
//! rides along the same way: a draw before the loop, a non-blocking hand-off after
//! (`services::capture`).

use std::sync::Arc;

use http::HeaderMap;

use super::context::RequestCtx;
use super::exchange::Exchanged;
use crate::base::Endpoint;
use crate::base::openai::RequestBody;
use crate::config::Shadow;
use crate::services::Services;
use crate::services::capture;
use crate::services::shadow::{self, CaptureSlot, Mirror, Served, StreamServed};

/// A request chosen for mirroring, capture, or both.
pub struct Mirroring {
    shadow: Option<Shadow>,
    /// A relayed stream's copy arrives here when it ends.
    served_stream: Option<tokio::sync::oneshot::Receiver<StreamServed>>,
    /// Captured (`routes[].capture`); for a relayed stream, where its copy arrives.
    capture: Option<Option<tokio::sync::oneshot::Receiver<StreamServed>>>,
}

/// Is this request mirrored? For a stream, the capture slot the relay delivers its copy to.
pub fn sample(
    services: &Services,
    ctx: &RequestCtx,
    request: &RequestBody,
) -> (Option<Mirroring>, Option<CaptureSlot>) {
    let Some(route) = &ctx.route else {
        return (None, None);
    };
    let shadow = services
        .shadow
        .as_ref()
        .and_then(|engine| route.shadow.as_ref().filter(|s| engine.sampled(s)));
    let captured = ctx.endpoint == Endpoint::ChatCompletions
        && services
            .capture
            .as_ref()
            .zip(route.capture.as_ref())
            .is_some_and(|(engine, c)| engine.sampled(c));
    if shadow.is_none() && !captured {
        return (None, None);
    }
    let mut slot: Option<CaptureSlot> = None;
    let mut stream_copy = || {
        request.stream.then(|| match &slot {
            Some(s) => shadow::also_deliver(s),
            None => {
                let (s, rx) = shadow::capture_channel();
                slot = Some(s);
                rx
            }
        })
    };
    let served_stream = shadow.is_some().then(&mut stream_copy).flatten();
    let capture = captured.then(&mut stream_copy);
    (
        Some(Mirroring {
            shadow: shadow.cloned(),
            served_stream,
            capture,
        }),
        slot,
    )
}

/// Hand the mirror job over. Never waits: a full queue drops it (and counts it).
pub fn send(
    services: &Services,
    ctx: &RequestCtx,
    m: Mirroring,
    request: &RequestBody,
    headers: &HeaderMap,
    exchanged: &Exchanged,
) {
    let Some(route) = &ctx.route else {
        return;
    };
    // A stream relayed live delivers its copy when it ends; a held one is at hand.
    let served = |rx: Option<tokio::sync::oneshot::Receiver<StreamServed>>| match rx {
        Some(rx) if exchanged.body.is_none() => Served::Stream(rx),
        Some(_) => Served::Complete(exchanged.events.clone()),
        None => Served::Complete(exchanged.body.clone()),
    };
    if let (Some(engine), Some(rx)) = (&services.capture, m.capture) {
        engine.capture(
            capture::Job {
                route: route.name.clone(),
                target: exchanged.target.clone(),
                model: exchanged.target.upstream_model(&request.model).to_string(),
                request: request.clone(),
                stream: request.stream,
                at: std::time::SystemTime::now(),
            },
            served(rx),
        );
    }
    let (Some(engine), Some(sh)) = (&services.shadow, &m.shadow) else {
        return;
    };
    let served = served(m.served_stream);
    engine.mirror(Mirror {
        route,
        shadow: sh,
        upstream: Arc::clone(ctx.snapshot.upstream(&sh.target.backend)),
        config: ctx.snapshot.config.clone(),
        endpoint: ctx.endpoint,
        request,
        headers,
        served_by: &exchanged.target,
        served,
        primary_latency: exchanged.upstream_time,
        trace: &ctx.telemetry.parent(),
        judge_upstream: sh
            .judge
            .as_ref()
            .map(|j| Arc::clone(ctx.snapshot.upstream(&j.target.backend))),
    });
}
