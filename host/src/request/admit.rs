//! Phase `admit`: tags, the token and cost estimate, and the rate-limit and budget
//! reservation, priced at the chosen target, before any upstream sees the request.

use std::time::SystemTime;

use http::HeaderMap;

use super::context::RequestCtx;
use crate::base::GatewayError;
use crate::base::openai::RequestBody;
use crate::config::Target;
use crate::services::Services;
use crate::services::governance::Admission;
use crate::services::observe::telemetry;

/// Admit the request to `chosen`; then the routing decision (from `routing_started`, before
/// `classify`, to now) becomes the request's `route` span.
pub async fn admit(
    services: &Services,
    ctx: &mut RequestCtx,
    headers: &HeaderMap,
    request: &RequestBody,
    chosen: &Target,
    routing_started: SystemTime,
) -> Result<(), GatewayError> {
    let model = ctx
        .upstream_model
        .clone()
        .unwrap_or_else(|| request.model.clone().into());
    if let Some(gov) = &services.governance {
        let admission = Admission {
            config: &ctx.snapshot.config.governance,
            endpoint: ctx.endpoint,
            headers,
            request,
            upstream_body_len: request.bytes().len(),
            backend: &chosen.backend.name,
            model: &model,
        };
        gov.admit(admission, &mut ctx.account).await?;
    }
    if let Some(route) = &ctx.route {
        telemetry::routing_span(
            &ctx.telemetry,
            &route.name,
            &chosen.backend.name,
            Some(&model),
            routing_started,
        )
        .end();
    }
    Ok(())
}
