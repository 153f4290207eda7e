//! The gateway in front of a real local model: `[local_worker]` runs the inference worker
//! inside the gateway (what the embedded default does with SmolLM2), and the gateway reaches
//! it over HTTP like any other backend.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::client::Client;
use switchyard_tests::otlp::{KIND_CLIENT, OtlpReceiver, Protocol, ReceivedSpan};
use switchyard_tests::{Gateway, smollm2};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_a_real_model_from_its_local_worker() {
    let Some(model) = smollm2() else { return };
    let port = free_port();
    // Traced: the in-process worker exports to the gateway's collector and joins its traces.
    let rx = OtlpReceiver::start(Protocol::Grpc).await;
    let gw = Gateway::start(&format!(
        r#"[server]
listen = "127.0.0.1:0"

[local_worker]
model = "{}"
listen = "127.0.0.1:{port}"
served_model_name = "smollm2"
max_batch = 2

[[backends]]
name = "local"
url = "http://127.0.0.1:{port}/v1"
timeout_secs = 120

[[routes]]
model = "gpt-4o-mini"
targets = [{{ backend = "local", model = "smollm2" }}]

{}"#,
        model.display(),
        rx.config(1.0, "")
    ));
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 12,
        "temperature": 0,
    });
    // The worker loads on its own thread after the gateway is up; until it listens the
    // backend refuses connections (502), while it loads it answers 503 "model loading", and
    // the gateway passes that on; it never hangs.
    let deadline = Instant::now() + Duration::from_secs(120);
    let r = loop {
        let r = c.post_json(&url, &body, &[]).await;
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        assert!(
            r.status == 502 || r.status == 503,
            "{} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-backend"), Some("local"));
    assert_eq!(r.header("x-switchyard-model"), Some("smollm2"));
    let v = r.json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{v}");
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() <= 12,
        "{v}"
    );
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 5, "{v}");

    // The answered request's attempt span has the worker's span under it.
    let id = v["id"].clone();
    let is_worker = |w: &ReceivedSpan| {
        w.service == "switchyard-worker" && w.attr("gen_ai.response.id") == Some(&id)
    };
    let spans = rx
        .wait_until(Duration::from_secs(15), |spans| {
            spans
                .iter()
                .filter(|w| is_worker(w))
                .any(|w| spans.iter().any(|a| a.span_id == w.parent_span_id))
        })
        .await;
    let worker = spans.iter().find(|w| is_worker(w)).unwrap();
    let attempt = spans
        .iter()
        .find(|a| a.span_id == worker.parent_span_id)
        .unwrap();
    assert_eq!(
        (attempt.service.as_str(), attempt.kind),
        ("switchyard", KIND_CLIENT)
    );
    assert_eq!(attempt.trace_id, worker.trace_id);
    assert_eq!(
        worker.attr("gen_ai.usage.output_tokens"),
        Some(&v["usage"]["completion_tokens"])
    );

    // Greedy decoding is deterministic: the same request through the gateway gives the same
    // answer, streamed chunk by chunk this time.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let s = c.post_stream(&url, &sbody, &[]).await;
    assert_eq!(s.status, 200);
    let streamed: String = s
        .json_events()
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, text);
}
