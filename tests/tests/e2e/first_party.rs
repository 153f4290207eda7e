//! The policy plugins from the migration playbook, through the real gateway: the learned
//! router (`switchyard router train` then `learned-router`), prompt versions
//! (`prompt-versions`, with the ledger and `spend --by tag`) and PII masking (`pii-mask`).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::client::{Client, Resp};
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, plugins, run_switchyard, workspace_root};

/// Two backends (`local`, `openai`), every model routed to `openai`, the first-party
/// plugins `names` in `dir`, then `extra` (plugin config, `[state]`, ...).
fn config(local: &MockUpstream, premium: &MockUpstream, dir: &Path, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[plugins]
dir = "{dir}"
cache_dir = "{cache}"
# These tests check what the plugins do, not how fast: on a loaded machine a call past the
# default 50 ms would be skipped (`on_error = "continue"`) and look like wrong behaviour.
timeout_ms = 5000
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
model = "*"
targets = [{{ backend = "openai" }}]
"#,
        dir = dir.display(),
        cache = workspace_root().join("target/plugin-cache").display(),
        local = local.url(),
        premium = premium.url(),
    )
}

async fn setup(names: &[&str]) -> (MockUpstream, MockUpstream, tempfile::TempDir) {
    let (local, premium) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        plugins::install(
            &plugins::first_party(name),
            &dir.path().join("plugins"),
            name,
        );
    }
    (local, premium, dir)
}

async fn chat(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> Resp {
    Client::new()
        .post(&gw.url("/v1/chat/completions"), body.to_string(), headers)
        .await
}

fn stop(mut gw: Gateway) {
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(20)).is_some(),
        "gateway did not exit"
    );
}

