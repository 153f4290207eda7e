//! Observability: traces received by a real OTLP receiver (gRPC and HTTP), the trace
//! continuing into the upstream through `traceparent`, `/metrics` read with a Prometheus
//! parser, and the JSON access log.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::otlp::{
    KIND_CLIENT, KIND_INTERNAL, KIND_SERVER, OtlpReceiver, Protocol, ReceivedSpan,
};
use switchyard_tests::{Gateway, config_with, plugins, workspace_root};

const ROUTES: &str = r#"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "mock", model = "llama-3.1-8b" }]
"#;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// (trace id, parent span id) of a `traceparent` header value.
fn parse_traceparent(v: &str) -> (String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v}");
    assert_eq!(parts[0], "00");
    (parts[1].to_string(), parts[2].to_string())
}

/// POST a chat completion as part of the client's trace (`CLIENT_TRACE`); its 200 answer.
async fn chat_in_client_trace(gw: &Gateway, body: &Value) -> Value {
    let resp = Client::new()
        .post_json(
            &gw.url("/v1/chat/completions"),
            body,
            &[("traceparent", &traceparent(CLIENT_TRACE, CLIENT_SPAN))],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "exactly one span {name:?} in {spans:#?}");
    found[0]
}

fn gateway_with(rx: &OtlpReceiver, mock: &MockUpstream, telemetry_extra: &str) -> Gateway {
    let cfg = format!(
        "{}\n{}",
        config_with(&mock.url(), ROUTES),
        rx.config(1.0, telemetry_extra)
    );
    Gateway::start(&cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_from_the_client_through_the_gateway_to_the_upstream() {
    let rx = OtlpReceiver::start(Protocol::Grpc).await;
    let mock = MockUpstream::start().await;
    let gw = gateway_with(&rx, &mock, "");
    let body = json!({"model":"gpt-4o","max_tokens":64,"temperature":0.3,
        "messages":[{"role":"user","content":"secret prompt text"}]});
    let answer = chat_in_client_trace(&gw, &body).await;

    let spans = rx
        .wait_for_trace(
            CLIENT_TRACE,
            &["POST /v1/chat/completions", "route", "chat llama-3.1-8b"],
            Duration::from_secs(15),
        )
        .await;
    let server = one(&spans, "POST /v1/chat/completions");
    let route = one(&spans, "route");
    let attempt = one(&spans, "chat llama-3.1-8b");

    // The tree: client span → server span → (route, attempt).
    assert_eq!(server.kind, KIND_SERVER);
    assert_eq!(server.parent_span_id, CLIENT_SPAN);
    assert_eq!(server.service, "switchyard");
    assert_eq!(route.kind, KIND_INTERNAL);
    assert_eq!(route.parent_span_id, server.span_id);
    assert_eq!(attempt.kind, KIND_CLIENT);
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert!(attempt.start_ns >= server.start_ns && attempt.end_ns <= server.end_ns);

    // GenAI semantic-convention attributes on the attempt.
    let a = |k: &str| attempt.attr(k).cloned().unwrap_or(Value::Null);
    assert_eq!(a("gen_ai.operation.name"), "chat");
    assert_eq!(a("gen_ai.provider.name"), "mock");
    assert_eq!(a("gen_ai.request.model"), "llama-3.1-8b");
    assert_eq!(a("gen_ai.response.model"), answer["model"]);
    assert_eq!(a("gen_ai.request.max_tokens"), 64);
    assert_eq!(a("gen_ai.request.temperature"), 0.3);
    assert_eq!(a("gen_ai.response.finish_reasons"), json!(["stop"]));
    assert_eq!(a("gen_ai.response.id"), answer["id"]);
    assert_eq!(
        a("gen_ai.usage.input_tokens"),
        answer["usage"]["prompt_tokens"]
    );
    assert_eq!(
        a("gen_ai.usage.output_tokens"),
        answer["usage"]["completion_tokens"]
    );
    assert_eq!(a("server.address"), "127.0.0.1");
    assert_eq!(a("server.port"), i64::from(mock.addr.port()));
    assert!(attempt.attr("error.type").is_none());
    // Content is not recorded unless the config opts in.
    for s in &spans {
        assert!(
            !s.attributes
                .values()
                .any(|v| v.to_string().contains("secret prompt")),
            "{s:?}"
        );
    }
    assert_eq!(route.attr("switchyard.route"), Some(&Value::from("gpt-4o")));
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::from(200))
    );

    // The upstream saw the same trace, with the attempt span as its parent.
    let seen = mock.last_request().expect("mock saw the request");
    let tp = seen.headers["traceparent"].to_str().unwrap();
    let (trace, parent) = parse_traceparent(tp);
    assert_eq!(trace, CLIENT_TRACE);
    assert_eq!(parent, attempt.span_id);
}

