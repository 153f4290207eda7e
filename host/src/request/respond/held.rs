//! Streamed answers held back until they are complete, so `validate` plugins can judge them
//! (`validate_streams = "buffer"`).
//!
//! A stream the client asked for is read to its end, its chunks are put together into the
//! complete answer the same request would have got without `stream` (what validators
//! see, what the ledger and the shadow comparison read), and, once accepted, the events are
//! served as the upstream sent them. A rejected stream never reached the client, so the
//! fallback can answer instead, exactly as for a complete answer. A replacement (a complete
//! answer from a plugin) is turned back into events for the client.
//!
//! The price is time to first token: the client sees the first event when the last one
//! arrived. That is why holding streams is opt-in per plugin.

use std::time::Instant;

use bytes::Bytes;
use http::{Response, header};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::{Whole, collect_upstream, copy_response_headers};
use crate::base::Endpoint;
use crate::base::body::GatewayBody;
use crate::base::error::GatewayError;
use crate::base::openai::ResponseProbe;
use crate::base::respond::stamp;
use crate::config::Target;
use crate::services::observe::telemetry::{self, AnswerFacts, RequestTelemetry};

/// A stream read to its end.
#[derive(Debug, Clone)]
pub struct Held {
    /// The events to serve: the upstream's, minus the usage chunk the gateway asked for on
    /// the client's behalf.
    pub events: Bytes,
    /// The complete answer (a `chat.completion` or `text_completion` object, with the
    /// stream's `usage` when it reported one).
    pub complete: Bytes,
}

/// What [`held_answer`] reads and for whom.
pub struct HeldArgs<'a> {
    pub tel: &'a RequestTelemetry,
    pub target: &'a Target,
    pub model: &'a str,
    pub resp: Response<Incoming>,
    pub sent: Instant,
    pub endpoint: Endpoint,
    /// Remove the usage chunk the gateway asked for on the client's behalf.
    pub strip_usage: bool,
    /// The most bytes held (`[server] max_answer_bytes`).
    pub max_answer: usize,
}

/// A streamed answer held until complete (`validate_streams = "buffer"`): read it whole,
/// put the complete answer together for validation and accounting, serve the events.
pub async fn held_answer(a: HeldArgs<'_>) -> Result<Whole, GatewayError> {
    let HeldArgs {
        tel,
        target,
        model,
        resp,
        sent,
        endpoint,
        strip_usage,
        max_answer,
    } = a;
    let (parts, body) = resp.into_parts();
    let sse = collect_upstream(target, body, max_answer).await?;
    let upstream_time = sent.elapsed();
    let held =
        assemble(endpoint, &sse, strip_usage).map_err(|detail| GatewayError::UpstreamBroken {
            backend: target.backend.name.to_string(),
            detail,
        })?;
    let facts = match ResponseProbe::read(&held.complete) {
        Some(probe) => telemetry::answer_facts(tel, probe, &held.complete),
        None => AnswerFacts::default(),
    };
    let mut out = Response::new(GatewayBody::from(held.events.clone()));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut());
    out.headers_mut().remove(header::CONTENT_LENGTH);
    stamp(out.headers_mut(), &target.backend.name, Some(model));
    Ok(Whole {
        resp: out,
        body: held.complete,
        upstream_time,
        facts,
        events: Some(held.events),
    })
}

/// One server-sent event: its bytes in the stream and its `data` payload.
struct Event<'a> {
    raw: &'a [u8],
    data: Vec<u8>,
}

/// Split `sse` into events (a blank line ends each; `data:` lines of one event are joined
/// by newlines, as the SSE specification says).
fn events(sse: &[u8]) -> Vec<Event<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut data: Option<Vec<u8>> = None;
    let mut pos = 0;
    while pos < sse.len() {
        let end = memchr::memchr(b'\n', &sse[pos..]).map_or(sse.len(), |i| pos + i);
        let line = &sse[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos = (end + 1).min(sse.len());
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push(Event {
                    raw: &sse[start..pos],
                    data: d,
                });
            }
            start = pos;
            continue;
        }
        if let Some(v) = line.strip_prefix(b"data:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(v);
                }
                None => data = Some(v.to_vec()),
            }
        }
    }
    if let Some(d) = data {
        out.push(Event {
            raw: &sse[start..],
            data: d,
        });
    }
    out
}

