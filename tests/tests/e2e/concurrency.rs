//! Many streams at once, and clients that leave early.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, config_with};

const ROUTES: &str = r#"
[[routes]]
model = "*"
targets = [{ backend = "mock" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_parallel_streams_all_complete_in_order() {
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        chunks: 20,
        chunk_delay: Duration::from_millis(5),
        ..Default::default()
    });
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for i in 0..300 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let req = json!({"model":"m","stream":true,"messages":[{"role":"user","content":format!("req {i}")}]});
            client.post_stream(&url, &req, &[]).await
        }));
    }
    let expected: String = (0..20).map(|i| format!("w{i} ")).collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        let text: String = r
            .json_events()
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, expected);
        assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    }
    assert_eq!(mock.streams_completed(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_cancels_upstream_promptly() {
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        chunks: 200,
        chunk_delay: Duration::from_millis(20),
        ..Default::default()
    });
    let gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            // Read three frames, then drop the connection.
            client
                .post_stream_limit(
                    &url,
                    &json!({"model":"m","stream":true,"messages":[]}),
                    &[],
                    3,
                )
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().frames.len(), 3);
    }
    // Each upstream stream notices within a second (its next send fails).
    let start = Instant::now();
    while mock.disconnects() < 20 && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.disconnects(), 20, "upstream streams not cancelled");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert!(gw.wait_for_log("client disconnected mid-stream", Duration::from_secs(2)));
    let m = client.get(&gw.url("/metrics")).await.text();
    assert!(m.contains("switchyard_client_disconnects_total 20"), "{m}");
    // The gateway still serves.
    let r = client
        .post_json(&url, &json!({"model":"m","messages":[]}), &[])
        .await;
    assert_eq!(r.status, 200);
}
