//! The client protocols the gateway speaks besides OpenAI's chat/completions: the Responses
//! API (`responses`) and Anthropic's Messages API (`anthropic`).
//!
//! Both are translated to chat/completions on the way in and back on the way out, so every
//! phase of the request path (routing, plugins, fallback, ledger, tracing, shadow) sees the
//! one format it already knows, and every OpenAI-compatible server (the worker included) can
//! answer them. The translation is pure wire format: request JSON to request JSON, answer
//! JSON to answer JSON, and a stream translator that turns chat chunks into the protocol's
//! event sequence as they arrive ([`TranslatedStream`]).

pub mod anthropic;
pub mod native;
pub mod responses;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::Value;

use super::body::GatewayBody;
use super::error::GatewayError;

/// Which API a client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// One of OpenAI's chat/completions, completions or embeddings: relayed as is.
    #[default]
    OpenAi,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (Anthropic).
    Messages,
}

impl Protocol {
    /// The path clients call, for logs and spans.
    pub fn path(self) -> Option<&'static str> {
        match self {
            Protocol::OpenAi => None,
            Protocol::Responses => Some(RESPONSES),
            Protocol::Messages => Some(MESSAGES),
        }
    }
}

/// `POST /v1/responses`.
pub const RESPONSES: &str = "/v1/responses";
/// `POST /v1/messages`.
pub const MESSAGES: &str = "/v1/messages";
/// `POST /v1/messages/count_tokens`.
pub const COUNT_TOKENS: &str = "/v1/messages/count_tokens";

/// A request's body translated to chat/completions, and what the answer's translation needs
/// to know of the original.
pub struct Translated {
    pub chat: Bytes,
    pub echo: Echo,
    /// Why the request cannot be translated after all (it asks for state the gateway does
    /// not keep: `previous_response_id`, `store: true`): the 400 it gets unless the target
    /// chosen for it takes the client's protocol natively.
    pub stateful: Option<GatewayError>,
}

/// Request members the translated answer repeats (the Responses API echoes its parameters).
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub fields: serde_json::Map<String, Value>,
}

/// Translate a client's body to chat/completions for `protocol`.
pub fn to_chat(protocol: Protocol, body: &[u8]) -> Result<Translated, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            GatewayError::NotAnObject
        } else {
            GatewayError::BadJson {
                detail: e.to_string(),
                line: e.line(),
                column: e.column(),
            }
        }
    })?;
    let Value::Object(obj) = v else {
        return Err(GatewayError::NotAnObject);
    };
    match protocol {
        Protocol::Responses => responses::request_to_chat(obj),
        Protocol::Messages => anthropic::request_to_chat(obj),
        Protocol::OpenAi => Err(GatewayError::Internal(
            "chat requests are not translated".into(),
        )),
    }
}

/// A chat/completions answer read whole, in the client's protocol.
pub fn from_chat(protocol: Protocol, chat: &[u8], echo: &Echo) -> Result<Bytes, String> {
    let v: Value = serde_json::from_slice(chat).map_err(|e| format!("not JSON: {e}"))?;
    let out = match protocol {
        Protocol::Responses => responses::answer_from_chat(&v, echo),
        Protocol::Messages => anthropic::answer_from_chat(&v),
        Protocol::OpenAi => return Ok(Bytes::copy_from_slice(chat)),
    };
    Ok(Bytes::from(out.to_string()))
}

/// Build the stream translator for `protocol`.
pub fn stream_translator(protocol: Protocol, echo: Echo) -> Option<Box<dyn StreamTranslator>> {
    match protocol {
        Protocol::Responses => Some(Box::new(responses::Stream::new(echo))),
        Protocol::Messages => Some(Box::new(anthropic::Stream::default())),
        Protocol::OpenAi => None,
    }
}

/// A bad member of the client's body, named by its path.
/// The members of the client's request left in `req` travel on as they would for chat; a
/// streamed request asks the upstream for its usage, which the translated stream's last
/// event carries.
fn carry_rest(
    chat: &mut serde_json::Map<String, Value>,
    mut req: serde_json::Map<String, Value>,
) -> Result<(), GatewayError> {
    let stream = req.remove("stream");
    for (k, v) in req {
        chat.entry(k).or_insert(v);
    }
    match stream {
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), Value::Bool(true));
            chat.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
        Some(Value::Bool(false)) | Some(Value::Null) | None => {}
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "stream",
                expected: "a boolean",
            });
        }
    }
    Ok(())
}