#[derive(Default)]
struct ToolCall {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Default)]
struct Choice {
    role: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    text: String,
    tool_calls: Vec<(u64, ToolCall)>,
    finish_reason: Value,
}

fn append(to: &mut Option<String>, v: &Value) {
    if let Some(s) = v.as_str() {
        to.get_or_insert_with(String::new).push_str(s);
    }
}

/// Read a whole stream: the events to serve and the complete answer. An error event, a
/// chunk that is not JSON, or a stream without `data: [DONE]` is an error saying so.
pub fn assemble(endpoint: Endpoint, sse: &[u8], strip_usage: bool) -> Result<Held, String> {
    let chat = endpoint == Endpoint::ChatCompletions;
    let mut head = Map::new();
    let mut choices: Vec<(u64, Choice)> = Vec::new();
    let mut usage_value = Value::Null;
    let mut served = Vec::with_capacity(sse.len());
    let mut done = false;
    for ev in events(sse) {
        if ev.data.trim_ascii() == b"[DONE]" {
            done = true;
            served.extend_from_slice(ev.raw);
            continue;
        }
        let chunk: Value = serde_json::from_slice(&ev.data).map_err(|e| {
            format!(
                "a chunk of the stream is not JSON ({e}): {}",
                String::from_utf8_lossy(&ev.data[..ev.data.len().min(120)])
            )
        })?;
        if let Some(err) = chunk.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(format!("the stream carried an error: {msg}"));
        }
        let cs = chunk.get("choices").and_then(Value::as_array);
        let usage_only =
            cs.is_some_and(|c| c.is_empty()) && chunk.get("usage").is_some_and(Value::is_object);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            usage_value = u.clone();
        }
        if !(usage_only && strip_usage) {
            served.extend_from_slice(ev.raw);
        }
        for key in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if !head.contains_key(key)
                && let Some(v) = chunk.get(key).filter(|v| !v.is_null())
            {
                head.insert(key.to_string(), v.clone());
            }
        }
        for c in cs.into_iter().flatten() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let at = match choices.iter().position(|(i, _)| *i == index) {
                Some(at) => at,
                None => {
                    choices.push((index, Choice::default()));
                    choices.len() - 1
                }
            };
            let acc = &mut choices[at].1;
            if let Some(r) = c.get("finish_reason").filter(|r| !r.is_null()) {
                acc.finish_reason = r.clone();
            }
            if !chat {
                if let Some(t) = c.get("text").and_then(Value::as_str) {
                    acc.text.push_str(t);
                }
                continue;
            }
            let Some(delta) = c.get("delta") else {
                continue;
            };
            if let Some(r) = delta.get("role").filter(|r| !r.is_null()) {
                acc.role = Some(r.clone());
            }
            if let Some(v) = delta.get("content") {
                append(&mut acc.content, v);
            }
            if let Some(v) = delta.get("refusal") {
                append(&mut acc.refusal, v);
            }
            for tc in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ti = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                let at = match acc.tool_calls.iter().position(|(i, _)| *i == ti) {
                    Some(at) => at,
                    None => {
                        acc.tool_calls.push((ti, ToolCall::default()));
                        acc.tool_calls.len() - 1
                    }
                };
                let call = &mut acc.tool_calls[at].1;
                if let Some(v) = tc.get("id").filter(|v| !v.is_null()) {
                    call.id = Some(v.clone());
                }
                if let Some(v) = tc.get("type").filter(|v| !v.is_null()) {
                    call.kind = Some(v.clone());
                }
                if let Some(f) = tc.get("function") {
                    if let Some(n) = f.get("name").and_then(Value::as_str) {
                        call.name.push_str(n);
                    }
                    if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                        call.arguments.push_str(a);
                    }
                }
            }
        }
    }
    if !done {
        return Err("the stream ended without `data: [DONE]`".into());
    }
    choices.sort_by_key(|(i, _)| *i);
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(index, c)| {
            if !chat {
                return json!({"index": index, "text": c.text, "logprobs": null,
                    "finish_reason": c.finish_reason});
            }
            let mut message = Map::new();
            message.insert(
                "role".into(),
                c.role.unwrap_or_else(|| Value::from("assistant")),
            );
            message.insert("content".into(), c.content.map_or(Value::Null, Value::from));
            if let Some(r) = c.refusal {
                message.insert("refusal".into(), Value::from(r));
            }
            if !c.tool_calls.is_empty() {
                let mut calls = c.tool_calls;
                calls.sort_by_key(|(i, _)| *i);
                let calls: Vec<Value> = calls
                    .into_iter()
                    .map(|(_, t)| {
                        json!({"id": t.id, "type": t.kind.unwrap_or_else(|| "function".into()),
                            "function": {"name": t.name, "arguments": t.arguments}})
                    })
                    .collect();
                message.insert("tool_calls".into(), Value::from(calls));
            }
            json!({"index": index, "message": message, "logprobs": null,
                "finish_reason": c.finish_reason})
        })
        .collect();
    let mut complete = Map::new();
    complete.insert("id".into(), head.remove("id").unwrap_or_else(|| "".into()));
    complete.insert(
        "object".into(),
        Value::from(if chat {
            "chat.completion"
        } else {
            "text_completion"
        }),
    );
    complete.append(&mut head);
    complete.insert("choices".into(), Value::from(choices));
    if !usage_value.is_null() {
        complete.insert("usage".into(), usage_value);
    }
    let complete = serde_json::to_vec(&Value::Object(complete)).map_err(|e| e.to_string())?;
    Ok(Held {
        events: Bytes::from(served),
        complete: Bytes::from(complete),
    })
}