/// The request's span tree with plugins: each plugin call (plugin, version, stage,
/// outcome; a failed call marked with its error), and `validate` with the verdict and the
/// validate plugins' calls under it. Each call is timed in
/// `switchyard_plugin_duration_seconds`, failed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_plugin_call_is_a_span_under_the_request_and_is_timed() {
    let rx = OtlpReceiver::start(Protocol::Grpc).await;
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["complexity-router", "prompt-adapter", "json-validator"] {
        plugins::install(&plugins::first_party(name), dir.path(), name);
    }
    plugins::install(&plugins::fixture("hostile"), dir.path(), "hostile");
    let plugin_config = format!(
        r#"[plugins]
dir = "{}"
cache_dir = "{}"
order = ["hostile", "complexity-router", "prompt-adapter", "json-validator"]

[plugins.config.complexity-router]
local_backend = "mock"
local_model = "llama-3.1-8b"
premium_backend = "mock"
premium_model = "gpt-4o"
"#,
        dir.path().display(),
        workspace_root()
            .join("target")
            .join("plugin-cache")
            .display()
    );
    let cfg = format!(
        "{}\n{plugin_config}\n{}",
        config_with(&mock.url(), ROUTES),
        rx.config(1.0, "")
    );
    let gw = Gateway::start(&cfg);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "a name?"}],
        "response_format": {"type": "json_object"}, "mock_content": "{\"name\":\"Ada\"}",
        "x_hostile": "trap"});
    chat_in_client_trace(&gw, &body).await;

    let names = [
        "POST /v1/chat/completions",
        "validate",
        "plugin hostile",
        "plugin complexity-router",
        "plugin prompt-adapter",
        "plugin json-validator",
    ];
    let spans = rx
        .wait_for_trace(CLIENT_TRACE, &names, Duration::from_secs(15))
        .await;
    let server = one(&spans, names[0]);
    let attempt = one(&spans, "chat llama-3.1-8b");
    assert!(
        spans.iter().all(|s| s.name != "auth"),
        "no key check without keys, so no auth span"
    );
    // One `validate` span per answer checked, with the verdict; the validate plugins' calls
    // sit under it.
    let validate = one(&spans, "validate");
    assert_eq!(validate.parent_span_id, server.span_id);
    assert_eq!(
        validate.attr("switchyard.validate.verdict"),
        Some(&Value::from("accepted"))
    );
    assert_eq!(
        validate.attr("switchyard.backend"),
        Some(&Value::from("mock"))
    );
    for (name, stage, outcome) in [
        ("hostile", "classify", "trap"),
        ("hostile", "adapt", "ok"),
        ("hostile", "validate", "accepted"),
        ("complexity-router", "classify", "routed"),
        ("prompt-adapter", "adapt", "ok"),
        ("json-validator", "validate", "accepted"),
    ] {
        // (The hostile fixture implements every stage; it misbehaves at classify only.)
        let of_stage: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| {
                s.name == format!("plugin {name}")
                    && s.attr("switchyard.plugin.stage") == Some(&Value::from(stage))
            })
            .collect();
        assert_eq!(of_stage.len(), 1, "{name}/{stage}: {spans:#?}");
        let s = of_stage[0];
        assert_eq!(s.kind, KIND_INTERNAL);
        let parent = if stage == "validate" {
            validate
        } else {
            server
        };
        assert_eq!(s.parent_span_id, parent.span_id, "{name}/{stage}");
        assert!(s.start_ns >= server.start_ns && s.end_ns <= server.end_ns);
        assert_eq!(s.attr("switchyard.plugin.name"), Some(&Value::from(name)));
        assert_eq!(s.attr("switchyard.plugin.stage"), Some(&Value::from(stage)));
        assert_eq!(
            s.attr("switchyard.plugin.outcome"),
            Some(&Value::from(outcome)),
            "{name}"
        );
        let version = s.attr("switchyard.plugin.version").and_then(Value::as_str);
        assert_eq!(version.map(str::len), Some(8), "{name}: {version:?}");
        if outcome == "trap" {
            assert_eq!(s.status_code, 2, "a failed call is an error span");
            assert_eq!(s.attr("error.type"), Some(&Value::from("trap")));
        } else {
            assert_ne!(s.status_code, 2, "{name}");
        }
        // Classify and adapt run before the upstream call, validate after it.
        if stage == "validate" {
            assert!(s.start_ns >= attempt.end_ns, "{name} after the answer");
        } else {
            assert!(s.end_ns <= attempt.start_ns, "{name} before the call");
        }
    }

    let m = scrape(&gw).await;
    for (plugin, stage) in [
        ("hostile", "classify"),
        ("hostile", "adapt"),
        ("hostile", "validate"),
        ("complexity-router", "classify"),
        ("prompt-adapter", "adapt"),
        ("json-validator", "validate"),
    ] {
        let n = value(
            &m,
            "switchyard_plugin_duration_seconds_count",
            &[("plugin", plugin), ("stage", stage)],
        );
        assert_eq!(n, 1.0, "{plugin}/{stage}");
    }
}

