//! The OpenAI-compatible HTTP server (hyper 1 on tokio).
//!
//! Request path: parse JSON → validate every parameter (a bad one is a 400 naming it) → build
//! the prompt (chat template for `/v1/chat/completions`) → tokenize → context check (too long
//! is a 400 `context_length_exceeded`) → submit to the engine → relay its events as one JSON
//! response or as server-sent events. The body stream owns the engine's event receiver, so a
//! client that disconnects drops it and the engine cancels that sequence at its next step.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::chat::ChatTemplate;
use crate::engine::{Engine, Event, GenRequest, TokenLogprob};
use crate::launch::LoadProgress;
use crate::sampling::SamplingParams;
use crate::trace::{RequestSpan, Tracer};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Everything a handler needs once the model is loaded.
pub struct AppState {
    pub engine: Engine,
    pub template: ChatTemplate,
    pub model_name: String,
    pub started: u64,
}

/// What the server answers from: the load progress, then the loaded model.
pub struct Shared {
    app: std::sync::OnceLock<Arc<AppState>>,
    pub load: Arc<LoadProgress>,
    /// Where request spans go (`--otlp-endpoint`), if anywhere.
    tracer: Option<Arc<Tracer>>,
}

impl Shared {
    /// A server whose model is still loading.
    pub fn loading(tracer: Option<Arc<Tracer>>) -> Shared {
        Shared {
            app: std::sync::OnceLock::new(),
            load: Arc::new(LoadProgress::default()),
            tracer,
        }
    }

    /// The model is loaded: serve it from now on.
    pub fn set_ready(&self, app: Arc<AppState>) {
        let _ = self.app.set(app);
        self.load.set_ready();
    }
}

/// An OpenAI-format error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }
    fn response(&self) -> Response<Body> {
        json_response(
            self.status,
            &json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}),
        )
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:04x}", now())
}

/// Serves until the process ends (while the model loads, health, metrics and 503s).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let sh = shared.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| {
                let sh = sh.clone();
                async move {
                    Ok::<_, Infallible>(match sh.app.get() {
                        Some(st) => handle(req, st.clone(), &sh).await,
                        None => loading(&req, &sh),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// Answers while the model loads.
fn loading(req: &Request<Incoming>, sh: &Shared) -> Response<Body> {
    let (stage, progress) = (sh.load.stage(), sh.load.progress());
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "loading", "stage": stage, "progress": progress}),
        ),
        (&Method::GET, "/metrics") => {
            let mut text = String::new();
            sh.load.render(&mut text);
            render_export(&mut text, sh.tracer.as_deref());
            metrics_response(text)
        }
        _ => {
            let mut r = ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "the model is still loading ({stage}: {:.0}% done); retry shortly",
                    progress * 100.0
                ),
                kind: "server_error",
                param: None,
                code: Some("model_loading"),
            }
            .response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    }
}

fn metrics_response(text: String) -> Response<Body> {
    let mut r = Response::new(full(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// The span export counters, when tracing.
fn render_export(out: &mut String, tracer: Option<&Tracer>) {
    use std::fmt::Write;
    let Some(t) = tracer else { return };
    let c = &t.counters;
    let _ = write!(
        out,
        "# HELP switchyard_worker_spans_exported_total Trace spans the OTLP collector accepted.\n# TYPE switchyard_worker_spans_exported_total counter\nswitchyard_worker_spans_exported_total {}\n\
# HELP switchyard_worker_spans_dropped_total Trace spans dropped because the export queue was full.\n# TYPE switchyard_worker_spans_dropped_total counter\nswitchyard_worker_spans_dropped_total {}\n\
# HELP switchyard_worker_span_export_failures_total Trace spans lost to failed exports.\n# TYPE switchyard_worker_span_export_failures_total counter\nswitchyard_worker_span_export_failures_total {}\n",
        c.exported.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    );
}

/// Binds `addr`, with a clear message when that fails.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "cannot listen on {addr}: address already in use (another server on that port?)"
            )
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    })
}

