//! Streaming answers: relay server-sent events frame by frame, reading them on the way.
//!
//! `SseScanner` reads the event stream as it passes (usage, `[DONE]`) without holding any
//! bytes back. `StreamBody` is the response body a client receives: each upstream frame is
//! forwarded as soon as it arrives, unchanged. The one exception is the usage chunk the
//! gateway asked for on the client's behalf (`stream_options.include_usage`): that event is
//! removed, and to remove it cleanly only an event split across two upstream frames is held
//! until its end arrives. Failures after the stream started end it with one OpenAI-style
//! error event instead of a cut connection, so SDKs raise an error rather than returning a
//! silently truncated answer. Dropping the body (the client went away) drops the upstream
//! response, which closes that connection and so cancels generation upstream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use memchr::memmem;

use crate::error::GatewayError;
use crate::openai::Usage;

/// What was learnt from a stream, reported when it ends.
#[derive(Debug, Clone, Default)]
pub struct StreamSummary {
    pub usage: Option<Usage>,
    pub saw_done: bool,
    pub events: u64,
    /// Events that carried generated content (text, delta content, tool-call arguments):
    /// the ledger's token estimate when a stream ends without a usage report.
    pub content_events: u64,
    pub bytes: u64,
    /// Time from the start of the request to the first byte relayed.
    pub first_byte: Option<Duration>,
    pub outcome: StreamOutcome,
    /// The whole stream as upstream sent it, when capture was asked for (shadow comparison).
    pub captured: Option<Bytes>,
    /// The `model` the upstream named in its chunks (for telemetry).
    pub model: Option<String>,
    /// Every non-null `finish_reason` seen, in order (one per choice).
    pub finish_reasons: Vec<String>,
}

/// How a stream ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Upstream finished and everything was relayed.
    #[default]
    Completed,
    /// The client disconnected before the end.
    ClientGone,
    /// Upstream failed or stalled mid-stream; the client got an error event.
    UpstreamFailed(String),
}

/// Incremental SSE reader: finds complete `data:` lines across frame boundaries.
#[derive(Debug, Default)]
pub struct SseScanner {
    partial_line: Vec<u8>,
    pub usage: Option<Usage>,
    pub saw_done: bool,
    pub events: u64,
    pub content_events: u64,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
}

/// The string value following `key` (which includes its quotes and colon, no spaces), if
/// it is a plain string without escapes: how chunks carry `model` and `finish_reason`.
fn string_after<'a>(data: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = memmem::find(data, key)? + key.len();
    let rest = data[at..].trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

impl SseScanner {
    /// Feed the next bytes of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(nl) = memchr::memchr(b'\n', chunk) {
            let line = &chunk[..nl];
            if self.partial_line.is_empty() {
                self.line(line);
            } else {
                let mut full = std::mem::take(&mut self.partial_line);
                full.extend_from_slice(line);
                self.line(&full);
                full.clear();
                self.partial_line = full;
            }
            chunk = &chunk[nl + 1..];
        }
        self.partial_line.extend_from_slice(chunk);
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        self.events += 1;
        if data == b"[DONE]" {
            self.saw_done = true;
            return;
        }
        if let Some(u) = usage_of(data) {
            self.usage = Some(u);
        }
        if carries_content(data) {
            self.content_events += 1;
        }
        if self.model.is_none()
            && let Some(m) = string_after(data, b"\"model\":")
        {
            self.model = Some(m.to_owned());
        }
        // Most chunks carry `"finish_reason":null`; only the last of each choice a string.
        if let Some(r) = string_after(data, b"\"finish_reason\":") {
            self.finish_reasons.push(r.to_owned());
        }
    }
}

/// Usage from one event's JSON, when it carries a non-null `usage` object. The substring
/// test keeps the per-chunk cost to a memchr-speed scan; only the usage chunk is parsed.
fn usage_of(data: &[u8]) -> Option<Usage> {
    let finder = memmem::find(data, b"\"usage\"")?;
    let rest = &data[finder + 7..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    if !rest.starts_with(b"{") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct U {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<U>(data).ok().and_then(|u| u.usage)
}

/// True when an event carries generated text: a non-empty `content`, `text` or tool-call
/// `arguments` string (OpenAI streams about one token per such event).
fn carries_content(data: &[u8]) -> bool {
    [&b"\"content\":\""[..], b"\"text\":\"", b"\"arguments\":\""]
        .iter()
        .any(|needle| {
            memmem::find_iter(data, needle).any(|i| data.get(i + needle.len()) != Some(&b'"'))
        })
}

/// True for the usage-only chunk OpenAI sends when `include_usage` is set: empty `choices`
/// and a `usage` object.
fn is_usage_only_event(event: &[u8]) -> bool {
    memmem::find(event, b"\"choices\":[]").is_some() && usage_of(data_of(event)).is_some()
}

fn data_of(event: &[u8]) -> &[u8] {
    match memmem::find(event, b"data:") {
        Some(i) => {
            let d = &event[i + 5..];
            d.strip_prefix(b" ").unwrap_or(d)
        }
        None => event,
    }
}

/// The end of the first complete event in `buf` (index just past its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let nl = from + i;
        let next = &buf[nl + 1..];
        if next.first() == Some(&b'\n') {
            return Some(nl + 2);
        }
        if next.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        from = nl + 1;
    }
    None
}