/// The shadow call is its own trace, linked to the request's span (so it never holds the
/// request's trace open), and its `traceparent` goes to the shadow backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_call_is_a_linked_trace_of_its_own() {
    let rx = OtlpReceiver::start(Protocol::Grpc).await;
    let mock = MockUpstream::start().await;
    let shadow = MockUpstream::start().await;
    let routes = format!(
        r#"
[[backends]]
name = "shadow"
url = "{}"
forward_headers = ["x-mock"]

[[routes]]
model = "gpt-4o"
targets = [{{ backend = "mock", model = "llama-3.1-8b" }}]
shadow = {{ backend = "shadow", model = "qwen-small", sample = 1.0 }}
"#,
        shadow.url()
    );
    let cfg = format!(
        "{}\n{}",
        config_with(&mock.url(), &routes),
        rx.config(1.0, "")
    );
    let gw = Gateway::start(&cfg);
    chat_in_client_trace(
        &gw,
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let spans = rx
        .wait_until(Duration::from_secs(15), |spans| {
            spans.iter().any(|s| s.name == "shadow chat qwen-small")
                && spans.iter().any(|s| s.name == "POST /v1/chat/completions")
        })
        .await;
    let server = one(&spans, "POST /v1/chat/completions");
    let sh = one(&spans, "shadow chat qwen-small");
    assert_ne!(sh.trace_id, server.trace_id, "a trace of its own");
    assert!(sh.parent_span_id.is_empty(), "a root");
    assert_eq!(
        sh.links,
        vec![(server.trace_id.clone(), server.span_id.clone())]
    );
    assert_eq!(sh.attr("switchyard.backend"), Some(&Value::from("shadow")));
    assert_eq!(
        sh.attr("gen_ai.request.model"),
        Some(&Value::from("qwen-small"))
    );
    assert_eq!(
        sh.attr("http.response.status_code"),
        Some(&Value::from(200))
    );
    let seen = shadow
        .last_request()
        .expect("the shadow backend was called");
    let (trace, parent) = parse_traceparent(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!((trace, parent), (sh.trace_id.clone(), sh.span_id.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_s_attempt_span_ends_with_the_stream_and_carries_its_usage() {
    let rx = OtlpReceiver::start(Protocol::Grpc).await;
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        chunks: 6,
        chunk_delay: Duration::from_millis(40),
        ..Default::default()
    });
    let gw = gateway_with(&rx, &mock, "");
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = Client::new()
        .post_stream(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}),
            &[("traceparent", &traceparent(trace, "b7ad6b7169203331"))],
        )
        .await;
    assert_eq!(r.status, 200);
    let spans = rx
        .wait_for_trace(
            trace,
            &["POST /v1/chat/completions", "chat llama-3.1-8b"],
            Duration::from_secs(15),
        )
        .await;
    let server = one(&spans, "POST /v1/chat/completions");
    let attempt = one(&spans, "chat llama-3.1-8b");
    assert_eq!(attempt.parent_span_id, server.span_id);
    // Six chunks 40 ms apart: the span covers the whole stream, not just its first byte.
    let took_ms = (attempt.end_ns - attempt.start_ns) / 1_000_000;
    assert!(took_ms >= 200, "attempt span lasted {took_ms} ms");
    assert_eq!(
        attempt.attr("gen_ai.usage.output_tokens"),
        Some(&Value::from(6))
    );
    assert!(
        attempt
            .attr("gen_ai.usage.input_tokens")
            .and_then(Value::as_i64)
            .is_some_and(|n| n > 0)
    );
    assert_eq!(
        attempt.attr("gen_ai.response.finish_reasons"),
        Some(&json!(["stop"]))
    );
    assert_eq!(
        attempt.attr("gen_ai.response.model"),
        Some(&Value::from("llama-3.1-8b"))
    );
    let ttft = attempt
        .attr("gen_ai.server.time_to_first_token")
        .and_then(Value::as_f64)
        .expect("time to first token recorded");
    assert!(ttft > 0.0 && ttft < took_ms as f64 / 1000.0);
    let seen = mock.last_request().unwrap();
    let (t, parent) = parse_traceparent(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!(t, trace);
    assert_eq!(parent, attempt.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_otlp_http_a_new_trace_starts_content_is_opt_in_and_failures_are_marked() {
    let rx = OtlpReceiver::start(Protocol::Http).await;
    let mock = MockUpstream::start().await;
    let gw = gateway_with(&rx, &mock, "capture_content = true");
    let client = Client::new();
    let resp = client
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"gpt-4o","messages":[{"role":"user","content":"visible prompt"}]}),
            &[],
        )
        .await;
    assert_eq!(resp.status, 200);
    // No client traceparent: the gateway starts the trace, and the upstream joins it.
    let seen = mock.last_request().unwrap();
    let (trace, parent) = parse_traceparent(seen.headers["traceparent"].to_str().unwrap());
    let spans = rx
        .wait_for_trace(
            &trace,
            &["POST /v1/chat/completions", "chat llama-3.1-8b"],
            Duration::from_secs(15),
        )
        .await;
    let server = one(&spans, "POST /v1/chat/completions");
    assert_eq!(server.parent_span_id, "", "the server span is the root");
    let attempt = one(&spans, "chat llama-3.1-8b");
    assert_eq!(attempt.span_id, parent);
    let input = attempt
        .attr("gen_ai.input.messages")
        .and_then(Value::as_str)
        .expect("content captured when opted in");
    assert!(input.contains("visible prompt"), "{input}");
    let output = attempt
        .attr("gen_ai.output.messages")
        .and_then(Value::as_str)
        .expect("answer captured when opted in");
    assert!(output.contains("assistant"), "{output}");

    // An upstream failure marks the attempt and the server span.
    let failed = client
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}),
            &[
                ("x-mock", "status=503"),
                ("traceparent", &traceparent(CLIENT_TRACE, CLIENT_SPAN)),
            ],
        )
        .await;
    assert_eq!(failed.status, 503);
    let spans = rx
        .wait_for_trace(
            CLIENT_TRACE,
            &["POST /v1/chat/completions", "chat llama-3.1-8b"],
            Duration::from_secs(15),
        )
        .await;
    let attempt = one(&spans, "chat llama-3.1-8b");
    assert_eq!(attempt.status_code, 2, "error status");
    assert!(attempt.attr("error.type").is_some());
    assert_eq!(
        attempt.attr("http.response.status_code"),
        Some(&Value::from(503))
    );
    let server = one(&spans, "POST /v1/chat/completions");
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::from(503))
    );
    assert_eq!(server.attr("error.type"), attempt.attr("error.type"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_ratio_zero_exports_nothing_but_still_propagates_context() {
    let rx = OtlpReceiver::start(Protocol::Grpc).await;
    let mock = MockUpstream::start().await;
    let cfg = format!(
        "{}\n{}",
        config_with(&mock.url(), ROUTES),
        rx.config(0.0, "")
    );
    let gw = Gateway::start(&cfg);
    for _ in 0..5 {
        let r = Client::new()
            .post_json(
                &gw.url("/v1/chat/completions"),
                &json!({"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let seen = mock.last_request().unwrap();
    let tp = seen.headers["traceparent"].to_str().unwrap().to_string();
    assert!(tp.ends_with("-00"), "not sampled: {tp}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.span_count(), 0);
}

/// Parse `/metrics` with a Prometheus text parser: (name, labels) → value.
async fn scrape(gw: &Gateway) -> Vec<(String, HashMap<String, String>, f64)> {
    let text = Client::new().get(&gw.url("/metrics")).await.text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    let mut out = Vec::new();
    for s in scrape.samples {
        let labels: HashMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                // The parser folds buckets into one sample; the `_count` line is separate.
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.push((s.metric, labels, value));
    }
    out
}

fn value(
    samples: &[(String, HashMap<String, String>, f64)],
    name: &str,
    want: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_the_requests_sent() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let client = Client::new();
    let chat = json!({"model":"gpt-4o","messages":[{"role":"user","content":"hello there"}]});
    let (ok, streamed, failed, unknown) = (7, 3, 2, 1);
    let mut input_tokens = 0;
    let mut output_tokens = 0;
    for _ in 0..ok {
        let r = client
            .post_json(&gw.url("/v1/chat/completions"), &chat, &[])
            .await;
        assert_eq!(r.status, 200);
        input_tokens += r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
        output_tokens += r.json()["usage"]["completion_tokens"].as_u64().unwrap();
    }
    for _ in 0..streamed {
        let r = client
            .post_stream(
                &gw.url("/v1/chat/completions"),
                &json!({"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},
                    "messages":[{"role":"user","content":"hello"}]}),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        let usage = r
            .json_events()
            .into_iter()
            .find(|e| !e["usage"].is_null())
            .expect("usage chunk")["usage"]
            .clone();
        input_tokens += usage["prompt_tokens"].as_u64().unwrap();
        output_tokens += usage["completion_tokens"].as_u64().unwrap();
    }
    for _ in 0..failed {
        let r = client
            .post_json(
                &gw.url("/v1/chat/completions"),
                &chat,
                &[("x-mock", "status=500")],
            )
            .await;
        assert_eq!(r.status, 500);
    }
    for _ in 0..unknown {
        let r = client
            .post_json(
                &gw.url("/v1/chat/completions"),
                &json!({"model":"nope","messages":[]}),
                &[],
            )
            .await;
        assert_eq!(r.status, 404);
    }
    // Stream accounting happens when the stream's body is dropped on the gateway side.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let m = scrape(&gw).await;
    let route = [("route", "gpt-4o"), ("backend", "mock")];
    let with = |extra: (&'static str, &'static str)| {
        let mut v = route.to_vec();
        v.push(extra);
        v
    };
    assert_eq!(
        value(&m, "switchyard_requests_total", &with(("status", "200"))),
        f64::from(ok + streamed)
    );
    assert_eq!(
        value(&m, "switchyard_requests_total", &with(("status", "500"))),
        f64::from(failed)
    );
    assert_eq!(
        value(
            &m,
            "switchyard_requests_total",
            &[("route", "none"), ("backend", "none"), ("status", "404")]
        ),
        f64::from(unknown)
    );
    let genai = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_request_model", "llama-3.1-8b"),
        ("backend", "mock"),
    ];
    let g = |extra: &[(&'static str, &'static str)]| {
        let mut v = genai.to_vec();
        v.extend_from_slice(extra);
        v
    };
    assert_eq!(
        value(
            &m,
            "gen_ai_client_token_usage_count",
            &g(&[("gen_ai_token_type", "input")])
        ),
        f64::from(ok + streamed)
    );
    assert_eq!(
        value(
            &m,
            "gen_ai_client_token_usage_sum",
            &g(&[("gen_ai_token_type", "input")])
        ),
        input_tokens as f64
    );
    assert_eq!(
        value(
            &m,
            "gen_ai_client_token_usage_sum",
            &g(&[("gen_ai_token_type", "output")])
        ),
        output_tokens as f64
    );
    assert_eq!(
        value(
            &m,
            "gen_ai_server_time_to_first_token_seconds_count",
            &g(&[])
        ),
        f64::from(streamed)
    );
    assert_eq!(
        value(
            &m,
            "gen_ai_server_time_per_output_token_seconds_count",
            &g(&[])
        ),
        f64::from(streamed)
    );
    // Every attempt has a duration; failed ones carry their error type.
    assert_eq!(
        value(
            &m,
            "gen_ai_client_operation_duration_seconds_count",
            &g(&[])
        ),
        f64::from(ok + streamed + failed)
    );
    assert_eq!(
        value(
            &m,
            "gen_ai_client_operation_duration_seconds_count",
            &g(&[("error_type", "upstream_status")])
        ),
        f64::from(failed)
    );
    assert_eq!(
        value(
            &m,
            "switchyard_upstream_duration_seconds_count",
            &[("backend", "mock")]
        ),
        f64::from(ok + streamed + failed)
    );
    // Telemetry is off: no spans were exported or dropped.
    assert_eq!(
        value(&m, "switchyard_telemetry_spans_exported_total", &[]),
        0.0
    );
    assert_eq!(
        value(&m, "switchyard_telemetry_spans_dropped_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_one_json_line_per_request_with_the_trace_id() {
    let mock = MockUpstream::start().await;
    let cfg = format!(
        "{}\n[telemetry]\nlog_format = \"json\"\n",
        config_with(&mock.url(), ROUTES)
    );
    // An empty SWITCHYARD_LOG_FORMAT leaves the choice to the config.
    let gw = Gateway::start_with_env(&cfg, &[("SWITCHYARD_LOG_FORMAT", "")]);
    let client = Client::new();
    let r = client
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}),
            &[("traceparent", &traceparent(CLIENT_TRACE, CLIENT_SPAN))],
        )
        .await;
    assert_eq!(r.status, 200);
    let usage = r.json()["usage"].clone();
    let r = client
        .post_stream(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        gw.wait_for_log("\"stream\":true", Duration::from_secs(5)),
        "{}",
        gw.log()
    );

    let access = gw.access_lines();
    assert_eq!(access.len(), 2, "{}", gw.log());
    let first = &access[0];
    assert_eq!(first["trace_id"], CLIENT_TRACE);
    assert_eq!(first["route"], "gpt-4o");
    assert_eq!(first["backend"], "mock");
    assert_eq!(first["model"], "gpt-4o");
    assert_eq!(first["upstream_model"], "llama-3.1-8b");
    assert_eq!(first["status"], 200);
    assert_eq!(first["input_tokens"], usage["prompt_tokens"]);
    assert_eq!(first["output_tokens"], usage["completion_tokens"]);
    assert!(first["latency_ms"].as_f64().unwrap() > 0.0);
    let stream = &access[1];
    assert_eq!(stream["stream"], true);
    assert!(stream["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(stream["output_tokens"].as_u64().unwrap() > 0);
}

/// Spans of `service` in `spans` named `name`.
fn of<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

fn secs(s: &ReceivedSpan, key: &str) -> f64 {
    s.attr(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} on {s:#?}"))
}

/// The worker's queue/prefill/decode children: parented on `server`, back to back, inside it.
fn assert_phases(spans: &[ReceivedSpan], server: &ReceivedSpan) {
    let phase = |name: &str| {
        let found: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == server.span_id)
            .collect();
        assert_eq!(found.len(), 1, "one {name} span under {server:#?}");
        found[0]
    };
    let (queue, prefill, decode) = (phase("queue"), phase("prefill"), phase("decode"));
    for p in [queue, prefill, decode] {
        assert_eq!(p.kind, KIND_INTERNAL);
        assert_eq!(p.trace_id, server.trace_id);
        assert!(p.start_ns <= p.end_ns, "{p:#?}");
    }
    assert!(server.start_ns <= queue.start_ns && decode.end_ns <= server.end_ns);
    assert_eq!(queue.end_ns, prefill.start_ns);
    assert_eq!(prefill.end_ns, decode.start_ns);
    // The attributes tell the same story in seconds.
    let ns = |s: &ReceivedSpan| (s.end_ns - s.start_ns) as f64 / 1e9;
    for (p, key) in [
        (queue, "gen_ai.latency.time_in_queue"),
        (prefill, "gen_ai.latency.time_in_model_prefill"),
        (decode, "gen_ai.latency.time_in_model_decode"),
    ] {
        assert!(
            (ns(p) - secs(server, key)).abs() < 1e-3,
            "{key}: {p:#?} vs {server:#?}"
        );
    }
    let e2e = secs(server, "gen_ai.latency.e2e");
    let ttft = secs(server, "gen_ai.latency.time_to_first_token");
    assert!(ttft > 0.0 && ttft <= e2e, "ttft {ttft}, e2e {e2e}");
}

/// A `switchyard-worker` on `model` serving it as `served`, exporting spans to `rx` over
/// `rx`'s protocol.
fn traced_worker(
    model: &std::path::Path,
    rx: &OtlpReceiver,
    served: &str,
) -> switchyard_tests::Worker {
    let endpoint = format!("http://{}", rx.addr);
    switchyard_tests::Worker::start(
        model,
        &[
            "--served-model-name",
            served,
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            rx.protocol.config_name(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_runs_from_the_client_through_the_gateway_into_the_worker() {
    let Some(model) = switchyard_tests::smollm2() else {
        return;
    };
    let rx = OtlpReceiver::start(Protocol::Grpc).await;
    let worker = traced_worker(&model, &rx, "smollm2");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"local\"\nurl = \"{}\"\ntimeout_secs = 120\n\n[[routes]]\nmodel = \"gpt-4o-mini\"\ntargets = [{{ backend = \"local\", model = \"smollm2\" }}]\n\n{}",
        worker.base_url(),
        rx.config(1.0, "")
    );
    let gw = Gateway::start(&cfg);
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}]});
    let answer = chat_in_client_trace(&gw, &body).await;

    let spans = rx
        .wait_until(Duration::from_secs(15), |spans| {
            let mine: Vec<ReceivedSpan> = spans
                .iter()
                .filter(|s| s.trace_id == CLIENT_TRACE)
                .cloned()
                .collect();
            !of(&mine, "switchyard", "POST /v1/chat/completions").is_empty()
                && !of(&mine, "switchyard-worker", "chat smollm2").is_empty()
        })
        .await;
    let spans: Vec<ReceivedSpan> = spans
        .into_iter()
        .filter(|s| s.trace_id == CLIENT_TRACE)
        .collect();
    let gateway = of(&spans, "switchyard", "POST /v1/chat/completions")[0];
    let attempts = of(&spans, "switchyard", "chat smollm2");
    let served = of(&spans, "switchyard-worker", "chat smollm2");
    assert_eq!((attempts.len(), served.len()), (1, 1), "{spans:#?}");
    let (attempt, served) = (attempts[0], served[0]);

    // client → gateway server span → attempt (CLIENT) → worker (SERVER) → phases.
    assert_eq!(gateway.parent_span_id, CLIENT_SPAN);
    assert_eq!(attempt.parent_span_id, gateway.span_id);
    assert_eq!(attempt.kind, KIND_CLIENT);
    assert_eq!(served.kind, KIND_SERVER);
    assert_eq!(served.parent_span_id, attempt.span_id);
    assert!(attempt.start_ns <= served.start_ns && served.end_ns <= attempt.end_ns);
    assert_phases(&spans, served);

    // The worker's own account of the request matches the answer the client got.
    let a = |k: &str| served.attr(k).cloned().unwrap_or(Value::Null);
    assert_eq!(a("gen_ai.operation.name"), "chat");
    assert_eq!(a("gen_ai.request.model"), "smollm2");
    assert_eq!(a("gen_ai.response.model"), "smollm2");
    assert_eq!(a("gen_ai.request.max_tokens"), 8);
    assert_eq!(a("gen_ai.request.temperature"), 0.0);
    assert_eq!(a("gen_ai.response.id"), answer["id"]);
    assert_eq!(
        a("gen_ai.response.finish_reasons"),
        json!([answer["choices"][0]["finish_reason"]])
    );
    assert_eq!(
        a("gen_ai.usage.input_tokens"),
        answer["usage"]["prompt_tokens"]
    );
    assert_eq!(
        a("gen_ai.usage.output_tokens"),
        answer["usage"]["completion_tokens"]
    );
    assert_eq!(a("http.response.status_code"), 200);
    assert!(served.attr("error.type").is_none(), "{served:#?}");
    // The same tokens on the gateway's attempt span.
    assert_eq!(
        attempt.attr("gen_ai.usage.output_tokens"),
        served.attr("gen_ai.usage.output_tokens")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_traces_streams_refusals_and_cancellations_and_follows_the_sampling_flag() {
    let Some(model) = switchyard_tests::smollm2() else {
        return;
    };
    let rx = OtlpReceiver::start(Protocol::Http).await;
    let worker = traced_worker(&model, &rx, "smol");
    let url = format!("{}/chat/completions", worker.base_url());
    let c = Client::new();
    let chat = |extra: Value| {
        let mut b = json!({"model": "smol", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": "Count: one, two,"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    const STREAM_TRACE: &str = "11111111111111111111111111111111";
    const UNSAMPLED_TRACE: &str = "22222222222222222222222222222222";
    const BAD_TRACE: &str = "33333333333333333333333333333333";

    // A stream: its span ends with the stream and carries the usage of the last chunk.
    let s = c
        .post_stream(
            &url,
            &chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
            &[("traceparent", &traceparent(STREAM_TRACE, CLIENT_SPAN))],
        )
        .await;
    assert_eq!(s.status, 200);
    let usage = s
        .json_events()
        .into_iter()
        .rev()
        .find(|e| e["usage"].is_object())
        .expect("usage chunk")["usage"]
        .clone();
    // The caller decided not to sample: the worker records nothing for that trace.
    let r = c
        .post_json(
            &url,
            &chat(json!({})),
            &[(
                "traceparent",
                &format!("00-{UNSAMPLED_TRACE}-{CLIENT_SPAN}-00"),
            )],
        )
        .await;
    assert_eq!(r.status, 200);
    // A refused request is traced with its error.
    let r = c
        .post_json(
            &url,
            &chat(json!({"temperature": 7})),
            &[("traceparent", &traceparent(BAD_TRACE, CLIENT_SPAN))],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // A client that goes away mid-stream, without a traceparent: a new root trace, marked
    // cancelled.
    let cut = c
        .post_stream_limit(
            &url,
            &chat(json!({"stream": true, "max_tokens": 400,
                "messages": [{"role": "user", "content": "Write a long story about a ship."}]})),
            &[],
            2,
        )
        .await;
    assert_eq!(cut.status, 200);
    drop(cut);

    let spans = rx
        .wait_until(Duration::from_secs(20), |spans| {
            let served = |pred: &dyn Fn(&ReceivedSpan) -> bool| {
                spans
                    .iter()
                    .any(|s| s.service == "switchyard-worker" && s.name == "chat smol" && pred(s))
            };
            served(&|s| s.trace_id == STREAM_TRACE)
                && served(&|s| s.trace_id == BAD_TRACE)
                && served(&|s| s.parent_span_id.is_empty())
        })
        .await;
    let in_trace = |t: &str| -> Vec<ReceivedSpan> {
        spans.iter().filter(|s| s.trace_id == t).cloned().collect()
    };

    let stream_spans = in_trace(STREAM_TRACE);
    let stream = of(&stream_spans, "switchyard-worker", "chat smol")[0];
    assert_eq!(stream.parent_span_id, CLIENT_SPAN);
    assert_eq!(
        stream.attr("gen_ai.usage.input_tokens"),
        Some(&usage["prompt_tokens"])
    );
    assert_eq!(
        stream.attr("gen_ai.usage.output_tokens"),
        Some(&usage["completion_tokens"])
    );
    assert_phases(&stream_spans, stream);

    assert!(in_trace(UNSAMPLED_TRACE).is_empty(), "{spans:#?}");

    let bad_spans = in_trace(BAD_TRACE);
    let bad = of(&bad_spans, "switchyard-worker", "chat smol")[0];
    assert_eq!(bad.status_code, 2, "{bad:#?}");
    assert_eq!(
        bad.attr("error.type"),
        Some(&Value::from("invalid_request_error"))
    );
    assert_eq!(
        bad.attr("http.response.status_code"),
        Some(&Value::from(400))
    );
    assert_eq!(
        bad_spans.len(),
        1,
        "no phases for a refused request: {bad_spans:#?}"
    );

    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.service == "switchyard-worker" && s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(roots[0].attr("error.type"), Some(&Value::from("cancelled")));
    assert_eq!(roots[0].status_code, 2);

    // The worker counts what it exported on its /metrics (once the collector's answer is
    // back, a moment after the spans arrived).
    let received = spans
        .iter()
        .filter(|s| s.service == "switchyard-worker")
        .count() as f64;
    let mut m = String::new();
    for _ in 0..40 {
        m = c
            .get(&format!("http://{}/metrics", worker.addr))
            .await
            .text();
        let exported: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_worker_spans_exported_total "))
            .expect("export counter")
            .parse()
            .unwrap();
        if exported >= received {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker counted fewer exported spans than the {received} received:\n{m}");
}
