//! Plugins end to end: each first-party plugin's documented effect, hostile plugins
//! contained, hot reload, `switchyard check`, and the Python/JavaScript examples deciding
//! like the Rust policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::client::{Client, Resp};
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, plugins, run_switchyard, skip_unless, workspace_root};

/// Compiled plugins are cached here across tests (the gateway's disk cache).
fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("plugin-cache")
}

/// Two backends (`local`, `openai`), route `gpt-4o` → openai, `[plugins]` in `dir` plus
/// `extra` (more `[plugins]` keys and `[plugins.config.*]` tables).
fn config(local: &MockUpstream, premium: &MockUpstream, dir: &Path, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[plugins]
dir = "{dir}"
cache_dir = "{cache}"
{extra}

[[backends]]
name = "local"
url = "{local}"
first_byte_timeout_secs = 5
timeout_secs = 10

[[backends]]
name = "openai"
url = "{premium}"
first_byte_timeout_secs = 5
timeout_secs = 10

[[routes]]
model = "gpt-4o"
targets = [{{ backend = "openai" }}]

[[routes]]
model = "*"
targets = [{{ backend = "openai" }}]
"#,
        dir = dir.display(),
        cache = cache_dir().display(),
        local = local.url(),
        premium = premium.url(),
    )
}

const ROUTER_CONFIG: &str = r#"
[plugins.config.complexity-router]
local_model = "llama-3.1-8b"
premium_model = "gpt-4o"
max_tokens = 200
"#;

/// Two mock backends (`local`, `openai`) and a plugin folder holding the first-party
/// plugins `names`.
async fn with_first_party(names: &[&str]) -> (MockUpstream, MockUpstream, tempfile::TempDir) {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        plugins::install(&plugins::first_party(name), dir.path(), name);
    }
    (local, premium, dir)
}

/// `switchyard check --config <cfg>` run in `dir`: (exit code, stdout, stderr).
fn check(cfg: &Path, dir: &Path) -> (i32, String, String) {
    run_switchyard(&["check", "--config", cfg.to_str().unwrap()], dir, &[])
}

async fn chat(gw: &Gateway, body: Value) -> Resp {
    Client::new()
        .post(&gw.url("/v1/chat/completions"), body.to_string(), &[])
        .await
}

fn user(text: &str) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
}

async fn metrics(gw: &Gateway) -> String {
    Client::new().get(&gw.url("/metrics")).await.text()
}

