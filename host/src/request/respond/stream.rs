//! A streamed answer, relayed frame by frame as it arrives.
//!
//! The first chunk is awaited before the response is committed, so a failure before any
//! byte still gets a proper error (and the attempt loop may try a fallback). From then on
//! [`StreamBody`] forwards each upstream frame as soon as it arrives, unchanged, reading it
//! on the way (`base::sse::SseScanner`: usage, `[DONE]`). The one exception is the usage
//! chunk the gateway asked for on the client's behalf (`stream_options.include_usage`): that
//! event is removed, and to remove it cleanly only an event split across two upstream frames
//! is held until its end arrives. Failures after the stream started end it with one
//! OpenAI-style error event instead of a cut connection, so SDKs raise an error rather than
//! returning a silently truncated answer. A stream is complete only with `data: [DONE]` and
//! a finish reason: an upstream that closes cleanly before them cut the answer short, and a
//! line that is not SSE means the body is not the stream it claims to be; both end with an
//! error event and a failed ledger row. A body whose first chunk is not SSE at all fails
//! before the response is committed, so the attempt loop can still try a fallback. Dropping the body (the client went away) drops the
//! upstream response, which closes that connection and so cancels generation upstream.
//!
//! When the stream ends, however it ends, its summary settles the ledger row, ends the
//! request's span and access line, and hands a captured copy to the shadow comparison.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use memchr::memmem;

use super::{Reply, copy_response_headers};
use crate::base::body::GatewayBody;
use crate::base::error::{GatewayError, error_chain, snippet};
use crate::base::protocols::{Protocol, native};
use crate::base::respond::stamp;
use crate::base::sse::{
    LONG_LINE, SseScanner, StreamOutcome, StreamSummary, event_end, is_usage_only_event,
    starts_like_sse,
};
use crate::request::exchange::Exchange;
use crate::services::governance::{Ending, Settler};
use crate::services::observe::telemetry::{self, AnswerFacts};
use crate::services::plugins::ChunkHook;
use crate::services::shadow::StreamServed;