async fn handle(req: Request<Incoming>, st: Arc<AppState>, sh: &Shared) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/metrics") => metrics(&st, sh),
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{
                "id": st.model_name, "object": "model", "created": st.started,
                "owned_by": "switchyard", "max_model_len": st.engine.n_ctx,
            }]}),
        ),
        (&Method::POST, "/v1/chat/completions") | (&Method::POST, "/v1/completions") => {
            let chat = path.ends_with("chat/completions");
            let mut span = match &sh.tracer {
                Some(t) => t.request(
                    req.headers(),
                    if chat { "chat" } else { "text_completion" },
                    &st.model_name,
                ),
                None => RequestSpan::default(),
            };
            span.set("http.request.method", "POST");
            span.set(
                "http.route",
                if chat {
                    "/v1/chat/completions"
                } else {
                    "/v1/completions"
                },
            );
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let e = ApiError::bad("body", format!("cannot read body: {e}"));
                    span.fail(e.kind, e.status.as_u16());
                    return e.response();
                }
            };
            match completion(&body, chat, &st, span).await {
                Ok(r) => r,
                Err((e, mut span)) => {
                    span.fail(e.kind, e.status.as_u16());
                    e.response()
                }
            }
        }
        _ => ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no route for {} {path}", req.method()),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
        .response(),
    }
}

fn metrics(st: &AppState, sh: &Shared) -> Response<Body> {
    let m = &st.engine.metrics;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    // Read once: the ratio and the count in one scrape must agree.
    let kv_tokens = g(&m.kv_tokens);
    let mut text = format!(
        "# HELP switchyard_worker_requests_total Generation requests received.\n# TYPE switchyard_worker_requests_total counter\nswitchyard_worker_requests_total {}\n\
# HELP switchyard_worker_prompt_tokens_total Prompt tokens processed.\n# TYPE switchyard_worker_prompt_tokens_total counter\nswitchyard_worker_prompt_tokens_total {}\n\
# HELP switchyard_worker_generation_tokens_total Tokens generated.\n# TYPE switchyard_worker_generation_tokens_total counter\nswitchyard_worker_generation_tokens_total {}\n\
# HELP switchyard_worker_cancelled_total Requests cancelled by client disconnect.\n# TYPE switchyard_worker_cancelled_total counter\nswitchyard_worker_cancelled_total {}\n\
# HELP switchyard_worker_engine_steps_total Batched forward steps.\n# TYPE switchyard_worker_engine_steps_total counter\nswitchyard_worker_engine_steps_total {}\n\
# HELP switchyard_worker_active_sequences Sequences in the running batch.\n# TYPE switchyard_worker_active_sequences gauge\nswitchyard_worker_active_sequences {}\n\
# HELP switchyard_worker_queued_requests Requests waiting for a batch slot.\n# TYPE switchyard_worker_queued_requests gauge\nswitchyard_worker_queued_requests {}\n\
# HELP switchyard_worker_kv_cache_tokens Tokens held in the KV caches of running sequences.\n# TYPE switchyard_worker_kv_cache_tokens gauge\nswitchyard_worker_kv_cache_tokens {}\n\
# HELP switchyard_worker_kv_cache_usage_ratio KV cache use: cached tokens over max_batch x context size.\n# TYPE switchyard_worker_kv_cache_usage_ratio gauge\nswitchyard_worker_kv_cache_usage_ratio {}\n\
# HELP switchyard_worker_generation_tokens_per_second Tokens generated per second over the last second of work (0 when idle).\n# TYPE switchyard_worker_generation_tokens_per_second gauge\nswitchyard_worker_generation_tokens_per_second {}\n",
        g(&m.requests),
        g(&m.prompt_tokens),
        g(&m.generated_tokens),
        g(&m.cancelled),
        g(&m.steps),
        g(&m.active),
        g(&m.queued),
        kv_tokens,
        kv_tokens as f64 / g(&m.kv_capacity).max(1) as f64,
        f64::from_bits(g(&m.tokens_per_second)),
    );
    m.ttft.render(
        &mut text,
        "switchyard_worker_time_to_first_token_seconds",
        "Time from a request's arrival to its first generated token.",
    );
    m.queue_time.render(
        &mut text,
        "switchyard_worker_queue_time_seconds",
        "Time a request waited for a slot in the running batch.",
    );
    sh.load.render(&mut text);
    render_export(&mut text, sh.tracer.as_deref());
    metrics_response(text)
}

fn num(v: &Value, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => {
            let f = x
                .as_f64()
                .ok_or_else(|| ApiError::bad(name, format!("`{name}` must be a number")))?;
            if !(lo..=hi).contains(&f) {
                return Err(ApiError::bad(
                    name,
                    format!("`{name}` must be between {lo} and {hi}, got {f}"),
                ));
            }
            Ok(Some(f))
        }
    }
}

fn int(v: &Value, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => {
            let i = x
                .as_i64()
                .ok_or_else(|| ApiError::bad(name, format!("`{name}` must be an integer")))?;
            if !(lo..=hi).contains(&i) {
                return Err(ApiError::bad(
                    name,
                    format!("`{name}` must be between {lo} and {hi}, got {i}"),
                ));
            }
            Ok(Some(i))
        }
    }
}