/// Called once when a stream ends, however it ends.
pub type OnStreamEnd = Box<dyn FnOnce(StreamSummary) + Send + 'static>;

/// The streamed response body relayed to the client.
pub struct StreamBody {
    upstream: Incoming,
    /// The first frame, already read before the response was committed.
    first: Option<Bytes>,
    scanner: SseScanner,
    /// Remove the usage-only event (the gateway asked for it, the client did not).
    strip_usage: bool,
    /// Bytes of an event split across frames, held while stripping.
    held: BytesMut,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    backend: String,
    started: Instant,
    summary: StreamSummary,
    /// A copy of every upstream frame, kept only for streams whose shadow compares them.
    capture: Option<BytesMut>,
    on_end: Option<OnStreamEnd>,
    done: bool,
}

impl StreamBody {
    pub fn new(
        upstream: Incoming,
        first: Bytes,
        strip_usage: bool,
        idle_timeout: Duration,
        backend: String,
        started: Instant,
        on_end: OnStreamEnd,
    ) -> Self {
        StreamBody {
            upstream,
            first: Some(first),
            scanner: SseScanner::default(),
            strip_usage,
            held: BytesMut::new(),
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            backend,
            started,
            summary: StreamSummary::default(),
            capture: None,
            on_end: Some(on_end),
            done: false,
        }
    }

    /// Keep a copy of the whole stream for the end-of-stream summary.
    pub fn capture(&mut self) {
        self.capture = Some(BytesMut::new());
    }

    /// Scan a frame and decide what of it goes to the client.
    fn relay(&mut self, frame: Bytes) -> Option<Bytes> {
        self.scanner.feed(&frame);
        if let Some(c) = &mut self.capture {
            c.extend_from_slice(&frame);
        }
        self.summary.bytes += frame.len() as u64;
        if !self.strip_usage {
            return Some(frame);
        }
        // Fast path: no held bytes, the frame holds only whole events, none of them the
        // usage chunk → relay the frame itself, zero-copy.
        if self.held.is_empty()
            && (frame.ends_with(b"\n\n") || frame.ends_with(b"\r\n\r\n"))
            && memmem::find(&frame, b"\"choices\":[]").is_none()
        {
            return Some(frame);
        }
        self.held.extend_from_slice(&frame);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.held) {
            let event = self.held.split_to(end);
            if !is_usage_only_event(&event) {
                out.extend_from_slice(&event);
            }
        }
        if out.is_empty() {
            None
        } else {
            Some(out.freeze())
        }
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
        let mut out = BytesMut::new();
        // Whatever was held is an incomplete event: it cannot be parsed by the client, drop it.
        self.held.clear();
        out.extend_from_slice(&err.to_sse_event());
        self.finish(StreamOutcome::UpstreamFailed(err.to_string()));
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
            if let Some(out) = this.relay(first) {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
        loop {
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    match frame.into_data() {
                        Ok(data) => {
                            if let Some(out) = this.relay(data) {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                        }
                        // Trailers are not part of the OpenAI protocol; ignore them.
                        Err(_) => continue,
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let err = GatewayError::UpstreamBroken {
                        backend: this.backend.clone(),
                        detail: format!("mid-stream: {}", crate::upstream::error_chain(&e)),
                    };
                    return this.fail(err);
                }
                Poll::Ready(None) => {
                    if !this.held.is_empty() {
                        let rest = this.held.split().freeze();
                        this.finish(StreamOutcome::Completed);
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    this.finish(StreamOutcome::Completed);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_reads_usage_and_done_across_frame_splits() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut s = SseScanner::default();
            s.feed(&stream[..split]);
            s.feed(&stream[split..]);
            assert!(s.saw_done, "split {split}");
            assert_eq!(s.events, 3);
            assert_eq!(s.content_events, 1);
            assert_eq!(
                s.usage,
                Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 7,
                    total_tokens: 12
                })
            );
        }
    }

    #[test]
    fn scanner_reads_model_and_finish_reasons() {
        let mut s = SseScanner::default();
        s.feed(b"data: {\"id\":\"c1\",\"model\":\"llama-3\",\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n");
        s.feed(b"data: {\"id\":\"c1\",\"model\":\"llama-3\",\"choices\":[{\"delta\":{},\"finish_reason\": \"stop\"}]}\n\n");
        assert_eq!(s.model.as_deref(), Some("llama-3"));
        assert_eq!(s.finish_reasons, vec!["stop".to_string()]);
    }

    #[test]
    fn event_boundaries() {
        assert_eq!(event_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: x\n"), None);
    }

    #[test]
    fn usage_only_event_is_recognised() {
        assert!(is_usage_only_event(
            b"data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"
        ));
        assert!(!is_usage_only_event(
            b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n"
        ));
        assert!(!is_usage_only_event(b"data: [DONE]\n\n"));
    }
}