/// The requests the routing policy is compared on (also by the examples test).
fn routing_cases() -> Vec<(Value, &'static str)> {
    let turns: Vec<Value> = (0..6)
        .flat_map(|i| {
            [
                json!({"role": "user", "content": format!("question {i}")}),
                json!({"role": "assistant", "content": "answer"}),
            ]
        })
        .collect();
    vec![
        (user("What is the capital of France?"), "local"),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]}),
            "local",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "weather in Paris?"}],
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}),
            "openai",
        ),
        (
            user("Why does this fail?\n```rust\nfn main() { let x: u8 = 256; }\n```"),
            "openai",
        ),
        (user(&"Summarise this text. ".repeat(100)), "openai"),
        (json!({"model": "gpt-4o", "messages": turns}), "openai"),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
            "openai",
        ),
        (user("héllo, ça va? 日本語で答えて"), "local"),
        // Code without a fence: two markers ("def ", "return ").
        (user("def area(r):\n    return 3.14 * r * r"), "openai"),
        // One marker and no braces is prose, not code.
        (user("Should I import a car from Japan?"), "local"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complexity_router_sends_simple_requests_local_and_the_rest_premium() {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    plugins::install(
        &plugins::first_party("complexity-router"),
        dir.path(),
        "complexity-router",
    );
    let gw = Gateway::start(&config(&local, &premium, dir.path(), ROUTER_CONFIG));
    for (i, (body, want)) in routing_cases().into_iter().enumerate() {
        let r = chat(&gw, body).await;
        assert_eq!(r.status, 200, "case {i}: {}", r.text());
        assert_eq!(r.header("x-switchyard-backend"), Some(want), "case {i}");
        let model = if want == "local" {
            "llama-3.1-8b"
        } else {
            "gpt-4o"
        };
        assert_eq!(r.header("x-switchyard-model"), Some(model), "case {i}");
    }
    assert_eq!(local.served(), 4);
    assert_eq!(
        local.last_request().unwrap().json()["model"],
        "llama-3.1-8b"
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            r#"switchyard_plugin_counter_total{plugin="complexity-router",name="simple"} 4"#
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complexity_router_falls_to_premium_while_local_is_unhealthy() {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    plugins::install(
        &plugins::first_party("complexity-router"),
        dir.path(),
        "complexity-router",
    );
    let gw = Gateway::start(&config(&local, &premium, dir.path(), ROUTER_CONFIG));
    local.set_behaviour(Behaviour {
        status: Some(500),
        ..Behaviour::default()
    });
    // The first simple requests go local and fail; the gateway learns the backend is down.
    for _ in 0..3 {
        let r = chat(&gw, user("hi")).await;
        assert_eq!(r.header("x-switchyard-backend"), Some("local"));
        assert_eq!(r.status, 500);
    }
    let r = chat(&gw, user("hi")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-backend"), Some("openai"));
    assert_eq!(r.header("x-switchyard-model"), Some("gpt-4o"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_adapter_rewrites_for_the_target_and_leaves_others_byte_identical() {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    plugins::install(
        &plugins::first_party("prompt-adapter"),
        dir.path(),
        "prompt-adapter",
    );
    let extra = r#"
[plugins.config.prompt-adapter]
trim = ["You are a helpful assistant."]
"#;
    let text = config(&local, &premium, dir.path(), extra).replace(
        r#"[[routes]]
model = "gpt-4o""#,
        r#"[[routes]]
model = "gemma"
targets = [{ backend = "local", model = "gemma-2-9b" }]

[[routes]]
model = "small-json"
targets = [{ backend = "local", model = "llama-3.1-8b" }]

[[routes]]
model = "gpt-4o""#,
    );
    let gw = Gateway::start(&text);

    // A template without a system role: the system prompt moves into the first user turn.
    let r = chat(&gw, json!({"model": "gemma", "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}], "user": "u1"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = local.last_request().unwrap().json();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "Answer in French.\n\nHello"}])
    );
    assert_eq!(sent["model"], "gemma-2-9b");
    assert_eq!(sent["user"], "u1", "untyped fields survive the rewrite");

    // JSON asked of a local model: an explicit instruction is added.
    let r = chat(&gw, json!({"model": "small-json", "messages": [{"role": "user", "content": "Three colours"}], "response_format": {"type": "json_object"}})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = local.last_request().unwrap().json();
    let last = &sent["messages"][0]["content"];
    assert!(
        last.to_string().contains("valid JSON object"),
        "instruction added: {last}"
    );
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));

    // Boilerplate trimmed, for any target.
    let r = chat(&gw, json!({"model": "gpt-4o", "messages": [{"role": "system", "content": "You are a helpful assistant. Be brief."}, {"role": "user", "content": "Hi"}]})).await;
    assert_eq!(r.status, 200);
    let sent = premium.last_request().unwrap().json();
    assert_eq!(sent["messages"][0]["content"], "Be brief.");

    // Nothing applies: the body goes upstream byte for byte.
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.70,"x_vendor":{"n":[1,2e3]}}"#;
    let r = Client::new()
        .post(&gw.url("/v1/chat/completions"), body, &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&premium.last_request().unwrap().body),
        body
    );
}

/// Adapt runs per attempt on the client's original request: when the local model (a template
/// without a system role) fails, the premium fallback gets the request with its system
/// message intact, not the local model's rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_gets_its_own_rewrite_of_the_original_request() {
    let (local, premium, dir) = with_first_party(&["prompt-adapter"]).await;
    let text = config(&local, &premium, dir.path(), "").replace(
        r#"[[routes]]
model = "gpt-4o""#,
        r#"[[routes]]
model = "gemma"
targets = [{ backend = "local", model = "gemma-2-9b" }]
fallback = [{ backend = "openai", model = "gpt-4o" }]

[[routes]]
model = "gpt-4o""#,
    );
    let gw = Gateway::start(&text);
    local.set_behaviour(Behaviour {
        status: Some(500),
        ..Behaviour::default()
    });
    let r = chat(&gw, json!({"model": "gemma", "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-backend"), Some("openai"));
    let tried = local
        .last_request()
        .expect("the local model was tried first")
        .json();
    assert_eq!(
        tried["messages"],
        json!([{"role": "user", "content": "Answer in French.\n\nHello"}]),
        "the local attempt got the folded system prompt"
    );
    let sent = premium.last_request().unwrap().json();
    assert_eq!(sent["model"], "gpt-4o");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}]),
        "the fallback starts again from the client's request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_validator_rejects_answers_that_are_not_the_json_asked_for() {
    let (local, premium, dir) = with_first_party(&["json-validator"]).await;
    let gw = Gateway::start(&config(&local, &premium, dir.path(), ""));
    let schema = json!({"type": "object", "required": ["name", "age"], "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}});
    let ask = |content: &str, format: Value| {
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "who?"}],
            "response_format": format, "mock_content": content})
    };
    let object = json!({"type": "json_object"});
    let with_schema =
        json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}});

    let r = chat(&gw, ask(r#"{"name":"Ada","age":36}"#, with_schema.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        r#"{"name":"Ada","age":36}"#
    );

    let r = chat(
        &gw,
        ask("Sure! Here is the JSON you asked for.", object.clone()),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "answer_rejected");
    assert!(r.text().contains("not valid JSON"), "{}", r.text());

    let r = chat(
        &gw,
        ask(r#"{"name":"Ada","age":"36"}"#, with_schema.clone()),
    )
    .await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("$.age"), "{}", r.text());

    let r = chat(&gw, ask(r#"{"name":"Ada"}"#, with_schema)).await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("age"), "{}", r.text());

    // No JSON asked: prose is fine.
    let r = chat(&gw, json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "mock_content": "hello there"})).await;
    assert_eq!(r.status, 200);
}

