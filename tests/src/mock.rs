//! A mock OpenAI upstream, in-process on `127.0.0.1:0`, with scriptable misbehaviour.
//!
//! It answers chat completions, completions, embeddings and models the way OpenAI does
//! (including streamed tool-call deltas and the `include_usage` chunk), the Responses API
//! and Anthropic's Messages API in their own formats (`native`), records every
//! request it receives, and counts streams whose reader went away. A test picks a
//! behaviour for all requests (`MockUpstream::set_behaviour`) or per request with the
//! `x-mock` header (forwarded by the gateway like any client header), e.g.
//! `x-mock: status=500`, `x-mock: chunks=20,delay_ms=5`, `x-mock: reset`,
//! `x-mock: usage=4611686018427387904`, `x-mock: fail_percent=30`.
//!
//! Per-model scripted answers (eval fixtures): a request's `mock_answers` object maps model
//! names to the answer text; `MockUpstream::set_script` installs a function of the request
//! that may answer instead (a judge that reads its prompt).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub mod native;

/// How the mock answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Answer with this HTTP status and an OpenAI-shaped error body.
    pub status: Option<u16>,
    /// With `status`, send an HTML body instead of OpenAI's error shape.
    pub html_error: bool,
    /// Answer 200 with a body that is not JSON.
    pub garbage: bool,
    /// Close the connection without answering.
    pub reset: bool,
    /// Never answer.
    pub hang: bool,
    /// Wait this long before the response head.
    pub first_byte_delay: Duration,
    /// Streamed answers: number of content chunks.
    pub chunks: usize,
    /// Streamed answers: pause between chunks.
    pub chunk_delay: Duration,
    /// Streamed answers: break the connection after this many chunks.
    pub break_after: Option<usize>,
    /// Streamed answers: stop sending (but keep the connection) after this many chunks.
    pub stall_after: Option<usize>,
    /// Streamed answers: end the body cleanly after this many events, as a truncated
    /// upstream does (no finish chunk, no `data: [DONE]`).
    pub end_after: Option<usize>,
    /// Streamed answers: after this many events, send a line that is not SSE (an HTML
    /// error page, as a proxy in front of the upstream may).
    pub junk_after: Option<usize>,
    /// Streamed answers: one `data:` line of this many MiB that never ends (no newline),
    /// sent in 64 KiB frames, then the end of the body.
    pub huge_line_mb: Option<usize>,
    /// Send `Retry-After` with error statuses.
    pub retry_after: Option<u32>,
    /// The answer's text (else the request's `mock_content`, else `w0 w1 …`); streamed in
    /// `chunks` pieces.
    pub content: Option<String>,
    /// Complete answers report this many prompt and completion tokens (a broken or
    /// hostile upstream's usage).
    pub usage: Option<u64>,
    /// Answer this percent of completion requests with a 500, spread evenly (of any 10
    /// consecutive requests at 30 %, exactly 3 fail).
    pub fail_percent: Option<u32>,
    /// `GET /v1/models` reports this `max_model_len`, and `POST /tokenize` counts a chat
    /// request's words as its tokens (as the worker serves both).
    pub context_window: Option<u64>,
    /// Complete answers carry no `usage` (a server that does not report it).
    pub no_usage: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            status: None,
            html_error: false,
            garbage: false,
            reset: false,
            hang: false,
            first_byte_delay: Duration::ZERO,
            chunks: 5,
            chunk_delay: Duration::ZERO,
            break_after: None,
            stall_after: None,
            end_after: None,
            junk_after: None,
            huge_line_mb: None,
            retry_after: None,
            content: None,
            usage: None,
            fail_percent: None,
            context_window: None,
            no_usage: false,
        }
    }
}

