//! While the model loads the worker already answers: health 503 with the stage and
//! progress, load metrics, and the API 503 in OpenAI's format with `Retry-After`; once the
//! model is set it serves. Driven through the library so each stage can be held still.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use serde_json::{Value, json};
use switchyard_worker::engine::{Engine, EngineOptions};
use switchyard_worker::models_dir::{SMOLLM2, test_model};
use switchyard_worker::server::{AppState, Shared, serve};

/// (status, headers in lower case, body) of one HTTP/1.1 exchange.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), rest.to_string())
}

/// The value of an unlabelled or labelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_loading_worker_reports_progress_and_asks_clients_to_retry_then_serves() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Shared::loading(None));
    rt.spawn(serve(listener, shared.clone()));

    // Downloading, a quarter done.
    shared.load.set_fetched(0.25);
    let (status, _, body) = http(addr, "GET", "/healthz", "");
    assert_eq!(status, 503);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"status": "loading", "stage": "fetch", "progress": 0.25})
    );

    // Reading the weights, half done.
    shared.load.start_reading();
    shared.load.set_read(0.5);
    let (status, _, m) = http(addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&m, "switchyard_worker_model_load_progress{stage=\"fetch\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "switchyard_worker_model_load_progress{stage=\"read\"}"),
        0.5
    );
    assert_eq!(sample(&m, "switchyard_worker_model_loaded"), 0.0);
    assert!(sample(&m, "switchyard_worker_model_load_seconds") >= 0.0);

    // The API refuses in OpenAI's format, names the reason and says when to retry.
    let (status, head, body) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(status, 503);
    assert!(head.contains("retry-after: 1"), "{head}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "model_loading");
    assert_eq!(e["error"]["type"], "server_error");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("loading") && msg.contains("50%"), "{msg}");

    // Loaded: health, metrics and the API answer from the model.
    let Some(model) = test_model(SMOLLM2) else {
        return;
    };
    let loaded = switchyard_worker::load(&model, |_| {}).unwrap();
    let app = AppState {
        engine: Engine::start(loaded.backend, loaded.tokenizer, EngineOptions::new(512, 1)),
        template: loaded.template,
        model_name: "smol".into(),
        started: 0,
    };
    shared.set_ready(Arc::new(app));
    let (status, _, body) = http(addr, "GET", "/healthz", "");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (_, _, m) = http(addr, "GET", "/metrics", "");
    assert_eq!(
        sample(&m, "switchyard_worker_model_load_progress{stage=\"read\"}"),
        1.0
    );
    assert_eq!(sample(&m, "switchyard_worker_model_loaded"), 1.0);
    assert!(sample(&m, "switchyard_worker_model_load_seconds") > 0.0);
    let (status, _, body) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"smol","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
}
