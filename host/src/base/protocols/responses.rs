//! OpenAI's Responses API (`POST /v1/responses`), stateless, over chat/completions.
//!
//! `input` (a string or items: messages, `function_call`, `function_call_output`),
//! `instructions`, function tools, `tool_choice`, `text.format`, `max_output_tokens`,
//! `temperature`, `top_p`, `metadata` and `user` map onto chat/completions. What needs state
//! the gateway does not keep (`previous_response_id`, `store: true`, `background`,
//! `conversation`) and tools chat/completions has no equivalent for are refused with a 400
//! naming the member: silently dropping them would answer a different question.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Chunk, Echo, StreamTranslator, Translated, Usage, bad, event, id_from, now_secs};
use crate::base::error::GatewayError;

/// Members the answer echoes back, as OpenAI's does.
const ECHOED: &[&str] = &[
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
];

/// Responses members that have no chat/completions meaning and would be refused upstream
/// (`store: false` and the like, already checked above).
const DROPPED: &[&str] = &[
    "store",
    "background",
    "include",
    "truncation",
    "stream_options",
    "max_tool_calls",
    "previous_response_id",
    "conversation",
    "metadata",
];

pub fn request_to_chat(mut req: Map<String, Value>) -> Result<Translated, GatewayError> {
    // Stored state cannot be translated; a backend that speaks the Responses API itself
    // keeps it, so the refusal waits until the request path knows where the request goes.
    let mut stateful = None;
    for key in ["previous_response_id", "conversation"] {
        if stateful.is_none() && req.get(key).is_some_and(|v| !v.is_null()) {
            stateful = Some(bad(
                key,
                "this gateway serves the Responses API without stored state; send the whole \
                 conversation in `input` instead (or route to a backend with api = \"responses\")",
            ));
        }
    }
    for key in ["store", "background"] {
        if stateful.is_none() && req.get(key).and_then(Value::as_bool) == Some(true) {
            stateful = Some(bad(
                key,
                "this gateway serves the Responses API without stored state; omit it or set it \
                 to false (or route to a backend with api = \"responses\")",
            ));
        }
    }
    let mut echo = Echo::default();
    for key in ECHOED {
        if let Some(v) = req.get(*key) {
            echo.fields.insert((*key).to_owned(), v.clone());
        }
    }
    let mut chat = Map::new();
    match req.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => {
            echo.fields.insert("model".into(), Value::String(m.clone()));
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
    let mut messages = Vec::new();
    match req.remove("instructions") {
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Null) | None => {}
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "instructions",
                expected: "a string",
            });
        }
    }
    match req.remove("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => input_items(items, &mut messages)?,
        None | Some(Value::Null) => return Err(GatewayError::MissingParam { param: "input" }),
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "input",
                expected: "a string or an array of input items",
            });
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = req.remove("tools").filter(|t| !t.is_null()) {
        chat.insert("tools".into(), translate_tools(tools)?);
    }
    if let Some(tc) = req.remove("tool_choice").filter(|t| !t.is_null()) {
        chat.insert("tool_choice".into(), translate_tool_choice(tc)?);
    }
    if let Some(text) = req.remove("text").filter(|t| !t.is_null())
        && let Some(format) = text.get("format").filter(|f| !f.is_null())
    {
        match format["type"].as_str() {
            Some("text") => {}
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(k) {
                        schema.insert(k.into(), v.clone());
                    }
                }
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            _ => {
                return Err(bad(
                    "text.format.type",
                    "expected text, json_object or json_schema",
                ));
            }
        }
    }
    if let Some(n) = req.remove("max_output_tokens").filter(|t| !t.is_null()) {
        chat.insert("max_tokens".into(), n);
    }
    if let Some(r) = req.remove("reasoning").filter(|t| !t.is_null())
        && let Some(effort) = r.get("effort").filter(|e| !e.is_null())
    {
        chat.insert("reasoning_effort".into(), effort.clone());
    }
    for key in [
        "temperature",
        "top_p",
        "user",
        "parallel_tool_calls",
        "seed",
    ] {
        if let Some(v) = req.remove(key).filter(|v| !v.is_null()) {
            chat.insert(key.into(), v);
        }
    }
    for key in DROPPED {
        req.remove(*key);
    }
    // Vendor extras, `service_tier`, `prompt_cache_key`, ...; the translated stream ends
    // with `response.completed` and its usage.
    super::carry_rest(&mut chat, req)?;
    Ok(Translated {
        chat: Bytes::from(Value::Object(chat).to_string()),
        echo,
        stateful,
    })
}

