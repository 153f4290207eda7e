//! The Responses API and Anthropic's Messages API, served by a chat/completions-only
//! upstream (the mock) through translation.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, config_with, run_switchyard};

const ROUTES: &str = r#"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "mock", model = "llama-3.1-8b" }]
"#;

/// Event names of an SSE body, in order.
fn event_names(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_owned)
        .collect()
}

/// The `data:` payloads of an SSE body.
fn event_data(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The mock's prompt tokens for a request it received (its own rule: body bytes / 4).
fn mock_prompt_tokens(mock: &MockUpstream) -> u64 {
    (mock.last_request().unwrap().body.len() / 4).max(1) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_api_is_translated_for_a_chat_only_upstream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let url = gw.url("/v1/responses");
    let c = Client::new();

    // Plain: the upstream sees a chat request; the client gets a Response with its usage.
    let r = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "instructions": "be brief", "input": "hi", "max_output_tokens": 9, "metadata": {"k": "v"}}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    let chat = sent.json();
    assert_eq!(chat["model"], "llama-3.1-8b");
    assert_eq!(
        chat["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        chat["messages"][1],
        json!({"role": "user", "content": "hi"})
    );
    assert_eq!(chat["max_tokens"], 9);
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["output"][0]["content"][0]["text"], "w0 w1 w2 w3 w4 ");
    assert_eq!(v["usage"]["input_tokens"], mock_prompt_tokens(&mock));
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert_eq!(v["metadata"], json!({"k": "v"}));
    assert_eq!(r.header("x-switchyard-backend"), Some("mock"));

    // A function tool: the call comes back as a function_call item.
    let tools =
        json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let r = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "input": "weather?", "tools": tools}),
            &[],
        )
        .await;
    let v = r.json();
    assert_eq!(
        mock.last_request().unwrap().json()["tools"][0]["function"]["name"],
        "get_weather"
    );
    let call = &v["output"][0];
    assert_eq!(call["type"], "function_call", "{v}");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["call_id"], "call_mock1");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["location"], "Paris, France");

    // Streamed text: the Responses event sequence, usage in response.completed.
    let s = c
        .post_stream(
            &url,
            &json!({"model": "gpt-4o", "input": "hi", "stream": true}),
            &[],
        )
        .await;
    assert_eq!(s.status, 200);
    let body = s.body();
    let names = event_names(&body);
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ],
        "{body}"
    );
    let data = event_data(&body);
    let seqs: Vec<u64> = data
        .iter()
        .map(|d| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..13).collect::<Vec<_>>());
    let done = &data[12]["response"];
    assert_eq!(done["output"][0]["content"][0]["text"], "w0 w1 w2 w3 w4 ");
    assert_eq!(done["usage"]["output_tokens"], 5);
    assert_eq!(done["usage"]["input_tokens"], mock_prompt_tokens(&mock));

    // Streamed function call: argument deltas that add up to the call.
    let s = c
        .post_stream(
            &url,
            &json!({"model": "gpt-4o", "input": "w", "tools": tools, "stream": true}),
            &[],
        )
        .await;
    let data = event_data(&s.body());
    let args: String = data
        .iter()
        .filter(|d| d["type"] == "response.function_call_arguments.delta")
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, switchyard_tests::mock::tool_arguments());
    let done = data
        .iter()
        .find(|d| d["type"] == "response.completed")
        .unwrap();
    assert_eq!(done["response"]["output"][0]["arguments"], args);

    // Stored state is refused before any upstream call, naming the member.
    let before = mock.completions();
    let r = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "input": "hi", "previous_response_id": "resp_1"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "previous_response_id");
    let r = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "input": "hi", "store": true}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "store");
    assert_eq!(mock.completions(), before);

    // An unknown model: OpenAI's error shape, as for chat.
    let r = c
        .post_json(&url, &json!({"model": "nope", "input": "hi"}), &[])
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_are_translated_for_an_openai_upstream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let url = gw.url("/v1/messages");
    let c = Client::new();

    let r = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "max_tokens": 16, "system": "terse", "stop_sequences": ["END"],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let chat = mock.last_request().unwrap().json();
    assert_eq!(
        chat["messages"][0],
        json!({"role": "system", "content": "terse"})
    );
    assert_eq!(chat["stop"], json!(["END"]));
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "w0 w1 w2 w3 w4 "}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], mock_prompt_tokens(&mock));
    assert_eq!(v["usage"]["output_tokens"], 5);

    // A tool call, then its result sent back: tool_use in, tool message upstream.
    let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let r = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "max_tokens": 16, "tools": tools,
            "messages": [{"role": "user", "content": "weather?"}]}),
            &[],
        )
        .await;
    let v = r.json();
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    let tu = &v["content"][0];
    assert_eq!(tu["type"], "tool_use");
    assert_eq!(tu["name"], "get_weather");
    assert_eq!(tu["input"]["location"], "Paris, France");
    let r = c
        .post_json(&url, &json!({"model": "gpt-4o", "max_tokens": 16, "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [tu.clone()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tu["id"], "content": "sunny"}]}]}), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let chat = mock.last_request().unwrap().json();
    assert_eq!(chat["messages"][1]["tool_calls"][0]["id"], "call_mock1");
    assert_eq!(
        chat["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_mock1", "content": "sunny"})
    );

    // Streamed: Anthropic's event sequence, usage in message_delta.
    let s = c
        .post_stream(
            &url,
            &json!({"model": "gpt-4o", "max_tokens": 16, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
            &[],
        )
        .await;
    let body = s.body();
    let mut names = event_names(&body);
    names.dedup();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{body}"
    );
    let data = event_data(&body);
    let text: String = data
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4 ");
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(delta["usage"]["input_tokens"], mock_prompt_tokens(&mock));

    // Streamed tool use: input_json_delta pieces that add up to the arguments.
    let s = c
        .post_stream(
            &url,
            &json!({"model": "gpt-4o", "max_tokens": 16, "stream": true, "tools": tools,
            "messages": [{"role": "user", "content": "w"}]}),
            &[],
        )
        .await;
    let data = event_data(&s.body());
    assert_eq!(data[1]["content_block"]["type"], "tool_use");
    let json_text: String = data
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(json_text, switchyard_tests::mock::tool_arguments());

    // Errors in Anthropic's shape: the gateway's own and an upstream's.
    let r = c
        .post_json(&url, &json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}), &[])
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    let r = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    let r = c
        .post_json(&url, &json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}), &[("x-mock", "status=429")])
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");

    // count_tokens: answered by the gateway, no upstream call.
    let before = mock.completions();
    let r = c
        .post_json(
            &gw.url("/v1/messages/count_tokens"),
            &json!({"model": "gpt-4o",
            "messages": [{"role": "user", "content": "how many tokens is this?"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(mock.completions(), before);
}

fn ledger_tokens(db: &Path) -> Vec<(i64, i64, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT tokens_in, tokens_out, key_id FROM ledger ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_key_is_the_callers_key_and_the_ledger_has_the_upstreams_usage() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gov.db");
    let cfg = dir.path().join("switchyard.toml");
    let text = config_with(
        &mock.url(),
        &format!(
            "[state]\npath = \"{}\"\n[auth]\nrequired = true\n{ROUTES}",
            db.display()
        ),
    );
    std::fs::write(&cfg, &text).unwrap();
    let (code, out, err) = run_switchyard(
        &[
            "keys",
            "create",
            "--json",
            "--team",
            "t",
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let key: Value = serde_json::from_str(out.trim()).unwrap();
    let (key, key_id) = (
        key["key"].as_str().unwrap().to_owned(),
        key["id"].as_str().unwrap().to_owned(),
    );
    let mut gw = Gateway::start(&text);
    let c = Client::new();
    let msg = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]});

    let r = c.post_json(&gw.url("/v1/messages"), &msg, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = c
        .post_json(&gw.url("/v1/messages"), &msg, &[("x-api-key", &key)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = mock.last_request().unwrap();
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the caller's key went upstream"
    );
    let anthropic_in = mock_prompt_tokens(&mock);
    let s = c
        .post_stream(
            &gw.url("/v1/responses"),
            &json!({"model": "gpt-4o", "input": "hello", "stream": true}),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await;
    assert_eq!(s.status, 200);
    let responses_in = mock_prompt_tokens(&mock);
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let rows = ledger_tokens(&db);
    assert_eq!(
        rows,
        [
            (anthropic_in as i64, 5, key_id.clone()),
            (responses_in as i64, 5, key_id),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_streams_get_an_access_line_like_chat_streams() {
    let mock = MockUpstream::start().await;
    let cfg = format!(
        "{}\n[telemetry]\nlog_format = \"json\"\n",
        config_with(&mock.url(), ROUTES)
    );
    let gw = Gateway::start_with_env(&cfg, &[("SWITCHYARD_LOG_FORMAT", "")]);
    let c = Client::new();
    let s = c
        .post_stream(
            &gw.url("/v1/responses"),
            &json!({"model": "gpt-4o", "input": "hi", "stream": true}),
            &[],
        )
        .await;
    assert_eq!(s.status, 200);
    let responses_in = mock_prompt_tokens(&mock);
    let s = c
        .post_stream(
            &gw.url("/v1/messages"),
            &json!({"model": "gpt-4o", "max_tokens": 16, "stream": true,
                    "messages": [{"role": "user", "content": "hello there"}]}),
            &[],
        )
        .await;
    assert_eq!(s.status, 200);
    let messages_in = mock_prompt_tokens(&mock);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.access_lines().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let access = gw.access_lines();
    assert_eq!(access.len(), 2, "{}", gw.log());
    for (line, path, input) in [
        (&access[0], "/v1/responses", responses_in),
        (&access[1], "/v1/messages", messages_in),
    ] {
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["stream"], true, "{line}");
        assert_eq!(line["route"], "gpt-4o", "{line}");
        assert_eq!(line["backend"], "mock", "{line}");
        assert_eq!(line["upstream_model"], "llama-3.1-8b", "{line}");
        assert_eq!(line["input_tokens"], input, "{line}");
        assert_eq!(line["output_tokens"], 5, "{line}");
        assert!(line["latency_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["ttft_ms"].as_f64().unwrap() > 0.0, "{line}");
    }
}
