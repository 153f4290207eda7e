//! Governance: virtual keys, rate limits, budgets, the cost ledger and `switchyard spend`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::otlp::{OtlpReceiver, Protocol};
use switchyard_tests::{Gateway, config_with, run_switchyard, skip_unless};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

fn create_key(cfg: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec![
        "keys",
        "create",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let (code, out, err) = run_switchyard(&all, cfg.parent().unwrap(), &[]);
    assert_eq!(code, 0, "keys create failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// Write a config in its own folder (so the CLI can create keys before the gateway starts).
fn config_dir(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The store at `db`, every model of backend `mock` priced (USD per million input and
/// output tokens), one catch-all route to it, then `extra`.
fn priced_mock(db: &Path, input: f64, output: f64, extra: &str) -> String {
    format!(
        r#"
[state]
path = "{}"

[[prices]]
backend = "mock"
model = "*"
input_per_1m = {input:?}
output_per_1m = {output:?}

[[routes]]
model = "*"
targets = [{{ backend = "mock" }}]

{extra}
"#,
        db.display()
    )
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn chat(i: usize) -> Value {
    json!({"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":format!("hello {i}")}]})
}

fn assert_openai_error(r: &switchyard_tests::client::Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(v["error"]["type"].is_string());
}

fn ledger(db: &Path) -> Vec<HashMap<String, Value>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT key_id, team, tags, route, status, outcome, tokens_in, tokens_out, cost_usd,
                    baseline_usd, estimated, stream FROM ledger ORDER BY id",
        )
        .unwrap();
    let names = [
        "key_id",
        "team",
        "tags",
        "route",
        "status",
        "outcome",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "baseline_usd",
        "estimated",
        "stream",
    ];
    stmt.query_map([], |r| {
        let mut m = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            let v: rusqlite::types::Value = r.get(i)?;
            let j = match v {
                rusqlite::types::Value::Null => Value::Null,
                rusqlite::types::Value::Integer(x) => json!(x),
                rusqlite::types::Value::Real(x) => json!(x),
                rusqlite::types::Value::Text(s) => json!(s),
                rusqlite::types::Value::Blob(_) => Value::Null,
            };
            m.insert(n.to_string(), j);
        }
        Ok(m)
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn stop(mut gw: Gateway) {
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(20)).is_some(),
        "gateway did not exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_limits_and_budgets_get_openai_errors_and_are_logged_without_secrets() {
    let mock = MockUpstream::start().await;
    let (dir, cfg) = config_dir("");
    let db = dir.path().join("gov.db");
    let text = config_with(&mock.url(), &priced_mock(&db, 1.0, 1.0, ""));
    std::fs::write(&cfg, &text).unwrap();
    let (good, good_id) = create_key(&cfg, &["--team", "search", "--rpm", "3"]);
    let (poor, _) = create_key(&cfg, &["--team", "search", "--budget-daily", "0.00006"]);
    let gw = Gateway::start(&text);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();

    // Unauthenticated, malformed, unknown.
    let r = c.post_json(&url, &chat(0), &[]).await;
    assert_openai_error(&r, 401, "missing_api_key");
    let r = c
        .post_json(&url, &chat(0), &[("authorization", "Basic dXNlcjpwdw==")])
        .await;
    assert_openai_error(&r, 401, "invalid_api_key");
    let r = c
        .post_json(&url, &chat(0), &[("authorization", "Bearer sk-sy-short")])
        .await;
    assert_openai_error(&r, 401, "invalid_api_key");
    let unknown = format!("sk-sy-{}", "ab".repeat(24));
    let r = c
        .post_json(&url, &chat(0), &[("authorization", &bearer(&unknown))])
        .await;
    assert_openai_error(&r, 401, "invalid_api_key");
    assert_eq!(mock.served(), 0, "a refused request reached the upstream");

    // A good key works, and is not what the upstream sees.
    let r = c
        .post_json(&url, &chat(1), &[("authorization", &bearer(&good))])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = mock.last_request().unwrap();
    assert!(
        seen.headers
            .get("authorization")
            .is_none_or(|v| !v.to_str().unwrap().contains(&good)),
        "the client's key was forwarded upstream"
    );

    // Over the per-key request limit: 429 with Retry-After, before the upstream.
    for i in 0..2 {
        let r = c
            .post_json(&url, &chat(i), &[("authorization", &bearer(&good))])
            .await;
        assert_eq!(r.status, 200);
    }
    let served = mock.served();
    let r = c
        .post_json(&url, &chat(9), &[("authorization", &bearer(&good))])
        .await;
    assert_openai_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "requests");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "retry-after {retry}");
    assert_eq!(mock.served(), served);

    // Over budget: ~$0.000025 a request against $0.00006 a day: two pass, the third is refused.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = c
            .post_json(&url, &chat(i), &[("authorization", &bearer(&poor))])
            .await;
        if r.status == 429 {
            assert_openai_error(&r, 429, "budget_exceeded");
            assert_eq!(r.json()["error"]["type"], "insufficient_quota");
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);

    // Revoked from the CLI while the gateway runs: refused within a second or so.
    let (code, _, err) = run_switchyard(
        &[
            "keys",
            "revoke",
            &good_id,
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let start = Instant::now();
    loop {
        let r = c
            .post_json(&url, &chat(0), &[("authorization", &bearer(&good))])
            .await;
        if r.status == 401 {
            assert_openai_error(&r, 401, "revoked_api_key");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "revocation not seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Refusals are logged (kind and status, never the key); those after authentication are
    // written to the ledger, the 401s only counted.
    assert!(gw.wait_for_log("unauthorized", Duration::from_secs(2)));
    let log = gw.log();
    assert!(log.contains("rate_limited") && log.contains("budget_exceeded"));
    for secret in [&good, &poor, &unknown] {
        assert!(!log.contains(&secret[6..]), "a key leaked into the log");
    }
    stop(gw);
    let rows = ledger(&db);
    let count = |status: i64| rows.iter().filter(|r| r["status"] == json!(status)).count();
    assert_eq!(count(401), 0, "{rows:?}");
    // The rate-limited key keeps getting 429 until its revocation is seen.
    assert!(count(429) >= 3);
    let budget_rows = rows
        .iter()
        .filter(|r| r["outcome"] == "budget_exceeded")
        .count();
    assert_eq!(budget_rows, 2);
    let all = serde_json::to_string(&rows).unwrap();
    for secret in [&good, &poor, &unknown] {
        assert!(!all.contains(&secret[6..]), "a key leaked into the ledger");
    }
    // The poor key's two answered requests cost no more than its budget.
    let spent: f64 = rows
        .iter()
        .filter(|r| r["status"] == json!(200) && r["key_id"] != Value::Null)
        .filter(|r| r["key_id"].as_str() != Some(good_id.as_str()))
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(spent > 0.0 && spent <= 0.00006, "spent {spent}");

    // A restart does not hand out a fresh budget: the day's spend is read back from the ledger.
    let gw = Gateway::start(&text);
    let r = c
        .post_json(
            &gw.url("/v1/chat/completions"),
            &chat(7),
            &[("authorization", &bearer(&poor))],
        )
        .await;
    assert_openai_error(&r, 429, "budget_exceeded");
}

#[test]
fn refuses_to_listen_beyond_loopback_without_client_auth() {
    let base = |extra: &str| {
        format!(
            "[server]\nlisten = \"0.0.0.0:0\"\n{extra}\n[state]\npath = \"g.db\"\n\n[[backends]]\nname = \"m\"\nurl = \"http://127.0.0.1:9/v1\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"m\" }}]\n"
        )
    };
    let (dir, cfg) = config_dir(&base(""));
    let (code, _, err) = run_switchyard(
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("without client authentication") && err.contains("allow_unauthenticated"),
        "{err}"
    );
    // Explicitly allowed: it starts.
    let gw = Gateway::start(&base("\n[auth]\nallow_unauthenticated = true\n"));
    assert!(gw.addr.ip().is_unspecified());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_section_every_admin_endpoint_says_it_is_off() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(
        &mock.url(),
        "[[routes]]\nmodel = \"*\"\ntargets = [{ backend = \"mock\" }]\n",
    ));
    // No `[admin]`: every admin endpoint says the API is off and how to turn it on.
    let c = Client::new();
    for path in ["/admin/keys", "/admin/breakers"] {
        let r = c
            .send(
                Method::GET,
                &gw.url(path),
                "",
                &[("authorization", "Bearer some-token-of-enough-length")],
            )
            .await;
        assert_openai_error(&r, 403, "admin_disabled");
        assert!(r.text().contains("[admin] token_env"), "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_creates_lists_and_revokes_keys() {
    let mock = MockUpstream::start().await;
    let text = config_with(
        &mock.url(),
        r#"
[admin]
token_env = "SY_TEST_ADMIN"

[[routes]]
model = "*"
targets = [{ backend = "mock" }]
"#,
    );
    let gw = Gateway::start_with_env(&text, &[("SY_TEST_ADMIN", ADMIN_TOKEN)]);
    let c = Client::new();
    let admin = bearer(ADMIN_TOKEN);
    let keys_url = gw.url("/admin/keys");

    // One token check for every admin endpoint, governance (`/admin/keys`) and traffic
    // (`/admin/breakers`) alike: the same answers for no token and a wrong one.
    for url in [keys_url.clone(), gw.url("/admin/breakers")] {
        let r = c.send(Method::GET, &url, "", &[]).await;
        assert_openai_error(&r, 401, "missing_admin_token");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("[admin] token_env"),
            "{}",
            r.text()
        );
        let r = c
            .send(
                Method::GET,
                &url,
                "",
                &[("authorization", "Bearer not-the-token")],
            )
            .await;
        assert_openai_error(&r, 401, "invalid_admin_token");
    }
    let r = c
        .send(
            Method::GET,
            &gw.url("/admin/breakers"),
            "",
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = c
        .send(
            Method::POST,
            &keys_url,
            r#"{"team":"ads","tags":["web"],"rpm":100}"#,
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-sy-"));

    // Keys now exist: auth is on.
    let url = gw.url("/v1/chat/completions");
    assert_eq!(c.post_json(&url, &chat(0), &[]).await.status, 401);
    let r = c
        .post_json(&url, &chat(0), &[("authorization", &bearer(&key))])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = c
        .send(Method::GET, &keys_url, "", &[("authorization", &admin)])
        .await;
    assert_eq!(r.status, 200);
    let list = r.json();
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(list["data"][0]["rpm"], 100);
    assert!(!r.text().contains(&key[6..]), "list shows the secret");

    let r = c
        .send(
            Method::DELETE,
            &format!("{keys_url}/{id}"),
            "",
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["revoked_ms"].is_i64());
    let r = c
        .post_json(&url, &chat(0), &[("authorization", &bearer(&key))])
        .await;
    assert_openai_error(&r, 401, "revoked_api_key");

    let r = c
        .send(
            Method::GET,
            &gw.url("/admin/spend?by=team"),
            "",
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["by"], "team");
}

/// The request's tag `req:rN` (from `metadata`), to match ledger rows to requests.
fn req_tag(row: &HashMap<String, Value>) -> Option<usize> {
    let tags: Vec<String> = serde_json::from_str(row["tags"].as_str()?).ok()?;
    tags.iter()
        .find_map(|t| t.strip_prefix("req:r"))
        .and_then(|n| n.parse().ok())
}

#[derive(Debug, Clone)]
enum Expect {
    /// Completed: the upstream's reported usage.
    Usage(u64, u64),
    /// Completed stream without the client's usage chunk: the mock's body and chunk count.
    MockCount {
        marker: String,
        chunks: u64,
    },
    /// Cancelled after the client saw `seen` content chunks of `of`.
    Cancelled {
        seen: u64,
        of: u64,
    },
    Failed(u16),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_matches_upstream_usage_for_1000_mixed_requests_and_spend_matches_ledger() {
    let mock = MockUpstream::start().await;
    let (dir, cfg) = config_dir("");
    let db = dir.path().join("ledger.db");
    let text = config_with(
        &mock.url(),
        &format!(
            r#"
# This test fails some requests on purpose; the breaker (2 % by default) would then refuse
# the rest, which is the traffic tests' business, not the ledger's.
[backends.breaker]
enabled = false

[state]
path = "{}"

[[prices]]
backend = "mock"
model = "local-model"
input_per_1m = 0.10
output_per_1m = 0.20

[[routes]]
model = "gpt-4o"
targets = [{{ backend = "mock", model = "local-model" }}]
baseline = {{ input_per_1m = 2.50, output_per_1m = 10.00 }}

[[routes]]
model = "*"
targets = [{{ backend = "mock", model = "local-model" }}]
"#,
            db.display()
        ),
    );
    std::fs::write(&cfg, &text).unwrap();
    let (k_search, _) = create_key(&cfg, &["--team", "search", "--tag", "web"]);
    let (k_ads, _) = create_key(&cfg, &["--team", "ads"]);
    let gw = Gateway::start(&text);
    let url = gw.url("/v1/chat/completions");
    let curl = gw.url("/v1/completions");
    let c = Client::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(24));
    let mut tasks = tokio::task::JoinSet::new();
    const N: usize = 1000;
    for i in 0..N {
        let c = c.clone();
        let (url, curl) = (url.clone(), curl.clone());
        let key = if i % 2 == 0 {
            k_search.clone()
        } else {
            k_ads.clone()
        };
        let sem = sem.clone();
        tasks.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let auth = bearer(&key);
            let marker = format!("r{i}");
            let meta = json!({"req": marker});
            let chunks = 3 + (i % 7) as u64;
            let mock_hdr = format!("chunks={chunks}");
            let headers = [("authorization", auth.as_str()), ("x-mock", mock_hdr.as_str())];
            let msgs = json!([{"role":"user","content":"x".repeat(i % 50)}]);
            let exp = match i % 10 {
                0..=2 => {
                    let r = c
                        .post_json(&url, &json!({"model":"gpt-4o","messages":msgs,"metadata":meta}), &headers)
                        .await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    let u = &r.json()["usage"];
                    Expect::Usage(
                        u["prompt_tokens"].as_u64().unwrap(),
                        u["completion_tokens"].as_u64().unwrap(),
                    )
                }
                3 => {
                    let r = c
                        .post_json(&curl, &json!({"model":"text-model","prompt":"say","metadata":meta}), &headers)
                        .await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    let u = &r.json()["usage"];
                    Expect::Usage(
                        u["prompt_tokens"].as_u64().unwrap(),
                        u["completion_tokens"].as_u64().unwrap(),
                    )
                }
                4 | 5 => {
                    let body = json!({"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":msgs,"metadata":meta});
                    let r = c.post_stream(&url, &body, &headers).await;
                    assert_eq!(r.status, 200);
                    let ev = r.json_events();
                    let u = &ev.last().unwrap()["usage"];
                    Expect::Usage(
                        u["prompt_tokens"].as_u64().unwrap(),
                        u["completion_tokens"].as_u64().unwrap(),
                    )
                }
                6 | 7 => {
                    // The gateway asks for usage itself and strips it from the client's stream.
                    let body = json!({"model":"gpt-4o","stream":true,"messages":msgs,"metadata":meta});
                    let r = c.post_stream(&url, &body, &headers).await;
                    assert_eq!(r.status, 200);
                    assert!(!r.body().contains("\"usage\":{"));
                    Expect::MockCount { marker, chunks }
                }
                8 => {
                    let slow = "chunks=40,delay_ms=5";
                    let h = [("authorization", auth.as_str()), ("x-mock", slow)];
                    let body = json!({"model":"gpt-4o","stream":true,"messages":msgs,"metadata":meta});
                    // Role chunk + 3 content chunks, then the client goes away.
                    let r = c.post_stream_limit(&url, &body, &h, 4).await;
                    assert_eq!(r.status, 200);
                    let seen = r
                        .json_events()
                        .iter()
                        .filter(|e| e["choices"][0]["delta"]["content"].as_str().is_some_and(|s| !s.is_empty()))
                        .count() as u64;
                    Expect::Cancelled { seen, of: 40 }
                }
                _ => {
                    let h = [("authorization", auth.as_str()), ("x-mock", "status=503")];
                    let r = c
                        .post_json(&url, &json!({"model":"gpt-4o","messages":msgs,"metadata":meta}), &h)
                        .await;
                    assert_eq!(r.status, 503);
                    Expect::Failed(503)
                }
            };
            (i, exp)
        });
    }
    let mut expect: HashMap<usize, Expect> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, e) = r.unwrap();
        expect.insert(i, e);
    }
    // Streams settle when they end; give the last cancellations a moment to be noticed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The mock's own count for streams whose usage chunk the client never saw.
    let recorded: HashMap<String, u64> = mock
        .requests()
        .iter()
        .filter_map(|r| {
            let v = r.json();
            let m = v["metadata"]["req"].as_str()?.to_string();
            Some((m, (r.body.len() / 4).max(1) as u64))
        })
        .collect();
    // A clean shutdown writes everything still queued.
    stop(gw);

    let rows = ledger(&db);
    assert_eq!(rows.len(), N, "one ledger row per request");
    let mut by_req: HashMap<usize, &HashMap<String, Value>> = HashMap::new();
    for r in &rows {
        let i = req_tag(r).expect("every row carries its request's tag");
        assert!(by_req.insert(i, r).is_none(), "two rows for request {i}");
    }
    let mut cancelled = 0;
    for (i, e) in &expect {
        let row = by_req[i];
        let tin = row["tokens_in"].as_u64().unwrap();
        let tout = row["tokens_out"].as_u64().unwrap();
        let est = row["estimated"].as_i64().unwrap();
        match e {
            Expect::Usage(p, c) => {
                assert_eq!(
                    (tin, tout, est, row["status"].as_i64()),
                    (*p, *c, 0, Some(200)),
                    "request {i}"
                );
            }
            Expect::MockCount { marker, chunks } => {
                assert_eq!(
                    (tin, tout, est),
                    (recorded[marker], *chunks, 0),
                    "request {i}"
                );
            }
            Expect::Cancelled { seen, of } => {
                cancelled += 1;
                assert_eq!(row["outcome"], "cancelled", "request {i}: {row:?}");
                assert_eq!(row["status"], 499);
                assert_eq!(est, 1, "a cancelled stream's counts are estimates");
                assert!(
                    tout >= *seen && tout < *of,
                    "request {i}: charged {tout}, client saw {seen}"
                );
                assert!(tin > 0);
            }
            Expect::Failed(s) => {
                assert_eq!(row["status"].as_u64(), Some(u64::from(*s)));
                assert_eq!((tin, tout), (0, 0));
            }
        }
        let team = if i % 2 == 0 { "search" } else { "ads" };
        assert_eq!(row["team"], team);
    }
    assert_eq!(cancelled, N / 10);

    // `switchyard spend` totals match the ledger, and savings are per route.
    let cfg_s = cfg.to_str().unwrap();
    let (code, out, err) = run_switchyard(&["spend", "--json", "--config", cfg_s], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    let rep: Value = serde_json::from_str(&out).unwrap();
    let sum = |k: &str| rows.iter().map(|r| r[k].as_f64().unwrap()).sum::<f64>();
    let total = &rep["total"];
    assert_eq!(total["requests"], N as u64);
    assert_eq!(total["tokens_in"].as_f64().unwrap(), sum("tokens_in"));
    assert_eq!(total["tokens_out"].as_f64().unwrap(), sum("tokens_out"));
    assert!((total["cost_usd"].as_f64().unwrap() - sum("cost_usd")).abs() < 1e-9);
    assert!(total["cost_usd"].as_f64().unwrap() > 0.0);
    for line in rep["lines"].as_array().unwrap() {
        let route = line["route"].as_str().unwrap();
        let (cost, base) =
            rows.iter()
                .filter(|r| r["route"] == route)
                .fold((0.0, 0.0), |(c, b), r| {
                    (
                        c + r["cost_usd"].as_f64().unwrap(),
                        b + r["baseline_usd"].as_f64().unwrap(),
                    )
                });
        assert!((line["savings_usd"].as_f64().unwrap() - (base - cost)).abs() < 1e-9);
        if route == "gpt-4o" {
            assert!(
                line["savings_usd"].as_f64().unwrap() > 0.0,
                "baseline is the premium price"
            );
        } else {
            assert!(
                line["savings_usd"].as_f64().unwrap().abs() < 1e-12,
                "no baseline: no savings"
            );
        }
    }
    let (code, out, _) = run_switchyard(
        &["spend", "--by", "team", "--json", "--config", cfg_s],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0);
    let rep: Value = serde_json::from_str(&out).unwrap();
    let search: u64 = rep["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["group"] == "search")
        .map(|l| l["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(search, N as u64 / 2);
    let (code, out, _) = run_switchyard(
        &["spend", "--by", "tag", "--since", "1h", "--config", cfg_s],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.contains("web") && out.contains("total"), "{out}");
}

/// A throwaway `redis-server` on a free port.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        let ok = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if skip_unless(ok, "redis-server (apt-get install redis-server)") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fire `n` requests at once, alternating between the replicas; the responses.
async fn burst(
    urls: &[String],
    key: &str,
    n: usize,
    body: Value,
) -> Vec<switchyard_tests::client::Resp> {
    let c = Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (c, url, auth, body) = (
            c.clone(),
            urls[i % urls.len()].clone(),
            bearer(key),
            body.clone(),
        );
        tasks.spawn(async move {
            c.post_json(
                &url,
                &body,
                &[
                    ("authorization", &auth),
                    ("x-mock", "chunks=5,first_byte_ms=20"),
                ],
            )
            .await
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_admit_at_most_the_limits_and_trip_budgets_together() {
    let Some(redis) = Redis::start() else { return };
    let mock = MockUpstream::start().await;
    let (dir, cfg) = config_dir("");
    let db = dir.path().join("shared.db");
    let text = config_with(
        &mock.url(),
        &format!(
            r#"
[state]
path = "{}"
redis = "redis://127.0.0.1:{}"

[[prices]]
backend = "mock"
model = "*"
input_per_1m = 10.0
output_per_1m = 10.0

[[routes]]
model = "*"
targets = [{{ backend = "mock" }}]
"#,
            db.display(),
            redis.port
        ),
    );
    std::fs::write(&cfg, &text).unwrap();
    let (k_rpm, _) = create_key(&cfg, &["--team", "a", "--rpm", "20"]);
    let (k_tpm, _) = create_key(&cfg, &["--team", "b", "--tpm", "3000"]);
    let (k_budget, k_budget_id) = create_key(&cfg, &["--team", "c", "--budget-daily", "0.01"]);
    let g1 = Gateway::start(&text);
    let g2 = Gateway::start(&text);
    let urls = [
        g1.url("/v1/chat/completions"),
        g2.url("/v1/chat/completions"),
    ];
    // Keep the burst inside one minute so the sliding window's previous bucket is empty.
    let in_minute = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 60_000) as u64;
    if in_minute > 50_000 {
        tokio::time::sleep(Duration::from_millis(61_000 - in_minute)).await;
    }

    // Requests per minute: 20 across both replicas, not 20 each.
    let rs = burst(&urls, &k_rpm, 80, chat(1)).await;
    let ok = rs.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok, 20,
        "admitted {ok} of 80 with rpm = 20 over two replicas"
    );
    for r in rs.iter().filter(|r| r.status != 200) {
        assert_openai_error(r, 429, "rate_limit_exceeded");
        assert!(r.header("retry-after").is_some());
    }

    // Tokens per minute: each request reserves its prompt estimate + max_tokens (~160) and
    // really uses ~155; whatever is admitted over both replicas fits in 3000.
    let big =
        json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"y".repeat(560)}]});
    let rs = burst(&urls, &k_tpm, 60, big).await;
    let used: u64 = rs
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["usage"]["total_tokens"].as_u64().unwrap())
        .sum();
    let ok = rs.iter().filter(|r| r.status == 200).count();
    assert!(
        used <= 3000,
        "{ok} requests used {used} tokens with tpm = 3000"
    );
    assert!(
        ok >= 10,
        "only {ok} admitted: reservations are too pessimistic"
    );
    let refused: Vec<_> = rs.iter().filter(|r| r.status == 429).collect();
    assert!(!refused.is_empty());
    assert_eq!(refused[0].json()["error"]["type"], "tokens");

    // Budget: $0.01 a day at ~$0.0017 a request, concurrently over both replicas.
    let mid =
        json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"z".repeat(600)}]});
    let rs = burst(&urls, &k_budget, 30, mid.clone()).await;
    let ok: Vec<_> = rs.iter().filter(|r| r.status == 200).collect();
    for r in rs.iter().filter(|r| r.status != 200) {
        assert_openai_error(r, 429, "budget_exceeded");
    }
    let per_request = ok[0].json()["usage"]["total_tokens"].as_f64().unwrap() * 10.0 / 1e6;
    stop(g1);
    stop(g2);
    let spent: f64 = ledger(&db)
        .iter()
        .filter(|r| r["key_id"] == k_budget_id.as_str() && r["status"] == 200)
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(
        (spent - 0.01).abs() <= per_request + 1e-9,
        "budget $0.01 tripped at ${spent} (one request is ${per_request})"
    );
    assert!(spent <= 0.01 + 1e-9, "overspent: ${spent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_and_the_fallback_that_answered_are_each_a_ledger_row() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    primary.set_behaviour(switchyard_tests::mock::Behaviour {
        status: Some(503),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fb.db");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "primary"
url = "{}"
forward_headers = ["x-mock"]
breaker = {{ enabled = false }}

[[backends]]
name = "fallback"
url = "{}"
forward_headers = ["x-mock"]

[[prices]]
backend = "fallback"
model = "*"
input_per_1m = 1.0
output_per_1m = 2.0

[[routes]]
model = "m"
targets = [{{ backend = "primary" }}]
fallback = [{{ backend = "fallback" }}]

[state]
path = "{}"
"#,
        primary.url(),
        fallback.url(),
        db.display()
    );
    let gw = Gateway::start(&text);
    let body =
        json!({"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"req":"r1"}});
    let r = Client::new()
        .post_json(&gw.url("/v1/chat/completions"), &body, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-backend"), Some("fallback"));
    let usage = r.json()["usage"].clone();
    let s = json!({"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}],"metadata":{"req":"r2"}});
    let st = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &s, &[])
        .await;
    assert_eq!(st.status, 200);
    stop(gw);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(String, String, i64, i64, i64, String)> = conn
        .prepare(
            "SELECT backend, kind, status, tokens_in, tokens_out, tags FROM ledger ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for req in ["req:r1", "req:r2"] {
        let mine: Vec<_> = rows.iter().filter(|r| r.5.contains(req)).collect();
        // The primary's failure(s), free; then the fallback's answer, billed.
        let (last, before) = mine.split_last().unwrap();
        assert!(
            !before.is_empty(),
            "{req}: no row for the failed primary: {mine:?}"
        );
        for f in before {
            assert_eq!(
                (f.0.as_str(), f.2, f.3, f.4),
                ("primary", 503, 0, 0),
                "{f:?}"
            );
            assert!(f.1 == "primary" || f.1 == "retry");
        }
        assert_eq!(
            (last.0.as_str(), last.1.as_str(), last.2),
            ("fallback", "fallback", 200)
        );
        assert!(last.3 > 0 && last.4 > 0);
    }
    let first_answer = rows
        .iter()
        .find(|r| r.5.contains("req:r1") && r.2 == 200)
        .unwrap();
    assert_eq!(first_answer.3, usage["prompt_tokens"].as_i64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_calls_are_ledger_rows_priced_at_the_shadow_target() {
    let primary = MockUpstream::start().await;
    let mirror = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sh.db");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "primary"
url = "{}"
forward_headers = ["x-mock"]

[[backends]]
name = "mirror"
url = "{}"
forward_headers = ["x-mock"]

[[prices]]
backend = "mirror"
model = "*"
input_per_1m = 1.0
output_per_1m = 1.0

[[routes]]
model = "m"
targets = [{{ backend = "primary" }}]
shadow = {{ backend = "mirror", model = "cand", sample = 1.0 }}

[state]
path = "{}"
"#,
        primary.url(),
        mirror.url(),
        db.display()
    );
    let gw = Gateway::start(&text);
    let r = Client::new()
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let start = Instant::now();
    while mirror.served() == 0 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The comparison (the mocks answer alike) and the shadow call's cost reach /metrics.
    let agree =
        r#"switchyard_shadow_comparisons_total{route="m",backend="mirror",result="agree"} 1"#;
    let mut metrics = String::new();
    let start = Instant::now();
    while !metrics.contains(agree) && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = Client::new().get(&gw.url("/metrics")).await.text();
    }
    assert!(metrics.contains(agree), "{metrics}");
    let metric_cost: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"switchyard_cost_usd_total{backend="mirror",model="cand"} "#)
        })
        .and_then(|v| v.parse().ok())
        .expect("the shadow call's cost");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(gw);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (backend, model, tin, tout, cost): (String, String, i64, i64, f64) = conn
        .query_row(
            "SELECT backend, model, tokens_in, tokens_out, cost_usd FROM ledger WHERE kind = 'shadow'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!((backend.as_str(), model.as_str()), ("mirror", "cand"));
    assert!(tin > 0 && tout > 0);
    assert!((cost - (tin + tout) as f64 / 1e6).abs() < 1e-12);
    assert!((metric_cost - cost).abs() < 1e-9, "{metric_cost} vs {cost}");
    let primaries: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM ledger WHERE kind = 'primary'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(primaries, 1);
}

/// The access log line and the server span of a request carry what the ledger knows about
/// it: the key, its team and the cost (for a stream, once it ended); the key check is an
/// `auth` span, marked with the error when it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_and_trace_carry_the_key_team_and_cost() {
    let rx = OtlpReceiver::start(Protocol::Grpc).await;
    let mock = MockUpstream::start().await;
    let (dir, cfg) = config_dir("");
    let db = dir.path().join("gov.db");
    let text = config_with(
        &mock.url(),
        &priced_mock(&db, 2.0, 8.0, &rx.config(1.0, "log_format = \"json\"")),
    );
    std::fs::write(&cfg, &text).unwrap();
    let (key, id) = create_key(&cfg, &["--team", "search"]);
    let gw = Gateway::start_with_env(&text, &[("SWITCHYARD_LOG_FORMAT", "")]);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    let auth = bearer(&key);
    let r = c
        .post_json(&url, &chat(1), &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = r.json()["usage"].clone();
    let mut streamed = chat(2);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let s = c
        .post_stream(&url, &streamed, &[("authorization", &auth)])
        .await;
    assert_eq!(s.status, 200);
    let stream_usage = s
        .json_events()
        .iter()
        .find(|e| e["usage"].is_object())
        .map(|e| e["usage"].clone())
        .expect("usage chunk");
    assert!(gw.wait_for_log("\"stream\":true", Duration::from_secs(5)));

    let access = gw.access_lines();
    assert_eq!(access.len(), 2, "{}", gw.log());
    for (line, usage) in access.iter().zip([&usage, &stream_usage]) {
        assert_eq!(line["key_id"], id.as_str(), "{line}");
        assert_eq!(line["team"], "search", "{line}");
        let want = (usage["prompt_tokens"].as_f64().unwrap() * 2.0
            + usage["completion_tokens"].as_f64().unwrap() * 8.0)
            / 1e6;
        let cost = line["cost_usd"].as_f64().expect("cost_usd");
        assert!(
            want > 0.0 && (cost - want).abs() < 1e-12,
            "{line}: want {want}"
        );
    }
    assert!(!gw.log().contains(&key), "the secret is never logged");

    let r = c
        .post_json(&url, &chat(3), &[("authorization", "Bearer sk-sy-short")])
        .await;
    assert_eq!(r.status, 401);
    let spans = rx
        .wait_until(Duration::from_secs(15), |s| {
            s.iter().filter(|s| s.name == "auth").count() == 3
                && s.iter()
                    .filter(|s| s.name == "POST /v1/chat/completions")
                    .count()
                    == 3
        })
        .await;
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "POST /v1/chat/completions")
        .collect();
    for (server, line) in servers.iter().zip(&access) {
        assert_eq!(
            server.attr("switchyard.key_id"),
            Some(&Value::from(id.as_str()))
        );
        assert_eq!(server.attr("switchyard.team"), Some(&Value::from("search")));
        assert_eq!(server.attr("switchyard.cost_usd"), Some(&line["cost_usd"]));
        let auth: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "auth" && s.parent_span_id == server.span_id)
            .collect();
        assert_eq!(auth.len(), 1);
        assert_ne!(auth[0].status_code, 2);
    }
    let refused = servers[2];
    assert_eq!(
        refused.attr("http.response.status_code"),
        Some(&Value::from(401))
    );
    let auth = spans
        .iter()
        .find(|s| s.name == "auth" && s.parent_span_id == refused.span_id)
        .unwrap();
    assert_eq!(auth.status_code, 2);
    assert_eq!(auth.attr("error.type"), Some(&Value::from("unauthorized")));
}
