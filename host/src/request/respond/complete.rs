//! A complete (non-streamed) answer, read whole and relayed byte for byte.

use std::time::Instant;

use http::Response;
use hyper::body::Incoming;

use super::{Whole, collect_upstream, copy_response_headers};
use crate::base::body::GatewayBody;
use crate::base::error::{GatewayError, snippet};
use crate::base::openai::ResponseProbe;
use crate::base::respond::stamp;
use crate::config::Target;
use crate::services::observe::telemetry::{self, RequestTelemetry};

/// A complete (non-streamed) answer: read it (at most `max_answer` bytes), check it is
/// JSON, relay it byte for byte.
pub async fn complete_answer(
    tel: &RequestTelemetry,
    target: &Target,
    model: &str,
    resp: Response<Incoming>,
    sent: Instant,
    max_answer: usize,
) -> Result<Whole, GatewayError> {
    let (parts, body) = resp.into_parts();
    let bytes = collect_upstream(target, body, max_answer).await?;
    let upstream_time = sent.elapsed();
    let Some(probe) = ResponseProbe::read(&bytes) else {
        return Err(GatewayError::UpstreamGarbage {
            backend: target.backend.name.to_string(),
            detail: format!("expected a JSON object, got: {}", snippet(&bytes, 120)),
        });
    };
    let facts = telemetry::answer_facts(tel, probe, &bytes);
    let mut out = Response::new(GatewayBody::from(bytes.clone()));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    stamp(out.headers_mut(), &target.backend.name, Some(model));
    Ok(Whole {
        resp: out,
        body: bytes,
        upstream_time,
        facts,
        events: None,
    })
}
