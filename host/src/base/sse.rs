//! Server-sent event streams as OpenAI sends them: read on the way, never held back.
//!
//! [`SseScanner`] reads an event stream fed frame by frame (usage, `[DONE]`, the model,
//! finish reasons, how many events carried content) across any frame boundaries, and
//! [`StreamSummary`] is what a relayed stream reports when it ends. The relay itself is the
//! request path's (`request::respond::stream`).

use std::time::Duration;

use bytes::Bytes;
use memchr::memmem;

use super::openai::Usage;
use super::protocols::{Protocol, native};

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
    /// The gateway's shutdown grace period ended first; the client got an error event.
    Shutdown,
}

/// What makes a stream unusable, found on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanProblem {
    /// A line that is no SSE field (`data:`, `event:`, `id:`, `retry:`, `:comment`), or a
    /// `data:` payload that is neither a JSON object nor `[DONE]`.
    NotSse(String),
    /// A line longer than the cap (`[server] max_event_bytes`) without its end.
    LineTooLong { limit: usize },
}

impl std::fmt::Display for ScanProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanProblem::NotSse(line) => write!(f, "the stream is not server-sent events: {line}"),
            ScanProblem::LineTooLong { limit } => write!(
                f,
                "a line of the stream is longer than {limit} bytes (the server's max_event_bytes)"
            ),
        }
    }
}

/// Default cap on one line (and one held event) of an upstream stream: far above any
/// chunk OpenAI-compatible servers send, far below what would let one line exhaust memory.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// A partial line longer than this is given its whole cap at once (see `SseScanner::feed`).
pub const LONG_LINE: usize = 64 * 1024;

