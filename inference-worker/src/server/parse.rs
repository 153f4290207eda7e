//! A completion request's JSON, validated into what the engine needs, one concern per
//! function: the envelope (`model`, `n`), the prompt (chat messages through the template, or a
//! completion prompt), the length limits and stop strings, the sampling parameters, streaming,
//! and log-probabilities. A bad value is a 400 that names its parameter; checks run in that
//! order, so the first problem in it is the one reported.

use std::sync::Arc;

use serde_json::Value;

use super::{ApiError, AppState};
use crate::grammar::Grammar;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::tools::{Choice, Tool, ToolRequest};

/// A validated request.
pub(super) struct Parsed {
    /// The model the caller named (the worker serves its one model whatever it is).
    pub model: Option<String>,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Top alternatives per token, when log-probabilities were asked for.
    pub logprobs: Option<usize>,
    /// The offered tools, when the answer may call them (`tool_choice` is not `none`).
    pub tools: Option<ToolRequest>,
    /// The grammar the answer must follow (`response_format`, or a forced tool call).
    pub constraint: Option<Arc<Grammar>>,
}

/// Validates a `/v1/chat/completions` (`chat`) or `/v1/completions` body.
pub(super) fn parse(body: &[u8], chat: bool, st: &AppState) -> Result<Parsed, ApiError> {
    let v = envelope(body)?;
    let tok = &st.engine.tokenizer;
    let tools = if chat { tools(&v)? } else { None };
    let prompt = if chat {
        chat_prompt(&v, st)?
    } else {
        completion_prompt(&v, tok)?
    };
    let mut constraint = response_format(&v)?;
    if let Some(t) = &tools
        && let Some(forced) = t.forced()
    {
        let g = st.template.tools.call_grammar(&forced).map_err(|(i, e)| {
            let at = t
                .tools
                .iter()
                .position(|x| x.name == forced[i].name)
                .unwrap_or(i);
            ApiError::bad(
                &format!("tools[{at}].function.parameters"),
                format!("tool `{}`: {e}", forced[i].name),
            )
        })?;
        constraint = Some(Arc::new(g));
    }
    let max_tokens = max_tokens(&v)?;
    let stop = stop(&v)?;
    let params = sampling(&v)?;
    let (stream, include_usage) = streaming(&v)?;
    let logprobs = logprobs(&v, chat)?;
    Ok(Parsed {
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        prompt,
        params,
        max_tokens,
        stop,
        stream,
        include_usage,
        logprobs,
        tools: tools.filter(|t| t.choice != Choice::None),
        constraint,
    })
}

/// `tools` (function tools: a name and a `parameters` schema) and `tool_choice`.
fn tools(v: &Value) -> Result<Option<ToolRequest>, ApiError> {
    let list = match v.get("tools") {
        None | Some(Value::Null) => return no_tool_choice(v),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad("tools", "`tools` must be an array")),
    };
    let mut tools = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::bad(
                &format!("{param}.type"),
                "only tools of type `function` are supported",
            ));
        }
        let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| {
            ApiError::bad(&format!("{param}.function"), "`function` must be an object")
        })?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad(
                    &format!("{param}.function.name"),
                    "`name` is required and must be a non-empty string",
                )
            })?;
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p) if p.is_object() => p.clone(),
            Some(_) => {
                return Err(ApiError::bad(
                    &format!("{param}.function.parameters"),
                    "`parameters` must be a JSON schema object",
                ));
            }
        };
        tools.push(Tool {
            name: name.to_string(),
            parameters,
        });
    }
    let choice = match v.get("tool_choice") {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(ApiError::bad(
                    "tool_choice",
                    format!(
                        "`tool_choice` must be `none`, `auto`, `required` or a function, got `{other}`"
                    ),
                ));
            }
        },
        Some(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad(
                        "tool_choice",
                        "a named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::bad(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                ));
            }
            Choice::Named(name.to_string())
        }
    };
    if tools.is_empty() && matches!(choice, Choice::Required) {
        return Err(ApiError::bad(
            "tool_choice",
            "`tool_choice: required` needs at least one tool",
        ));
    }
    Ok(Some(ToolRequest { tools, choice }))
}

/// Without `tools`, a `tool_choice` other than `none`/`auto` cannot be met.
fn no_tool_choice(v: &Value) -> Result<Option<ToolRequest>, ApiError> {
    match v.get("tool_choice") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "none" || s == "auto" => Ok(None),
        Some(_) => Err(ApiError::bad("tool_choice", "`tool_choice` needs `tools`")),
    }
}