fn input_items(items: Vec<Value>, messages: &mut Vec<Value>) -> Result<(), GatewayError> {
    for (i, item) in items.into_iter().enumerate() {
        let at = |k: &str| format!("input[{i}]{k}");
        let kind = item["type"].as_str().unwrap_or("message");
        match kind {
            "message" => {
                let role = item["role"]
                    .as_str()
                    .ok_or_else(|| bad(at(".role"), "missing or not a string"))?;
                let role = if role == "developer" { "system" } else { role };
                let content = match &item["content"] {
                    Value::String(s) => Value::String(s.clone()),
                    Value::Array(parts) => content_parts(parts, role, &at)?,
                    _ => {
                        return Err(bad(
                            at(".content"),
                            "expected a string or an array of parts",
                        ));
                    }
                };
                messages.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let call = json!({
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                });
                // Consecutive calls are one assistant turn with several tool calls.
                if let Some(last) = messages.last_mut()
                    && last["role"] == "assistant"
                    && let Some(calls) = last.get_mut("tool_calls").and_then(Value::as_array_mut)
                {
                    calls.push(call);
                    continue;
                }
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            }
            "function_call_output" => {
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                messages.push(
                    json!({"role": "tool", "tool_call_id": item["call_id"], "content": output}),
                );
            }
            // Reasoning summaries from an earlier answer carry nothing a chat model reads.
            "reasoning" => {}
            other => {
                return Err(bad(
                    at(".type"),
                    format!(
                        "input items of type \"{other}\" are not supported (message, function_call and function_call_output are)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn content_parts(
    parts: &[Value],
    role: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<Value, GatewayError> {
    let mut out = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        match p["type"].as_str() {
            Some("input_text" | "output_text" | "text") => {
                out.push(json!({"type": "text", "text": p["text"]}));
            }
            Some("refusal") => out.push(json!({"type": "text", "text": p["refusal"]})),
            Some("input_image") => {
                let url = p["image_url"].as_str().ok_or_else(|| {
                    bad(at(&format!(".content[{j}].image_url")), "expected a URL")
                })?;
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail").filter(|d| !d.is_null()) {
                    image["detail"] = d.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            other => {
                return Err(bad(
                    at(&format!(".content[{j}].type")),
                    format!("content parts of type {other:?} are not supported"),
                ));
            }
        }
    }
    // Assistant turns in chat/completions are text, not parts.
    if role == "assistant" {
        let text: String = out.iter().filter_map(|p| p["text"].as_str()).collect();
        return Ok(Value::String(text));
    }
    Ok(Value::Array(out))
}

fn translate_tools(tools: Value) -> Result<Value, GatewayError> {
    let Value::Array(tools) = tools else {
        return Err(GatewayError::InvalidParam {
            param: "tools",
            expected: "an array of tools",
        });
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        if t["type"] != "function" {
            return Err(bad(
                format!("tools[{i}].type"),
                format!(
                    "only function tools can be served through chat/completions, not {}",
                    t["type"]
                ),
            ));
        }
        let mut f = Map::new();
        for k in ["name", "description", "parameters", "strict"] {
            if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                f.insert(k.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Value::Array(out))
}

fn translate_tool_choice(tc: Value) -> Result<Value, GatewayError> {
    match &tc {
        Value::String(_) => Ok(tc),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Ok(json!({"type": "function", "function": {"name": o.get("name")}}))
        }
        _ => Err(bad(
            "tool_choice",
            "expected \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt + u.completion,
    })
}

/// The Response object around `output`.
fn response(id: &str, created: u64, model: &str, status: &str, echo: &Echo) -> Map<String, Value> {
    let f = &echo.fields;
    let get = |k: &str, d: Value| f.get(k).cloned().filter(|v| !v.is_null()).unwrap_or(d);
    let mut r = Map::new();
    r.insert("id".into(), json!(id));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(created));
    r.insert("status".into(), json!(status));
    r.insert("error".into(), Value::Null);
    r.insert("incomplete_details".into(), Value::Null);
    r.insert("instructions".into(), get("instructions", Value::Null));
    r.insert(
        "max_output_tokens".into(),
        get("max_output_tokens", Value::Null),
    );
    r.insert("model".into(), json!(model));
    r.insert("output".into(), json!([]));
    r.insert(
        "parallel_tool_calls".into(),
        get("parallel_tool_calls", json!(true)),
    );
    r.insert("previous_response_id".into(), Value::Null);
    r.insert("store".into(), json!(false));
    r.insert("temperature".into(), get("temperature", json!(1.0)));
    r.insert(
        "text".into(),
        get("text", json!({"format": {"type": "text"}})),
    );
    r.insert("tool_choice".into(), get("tool_choice", json!("auto")));
    r.insert("tools".into(), get("tools", json!([])));
    r.insert("top_p".into(), get("top_p", json!(1.0)));
    r.insert("truncation".into(), json!("disabled"));
    r.insert("usage".into(), Value::Null);
    r.insert("user".into(), get("user", Value::Null));
    r.insert("metadata".into(), get("metadata", json!({})));
    r
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id, "type": "message", "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": format!("fc_{call_id}"), "type": "function_call", "status": status,
        "call_id": call_id, "name": name, "arguments": arguments,
    })
}

/// Finish reasons that mean the answer was cut short.
fn incomplete_reason(finish: Option<&str>) -> Option<&'static str> {
    match finish {
        Some("length") => Some("max_output_tokens"),
        Some("content_filter") => Some("content_filter"),
        _ => None,
    }
}

/// A complete chat/completions answer as a Response.
pub fn answer_from_chat(chat: &Value, echo: &Echo) -> Value {
    let id = id_from("resp_", chat["id"].as_str());
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let model = chat["model"]
        .as_str()
        .or_else(|| echo.fields.get("model").and_then(Value::as_str))
        .unwrap_or("");
    let finish = choice["finish_reason"].as_str();
    let incomplete = incomplete_reason(finish);
    let status = if incomplete.is_some() {
        "incomplete"
    } else {
        "completed"
    };
    let mut r = response(
        &id,
        chat["created"].as_u64().unwrap_or_else(now_secs),
        model,
        status,
        echo,
    );
    let mut output = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(
            &format!("msg_{}", &id[5..]),
            text,
            "completed",
        ));
    }
    if let Some(calls) = message["tool_calls"].as_array() {
        for c in calls {
            output.push(call_item(
                c["id"].as_str().unwrap_or(""),
                c["function"]["name"].as_str().unwrap_or(""),
                c["function"]["arguments"].as_str().unwrap_or(""),
                "completed",
            ));
        }
    }
    r.insert("output".into(), Value::Array(output));
    if let Some(reason) = incomplete {
        r.insert("incomplete_details".into(), json!({"reason": reason}));
    }
    if let Some(u) = Usage::read(chat) {
        r.insert("usage".into(), usage_json(u));
    }
    Value::Object(r)
}

/// One output item being streamed.
struct Item {
    output_index: usize,
    kind: ItemKind,
}

enum ItemKind {
    Text {
        id: String,
        text: String,
    },
    Call {
        call_id: String,
        name: String,
        arguments: String,
        chat_index: u64,
    },
}

/// Chat chunks in, the Responses event sequence out: `response.created`,
/// `response.in_progress`, per item `response.output_item.added` (and for text
/// `response.content_part.added`), the deltas, the `.done` events, `response.completed` (or
/// `response.incomplete`) with the usage.
pub struct Stream {
    echo: Echo,
    seq: u64,
    id: String,
    model: String,
    created: u64,
    started: bool,
    items: Vec<Item>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Stream {
    pub fn new(echo: Echo) -> Self {
        Stream {
            echo,
            seq: 0,
            id: String::new(),
            model: String::new(),
            created: now_secs(),
            started: false,
            items: Vec::new(),
            finish_reason: None,
            usage: None,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        event(out, name, &data);
    }

    fn start(&mut self, c: &Chunk, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = id_from("resp_", c.id.as_deref());
        self.model = c
            .model
            .clone()
            .or_else(|| {
                self.echo
                    .fields
                    .get("model")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let r = Value::Object(response(
            &self.id,
            self.created,
            &self.model,
            "in_progress",
            &self.echo,
        ));
        self.emit(out, "response.created", json!({"response": r.clone()}));
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn item_json(&self, item: &Item, status: &str) -> Value {
        match &item.kind {
            ItemKind::Text { id, text } => message_item(id, text, status),
            ItemKind::Call {
                call_id,
                name,
                arguments,
                ..
            } => call_item(call_id, name, arguments, status),
        }
    }
}

impl StreamTranslator for Stream {
    fn chunk(&mut self, c: Chunk, out: &mut Vec<u8>) {
        self.start(&c, out);
        if let Some(text) = &c.content {
            let pos = self
                .items
                .iter()
                .position(|i| matches!(i.kind, ItemKind::Text { .. }));
            let pos = match pos {
                Some(p) => p,
                None => {
                    let id = format!("msg_{}", &self.id[5..]);
                    let item = Item {
                        output_index: self.items.len(),
                        kind: ItemKind::Text {
                            id: id.clone(),
                            text: String::new(),
                        },
                    };
                    let added = json!({"output_index": item.output_index, "item": {
                        "id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}});
                    let oi = item.output_index;
                    self.items.push(item);
                    self.emit(out, "response.output_item.added", added);
                    self.emit(
                        out,
                        "response.content_part.added",
                        json!({
                        "item_id": id, "output_index": oi, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}}),
                    );
                    self.items.len() - 1
                }
            };
            let (oi, id) = {
                let item = &mut self.items[pos];
                let ItemKind::Text { id, text: acc } = &mut item.kind else {
                    return;
                };
                acc.push_str(text);
                (item.output_index, id.clone())
            };
            self.emit(out, "response.output_text.delta", json!({
                "item_id": id, "output_index": oi, "content_index": 0, "delta": text, "logprobs": []}));
        }
        for t in c.tools {
            let pos = self.items.iter().position(
                |i| matches!(&i.kind, ItemKind::Call { chat_index, .. } if *chat_index == t.index),
            );
            let pos = match pos {
                Some(p) => p,
                None => {
                    let call_id = t.id.clone().unwrap_or_else(|| format!("call_{}", t.index));
                    let item = Item {
                        output_index: self.items.len(),
                        kind: ItemKind::Call {
                            call_id,
                            name: t.name.clone().unwrap_or_default(),
                            arguments: String::new(),
                            chat_index: t.index,
                        },
                    };
                    let added = json!({"output_index": item.output_index,
                        "item": self.item_json(&item, "in_progress")});
                    self.items.push(item);
                    self.emit(out, "response.output_item.added", added);
                    self.items.len() - 1
                }
            };
            if let Some(args) = t.arguments.filter(|a| !a.is_empty()) {
                let (oi, item_id) = {
                    let item = &mut self.items[pos];
                    let ItemKind::Call {
                        call_id, arguments, ..
                    } = &mut item.kind
                    else {
                        continue;
                    };
                    arguments.push_str(&args);
                    (item.output_index, format!("fc_{call_id}"))
                };
                self.emit(
                    out,
                    "response.function_call_arguments.delta",
                    json!({
                    "item_id": item_id, "output_index": oi, "delta": args}),
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
        self.start(&Chunk::default(), out);
        self.emit(
            out,
            "error",
            json!({
            "code": error["code"], "message": error["message"], "param": error["param"],
            "error": error}),
        );
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(&Chunk::default(), out);
        let items = std::mem::take(&mut self.items);
        let mut output = Vec::with_capacity(items.len());
        for item in &items {
            let oi = item.output_index;
            match &item.kind {
                ItemKind::Text { id, text } => {
                    self.emit(out, "response.output_text.done", json!({
                        "item_id": id, "output_index": oi, "content_index": 0, "text": text, "logprobs": []}));
                    self.emit(
                        out,
                        "response.content_part.done",
                        json!({
                        "item_id": id, "output_index": oi, "content_index": 0,
                        "part": {"type": "output_text", "text": text, "annotations": []}}),
                    );
                }
                ItemKind::Call {
                    call_id,
                    name,
                    arguments,
                    ..
                } => {
                    self.emit(
                        out,
                        "response.function_call_arguments.done",
                        json!({
                        "item_id": format!("fc_{call_id}"), "output_index": oi,
                        "name": name, "arguments": arguments}),
                    );
                }
            }
            let done = self.item_json(item, "completed");
            output.push(done.clone());
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": oi, "item": done}),
            );
        }
        let incomplete = incomplete_reason(self.finish_reason.as_deref());
        let status = if incomplete.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        let mut r = response(&self.id, self.created, &self.model, status, &self.echo);
        r.insert("output".into(), Value::Array(output));
        if let Some(reason) = incomplete {
            r.insert("incomplete_details".into(), json!({"reason": reason}));
        }
        if let Some(u) = self.usage {
            r.insert("usage".into(), usage_json(u));
        }
        let name = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, name, json!({"response": Value::Object(r)}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(v: Value) -> Result<Value, GatewayError> {
        let Value::Object(o) = v else { unreachable!() };
        let t = request_to_chat(o)?;
        match t.stateful {
            Some(refusal) => Err(refusal),
            None => Ok(serde_json::from_slice(&t.chat).unwrap()),
        }
    }

    #[test]
    fn input_items_become_chat_messages() {
        let chat = translate(json!({
            "model": "m", "instructions": "be brief", "max_output_tokens": 20,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "stream": true,
        }))
        .unwrap();
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(chat["messages"][1]["content"][0]["text"], "weather?");
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"]["name"],
            "w"
        );
        assert_eq!(
            chat["messages"][3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
        );
        assert_eq!(chat["tools"][0]["function"]["name"], "w");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "s");
        assert_eq!(chat["max_tokens"], 20);
        assert_eq!(chat["stream_options"]["include_usage"], true);
    }

    #[test]
    fn stateful_members_are_refused_by_name() {
        let e = translate(json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}))
            .unwrap_err();
        assert!(e.to_string().contains("previous_response_id"), "{e}");
        let e = translate(json!({"model": "m", "input": "hi", "store": true})).unwrap_err();
        assert!(e.to_string().contains("store"), "{e}");
        assert!(translate(json!({"model": "m", "input": "hi", "store": false})).is_ok());
        let e = translate(json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}))
            .unwrap_err();
        assert!(e.to_string().contains("tools[0].type"), "{e}");
    }
}