/// A streamed answer: wait for the first chunk (so a failure before any byte can still be
/// answered with a proper error), then relay frames as they come.
pub async fn stream_answer(
    x: &Exchange<'_>,
    reply: Reply,
) -> Result<(Response<GatewayBody>, Duration), GatewayError> {
    let Reply {
        target,
        model,
        resp,
        sent,
        slot,
        span: attempt,
        native,
    } = reply;
    let started = x.started;
    let (parts, mut body) = resp.into_parts();
    let backend = &target.backend;
    let first = loop {
        let next = tokio::time::timeout(backend.first_byte_timeout, body.frame()).await;
        match next {
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout {
                    backend: backend.name.to_string(),
                    phase: "waiting for the first chunk of the stream",
                    secs: backend.first_byte_timeout.as_secs_f64(),
                });
            }
            Ok(None) => {
                return Err(GatewayError::UpstreamBroken {
                    backend: backend.name.to_string(),
                    detail: "the stream ended before its first chunk".into(),
                });
            }
            Ok(Some(Err(e))) => {
                return Err(GatewayError::UpstreamBroken {
                    backend: backend.name.to_string(),
                    detail: format!("before the first chunk: {}", error_chain(&e)),
                });
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) if !d.is_empty() => break d,
                _ => continue,
            },
        }
    };
    // Nothing has reached the client yet: a body that is no event stream (an HTML page, a
    // JSON error with a 200) is a failed attempt, and a fallback may still answer.
    if !starts_like_sse(&first) {
        return Err(GatewayError::UpstreamGarbage {
            backend: backend.name.to_string(),
            detail: format!(
                "a stream was asked for and the answer is not server-sent events: {}",
                snippet(&first, 120)
            ),
        });
    }
    let upstream_time = sent.elapsed();
    let metrics = x.services.metrics.clone();
    metrics.overhead(started.elapsed().saturating_sub(upstream_time));
    metrics.upstream(&target.backend.name, upstream_time);
    let upstream_model = model.to_string();

    let route = x.route.clone();
    let backend_label = target.backend.name.clone();
    let end = x.stream_end.clone();
    let capturing = end.capture.is_some() || end.cache_capture.is_some();
    let client_path = x.client_path;
    let on_end = Box::new(move |s: StreamSummary| {
        // The URL's in-flight slot is held until the stream ends.
        drop(slot);
        let cost = end
            .settler
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .map(|settler| settle_stream(settler, &s));
        let receivers: Vec<_> = [&end.capture, &end.cache_capture]
            .into_iter()
            .flatten()
            .filter_map(|c| c.lock().ok().map(|mut g| std::mem::take(&mut *g)))
            .flatten()
            .collect();
        if !receivers.is_empty() {
            let served = StreamServed {
                sse: if s.outcome == StreamOutcome::Completed {
                    s.captured.clone()
                } else {
                    None
                },
                took: started.elapsed(),
            };
            for tx in receivers {
                let _ = tx.send(served.clone());
            }
        }
        let mut error = None;
        if s.outcome == StreamOutcome::ClientGone {
            metrics.client_disconnect();
            error = Some("client_disconnected");
            tracing::info!(route = %route, backend = %backend_label, bytes = s.bytes, "client disconnected mid-stream; upstream request cancelled");
        }
        if let StreamOutcome::UpstreamFailed(why) = &s.outcome {
            metrics.upstream_error(&backend_label, "stream_broken");
            error = Some("stream_broken");
            tracing::warn!(route = %route, backend = %backend_label, error = %why, "stream ended early");
        }
        if s.outcome == StreamOutcome::Shutdown {
            error = Some("shutting_down");
            tracing::warn!(route = %route, backend = %backend_label, bytes = s.bytes, "stream ended by the shutdown grace period");
        }
        let took = started.elapsed();
        metrics.request(&route, &backend_label, 200, took);
        match error {
            None => attempt.succeeded(
                &metrics,
                AnswerFacts {
                    response_model: s.model.clone(),
                    finish_reasons: s.finish_reasons.clone(),
                    usage: s.usage,
                    first_token: Some(upstream_time),
                    ..AnswerFacts::default()
                },
            ),
            Some(kind) => attempt.failed(&metrics, kind, None),
        }
        if let Some(mut tel) = end.telemetry.lock().ok().and_then(|mut g| g.take()) {
            tel.usage = s.usage;
            if let Some(c) = cost {
                tel.set_cost(c);
            }
            tel.finish_span(200, &route, &backend_label, error);
            telemetry::access_log(
                &tel,
                &telemetry::AccessRecord {
                    method: "POST",
                    path: client_path,
                    route: &route,
                    backend: &backend_label,
                    upstream_model: &upstream_model,
                    status: 200,
                    latency: took,
                    upstream: Some(upstream_time),
                    error,
                },
            );
        }
    });
    let mut stream = StreamBody::new(StreamRelay {
        upstream: body,
        first,
        // A stream passed through carries its protocol's own usage, asked for by nobody.
        strip_usage: native.is_none() && x.request.strip_usage_chunk(true),
        native,
        max_event: x.max_event,
        max_capture: x.max_answer,
        idle_timeout: backend.timeout,
        backend: backend.name.to_string(),
        started,
        cutoff: Box::pin(x.services.cutoff.signal()),
        on_end,
        chunks: x.chunks.clone(),
    });
    if capturing {
        stream.capture();
    }
    let mut out = Response::new(GatewayBody::Stream(Box::new(stream)));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    stamp(out.headers_mut(), &backend.name, Some(&model));
    Ok((out, upstream_time))
}

/// The end-of-stream half of settling: usage from the stream, or an estimate from what was
/// relayed when the client went away or the upstream broke off. Returns the cost.
fn settle_stream(s: Settler, summary: &StreamSummary) -> f64 {
    let (status, outcome) = match &summary.outcome {
        StreamOutcome::Completed => (200, "ok"),
        StreamOutcome::ClientGone => (499, "cancelled"),
        StreamOutcome::UpstreamFailed(_) => (502, "stream_failed"),
        StreamOutcome::Shutdown => (503, "shutdown"),
    };
    s.settle(Ending {
        status,
        outcome: outcome.into(),
        usage: summary.usage,
        completion_estimate: Some(summary.content_events),
        ttft_ms: summary.first_byte.map(|d| d.as_secs_f64() * 1000.0),
        reached_upstream: true,
        cached: false,
    })
}

