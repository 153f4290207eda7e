//! Faithful forwarding of complete answers: bodies both ways, headers, routing.

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, config_with};

fn routes() -> &'static str {
    r#"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "mock", model = "llama-3.1-8b" }]

[[routes]]
model = "*"
targets = [{ backend = "mock" }]
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_request_and_answer_pass_through_unchanged_but_for_the_model() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), routes()));
    let client = Client::new();
    // Fields the gateway does not interpret, including odd number formats and escapes.
    let body = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"h\u00e9llo \"there\""}],"temperature":0.70,"seed":42,"n":1,"user":"u-1","metadata":{"feature":"search"},"response_format":{"type":"json_object"},"logprobs":true,"top_logprobs":2,"x_vendor":{"nested":[1,2e3,null]}}"#;
    let resp = client
        .post(
            &gw.url("/v1/chat/completions"),
            body,
            &[
                ("authorization", "Bearer sk-client-secret"),
                ("openai-organization", "org-1"),
            ],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-switchyard-backend"), Some("mock"));
    assert_eq!(resp.header("x-switchyard-model"), Some("llama-3.1-8b"));
    assert_eq!(resp.header("x-upstream-extra"), Some("kept"));

    let got = mock.last_request().expect("mock saw the request");
    assert_eq!(got.path, "/v1/chat/completions");
    // Byte-for-byte except the spliced model name.
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        body.replace("\"gpt-4o\"", "\"llama-3.1-8b\"")
    );
    // The client's key never travels upstream, nor its organization (not on the list).
    assert!(got.headers.get("authorization").is_none());
    assert!(got.headers.get("openai-organization").is_none());

    // The answer comes back as the upstream sent it, vendor fields included.
    let v = resp.json();
    assert_eq!(v["x_vendor_extra"], json!({"kept": [1, 2.5, "three"]}));
    assert_eq!(v["model"], "llama-3.1-8b");
    assert_eq!(v["system_fingerprint"], "fp_mock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_key_replaces_the_client_key() {
    let mock = MockUpstream::start().await;
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"
[[backends]]
name = "keyed"
url = "{}"
api_key_env = "SWITCHYARD_TEST_BACKEND_KEY"
[[routes]]
model = "*"
targets = [{{ backend = "keyed" }}]
"#,
        mock.url()
    );
    let gw = Gateway::start_with_env(&cfg, &[("SWITCHYARD_TEST_BACKEND_KEY", "sk-backend-123")]);
    let resp = Client::new()
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
            &[("authorization", "Bearer sk-client-999")],
        )
        .await;
    assert_eq!(resp.status, 200);
    let got = mock.last_request().unwrap();
    assert_eq!(
        got.headers.get("authorization").unwrap(),
        "Bearer sk-backend-123"
    );
    // The key is not in the gateway's log.
    assert!(!gw.log().contains("sk-backend-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_pass_through_non_streamed() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), routes()));
    let tools = json!([{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}}}]);
    let req = json!({"model":"gpt-4o","messages":[{"role":"user","content":"weather?"}],"tools":tools,"tool_choice":"auto","parallel_tool_calls":false});
    let resp = Client::new()
        .post_json(&gw.url("/v1/chat/completions"), &req, &[])
        .await;
    assert_eq!(resp.status, 200);
    let got = mock.last_request().unwrap().json();
    assert_eq!(got["tools"], tools);
    assert_eq!(got["tool_choice"], "auto");
    assert_eq!(got["parallel_tool_calls"], false);
    let v = resp.json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        call["function"]["arguments"],
        switchyard_tests::mock::tool_arguments()
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_embeddings_and_models() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), routes()));
    let c = Client::new();

    let r = c
        .post_json(
            &gw.url("/v1/completions"),
            &json!({"model":"gpt-4o","prompt":"Say hi","max_tokens":5,"echo":false}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "text_completion");
    assert_eq!(mock.last_request().unwrap().path, "/v1/completions");
    assert_eq!(mock.last_request().unwrap().json()["model"], "llama-3.1-8b");

    let r = c
        .post_json(
            &gw.url("/v1/embeddings"),
            &json!({"model":"text-embedding-3-small","input":["a","b"],"dimensions":8}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/embeddings");
    // The catch-all passes the client's model through.
    assert_eq!(sent.json()["model"], "text-embedding-3-small");
    assert_eq!(sent.json()["dimensions"], 8);

    let r = c.get(&gw.url("/v1/models")).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gpt-4o"]);
    let r = c.get(&gw.url("/v1/models/gpt-4o")).await;
    assert_eq!(r.json()["id"], "gpt-4o");
    assert_eq!(c.get(&gw.url("/v1/models/nope")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_sends_the_canary_share() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"
[[backends]]
name = "a"
url = "{}"
[[backends]]
name = "b"
url = "{}"
[[routes]]
model = "gpt-4o"
targets = [{{ backend = "a", model = "local", weight = 80 }}, {{ backend = "b", model = "premium", weight = 20 }}]
"#,
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let n = 400;
    let mut to_b = 0;
    for _ in 0..n {
        let r = c
            .post_json(
                &gw.url("/v1/chat/completions"),
                &json!({"model":"gpt-4o","messages":[]}),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        if r.header("x-switchyard-backend") == Some("b") {
            assert_eq!(r.header("x-switchyard-model"), Some("premium"));
            to_b += 1;
        }
    }
    assert_eq!(a.served() + b.served(), n);
    let share = to_b as f64 / n as f64;
    // 20 % ± 6 points: p(fail) for a fair implementation is ~1e-4.
    assert!((0.14..0.26).contains(&share), "canary share {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(&mock.url(), routes()));
    let c = Client::new();
    assert_eq!(c.get(&gw.url("/healthz")).await.status, 200);
    assert_eq!(c.get(&gw.url("/readyz")).await.status, 200);
    for _ in 0..3 {
        c.post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"gpt-4o","messages":[]}),
            &[],
        )
        .await;
    }
    c.post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model":"gpt-4o"}),
        &[],
    )
    .await;
    let m = c.get(&gw.url("/metrics")).await.text();
    assert!(
        m.contains(r#"switchyard_requests_total{route="gpt-4o",backend="mock",status="200"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"switchyard_requests_total{route="none",backend="none",status="400"} 1"#),
        "{m}"
    );
    let _: Value = Value::Null;
}

/// The client headers the issue's probe saw travel beside the backend's key.
const CLIENT_HEADERS: &[(&str, &str)] = &[
    ("authorization", "Bearer sk-client-secret"),
    ("openai-organization", "org-client"),
    ("openai-project", "proj-client"),
    ("x-forwarded-for", "10.9.8.7"),
    ("connection", "keep-alive, x-internal-hop"),
    ("x-internal-hop", "secret"),
    ("cookie", "session=abc"),
    ("user-agent", "OpenAI/Python 1.99"),
    ("openai-beta", "assistants=v2"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowlisted_client_headers_travel_beside_the_backend_key() {
    let mock = MockUpstream::start().await;
    let cfg = |forward: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[backends]]\nname = \"keyed\"\nurl = \"{}\"\napi_key_env = \"SWITCHYARD_TEST_FWD_KEY\"\n{forward}\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"keyed\" }}]\n",
            mock.url()
        )
    };
    let env = [("SWITCHYARD_TEST_FWD_KEY", "sk-backend-key")];
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

    // The default list: SDK headers pass, the caller's account and network do not.
    let gw = Gateway::start_with_env(&cfg(""), &env);
    let r = Client::new()
        .post_json(&gw.url("/v1/chat/completions"), &body, CLIENT_HEADERS)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = mock.last_request().unwrap().headers;
    assert_eq!(got["authorization"], "Bearer sk-backend-key");
    assert_eq!(got["user-agent"], "OpenAI/Python 1.99");
    assert_eq!(got["openai-beta"], "assistants=v2");
    for h in [
        "openai-organization",
        "openai-project",
        "x-forwarded-for",
        "x-internal-hop",
        "cookie",
    ] {
        assert!(got.get(h).is_none(), "{h} went upstream: {got:?}");
    }
    drop(gw);

    // A backend's own list replaces the default; a header the client's `Connection` names
    // stays hop-by-hop even when listed.
    let gw = Gateway::start_with_env(
        &cfg("forward_headers = [\"OpenAI-Organization\", \"x-internal-hop\"]"),
        &env,
    );
    let r = Client::new()
        .post_json(&gw.url("/v1/chat/completions"), &body, CLIENT_HEADERS)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = mock.last_request().unwrap().headers;
    assert_eq!(got["openai-organization"], "org-client");
    assert_eq!(got["authorization"], "Bearer sk-backend-key");
    for h in [
        "openai-project",
        "x-internal-hop",
        "user-agent",
        "openai-beta",
    ] {
        assert!(got.get(h).is_none(), "{h} went upstream: {got:?}");
    }
}

/// `[server] threads`: connections spread over serving threads, each with its own upstream
/// pool; every answer, complete or streamed, arrives whole whichever thread served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_answer_every_connection_whole() {
    let mock = MockUpstream::start().await;
    let cfg =
        config_with(&mock.url(), routes()).replacen("[server]\n", "[server]\nthreads = 3\n", 1);
    let gw = Gateway::start(&cfg);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let url = gw.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            // A client of its own: a connection of its own, to some serving thread.
            let client = Client::new();
            for j in 0..5 {
                let stream = (i + j) % 2 == 0;
                let body = json!({"model": "gpt-4o", "stream": stream,
                    "messages": [{"role": "user", "content": format!("client {i} request {j}")}]});
                if stream {
                    let r = client.post_stream(&url, &body, &[]).await;
                    assert_eq!(r.status, 200);
                    assert!(!r.broken, "client {i} request {j}: stream cut");
                    let text: Vec<u8> = r.frames.concat();
                    assert!(
                        String::from_utf8_lossy(&text).contains("data: [DONE]"),
                        "client {i} request {j}: no [DONE]"
                    );
                } else {
                    let r = client.post_json(&url, &body, &[]).await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert_eq!(r.json()["model"], "llama-3.1-8b");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let metrics = Client::new().get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains("switchyard_requests_total"),
        "metrics after the load: {metrics:.300}"
    );
}
