//! Shadow traffic on the request path: whether this request is mirrored (decided before
//! the attempt loop, so a mirrored stream keeps a copy of what it relays), and the hand-off
//! of the mirror job once the answer is known. One random draw and one non-blocking send;
//! the rest happens off the request path (`services::shadow`).

use std::sync::Arc;

use http::HeaderMap;

use super::context::RequestCtx;
use super::exchange::Exchanged;
use crate::base::openai::RequestBody;
use crate::config::Shadow;
use crate::services::Services;
use crate::services::shadow::{self, CaptureSlot, Mirror, Served, StreamServed};

/// A request chosen for mirroring.
pub struct Mirroring {
    shadow: Shadow,
    /// A relayed stream's copy arrives here when it ends.
    served_stream: Option<tokio::sync::oneshot::Receiver<StreamServed>>,
}

/// Is this request mirrored? For a stream, the capture slot the relay delivers its copy to.
pub fn sample(
    services: &Services,
    ctx: &RequestCtx,
    request: &RequestBody,
) -> (Option<Mirroring>, Option<CaptureSlot>) {
    let (Some(engine), Some(route)) = (&services.shadow, &ctx.route) else {
        return (None, None);
    };
    let Some(sh) = route.shadow.as_ref().filter(|s| engine.sampled(s)) else {
        return (None, None);
    };
    let (capture, served_stream) = if request.stream {
        let (slot, rx) = shadow::capture_channel();
        (Some(slot), Some(rx))
    } else {
        (None, None)
    };
    (
        Some(Mirroring {
            shadow: sh.clone(),
            served_stream,
        }),
        capture,
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
    let (Some(engine), Some(route)) = (&services.shadow, &ctx.route) else {
        return;
    };
    // A stream relayed live delivers its copy when it ends; a held one is at hand.
    let served = match m.served_stream {
        Some(rx) if exchanged.body.is_none() => Served::Stream(rx),
        Some(_) => Served::Complete(exchanged.events.clone()),
        None => Served::Complete(exchanged.body.clone()),
    };
    engine.mirror(Mirror {
        route,
        shadow: &m.shadow,
        upstream: Arc::clone(ctx.snapshot.upstream(&m.shadow.target.backend)),
        config: ctx.snapshot.config.clone(),
        endpoint: ctx.endpoint,
        request,
        headers,
        served_by: &exchanged.target,
        served,
        primary_latency: exchanged.upstream_time,
        trace: &ctx.telemetry.parent(),
    });
}
