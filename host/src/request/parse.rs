//! Phase `parse`: read the client's body within its size limit and parse the request's
//! top-level members (zero-copy: see `base::openai`).

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::context::RequestCtx;
use crate::base::error::{GatewayError, error_chain};
use crate::base::openai::RequestBody;

pub async fn parse(
    ctx: &mut RequestCtx,
    body: Incoming,
    headers: &HeaderMap,
) -> Result<RequestBody, GatewayError> {
    let bytes = read_body(body, headers, ctx.config().server.max_body_bytes).await?;
    let request = RequestBody::parse(bytes, ctx.endpoint)?;
    ctx.telemetry.request_model = Some(request.model.clone());
    ctx.telemetry.stream = request.stream;
    Ok(request)
}

/// Read the client's body, refusing more than `limit` bytes (by header before reading).
async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(GatewayError::BodyTooLarge { limit })
            } else {
                Err(GatewayError::BodyRead(error_chain(&*e)))
            }
        }
    }
}
