//! A native test harness: build requests, callers and backend snapshots, set config values,
//! call your stage functions directly with `cargo test`, and inspect what the policy
//! logged, counted and stored. No Wasm, no gateway.
//!
//! ```ignore
//! use switchyard_sdk::{testing::*, Classify, Role};
//! set_config("local_model", "llama-3.1-8b");
//! let d = MyRouter::classify(chat(&[(Role::User, "hi")]), caller(), vec![backend("local", Health::Healthy)]);
//! assert_eq!(d.target.unwrap().backend, "local");
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use crate::host::Level;
use crate::{
    BackendStatus, Caller, Endpoint, Health, JsonSchema, Message, Request, Response,
    ResponseFormat, Role, Sampling, Tool,
};

/// What the host imports recorded (native builds only), per test thread.
#[derive(Default)]
pub struct HostState {
    pub config: HashMap<String, String>,
    pub logs: Vec<(Level, String)>,
    pub counters: HashMap<String, u64>,
    pub values: Vec<(String, f64)>,
    pub kv: HashMap<String, Vec<u8>>,
    /// The request in flight's values (`host::request_set`); [`new_request`] clears them.
    pub request: HashMap<String, Vec<u8>>,
}

thread_local! {
    static STATE: RefCell<HostState> = RefCell::new(HostState::default());
}

/// Run `f` on this thread's host state.
pub fn with_state<R>(f: impl FnOnce(&mut HostState) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// Forget every config value, log line, counter and stored key.
pub fn reset() {
    with_state(|s| *s = HostState::default());
}

/// Start another request: forget the values kept for the one before (`host::request_set`),
/// as the gateway does between requests.
pub fn new_request() {
    with_state(|s| s.request.clear());
}

/// Set a config value (as `[plugins.config.<name>] key = value` would).
pub fn set_config(key: &str, value: &str) {
    with_state(|s| {
        s.config.insert(key.to_string(), value.to_string());
    });
}

/// The lines logged so far.
pub fn logs() -> Vec<(Level, String)> {
    with_state(|s| s.logs.clone())
}

/// A counter's value.
pub fn counter(name: &str) -> u64 {
    with_state(|s| s.counters.get(name).copied().unwrap_or(0))
}

/// A chat request with these (role, text) messages.
pub fn chat(messages: &[(Role, &str)]) -> Request {
    Request {
        endpoint: Endpoint::ChatCompletions,
        model: "gpt-4o".to_string(),
        stream: false,
        messages: messages.iter().map(|(r, t)| Message::text(*r, t)).collect(),
        prompt: None,
        tools: Vec::new(),
        tool_choice: None,
        sampling: Sampling {
            temperature: None,
            top_p: None,
            max_tokens: None,
            stop: Vec::new(),
            seed: None,
            presence_penalty: None,
            frequency_penalty: None,
            n: None,
        },
        response_format: None,
        extra: "{}".to_string(),
    }
}

/// Builder-style tweaks of a test request.
pub trait RequestExt {
    /// Offer a function tool.
    fn with_tool(self, name: &str) -> Request;
    /// Ask for a JSON object answer.
    fn with_json(self) -> Request;
    /// Ask for an answer matching this JSON schema.
    fn with_schema(self, schema: &str) -> Request;
}

impl RequestExt for Request {
    fn with_tool(mut self, name: &str) -> Request {
        self.tools.push(Tool {
            name: name.to_string(),
            description: None,
            parameters: Some(r#"{"type":"object"}"#.to_string()),
            extra: "{}".to_string(),
        });
        self
    }
    fn with_json(mut self) -> Request {
        self.response_format = Some(ResponseFormat::JsonObject);
        self
    }
    fn with_schema(mut self, schema: &str) -> Request {
        self.response_format = Some(ResponseFormat::JsonSchema(JsonSchema {
            name: "answer".to_string(),
            schema: schema.to_string(),
            strict: true,
        }));
        self
    }
}

/// An anonymous caller.
pub fn caller() -> Caller {
    Caller {
        key_id: None,
        team: None,
        tags: Vec::new(),
        headers: Vec::new(),
    }
}

/// A backend snapshot entry.
pub fn backend(name: &str, health: Health) -> BackendStatus {
    BackendStatus {
        name: name.to_string(),
        health,
        latency_ms: 100.0,
        error_rate: if health == Health::Unhealthy {
            1.0
        } else {
            0.0
        },
        in_flight: 0,
        price: None,
    }
}

/// A chat answer whose first choice says `content`.
pub fn answer(content: &str) -> Response {
    let body = format!(
        r#"{{"object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":{}}},"finish_reason":"stop"}}]}}"#,
        crate::helpers::json_string(content)
    );
    Response {
        backend: "local".to_string(),
        model: "llama-3.1-8b".to_string(),
        content: Some(content.to_string()),
        finish_reason: Some("stop".to_string()),
        tool_calls: Vec::new(),
        body,
    }
}
