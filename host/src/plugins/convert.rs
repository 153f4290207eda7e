//! Between the wire and the WIT types: a client request becomes a typed
//! [`types::Request`] (what policies read), an adapted request becomes JSON again, and an
//! upstream answer becomes a [`types::Response`].
//!
//! Nothing the WIT does not type is lost: every other top-level member, every other member
//! of a message or tool, and every unknown content part travels as raw JSON and is written
//! back verbatim. What is typed is re-encoded (a float may be spelled differently); that only
//! happens when a plugin actually rewrote the request.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::bindings::types::{
    ContentPart, Endpoint as WEndpoint, JsonSchema, Message, Request, Response, ResponseFormat,
    Role, Sampling, Tool, ToolCall,
};
use super::exec::CallError;
use crate::config::Endpoint;
use crate::openai::RequestBody;

/// Top-level members the WIT types; everything else goes to `extra`.
const TYPED: &[&str] = &[
    "model",
    "stream",
    "messages",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "response_format",
];

fn payload_key(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        Endpoint::Embeddings => "input",
    }
}

/// The typed view of a client request.
pub fn request(body: &RequestBody, endpoint: Endpoint) -> Request {
    let prompt_key = payload_key(endpoint);
    let mut extra = String::from("{");
    let mut prompt = None;
    for (k, raw) in body.members() {
        let typed = TYPED.contains(&k);
        if k == prompt_key && endpoint != Endpoint::ChatCompletions {
            // A single string is typed; lists (of strings or tokens) stay raw.
            if let Ok(s) = serde_json::from_str::<String>(raw) {
                prompt = Some(s);
                continue;
            }
        } else if typed {
            continue;
        }
        push_member(&mut extra, k, raw);
    }
    extra.push('}');
    let get = |k: &str| {
        body.raw(k)
            .and_then(|r| serde_json::from_str::<Value>(r).ok())
    };
    let f = |k: &str| get(k).and_then(|v| v.as_f64());
    let u = |k: &str| {
        get(k)
            .and_then(|v| v.as_u64())
            .map(|n| n.min(u32::MAX as u64) as u32)
    };
    let messages = body.raw("messages").map(messages).unwrap_or_default();
    let tools = match get("tools") {
        Some(Value::Array(ts)) => ts.iter().filter_map(tool).collect(),
        _ => Vec::new(),
    };
    let stop = match get("stop") {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    Request {
        endpoint: match endpoint {
            Endpoint::ChatCompletions => WEndpoint::ChatCompletions,
            Endpoint::Completions => WEndpoint::Completions,
            Endpoint::Embeddings => WEndpoint::Embeddings,
        },
        model: body.model.clone(),
        stream: body.stream,
        messages,
        prompt,
        tools,
        tool_choice: body.raw("tool_choice").map(str::to_string),
        sampling: Sampling {
            temperature: f("temperature"),
            top_p: f("top_p"),
            max_tokens: u("max_completion_tokens").or_else(|| u("max_tokens")),
            stop,
            seed: get("seed").and_then(|v| v.as_i64()),
            presence_penalty: f("presence_penalty"),
            frequency_penalty: f("frequency_penalty"),
            n: u("n"),
        },
        response_format: get("response_format").as_ref().and_then(response_format),
        extra,
    }
}

/// Append `"key":raw` to a JSON object being written (it starts with `{`).
fn push_member(object: &mut String, key: &str, raw: &str) {
    if object.len() > 1 {
        object.push(',');
    }
    object.push_str(&json_string(key));
    object.push(':');
    object.push_str(raw);
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn role(s: &str) -> Role {
    match s {
        "system" => Role::System,
        "developer" => Role::Developer,
        "assistant" => Role::Assistant,
        "tool" | "function" => Role::Tool,
        _ => Role::User,
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

const MESSAGE_TYPED: &[&str] = &["role", "content", "name", "tool_calls", "tool_call_id"];

/// A JSON object's members in their order, values raw (what `extra` copies verbatim).
struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Members<'a>, M::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    out.push((k, m.next_value::<&'de RawValue>()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The typed messages of a raw `messages` member (none when it is not a list). Each
/// message is read member by member; its other members go to `extra` verbatim, in their
/// order. A message that is not a JSON object reads as an empty user message.
fn messages(raw: &str) -> Vec<Message> {
    let Ok(list) = serde_json::from_str::<Vec<&RawValue>>(raw) else {
        return Vec::new();
    };
    list.iter().map(|m| message_raw(m.get())).collect()
}

fn message_raw(text: &str) -> Message {
    let members = serde_json::from_str::<Members<'_>>(text)
        .map(|m| m.0)
        .unwrap_or_default();
    // A repeated member: the last one counts, as in a `serde_json::Value`.
    let find = |k: &str| members.iter().rev().find(|(n, _)| n == k).map(|(_, v)| *v);
    let string = |k: &str| raw_str(find(k));
    let content = match (string("content"), raw_list(find("content"))) {
        (Some(text), _) => vec![ContentPart::Text(text)],
        (None, Some(parts)) => parts.iter().map(part).collect(),
        (None, None) => Vec::new(),
    };
    let tool_calls = raw_list(find("tool_calls"))
        .map(|calls| calls.iter().map(tool_call).collect())
        .unwrap_or_default();
    let mut extra = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        // A repeated untyped member once, with its last value.
        if MESSAGE_TYPED.contains(&k.as_ref()) || members[i + 1..].iter().any(|(n, _)| n == k) {
            continue;
        }
        push_member(&mut extra, k, v.get());
    }
    extra.push('}');
    Message {
        role: role(string("role").as_deref().unwrap_or("user")),
        content,
        name: string("name"),
        tool_calls,
        tool_call_id: string("tool_call_id"),
        extra,
    }
}

fn part(v: &Value) -> ContentPart {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => match v.get("text").and_then(Value::as_str) {
            Some(t) if v.as_object().is_some_and(|o| o.len() == 2) => {
                ContentPart::Text(t.to_string())
            }
            _ => ContentPart::Other(v.to_string()),
        },
        Some("image_url") => {
            let iu = &v["image_url"];
            match iu.get("url").and_then(Value::as_str) {
                Some(url) if iu.as_object().is_some_and(|o| o.len() == 1) => {
                    ContentPart::ImageUrl(url.to_string())
                }
                _ => ContentPart::Other(v.to_string()),
            }
        }
        _ => ContentPart::Other(v.to_string()),
    }
}

fn tool_call(v: &Value) -> ToolCall {
    ToolCall {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        name: v["function"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        arguments: match &v["function"]["arguments"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        },
    }
}

fn tool(v: &Value) -> Option<Tool> {
    let func = v.get("function")?.as_object()?;
    let extra: Map<String, Value> = func
        .iter()
        .filter(|(k, _)| !["name", "description", "parameters"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Tool {
        name: func.get("name")?.as_str()?.to_string(),
        description: func
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
        parameters: func.get("parameters").map(Value::to_string),
        extra: Value::Object(extra).to_string(),
    })
}

fn response_format(v: &Value) -> Option<ResponseFormat> {
    match v.get("type")?.as_str()? {
        "text" => Some(ResponseFormat::Text),
        "json_object" => Some(ResponseFormat::JsonObject),
        "json_schema" => {
            let js = &v["json_schema"];
            Some(ResponseFormat::JsonSchema(JsonSchema {
                name: js["name"].as_str().unwrap_or_default().to_string(),
                schema: if js["schema"].is_null() {
                    "{}".to_string()
                } else {
                    js["schema"].to_string()
                },
                strict: js["strict"].as_bool().unwrap_or(false),
            }))
        }
        _ => None,
    }
}

/// A JSON object from a plugin, as ordered raw members; an error when it is not one.
fn raw_object(what: &str, text: &str) -> Result<BTreeMap<String, Box<RawValue>>, CallError> {
    serde_json::from_str(text).map_err(|e| {
        CallError::bad_return(format!("{what} is not a JSON object ({e}): {}", clip(text)))
    })
}

fn raw_value(what: &str, text: &str) -> Result<Value, CallError> {
    serde_json::from_str(text).map_err(|e| {
        CallError::bad_return(format!("{what} is not valid JSON ({e}): {}", clip(text)))
    })
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The JSON body of a request a plugin returned from `adapt`.
pub fn request_json(req: &Request, endpoint: Endpoint) -> Result<Vec<u8>, CallError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| out.push((k.to_string(), v));
    put("model", json_string(&req.model));
    if endpoint == Endpoint::ChatCompletions {
        let mut ms = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.iter().enumerate() {
            ms.push(message_json(m, i)?);
        }
        put("messages", format!("[{}]", ms.join(",")));
    } else if let Some(p) = &req.prompt {
        put(payload_key(endpoint), json_string(p));
    }
    if req.stream {
        put("stream", "true".into());
    }
    if !req.tools.is_empty() {
        let mut ts = Vec::new();
        for (i, t) in req.tools.iter().enumerate() {
            let mut func = raw_object(&format!("tools[{i}].extra"), &t.extra)?;
            func.insert("name".into(), raw(&json_string(&t.name)));
            if let Some(d) = &t.description {
                func.insert("description".into(), raw(&json_string(d)));
            }
            if let Some(p) = &t.parameters {
                raw_value(&format!("tools[{i}].parameters"), p)?;
                func.insert("parameters".into(), raw(p));
            }
            ts.push(format!(
                "{{\"type\":\"function\",\"function\":{}}}",
                object_text(&func)
            ));
        }
        put("tools", format!("[{}]", ts.join(",")));
    }
    if let Some(tc) = &req.tool_choice {
        raw_value("tool_choice", tc)?;
        put("tool_choice", tc.clone());
    }
    let s = &req.sampling;
    let num = |v: f64| serde_json::Number::from_f64(v).map(|n| n.to_string());
    for (k, v) in [
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if let Some(n) = v.and_then(num) {
            put(k, n);
        }
    }
    if let Some(m) = s.max_tokens {
        put("max_tokens", m.to_string());
    }
    if !s.stop.is_empty() {
        put(
            "stop",
            serde_json::to_string(&s.stop).unwrap_or_else(|_| "[]".into()),
        );
    }
    if let Some(seed) = s.seed {
        put("seed", seed.to_string());
    }
    if let Some(n) = s.n {
        put("n", n.to_string());
    }
    match &req.response_format {
        None => {}
        Some(ResponseFormat::Text) => put("response_format", r#"{"type":"text"}"#.into()),
        Some(ResponseFormat::JsonObject) => {
            put("response_format", r#"{"type":"json_object"}"#.into())
        }
        Some(ResponseFormat::JsonSchema(js)) => {
            let schema = raw_value("response_format.json_schema.schema", &js.schema)?;
            let v = serde_json::json!({"type": "json_schema", "json_schema": {
                "name": js.name, "schema": schema, "strict": js.strict}});
            put("response_format", v.to_string());
        }
    }
    let extra = raw_object("request.extra", &req.extra)?;
    let mut body = String::from("{");
    for (k, v) in &out {
        push_member(&mut body, k, v);
    }
    for (k, v) in &extra {
        // A typed member wins over a stray copy in `extra`.
        if out.iter().any(|(o, _)| o == k) {
            continue;
        }
        push_member(&mut body, k, v.get());
    }
    body.push('}');
    Ok(body.into_bytes())
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).unwrap_or_default()
}

fn object_text(m: &BTreeMap<String, Box<RawValue>>) -> String {
    let mut s = String::from("{");
    for (k, v) in m {
        push_member(&mut s, k, v.get());
    }
    s.push('}');
    s
}

fn message_json(m: &Message, i: usize) -> Result<String, CallError> {
    let mut o = raw_object(&format!("messages[{i}].extra"), &m.extra)?;
    o.insert("role".into(), raw(&json_string(role_name(m.role))));
    let content = match m.content.as_slice() {
        [] => "null".to_string(),
        [ContentPart::Text(t)] => json_string(t),
        parts => {
            let mut ps = Vec::new();
            for p in parts {
                ps.push(match p {
                    ContentPart::Text(t) => {
                        serde_json::json!({"type": "text", "text": t}).to_string()
                    }
                    ContentPart::ImageUrl(u) => {
                        serde_json::json!({"type": "image_url", "image_url": {"url": u}})
                            .to_string()
                    }
                    ContentPart::Other(raw_part) => {
                        raw_value(&format!("messages[{i}].content part"), raw_part)?;
                        raw_part.clone()
                    }
                });
            }
            format!("[{}]", ps.join(","))
        }
    };
    o.insert("content".into(), raw(&content));
    if let Some(n) = &m.name {
        o.insert("name".into(), raw(&json_string(n)));
    }
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| serde_json::json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        o.insert("tool_calls".into(), raw(&Value::Array(calls).to_string()));
    }
    if let Some(id) = &m.tool_call_id {
        o.insert("tool_call_id".into(), raw(&json_string(id)));
    }
    Ok(object_text(&o))
}

/// The typed view of a complete upstream answer.
pub fn response(body: &[u8], backend: &str, model: &str) -> Response {
    let (content, finish_reason, tool_calls) =
        first_choice(body).unwrap_or_else(|| first_choice_slow(body));
    Response {
        backend: backend.to_string(),
        model: model.to_string(),
        content,
        finish_reason,
        tool_calls,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

type ChoiceParts = (Option<String>, Option<String>, Vec<ToolCall>);

/// Only what `response` reads of an answer. Every member is kept raw, so any JSON is
/// accepted where it is (a member of another type reads as absent, as in
/// `first_choice_slow`), and the rest of the answer is skipped, not built into a tree.
#[derive(serde::Deserialize)]
struct AnswerView<'a> {
    #[serde(borrow)]
    choices: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct AnswerMessageView<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
}

/// A raw member that is a JSON string, decoded; `None` for any other value.
fn raw_str(raw: Option<&RawValue>) -> Option<String> {
    let text = raw?.get();
    if !text.starts_with('"') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// A raw member that is a JSON list, as values; `None` for any other value.
fn raw_list(raw: Option<&RawValue>) -> Option<Vec<Value>> {
    let text = raw?.get();
    if !text.starts_with('[') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The first choice's content, finish reason and tool calls, reading only those members;
/// `None` when the answer is not shaped so (not an object, a duplicate member, ...), for
/// `first_choice_slow` to decide.
fn first_choice(body: &[u8]) -> Option<ChoiceParts> {
    let answer: AnswerView<'_> = serde_json::from_slice(body).ok()?;
    let Some(choices) = answer.choices else {
        return Some((None, None, Vec::new()));
    };
    let first = match serde_json::from_str::<Vec<&RawValue>>(choices.get()) {
        Ok(list) => list.first().copied(),
        Err(_) if !choices.get().starts_with('[') => None,
        Err(_) => return None,
    };
    let Some(first) = first else {
        return Some((None, None, Vec::new()));
    };
    if !first.get().starts_with('{') {
        return Some((None, None, Vec::new()));
    }
    let choice: ChoiceView<'_> = serde_json::from_str(first.get()).ok()?;
    let message = match choice.message {
        Some(m) if m.get().starts_with('{') => {
            Some(serde_json::from_str::<AnswerMessageView<'_>>(m.get()).ok()?)
        }
        _ => None,
    };
    let content =
        raw_str(message.as_ref().and_then(|m| m.content)).or_else(|| raw_str(choice.text));
    let tool_calls = raw_list(message.as_ref().and_then(|m| m.tool_calls))
        .map(|calls| calls.iter().map(tool_call).collect())
        .unwrap_or_default();
    Some((content, raw_str(choice.finish_reason), tool_calls))
}

/// The same read through a whole `Value` tree: any answer, however odd.
fn first_choice_slow(body: &[u8]) -> ChoiceParts {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let choice = &v["choices"][0];
    let content = choice["message"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .map(str::to_string);
    let tool_calls = match &choice["message"]["tool_calls"] {
        Value::Array(calls) => calls.iter().map(tool_call).collect(),
        _ => Vec::new(),
    };
    (
        content,
        choice["finish_reason"].as_str().map(str::to_string),
        tool_calls,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn typed_and_raw_members_round_trip() {
        let text = r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:x"}}],"x_msg":1}],"temperature":0.5,"response_format":{"type":"json_object"},"user":"u1","metadata":{"a":[1,2.50]}}"#;
        let body = RequestBody::parse(Bytes::from(text), Endpoint::ChatCompletions).unwrap();
        let req = request(&body, Endpoint::ChatCompletions);
        assert_eq!(req.messages.len(), 2);
        assert!(matches!(req.messages[0].role, Role::System));
        assert!(matches!(&req.messages[1].content[1], ContentPart::ImageUrl(u) if u == "data:x"));
        assert_eq!(req.sampling.temperature, Some(0.5));
        assert!(matches!(
            req.response_format,
            Some(ResponseFormat::JsonObject)
        ));
        assert_eq!(req.extra, r#"{"user":"u1","metadata":{"a":[1,2.50]}}"#);
        let back = request_json(&req, Endpoint::ChatCompletions).unwrap();
        let v: Value = serde_json::from_slice(&back).unwrap();
        let orig: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v, orig);
        // Raw members are copied byte for byte.
        assert!(
            String::from_utf8(back)
                .unwrap()
                .contains(r#""metadata":{"a":[1,2.50]}"#)
        );
    }

    #[test]
    fn a_message_keeps_its_other_members_verbatim_and_in_order() {
        let ms = messages(
            r#"[{"z_note":{"b":1,"a":2.50},"role":"system","content":"be \u00e9 brief","x":1e2},
                {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:x"}}],"name":"ana"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}],"dup":1,"dup":2},
                {"role":"tool","tool_call_id":"c1","content":"ok"},
                "not an object",
                {"content":7}]"#,
        );
        assert_eq!(ms.len(), 6);
        assert!(matches!(ms[0].role, Role::System));
        assert!(matches!(&ms[0].content[..], [ContentPart::Text(t)] if t == "be é brief"));
        // Untyped members as the client wrote them: order, spacing of numbers, nesting.
        assert_eq!(ms[0].extra, r#"{"z_note":{"b":1,"a":2.50},"x":1e2}"#);
        assert!(matches!(&ms[1].content[1], ContentPart::ImageUrl(u) if u == "data:x"));
        assert_eq!(ms[1].name.as_deref(), Some("ana"));
        assert_eq!(ms[1].extra, "{}");
        assert!(ms[2].content.is_empty());
        assert_eq!(ms[2].tool_calls[0].name, "f");
        // A repeated member counts once, with its last value, as a JSON object would.
        assert_eq!(ms[2].extra, r#"{"dup":2}"#);
        assert!(matches!(ms[3].role, Role::Tool));
        assert_eq!(ms[3].tool_call_id.as_deref(), Some("c1"));
        for odd in &ms[4..] {
            assert!(matches!(odd.role, Role::User));
            assert!(odd.content.is_empty());
        }
        assert!(messages(r#"{"not":"a list"}"#).is_empty());
        // Written back, the request has the client's members again.
        let back = message_json(&ms[0], 0).unwrap();
        let v: Value = serde_json::from_str(&back).unwrap();
        assert_eq!(v["z_note"]["a"], 2.5);
        assert_eq!(v["content"], "be é brief");
    }

    #[test]
    fn an_answer_reads_the_same_fast_or_through_a_tree() {
        let answers = [
            r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"caf\u00e9 \"ok\""},"finish_reason":"stop"}],"usage":{"total_tokens":3}}"#,
            r#"{"choices":[{"message":{"content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[{"text":"legacy completion","finish_reason":"length"},{"text":"second"}]}"#,
            r#"{"choices":[{"message":{"content":[{"type":"text","text":"parts"}]},"text":"fallback","finish_reason":7}]}"#,
            r#"{"choices":[{"message":"odd","finish_reason":"stop"}]}"#,
            r#"{"choices":[{"message":{"tool_calls":{"not":"a list"}}}]}"#,
            r#"{"choices":["not an object"]}"#,
            r#"{"choices":{"0":{}}}"#,
            r#"{"choices":[]}"#,
            r#"{"object":"no choices"}"#,
            r#"{"choices":[{"finish_reason":"stop","finish_reason":"length"}]}"#,
            r#"[1,2]"#,
            "not json",
            "",
        ];
        for a in answers {
            let slow = first_choice_slow(a.as_bytes());
            let fast =
                first_choice(a.as_bytes()).unwrap_or_else(|| first_choice_slow(a.as_bytes()));
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{a}");
        }
        let (content, reason, calls) = first_choice(answers[1].as_bytes()).unwrap();
        assert_eq!((content, reason.as_deref()), (None, Some("tool_calls")));
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("f", r#"{"a":1}"#)
        );
        let (content, _, _) = first_choice(answers[0].as_bytes()).unwrap();
        assert_eq!(content.as_deref(), Some("café \"ok\""));
    }

    #[test]
    fn garbage_from_a_plugin_is_a_bad_return() {
        let body = RequestBody::parse(
            Bytes::from(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#),
            Endpoint::ChatCompletions,
        )
        .unwrap();
        let mut req = request(&body, Endpoint::ChatCompletions);
        req.extra = "{not json".into();
        let e = request_json(&req, Endpoint::ChatCompletions).unwrap_err();
        assert!(e.detail.contains("request.extra"), "{e:?}");
    }
}
