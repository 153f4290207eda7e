//! Phase `authenticate`: the caller's virtual key, before the body is read.
//!
//! With client auth on (a key exists, or `[auth] required`), a request without a valid key
//! ends here with 401; the key check is a span of its own. Such a refusal is counted in the
//! metrics but never becomes a ledger row (only an authenticated account is settled).

use http::HeaderMap;

use super::context::RequestCtx;
use crate::base::GatewayError;
use crate::services::Services;
use crate::services::observe::telemetry::{self, Span};

pub fn authenticate(
    services: &Services,
    ctx: &mut RequestCtx,
    headers: &HeaderMap,
) -> Result<(), GatewayError> {
    let Some(gov) = &services.governance else {
        ctx.account.authenticated = true;
        return Ok(());
    };
    let cfg = &ctx.snapshot.config.governance;
    let mut span = if gov.client_auth_on(cfg) {
        telemetry::child_span(&ctx.telemetry, "auth")
    } else {
        Span::default()
    };
    let key = gov
        .authenticate(headers, cfg)
        .inspect_err(|e| span.fail(e.kind()))?;
    span.end();
    if let Some(k) = &key {
        ctx.telemetry.set_principal(
            std::sync::Arc::from(k.id.as_str()),
            Some(std::sync::Arc::from(k.team.as_str())),
        );
    }
    ctx.account.key = key;
    ctx.account.authenticated = true;
    Ok(())
}