/// Incremental SSE reader: finds complete `data:` lines across frame boundaries.
#[derive(Debug)]
pub struct SseScanner {
    partial_line: Vec<u8>,
    /// The longest line kept while waiting for its end.
    max_line: usize,
    /// The first problem found; the relay ends the stream on it.
    pub problem: Option<ScanProblem>,
    pub usage: Option<Usage>,
    pub saw_done: bool,
    pub events: u64,
    pub content_events: u64,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
    /// The stream is in this protocol's own format (passed through), not chat chunks.
    native: Option<Protocol>,
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

impl Default for SseScanner {
    fn default() -> Self {
        SseScanner::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseScanner {
    /// A scanner that keeps at most `max_line` bytes of a line waiting for its end.
    pub fn new(max_line: usize) -> Self {
        SseScanner {
            partial_line: Vec::new(),
            max_line,
            problem: None,
            usage: None,
            saw_done: false,
            events: 0,
            content_events: 0,
            model: None,
            finish_reasons: Vec::new(),
            native: None,
        }
    }

    /// A scanner for a stream in `protocol`'s own event format (a request passed through):
    /// its usage and its last event are read from that format's events.
    pub fn native(max_line: usize, protocol: Protocol) -> Self {
        SseScanner {
            native: Some(protocol).filter(|p| *p != Protocol::OpenAi),
            ..SseScanner::new(max_line)
        }
    }

    /// What ends a complete stream of this format (for the error when it is missing).
    pub fn last_event_name(&self) -> &'static str {
        match self.native {
            Some(Protocol::Responses) => "response.completed",
            Some(Protocol::Messages) => "message_stop",
            _ => "data: [DONE]",
        }
    }

    /// One event of a native stream: its last event stands for `[DONE]`, its stop reason (or
    /// final status) for a finish reason.
    fn native_event(&mut self, protocol: Protocol, data: &[u8]) {
        let e = native::read_event(protocol, data);
        if e.content {
            self.content_events += 1;
        }
        if e.prompt.is_some() || e.completion.is_some() {
            let mut u = self.usage.unwrap_or_default();
            if let Some(p) = e.prompt {
                u.prompt_tokens = p;
            }
            if let Some(c) = e.completion {
                u.completion_tokens = c;
            }
            u.total_tokens = u.prompt_tokens + u.completion_tokens;
            self.usage = Some(u);
        }
        if self.model.is_none() {
            self.model = e.model;
        }
        if let Some(f) = e.finish {
            self.finish_reasons.push(f);
        }
        if e.last {
            self.saw_done = true;
            if self.finish_reasons.is_empty() {
                self.finish_reasons.push("stop".into());
            }
        }
    }

    /// Feed the next bytes of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.problem.is_some() {
            return;
        }
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
            if self.problem.is_some() {
                // Nothing after the first problem is read, however the stream was split
                // into frames: what the scanner reports must not depend on that.
                self.partial_line.clear();
                return;
            }
            chunk = &chunk[nl + 1..];
        }
        if self.partial_line.len() + chunk.len() > self.max_line {
            // Without its end a line cannot be read; keeping it would let one line without a
            // newline grow the gateway's memory without bound.
            self.partial_line = Vec::new();
            self.flag(ScanProblem::LineTooLong {
                limit: self.max_line,
            });
            return;
        }
        let needed = self.partial_line.len() + chunk.len();
        if needed > self.partial_line.capacity() {
            // A long line gets room up to the cap at once: grown by doubling, every size it
            // outgrew would stay resident in the allocator for a while (about six times the
            // cap in all); reserved once, only the pages it fills are.
            let target = if needed > LONG_LINE {
                self.max_line
            } else {
                (self.partial_line.capacity() * 2).clamp(needed, self.max_line)
            };
            self.partial_line
                .reserve_exact(target - self.partial_line.len());
        }
        self.partial_line.extend_from_slice(chunk);
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            if !is_sse_field(line) {
                self.flag(ScanProblem::NotSse(crate::base::error::snippet(line, 80)));
            }
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        self.events += 1;
        if data == b"[DONE]" {
            self.saw_done = true;
            return;
        }
        // OpenAI's chunks are JSON objects; checking the first byte keeps this per-event
        // cost to nothing while catching an HTML page or a bare text dump.
        if data.trim_ascii_start().first().is_some_and(|b| *b != b'{') {
            self.flag(ScanProblem::NotSse(crate::base::error::snippet(line, 80)));
            return;
        }
        if let Some(p) = self.native {
            self.native_event(p, data);
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

impl SseScanner {
    fn flag(&mut self, p: ScanProblem) {
        if self.problem.is_none() {
            self.problem = Some(p);
        }
    }
}

/// True for a blank line or a line holding an SSE field other than `data` (the
/// specification's `event`, `id`, `retry`, and `:` comments, which keep-alives use).
fn is_sse_field(line: &[u8]) -> bool {
    line.is_empty()
        || line.starts_with(b":")
        || line.starts_with(b"event:")
        || line.starts_with(b"id:")
        || line.starts_with(b"retry:")
        || line == b"event"
        || line == b"id"
        || line == b"retry"
}

/// Whether the start of a body (its first frame) can begin an event stream: its first line
/// is, or starts like, an SSE field. An HTML error page or a JSON object is not.
pub fn starts_like_sse(first: &[u8]) -> bool {
    let body = first.strip_prefix("\u{feff}".as_bytes()).unwrap_or(first);
    let body = body.trim_ascii_start();
    if body.is_empty() {
        return true;
    }
    let line_end = memchr::memchr(b'\n', body).unwrap_or(body.len());
    let line = body[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&body[..line_end]);
    let complete = line_end < body.len();
    let fields: [&[u8]; 5] = [b"data", b"event", b"id", b"retry", b":"];
    fields.iter().any(|f| {
        if line.len() < f.len() && !complete {
            // The frame ended inside the field name: judge by what arrived.
            f.starts_with(line)
        } else {
            line.starts_with(f)
        }
    })
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
pub fn is_usage_only_event(event: &[u8]) -> bool {
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
pub fn event_end(buf: &[u8]) -> Option<usize> {
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
    fn scanner_flags_lines_that_are_not_sse() {
        let mut s = SseScanner::default();
        s.feed(b": keep-alive\n\nevent: x\nid: 1\nretry: 10\ndata: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(s.problem, None);
        for bad in [
            &b"<html><body>502</body></html>\n"[..],
            b"data: <<<not json>>>\n",
            b"{\"error\": 1}\n",
        ] {
            let mut s = SseScanner::default();
            s.feed(bad);
            assert!(
                matches!(s.problem, Some(ScanProblem::NotSse(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_cap_and_not_kept() {
        let mut s = SseScanner::new(1024);
        s.feed(b"data: {\"a\":1}\n\ndata: ");
        let block = [b'x'; 300];
        for _ in 0..3 {
            s.feed(&block);
            assert_eq!(s.problem, None);
        }
        s.feed(&block);
        assert_eq!(s.problem, Some(ScanProblem::LineTooLong { limit: 1024 }));
        assert!(s.partial_line.capacity() == 0, "the partial line was kept");
        // Long lines that do end are fine.
        let mut s = SseScanner::new(1024);
        for _ in 0..10 {
            s.feed(b"data: {\"content\":\"");
            s.feed(&[b'y'; 900]);
            s.feed(b"\"}\n\n");
        }
        assert_eq!(s.problem, None);
        assert_eq!(s.events, 10);
    }

    #[test]
    fn start_of_an_event_stream_is_recognised() {
        for ok in [
            &b"data: {}\n\n"[..],
            b"da",
            b": ping\n",
            b"\n\nevent: message\n",
            b"",
        ] {
            assert!(starts_like_sse(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"<<<this is not json>>>"[..],
            b"{\"id\":\"x\"}",
            b"<html>",
            b"dx: 1\n",
        ] {
            assert!(!starts_like_sse(bad), "{}", String::from_utf8_lossy(bad));
        }
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
