//! Streams: relayed chunk by chunk, in order, usage handled, tool-call deltas intact.

use std::time::Duration;

use serde_json::json;
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream, tool_arguments};
use switchyard_tests::{Gateway, config_with};

const ROUTES: &str = r#"
[[routes]]
model = "*"
targets = [{ backend = "mock", model = "local-model" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_relayed_chunk_by_chunk_with_usage_chunk_stripped() {
    let mock = MockUpstream::start().await;
    // A pause between chunks makes each one its own frame on the wire.
    mock.set_behaviour(Behaviour {
        chunks: 12,
        chunk_delay: Duration::from_millis(15),
        ..Default::default()
    });
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let req =
        json!({"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"count"}]});
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &req, &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-switchyard-backend"), Some("mock"));

    // The gateway asked upstream for usage...
    let sent = mock.last_request().unwrap().json();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // ...and removed that chunk, which this client did not ask for.
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let json_events = r.json_events();
    assert!(
        json_events
            .iter()
            .all(|e| e["choices"].as_array().is_some_and(|c| !c.is_empty())),
        "usage-only chunk leaked: {events:?}"
    );
    // role chunk + 12 content chunks + finish chunk.
    assert_eq!(json_events.len(), 14);
    let text: String = json_events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, (0..12).map(|i| format!("w{i} ")).collect::<String>());
    // Not coalesced: one event per frame, as the upstream sent them.
    assert_eq!(
        r.frames.len(),
        events.len(),
        "frames were coalesced or split"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_chunk_is_kept_when_the_client_asked_for_it() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let req = json!({"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]});
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &req, &[])
        .await;
    let ev = r.json_events();
    let last = ev.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 5);
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_tool_call_deltas_are_intact() {
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        chunks: 9,
        ..Default::default()
    });
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let req = json!({"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"weather"}],
        "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]});
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &req, &[])
        .await;
    let ev = r.json_events();
    let mut args = String::new();
    let mut name = None;
    for e in &ev {
        if let Some(tc) = e["choices"][0]["delta"]["tool_calls"][0].as_object() {
            if let Some(n) = tc.get("function").and_then(|f| f["name"].as_str()) {
                name = Some(n.to_string());
            }
            if let Some(a) = tc.get("function").and_then(|f| f["arguments"].as_str()) {
                args.push_str(a);
            }
        }
    }
    assert_eq!(name.as_deref(), Some("get_weather"));
    assert_eq!(args, tool_arguments());
    assert_eq!(
        ev.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_completions_work() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let req = json!({"model":"gpt-4o","stream":true,"prompt":"once upon"});
    let r = Client::new()
        .post_stream(&gw.url("/v1/completions"), &req, &[])
        .await;
    let text: String = r
        .json_events()
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4 ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_is_not_delayed_by_the_gateway() {
    let mock = MockUpstream::start().await;
    // Later chunks arrive 300 ms apart: a buffering proxy would hold the first one back.
    mock.set_behaviour(Behaviour {
        chunks: 3,
        chunk_delay: Duration::from_millis(300),
        ..Default::default()
    });
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let req = json!({"model":"gpt-4o","stream":true,"messages":[]});
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &req, &[])
        .await;
    assert!(
        r.first_frame.unwrap() < Duration::from_millis(250),
        "first frame after {:?}",
        r.first_frame
    );
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
}