impl Behaviour {
    /// Parse the `x-mock` header syntax: comma-separated `key=value` or flags.
    pub fn parse(spec: &str, base: &Behaviour) -> Behaviour {
        let mut b = base.clone();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let n = v.parse::<u64>().unwrap_or(0);
            match k {
                "status" => b.status = Some(n as u16),
                "html" => b.html_error = true,
                "garbage" => b.garbage = true,
                "reset" => b.reset = true,
                "hang" => b.hang = true,
                "first_byte_ms" => b.first_byte_delay = Duration::from_millis(n),
                "chunks" => b.chunks = n as usize,
                "delay_ms" => b.chunk_delay = Duration::from_millis(n),
                "break_after" => b.break_after = Some(n as usize),
                "stall_after" => b.stall_after = Some(n as usize),
                "end_after" => b.end_after = Some(n as usize),
                "junk_after" => b.junk_after = Some(n as usize),
                "huge_line_mb" => b.huge_line_mb = Some(n as usize),
                "retry_after" => b.retry_after = Some(n as u32),
                "usage" => b.usage = Some(n),
                "fail_percent" => b.fail_percent = Some(n as u32),
                "no_usage" => b.no_usage = true,
                _ => {}
            }
        }
        b
    }
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub version: http::Version,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct State {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Recorded>>,
    record: std::sync::atomic::AtomicBool,
    served: AtomicU64,
    disconnects: AtomicU64,
    streams_completed: AtomicU64,
    /// Set by `kill`: the listener and every open connection close.
    killed: std::sync::atomic::AtomicBool,
    kill: tokio::sync::Notify,
    /// `GET /healthz` answers 503 (completions still work): a failing health check.
    unhealthy: std::sync::atomic::AtomicBool,
    /// Answers computed from the request (`set_script`); `None` from it: the usual answer.
    script: Mutex<Option<Script>>,
    /// Extra `/metrics` text (a worker's counters, for derived prices).
    metrics: Mutex<String>,
    /// Emulated worker counters: (busy seconds per completion, prompt tokens, generated
    /// tokens, busy seconds), reported on `/metrics` as a switchyard-worker does.
    worker: Mutex<Option<(f64, f64, f64, f64)>>,
    /// Completion requests seen under `fail_percent`.
    fail_seq: AtomicU64,
}

/// A scripted answer: the request's JSON to the answer's text, or `None`.
pub type Script = Arc<dyn Fn(&Value) -> Option<String> + Send + Sync>;

/// A running mock upstream. Stops when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl MockUpstream {
    /// Start on `127.0.0.1:0` in the current tokio runtime.
    pub async fn start() -> MockUpstream {
        Self::start_with(None).await
    }

    /// Start with TLS (for upstream-TLS tests).
    pub async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let state = Arc::new(State::default());
        state.record.store(true, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(serve(listener, state.clone(), tls, rx));
        MockUpstream {
            addr,
            state,
            _stop: tx,
        }
    }

    /// Base URL to put in a backend's `url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.state.behaviour.lock().expect("lock") = b;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        self.state.requests.lock().expect("lock").last().cloned()
    }

    /// Requests answered (any outcome).
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// Streams whose reader went away before the end.
    pub fn disconnects(&self) -> u64 {
        self.state.disconnects.load(Ordering::Relaxed)
    }

    pub fn streams_completed(&self) -> u64 {
        self.state.streams_completed.load(Ordering::Relaxed)
    }

    /// Make `GET /healthz` answer 503 (or 200 again) while everything else keeps working.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::Relaxed);
    }

    /// Answer completions with `f(request)` where it returns text.
    pub fn set_script(&self, f: impl Fn(&Value) -> Option<String> + Send + Sync + 'static) {
        *self.state.script.lock().expect("lock") = Some(Arc::new(f));
    }

    /// Report worker counters on `/metrics`: each complete answer adds its usage's tokens
    /// and `busy_secs` of busy time.
    pub fn emulate_worker(&self, busy_secs: f64) {
        *self.state.worker.lock().expect("lock") = Some((busy_secs, 0.0, 0.0, 0.0));
    }

    /// What `GET /metrics` answers (a worker's Prometheus text).
    pub fn set_metrics(&self, text: &str) {
        *self.state.metrics.lock().expect("lock") = text.to_string();
    }

    /// Completion requests received (health checks and model lists not counted).
    pub fn completions(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == Method::POST)
            .count()
    }

    /// Kill the mock as a crashed worker dies: the listening socket closes (new connections
    /// are refused) and every open connection is dropped, mid-request or idle.
    pub fn kill(&self) {
        self.state.killed.store(true, Ordering::SeqCst);
        self.state.kill.notify_waiters();
    }
}

