//! Phase `classify`: `classify` plugins may pick the route and the target.
//!
//! The request's plugin [`Pass`] starts here: it loads the plugin set in force once, and
//! every later stage of this request (`adapt` per attempt, `validate` per answer) runs on
//! that same version.

use http::HeaderMap;

use super::context::RequestCtx;
use crate::base::GatewayError;
use crate::base::openai::RequestBody;
use crate::services::Services;
use crate::services::plugins::{CallerInfo, Decision, Pass};

/// Start the request's pass through the plugins.
pub fn start_pass(
    services: &Services,
    ctx: &RequestCtx,
    request: &RequestBody,
    headers: &HeaderMap,
) -> Pass {
    let key = ctx.account.key.as_ref();
    let caller = CallerInfo {
        key_id: key.map(|k| k.id.clone()),
        team: key.map(|k| k.team.clone()),
        tags: key.map(|k| k.tags.clone()).unwrap_or_default(),
    };
    Pass::new(&services.plugins, request, ctx.endpoint, headers, caller)
        .observed(ctx.telemetry.parent(), services.metrics.clone())
}

/// Run the `classify` stage: a route and target chosen by a plugin, if any.
pub fn classify(
    services: &Services,
    ctx: &RequestCtx,
    pass: &mut Pass,
) -> Result<Decision, GatewayError> {
    pass.classify(ctx.config(), &services.plugins.stats)
}
