//! What a hostile client or a careless upstream tries against the gateway's limits and
//! accounting: label cardinality, limit bypasses, absurd usage, ledger fill, admin token
//! guessing, and a store that lost its keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::client::{Client, Resp};
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, config_with, run_switchyard};

fn create_key(cfg: &Path, args: &[&str]) -> String {
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
    v["key"].as_str().unwrap().to_string()
}

/// A config in its own folder (so the CLI can create keys before the gateway starts), with
/// its store at `gov.db` there, every model of `mock` priced, and a catch-all route.
fn governed(mock: &MockUpstream, extra: &str) -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gov.db");
    let text = config_with(
        &mock.url(),
        &format!(
            r#"
[state]
path = "{}"

[[prices]]
backend = "mock"
model = "*"
input_per_1m = 1.0
output_per_1m = 2.0

[[routes]]
model = "*"
targets = [{{ backend = "mock" }}]

{extra}
"#,
            db.display()
        ),
    );
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, &text).unwrap();
    (dir, cfg, db, text)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn assert_error(r: &Resp, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    v
}

fn ledger_rows(db: &Path) -> Vec<HashMap<String, Value>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT status, outcome, tokens_in, tokens_out, cost_usd FROM ledger ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        let mut m = HashMap::new();
        m.insert("status".into(), json!(r.get::<_, i64>(0)?));
        m.insert("outcome".into(), json!(r.get::<_, String>(1)?));
        m.insert("tokens_in".into(), json!(r.get::<_, i64>(2)?));
        m.insert("tokens_out".into(), json!(r.get::<_, i64>(3)?));
        m.insert("cost_usd".into(), json!(r.get::<_, f64>(4)?));
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
async fn huge_or_repeated_max_tokens_cannot_slip_past_a_token_limit() {
    let mock = MockUpstream::start().await;
    let (_dir, cfg, _db, text) = governed(&mock, "");
    let key = create_key(&cfg, &["--team", "t", "--tpm", "1000"]);
    let gw = Gateway::start(&text);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_str())];

    // 2^64-1 must not wrap the reservation to a few tokens.
    let body = r#"{"model":"m","max_tokens":18446744073709551615,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = c.post(&url, body, &headers).await;
    let v = assert_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "tokens");

    // `max_tokens` twice: judged on one, sent with the other. Refused, naming the key.
    let body = r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}],"max_tokens":100000}"#;
    let r = c.post(&url, body, &headers).await;
    let v = assert_error(&r, 400, "duplicate_key");
    assert_eq!(v["error"]["param"], "max_tokens");
    assert_eq!(mock.served(), 0, "a refused request reached the upstream");

    // A fair request still passes.
    let body = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = c.post(&url, body, &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    stop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_floods_are_counted_not_written_to_the_ledger() {
    let mock = MockUpstream::start().await;
    let (_dir, cfg, db, text) = governed(&mock, "");
    let key = create_key(&cfg, &["--team", "t"]);
    let gw = Gateway::start(&text);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    for i in 0..200 {
        let wrong = format!("Bearer sk-sy-{:048x}", i);
        let headers: &[(&str, &str)] = if i % 2 == 0 {
            &[]
        } else {
            &[("authorization", wrong.as_str())]
        };
        let r = c.post(&url, body, headers).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let r = c
        .post(&url, body, &[("authorization", &bearer(&key))])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains("switchyard_refused_total{reason=\"auth\"} 200"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "switchyard_requests_total{route=\"none\",backend=\"none\",status=\"401\"} 200"
        )
    );
    stop(gw);
    let rows = ledger_rows(&db);
    assert_eq!(
        rows.len(),
        1,
        "only the authenticated request is a row: {rows:?}"
    );
    assert_eq!(rows[0]["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_model_names_never_become_metric_labels() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&config_with(
        &mock.url(),
        r#"
[[routes]]
model = "named"
targets = [{ backend = "mock", model = "upstream-named" }]

[[routes]]
model = "*"
targets = [{ backend = "mock" }]
"#,
    ));
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    let chat =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let r = c.post_json(&url, &chat("named"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = c.get(&gw.url("/metrics")).await.text().len();
    // 10,000 distinct names of ~200 bytes, 16 at a time.
    const NAMES: usize = 10_000;
    let filler = "x".repeat(190);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (c, url, filler) = (c.clone(), url.clone(), filler.clone());
        tasks.push(tokio::spawn(async move {
            for i in (t..NAMES).step_by(16) {
                let model = format!("client-{i}-{filler}");
                let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
                let r = c.post_json(&url, &body, &[]).await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = c.get(&gw.url("/metrics")).await.text();
    eprintln!(
        "/metrics: {before} bytes before, {} after {NAMES} distinct client model names",
        metrics.len()
    );
    assert!(
        !metrics.contains("client-"),
        "a client's model became a label"
    );
    assert!(metrics.contains("gen_ai_request_model=\"other\""));
    // Configured names keep their own label.
    assert!(metrics.contains("gen_ai_request_model=\"upstream-named\""));
    // The names add one label value's series, not one per name.
    assert!(metrics.len() < 1024 * 1024, "{} bytes", metrics.len());
    assert!(
        metrics.len() < before + 64 * 1024,
        "{} bytes before, {} after",
        before,
        metrics.len()
    );

    // An over-long model name is refused, naming the field.
    let r = c.post_json(&url, &chat(&"m".repeat(257)), &[]).await;
    let v = assert_error(&r, 400, "string_above_max_length");
    assert_eq!(v["error"]["param"], "model");
}

const ADMIN_TOKEN: &str = "abuse-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_upstream_usage_is_clamped_flagged_and_reports_still_add_up() {
    let mock = MockUpstream::start().await;
    let (dir, cfg, db, text) = governed(&mock, "[admin]\ntoken_env = \"SY_ABUSE_ADMIN\"\n");
    let key = create_key(&cfg, &["--team", "t", "--tpm", "100000000"]);
    let gw = Gateway::start_with_env(&text, &[("SY_ABUSE_ADMIN", ADMIN_TOKEN)]);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    let auth = bearer(&key);
    // 2^62 tokens each: two such rows overflow an integer SUM.
    let lie = [
        ("authorization", auth.as_str()),
        ("x-mock", "usage=4611686018427387904"),
    ];
    let body = r#"{"model":"m","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..2 {
        let r = c.post(&url, body, &lie).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The key's token window was charged the clamped count, not 2^62: it still admits.
    let r = c
        .post(&url, body, &[("authorization", auth.as_str())])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .get_with(
            &gw.url("/admin/spend?by=team"),
            &[("authorization", &bearer(ADMIN_TOKEN))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    stop(gw);

    let rows = ledger_rows(&db);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let flags: Vec<i64> = conn
        .prepare("SELECT usage_clamped FROM ledger ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(flags, [1, 1, 0]);
    for r in &rows[..2] {
        // Completion at most `max_tokens`; prompt at most the body's bytes plus slack.
        assert_eq!(r["tokens_out"], 50, "{r:?}");
        let tin = r["tokens_in"].as_i64().unwrap();
        assert!(tin <= body.len() as i64 + 65_536, "{r:?}");
        assert!(r["cost_usd"].as_f64().unwrap() < 1.0, "{r:?}");
    }
    let (code, out, err) = run_switchyard(
        &["spend", "--json", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let rep: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["total"]["requests"], 3);
}

/// Run `switchyard serve` on `cfg` and wait for it to exit by itself: its exit code and
/// stderr, or `None` if it was still running (it started) after 20 s.
fn serve_refuses(cfg: &Path) -> Option<(i32, String)> {
    use std::io::Read;
    let mut child =
        std::process::Command::new(switchyard_tests::binary("switchyard", "switchyard"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .current_dir(cfg.parent().unwrap())
            .env_remove("SWITCHYARD_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status.code().unwrap_or(-1), err));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_keys_does_not_turn_auth_off() {
    let mock = MockUpstream::start().await;
    let (_dir, cfg, db, text) = governed(&mock, "");
    let key = create_key(&cfg, &["--team", "t"]);
    let gw = Gateway::start(&text);
    let url = gw.url("/v1/chat/completions");
    let c = Client::new();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let r = c
        .post(&url, body, &[("authorization", &bearer(&key))])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Every key deleted behind the gateway's back: auth stays on.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM keys", []).unwrap();
    // Past the key cache's refresh (500 ms), twice over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c.post(&url, body, &[]).await;
    assert_error(&r, 401, "missing_api_key");
    stop(gw);

    // And it refuses to start on a store that recorded keys but holds none.
    let (code, err) = serve_refuses(&cfg).expect("the gateway started without its keys");
    assert_ne!(code, 0);
    assert!(
        err.contains("recorded that client auth is on") && err.contains("keys create"),
        "{err}"
    );
}

#[test]
fn auth_required_without_keys_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nrequired = true\n\n[state]\npath = \"{}\"\n\n[[backends]]\nname = \"m\"\nurl = \"http://127.0.0.1:9/v1\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"m\" }}]\n",
            dir.path().join("fresh.db").display()
        ),
    )
    .unwrap();
    let (code, err) = serve_refuses(&cfg).expect("started with auth required and no keys");
    assert_ne!(code, 0);
    assert!(
        err.contains("[auth] required = true") && err.contains("holds no keys"),
        "{err}"
    );
    // With a key it starts.
    create_key(&cfg, &["--team", "t"]);
    let gw = Gateway::start(&std::fs::read_to_string(&cfg).unwrap());
    stop(gw);
}

fn admin_config(mock: &MockUpstream, admin_extra: &str) -> String {
    config_with(
        &mock.url(),
        &format!(
            "[admin]\ntoken_env = \"SY_ABUSE_ADMIN\"\n{admin_extra}\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"mock\" }}]\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_throttled_and_key_values_are_checked() {
    use http::Method;
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with_env(&admin_config(&mock, ""), &[("SY_ABUSE_ADMIN", ADMIN_TOKEN)]);
    let c = Client::new();
    let url = gw.url("/admin/breakers");
    let good = bearer(ADMIN_TOKEN);
    let get = |token: String| {
        let c = &c;
        let url = &url;
        async move { c.get_with(url, &[("authorization", token.as_str())]).await }
    };
    // A few typos are free; then each wrong token blocks the address for longer.
    for i in 0..6 {
        let r = get(format!("Bearer wrong-token-number-{i}")).await;
        assert_error(&r, 401, "invalid_admin_token");
    }
    let r = get("Bearer wrong-token-number-7".into()).await;
    assert_error(&r, 429, "admin_throttled");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    // While blocked, not even the right token is checked.
    assert_error(&get(good.clone()).await, 429, "admin_throttled");
    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(200)).await;
    let r = get(good.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Key settings are checked, each refusal naming its field.
    let keys = gw.url("/admin/keys");
    let post = |body: &'static str| {
        let c = &c;
        let keys = &keys;
        let good = &good;
        async move {
            c.send(
                Method::POST,
                keys,
                body,
                &[("authorization", good.as_str())],
            )
            .await
        }
    };
    for (body, field) in [
        (r#"{"team":"a","rpm":18446744073709551615}"#, "rpm"),
        (r#"{"team":"a","tpm":0}"#, "tpm"),
        (r#"{"team":"   "}"#, "team"),
        (r#"{"team":"a","budget_daily":-1}"#, "budget_daily"),
    ] {
        let r = post(body).await;
        let v = assert_error(&r, 400, "invalid_value");
        assert_eq!(v["error"]["param"], field, "{body}: {v}");
    }
    let r = post(r#"{"team":"a","rpm":9223372036854775807}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["rpm"], 9223372036854775807_u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_can_have_a_listener_of_its_own() {
    let mock = MockUpstream::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start_with_env(
        &admin_config(&mock, &format!("listen = \"127.0.0.1:{port}\"")),
        &[("SY_ABUSE_ADMIN", ADMIN_TOKEN)],
    );
    assert!(gw.wait_for_log("admin API listening", Duration::from_secs(5)));
    let c = Client::new();
    let good = bearer(ADMIN_TOKEN);
    let auth = [("authorization", good.as_str())];
    // Not on the public port any more.
    let r = c.get_with(&gw.url("/admin/breakers"), &auth).await;
    assert_error(&r, 404, "unknown_url");
    // On its own port, and nothing else is.
    let admin = format!("http://127.0.0.1:{port}");
    let r = c.get_with(&format!("{admin}/admin/breakers"), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get(&format!("{admin}/v1/models")).await;
    assert_eq!(r.status, 404);
    // The public port still serves the API.
    let r = c.get(&gw.url("/v1/models")).await;
    assert_eq!(r.status, 200);
    stop(gw);
}
