//! The mock's answers in the Responses API's and Anthropic's Messages API's own formats
//! (`POST /v1/responses`, `POST /v1/messages`), complete and streamed, as OpenAI and
//! Anthropic send them: what a gateway passing those requests through relays. A Responses
//! answer echoes `previous_response_id` and `store`, so a test sees they arrived.

use bytes::Bytes;
use serde_json::{Value, json};

/// Which native API a request path calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Responses,
    Messages,
}

impl Api {
    pub fn of(path: &str) -> Option<Api> {
        if path.ends_with("/responses") {
            Some(Api::Responses)
        } else if path.ends_with("/messages") {
            Some(Api::Messages)
        } else {
            None
        }
    }
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn response(req: &Value, model: &str, status: &str, output: Value, usage: Value) -> Value {
    json!({
        "id": "resp_mock", "object": "response", "created_at": 1700000000, "status": status,
        "model": model, "output": output, "usage": usage, "error": null,
        "incomplete_details": null, "instructions": req["instructions"],
        "metadata": req.get("metadata").cloned().unwrap_or(json!({})),
        "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto",
        "tools": [], "text": {"format": {"type": "text"}},
        "previous_response_id": req["previous_response_id"],
        "store": req["store"].as_bool().unwrap_or(true),
    })
}

fn message_item(text: &str, status: &str) -> Value {
    json!({"type": "message", "id": "msg_mock", "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn responses_usage(prompt: u64, completion: u64) -> Value {
    json!({"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
           "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
}

fn messages_usage(prompt: u64, completion: u64) -> Value {
    json!({"input_tokens": prompt, "output_tokens": completion,
           "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
}

fn message(model: &str, content: Value, stop: Value, usage: Value) -> Value {
    json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
           "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage})
}

/// A complete answer: the text of `pieces`, one output token each.
pub fn complete(api: Api, req: &Value, model: &str, prompt: u64, pieces: &[String]) -> Value {
    let text = pieces.concat();
    let n = pieces.len() as u64;
    match api {
        Api::Responses => response(
            req,
            model,
            "completed",
            json!([message_item(&text, "completed")]),
            responses_usage(prompt, n),
        ),
        Api::Messages => message(
            model,
            json!([{"type": "text", "text": text}]),
            json!("end_turn"),
            messages_usage(prompt, n),
        ),
    }
}

/// A streamed answer: the protocol's event sequence, one event per piece of text.
pub fn events(api: Api, req: &Value, model: &str, prompt: u64, pieces: &[String]) -> Vec<Bytes> {
    let text = pieces.concat();
    let n = pieces.len() as u64;
    let mut out = Vec::new();
    match api {
        Api::Responses => {
            let mut seq = 0u64;
            let mut ev = |name: &str, mut data: Value| {
                data["type"] = json!(name);
                data["sequence_number"] = json!(seq);
                seq += 1;
                out.push(event(name, &data));
            };
            let started = response(req, model, "in_progress", json!([]), Value::Null);
            ev("response.created", json!({"response": started}));
            ev("response.in_progress", json!({"response": started}));
            ev(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "message", "id": "msg_mock", "status": "in_progress", "role": "assistant", "content": []}}),
            );
            ev(
                "response.content_part.added",
                json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for p in pieces {
                ev(
                    "response.output_text.delta",
                    json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": p, "logprobs": []}),
                );
            }
            ev(
                "response.output_text.done",
                json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            );
            ev(
                "response.content_part.done",
                json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
            ev(
                "response.output_item.done",
                json!({"output_index": 0, "item": message_item(&text, "completed")}),
            );
            let done = response(
                req,
                model,
                "completed",
                json!([message_item(&text, "completed")]),
                responses_usage(prompt, n),
            );
            ev("response.completed", json!({"response": done}));
        }
        Api::Messages => {
            let mut ev = |name: &str, mut data: Value| {
                data["type"] = json!(name);
                out.push(event(name, &data));
            };
            ev(
                "message_start",
                json!({"message": message(model, json!([]), Value::Null, messages_usage(prompt, 1))}),
            );
            ev(
                "content_block_start",
                json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            for p in pieces {
                ev(
                    "content_block_delta",
                    json!({"index": 0, "delta": {"type": "text_delta", "text": p}}),
                );
            }
            ev("content_block_stop", json!({"index": 0}));
            ev(
                "message_delta",
                json!({"delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": n}}),
            );
            ev("message_stop", json!({}));
        }
    }
    out
}
