//! Every failure answers with OpenAI's error shape and the right status, and is logged.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::client::{Client, Resp};
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, config_with};

const ROUTES: &str = r#"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "mock" }]
"#;

fn assert_openai_error(r: &Resp, status: u16, code: Option<&str>) -> serde_json::Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.as_object().unwrap().contains_key("param"), "{v}");
    assert!(e.as_object().unwrap().contains_key("code"), "{v}");
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{v}");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_400s_that_say_where() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");

    let r = c
        .post(&url, "{\"model\": \"gpt-4o\",\n \"messages\": [}", &[])
        .await;
    let v = assert_openai_error(&r, 400, Some("invalid_json"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line 2"), "{msg}");

    let r = c.post_json(&url, &json!({"messages": []}), &[]).await;
    let v = assert_openai_error(&r, 400, Some("missing_required_parameter"));
    assert_eq!(v["error"]["param"], "model");

    let r = c.post_json(&url, &json!({"model": "gpt-4o"}), &[]).await;
    let v = assert_openai_error(&r, 400, None);
    assert_eq!(v["error"]["param"], "messages");

    let r = c
        .post_json(&url, &json!({"model": "gpt-4o", "messages": "hi"}), &[])
        .await;
    let v = assert_openai_error(&r, 400, Some("invalid_type"));
    assert_eq!(v["error"]["param"], "messages");

    let r = c
        .post_json(&url, &json!({"model": "gpt-9", "messages": []}), &[])
        .await;
    let v = assert_openai_error(&r, 404, Some("model_not_found"));
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));

    let r = c.post(&url, "[1,2,3]", &[]).await;
    assert_openai_error(&r, 400, Some("invalid_json"));

    let r = c.post(&gw.url("/v1/nope"), "{}", &[]).await;
    assert_openai_error(&r, 404, Some("unknown_url"));
    let r = c.get(&url).await;
    assert_openai_error(&r, 405, None);

    // None of these reached the upstream.
    assert_eq!(mock.served(), 0);
    assert!(
        gw.wait_for_log("model_not_found", Duration::from_secs(2))
            || gw.wait_for_log("unknown_model", Duration::from_secs(2)),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_too_large_is_413() {
    let mock = MockUpstream::start().await;
    let cfg = config_with(&mock.url(), ROUTES).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_body_bytes = 1000",
    );
    let gw = Gateway::start(&cfg);
    let big = "x".repeat(5000);
    let r = Client::new()
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"gpt-4o","messages":[{"role":"user","content":big}]}),
            &[],
        )
        .await;
    assert_openai_error(&r, 413, Some("request_too_large"));
    assert_eq!(mock.served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_clear_gateway_errors() {
    let mock = MockUpstream::start().await;
    let cfg = config_with(&mock.url(), ROUTES).replace(
        "first_byte_timeout_secs = 5",
        "first_byte_timeout_secs = 0.5",
    );
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let body = json!({"model": "gpt-4o", "messages": [{"role":"user","content":"x"}]});

    // OpenAI-shaped upstream errors are relayed with their status.
    let r = c.post_json(&url, &body, &[("x-mock", "status=500")]).await;
    let v = assert_openai_error(&r, 500, Some("mock_error"));
    assert_eq!(v["error"]["message"], "mock error 500");
    assert_eq!(r.header("x-switchyard-backend"), Some("mock"));

    let r = c
        .post_json(&url, &body, &[("x-mock", "status=429,retry_after=7")])
        .await;
    assert_openai_error(&r, 429, None);
    assert_eq!(r.header("retry-after"), Some("7"));

    let r = c.post_json(&url, &body, &[("x-mock", "status=400")]).await;
    assert_openai_error(&r, 400, Some("mock_error"));

    // A non-OpenAI error page becomes a 502 naming the backend and status.
    let r = c
        .post_json(&url, &body, &[("x-mock", "status=503,html")])
        .await;
    let v = assert_openai_error(&r, 502, Some("upstream_http_error"));
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("mock") && m.contains("503"), "{m}");

    // A 200 that is not JSON.
    let r = c.post_json(&url, &body, &[("x-mock", "garbage")]).await;
    assert_openai_error(&r, 502, Some("upstream_invalid_response"));

    // Connection closed without an answer.
    let r = c.post_json(&url, &body, &[("x-mock", "reset")]).await;
    assert_openai_error(&r, 502, Some("upstream_connection_broken"));

    // No answer in time.
    let t = Instant::now();
    let r = c.post_json(&url, &body, &[("x-mock", "hang")]).await;
    assert_openai_error(&r, 504, Some("upstream_timeout"));
    assert!(t.elapsed() < Duration::from_secs(3));

    // The process is still up and serving.
    let r = c.post_json(&url, &body, &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        gw.wait_for_log("upstream_timeout", Duration::from_secs(2)),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_connections_is_502() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&config_with(&format!("http://127.0.0.1:{port}/v1"), ROUTES));
    let r = Client::new()
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"gpt-4o","messages":[]}),
            &[],
        )
        .await;
    let v = assert_openai_error(&r, 502, Some("upstream_unreachable"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&port.to_string())
    );
    assert!(
        gw.wait_for_log("upstream_connect", Duration::from_secs(2)),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_failures_before_and_after_the_first_byte() {
    let mock = MockUpstream::start().await;
    let cfg = config_with(&mock.url(), ROUTES)
        .replace(
            "first_byte_timeout_secs = 5",
            "first_byte_timeout_secs = 0.5",
        )
        .replace("timeout_secs = 10", "timeout_secs = 0.5");
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let body = json!({"model":"gpt-4o","stream":true,"messages":[]});

    // Before any byte: a proper HTTP error.
    let r = c
        .post_stream(&url, &body, &[("x-mock", "break_after=0")])
        .await;
    assert_eq!(r.status, 502, "{}", r.body());

    // Mid-stream break: the stream ends cleanly with an OpenAI error event.
    let r = c
        .post_stream(
            &url,
            &body,
            &[("x-mock", "chunks=6,break_after=3,delay_ms=30")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        !r.broken,
        "the client connection was cut instead of ended cleanly"
    );
    let ev = r.json_events();
    assert_eq!(ev.len(), 4, "{:?}", r.events());
    assert_eq!(ev[3]["error"]["code"], "upstream_connection_broken");

    // Mid-stream stall: ended by the idle timeout, same way.
    let r = c
        .post_stream(
            &url,
            &body,
            &[("x-mock", "chunks=6,stall_after=2,delay_ms=30")],
        )
        .await;
    let ev = r.json_events();
    assert_eq!(
        ev.last().unwrap()["error"]["code"],
        "upstream_timeout",
        "{:?}",
        r.events()
    );
    assert!(!r.broken);
}