/// A complete answer (a plugin's replacement) as the events of a stream: one chunk with
/// each choice's whole message, one with its finish reason, the usage chunk when the client
/// asked for it, then `[DONE]`.
pub fn to_events(endpoint: Endpoint, complete: &[u8], include_usage: bool) -> Bytes {
    let chat = endpoint == Endpoint::ChatCompletions;
    let answer: Value = serde_json::from_slice(complete).unwrap_or(Value::Null);
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let mut base = Map::new();
    base.insert("id".into(), answer.get("id").cloned().unwrap_or_default());
    base.insert("object".into(), Value::from(object));
    for key in ["created", "model", "system_fingerprint"] {
        if let Some(v) = answer.get(key) {
            base.insert(key.into(), v.clone());
        }
    }
    let chunk = |choices: Vec<Value>| {
        let mut c = base.clone();
        c.insert("choices".into(), Value::from(choices));
        if include_usage {
            c.insert("usage".into(), Value::Null);
        }
        Value::Object(c)
    };
    let list: &[Value] = answer
        .get("choices")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let (mut bodies, mut ends) = (Vec::new(), Vec::new());
    for (n, c) in list.iter().enumerate() {
        let index = c.get("index").cloned().unwrap_or_else(|| Value::from(n));
        let finish = c.get("finish_reason").cloned().unwrap_or(Value::Null);
        if chat {
            let mut delta = c.get("message").cloned().unwrap_or_else(|| json!({}));
            if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for (i, call) in calls.iter_mut().enumerate() {
                    if let Some(o) = call.as_object_mut() {
                        o.insert("index".into(), Value::from(i));
                    }
                }
            }
            bodies.push(json!({"index": index, "delta": delta, "logprobs": null,
                "finish_reason": null}));
            ends.push(json!({"index": index, "delta": {}, "logprobs": null,
                "finish_reason": finish}));
        } else {
            let text = c.get("text").cloned().unwrap_or_else(|| Value::from(""));
            bodies.push(json!({"index": index, "text": text, "logprobs": null,
                "finish_reason": null}));
            ends.push(json!({"index": index, "text": "", "logprobs": null,
                "finish_reason": finish}));
        }
    }
    let mut out = String::new();
    for v in [chunk(bodies), chunk(ends)] {
        out.push_str(&format!("data: {v}\n\n"));
    }
    if include_usage && let Some(u) = answer.get("usage").filter(|u| u.is_object()) {
        let mut c = base.clone();
        c.insert("choices".into(), json!([]));
        c.insert("usage".into(), u.clone());
        out.push_str(&format!("data: {}\n\n", Value::Object(c)));
    }
    out.push_str("data: [DONE]\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(chunks: &[Value]) -> Vec<u8> {
        let mut s = String::new();
        for c in chunks {
            s.push_str(&format!("data: {c}\n\n"));
        }
        s.push_str("data: [DONE]\n\n");
        s.into_bytes()
    }

    fn chunk(choices: Value) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
            "model": "m", "system_fingerprint": "fp", "usage": null, "choices": choices})
    }

    #[test]
    fn chat_chunks_become_the_complete_answer() {
        let stream = sse(&[
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            ),
            chunk(json!([{"index": 0, "delta": {"content": "{\"a\":"}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": " 1}"}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
        ]);
        let held = assemble(Endpoint::ChatCompletions, &stream, true).unwrap();
        let v: Value = serde_json::from_slice(&held.complete).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-1");
        assert_eq!(v["model"], "m");
        assert_eq!(v["system_fingerprint"], "fp");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], "{\"a\": 1}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["usage"]["completion_tokens"], 2);
        // Served: every event but the usage chunk the gateway added.
        let served = String::from_utf8(held.events.to_vec()).unwrap();
        assert_eq!(served.matches("data: ").count(), 5, "{served}");
        assert!(!served.contains("prompt_tokens"), "{served}");
        assert!(served.ends_with("data: [DONE]\n\n"));
        let kept = assemble(Endpoint::ChatCompletions, &stream, false).unwrap();
        assert_eq!(
            kept.events.as_ref(),
            &stream[..],
            "nothing stripped: byte-identical"
        );
    }

    #[test]
    fn tool_call_fragments_and_choices_are_joined_by_index() {
        let stream = sse(&[
            chunk(
                json!([{"index": 1, "delta": {"role": "assistant", "content": "b"}, "finish_reason": null}]),
            ),
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": ""}}]}, "finish_reason": null}]),
            ),
            chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\""}}]}, "finish_reason": null}]),
            ),
            chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}, "finish_reason": "tool_calls"}]),
            ),
            chunk(json!([{"index": 1, "delta": {}, "finish_reason": "length"}])),
        ]);
        let v: Value = serde_json::from_slice(
            &assemble(Endpoint::ChatCompletions, &stream, false)
                .unwrap()
                .complete,
        )
        .unwrap();
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["name"], "get");
        assert_eq!(call["function"]["arguments"], "{\"x\": 2}");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["choices"][1]["message"]["content"], "b");
        assert_eq!(v["choices"][1]["finish_reason"], "length");
        assert!(v.get("usage").is_none());
    }

    #[test]
    fn completions_text_is_joined() {
        let c = |t: &str, f: Value| {
            json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": t, "logprobs": null, "finish_reason": f}]})
        };
        let stream = sse(&[c("Hel", Value::Null), c("lo", Value::from("stop"))]);
        let v: Value = serde_json::from_slice(
            &assemble(Endpoint::Completions, &stream, false)
                .unwrap()
                .complete,
        )
        .unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn broken_streams_are_errors_that_say_why() {
        let mut cut = sse(&[chunk(json!([{"index": 0, "delta": {"content": "a"}}]))]);
        cut.truncate(cut.len() - "data: [DONE]\n\n".len());
        let e = assemble(Endpoint::ChatCompletions, &cut, false).unwrap_err();
        assert!(e.contains("[DONE]"), "{e}");
        let e = assemble(
            Endpoint::ChatCompletions,
            &sse(&[json!({"error": {"message": "overloaded", "type": "server_error"}})]),
            false,
        )
        .unwrap_err();
        assert!(e.contains("overloaded"), "{e}");
        let e = assemble(Endpoint::ChatCompletions, b"data: {nope\n\n", false).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn a_replacement_streams_back_into_the_same_answer() {
        let complete = json!({"id": "r", "object": "chat.completion", "created": 3, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"ok\":true}",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        let bytes = serde_json::to_vec(&complete).unwrap();
        for include_usage in [false, true] {
            let events = to_events(Endpoint::ChatCompletions, &bytes, include_usage);
            let back = assemble(Endpoint::ChatCompletions, &events, false).unwrap();
            let v: Value = serde_json::from_slice(&back.complete).unwrap();
            assert_eq!(v["choices"], complete["choices"]);
            assert_eq!(v["id"], "r");
            assert_eq!(v["usage"].is_object(), include_usage);
        }
        let text = json!({"id": "t", "object": "text_completion", "created": 3, "model": "m",
            "choices": [{"index": 0, "text": "hi", "logprobs": null, "finish_reason": "stop"}]});
        let events = to_events(
            Endpoint::Completions,
            &serde_json::to_vec(&text).unwrap(),
            false,
        );
        let v: Value = serde_json::from_slice(
            &assemble(Endpoint::Completions, &events, false)
                .unwrap()
                .complete,
        )
        .unwrap();
        assert_eq!(v["choices"], text["choices"]);
    }
}