// ---------------------------------------------------------------------------------------
// learned-router

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_train_reaches_the_bar_on_the_example_and_the_plugin_routes_by_its_model() {
    let (local, premium, dir) = setup(&["learned-router"]).await;
    let data = workspace_root().join("examples/router/labeled.jsonl");
    let model = dir.path().join("router.json");
    let (code, out, err) = run_switchyard(
        &[
            "router",
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let acc: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("held-out accuracy (5-fold cross-validation): "))
        .unwrap_or_else(|| panic!("no held-out accuracy in {out}"))
        .trim()
        .parse()
        .unwrap();
    assert!(acc >= 0.9, "held-out accuracy {acc}: {out}");

    let extra = format!(
        r#"
[plugins.config.learned-router]
model = {{ from_file = "{}" }}
threshold = 0.6
targets = {{ local = {{ backend = "local", model = "llama-3.1-8b" }}, premium = {{ backend = "openai", model = "gpt-4o" }} }}
"#,
        model.display()
    );
    let gw = Gateway::start(&config(
        &local,
        &premium,
        &dir.path().join("plugins"),
        &extra,
    ));
    // Requests the model never saw, worded unlike the training templates.
    let cases = [
        ("Hi, where is my parcel? I ordered it on Friday.", "local"),
        ("How do I change my password?", "local"),
        (
            "Our webhook consumer in Go drops events under load; here is the handler:\n```\nfunc h(w http.ResponseWriter, r *http.Request) { go process(r.Body) }\n```\nExplain the race and rewrite it safely.",
            "openai",
        ),
    ];
    for (text, want) in cases {
        let body = json!({"model": "support", "messages": [{"role": "user", "content": text}]});
        let r = chat(&gw, &body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-backend"), Some(want), "{text}");
    }
    let sent: Vec<String> = local
        .requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent, ["llama-3.1-8b", "llama-3.1-8b"]);
    let metrics = Client::new().get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains(r#"name="predicted_local"} 2"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("learned-router"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stop(gw);
}

/// The loop capture → eval → train → route: `switchyard eval --emit-labels` labels each
/// example of the router's example set with the cheapest target that answered it right
/// (the local model knows only the easy answers, the premium one all), `router train`
/// learns from those labels, and `learned-router` routes new requests by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_emit_labels_trains_a_router_that_routes() {
    let (local, premium, dir) = setup(&["learned-router"]).await;
    // The local model gives one canned answer, right only for the easy questions.
    const CANNED: &str = "Please see the help centre.";
    local.set_behaviour(Behaviour {
        content: Some(CANNED.into()),
        ..Behaviour::default()
    });
    let source =
        std::fs::read_to_string(workspace_root().join("examples/router/labeled.jsonl")).unwrap();
    let mut dataset = String::new();
    let mut want = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        let messages = v["messages"].clone();
        let last = messages.as_array().unwrap().last().unwrap()["content"].clone();
        // The premium mock echoes the question: right exactly when it is the reference.
        let (expected, label) = match v["label"].as_str().unwrap() {
            "local" => (json!(CANNED), "local"),
            _ => (last, "openai"),
        };
        want.push(label);
        let ex = json!({"id": format!("ex{n}"), "messages": messages, "mock_echo": true,
            "expected": expected, "metric": "exact"});
        dataset.push_str(&format!("{ex}\n"));
    }
    let data = dir.path().join("dataset.jsonl");
    std::fs::write(&data, dataset).unwrap();
    let eval_config = format!(
        r#"[[backends]]
name = "local"
url = "{}"

[[backends]]
name = "openai"
url = "{}"

[[routes]]
model = "*"
targets = [{{ backend = "openai" }}]

[[prices]]
backend = "local"
model = "llama-3.1-8b"
input_per_1m = 0.1
output_per_1m = 0.2

[[prices]]
backend = "openai"
model = "gpt-4o"
input_per_1m = 2.5
output_per_1m = 10.0
"#,
        local.url(),
        premium.url()
    );
    let cfg = dir.path().join("eval.toml");
    let labels = dir.path().join("labels.jsonl");
    // Labels rank targets by cost: a target without a price stops the eval before it sends.
    let unpriced = eval_config.replace("model = \"llama-3.1-8b\"", "model = \"other\"");
    std::fs::write(&cfg, unpriced).unwrap();
    let (code, _, err) = run_switchyard(
        &[
            "eval",
            "--config",
            cfg.to_str().unwrap(),
            "--dataset",
            data.to_str().unwrap(),
            "--target",
            "local:llama-3.1-8b",
            "--emit-labels",
            labels.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("local:llama-3.1-8b has no price"), "{err}");
    assert!(local.requests().is_empty() && !labels.exists());
    std::fs::write(&cfg, eval_config).unwrap();
    let (code, _, err) = run_switchyard(
        &[
            "eval",
            "--config",
            cfg.to_str().unwrap(),
            "--dataset",
            data.to_str().unwrap(),
            "--baseline",
            "openai:gpt-4o",
            "--target",
            "local:llama-3.1-8b",
            "--json",
            "--emit-labels",
            labels.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("labels: 320 examples labelled"), "{err}");
    let emitted: Vec<Value> = std::fs::read_to_string(&labels)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<&str> = emitted
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        got, want,
        "each example labelled with the cheapest right target"
    );
    assert!(emitted[0]["request"]["messages"].is_array());

    let model = dir.path().join("router.json");
    let (code, out, err) = run_switchyard(
        &[
            "router",
            "train",
            "--data",
            labels.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("held-out accuracy"), "{out}");

    let extra = format!(
        r#"
[plugins.config.learned-router]
model = {{ from_file = "{}" }}
threshold = 0.6
targets = {{ local = {{ backend = "local", model = "llama-3.1-8b" }}, openai = {{ backend = "openai", model = "gpt-4o" }} }}
"#,
        model.display()
    );
    let gw = Gateway::start(&config(
        &local,
        &premium,
        &dir.path().join("plugins"),
        &extra,
    ));
    let cases = [
        ("How do I change my password?", "local"),
        (
            "Our webhook consumer in Go drops events under load; here is the handler:\n```\nfunc h(w http.ResponseWriter, r *http.Request) { go process(r.Body) }\n```\nExplain the race and rewrite it safely.",
            "openai",
        ),
    ];
    for (text, want) in cases {
        let body = json!({"model": "support", "messages": [{"role": "user", "content": text}]});
        let r = chat(&gw, &body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-backend"), Some(want), "{text}");
    }
    stop(gw);
}

// ---------------------------------------------------------------------------------------
// prompt-versions

fn prompts_config(db: &Path, v2_text: &str) -> String {
    format!(
        r#"
[plugins.config.prompt-versions.prompts.support.versions.v1]
weight = 70
system = "You are Acme support (v1). The customer is {{customer}}."

[plugins.config.prompt-versions.prompts.support.versions.v2]
weight = 30
system = "{v2_text}"

[plugins.config.prompt-versions.prompts.sales]
sticky = true
[plugins.config.prompt-versions.prompts.sales.versions.a]
system = "Sales prompt A."
[plugins.config.prompt-versions.prompts.sales.versions.b]
system = "Sales prompt B."

[state]
path = "{}"
"#,
        db.display()
    )
}

/// The system prompt the upstream received for request `i` (tagged `metadata.req`).
fn systems_by_request(mock: &MockUpstream) -> std::collections::HashMap<String, String> {
    mock.requests()
        .iter()
        .filter_map(|r| {
            let v = r.json();
            let req = v["metadata"]["req"].as_str()?.to_string();
            let first = &v["messages"][0];
            assert_eq!(first["role"], "system", "{v}");
            assert_eq!(
                v["messages"].as_array().unwrap().len(),
                2,
                "client system replaced"
            );
            Some((req, first["content"].as_str()?.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_versions_split_by_weight_stick_to_callers_reach_the_ledger_and_reload() {
    let (local, premium, dir) = setup(&["prompt-versions"]).await;
    let db = dir.path().join("ledger.db");
    const V2: &str = "Acme support v2 for {customer} on the {plan} plan.";
    let text = config(
        &local,
        &premium,
        &dir.path().join("plugins"),
        &prompts_config(&db, V2),
    );
    let gw = Gateway::start(&text);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    const N: usize = 1000;
    let mut tasks = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    for i in 0..N {
        let (c, url, sem) = (c.clone(), url.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let body = json!({"model": "gpt-4o", "messages": [
                {"role": "system", "content": "client's own system prompt"},
                {"role": "user", "content": format!("my order {i} has not arrived")}],
                "metadata": {"prompt": "support", "customer": "Ann", "plan": "Pro", "req": format!("s{i}")}});
            let r = c.post_json(&url, &body, &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let systems = systems_by_request(&premium);
    let v1 = systems
        .values()
        .filter(|s| *s == "You are Acme support (v1). The customer is Ann.")
        .count();
    let v2 = systems
        .values()
        .filter(|s| *s == "Acme support v2 for Ann on the Pro plan.")
        .count();
    assert_eq!(
        v1 + v2,
        N,
        "every request got one of the versions, rendered"
    );
    let share = v1 as f64 / N as f64;
    assert!(
        (share - 0.70).abs() <= 0.03,
        "v1 got {share} of the traffic, want 0.70 ± 0.03"
    );

    // Sticky: each caller (`user`) keeps one version of `sales` across its requests.
    let mut seen = std::collections::HashSet::new();
    for caller in 0..12 {
        let mut versions = std::collections::HashSet::new();
        for i in 0..8 {
            let tag = format!("c{caller}-{i}");
            let body = json!({"model": "gpt-4o", "user": format!("caller-{caller}"),
                "messages": [{"role": "user", "content": format!("quote for {i} seats")}],
                "metadata": {"prompt": "sales", "req": tag.clone()}});
            let r = chat(&gw, &body, &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            versions.insert(systems_by_request(&premium)[&tag].clone());
        }
        assert_eq!(versions.len(), 1, "caller {caller} switched: {versions:?}");
        seen.extend(versions);
    }
    assert_eq!(
        seen.len(),
        2,
        "twelve callers should not all land on one version"
    );

    // The prompts change with the config file.
    std::fs::write(&gw.config_path, text.replace(V2, "Reloaded v2 prompt.")).unwrap();
    let mut reloaded = false;
    for i in 0..200 {
        let tag = format!("r{i}");
        let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": format!("reload probe {i}")}],
            "metadata": {"prompt": "support", "customer": "Ann", "req": tag.clone()}});
        assert_eq!(chat(&gw, &body, &[]).await.status, 200);
        if systems_by_request(&premium)[&tag] == "Reloaded v2 prompt." {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new v2 prompt never reached the upstream");
    stop(gw);

    // `spend --by tag` shows both versions with the requests each served.
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, &text).unwrap();
    let (code, out, err) = run_switchyard(
        &[
            "spend",
            "--by",
            "tag",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let rep: Value = serde_json::from_str(&out).unwrap();
    let requests = |tag: &str| -> u64 {
        rep["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["group"] == tag)
            .map(|l| l["requests"].as_u64().unwrap())
            .sum()
    };
    let summary = format!(
        "prompt_version:v1 {}, prompt_version:v2 {}, prompt:support {}",
        requests("prompt_version:v1"),
        requests("prompt_version:v2"),
        requests("prompt:support")
    );
    // The reload probes add requests to v1 or v2 beyond the measured 1,000.
    assert!(requests("prompt_version:v1") >= v1 as u64, "{summary}");
    assert!(requests("prompt_version:v2") >= v2 as u64, "{summary}");
    assert!(requests("prompt:support") >= N as u64, "{summary}");
}

/// The prompt named by the `x-switchyard-prompt` header, sticky per virtual key: every key
/// keeps one version across its requests, and the keys split across both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_versions_by_header_stick_to_virtual_keys() {
    let (local, premium, dir) = setup(&["prompt-versions"]).await;
    let extra = format!(
        r#"headers = ["x-switchyard-prompt"]

[plugins.config.prompt-versions.prompts.sales]
sticky = true
[plugins.config.prompt-versions.prompts.sales.versions.a]
system = "Sales prompt A."
[plugins.config.prompt-versions.prompts.sales.versions.b]
system = "Sales prompt B."

[state]
path = "{}"
"#,
        dir.path().join("keys.db").display()
    );
    let text = config(&local, &premium, &dir.path().join("plugins"), &extra);
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, &text).unwrap();
    let keys: Vec<String> = (0..12)
        .map(|k| {
            let team = format!("team-{k}");
            let args = ["keys", "create", "--team", &team, "--json", "--config"];
            let mut args = args.to_vec();
            args.push(cfg.to_str().unwrap());
            let (code, out, err) = run_switchyard(&args, dir.path(), &[]);
            assert_eq!(code, 0, "keys create: {err}");
            let v: Value = serde_json::from_str(out.trim()).unwrap();
            v["key"].as_str().unwrap().to_string()
        })
        .collect();
    let gw = Gateway::start(&text);
    let mut seen = std::collections::HashSet::new();
    for (k, key) in keys.iter().enumerate() {
        let auth = format!("Bearer {key}");
        let mut versions = std::collections::HashSet::new();
        for i in 0..6 {
            let tag = format!("k{k}-{i}");
            let body = json!({"model": "gpt-4o",
                "messages": [{"role": "user", "content": format!("quote {i}")}],
                "metadata": {"req": tag.clone()}});
            let r = chat(
                &gw,
                &body,
                &[("authorization", &auth), ("x-switchyard-prompt", "sales")],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            versions.insert(systems_by_request(&premium)[&tag].clone());
        }
        assert_eq!(versions.len(), 1, "key team-{k} switched: {versions:?}");
        seen.extend(versions);
    }
    assert_eq!(seen.len(), 2, "twelve keys all on one version: {seen:?}");
    stop(gw);
}

// ---------------------------------------------------------------------------------------
// pii-mask

const PII_CONFIG: &str = r#"
[plugins.config.pii-mask]
external_backends = ["openai"]

[plugins.overrides.pii-mask]
validate_streams = "buffer"
on_error = "reject"
"#;

fn fixture() -> Value {
    let text =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/pii/messages.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The streamed answer's text, joined from its content deltas.
fn streamed_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// How the streamed answers of [`pii_round_trip`] reach the client.
#[derive(Clone, Copy, PartialEq)]
enum Streamed {
    /// `validate_streams = "buffer"`: held until complete, restored whole by `validate`.
    Held,
    /// The `chunks` stage (WIT 0.2): relayed chunk by chunk, restored on the way.
    ChunkByChunk,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_never_reaches_the_external_upstream_and_comes_back_complete_and_streamed() {
    pii_round_trip(PII_CONFIG, Streamed::Held).await;
}

/// Without `validate_streams = "buffer"` the stream is not held: `pii-mask`'s `chunks`
/// stage restores each chunk as it passes, placeholders split across chunks included, and
/// the client gets the upstream's chunks (not one re-streamed whole answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_streamed_answers_are_restored_chunk_by_chunk_without_holding_the_stream() {
    let unheld = "\n[plugins.config.pii-mask]\nexternal_backends = [\"openai\"]\n\n[plugins.overrides.pii-mask]\non_error = \"reject\"\n";
    pii_round_trip(unheld, Streamed::ChunkByChunk).await;
}

async fn pii_round_trip(plugin_config: &str, streamed: Streamed) {
    let (local, premium, dir) = setup(&["pii-mask"]).await;
    let gw = Gateway::start(&config(
        &local,
        &premium,
        &dir.path().join("plugins"),
        plugin_config,
    ));
    let fx = fixture();
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    const CHUNKS: usize = 40;
    // The gateway does not forward `x-mock`: the upstream itself cuts answers into 40.
    premium.set_behaviour(Behaviour::parse(
        &format!("chunks={CHUNKS}"),
        &Behaviour::default(),
    ));
    let mut split_placeholders = 0;
    for (i, m) in fx["seeded"].as_array().unwrap().iter().enumerate() {
        let text = m["text"].as_str().unwrap();
        let values: Vec<&str> = m["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let body = json!({"model": "gpt-4o", "mock_echo": true,
            "messages": [{"role": "user", "content": text}]});
        // Complete.
        let r = c.post_json(&url, &body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            text,
            "message {i}: the client gets every original back"
        );
        let sent = premium.requests().last().unwrap().json();
        let upstream_text = sent["messages"][0]["content"].as_str().unwrap().to_string();
        for v in &values {
            assert!(
                !upstream_text.contains(v),
                "message {i}: {v} reached the upstream: {upstream_text}"
            );
        }
        assert!(
            upstream_text.contains('<'),
            "no placeholder in {upstream_text}"
        );
        // Streamed, the echo cut into 40 pieces: placeholders land across chunk borders.
        let mut stream_body = body.clone();
        stream_body["stream"] = json!(true);
        let r = c
            .post_stream(
                &url,
                &stream_body,
                &[("x-mock", &format!("chunks={CHUNKS}"))],
            )
            .await;
        assert_eq!(r.status, 200);
        let events = r.json_events();
        assert_eq!(streamed_text(&events), text, "message {i}, streamed");
        if streamed == Streamed::ChunkByChunk {
            let pieces = events
                .iter()
                .filter(|e| e["choices"][0]["delta"]["content"].is_string())
                .count();
            assert!(
                pieces >= CHUNKS / 2,
                "message {i}: {pieces} content events; the stream was re-sent whole"
            );
        }
        let chars: Vec<char> = upstream_text.chars().collect();
        let step = chars.len().div_ceil(CHUNKS).max(1);
        let mut at = 0;
        for piece in chars.chunks(step) {
            let piece: String = piece.iter().collect();
            let (open, close) = (piece.rfind('<'), piece.rfind('>'));
            if open.is_some_and(|o| close.is_none_or(|c| c < o)) {
                split_placeholders += 1;
            }
            at += piece.len();
        }
        assert_eq!(at, upstream_text.len());
    }
    assert!(
        split_placeholders >= 20,
        "only {split_placeholders} placeholders were split across chunks"
    );
    // Clean messages: no false positive, the upstream sees them unchanged.
    for m in fx["clean"].as_array().unwrap() {
        let text = m.as_str().unwrap();
        let body = json!({"model": "gpt-4o", "mock_echo": true,
            "messages": [{"role": "user", "content": text}]});
        let r = c.post_json(&url, &body, &[]).await;
        assert_eq!(r.status, 200);
        let sent = premium.requests().last().unwrap().json();
        assert_eq!(sent["messages"][0]["content"], text, "false positive");
        assert_eq!(r.json()["choices"][0]["message"]["content"], text);
    }
    let metrics = Client::new().get(&gw.url("/metrics")).await.text();
    for entity in ["email", "phone", "card", "iban", "ssn", "ip"] {
        assert!(
            metrics.contains(&format!(r#"plugin="pii-mask",name="masked_{entity}"}}"#)),
            "no masked_{entity} counter"
        );
    }
    stop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_goes_unmasked_to_local_backends_and_stays_masked_with_restore_off() {
    let (local, premium, dir) = setup(&["pii-mask"]).await;
    let extra = "\n[plugins.config.pii-mask]\nexternal_backends = [\"openai\"]\nrestore = false\n";
    let text = config(&local, &premium, &dir.path().join("plugins"), extra).replace(
        "[[routes]]\nmodel = \"*\"",
        "[[routes]]\nmodel = \"llama\"\ntargets = [{ backend = \"local\" }]\n\n[[routes]]\nmodel = \"*\"",
    );
    let gw = Gateway::start(&text);
    let msg = "I am ann@example.com, card 4111 1111 1111 1111";
    let body = json!({"model": "llama", "mock_echo": true, "messages": [{"role": "user", "content": msg}]});
    let r = chat(&gw, &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(local.requests()[0].json()["messages"][0]["content"], msg);
    let body = json!({"model": "gpt-4o", "mock_echo": true, "messages": [{"role": "user", "content": msg}]});
    let r = chat(&gw, &body, &[]).await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "I am <EMAIL_1>, card <CARD_1>"
    );
    stop(gw);
}

/// A component built against the contract `0.1.0` (the hostile fixture, built with the
/// SDK's `wit-0-1`) loads and runs beside `0.2.0` ones in the same gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_wit_0_1_still_loads_beside_0_2_plugins() {
    let (local, premium, dir) = setup(&["pii-mask"]).await;
    let old = plugins::fixture("hostile");
    let exports = |path: &Path, version: &str| {
        let bytes = std::fs::read(path).unwrap();
        let name = format!("switchyard:plugin/validate@{version}");
        bytes.windows(name.len()).any(|w| w == name.as_bytes())
    };
    assert!(exports(&old, "0.1.0") && !exports(&old, "0.2.0"));
    let pii = dir.path().join("plugins").join("pii-mask.wasm");
    assert!(exports(&pii, "0.2.0") && !exports(&pii, "0.1.0"));
    plugins::install(&old, &dir.path().join("plugins"), "hostile");
    let extra = "\n[plugins.config.hostile]\nstage = \"validate\"\n[plugins.config.pii-mask]\nexternal_backends = [\"openai\"]\n";
    let gw = Gateway::start(&config(
        &local,
        &premium,
        &dir.path().join("plugins"),
        extra,
    ));
    // The 0.1 plugin's `validate` runs: its replacement is the answer.
    let body = json!({"model": "gpt-4o", "x_hostile": "replace",
        "messages": [{"role": "user", "content": "mail ann@example.com"}]});
    let r = chat(&gw, &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "replaced by policy"
    );
    // The 0.2 plugin's stages run in the same request path.
    let sent = premium.requests().last().unwrap().json();
    assert_eq!(sent["messages"][0]["content"], "mail <EMAIL_1>");
    stop(gw);
}
