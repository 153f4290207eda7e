//! Answers in the Responses API's and Anthropic's own formats, read for what the gateway
//! accounts (usage, the model, how the answer ended) when a request was passed through to a
//! backend that speaks that API (`backends[].api`) instead of being translated.
//!
//! | protocol | usage in a complete answer | in a stream |
//! | --- | --- | --- |
//! | Responses | `usage.input_tokens`, `usage.output_tokens` | `response.completed` (or `.incomplete`, `.failed`): `response.usage` |
//! | Messages | `usage.input_tokens` (+ cache creation and cache reads), `usage.output_tokens` | `message_start`: `message.usage`; `message_delta`: `usage` (output so far) |

use bytes::Bytes;
use memchr::memmem;
use serde_json::{Map, Value};

use super::Protocol;
use crate::base::openai::Usage;

/// Usage from a native `usage` object, as chat/completions counts it: Anthropic's prompt
/// tokens are split into fresh, cache-written and cache-read ones, and all of them were sent.
fn usage_of(protocol: Protocol, u: &Value) -> Option<Usage> {
    if !u.is_object() {
        return None;
    }
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let prompt = match protocol {
        Protocol::Messages => {
            n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens")
        }
        _ => n("input_tokens"),
    };
    let completion = n("output_tokens");
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    })
}

/// What the gateway reads of a complete native answer.
pub struct Complete {
    pub usage: Option<Usage>,
    pub model: Option<String>,
    /// `status` (Responses) or `stop_reason` (Messages).
    pub finish: Option<String>,
}

/// Read a complete native answer; `None` when it is no JSON object.
pub fn read_complete(protocol: Protocol, body: &[u8]) -> Option<Complete> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if !v.is_object() {
        return None;
    }
    let finish = match protocol {
        Protocol::Messages => v["stop_reason"].as_str(),
        _ => v["status"].as_str(),
    };
    Some(Complete {
        usage: usage_of(protocol, &v["usage"]),
        model: v["model"].as_str().map(str::to_owned),
        finish: finish.map(str::to_owned),
    })
}

/// What one event of a native stream says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Usage reported so far (prompt and completion as far as the event says).
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub model: Option<String>,
    /// The event carried generated content.
    pub content: bool,
    /// How the answer ended, when the event says (a stop reason or a final status).
    pub finish: Option<String>,
    /// The protocol's last event: the stream is complete.
    pub last: bool,
}

/// Read one `data:` payload of a native stream. Only the few events that carry usage or end
/// the stream are parsed; content events are recognised by a substring, as chat chunks are.
pub fn read_event(protocol: Protocol, data: &[u8]) -> Event {
    let has = |needle: &[u8]| memmem::find(data, needle).is_some();
    let mut e = Event {
        content: ["\"delta\":\"", "\"text\":\"", "\"partial_json\":\""]
            .iter()
            .any(|n| memmem::find_iter(data, n).any(|i| data.get(i + n.len()) != Some(&b'"'))),
        ..Event::default()
    };
    let parse = || serde_json::from_slice::<Value>(data).unwrap_or(Value::Null);
    match protocol {
        Protocol::Responses => {
            if has(b"\"response.completed\"")
                || has(b"\"response.incomplete\"")
                || has(b"\"response.failed\"")
            {
                let v = parse();
                let ty = v["type"].as_str().unwrap_or("");
                if !matches!(
                    ty,
                    "response.completed" | "response.incomplete" | "response.failed"
                ) {
                    return e;
                }
                let r = &v["response"];
                if let Some(u) = usage_of(protocol, &r["usage"]) {
                    e.prompt = Some(u.prompt_tokens);
                    e.completion = Some(u.completion_tokens);
                }
                e.model = r["model"].as_str().map(str::to_owned);
                e.finish = Some(r["status"].as_str().unwrap_or(ty).to_owned());
                e.content = false;
                e.last = true;
            }
        }
        Protocol::Messages => {
            if has(b"\"message_start\"") {
                let v = parse();
                if v["type"] == "message_start" {
                    let m = &v["message"];
                    if let Some(u) = usage_of(protocol, &m["usage"]) {
                        e.prompt = Some(u.prompt_tokens);
                        e.completion = Some(u.completion_tokens);
                    }
                    e.model = m["model"].as_str().map(str::to_owned);
                    e.content = false;
                }
            } else if has(b"\"message_delta\"") {
                let v = parse();
                if v["type"] == "message_delta" {
                    let u = &v["usage"];
                    if u.is_object() {
                        e.completion = u["output_tokens"].as_u64();
                        if u.get("input_tokens").is_some_and(|x| !x.is_null()) {
                            e.prompt = usage_of(protocol, u).map(|u| u.prompt_tokens);
                        }
                    }
                    e.finish = v["delta"]["stop_reason"].as_str().map(str::to_owned);
                    e.content = false;
                }
            } else if has(b"\"message_stop\"") {
                e.last = parse()["type"] == "message_stop";
            }
        }
        Protocol::OpenAi => {}
    }
    e
}

