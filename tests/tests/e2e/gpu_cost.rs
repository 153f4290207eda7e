//! `backends[].gpu_hour_usd`: a self-hosted backend's cost per token, derived from the GPU's
//! hourly price and the busy time and tokens its workers report on `/metrics`; used by
//! `eval`, the ledger (`spend`), `check`, and marked derived.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, run_switchyard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_hour_usd_prices_tokens_by_measured_busy_time() {
    let mock = MockUpstream::start().await;
    // Each answer: 100 prompt + 100 generated tokens, 0.5 s of the worker's busy time.
    mock.set_behaviour(Behaviour {
        usage: Some(100),
        ..Behaviour::default()
    });
    mock.emulate_worker(0.5);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"
[[backends]]
name = "gpu"
url = "{url}"
gpu_hour_usd = 3.6
[[backends]]
name = "api"
url = "{url}"
[[prices]]
backend = "api"
model = "big"
input_per_1m = 5.0
output_per_1m = 15.0
[[routes]]
model = "r"
targets = [{{ backend = "gpu", model = "small" }}]
[state]
path = "{db}"
"#,
        url = mock.url(),
        db = db.display()
    );
    std::fs::write(dir.path().join("switchyard.toml"), &cfg).unwrap();

    // $3.60 an hour is $0.001 a busy second; 0.5 s per 200 tokens: $2.50 per million tokens.
    let per_token = 3.6 / 3600.0 * 0.5 / 200.0;
    let data: String = (0..20)
        .map(|i| {
            format!(
                "{}\n",
                json!({"messages": [{"role": "user", "content": format!("q{i}")}], "expected": "x"})
            )
        })
        .collect();
    std::fs::write(dir.path().join("ds.jsonl"), data).unwrap();
    let (code, out, err) = run_switchyard(
        &[
            "eval",
            "--config",
            "switchyard.toml",
            "--dataset",
            "ds.jsonl",
            "--baseline",
            "api:big",
            "--target",
            "gpu:small",
            "--json",
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let gpu = &doc["targets"][1];
    assert_eq!(gpu["target"], "gpu:small");
    assert_eq!(gpu["cost_derived"], true);
    let cost = gpu["cost_usd"].as_f64().unwrap();
    assert!((cost - 20.0 * 200.0 * per_token).abs() < 1e-12, "{gpu}");
    assert_eq!(doc["targets"][0]["cost_derived"], false);
    // 20 × (100 × $5 + 100 × $15) / 1M = $0.04 against $0.01.
    assert!((gpu["cost_vs_baseline"].as_f64().unwrap() - 0.25).abs() < 1e-9);

    // `check` reads the workers' counters and says the price is derived.
    let (code, out, err) =
        run_switchyard(&["check", "--config", "switchyard.toml"], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("derived from gpu_hour_usd $3.6/h"), "{out}");
    assert!(out.contains("$2.5000 per 1M tokens (derived"), "{out}");

    // Serving: the ledger prices the backend's rows with the derived price.
    let gw = Gateway::start(&cfg);
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = client.get(&gw.url("/metrics")).await.text();
        if m.contains("switchyard_derived_price_usd_per_1m_tokens{backend=\"gpu\"} 2.5") {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (cost, derived): (f64, bool) = loop {
        if let Ok(v) = conn.query_row(
            "SELECT cost_usd, cost_derived FROM ledger WHERE backend = 'gpu' AND kind = 'primary'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        ) {
            break v;
        }
        assert!(Instant::now() < deadline, "no ledger row");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(derived);
    assert!((cost - 200.0 * per_token).abs() < 1e-12, "{cost}");
    let (code, out, err) = run_switchyard(
        &["spend", "--config", gw.config_path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 rows have derived costs"), "{out}");
}
