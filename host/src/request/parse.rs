//! Phase `parse`: read the client's body within its size limit and parse the request's
//! top-level members (zero-copy: see `base::openai`).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::context::RequestCtx;
use crate::base::error::{GatewayError, error_chain};
use crate::base::openai::RequestBody;
use crate::base::protocols::{self, Protocol};

pub async fn parse(
    ctx: &mut RequestCtx,
    body: Incoming,
    headers: &HeaderMap,
) -> Result<RequestBody, GatewayError> {
    let server = &ctx.config().server;
    let (limit, deadline) = (server.max_body_bytes, server.body_read_timeout);
    let mut bytes = read_body(body, headers, limit, deadline).await?;
    if ctx.protocol != Protocol::OpenAi {
        let translated = protocols::to_chat(ctx.protocol, &bytes)?;
        ctx.original = Some(std::mem::replace(&mut bytes, translated.chat));
        ctx.echo = translated.echo;
        ctx.stateful = translated.stateful;
    }
    let request = RequestBody::parse(bytes, ctx.endpoint)?;
    ctx.telemetry.request_model = Some(request.model.clone());
    ctx.telemetry.stream = request.stream;
    Ok(request)
}

/// Read the client's body, refusing more than `limit` bytes (by header before reading) and
/// giving up after `deadline`: a body that trickles in (or never ends, or an HTTP/2 stream
/// that sends headers and nothing else) must not hold a connection and a task forever.
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, GatewayError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let read = tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(GatewayError::BodyTimeout {
            secs: deadline.as_secs_f64(),
        });
    };
    match read {
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