/// `response_format`: `text`, `json_object`, or `json_schema` (its `schema` compiled to the
/// grammar the answer is held to; what cannot be enforced is a 400 naming it).
fn response_format(v: &Value) -> Result<Option<Arc<Grammar>>, ApiError> {
    let rf = match v.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(rf) => rf,
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Arc::new(Grammar::any_object()))),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    ApiError::bad(
                        "response_format.json_schema.schema",
                        "`json_schema` needs a `schema`",
                    )
                })?;
            let g = Grammar::from_schema(schema)
                .map_err(|e| ApiError::bad("response_format.json_schema.schema", e.to_string()))?;
            Ok(Some(Arc::new(g)))
        }
        _ => Err(ApiError::bad(
            "response_format.type",
            "`response_format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

/// The body as a JSON object with a string `model` (if any) and `n` = 1.
fn envelope(body: &[u8]) -> Result<Value, ApiError> {
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
    Ok(v)
}

/// `POST /tokenize`: the tokens a request's prompt is (a chat request's `messages` and
/// `tools` through the chat template, a completion's `prompt`, or a bare `text`), counted as
/// the engine will count them, with the context window they must fit (vLLM's shape).
pub(super) fn tokenize(body: &[u8], st: &AppState) -> Result<Value, ApiError> {
    let v = envelope(body)?;
    let tokens = if v.get("messages").is_some() {
        chat_prompt(&v, st)?
    } else if v.get("prompt").is_some() {
        completion_prompt(&v, &st.engine.tokenizer)?
    } else if let Some(text) = v.get("text").and_then(Value::as_str) {
        st.engine.tokenizer.encode(text, false, true)
    } else {
        return Err(ApiError::bad(
            "messages",
            "send `messages` (a chat request), `prompt` or `text`",
        ));
    };
    Ok(serde_json::json!({
        "count": tokens.len(),
        "max_model_len": st.engine.n_ctx,
        "tokens": tokens,
    }))
}

/// `messages` (and `tools`) rendered by the model's chat template, then tokenized.
fn chat_prompt(v: &Value, st: &AppState) -> Result<Vec<u32>, ApiError> {
    let msgs = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad("messages", "`messages` is required and must be an array"))?;
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
    let norm = st.template.tools.messages(norm, tools);
    let text = st
        .template
        .render(&Value::Array(norm), tools, true)
        .map_err(|e| ApiError::bad("messages", e.to_string()))?;
    Ok(st.engine.tokenizer.encode(&text, true, true))
}

/// `prompt`: a string, `[string]`, or `[token ids]`.
fn completion_prompt(v: &Value, tok: &Tokenizer) -> Result<Vec<u32>, ApiError> {
    match v.get("prompt") {
        Some(Value::String(s)) => Ok(tok.encode(s, true, true)),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(tok.encode(a[0].as_str().unwrap_or(""), true, true))
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
            Ok(ids)
        }
        Some(Value::Array(_)) => Err(ApiError::bad(
            "prompt",
            "only a single prompt (string, [string] or [token ids]) is supported",
        )),
        _ => Err(ApiError::bad(
            "prompt",
            "`prompt` is required and must be a string",
        )),
    }
}

/// `max_completion_tokens`, else `max_tokens`.
fn max_tokens(v: &Value) -> Result<Option<usize>, ApiError> {
    Ok(match int(v, "max_completion_tokens", 1, i64::MAX)? {
        Some(m) => Some(m),
        None => int(v, "max_tokens", 1, i64::MAX)?,
    }
    .map(|m| m as usize))
}

/// `stop`: a string or up to 4 (empty ones ignored).
fn stop(v: &Value) -> Result<Vec<String>, ApiError> {
    let all = match v.get("stop") {
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
    };
    Ok(all.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Temperature, the truncations, the penalties (OpenAI's names and llama.cpp's
/// `repeat_penalty`), and the seed.
fn sampling(v: &Value) -> Result<SamplingParams, ApiError> {
    Ok(SamplingParams {
        temperature: num(v, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: num(v, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        top_k: int(v, "top_k", 0, 1 << 20)?.unwrap_or(0) as usize,
        min_p: num(v, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
        repetition_penalty: match num(v, "repetition_penalty", 0.01, 10.0)? {
            Some(x) => x,
            None => num(v, "repeat_penalty", 0.01, 10.0)?.unwrap_or(1.0),
        } as f32,
        frequency_penalty: num(v, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        presence_penalty: num(v, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        seed: match v.get("seed") {
            None | Some(Value::Null) => None,
            Some(s) => Some(
                s.as_i64()
                    .map(|i| i as u64)
                    .or_else(|| s.as_u64())
                    .ok_or_else(|| ApiError::bad("seed", "`seed` must be an integer"))?,
            ),
        },
    })
}

/// `stream` and `stream_options.include_usage`.
fn streaming(v: &Value) -> Result<(bool, bool), ApiError> {
    let stream = boolean(v, "stream")?;
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
    Ok((stream, include_usage))
}

/// Chat's `logprobs` + `top_logprobs`, or the completion API's `logprobs: N`.
fn logprobs(v: &Value, chat: bool) -> Result<Option<usize>, ApiError> {
    if !chat {
        return Ok(int(v, "logprobs", 0, 20)?.map(|n| n as usize));
    }
    let on = boolean(v, "logprobs")?;
    let top = int(v, "top_logprobs", 0, 20)?;
    if top.is_some() && !on {
        return Err(ApiError::bad(
            "top_logprobs",
            "`top_logprobs` requires `logprobs: true`",
        ));
    }
    Ok(on.then_some(top.unwrap_or(0) as usize))
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