/// How many calls `plugin` got at `stage`, from `/metrics`.
async fn plugin_calls(gw: &Gateway, plugin: &str, stage: &str) -> u64 {
    let text = Client::new().get(&gw.url("/metrics")).await.text();
    let (p, s) = (format!("plugin=\"{plugin}\""), format!("stage=\"{stage}\""));
    text.lines()
        .filter(|l| l.starts_with("switchyard_plugin_duration_seconds_count{"))
        .filter(|l| l.contains(&p) && l.contains(&s))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|n| n as u64)
        .sum()
}

/// `validate_when = ["json"]`: the validator still rejects a JSON answer that is not JSON,
/// and the answers to requests that did not ask for JSON are served without calling it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_when_calls_the_validator_only_for_the_requests_it_names() {
    let (local, premium, dir) = with_first_party(&["json-validator"]).await;
    let gw = Gateway::start(&config(
        &local,
        &premium,
        dir.path(),
        "[plugins.overrides.json-validator]\nvalidate_when = [\"json\"]\n",
    ));
    for _ in 0..3 {
        let r = chat(&gw, json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "mock_content": "hello there"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["choices"][0]["message"]["content"], "hello there");
    }
    assert_eq!(plugin_calls(&gw, "json-validator", "validate").await, 0);

    let ask = |content: &str| {
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "who?"}],
            "response_format": {"type": "json_object"}, "mock_content": content})
    };
    let r = chat(&gw, ask("Sure! Here is the JSON you asked for.")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "answer_rejected");
    let r = chat(&gw, ask(r#"{"name":"Ada"}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(plugin_calls(&gw, "json-validator", "validate").await, 2);
    drop(gw);

    // Without it, every answer goes to the validator.
    let gw = Gateway::start(&config(&local, &premium, dir.path(), ""));
    let r = chat(&gw, json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "mock_content": "hello there"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(plugin_calls(&gw, "json-validator", "validate").await, 1);
}

/// The text of a streamed chat answer (its `delta.content` pieces joined).
fn streamed_text(r: &switchyard_tests::client::StreamResp) -> String {
    r.json_events()
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// `validate_streams = "buffer"`: a streamed answer is held until complete and validated
/// like a complete one; a rejected stream never reaches the client and the fallback's
/// stream is served instead, as the events its upstream sent. The default (`skip`) relays
/// streams live without validating them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_streams_are_validated_and_a_rejected_one_falls_back() {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    local.set_behaviour(Behaviour {
        content: Some("Sure! Here is the JSON you asked for.".into()),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    plugins::install(
        &plugins::first_party("json-validator"),
        dir.path(),
        "json-validator",
    );
    let with_fallback = |extra: &str| {
        config(&local, &premium, dir.path(), extra).replacen(
            "model = \"gpt-4o\"\ntargets = [{ backend = \"openai\" }]",
            "model = \"gpt-4o\"\ntargets = [{ backend = \"local\" }]\nfallback = [{ backend = \"openai\" }]",
            1,
        )
    };
    let json_answer = r#"{"name":"Ada","age":36}"#;
    let ask = |stream_options: Option<Value>| {
        let mut body = json!({"model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": "who?"}],
            "response_format": {"type": "json_object"}, "mock_content": json_answer});
        if let Some(o) = stream_options {
            body["stream_options"] = o;
        }
        body
    };
    let client = Client::new();

    let gw = Gateway::start(&with_fallback(
        "\n[plugins.overrides.json-validator]\nvalidate_streams = \"buffer\"\n",
    ));
    let url = gw.url("/v1/chat/completions");
    let r = client.post_stream(&url, &ask(None), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-switchyard-backend"), Some("openai"));
    let attempts = r.header("x-switchyard-attempts").unwrap_or("");
    assert!(attempts.contains("rejected_by_validate"), "{attempts}");
    assert_eq!(streamed_text(&r), json_answer, "{}", r.body());
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    assert!(
        r.json_events().iter().all(|e| e["usage"].is_null()),
        "the usage chunk the gateway asked for is not served: {}",
        r.body()
    );
    let local_sent = local.last_request().unwrap().json();
    assert_eq!(local_sent["stream"], true, "upstream still streams");

    // The client's own `include_usage` gets its usage chunk.
    let r = client
        .post_stream(&url, &ask(Some(json!({"include_usage": true}))), &[])
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.json_events()
            .iter()
            .any(|e| e["usage"]["completion_tokens"].is_u64()),
        "{}",
        r.body()
    );

    // No JSON asked: the local stream is accepted and served whole.
    let mut prose = ask(None);
    prose.as_object_mut().unwrap().remove("response_format");
    let r = client.post_stream(&url, &prose, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-backend"), Some("local"));
    assert_eq!(streamed_text(&r), "Sure! Here is the JSON you asked for.");
    drop(gw);

    // Default `skip`: the stream is relayed as it comes, unvalidated.
    let gw = Gateway::start(&with_fallback(""));
    let r = client
        .post_stream(&gw.url("/v1/chat/completions"), &ask(None), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-backend"), Some("local"));
    assert_eq!(streamed_text(&r), "Sure! Here is the JSON you asked for.");
}

/// A held stream is compared with its shadow as the events the client got (the shadow
/// streams too): identical answers agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_stream_is_compared_with_its_shadow() {
    let (local, premium, dir) = with_first_party(&["json-validator"]).await;
    let text = config(&local, &premium, dir.path(), "validate_streams = \"buffer\"\n")
        .replacen(
            "targets = [{ backend = \"openai\" }]",
            "targets = [{ backend = \"openai\" }]\nshadow = { backend = \"local\", model = \"cand\", sample = 1.0 }",
            1,
        );
    let gw = Gateway::start(&text);
    let body = json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "who?"}],
        "response_format": {"type": "json_object"}, "mock_content": r#"{"name":"Ada"}"#});
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &body, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body());
    let agree =
        r#"switchyard_shadow_comparisons_total{route="gpt-4o",backend="local",result="agree"} 1"#;
    let start = Instant::now();
    let mut m = String::new();
    while !m.contains(agree) && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = metrics(&gw).await;
    }
    assert!(m.contains(agree), "{m}");
}

