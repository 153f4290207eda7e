//! The exact response cache: hits answered without the upstream, streams replayed, the
//! canonical key, bypasses, ledger rows with the saving, `/metrics`, and replicas sharing
//! hits through Redis.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::redis::Redis;
use switchyard_tests::{Gateway, config_with, run_switchyard};

fn routes(state: &str) -> String {
    format!(
        r#"
{state}
[[prices]]
backend = "mock"
model = "*"
input_per_1m = 10.0
output_per_1m = 10.0

[[routes]]
model = "gpt-4o"
targets = [{{ backend = "mock", model = "llama-3.1-8b" }}]
cache = {{ ttl_secs = 60 }}

[[routes]]
model = "nocache"
targets = [{{ backend = "mock" }}]
"#
    )
}

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

/// Wait until `f` holds (a streamed miss is kept when the relay ends, just after the client
/// read the last byte).
async fn eventually(mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "condition not met in 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_are_answered_from_the_cache_with_the_saving_in_the_ledger() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gov.db");
    let text = config_with(
        &mock.url(),
        &routes(&format!("[state]\npath = \"{}\"", db.display())),
    );
    let mut gw = Gateway::start(&text);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();

    let first = c.post_json(&url, &chat("hello"), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(mock.completions(), 1);

    // Same request, members reordered, other whitespace, another user: a hit, same body,
    // no upstream call.
    let same = r#"{ "messages": [ {"content": "hello", "role": "user"} ],
        "user": "someone-else", "temperature": 0, "model": "gpt-4o" }"#;
    let hit = c.post(&url, same, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(hit.body, first.body);
    assert_eq!(hit.header("x-switchyard-backend"), Some("mock"));
    assert_eq!(mock.completions(), 1);

    // The same request streamed: answered from the complete entry, as a stream.
    let s = c
        .post_stream(
            &url,
            &json!({"model": "gpt-4o", "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "hello"}]}),
            &[],
        )
        .await;
    assert_eq!(s.header("x-switchyard-cache"), Some("hit"));
    let text: String = s
        .json_events()
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4 ");
    assert!(s.body().ends_with("data: [DONE]\n\n"));
    assert_eq!(mock.completions(), 1);

    // A streamed miss is kept as its events: replayed to the next stream, and it answers a
    // complete request too.
    let body = json!({"model": "gpt-4o", "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "streamed"}]});
    let s1 = c.post_stream(&url, &body, &[]).await;
    assert_eq!(s1.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(mock.completions(), 2);
    eventually(async || {
        c.get(&gw.url("/metrics"))
            .await
            .text()
            .contains("switchyard_cache_entries 2")
    })
    .await;
    let s2 = c.post_stream(&url, &body, &[]).await;
    assert_eq!(s2.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(
        s2.body(),
        s1.body(),
        "the replayed events are the served ones"
    );
    let whole = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "temperature": 0,
        "messages": [{"role": "user", "content": "streamed"}]}),
            &[],
        )
        .await;
    assert_eq!(whole.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(
        whole.json()["choices"][0]["message"]["content"],
        "w0 w1 w2 w3 w4 "
    );
    assert_eq!(whole.json()["usage"]["completion_tokens"], 5);
    assert_eq!(mock.completions(), 2);

    // Not deterministic: bypassed. `cache-control: no-cache`: bypassed, the upstream asked.
    let r = c
        .post_json(
            &url,
            &json!({"model": "gpt-4o", "temperature": 0.7,
        "messages": [{"role": "user", "content": "hello"}]}),
            &[],
        )
        .await;
    assert_eq!(r.header("x-switchyard-cache"), Some("bypass"));
    assert_eq!(mock.completions(), 3);
    let r = c
        .post_json(&url, &chat("hello"), &[("cache-control", "no-cache")])
        .await;
    assert_eq!(r.header("x-switchyard-cache"), Some("bypass"));
    assert_eq!(mock.completions(), 4);
    // A seed makes a request deterministic enough.
    let seeded =
        json!({"model": "gpt-4o", "seed": 7, "messages": [{"role": "user", "content": "s"}]});
    c.post_json(&url, &seeded, &[]).await;
    let r = c.post_json(&url, &seeded, &[]).await;
    assert_eq!(r.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(mock.completions(), 5);
    // A route without a cache says nothing.
    let r = c
        .post_json(
            &url,
            &json!({"model": "nocache", "temperature": 0,
        "messages": [{"role": "user", "content": "hello"}]}),
            &[],
        )
        .await;
    assert_eq!(r.header("x-switchyard-cache"), None);
    // The Responses API and Anthropic clients share the cache (their requests become chat).
    let m = json!({"model": "gpt-4o", "max_tokens": 5, "temperature": 0,
        "messages": [{"role": "user", "content": "anthropic"}]});
    let a1 = c.post_json(&gw.url("/v1/messages"), &m, &[]).await;
    let a2 = c.post_json(&gw.url("/v1/messages"), &m, &[]).await;
    assert_eq!(a2.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(a1.json()["content"], a2.json()["content"]);

    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains("switchyard_cache_requests_total{route=\"gpt-4o\",result=\"hit\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_cache_hit_ratio{route=\"gpt-4o\"} 0.6"),
        "{metrics}"
    );

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("SELECT kind, tokens_in, tokens_out, cost_usd, saved_usd FROM ledger ORDER BY id LIMIT 2")
        .unwrap();
    let rows: Vec<(String, i64, i64, f64, f64)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (miss, hit) = (&rows[0], &rows[1]);
    assert_eq!(miss.0, "primary");
    assert_eq!(hit.0, "cache");
    assert_eq!(
        (hit.1, hit.2),
        (miss.1, miss.2),
        "a hit counts the answer's tokens"
    );
    assert!(miss.3 > 0.0);
    assert_eq!(hit.3, 0.0, "a hit costs nothing");
    assert!(
        (hit.4 - miss.3).abs() < 1e-12,
        "the saving is what the miss cost: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_hits() {
    let Some(redis) = Redis::start() else { return };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = format!(
        "[state]\npath = \"{}\"\nredis = \"{}\"",
        dir.path().join("s.db").display(),
        redis.url()
    );
    let text = config_with(&mock.url(), &routes(&state));
    let g1 = Gateway::start(&text);
    let g2 = Gateway::start(&text);
    let c = Client::new();
    let r1 = c
        .post_json(&g1.url("/v1/chat/completions"), &chat("shared"), &[])
        .await;
    assert_eq!(r1.header("x-switchyard-cache"), Some("miss"));
    // Stored off the request path: wait until Redis has it.
    let port = redis.port.to_string();
    eventually(async || {
        std::process::Command::new("redis-cli")
            .args(["-p", &port, "--scan", "--pattern", "switchyard:cache:*"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    })
    .await;
    let r2 = c
        .post_json(&g2.url("/v1/chat/completions"), &chat("shared"), &[])
        .await;
    assert_eq!(r2.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(r2.body, r1.body);
    assert_eq!(mock.completions(), 1);
}

/// A virtual key created with `keys create` and these limit flags.
fn create_key(cfg: &std::path::Path, dir: &std::path::Path, limits: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--json", "--team", "t"];
    args.extend_from_slice(limits);
    args.extend_from_slice(&["--config", cfg.to_str().unwrap()]);
    let (code, out, err) = run_switchyard(&args, dir, &[]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_count_against_the_keys_request_and_token_limits() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gov.db");
    let cfg = dir.path().join("switchyard.toml");
    let text = config_with(
        &mock.url(),
        &routes(&format!("[state]\npath = \"{}\"", db.display())),
    );
    std::fs::write(&cfg, &text).unwrap();
    let by_requests = create_key(&cfg, dir.path(), &["--rpm", "2"]);
    // A request here reserves about 27 tokens and uses about 29 (the mock's count): two
    // fit in 70, a third does not, unless the hit's tokens went uncounted.
    let by_tokens = create_key(&cfg, dir.path(), &["--tpm", "70"]);
    let by_estimate = create_key(&cfg, dir.path(), &["--tpm", "70"]);
    let gw = Gateway::start(&text);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    let body = json!({"model": "gpt-4o", "temperature": 0, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hello"}]});

    for (key, what) in [(by_requests, "requests"), (by_tokens, "tokens")] {
        let auth = format!("Bearer {key}");
        let h = [("authorization", auth.as_str())];
        let before = mock.completions();
        let first = c.post_json(&url, &body, &h).await;
        assert_eq!(first.status, 200, "{}", first.text());
        let hit = c.post_json(&url, &body, &h).await;
        assert_eq!(hit.status, 200, "{}", hit.text());
        assert_eq!(hit.header("x-switchyard-cache"), Some("hit"));
        // The cached answer is there, but this key has used its allowance.
        let third = c.post_json(&url, &body, &h).await;
        assert_eq!(third.status, 429, "{what}: {}", third.text());
        let msg = third.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(msg.contains(what), "{msg}");
        assert_ne!(third.header("x-switchyard-cache"), Some("hit"));
        // At most the first request reached the upstream (the second key hits the entry
        // the first one left).
        assert!(mock.completions() <= before + 1);
    }

    // An answer that reported no usage: its hits count the gateway's estimate.
    let auth = format!("Bearer {by_estimate}");
    let h = [("authorization", auth.as_str()), ("x-mock", "no_usage")];
    let body = json!({"model": "gpt-4o", "temperature": 0, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "no usage here"}]});
    let first = c.post_json(&url, &body, &h).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-switchyard-cache"), Some("miss"));
    assert!(first.json().get("usage").is_none());
    let hit = c.post_json(&url, &body, &h).await;
    assert_eq!(hit.header("x-switchyard-cache"), Some("hit"));
    let third = c.post_json(&url, &body, &h).await;
    assert_eq!(third.status, 429, "{}", third.text());
}
