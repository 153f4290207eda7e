//! Anthropic's Messages API (`POST /v1/messages`) over chat/completions.
//!
//! `system`, content blocks (text, image, tool_use, tool_result), `tools`, `tool_choice`,
//! `max_tokens`, `stop_sequences`, `temperature`, `top_p` and `metadata.user_id` map onto
//! chat/completions; the answer and the stream come back in Anthropic's shapes, and so do
//! errors ([`error_body`]), so the Anthropic SDKs raise their own exception classes.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{Chunk, Echo, StreamTranslator, Translated, Usage, bad, event, id_from};
use crate::base::error::GatewayError;

pub fn request_to_chat(mut req: Map<String, Value>) -> Result<Translated, GatewayError> {
    let mut chat = Map::new();
    match req.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => {
            chat.insert("model".into(), Value::String(m));
        }
        Some(Value::String(_)) | None => return Err(GatewayError::MissingParam { param: "model" }),
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "model",
                expected: "a string",
            });
        }
    }
    match req.remove("max_tokens") {
        Some(n @ Value::Number(_)) => {
            chat.insert("max_tokens".into(), n);
        }
        None | Some(Value::Null) => {
            return Err(GatewayError::MissingParam {
                param: "max_tokens",
            });
        }
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "max_tokens",
                expected: "an integer",
            });
        }
    }
    let mut messages = Vec::new();
    match req.remove("system") {
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text: Vec<&str> = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
            messages.push(json!({"role": "system", "content": text.join("\n")}));
        }
        Some(Value::Null) | None => {}
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "system",
                expected: "a string or an array of text blocks",
            });
        }
    }
    match req.remove("messages") {
        Some(Value::Array(msgs)) => {
            for (i, m) in msgs.into_iter().enumerate() {
                message(i, m, &mut messages)?;
            }
        }
        None | Some(Value::Null) => return Err(GatewayError::MissingParam { param: "messages" }),
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "messages",
                expected: "an array of messages",
            });
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(Value::Array(tools)) = req.remove("tools") {
        let mut out = Vec::with_capacity(tools.len());
        for (i, t) in tools.into_iter().enumerate() {
            // Anthropic's server tools (web search, bash, ...) carry a `type` of their own.
            if let Some(ty) = t["type"].as_str().filter(|t| *t != "custom") {
                return Err(bad(
                    format!("tools[{i}].type"),
                    format!("server tools ({ty}) cannot be served through chat/completions"),
                ));
            }
            let mut f = Map::new();
            f.insert("name".into(), t["name"].clone());
            if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                f.insert("description".into(), d.clone());
            }
            f.insert(
                "parameters".into(),
                t.get("input_schema")
                    .cloned()
                    .unwrap_or(json!({"type": "object"})),
            );
            out.push(json!({"type": "function", "function": f}));
        }
        chat.insert("tools".into(), Value::Array(out));
    }
    if let Some(tc) = req.remove("tool_choice").filter(|t| !t.is_null()) {
        let choice = match tc["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": tc["name"]}}),
            _ => return Err(bad("tool_choice.type", "expected auto, any, tool or none")),
        };
        chat.insert("tool_choice".into(), choice);
        if tc["disable_parallel_tool_use"] == true {
            chat.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if let Some(s) = req.remove("stop_sequences").filter(|s| !s.is_null()) {
        chat.insert("stop".into(), s);
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.remove(key).filter(|v| !v.is_null()) {
            chat.insert(key.into(), v);
        }
    }
    if let Some(user) = req
        .remove("metadata")
        .and_then(|m| m.get("user_id").cloned())
        .filter(|u| u.is_string())
    {
        chat.insert("user".into(), user);
    }
    // Anthropic-only members with no chat/completions meaning.
    for key in [
        "top_k",
        "thinking",
        "container",
        "service_tier",
        "mcp_servers",
    ] {
        req.remove(key);
    }
    // `message_delta` carries the usage of a stream.
    super::carry_rest(&mut chat, req)?;
    Ok(Translated {
        chat: Bytes::from(Value::Object(chat).to_string()),
        echo: Echo::default(),
        stateful: None,
    })
}

