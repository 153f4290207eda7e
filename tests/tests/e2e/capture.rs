//! `routes[].capture`: sampled production pairs stored off the request path, masked by the
//! route's adapt plugins, exported as dataset lines that `switchyard eval` reads back.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, config_with, plugins, run_switchyard};

fn metric(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line).map(|v| v.trim().parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_of_100_requests_exports_100_lines_that_eval_reads_back() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("plugins");
    plugins::install(
        &plugins::first_party("prompt-adapter"),
        &pdir,
        "prompt-adapter",
    );
    let store = dir.path().join("state.db");
    let extra = format!(
        r#"[telemetry]
capture_content = true
[state]
path = "{}"
[plugins]
dir = "{}"
watch = false
[plugins.config.prompt-adapter]
trim = ["ACME-TOKEN-7731."]
[[routes]]
model = "gpt-4o"
targets = [{{ backend = "mock", model = "served-model" }}]
capture = {{ sample = 1.0 }}
[[routes]]
model = "other"
targets = [{{ backend = "mock" }}]
"#,
        store.display(),
        pdir.display()
    );
    let cfg = config_with(&mock.url(), &extra);
    let gw = Gateway::start(&cfg);
    let client = Client::new();
    for i in 0..100 {
        let body = json!({"model": "gpt-4o", "temperature": 0.2, "messages": [
            {"role": "system", "content": "ACME-TOKEN-7731. Be brief."},
            {"role": "user", "content": format!("question {i}")}],
            "mock_content": format!("answer {i}"), "stream": i % 10 == 0});
        if i % 10 == 0 {
            let r = client
                .post_stream(&gw.url("/v1/chat/completions"), &body, &[])
                .await;
            assert_eq!(r.status, 200);
        } else {
            let r = client
                .post_json(&gw.url("/v1/chat/completions"), &body, &[])
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    // A route without capture stores nothing.
    let r = client
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "other", "messages": [{"role": "user", "content": "x"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = client.get(&gw.url("/metrics")).await.text();
        if metric(&m, "switchyard_capture_total{result=\"stored\"}") == Some(100.0) {
            assert_eq!(
                metric(&m, "switchyard_capture_total{result=\"dropped\"}"),
                Some(0.0)
            );
            break;
        }
        assert!(Instant::now() < deadline, "captures not stored: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (code, out, err) = run_switchyard(
        &[
            "capture",
            "export",
            "--config",
            gw.config_path.to_str().unwrap(),
            "--route",
            "gpt-4o",
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 100, "{err}");
    let l7 = lines
        .iter()
        .find(|l| l["messages"][1]["content"] == "question 7")
        .unwrap();
    assert_eq!(l7["expected"], "answer 7", "expected is the served answer");
    assert_eq!(l7["temperature"], 0.2, "request fields are kept");
    assert!(l7.get("model").is_none());
    // The route's adapt plugin (prompt-adapter's trim) masked the stored request.
    assert_eq!(l7["messages"][0]["content"], "Be brief.");
    assert!(!out.contains("ACME-TOKEN-7731"));
    let streamed = lines
        .iter()
        .find(|l| l["messages"][1]["content"] == "question 30")
        .unwrap();
    assert_eq!(
        streamed["expected"], "answer 30",
        "a streamed answer is captured whole"
    );
    assert!(streamed.get("stream").is_none());

    // --limit: the most recent N.
    let (code, out3, _) = run_switchyard(
        &[
            "capture",
            "export",
            "--config",
            gw.config_path.to_str().unwrap(),
            "--limit",
            "3",
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(out3.lines().count(), 3);

    // Eval reads the export back: the same model answers the same, so quality is 1.
    let ds = dir.path().join("golden.jsonl");
    std::fs::write(&ds, &out).unwrap();
    let (code, stdout, stderr) = run_switchyard(
        &[
            "eval",
            "--config",
            gw.config_path.to_str().unwrap(),
            "--dataset",
            ds.to_str().unwrap(),
            "--target",
            "mock:served-model",
            "--json",
            "--concurrency",
            "16",
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["targets"][0]["examples"], 100);
    assert_eq!(doc["targets"][0]["errors"], 0);
    assert_eq!(doc["targets"][0]["quality"], 1.0, "{doc}");
}

#[test]
fn capture_needs_content_capture_switched_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        "[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:9/v1\"\n[[routes]]\nmodel = \"m\"\ntargets = [{ backend = \"b\" }]\ncapture = { sample = 0.05 }\n",
    )
    .unwrap();
    let (code, _, err) = run_switchyard(
        &["check", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("routes[0].capture") && err.contains("capture_content"),
        "{err}"
    );
}