/// Run a mock server on `listener` until `stop` fires (also used by the standalone binary,
/// which turns recording off to stay fast).
pub async fn serve_forever(listener: TcpListener, record: bool, behaviour: Behaviour) {
    let state = Arc::new(State::default());
    state.record.store(record, Ordering::Relaxed);
    *state.behaviour.lock().expect("lock") = behaviour;
    let (_tx, rx) = tokio::sync::oneshot::channel();
    serve(listener, state, None, rx).await;
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = &mut stop => return,
            _ = state.kill.notified() => return,
        };
        if state.killed.load(Ordering::SeqCst) {
            return;
        }
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let st = state.clone();
            let killed = st.kill.notified();
            tokio::pin!(killed);
            killed.as_mut().enable();
            if st.killed.load(Ordering::SeqCst) {
                return;
            }
            let svc = service_fn(move |req| handle(state.clone(), req));
            let conn = async move {
                match acceptor {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acc) => {
                        if let Ok(s) = acc.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            };
            tokio::select! {
                () = conn => {}
                () = killed => {}
            }
        });
    }
}

#[derive(Debug)]
pub struct Reset;
impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock reset")
    }
}
impl std::error::Error for Reset {}

type MockBody = http_body_util::Either<Full<Bytes>, ChannelBody>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<MockBody>, Reset> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let base = state.behaviour.lock().expect("lock").clone();
    let b = match parts.headers.get("x-mock").and_then(|v| v.to_str().ok()) {
        Some(spec) => Behaviour::parse(spec, &base),
        None => base,
    };
    let fast = !state.record.load(Ordering::Relaxed);
    if fast
        && !parts.headers.contains_key("x-mock")
        && memchr::memmem::find(&body, b"\"stream\":true").is_none()
    {
        // Benchmark mode: a fixed answer, no parsing, so the mock costs as little CPU as
        // it can and the comparison measures the gateway.
        state.served.fetch_add(1, Ordering::Relaxed);
        return Ok(json_response_bytes(fast_answer().clone()));
    }
    if state.record.load(Ordering::Relaxed) {
        state.requests.lock().expect("lock").push(Recorded {
            method: parts.method.clone(),
            version: parts.version,
            path: parts.uri.path().to_string(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    state.served.fetch_add(1, Ordering::Relaxed);
    if b.reset {
        return Err(Reset);
    }
    if b.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if !b.first_byte_delay.is_zero() {
        tokio::time::sleep(b.first_byte_delay).await;
    }
    let mut status = b.status;
    if let Some(pct) = b.fail_percent
        && parts.method == Method::POST
    {
        let n = state.fail_seq.fetch_add(1, Ordering::Relaxed);
        let pct = u64::from(pct.min(100));
        // Request n fails when the running count of failures due steps up at n.
        if (n + 1) * pct / 100 > n * pct / 100 {
            status = Some(500);
        }
    }
    if let Some(status) = status {
        let body = if b.html_error {
            Bytes::from_static(b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>")
        } else {
            Bytes::from(
                json!({"error": {"message": format!("mock error {status}"), "type": "server_error", "param": null, "code": "mock_error"}})
                    .to_string(),
            )
        };
        let mut r = Response::new(MockBody::Left(Full::new(body)));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let ct = if b.html_error {
            "text/html"
        } else {
            "application/json"
        };
        r.headers_mut()
            .insert(header::CONTENT_TYPE, ct.parse().expect("ct"));
        if let Some(s) = b.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        return Ok(r);
    }
    if b.garbage {
        let mut r = Response::new(MockBody::Left(Full::new(Bytes::from_static(
            b"<<<this is not json>>>",
        ))));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/json".parse().expect("ct"),
        );
        return Ok(r);
    }
    let path = parts.uri.path();
    if parts.method == Method::GET && path == "/healthz" {
        let ok = !state.unhealthy.load(Ordering::Relaxed);
        let mut r = Response::new(MockBody::Left(Full::new(Bytes::from_static(if ok {
            b"ok\n"
        } else {
            b"unhealthy\n"
        }))));
        if !ok {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(r);
    }
    if parts.method == Method::GET && path == "/metrics" {
        let mut text = state.metrics.lock().expect("lock").clone();
        if let Some((_, p, g, busy)) = *state.worker.lock().expect("lock") {
            text.push_str(&format!(
                "switchyard_worker_prompt_tokens_total {p}\nswitchyard_worker_generation_tokens_total {g}\nswitchyard_worker_busy_seconds_total {busy}\n"
            ));
        }
        return Ok(Response::new(MockBody::Left(Full::new(Bytes::from(text)))));
    }
    if parts.method == Method::GET && path.ends_with("/models") {
        let mut model = json!({"id":"mock-model","object":"model","created":0,"owned_by":"mock"});
        if let Some(n) = b.context_window {
            model["max_model_len"] = json!(n);
        }
        return Ok(json_response(json!({"object":"list","data":[model]})));
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if path == "/tokenize" && b.context_window.is_some() {
        // As the worker's: its "tokenizer" counts the words of the messages.
        let words: usize = req["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["content"].as_str())
            .map(|c| c.split_whitespace().count())
            .sum();
        return Ok(json_response(
            json!({"count": words, "max_model_len": b.context_window}),
        ));
    }
    let model = req["model"].as_str().unwrap_or("unknown").to_string();
    let stream = req["stream"].as_bool().unwrap_or(false);
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    if path.ends_with("/embeddings") {
        return Ok(json_response(embeddings(&req, &model)));
    }
    let chat = path.ends_with("/chat/completions");
    let tools = chat && req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let prompt_tokens = (body.len() / 4).max(1) as u64;
    let script = state.script.lock().expect("lock").clone();
    let scripted = script.and_then(|f| f(&req)).or_else(|| {
        req["mock_answers"][model.as_str()]
            .as_str()
            .map(str::to_string)
    });
    let b = match scripted {
        Some(text) => Behaviour {
            content: Some(text),
            ..b
        },
        None => b,
    };
    let native_api = native::Api::of(path);
    if let (false, Some(api)) = (stream, native_api) {
        let text = pieces(b.content.as_deref(), &req, b.chunks);
        return Ok(json_response(native::complete(
            api,
            &req,
            &model,
            prompt_tokens,
            &text,
        )));
    }
    if !stream {
        let mut answer = complete(
            chat,
            tools,
            &req,
            &model,
            prompt_tokens,
            &pieces(b.content.as_deref(), &req, b.chunks).concat(),
            b.chunks,
        );
        if let Some(n) = b.usage {
            answer["usage"] =
                json!({"prompt_tokens": n, "completion_tokens": n, "total_tokens": n});
        }
        if b.no_usage
            && let Some(o) = answer.as_object_mut()
        {
            o.remove("usage");
        }
        if let Some(w) = state.worker.lock().expect("lock").as_mut() {
            w.1 += answer["usage"]["prompt_tokens"].as_f64().unwrap_or(0.0);
            w.2 += answer["usage"]["completion_tokens"].as_f64().unwrap_or(0.0);
            w.3 += w.0;
        }
        return Ok(json_response(answer));
    }
    let events = match native_api {
        Some(api) => native::events(
            api,
            &req,
            &model,
            prompt_tokens,
            &pieces(b.content.as_deref(), &req, b.chunks),
        ),
        None => stream_events(
            chat,
            tools,
            &req,
            &model,
            prompt_tokens,
            &pieces(b.content.as_deref(), &req, b.chunks),
            include_usage,
        ),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Reset>>(4);
    let st = state.clone();
    if let Some(mb) = b.huge_line_mb {
        tokio::spawn(async move {
            let block = Bytes::from(vec![b'a'; 64 * 1024]);
            let start = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"");
            if tx.send(Ok(start)).await.is_err() {
                return;
            }
            for _ in 0..mb * 16 {
                if tx.send(Ok(block.clone())).await.is_err() {
                    st.disconnects.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        });
        let mut r = Response::new(MockBody::Right(ChannelBody {
            rx,
            state: state.clone(),
        }));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            "text/event-stream".parse().expect("ct"),
        );
        return Ok(r);
    }
    tokio::spawn(async move {
        for (i, ev) in events.into_iter().enumerate() {
            if i > 0 && !b.chunk_delay.is_zero() {
                tokio::time::sleep(b.chunk_delay).await;
            }
            if b.break_after == Some(i) {
                let _ = tx.send(Err(Reset)).await;
                return;
            }
            if b.stall_after == Some(i) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if b.end_after == Some(i) {
                // Dropping `tx` ends the body cleanly: a truncated, not a broken, stream.
                return;
            }
            if b.junk_after == Some(i) {
                let junk =
                    Bytes::from_static(b"<html><body><h1>502 Bad Gateway</h1></body></html>\n");
                let _ = tx.send(Ok(junk)).await;
                return;
            }
            if tx.send(Ok(ev)).await.is_err() {
                st.disconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // Dropping `tx` ends the body once the reader has taken every event.
    });
    let mut r = Response::new(MockBody::Right(ChannelBody {
        rx,
        state: state.clone(),
    }));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/event-stream".parse().expect("ct"),
    );
    r.headers_mut()
        .insert("x-upstream-extra", "kept".parse().expect("hdr"));
    Ok(r)
}

/// A streamed body fed by a channel: one frame per event, as a real server flushes them.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, Reset>>,
    state: Arc<State>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Reset;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Reset>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.state.streams_completed.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn fast_answer() -> &'static Bytes {
    static ANSWER: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    ANSWER.get_or_init(|| {
        Bytes::from(
            complete(
                true,
                false,
                &Value::Null,
                "bench-model",
                20,
                &words(5).concat(),
                5,
            )
            .to_string(),
        )
    })
}

fn json_response(v: Value) -> Response<MockBody> {
    json_response_bytes(Bytes::from(v.to_string()))
}

fn json_response_bytes(body: Bytes) -> Response<MockBody> {
    let mut r = Response::new(MockBody::Left(Full::new(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("ct"),
    );
    r.headers_mut()
        .insert("x-upstream-extra", "kept".parse().expect("hdr"));
    r
}

fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i} ")).collect()
}

fn tool_name(req: &Value) -> String {
    req["tools"][0]["function"]["name"]
        .as_str()
        .unwrap_or("tool")
        .to_string()
}

/// The tool-call arguments the mock "generates", split into `n` fragments when streamed.
pub fn tool_arguments() -> &'static str {
    r#"{"location": "Paris, France", "unit": "celsius", "days": [1, 2, 3]}"#
}

/// The answer's text in `n` pieces (one per streamed chunk, one token each): the
/// behaviour's `content`, else the request's `mock_content` (plugin tests script JSON
/// answers), else with `"mock_echo": true` the last message's text as received (what a
/// rewriting plugin sent on), else `w0 w1 …`.
fn pieces(content: Option<&str>, req: &Value, n: usize) -> Vec<String> {
    let echo = (req["mock_echo"] == Value::Bool(true))
        .then(|| req["messages"].as_array()?.last()?["content"].as_str())
        .flatten();
    let Some(text) = content.or(req["mock_content"].as_str()).or(echo) else {
        return words(n);
    };
    let chars: Vec<char> = text.chars().collect();
    let step = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(step).map(|c| c.iter().collect()).collect()
}

fn complete(
    chat: bool,
    tools: bool,
    req: &Value,
    model: &str,
    prompt_tokens: u64,
    text: &str,
    n: usize,
) -> Value {
    let completion_tokens = n as u64;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    if !chat {
        return json!({"id":"cmpl-mock","object":"text_completion","created":1700000000,"model":model,
            "choices":[{"index":0,"text":text,"logprobs":null,"finish_reason":"stop"}],"usage":usage});
    }
    let message = if tools {
        json!({"role":"assistant","content":null,"tool_calls":[{"id":"call_mock1","type":"function","function":{"name":tool_name(req),"arguments":tool_arguments()}}]})
    } else {
        json!({"role":"assistant","content":text,"refusal":null})
    };
    json!({"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":model,
        "system_fingerprint":"fp_mock","x_vendor_extra":{"kept":[1,2.5,"three"]},
        "choices":[{"index":0,"message":message,"logprobs":null,"finish_reason": if tools {"tool_calls"} else {"stop"}}],
        "usage":usage})
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

#[allow(clippy::too_many_arguments)]
fn stream_events(
    chat: bool,
    tools: bool,
    req: &Value,
    model: &str,
    prompt_tokens: u64,
    pieces: &[String],
    include_usage: bool,
) -> Vec<Bytes> {
    let n = pieces.len();
    let mut out = Vec::new();
    let usage_field = if include_usage {
        Some(Value::Null)
    } else {
        None
    };
    let chunk = |choices: Value| -> Value {
        let mut c = if chat {
            json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":model,"system_fingerprint":"fp_mock","choices":choices})
        } else {
            json!({"id":"cmpl-mock","object":"text_completion","created":1700000000,"model":model,"choices":choices})
        };
        if let Some(u) = &usage_field {
            c["usage"] = u.clone();
        }
        c
    };
    if chat {
        out.push(sse(&chunk(json!([{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]))));
    }
    let mut completion_tokens = 0;
    if tools {
        let args = tool_arguments();
        out.push(sse(&chunk(json!([{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_mock1","type":"function","function":{"name":tool_name(req),"arguments":""}}]},"finish_reason":null}]))));
        let step = args.len().div_ceil(n.max(1));
        let bytes = args.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let end = (i + step).min(bytes.len());
            let frag = std::str::from_utf8(&bytes[i..end]).unwrap_or("");
            out.push(sse(&chunk(json!([{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":frag}}]},"finish_reason":null}]))));
            completion_tokens += 1;
            i = end;
        }
        out.push(sse(&chunk(
            json!([{"index":0,"delta":{},"finish_reason":"tool_calls"}]),
        )));
    } else {
        for w in pieces {
            let choice = if chat {
                json!([{"index":0,"delta":{"content":w},"logprobs":null,"finish_reason":null}])
            } else {
                json!([{"index":0,"text":w,"logprobs":null,"finish_reason":null}])
            };
            out.push(sse(&chunk(choice)));
            completion_tokens += 1;
        }
        let last = if chat {
            json!([{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}])
        } else {
            json!([{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}])
        };
        out.push(sse(&chunk(last)));
    }
    if include_usage {
        let mut c = chunk(json!([]));
        c["usage"] = json!({"prompt_tokens":prompt_tokens,"completion_tokens":completion_tokens,"total_tokens":prompt_tokens+completion_tokens});
        out.push(sse(&c));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn embeddings(req: &Value, model: &str) -> Value {
    let inputs: Vec<Value> = match &req["input"] {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let base64 = req["encoding_format"].as_str() == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let v: Vec<f32> = (0..8).map(|j| (i * 8 + j) as f32 / 10.0).collect();
            let emb = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(b64(&bytes))
            } else {
                json!(v)
            };
            json!({"object":"embedding","index":i,"embedding":emb})
        })
        .collect();
    json!({"object":"list","data":data,"model":model,"usage":{"prompt_tokens":inputs.len()*3,"total_tokens":inputs.len()*3}})
}

/// Standard base64 (the OpenAI SDK asks for `encoding_format: base64` by default).
fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}