/// One Anthropic message as chat messages: tool results become `tool` messages (ahead of
/// the turn's other content, since chat wants them right after the assistant's calls).
fn message(i: usize, m: Value, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let role = match m["role"].as_str() {
        Some(r @ ("user" | "assistant")) => r.to_owned(),
        _ => {
            return Err(bad(
                format!("messages[{i}].role"),
                "expected \"user\" or \"assistant\"",
            ));
        }
    };
    let blocks = match &m["content"] {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(bad(
                format!("messages[{i}].content"),
                "expected a string or an array of content blocks",
            ));
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = |k: &str| format!("messages[{i}].content[{j}]{k}");
        match b["type"].as_str() {
            Some("text") => parts.push(json!({"type": "text", "text": b["text"]})),
            Some("image") => {
                let src = &b["source"];
                let url = match src["type"].as_str() {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src["media_type"].as_str().unwrap_or("image/png"),
                        src["data"].as_str().unwrap_or("")
                    ),
                    Some("url") => src["url"].as_str().unwrap_or("").to_owned(),
                    _ => return Err(bad(at(".source.type"), "expected base64 or url")),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_use") if role == "assistant" => {
                let input = b.get("input").cloned().unwrap_or(json!({}));
                calls.push(json!({
                    "id": b["id"], "type": "function",
                    "function": {"name": b["name"], "arguments": input.to_string()},
                }));
            }
            Some("tool_result") if role == "user" => {
                let content = match &b["content"] {
                    Value::String(s) => s.clone(),
                    Value::Array(inner) => inner
                        .iter()
                        .filter_map(|x| x["text"].as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let content = if b["is_error"] == true {
                    format!("Error: {content}")
                } else {
                    content
                };
                out.push(
                    json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": content}),
                );
            }
            // Extended thinking from an earlier answer: nothing a chat model reads.
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return Err(bad(
                    at(".type"),
                    format!(
                        "content blocks of type {other:?} are not supported in a {role} message"
                    ),
                ));
            }
        }
    }
    if role == "assistant" {
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        _ => "end_turn",
    }
}

fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

/// A complete chat/completions answer as an Anthropic message.
pub fn answer_from_chat(chat: &Value) -> Value {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(calls) = message["tool_calls"].as_array() {
        for c in calls {
            content.push(json!({
                "type": "tool_use", "id": c["id"], "name": c["function"]["name"],
                "input": tool_input(c["function"]["arguments"].as_str().unwrap_or("")),
            }));
        }
    }
    let u = Usage::read(chat).unwrap_or_default();
    json!({
        "id": id_from("msg_", chat["id"].as_str()),
        "type": "message",
        "role": "assistant",
        "model": chat["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": {"input_tokens": u.prompt, "output_tokens": u.completion},
    })
}

/// Anthropic's `error.type` for an HTTP status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// An OpenAI-shaped error body (the gateway's, or an upstream's relayed) in Anthropic's
/// shape: `{"type": "error", "error": {"type", "message"}}`.
pub fn error_body(status: StatusCode, openai: &[u8]) -> Bytes {
    let v: Value = serde_json::from_slice(openai).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .or_else(|| v["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&openai[..openai.len().min(512)]).into_owned());
    Bytes::from(
        json!({"type": "error", "error": {"type": error_type(status), "message": message}})
            .to_string(),
    )
}

enum Block {
    Text,
    Tool,
}

/// Chat chunks in, Anthropic's event sequence out: `message_start`, per block
/// `content_block_start`, `content_block_delta`s and `content_block_stop`, then
/// `message_delta` (stop reason and usage) and `message_stop`.
#[derive(Default)]
pub struct Stream {
    started: bool,
    /// The open block and its index.
    open: Option<(usize, Block)>,
    next_index: usize,
    /// Chat tool index → block index.
    tools: Vec<(u64, usize)>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Stream {
    fn start(&mut self, c: &Chunk, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": id_from("msg_", c.id.as_deref()), "type": "message", "role": "assistant",
            "model": c.model.as_deref().unwrap_or(""), "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open(&mut self, block: Block, start: Value, out: &mut Vec<u8>) -> usize {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        self.open = Some((index, block));
        index
    }
}

impl StreamTranslator for Stream {
    fn chunk(&mut self, c: Chunk, out: &mut Vec<u8>) {
        self.start(&c, out);
        if let Some(text) = &c.content {
            let index = match self.open {
                Some((i, Block::Text)) => i,
                _ => self.open(Block::Text, json!({"type": "text", "text": ""}), out),
            };
            event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for t in c.tools {
            let index = match self.tools.iter().find(|(ci, _)| *ci == t.index) {
                Some((_, b)) => *b,
                None => {
                    let start = json!({"type": "tool_use", "id": t.id.as_deref().unwrap_or(""),
                        "name": t.name.as_deref().unwrap_or(""), "input": {}});
                    let b = self.open(Block::Tool, start, out);
                    self.tools.push((t.index, b));
                    b
                }
            };
            if let Some(args) = t.arguments.filter(|a| !a.is_empty()) {
                event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(f) = c.finish_reason {
            self.finish_reason = Some(f);
        }
        if let Some(u) = c.usage {
            self.usage = Some(u);
        }
    }

    fn error(&mut self, error: &Value, out: &mut Vec<u8>) {
        let message = error["message"]
            .as_str()
            .unwrap_or("the upstream stream failed");
        event(
            out,
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        );
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(&Chunk::default(), out);
        self.close(out);
        let u = self.usage.unwrap_or_default();
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
            "usage": {"input_tokens": u.prompt, "output_tokens": u.completion}}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(v: Value) -> Result<Value, GatewayError> {
        let Value::Object(o) = v else { unreachable!() };
        request_to_chat(o).map(|t| serde_json::from_slice(&t.chat).unwrap())
    }

    #[test]
    fn tool_round_trip_becomes_chat_tool_messages() {
        let chat = translate(json!({
            "model": "claude", "max_tokens": 64, "system": "terse",
            "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "tu1", "name": "w", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "tu1", "content": "sunny"},
                    {"type": "text", "text": "and?"}]},
            ],
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"}, "stop_sequences": ["END"],
        }))
        .unwrap();
        let m = &chat["messages"];
        assert_eq!(m[0]["role"], "system");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "tu1", "content": "sunny"})
        );
        assert_eq!(m[4]["content"][0]["text"], "and?");
        assert_eq!(chat["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["max_tokens"], 64);
    }

    #[test]
    fn errors_take_anthropics_shape() {
        let body = error_body(
            StatusCode::NOT_FOUND,
            br#"{"error":{"message":"no such model","type":"invalid_request_error"}}"#,
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "no such model"}})
        );
        assert!(
            translate(json!({"model": "m", "messages": []}))
                .unwrap_err()
                .to_string()
                .contains("max_tokens")
        );
    }
}