/// An event with each choice's text (chat `delta.content`, completions `text`) replaced by
/// what the `chunks` plugins return for it; `None` when the event has no such text (kept as
/// it came). A choice's `finish_reason` marks its last piece, so what a plugin held back is
/// sent with it.
fn rewrite_text(hook: &ChunkHook, event: &[u8]) -> Result<Option<Vec<u8>>, GatewayError> {
    let Ok(text) = std::str::from_utf8(event) else {
        return Ok(None);
    };
    // An event's data may span several `data:` lines, joined by newlines.
    let mut data = String::new();
    let mut lines = 0;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            if lines > 0 {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
            lines += 1;
        }
    }
    if lines == 0 || data.trim() == "[DONE]" {
        return Ok(None);
    }
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&data) else {
        return Ok(None);
    };
    let Some(choices) = v.get_mut("choices").and_then(|c| c.as_array_mut()) else {
        return Ok(None);
    };
    let mut changed = false;
    for (n, c) in choices.iter_mut().enumerate() {
        let index = c
            .get("index")
            .and_then(serde_json::Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(n as u32);
        let last = c.get("finish_reason").is_some_and(|f| !f.is_null());
        // Chat streams carry text in `delta.content`, completions in `text`.
        let slot = if c.get("delta").is_some_and(serde_json::Value::is_object) {
            c.get_mut("delta")
                .and_then(serde_json::Value::as_object_mut)
                .map(|d| d.entry("content").or_insert(serde_json::Value::Null))
        } else {
            c.as_object_mut()
                .map(|o| o.entry("text").or_insert(serde_json::Value::Null))
        };
        let Some(slot) = slot else { continue };
        let piece = slot.as_str().unwrap_or("");
        if piece.is_empty() && !last {
            continue;
        }
        let new = hook.on_chunk(index, piece, last)?;
        if new != piece {
            *slot = serde_json::Value::String(new);
            changed = true;
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(data.len() + 16);
    // Other fields (`event:`, `id:`) stay as they were.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("data:"))
    {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    Ok(Some(out))
}

/// Called once when a stream ends, however it ends.
pub type OnStreamEnd = Box<dyn FnOnce(StreamSummary) + Send + 'static>;

/// The streamed response body relayed to the client.
pub struct StreamBody {
    upstream: Incoming,
    /// The first frame, already read before the response was committed.
    first: Option<Bytes>,
    scanner: SseScanner,
    /// The stream is in this client protocol's own format: its error event is too.
    native: Option<Protocol>,
    /// Remove the usage-only event (the gateway asked for it, the client did not).
    strip_usage: bool,
    /// Bytes of an event split across frames, held while stripping.
    held: BytesMut,
    /// The longest event held while stripping (the scanner caps lines alike).
    max_event: usize,
    /// The most bytes captured; a longer stream is not compared by the shadow.
    max_capture: usize,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    backend: String,
    started: Instant,
    cutoff: Cutoff,
    summary: StreamSummary,
    /// A copy of every upstream frame, kept only for streams whose shadow compares them.
    capture: Option<BytesMut>,
    on_end: Option<OnStreamEnd>,
    /// The `chunks` plugins each event's text goes through (then events are relayed whole).
    chunks: Option<ChunkHook>,
    done: bool,
    /// The client has the start of a line whose end it has not got (only without
    /// stripping: stripping relays whole events).
    mid_line: bool,
}

/// What a relay is made from.
pub struct StreamRelay {
    pub upstream: Incoming,
    /// The first frame, already read before the response was committed.
    pub first: Bytes,
    /// Remove the usage-only event (the gateway asked for it, the client did not).
    pub strip_usage: bool,
    /// The stream is in this client protocol's own format (passed through): its usage and
    /// its end are read from that format's events.
    pub native: Option<Protocol>,
    /// `[server] max_event_bytes`: the longest line or held event.
    pub max_event: usize,
    /// `[server] max_answer_bytes`: the most bytes captured for the shadow comparison.
    pub max_capture: usize,
    /// The longest pause allowed between two frames.
    pub idle_timeout: Duration,
    pub backend: String,
    /// When the request started (the summary's time to first byte counts from it).
    pub started: Instant,
    /// Resolves when the shutdown's grace period is over (`services::StreamCutoff`).
    pub cutoff: Cutoff,
    pub on_end: OnStreamEnd,
    /// The `chunks` plugins (WIT `0.2`) the text goes through on its way.
    pub chunks: Option<ChunkHook>,
}

/// The shutdown signal a relay watches.
pub type Cutoff = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl StreamBody {
    pub fn new(r: StreamRelay) -> Self {
        StreamBody {
            upstream: r.upstream,
            first: Some(r.first),
            native: r.native,
            scanner: match r.native {
                Some(p) => SseScanner::native(r.max_event, p),
                None => SseScanner::new(r.max_event),
            },
            strip_usage: r.strip_usage,
            held: BytesMut::new(),
            max_event: r.max_event,
            max_capture: r.max_capture,
            idle_timeout: r.idle_timeout,
            idle: Box::pin(tokio::time::sleep(r.idle_timeout)),
            backend: r.backend,
            started: r.started,
            cutoff: r.cutoff,
            summary: StreamSummary::default(),
            capture: None,
            on_end: Some(r.on_end),
            chunks: r.chunks,
            done: false,
            mid_line: false,
        }
    }

    /// Keep a copy of the whole stream for the end-of-stream summary.
    pub fn capture(&mut self) {
        self.capture = Some(BytesMut::new());
    }

    /// Scan a frame and decide what of it goes to the client; an error when the frame shows
    /// the stream is unusable (it is then not relayed).
    fn relay(&mut self, frame: Bytes) -> Result<Option<Bytes>, GatewayError> {
        self.scanner.feed(&frame);
        if let Some(problem) = &self.scanner.problem {
            return Err(GatewayError::UpstreamGarbage {
                backend: self.backend.clone(),
                detail: format!("mid-stream: {problem}"),
            });
        }
        if let Some(c) = &mut self.capture {
            if c.len() + frame.len() > self.max_capture {
                // Too long to compare: the shadow pair is skipped, the stream goes on.
                tracing::debug!(backend = %self.backend, "stream longer than max_answer_bytes; not captured for the shadow comparison");
                self.capture = None;
            } else {
                c.extend_from_slice(&frame);
            }
        }
        self.summary.bytes += frame.len() as u64;
        if !self.strip_usage && self.chunks.is_none() {
            self.mid_line = !frame.ends_with(b"\n");
            return Ok(Some(frame));
        }
        // Fast path: no held bytes, the frame holds only whole events, none of them the
        // usage chunk, and no plugin rewrites text → relay the frame itself, zero-copy.
        if self.chunks.is_none()
            && self.held.is_empty()
            && (frame.ends_with(b"\n\n") || frame.ends_with(b"\r\n\r\n"))
            && memmem::find(&frame, b"\"choices\":[]").is_none()
        {
            return Ok(Some(frame));
        }
        let needed = self.held.len() + frame.len();
        if needed > self.held.capacity() && needed > LONG_LINE && needed <= self.max_event {
            // Room up to the cap at once, as the scanner does for a long line.
            self.held.reserve(self.max_event - self.held.len());
        }
        self.held.extend_from_slice(&frame);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.held) {
            let event = self.held.split_to(end);
            if self.strip_usage && is_usage_only_event(&event) {
                continue;
            }
            match &self.chunks {
                Some(hook) => match rewrite_text(hook, &event)? {
                    Some(new) => out.extend_from_slice(&new),
                    None => out.extend_from_slice(&event),
                },
                None => out.extend_from_slice(&event),
            }
        }
        if self.held.len() > self.max_event {
            return Err(GatewayError::UpstreamGarbage {
                backend: self.backend.clone(),
                detail: format!(
                    "mid-stream: an event is longer than {} bytes (the server's max_event_bytes)",
                    self.max_event
                ),
            });
        }
        if out.is_empty() {
            Ok(None)
        } else {
            Ok(Some(out.freeze()))
        }
    }

    /// How the upstream's clean end of the body reads: complete only after `data: [DONE]`
    /// and a finish reason; otherwise the upstream cut the answer short.
    fn ending(&self) -> Result<(), GatewayError> {
        let missing = if !self.scanner.saw_done {
            self.scanner.last_event_name()
        } else if self.scanner.finish_reasons.is_empty() {
            "a finish_reason"
        } else {
            return Ok(());
        };
        Err(GatewayError::UpstreamBroken {
            backend: self.backend.clone(),
            detail: format!(
                "the stream ended without {missing} after {} events: the answer is incomplete",
                self.scanner.events
            ),
        })
    }

    fn finish(&mut self, outcome: StreamOutcome) {
        if self.done {
            return;
        }
        self.done = true;
        self.summary.outcome = outcome;
        self.summary.usage = self.scanner.usage;
        self.summary.saw_done = self.scanner.saw_done;
        self.summary.events = self.scanner.events;
        self.summary.captured = self.capture.take().map(BytesMut::freeze);
        self.summary.content_events = self.scanner.content_events;
        self.summary.model = self.scanner.model.take();
        self.summary.finish_reasons = std::mem::take(&mut self.scanner.finish_reasons);
        if let Some(f) = self.on_end.take() {
            f(std::mem::take(&mut self.summary));
        }
    }

    fn fail(
        &mut self,
        err: GatewayError,
    ) -> Poll<Option<Result<Frame<Bytes>, std::convert::Infallible>>> {
        tracing::warn!(backend = %self.backend, error = %err, "stream broke off upstream; ending it with an error event");
        let outcome = StreamOutcome::UpstreamFailed(err.to_string());
        self.end_with(&err, outcome)
    }

    /// End the stream with `err` as its last event.
    fn end_with(
        &mut self,
        err: &GatewayError,
        outcome: StreamOutcome,
    ) -> Poll<Option<Result<Frame<Bytes>, std::convert::Infallible>>> {
        let mut out = BytesMut::new();
        // Whatever was held is an incomplete event: it cannot be parsed by the client, drop it.
        self.held.clear();
        if self.mid_line {
            // The client holds the start of a line: end it, so the error is an event of its own.
            out.extend_from_slice(b"\n\n");
        }
        match self.native {
            Some(p) => out.extend_from_slice(&native::error_event(p, err.status(), &err.to_body())),
            None => out.extend_from_slice(&err.to_sse_event()),
        }
        self.finish(outcome);
        Poll::Ready(Some(Ok(Frame::data(out.freeze()))))
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            this.summary.first_byte = Some(this.started.elapsed());
            match this.relay(first) {
                Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Ok(None) => {}
                Err(e) => return this.fail(e),
            }
        }
        loop {
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    match frame.into_data() {
                        Ok(data) => match this.relay(data) {
                            Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                            Ok(None) => {}
                            Err(e) => return this.fail(e),
                        },
                        // Trailers are not part of the OpenAI protocol; ignore them.
                        Err(_) => continue,
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let err = GatewayError::UpstreamBroken {
                        backend: this.backend.clone(),
                        detail: format!("mid-stream: {}", error_chain(&e)),
                    };
                    return this.fail(err);
                }
                Poll::Ready(None) => {
                    if let Err(e) = this.ending() {
                        return this.fail(e);
                    }
                    if !this.held.is_empty() {
                        let rest = this.held.split().freeze();
                        this.finish(StreamOutcome::Completed);
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    this.finish(StreamOutcome::Completed);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.cutoff.as_mut().poll(cx).is_ready() {
                        return this.end_with(&GatewayError::ShuttingDown, StreamOutcome::Shutdown);
                    }
                    if this.idle.as_mut().poll(cx).is_ready() {
                        let err = GatewayError::UpstreamTimeout {
                            backend: this.backend.clone(),
                            phase: "between two chunks of a stream",
                            secs: this.idle_timeout.as_secs_f64(),
                        };
                        return this.fail(err);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        // Dropped before the end: the client went away. Dropping `upstream` right after this
        // closes the upstream connection, which is how the upstream learns to stop.
        if !self.done {
            self.finish(StreamOutcome::ClientGone);
        }
    }
}
