//! The policy plugins from the migration playbook, through the real gateway: the learned
//! router (`switchyard router train` then `learned-router`), prompt versions
//! (`prompt-versions`, with the ledger and `spend --by tag`) and PII masking (`pii-mask`).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::client::{Client, Resp};
use switchyard_tests::mock::MockUpstream;
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