pub(crate) fn bad(param: impl Into<String>, reason: impl Into<String>) -> GatewayError {
    GatewayError::Unsupported {
        param: param.into(),
        reason: reason.into(),
    }
}

/// One tool call's piece of a streamed chat chunk.
#[derive(Debug, Default)]
pub struct ToolDelta {
    pub index: u64,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
}

/// What a stream translator reads of one chat chunk (first choice only: the translated
/// protocols have no `n`).
#[derive(Debug, Default)]
pub struct Chunk {
    pub id: Option<String>,
    pub model: Option<String>,
    pub content: Option<String>,
    pub tools: Vec<ToolDelta>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

/// Token counts as chat/completions reports them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

impl Usage {
    pub fn read(v: &Value) -> Option<Usage> {
        let u = v.get("usage").filter(|u| u.is_object())?;
        Some(Usage {
            prompt: u["prompt_tokens"].as_u64().unwrap_or(0),
            completion: u["completion_tokens"].as_u64().unwrap_or(0),
        })
    }
}

impl Chunk {
    pub fn read(v: &Value) -> Chunk {
        let choice = &v["choices"][0];
        let delta = &choice["delta"];
        let tools = delta["tool_calls"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| ToolDelta {
                        index: t["index"].as_u64().unwrap_or(0),
                        id: t["id"].as_str().map(str::to_owned),
                        name: t["function"]["name"].as_str().map(str::to_owned),
                        arguments: t["function"]["arguments"].as_str().map(str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Chunk {
            id: v["id"].as_str().map(str::to_owned),
            model: v["model"].as_str().map(str::to_owned),
            content: delta["content"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            tools,
            finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
            usage: Usage::read(v),
        }
    }
}

/// Turns a chat/completions event stream into another protocol's, event by event.
pub trait StreamTranslator: Send + Sync {
    /// One chat chunk.
    fn chunk(&mut self, c: Chunk, out: &mut Vec<u8>);
    /// An error event (the gateway's or the upstream's, OpenAI-shaped) ended the stream.
    fn error(&mut self, error: &Value, out: &mut Vec<u8>);
    /// The chat stream ended (`[DONE]` or the end of the body).
    fn finish(&mut self, out: &mut Vec<u8>);
}

/// Write one SSE event with a name.
pub(crate) fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// A chat event stream relayed as another protocol's. Lines are split here (a frame may end
/// mid-line); the relay underneath already bounds each event's size.
pub struct TranslatedStream {
    inner: GatewayBody,
    translator: Box<dyn StreamTranslator>,
    line: Vec<u8>,
    finished: bool,
}

impl TranslatedStream {
    pub fn new(inner: GatewayBody, translator: Box<dyn StreamTranslator>) -> Self {
        TranslatedStream {
            inner,
            translator,
            line: Vec::new(),
            finished: false,
        }
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            self.line.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
        self.line.extend_from_slice(rest);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.finished = true;
            self.translator.finish(out);
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            self.finished = true;
            self.translator.error(e, out);
            return;
        }
        self.translator.chunk(Chunk::read(&v), out);
    }
}

impl Body for TranslatedStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            let this = &mut *self;
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let mut out = Vec::new();
                    this.feed(&data, &mut out);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(Some(Err(e))) => match e {},
                Poll::Ready(None) => {
                    if this.finished {
                        return Poll::Ready(None);
                    }
                    let mut out = Vec::new();
                    let rest = std::mem::take(&mut this.line);
                    this.line_done(&rest, &mut out);
                    if !this.finished {
                        this.finished = true;
                        this.translator.finish(&mut out);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }
}

/// Seconds since the Unix epoch (the `created_at` of translated answers).
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An id for a translated answer: the chat answer's own id under the protocol's prefix, so
/// a log line can be matched with the upstream's.
pub(crate) fn id_from(prefix: &str, chat_id: Option<&str>) -> String {
    let base = chat_id.unwrap_or("");
    let base = base
        .strip_prefix("chatcmpl-")
        .or_else(|| base.strip_prefix("chatcmpl_"))
        .unwrap_or(base);
    if base.is_empty() {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{prefix}{nanos:08x}{n:08x}")
    } else {
        format!("{prefix}{base}")
    }
}
