//! Context-window fallback: a prompt longer than the chosen target's window goes to the
//! route's `context_fallback`; without one it is a 400 before any upstream call.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, config_with};

/// The model of the last completion the mock was asked for. Not simply its last request: the
/// gateway discovers context windows with `GET /v1/models` off the request path, and on a
/// loaded machine that can arrive after a completion.
fn last_model(mock: &MockUpstream) -> Value {
    mock.requests()
        .into_iter()
        .rev()
        .find(|r| r.method == http::Method::POST)
        .map_or(Value::Null, |r| r.json()["model"].clone())
}

fn chat(model: &str, words: usize) -> Value {
    json!({"model": model, "max_tokens": 10,
        "messages": [{"role": "user", "content": "word ".repeat(words)}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_go_to_the_context_fallback_or_are_refused_before_the_upstream() {
    let mock = MockUpstream::start().await;
    let routes = r#"
[[routes]]
model = "small"
targets = [{ backend = "mock", model = "small-8k", context_window = 200 }]
context_fallback = { backend = "mock", model = "big-128k" }

[[routes]]
model = "strict"
targets = [{ backend = "mock", model = "small-8k", context_window = 200 }]
"#;
    let gw = Gateway::start(&config_with(&mock.url(), routes));
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();

    // Fits: the chosen target.
    let r = c.post_json(&url, &chat("small", 10), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_model(&mock), "small-8k");

    // Too long (prompt + max_tokens over 200): the context fallback, named in the trail.
    let r = c.post_json(&url, &chat("small", 400), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_model(&mock), "big-128k");
    let trail = r.header("x-switchyard-attempts").unwrap();
    assert!(
        trail.starts_with("mock context_window_exceeded, mock@"),
        "{trail}"
    );

    // The same through the Anthropic surface (the translated request is what is counted).
    let r = c
        .post_json(
            &gw.url("/v1/messages"),
            &json!({"model": "small", "max_tokens": 10,
            "messages": [{"role": "user", "content": "word ".repeat(400)}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_model(&mock), "big-128k");

    // No fallback: a 400 from the gateway, and the upstream never asked.
    let before = mock.completions();
    let r = c.post_json(&url, &chat("strict", 400), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(e["message"].as_str().unwrap().contains("200 tokens"), "{e}");
    assert_eq!(mock.completions(), before);
    // max_tokens counts: a short prompt asking for more than the window is refused too.
    let r = c
        .post_json(
            &url,
            &json!({"model": "strict", "max_tokens": 500,
            "messages": [{"role": "user", "content": "hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);

    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics
            .contains("switchyard_context_overflow_total{route=\"small\",outcome=\"fallback\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("switchyard_context_overflow_total{route=\"strict\",outcome=\"rejected\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_reported_window_is_used_when_the_target_declares_none() {
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        context_window: Some(100),
        ..Behaviour::default()
    });
    // The window is asked for because the route has a context fallback.
    let routes = r#"
[[routes]]
model = "local"
targets = [{ backend = "mock", model = "small" }]
context_fallback = { backend = "mock", model = "big", context_window = 1000000 }
"#;
    let gw = Gateway::start(&config_with(&mock.url(), routes));
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    // Discovery runs off the request path at start: wait until it took effect.
    let start = Instant::now();
    loop {
        let r = c.post_json(&url, &chat("local", 400), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if last_model(&mock) == "big" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the window was not discovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted by the backend's /tokenize (one token a word here): 60 words and 10 to
    // generate fit 100, where the byte estimate (~4 bytes a token) would not.
    let body = chat("local", 60);
    assert!(body.to_string().len() / 4 + 10 > 100);
    let r = c.post_json(&url, &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_model(&mock), "small");
    assert!(mock.requests().iter().any(|r| r.path == "/tokenize"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_window_and_tokenizer_decide_and_the_fallback_answers() {
    let Some(model) = switchyard_tests::smollm2() else {
        return;
    };
    let worker = switchyard_tests::Worker::start(&model, &["--ctx-size", "256"]);
    let mock = MockUpstream::start().await;
    let c = Client::new();
    let msgs = json!([{"role": "user", "content": "What is the capital of France?"}]);

    // The worker's /tokenize counts a chat request's prompt as its completions do.
    let t = c
        .post_json(
            &format!("http://{}/tokenize", worker.addr),
            &json!({"messages": msgs}),
            &[],
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["max_model_len"], 256);
    let r = c
        .post_json(
            &format!("{}/chat/completions", worker.base_url()),
            &json!({"messages": msgs, "max_tokens": 1}),
            &[],
        )
        .await;
    assert_eq!(
        t.json()["count"],
        r.json()["usage"]["prompt_tokens"],
        "{}",
        r.text()
    );

    let gw = Gateway::start(&format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "local"
url = "{}"
timeout_secs = 60

[[backends]]
name = "mock"
url = "{}"

[[routes]]
model = "chat"
targets = [{{ backend = "local" }}]
context_fallback = {{ backend = "mock", model = "big" }}
"#,
        worker.base_url(),
        mock.url()
    ));
    let url = gw.url("/v1/chat/completions");
    // Over 256 tokens: the fallback answers (once the window is discovered; until then the
    // worker itself refuses with its own 400).
    let long = json!({"model": "chat", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Paris is lovely. ".repeat(100)}]});
    let start = Instant::now();
    loop {
        let r = c.post_json(&url, &long, &[]).await;
        if r.status == 200 {
            assert_eq!(r.header("x-switchyard-backend"), Some("mock"));
            assert_eq!(last_model(&mock), "big");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A short one is the worker's.
    let r = c
        .post_json(
            &url,
            &json!({"model": "chat", "max_tokens": 4, "messages": msgs}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-backend"), Some("local"));
}