fn boolean(v: &Value, name: &str) -> Result<bool, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad(name, format!("`{name}` must be a boolean"))),
    }
}

/// Chat message content as plain text (string, or an array of text parts).
fn content_text(c: &Value, i: usize) -> Result<String, ApiError> {
    match c {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => s.push_str(t),
                    _ => {
                        return Err(ApiError::bad(
                            &format!("messages[{i}].content"),
                            "only text content parts are supported",
                        ));
                    }
                }
            }
            Ok(s)
        }
        _ => Err(ApiError::bad(
            &format!("messages[{i}].content"),
            "content must be a string or an array of parts",
        )),
    }
}

struct Parsed {
    /// The model the caller named (the worker serves its one model whatever it is).
    model: Option<String>,
    prompt: Vec<u32>,
    params: SamplingParams,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    logprobs: Option<usize>,
}

fn parse(body: &[u8], chat: bool, st: &AppState) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("body", "request body must be a JSON object"));
    }
    if let Some(m) = v.get("model")
        && !m.is_string()
    {
        return Err(ApiError::bad("model", "`model` must be a string"));
    }
    if let Some(n) = int(&v, "n", 1, 128)?
        && n != 1
    {
        return Err(ApiError::bad("n", "only n=1 is supported"));
    }
    let tok = &st.engine.tokenizer;
    let prompt = if chat {
        let msgs = v.get("messages").and_then(Value::as_array).ok_or_else(|| {
            ApiError::bad("messages", "`messages` is required and must be an array")
        })?;
        if msgs.is_empty() {
            return Err(ApiError::bad("messages", "`messages` must not be empty"));
        }
        let mut norm = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad(
                    &format!("messages[{i}].role"),
                    "each message needs a string `role`",
                )
            })?;
            let mut o = m.as_object().cloned().unwrap_or_default();
            o.insert("role".into(), Value::String(role.to_string()));
            o.insert(
                "content".into(),
                Value::String(content_text(m.get("content").unwrap_or(&Value::Null), i)?),
            );
            norm.push(Value::Object(o));
        }
        let tools = v.get("tools").filter(|t| !t.is_null());
        if let Some(t) = tools
            && !t.is_array()
        {
            return Err(ApiError::bad("tools", "`tools` must be an array"));
        }
        let text = st
            .template
            .render(&Value::Array(norm), tools, true)
            .map_err(|e| ApiError::bad("messages", e.to_string()))?;
        tok.encode(&text, true, true)
    } else {
        match v.get("prompt") {
            Some(Value::String(s)) => tok.encode(s, true, true),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                tok.encode(a[0].as_str().unwrap_or(""), true, true)
            }
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|x| x.is_u64()) => {
                let ids: Vec<u32> = a
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as u32)
                    .collect();
                if ids.iter().any(|&i| i as usize >= tok.vocab_size()) {
                    return Err(ApiError::bad("prompt", "token id out of range"));
                }
                ids
            }
            Some(Value::Array(_)) => {
                return Err(ApiError::bad(
                    "prompt",
                    "only a single prompt (string, [string] or [token ids]) is supported",
                ));
            }
            _ => {
                return Err(ApiError::bad(
                    "prompt",
                    "`prompt` is required and must be a string",
                ));
            }
        }
    };
    let max_tokens = match int(&v, "max_completion_tokens", 1, i64::MAX)? {
        Some(m) => Some(m),
        None => int(&v, "max_tokens", 1, i64::MAX)?,
    }
    .map(|m| m as usize);
    let stop = match v.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                "`stop` must be a string or an array of up to 4 strings",
            ));
        }
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect();
    let params = SamplingParams {
        temperature: num(&v, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: num(&v, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        top_k: int(&v, "top_k", 0, 1 << 20)?.unwrap_or(0) as usize,
        min_p: num(&v, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
        repetition_penalty: match num(&v, "repetition_penalty", 0.01, 10.0)? {
            Some(x) => x,
            None => num(&v, "repeat_penalty", 0.01, 10.0)?.unwrap_or(1.0),
        } as f32,
        frequency_penalty: num(&v, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        presence_penalty: num(&v, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        seed: match v.get("seed") {
            None | Some(Value::Null) => None,
            Some(s) => Some(
                s.as_i64()
                    .map(|i| i as u64)
                    .or_else(|| s.as_u64())
                    .ok_or_else(|| ApiError::bad("seed", "`seed` must be an integer"))?,
            ),
        },
    };
    let stream = boolean(&v, "stream")?;
    let include_usage = match v.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(o) if o.is_object() => boolean(o, "include_usage").map_err(|_| {
            ApiError::bad(
                "stream_options.include_usage",
                "`include_usage` must be a boolean",
            )
        })?,
        Some(_) => {
            return Err(ApiError::bad(
                "stream_options",
                "`stream_options` must be an object",
            ));
        }
    };
    let logprobs = if chat {
        let on = boolean(&v, "logprobs")?;
        let top = int(&v, "top_logprobs", 0, 20)?;
        if top.is_some() && !on {
            return Err(ApiError::bad(
                "top_logprobs",
                "`top_logprobs` requires `logprobs: true`",
            ));
        }
        on.then_some(top.unwrap_or(0) as usize)
    } else {
        int(&v, "logprobs", 0, 20)?.map(|n| n as usize)
    };
    Ok(Parsed {
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        prompt,
        params,
        max_tokens,
        stop,
        stream,
        include_usage,
        logprobs,
    })
}

/// A failed request hands its span back so the caller marks it with the error.
type Failed = (ApiError, RequestSpan);

async fn completion(
    body: &[u8],
    chat: bool,
    st: &Arc<AppState>,
    span: RequestSpan,
) -> Result<Response<Body>, Failed> {
    let (stream, rx, ctx) = prepare(body, chat, st, span)?;
    Ok(if stream {
        stream_response(rx, ctx)
    } else {
        collect_response(rx, ctx).await
    })
}

/// Validate, tokenize and submit; the answer's receiver and context (or the error).
fn prepare(
    body: &[u8],
    chat: bool,
    st: &Arc<AppState>,
    mut span: RequestSpan,
) -> Result<(bool, UnboundedReceiver<Event>, RespCtx), Failed> {
    let p = match parse(body, chat, st) {
        Ok(p) => p,
        Err(e) => return Err((e, span)),
    };
    if let Some(m) = &p.model {
        span.set("gen_ai.request.model", m.clone());
    }
    span.set(
        "gen_ai.request.temperature",
        f64::from(p.params.temperature),
    );
    span.set("gen_ai.request.top_p", f64::from(p.params.top_p));
    if let Some(m) = p.max_tokens {
        span.set("gen_ai.request.max_tokens", m as i64);
    }
    let n_ctx = st.engine.n_ctx;
    let n_prompt = p.prompt.len();
    let overflow = |requested: usize| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!(
            "This model's maximum context length is {n_ctx} tokens. However, you requested {requested} tokens ({n_prompt} in the {}, {} in the completion). Please reduce the length of the {} or completion.",
            if chat { "messages" } else { "prompt" },
            requested - n_prompt,
            if chat { "messages" } else { "prompt" },
        ),
        kind: "invalid_request_error",
        param: Some(if chat { "messages" } else { "prompt" }.to_string()),
        code: Some("context_length_exceeded"),
    };
    if n_prompt >= n_ctx {
        return Err((overflow(n_prompt + p.max_tokens.unwrap_or(1)), span));
    }
    let max_tokens = match p.max_tokens {
        Some(m) if n_prompt + m > n_ctx => return Err((overflow(n_prompt + m), span)),
        Some(m) => m,
        None => n_ctx - n_prompt,
    };
    let (tx, rx) = unbounded_channel();
    let submitted = st.engine.submit(GenRequest {
        prompt: p.prompt,
        params: p.params,
        max_tokens,
        stop: p.stop,
        logprobs: p.logprobs,
        events: tx,
        arrived: std::time::Instant::now(),
    });
    if !submitted {
        return Err((
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the engine has stopped".into(),
                kind: "server_error",
                param: None,
                code: None,
            },
            span,
        ));
    }
    let id = request_id(if chat { "chatcmpl" } else { "cmpl" });
    span.set("gen_ai.response.id", id.clone());
    let ctx = RespCtx {
        id,
        created: now(),
        model: st.model_name.clone(),
        chat,
        logprobs: p.logprobs.is_some(),
        include_usage: p.include_usage,
        span,
    };
    Ok((p.stream, rx, ctx))
}

struct RespCtx {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    logprobs: bool,
    include_usage: bool,
    /// Ends with the answer (or, dropped with the body, when the client goes away).
    span: RequestSpan,
}

fn usage(p: usize, c: usize) -> Value {
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn chat_lp(lps: &[TokenLogprob]) -> Value {
    json!({"content": lps.iter().map(|l| json!({
        "token": l.token, "logprob": l.logprob, "bytes": l.bytes,
        "top_logprobs": l.top.iter().map(|(t, b, p)| json!({"token": t, "logprob": p, "bytes": b})).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()})
}

fn completion_lp(lps: &[TokenLogprob], offset0: usize) -> Value {
    let mut off = offset0;
    let mut offsets = Vec::new();
    for l in lps {
        offsets.push(off);
        off += l.token.len();
    }
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(t, _, p)| (t.clone(), json!(p))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

async fn collect_response(mut rx: UnboundedReceiver<Event>, mut c: RespCtx) -> Response<Body> {
    let mut text = String::new();
    let mut lps = Vec::new();
    let (mut finish, mut pt, mut ct) = ("stop", 0, 0);
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { text: t, logprob } => {
                text.push_str(&t);
                lps.extend(logprob);
            }
            Event::Done {
                finish: f,
                prompt_tokens,
                completion_tokens,
                timings,
            } => {
                c.span.finish(f, prompt_tokens, completion_tokens, &timings);
                finish = f.as_str();
                pt = prompt_tokens;
                ct = completion_tokens;
                break;
            }
        }
    }
    let body = if c.chat {
        json!({
            "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": if c.logprobs { chat_lp(&lps) } else { Value::Null },
                "finish_reason": finish}],
            "usage": usage(pt, ct),
        })
    } else {
        json!({
            "id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
            "choices": [{"index": 0, "text": text,
                "logprobs": if c.logprobs { completion_lp(&lps, 0) } else { Value::Null },
                "finish_reason": finish}],
            "usage": usage(pt, ct),
        })
    };
    json_response(StatusCode::OK, &body)
}

struct StreamState {
    rx: UnboundedReceiver<Event>,
    c: RespCtx,
    started: bool,
    finished: bool,
    text_len: usize,
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_response(rx: UnboundedReceiver<Event>, c: RespCtx) -> Response<Body> {
    let st = StreamState {
        rx,
        c,
        started: false,
        finished: false,
        text_len: 0,
    };
    let s = futures_util::stream::unfold(st, |mut st| async move {
        if st.finished {
            return None;
        }
        let mut out = Vec::<u8>::new();
        if st.c.chat && !st.started {
            st.started = true;
            out.extend_from_slice(&sse(&json!({
                "id": st.c.id, "object": "chat.completion.chunk", "created": st.c.created, "model": st.c.model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}],
            })));
        }
        match st.rx.recv().await {
            Some(Event::Token { text, logprob }) => {
                if !text.is_empty() || logprob.is_some() {
                    let lps: Vec<TokenLogprob> = logprob.into_iter().collect();
                    let v = if st.c.chat {
                        json!({
                            "id": st.c.id, "object": "chat.completion.chunk", "created": st.c.created, "model": st.c.model,
                            "choices": [{"index": 0, "delta": {"content": text},
                                "logprobs": if st.c.logprobs { chat_lp(&lps) } else { Value::Null }, "finish_reason": null}],
                        })
                    } else {
                        json!({
                            "id": st.c.id, "object": "text_completion", "created": st.c.created, "model": st.c.model,
                            "choices": [{"index": 0, "text": text,
                                "logprobs": if st.c.logprobs { completion_lp(&lps, st.text_len) } else { Value::Null }, "finish_reason": null}],
                        })
                    };
                    st.text_len += text.len();
                    out.extend_from_slice(&sse(&v));
                }
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                timings,
            }) => {
                st.finished = true;
                st.c.span
                    .finish(finish, prompt_tokens, completion_tokens, &timings);
                let u = usage(prompt_tokens, completion_tokens);
                let obj = if st.c.chat {
                    "chat.completion.chunk"
                } else {
                    "text_completion"
                };
                let choice = if st.c.chat {
                    json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish.as_str()})
                } else {
                    json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish.as_str()})
                };
                // Usage rides on the final chunk always; the separate usage-only chunk is the
                // one OpenAI sends for `stream_options.include_usage`.
                out.extend_from_slice(&sse(&json!({
                    "id": st.c.id, "object": obj, "created": st.c.created, "model": st.c.model,
                    "choices": [choice], "usage": u,
                })));
                if st.c.include_usage {
                    out.extend_from_slice(&sse(&json!({
                        "id": st.c.id, "object": obj, "created": st.c.created, "model": st.c.model,
                        "choices": [], "usage": u,
                    })));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            None => {
                st.finished = true;
            }
        }
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(out))), st))
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(s)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}
