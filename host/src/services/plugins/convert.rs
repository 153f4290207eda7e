//! Between the wire and the WIT types: a client request becomes a typed
//! [`types::Request`] (what policies read), an adapted request becomes JSON again, and an
//! upstream answer becomes a [`types::Response`].
//!
//! Nothing the WIT does not type is lost: every other top-level member, every other member
//! of a message or tool, and every unknown content part travels as raw JSON and is written
//! back verbatim. What is typed is re-encoded (a float may be spelled differently); that only
//! happens when a plugin actually rewrote the request.

use serde_json::Value;
use serde_json::value::RawValue;

use super::bindings::types::{
    ContentPart, Endpoint as WEndpoint, JsonSchema, Message, Request, Response, ResponseFormat,
    Role, Sampling, Tool, ToolCall,
};
use super::exec::CallError;
use crate::base::Endpoint;
use crate::base::openai::{RequestBody, write_json_string};

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
    let mut prompt = None;
    let extra = object_text(body.members().filter(|&(k, raw)| {
        if k == prompt_key && endpoint != Endpoint::ChatCompletions {
            // A single string is typed; lists (of strings or tokens) stay raw.
            match serde_json::from_str::<String>(raw) {
                Ok(s) => {
                    prompt = Some(s);
                    false
                }
                Err(_) => true,
            }
        } else {
            !TYPED.contains(&k)
        }
    }));
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
    let tools = body
        .raw("tools")
        .and_then(|t| serde_json::from_str::<Vec<&RawValue>>(t).ok())
        .map(|ts| ts.iter().filter_map(|t| tool(t.get())).collect())
        .unwrap_or_default();
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

/// The text of a JSON object with these members (keys plain, values raw JSON).
fn object_text<'k>(members: impl Iterator<Item = (&'k str, &'k str)>) -> String {
    let mut out = Vec::new();
    let mut o = Obj::open(&mut out);
    for (k, v) in members {
        o.member(k, v);
    }
    o.close();
    // Every piece written is a `str` (keys escaped as JSON strings), so this is UTF-8.
    String::from_utf8(out).unwrap_or_default()
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