/// A `validate` plugin's replacement reaches a streaming client as a stream (held mode),
/// and a non-streaming one as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_is_served_as_a_stream_to_a_streaming_client() {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    plugins::install(&plugins::fixture("hostile"), dir.path(), "hostile");
    let extra = "validate_streams = \"buffer\"\n[plugins.config.hostile]\nstage = \"validate\"\n";
    let gw = Gateway::start(&config(&local, &premium, dir.path(), extra));
    let mut body = hostile("replace");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &body, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(streamed_text(&r), "replaced by policy", "{}", r.body());
    let events = r.json_events();
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["model"], "policy");
    assert!(
        events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "stop"),
        "{}",
        r.body()
    );
    assert!(events.iter().any(|e| e["usage"]["total_tokens"] == 6));
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));

    let r = chat(&gw, hostile("replace")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "replaced by policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_plugins_together() {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    for name in ["complexity-router", "prompt-adapter", "json-validator"] {
        plugins::install(&plugins::first_party(name), dir.path(), name);
    }
    let gw = Gateway::start(&config(&local, &premium, dir.path(), ROUTER_CONFIG));
    // Simple + JSON: routed local, instruction added, answer validated.
    let r = chat(
        &gw,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "a colour"}],
        "response_format": {"type": "json_object"}, "mock_content": "{\"colour\":\"red\"}"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-backend"), Some("local"));
    let sent = local.last_request().unwrap().json();
    assert!(
        sent["messages"][0]["content"]
            .to_string()
            .contains("valid JSON object")
    );
    let r = chat(
        &gw,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "a colour"}],
        "response_format": {"type": "json_object"}, "mock_content": "red"}),
    )
    .await;
    assert_eq!(r.status, 502);
}

