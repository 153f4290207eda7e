//! Answering a completion: submit the validated request to the engine, then relay its events
//! as one JSON response or as server-sent events (OpenAI's chunk shapes, usage on the final
//! chunk). The body stream owns the engine's event receiver, so a client that disconnects
//! drops it and the engine cancels that sequence before its next step.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{ApiError, AppState, Body, json_response, now, parse, request_id};
use crate::engine::{Event, Finish, GenRequest, TokenLogprob};
use crate::tools::parse::{Delta, Parser};
use crate::trace::RequestSpan;

/// A failed request hands its span back so the caller marks it with the error.
pub(super) type Failed = (ApiError, RequestSpan);

/// Answers one completion request: validate, submit, then relay the engine's events.
pub(super) async fn completion(
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
    let p = match parse::parse(body, chat, st) {
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
    let id = request_id(if chat { "chatcmpl" } else { "cmpl" });
    // Calls are parsed out of the text when tools may be called; a forced call is decoded
    // under its grammar, so it cannot go wrong and streams as it comes.
    let forced = p.tools.as_ref().is_some_and(|t| t.forced().is_some());
    let tool_parser = p.tools.as_ref().map(|_| {
        Parser::new(
            st.template.tools.format,
            forced,
            &format!("call_{}_", id.trim_start_matches("chatcmpl-")),
        )
    });
    let submitted = st.engine.submit(GenRequest {
        prompt: p.prompt,
        params: p.params,
        max_tokens,
        stop: p.stop,
        logprobs: p.logprobs,
        events: tx,
        arrived: std::time::Instant::now(),
        constraint: p.constraint,
        special_text: p.tools.is_some(),
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
    span.set("gen_ai.response.id", id.clone());
    let ctx = RespCtx {
        id,
        created: now(),
        model: st.model_name.clone(),
        chat,
        logprobs: p.logprobs.is_some(),
        include_usage: p.include_usage,
        span,
        tool_parser,
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
    /// Parses tool calls out of the text, when the request offered tools.
    tool_parser: Option<Parser>,
}

/// OpenAI's `finish_reason`: `tool_calls` when the answer ended by calling tools.
fn finish_reason(f: Finish, called: bool) -> &'static str {
    if called && f == Finish::Stop {
        "tool_calls"
    } else {
        f.as_str()
    }
}

/// A streamed chat delta for one parsed piece.
fn delta_json(d: &Delta) -> Value {
    match d {
        Delta::Content(t) => json!({"content": t}),
        Delta::Start { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""},
        }]}),
        Delta::Args { index, text } => json!({"tool_calls": [{
            "index": index, "function": {"arguments": text},
        }]}),
    }
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
    let (mut finish, mut pt, mut ct) = (Finish::Stop, 0, 0);
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
                finish = f;
                pt = prompt_tokens;
                ct = completion_tokens;
                break;
            }
        }
    }
    let mut message = json!({"role": "assistant", "content": text});
    let mut called = false;
    if let Some(parser) = &mut c.tool_parser {
        let mut deltas = parser.push(&text);
        deltas.extend(parser.finish());
        let content: String = deltas
            .iter()
            .filter_map(|d| match d {
                Delta::Content(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        let calls: Vec<Value> = parser
            .calls()
            .iter()
            .map(|tc| {
                json!({"id": tc.id, "type": "function",
                "function": {"name": tc.name, "arguments": tc.arguments}})
            })
            .collect();
        called = !calls.is_empty();
        message = if called {
            let content = if content.trim().is_empty() {
                Value::Null
            } else {
                Value::String(content)
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        } else {
            json!({"role": "assistant", "content": content})
        };
    }
    let finish = finish_reason(finish, called);
    let body = if c.chat {
        json!({
            "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
            "choices": [{"index": 0, "message": message,
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

impl StreamState {
    /// A chat chunk carrying `delta` (and a token's log-probabilities).
    fn chat_chunk(&self, delta: Value, lp: Option<Vec<TokenLogprob>>) -> Value {
        json!({
            "id": self.c.id, "object": "chat.completion.chunk", "created": self.c.created, "model": self.c.model,
            "choices": [{"index": 0, "delta": delta,
                "logprobs": match lp { Some(l) if self.c.logprobs => chat_lp(&l), _ => Value::Null },
                "finish_reason": null}],
        })
    }
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
            Some(Event::Token { text, logprob }) if st.c.chat && st.c.tool_parser.is_some() => {
                let deltas =
                    st.c.tool_parser
                        .as_mut()
                        .map(|p| p.push(&text))
                        .unwrap_or_default();
                let mut lp = logprob.map(|l| vec![l]);
                for d in &deltas {
                    out.extend_from_slice(&sse(&st.chat_chunk(delta_json(d), lp.take())));
                }
                if let Some(l) = lp {
                    out.extend_from_slice(&sse(&st.chat_chunk(json!({"content": ""}), Some(l))));
                }
            }
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
                let mut called = false;
                if let Some(p) = st.c.tool_parser.as_mut() {
                    let rest = p.finish();
                    called = !p.calls().is_empty();
                    for d in &rest {
                        out.extend_from_slice(&sse(&st.chat_chunk(delta_json(d), None)));
                    }
                }
                let reason = finish_reason(finish, called);
                let u = usage(prompt_tokens, completion_tokens);
                let obj = if st.c.chat {
                    "chat.completion.chunk"
                } else {
                    "text_completion"
                };
                let choice = if st.c.chat {
                    json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason})
                } else {
                    json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason})
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