/// The gateway's error (OpenAI-shaped) as the last event of a stream in `protocol`'s own
/// format: an `error` event as OpenAI's Responses streams and Anthropic's send them.
pub fn error_event(protocol: Protocol, status: http::StatusCode, openai: &[u8]) -> Bytes {
    let data = match protocol {
        Protocol::Messages => super::anthropic::error_body(status, openai),
        _ => {
            let v: Value = serde_json::from_slice(openai).unwrap_or(Value::Null);
            let e = &v["error"];
            Bytes::from(
                serde_json::json!({"type": "error", "code": e["code"], "message": e["message"],
                                   "param": e["param"]})
                .to_string(),
            )
        }
    };
    let mut out = Vec::with_capacity(data.len() + 24);
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The client's body with `model` set to the upstream model name, everything else as sent.
pub fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut v: Map<String, Value> = serde_json::from_slice(body).ok()?;
    v.insert("model".into(), Value::String(model.to_owned()));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_is_read_from_complete_native_answers() {
        let r = json!({"object": "response", "status": "completed", "model": "gpt-4.1",
            "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}});
        let c = read_complete(Protocol::Responses, r.to_string().as_bytes()).unwrap();
        let u = c.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 7));
        assert_eq!(c.finish.as_deref(), Some("completed"));
        let m = json!({"type": "message", "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 3}});
        let u = read_complete(Protocol::Messages, m.to_string().as_bytes())
            .unwrap()
            .usage
            .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (105, 3));
    }

    #[test]
    fn stream_events_give_usage_and_the_end() {
        let done = json!({"type": "response.completed", "sequence_number": 9,
            "response": {"status": "completed", "model": "m", "usage": {"input_tokens": 4, "output_tokens": 2}}});
        let e = read_event(Protocol::Responses, done.to_string().as_bytes());
        assert_eq!((e.prompt, e.completion, e.last), (Some(4), Some(2), true));
        let delta = br#"{"type":"response.output_text.delta","delta":"hi"}"#;
        let e = read_event(Protocol::Responses, delta);
        assert!(e.content && !e.last);
        // A delta whose text mentions an event name is content, not the end.
        let sneaky = br#"{"type":"response.output_text.delta","delta":"\"response.completed\""}"#;
        let e = read_event(Protocol::Responses, sneaky);
        assert!(e.content && !e.last);

        let start = br#"{"type":"message_start","message":{"model":"claude","usage":{"input_tokens":9,"output_tokens":1}}}"#;
        let e = read_event(Protocol::Messages, start);
        assert_eq!((e.prompt, e.completion), (Some(9), Some(1)));
        let md = br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":6}}"#;
        let e = read_event(Protocol::Messages, md);
        assert_eq!((e.prompt, e.completion), (None, Some(6)));
        assert_eq!(e.finish.as_deref(), Some("end_turn"));
        assert!(read_event(Protocol::Messages, br#"{"type":"message_stop"}"#).last);
    }

    #[test]
    fn the_model_is_replaced_and_the_rest_kept() {
        let b = with_model(
            br#"{"model":"a","previous_response_id":"r1","store":true}"#,
            "b",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({"model": "b", "previous_response_id": "r1", "store": true})
        );
    }
}