/// A gateway with the hostile plugin misbehaving at `stage`; the unrelated traffic sent while
/// it misbehaves must all succeed. The deadline leaves the memory hog time to reach its
/// 32 MiB limit on a busy 2-core machine (at 50 ms it was sometimes cut off first).
async fn hostile_gateway(
    stage: &str,
    on_error: &str,
) -> (MockUpstream, MockUpstream, Gateway, tempfile::TempDir) {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    plugins::install(&plugins::fixture("hostile"), dir.path(), "hostile");
    let extra = format!(
        "timeout_ms = 250\nmemory_mb = 32\non_error = \"{on_error}\"\n\n[plugins.config.hostile]\nstage = \"{stage}\"\n"
    );
    let gw = Gateway::start(&config(&local, &premium, dir.path(), &extra));
    (local, premium, gw, dir)
}

fn hostile(mode: &str) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "x_hostile": mode})
}

/// Background requests that do not trigger the plugin; returns (sent, failed) when stopped.
fn bystanders(gw: &Gateway) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let url = gw.url("/v1/chat/completions");
    let s = stop.clone();
    let h = tokio::spawn(async move {
        let client = Client::new();
        let (mut sent, mut failed) = (0, 0);
        while !s.load(Ordering::Relaxed) {
            let r = client.post(&url, user("hello").to_string(), &[]).await;
            sent += 1;
            if r.status != 200 {
                failed += 1;
            }
        }
        (sent, failed)
    });
    (stop, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_and_other_requests_are_unaffected() {
    for (stage, modes) in [
        (
            "classify",
            &[
                "loop",
                "memory",
                "trap",
                "panic",
                "unknown-backend",
                "unknown-route",
            ][..],
        ),
        ("adapt", &["garbage", "trap"][..]),
        ("validate", &["garbage", "loop"][..]),
    ] {
        let (_l, _p, gw, _dir) = hostile_gateway(stage, "continue").await;
        let (stop, load) = bystanders(&gw);
        for mode in modes {
            let started = Instant::now();
            let r = chat(&gw, hostile(mode)).await;
            // on_error = continue: the request is served as if the plugin were absent.
            assert_eq!(r.status, 200, "{stage}/{mode}: {}", r.text());
            assert_eq!(r.header("x-switchyard-backend"), Some("openai"));
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{stage}/{mode} took {:?}",
                started.elapsed()
            );
        }
        stop.store(true, Ordering::Relaxed);
        let (sent, failed) = load.await.unwrap();
        assert!(sent > 0);
        assert_eq!(failed, 0, "{stage}: unrelated requests failed");
        let m = metrics(&gw).await;
        let want: &[&str] = match stage {
            "classify" => &["timeout", "memory", "trap", "bad_return"],
            "adapt" => &["bad_return", "trap"],
            _ => &["bad_return", "timeout"],
        };
        for kind in want {
            assert!(
                m.contains(&format!(
                    "switchyard_plugin_errors_total{{plugin=\"hostile\",stage=\"{stage}\",kind=\"{kind}\"}}"
                )),
                "{stage}: no {kind} counted:\n{m}"
            );
        }
        assert!(gw.log().contains("plugin call failed"));
        assert!(gw.log().contains("hostile"));
        let h = Client::new().get(&gw.url("/healthz")).await;
        assert_eq!(h.status, 200, "the process stays up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_reject_fails_only_the_request_that_tripped_the_plugin() {
    let (_l, _p, gw, _dir) = hostile_gateway("classify", "reject").await;
    for mode in ["loop", "trap", "unknown-backend"] {
        let r = chat(&gw, hostile(mode)).await;
        assert_eq!(r.status, 500, "{mode}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "plugin_failed");
        assert!(r.text().contains("hostile"), "{}", r.text());
        let ok = chat(&gw, user("hello")).await;
        assert_eq!(ok.status, 200);
    }
}

/// `[plugins.overrides.<name>]` gives one plugin its own deadline, memory and `on_error`:
/// the same component runs twice, as `lenient` (the section's generous defaults, failures
/// skipped) and as `strict` (30 ms, 32 MiB, failures reject the request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_plugin_overrides_set_its_own_deadline_memory_and_on_error() {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let wasm = plugins::fixture("hostile");
    plugins::install(&wasm, dir.path(), "lenient");
    plugins::install(&wasm, dir.path(), "strict");
    let extra = "order = [\"lenient\", \"strict\"]\ntimeout_ms = 1500\nmemory_mb = 256\non_error = \"continue\"\n\n\
        [plugins.overrides.strict]\ntimeout_ms = 30\nmemory_mb = 32\non_error = \"reject\"\n";
    let text = config(&local, &premium, dir.path(), extra);
    let gw = Gateway::start(&text);

    // 48 MiB: fine for `lenient` under 256 MiB, over `strict`'s 32 MiB, which rejects.
    let r = chat(&gw, hostile("alloc-48mib")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "plugin_failed");
    assert!(r.text().contains("strict"), "{}", r.text());
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            r#"switchyard_plugin_errors_total{plugin="strict",stage="classify",kind="memory"}"#
        ),
        "{m}"
    );
    assert!(
        !m.contains(r#"switchyard_plugin_errors_total{plugin="lenient""#),
        "lenient had room for 48 MiB:\n{m}"
    );

    // A loop: `lenient` is cut off at the section's 1.5 s and skipped; `strict` at its own
    // 30 ms, and rejects. Both at 1.5 s would take 3 s.
    let started = Instant::now();
    let r = chat(&gw, hostile("loop")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("strict"), "{}", r.text());
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(2700),
        "took {took:?}"
    );
    let m = metrics(&gw).await;
    for plugin in ["lenient", "strict"] {
        assert!(
            m.contains(&format!(
                "switchyard_plugin_errors_total{{plugin=\"{plugin}\",stage=\"classify\",kind=\"timeout\"}} 1"
            )),
            "{plugin}: {m}"
        );
    }

    // Unrelated requests pass both.
    assert_eq!(chat(&gw, user("hello")).await.status, 200);

    // `check` shows the override.
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, &text).unwrap();
    let (code, out, err) = check(&cfg, dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("overrides: timeout 30 ms, memory 32 MiB, on_error reject"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_no_request() {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&local, &premium, dir.path(), ROUTER_CONFIG));
    let ready = Client::new().get(&gw.url("/readyz")).await;
    assert_eq!(ready.status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, sent) = (gw.url("/v1/chat/completions"), stop.clone(), sent.clone());
        load.push(tokio::spawn(async move {
            let client = Client::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client.post(&url, user("hi").to_string(), &[]).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    failures.push(format!("{} {}", r.status, r.text()));
                }
            }
            failures
        }));
    }
    let wait_for = |want: &'static str| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = Client::new().post(&url, user("hi").to_string(), &[]).await;
                if r.header("x-switchyard-backend") == Some(want) {
                    return;
                }
                assert!(Instant::now() < deadline, "never routed to {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for("openai").await;
    // Add the router: simple requests move to the local backend.
    plugins::install(
        &plugins::first_party("complexity-router"),
        dir.path(),
        "complexity-router",
    );
    wait_for("local").await;
    // Replace it with a file that is not a component: reported, the old version stays.
    std::fs::write(dir.path().join(".bad.tmp"), b"\0asm garbage").unwrap();
    std::fs::rename(
        dir.path().join(".bad.tmp"),
        dir.path().join("complexity-router.wasm"),
    )
    .unwrap();
    assert!(gw.wait_for_log("failed to load", Duration::from_secs(10)));
    for _ in 0..5 {
        let r = chat(&gw, user("hi")).await;
        assert_eq!(r.header("x-switchyard-backend"), Some("local"));
    }
    // Replace it with a working version again, add two more plugins, then remove them all.
    plugins::install(
        &plugins::first_party("complexity-router"),
        dir.path(),
        "complexity-router",
    );
    for name in ["prompt-adapter", "json-validator"] {
        plugins::install(&plugins::first_party(name), dir.path(), name);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for name in ["complexity-router", "prompt-adapter", "json-validator"] {
        std::fs::remove_file(dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    wait_for("openai").await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for h in load {
        failures.extend(h.await.unwrap());
    }
    assert!(sent.load(Ordering::Relaxed) > 20, "the load generator ran");
    assert!(
        failures.is_empty(),
        "requests failed during reloads: {failures:?}"
    );
    let m = metrics(&gw).await;
    assert!(m.contains("switchyard_plugin_reloads_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_plugins_with_their_stages_and_names_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["complexity-router", "prompt-adapter", "json-validator"] {
        plugins::install(&plugins::first_party(name), dir.path(), name);
    }
    let cfg = dir.path().join("switchyard.toml");
    let text = format!(
        "[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n\n[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:9/v1\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"b\" }}]\n",
        dir.path().display(),
        cache_dir().display()
    );
    std::fs::write(&cfg, &text).unwrap();
    let (code, out, err) = check(&cfg, dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("complexity-router"), "{out}");
    assert!(out.contains("stages classify"), "{out}");
    assert!(out.contains("stages adapt"), "{out}");
    assert!(out.contains("stages validate"), "{out}");

    std::fs::write(dir.path().join("broken.wasm"), b"not wasm").unwrap();
    let (code, out, err) = check(&cfg, dir.path());
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("broken.wasm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_javascript_and_c_examples_decide_like_the_rust_router() {
    let py = plugins::example("python-router");
    let js = plugins::example("js-router");
    let c = plugins::example("c-router");
    if skip_unless(
        py.is_some(),
        "the Python example (componentize-py; cargo xtask plugins)",
    ) | skip_unless(
        js.is_some(),
        "the JavaScript example (npm install in examples/js-router; cargo xtask plugins)",
    ) | skip_unless(
        c.is_some(),
        "the C example (apt install clang lld wasi-libc libclang-rt-14-dev-wasm32; cargo xtask plugins)",
    ) {
        return;
    }
    let rust = plugins::first_party("complexity-router");
    let mut decisions: Vec<(String, Vec<String>)> = Vec::new();
    let examples = [
        ("rust", rust),
        ("python", py.unwrap()),
        ("js", js.unwrap()),
        ("c", c.unwrap()),
    ];
    for (label, file) in examples {
        let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
        let dir = tempfile::tempdir().unwrap();
        plugins::install(&file, dir.path(), "complexity-router");
        // Generous deadline: this test is about decisions, on a loaded CI machine.
        let extra = format!("timeout_ms = 2000\n{ROUTER_CONFIG}");
        let gw = Gateway::start(&config(&local, &premium, dir.path(), &extra));
        let mut got = Vec::new();
        for (body, _) in routing_cases() {
            let r = chat(&gw, body).await;
            assert_eq!(r.status, 200, "{label}: {}", r.text());
            got.push(format!(
                "{}/{}",
                r.header("x-switchyard-backend").unwrap_or("-"),
                r.header("x-switchyard-model").unwrap_or("-")
            ));
        }
        let m = metrics(&gw).await;
        assert!(
            !m.contains(r#"switchyard_plugin_errors_total{plugin="complexity-router""#),
            "{label} had plugin errors:\n{m}"
        );
        decisions.push((label.to_string(), got));
    }
    let want: Vec<String> = routing_cases()
        .iter()
        .map(|(_, b)| {
            if *b == "local" {
                "local/llama-3.1-8b".to_string()
            } else {
                "openai/gpt-4o".to_string()
            }
        })
        .collect();
    for (label, got) in &decisions {
        assert_eq!(got, &want, "{label} decided differently");
    }
}

/// A plugin call computing up to its deadline must not hold up unrelated connections: with
/// more such calls in flight than the gateway has worker threads, `/healthz` on a new
/// connection is still answered before the first of those calls reaches its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_plugin_does_not_stall_unrelated_connections() {
    const DEADLINE_MS: u64 = 5000;
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    plugins::install(&plugins::fixture("hostile"), dir.path(), "hostile");
    let extra = format!(
        "timeout_ms = {DEADLINE_MS}\non_error = \"continue\"\n\n[plugins.config.hostile]\nstage = \"classify\"\n"
    );
    let gw = Gateway::start(&config(&local, &premium, dir.path(), &extra));
    // Twice the gateway's async worker threads (one per core), each busy for the deadline.
    let busy = 2 * std::thread::available_parallelism().map_or(2, |n| n.get().min(16));
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..busy {
        let url = gw.url("/v1/chat/completions");
        slow.push(tokio::spawn(async move {
            Client::new()
                .post(&url, hostile("loop").to_string(), &[])
                .await
                .status
        }));
    }
    // Give the slow requests time to reach their plugin calls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let h = Client::new().get(&gw.url("/healthz")).await;
    let healthz = asked.elapsed();
    let answered_at = started.elapsed();
    eprintln!(
        "{busy} plugin calls spinning for {DEADLINE_MS} ms: /healthz answered in {healthz:?}"
    );
    assert_eq!(h.status, 200);
    assert!(
        answered_at < Duration::from_millis(DEADLINE_MS),
        "/healthz waited for the plugin calls to end ({answered_at:?} after they started)"
    );
    for s in slow {
        assert_eq!(
            s.await.unwrap(),
            200,
            "on_error = continue serves the request"
        );
    }
}
