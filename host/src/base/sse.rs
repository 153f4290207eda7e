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