impl<'a> Members<'a> {
    /// The value of member `k`; a repeated member counts once, with its last value, as in
    /// a `serde_json::Value`.
    fn get(&self, k: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(n, _)| n == k).map(|(_, v)| *v)
    }

    /// The members not in `typed`, in order, a repeated one once with its last value. An
    /// empty string in `typed` is an unused slot, not the key `""`.
    fn untyped<'s>(
        &'s self,
        typed: &'s [&str],
    ) -> impl Iterator<Item = (&'s str, &'a RawValue)> + 's {
        let all = &self.0;
        all.iter()
            .enumerate()
            .filter(move |(i, (k, _))| {
                !typed.iter().any(|t| !t.is_empty() && *t == k.as_ref())
                    && !all[i + 1..].iter().any(|(n, _)| n == k)
            })
            .map(|(_, (k, v))| (k.as_ref(), *v))
    }

    /// [`Members::untyped`] as a JSON object's text (what `extra` holds).
    fn untyped_text(&self, typed: &[&str]) -> String {
        object_text(self.untyped(typed).map(|(k, v)| (k, v.get())))
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
    let members = serde_json::from_str::<Members<'_>>(text).unwrap_or(Members(Vec::new()));
    let find = |k: &str| members.get(k);
    let string = |k: &str| raw_str(find(k));
    let content = match (string("content"), raw_list(find("content"))) {
        (Some(text), _) => vec![ContentPart::Text(text)],
        (None, Some(parts)) => parts.iter().map(part).collect(),
        (None, None) => Vec::new(),
    };
    let tool_calls = raw_list(find("tool_calls"))
        .map(|calls| calls.iter().map(tool_call).collect())
        .unwrap_or_default();
    let extra = members.untyped_text(MESSAGE_TYPED);
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

/// A tool (`{"type":"function","function":{...}}`) read member by member: its parameters
/// and its function's other members raw, verbatim and in order. `None` when it has no
/// function object or no name.
fn tool(text: &str) -> Option<Tool> {
    let outer = serde_json::from_str::<Members<'_>>(text).ok()?;
    let func = serde_json::from_str::<Members<'_>>(outer.get("function")?.get()).ok()?;
    Some(Tool {
        name: raw_str(func.get("name"))?,
        description: raw_str(func.get("description")),
        parameters: func.get("parameters").map(|p| p.get().to_string()),
        extra: func.untyped_text(TOOL_TYPED),
    })
}

const TOOL_TYPED: &[&str] = &["name", "description", "parameters"];

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

/// At most the first 80 bytes of `s` (for error messages).
fn clip(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The JSON body of a request a plugin returned from `adapt`.
pub fn request_json(req: &Request, endpoint: Endpoint) -> Result<Vec<u8>, CallError> {
    // Written straight into one buffer: typed members first, in a fixed order, then `extra`
    // in its own order. (Building it as a map of strings first cost ~4 µs a request in a
    // profile of the gateway with the first-party plugins: an allocation per member.)
    let mut out = Vec::with_capacity(256 + req.extra.len() + text_len(req));
    let mut o = Obj::open(&mut out);
    let mut typed: Vec<&'static str> = Vec::with_capacity(16);
    let mut key = |o: &mut Obj<'_>, k: &'static str| {
        typed.push(k);
        o.key(k);
    };
    key(&mut o, "model");
    write_json_string(o.out, &req.model);
    if endpoint == Endpoint::ChatCompletions {
        key(&mut o, "messages");
        o.out.push(b'[');
        for (i, m) in req.messages.iter().enumerate() {
            if i > 0 {
                o.out.push(b',');
            }
            message_json(o.out, m, i)?;
        }
        o.out.push(b']');
    } else if let Some(p) = &req.prompt {
        key(&mut o, payload_key(endpoint));
        write_json_string(o.out, p);
    }
    if req.stream {
        key(&mut o, "stream");
        o.out.extend_from_slice(b"true");
    }
    if !req.tools.is_empty() {
        key(&mut o, "tools");
        o.out.push(b'[');
        for (i, t) in req.tools.iter().enumerate() {
            if i > 0 {
                o.out.push(b',');
            }
            o.out
                .extend_from_slice(br#"{"type":"function","function":"#);
            let mut f = Obj::open(o.out);
            // The members written here, which `extra` may not repeat (like `message_json`).
            let mut written = ["name", "", ""];
            f.key("name");
            write_json_string(f.out, &t.name);
            if let Some(d) = &t.description {
                written[1] = "description";
                f.key("description");
                write_json_string(f.out, d);
            }
            if let Some(p) = &t.parameters {
                let p = checked(|| format!("tools[{i}].parameters"), p)?;
                written[2] = "parameters";
                f.key("parameters");
                f.out.extend_from_slice(p.as_bytes());
            }
            put_extra(&mut f, || format!("tools[{i}].extra"), &t.extra, &written)?;
            f.close();
            o.out.push(b'}');
        }
        o.out.push(b']');
    }
    if let Some(tc) = &req.tool_choice {
        let tc = checked(|| "tool_choice".into(), tc)?;
        key(&mut o, "tool_choice");
        o.out.extend_from_slice(tc.as_bytes());
    }
    let s = &req.sampling;
    for (k, v) in [
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if let Some(n) = v.and_then(serde_json::Number::from_f64) {
            key(&mut o, k);
            o.out.extend_from_slice(n.to_string().as_bytes());
        }
    }
    let int = |out: &mut Vec<u8>, v: &dyn std::fmt::Display| {
        use std::io::Write as _;
        let _ = write!(out, "{v}");
    };
    if let Some(m) = s.max_tokens {
        key(&mut o, "max_tokens");
        int(o.out, &m);
    }
    if !s.stop.is_empty() {
        key(&mut o, "stop");
        let _ = serde_json::to_writer(&mut *o.out, &s.stop);
    }
    if let Some(seed) = s.seed {
        key(&mut o, "seed");
        int(o.out, &seed);
    }
    if let Some(n) = s.n {
        key(&mut o, "n");
        int(o.out, &n);
    }
    match &req.response_format {
        None => {}
        Some(ResponseFormat::Text) => {
            key(&mut o, "response_format");
            o.out.extend_from_slice(br#"{"type":"text"}"#);
        }
        Some(ResponseFormat::JsonObject) => {
            key(&mut o, "response_format");
            o.out.extend_from_slice(br#"{"type":"json_object"}"#);
        }
        Some(ResponseFormat::JsonSchema(js)) => {
            let schema = checked(|| "response_format.json_schema.schema".into(), &js.schema)?;
            key(&mut o, "response_format");
            o.out
                .extend_from_slice(br#"{"type":"json_schema","json_schema":{"name":"#);
            write_json_string(o.out, &js.name);
            o.out.extend_from_slice(br#","schema":"#);
            o.out.extend_from_slice(schema.as_bytes());
            o.out.extend_from_slice(if js.strict {
                br#","strict":true}}"#.as_slice()
            } else {
                br#","strict":false}}"#.as_slice()
            });
        }
    }
    // A typed member wins over a stray copy in `extra`.
    put_extra(&mut o, || "request.extra".into(), &req.extra, &typed)?;
    o.close();
    Ok(out)
}

/// Roughly how many bytes the request's texts take (the buffer's first size).
fn text_len(req: &Request) -> usize {
    let parts: usize = req
        .messages
        .iter()
        .flat_map(|m| m.content.iter())
        .map(|p| match p {
            ContentPart::Text(t) | ContentPart::ImageUrl(t) | ContentPart::Other(t) => t.len(),
        })
        .sum();
    parts + req.messages.len() * 32
}

/// A JSON object being written member by member.
struct Obj<'b> {
    out: &'b mut Vec<u8>,
    empty: bool,
}

impl<'b> Obj<'b> {
    fn open(out: &'b mut Vec<u8>) -> Obj<'b> {
        out.push(b'{');
        Obj { out, empty: true }
    }

    /// Start the member `k`; its value is written to `self.out` next.
    fn key(&mut self, k: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_json_string(self.out, k);
        self.out.push(b':');
    }

    /// The member `k` with the raw JSON value `raw`.
    fn member(&mut self, k: &str, raw: &str) {
        self.key(k);
        self.out.extend_from_slice(raw.as_bytes());
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// `text` if it is one valid JSON value (surrounding whitespace dropped); `what` names it
/// in the error.
fn checked(what: impl FnOnce() -> String, text: &str) -> Result<&str, CallError> {
    serde_json::from_str::<&RawValue>(text)
        .map(RawValue::get)
        .map_err(|e| {
            CallError::bad_return(format!(
                "{} is not valid JSON ({e}): {}",
                what(),
                clip(text)
            ))
        })
}

/// The members of `extra` (a raw JSON object from a plugin) into `o`, verbatim and in their
/// order, less the keys `o` has already (`typed`) and all but the last of a repeated key.
fn put_extra(
    o: &mut Obj<'_>,
    what: impl FnOnce() -> String,
    extra: &str,
    typed: &[&str],
) -> Result<(), CallError> {
    if extra == "{}" {
        return Ok(());
    }
    let members = serde_json::from_str::<Members<'_>>(extra).map_err(|e| {
        CallError::bad_return(format!(
            "{} is not a JSON object ({e}): {}",
            what(),
            clip(extra)
        ))
    })?;
    for (k, v) in members.untyped(typed) {
        o.member(k, v.get());
    }
    Ok(())
}

/// One message of an adapted request: typed members, then `extra`'s.
fn message_json(out: &mut Vec<u8>, m: &Message, i: usize) -> Result<(), CallError> {
    let mut o = Obj::open(out);
    let mut typed = ["role", "content", "", "", ""];
    o.key("role");
    write_json_string(o.out, role_name(m.role));
    o.key("content");
    match m.content.as_slice() {
        [] => o.out.extend_from_slice(b"null"),
        [ContentPart::Text(t)] => write_json_string(o.out, t),
        parts => {
            o.out.push(b'[');
            for (j, p) in parts.iter().enumerate() {
                if j > 0 {
                    o.out.push(b',');
                }
                match p {
                    ContentPart::Text(t) => {
                        o.out.extend_from_slice(br#"{"type":"text","text":"#);
                        write_json_string(o.out, t);
                        o.out.push(b'}');
                    }
                    ContentPart::ImageUrl(u) => {
                        o.out
                            .extend_from_slice(br#"{"type":"image_url","image_url":{"url":"#);
                        write_json_string(o.out, u);
                        o.out.extend_from_slice(b"}}");
                    }
                    ContentPart::Other(raw_part) => {
                        let part = checked(|| format!("messages[{i}].content part"), raw_part)?;
                        o.out.extend_from_slice(part.as_bytes());
                    }
                }
            }
            o.out.push(b']');
        }
    }
    if let Some(n) = &m.name {
        typed[2] = "name";
        o.key("name");
        write_json_string(o.out, n);
    }
    if !m.tool_calls.is_empty() {
        typed[3] = "tool_calls";
        o.key("tool_calls");
        o.out.push(b'[');
        for (j, c) in m.tool_calls.iter().enumerate() {
            if j > 0 {
                o.out.push(b',');
            }
            o.out.extend_from_slice(br#"{"id":"#);
            write_json_string(o.out, &c.id);
            o.out
                .extend_from_slice(br#","type":"function","function":{"name":"#);
            write_json_string(o.out, &c.name);
            o.out.extend_from_slice(br#","arguments":"#);
            write_json_string(o.out, &c.arguments);
            o.out.extend_from_slice(b"}}");
        }
        o.out.push(b']');
    }
    if let Some(id) = &m.tool_call_id {
        typed[4] = "tool_call_id";
        o.key("tool_call_id");
        write_json_string(o.out, id);
    }
    put_extra(&mut o, || format!("messages[{i}].extra"), &m.extra, &typed)?;
    o.close();
    Ok(())
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
        // Written back, the message has the client's members again, verbatim and in order
        // after the typed ones.
        let mut back = Vec::new();
        message_json(&mut back, &ms[0], 0).unwrap();
        assert_eq!(
            String::from_utf8(back).unwrap(),
            r#"{"role":"system","content":"be é brief","z_note":{"b":1,"a":2.50},"x":1e2}"#
        );
        let mut back = Vec::new();
        message_json(&mut back, &ms[2], 2).unwrap();
        let v: Value = serde_json::from_slice(&back).unwrap();
        assert_eq!(v["dup"], 2);
        assert_eq!(v["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(v["content"], Value::Null);
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

        let full = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"tool_choice":"auto","response_format":{"type":"json_schema","json_schema":{"name":"p","schema":{}}}}"#;
        let body = RequestBody::parse(Bytes::from(full), Endpoint::ChatCompletions).unwrap();
        let good = request(&body, Endpoint::ChatCompletions);
        let mut bad = [good.clone(), good.clone(), good.clone(), good.clone(), good];
        bad[0].tools[0].parameters = Some("{".into());
        bad[1].tool_choice = Some("auto".into());
        bad[2].response_format = Some(ResponseFormat::JsonSchema(JsonSchema {
            name: "p".into(),
            schema: "[1,".into(),
            strict: false,
        }));
        bad[3].messages[0].extra = "[]".into();
        bad[4].messages[0].content = vec![ContentPart::Other("{\"type\":".into())];
        for (req, what) in bad.iter().zip([
            "tools[0].parameters",
            "tool_choice",
            "response_format.json_schema.schema",
            "messages[0].extra",
            "messages[0].content part",
        ]) {
            let e = request_json(req, Endpoint::ChatCompletions).unwrap_err();
            assert!(e.detail.contains(what), "{what}: {e:?}");
        }
    }

    /// Every typed member and raw member a plugin can hand back is written so that the
    /// request reads the same as the client's; `extra` goes verbatim and in order, less a
    /// copy of a typed member.
    #[test]
    fn a_full_request_round_trips_through_its_typed_form() {
        let text = r#"{"model":"m","messages":[{"role":"developer","content":"rules","x":[2.50]},{"role":"user","content":[{"type":"text","text":"q \"x\""},{"type":"input_audio","input_audio":{"data":"AA=="}}],"name":"ana"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},{"role":"tool","content":"42","tool_call_id":"c1"}],"stream":true,"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object","properties":{"a":{"type":"integer","maximum":2.50}}},"strict":true}}],"tool_choice":{"type":"function","function":{"name":"f"}},"temperature":0.25,"top_p":0.5,"presence_penalty":-1.5,"frequency_penalty":1.5,"max_tokens":64,"stop":["\n","END"],"seed":9007199254740993,"n":2,"response_format":{"type":"json_schema","json_schema":{"name":"p","schema":{"type":"object","required":["a"]},"strict":true}},"user":"u1","metadata":{"k":1.50}}"#;
        let body = RequestBody::parse(Bytes::from(text), Endpoint::ChatCompletions).unwrap();
        let mut req = request(&body, Endpoint::ChatCompletions);
        // A plugin that left a stray copy of a typed member in `extra`: the typed one wins.
        req.extra = r#"{"user":"u1","model":"stray","metadata":{"k":1.50}}"#.into();
        let back = request_json(&req, Endpoint::ChatCompletions).unwrap();
        let v: Value = serde_json::from_slice(&back).unwrap();
        let orig: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v, orig);
        let back = String::from_utf8(back).unwrap();
        assert!(
            back.ends_with(r#""user":"u1","metadata":{"k":1.50}}"#),
            "{back}"
        );
        assert!(back.contains(r#""x":[2.50]"#), "{back}");
        // A tool's parameters and other members are read and written verbatim, in order.
        assert_eq!(
            req.tools[0].parameters.as_deref(),
            Some(r#"{"type":"object","properties":{"a":{"type":"integer","maximum":2.50}}}"#)
        );
        assert_eq!(req.tools[0].extra, r#"{"strict":true}"#);
        assert!(
            back.contains(r#"{"name":"f","description":"d","parameters":{"type":"object","properties":{"a":{"type":"integer","maximum":2.50}}},"strict":true}"#),
            "{back}"
        );
        // It parses as a client's request would.
        RequestBody::parse(Bytes::from(back), Endpoint::ChatCompletions).unwrap();
    }
}
