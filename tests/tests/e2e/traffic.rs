//! Migration traffic control: fallback under injected faults, circuit breaking, pools,
//! live reload and rollback under load, shadow pairs and their report, pins and overrides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, run_switchyard};

const TOKEN: &str = "test-admin-token-0123456789";

fn chat(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

fn two_backend_config(
    primary: &str,
    fallback: &str,
    primary_extra: &str,
    route_extra: &str,
) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "primary"
url = "{primary}"
forward_headers = ["x-mock"]
first_byte_timeout_secs = 0.5
timeout_secs = 2
{primary_extra}

[[backends]]
name = "fallback"
url = "{fallback}"
forward_headers = ["x-mock"]
first_byte_timeout_secs = 5
timeout_secs = 10

[[routes]]
model = "m"
targets = [{{ backend = "primary" }}]
fallback = [{{ backend = "fallback" }}]
{route_extra}
"#
    )
}

fn text_of_stream(body: &str) -> String {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_answers_every_fault_of_the_primary() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    // Breaker off: every request must meet the fault and still be answered.
    let gw = Gateway::start(&two_backend_config(
        &primary.url(),
        &fallback.url(),
        "breaker = { enabled = false }",
        "",
    ));
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let faults: &[(&str, Behaviour, &str)] = &[
        (
            "500s",
            Behaviour {
                status: Some(500),
                ..Default::default()
            },
            "http_500",
        ),
        (
            "html 502",
            Behaviour {
                status: Some(502),
                html_error: true,
                ..Default::default()
            },
            "http_502",
        ),
        (
            "429",
            Behaviour {
                status: Some(429),
                retry_after: Some(1),
                ..Default::default()
            },
            "http_429",
        ),
        (
            "reset",
            Behaviour {
                reset: true,
                ..Default::default()
            },
            "broken",
        ),
        (
            "hang",
            Behaviour {
                hang: true,
                ..Default::default()
            },
            "timeout",
        ),
        (
            "slow first byte",
            Behaviour {
                first_byte_delay: Duration::from_millis(1500),
                ..Default::default()
            },
            "timeout",
        ),
        (
            "garbage",
            Behaviour {
                garbage: true,
                ..Default::default()
            },
            "invalid_answer",
        ),
    ];
    for (name, b, outcome) in faults {
        primary.set_behaviour(b.clone());
        for i in 0..4 {
            let r = c.post_json(&url, &chat(false), &[]).await;
            assert_eq!(r.status, 200, "{name} #{i}: {}", r.text());
            assert_eq!(r.header("x-switchyard-backend"), Some("fallback"), "{name}");
            assert_eq!(
                r.json()["choices"][0]["message"]["content"],
                "w0 w1 w2 w3 w4 "
            );
            let attempts = r
                .header("x-switchyard-attempts")
                .unwrap_or_default()
                .to_string();
            assert!(
                attempts.starts_with(&format!("primary@{} {outcome}", primary.addr)),
                "{name}: {attempts}"
            );
            assert!(
                attempts.ends_with(&format!("fallback@{} ok", fallback.addr)),
                "{name}: {attempts}"
            );
            let s = c.post_stream(&url, &chat(true), &[]).await;
            assert_eq!(s.status, 200, "{name} stream: {}", s.body());
            assert_eq!(s.header("x-switchyard-backend"), Some("fallback"));
            assert_eq!(text_of_stream(&s.body()), "w0 w1 w2 w3 w4 ", "{name}");
        }
    }
    // A stream that breaks before its first chunk also moves on.
    primary.set_behaviour(Behaviour {
        break_after: Some(0),
        ..Default::default()
    });
    for _ in 0..3 {
        let s = c.post_stream(&url, &chat(true), &[]).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.header("x-switchyard-backend"), Some("fallback"));
        assert!(!s.broken);
        assert_eq!(text_of_stream(&s.body()), "w0 w1 w2 w3 w4 ");
    }
    assert!(gw.wait_for_log("fallback: more than one attempt", Duration::from_secs(2)));
    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains("switchyard_attempts_total{backend=\"primary\",outcome=\"http_500\"} 8"),
        "{metrics}"
    );
    // A client mistake is not retried elsewhere: the primary's 400 is the answer.
    primary.set_behaviour(Behaviour {
        status: Some(400),
        ..Default::default()
    });
    let before = fallback.served();
    let r = c.post_json(&url, &chat(false), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(fallback.served(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_stops_sending_to_the_dead_target_and_closes_after_recovery() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    let gw = Gateway::start_with_env(
        &format!(
            "{}\n[admin]\ntoken_env = \"SY_ADMIN\"\n",
            two_backend_config(
                &primary.url(),
                &fallback.url(),
                "breaker = { error_rate = 0.02, window_secs = 60, min_requests = 5, cooldown_secs = 1 }",
                "",
            )
        ),
        &[("SY_ADMIN", TOKEN)],
    );
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let auth = format!("Bearer {TOKEN}");
    let breakers = || {
        let c = c.clone();
        let u = gw.url("/admin/breakers");
        let auth = auth.clone();
        async move {
            let r = c.get_with(&u, &[("authorization", &auth)]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["breakers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["backend"] == "primary")
                .unwrap()["state"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(breakers().await, "closed");
    primary.set_behaviour(Behaviour {
        status: Some(500),
        ..Default::default()
    });
    for _ in 0..40 {
        let r = c.post_json(&url, &chat(false), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-backend"), Some("fallback"));
    }
    // Opened after min_requests failures; the rest never reached the dead primary.
    assert_eq!(primary.served(), 5, "primary kept receiving traffic");
    assert_eq!(breakers().await, "open");
    let r = c.post_json(&url, &chat(false), &[]).await;
    assert!(
        r.header("x-switchyard-attempts")
            .unwrap()
            .starts_with("primary skipped_breaker_open"),
        "{:?}",
        r.header("x-switchyard-attempts")
    );
    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains(&format!(
            "switchyard_breaker_state{{backend=\"primary\",url=\"{}\"}} 1",
            primary.url()
        )),
        "{metrics}"
    );
    // Unauthenticated admin calls are refused.
    let r = c.get(&gw.url("/admin/breakers")).await;
    assert_eq!(r.status, 401);

    // Recovery: after the cool-down one probe goes through, succeeds, and closes it.
    primary.set_behaviour(Behaviour::default());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.post_json(&url, &chat(false), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-backend"), Some("primary"));
    assert_eq!(breakers().await, "closed");
    for _ in 0..10 {
        let r = c.post_json(&url, &chat(false), &[]).await;
        assert_eq!(r.header("x-switchyard-backend"), Some("primary"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_shares_load_and_a_killed_worker_loses_no_request() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "pool"
urls = ["{}", "{}"]
forward_headers = ["x-mock"]
first_byte_timeout_secs = 5
pool = {{ health_interval_secs = 0.2 }}

[[routes]]
model = "m"
targets = [{{ backend = "pool" }}]
"#,
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");

    // Even sharing under concurrency.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let r = c
                    .post_json(&url, &chat(false), &[("x-mock", "first_byte_ms=3")])
                    .await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (sa, sb) = (a.served() as f64, b.served() as f64);
    let share = sa / (sa + sb);
    eprintln!("pool share: a {sa}, b {sb} ({:.1}%)", share * 100.0);
    assert!((0.35..=0.65).contains(&share), "uneven: a {sa}, b {sb}");

    // Kill one worker under load: no failed request, traffic moves within a second.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    // Complete answers only: a stream already relaying when its worker dies cannot be
    // replayed elsewhere without duplicating what the client has read; it ends with an
    // error event (tested in streaming.rs).
    for _ in 0..8 {
        let (c, url, stop, failures, total) = (
            c.clone(),
            url.clone(),
            stop.clone(),
            failures.clone(),
            total.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .post_json(&url, &chat(false), &[("x-mock", "first_byte_ms=2")])
                    .await;
                let ok = r.status == 200;
                total.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a_after = a.served();
    let b_before = b.served();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        a.served(),
        a_after,
        "traffic still reached the killed worker a second later"
    );
    assert!(
        b.served() > b_before + 20,
        "the surviving worker took the traffic"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests out of {}",
        total.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_rollback_under_load_fail_no_request() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let cfg = |backend: &str| {
        format!(
            r#"[server]
listen = "127.0.0.1:0"

[admin]
token_env = "SY_ADMIN"

[[backends]]
name = "a"
url = "{}"
forward_headers = ["x-mock"]

[[backends]]
name = "b"
url = "{}"
forward_headers = ["x-mock"]

[[routes]]
model = "m"
targets = [{{ backend = "{backend}" }}]
"#,
            a.url(),
            b.url()
        )
    };
    let gw = Gateway::start_with_env(&cfg("a"), &[("SY_ADMIN", TOKEN)]);
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let auth = format!("Bearer {TOKEN}");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for i in 0..8 {
        let (c, url, stop, failures, total) = (
            c.clone(),
            url.clone(),
            stop.clone(),
            failures.clone(),
            total.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = if i % 2 == 0 {
                    // Streams long enough to span a swap.
                    let s = c
                        .post_stream(&url, &chat(true), &[("x-mock", "chunks=20,delay_ms=10")])
                        .await;
                    s.status == 200 && !s.broken && s.body().ends_with("data: [DONE]\n\n")
                } else {
                    c.post_json(&url, &chat(false), &[]).await.status == 200
                };
                total.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let served_by = |c: Client, url: String| async move {
        c.post_json(&url, &chat(false), &[])
            .await
            .header("x-switchyard-backend")
            .unwrap_or_default()
            .to_string()
    };
    let wait_for = |want: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if served_by(c.clone(), url.clone()).await == want {
                    return start.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("never switched to {want}");
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. The watched file changes: picked up without a signal.
    std::fs::write(&gw.config_path, cfg("b")).unwrap();
    wait_for("b").await;

    // 2. Rollback through the admin API: the previous version is back at once.
    let t = Instant::now();
    let r = c
        .post(&gw.url("/admin/rollback"), "", &[("authorization", &auth)])
        .await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served_by(c.clone(), url.clone()).await, "a");
    eprintln!("rollback through the admin API answered in {took:?}");
    assert!(took < Duration::from_secs(1), "rollback took {took:?}");

    // 3. An invalid config is refused with every problem; the running one stays.
    std::fs::write(
        &gw.config_path,
        cfg("b").replace(
            "targets = [{ backend = \"b\" }]",
            "targets = [{ backend = \"nope\" }]",
        ),
    )
    .unwrap();
    let r = c
        .post(&gw.url("/admin/reload"), "", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "invalid_config");
    assert_eq!(
        v["error"]["problems"][0]["path"],
        "routes[0].targets[0].backend"
    );
    assert!(gw.wait_for_log("config reload rejected", Duration::from_secs(2)));
    assert_eq!(served_by(c.clone(), url.clone()).await, "a");

    // 4. SIGHUP reloads a fixed file.
    std::fs::write(&gw.config_path, cfg("b")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status();
    assert!(gw.wait_for_log("SIGHUP received", Duration::from_secs(2)));
    wait_for("b").await;

    // 5. `switchyard rollback` talks to the running gateway.
    let (code, out, err) = run_switchyard(
        &[
            "rollback",
            "--config",
            gw.config_path.to_str().unwrap(),
            "--url",
            &gw.url(""),
        ],
        gw.dir.path(),
        &[("SY_ADMIN", TOKEN)],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(served_by(c.clone(), url.clone()).await, "a");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let n = total.load(Ordering::Relaxed);
    assert!(n > 40, "load generator too slow: {n}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests out of {n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_pairs_are_recorded_and_the_report_matches_them() {
    let primary = MockUpstream::start().await;
    let shadow = MockUpstream::start().await;
    // The shadow answers shorter unless told otherwise: half the pairs will disagree.
    shadow.set_behaviour(Behaviour {
        chunks: 2,
        ..Default::default()
    });
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"

[state]
path = "state.db"

[[backends]]
name = "primary"
url = "{}"
forward_headers = ["x-mock"]

[[backends]]
name = "local"
url = "{}"
forward_headers = ["x-mock"]

[[routes]]
model = "m"
targets = [{{ backend = "primary", model = "big" }}]
shadow = {{ backend = "local", model = "small", sample = 1.0 }}

[[prices]]
backend = "primary"
model = "big"
input_per_1m = 2.0
output_per_1m = 8.0

[[prices]]
backend = "local"
model = "*"
input_per_1m = 0.1
output_per_1m = 0.2
"#,
        primary.url(),
        shadow.url()
    );
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    for i in 0..10 {
        let h: &[(&str, &str)] = if i % 2 == 0 {
            &[("x-mock", "chunks=2")]
        } else {
            &[]
        };
        let r = c.post_json(&url, &chat(false), h).await;
        assert_eq!(r.status, 200);
        // The served answer is the primary's, untouched.
        assert_eq!(r.header("x-switchyard-backend"), Some("primary"));
        let want = if i % 2 == 0 {
            "w0 w1 "
        } else {
            "w0 w1 w2 w3 w4 "
        };
        assert_eq!(r.json()["choices"][0]["message"]["content"], want);
    }
    // Streams are compared too: one agreeing, one not.
    for h in [&[("x-mock", "chunks=2")][..], &[]] {
        let s = c.post_stream(&url, &chat(true), h).await;
        assert_eq!(s.status, 200);
        assert!(s.body().ends_with("data: [DONE]\n\n"));
    }
    let db = gw.dir.path().join("state.db");
    let start = Instant::now();
    let rows = loop {
        let n = rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row("SELECT COUNT(*) FROM shadow_pairs", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .unwrap_or(0);
        if n >= 12 || start.elapsed() > Duration::from_secs(10) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows, 12);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (agreed, compared, models): (i64, i64, String) = conn
        .query_row(
            "SELECT SUM(agree), COUNT(agree), MIN(primary_model || '>' || shadow_model) FROM shadow_pairs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((agreed, compared), (6, 12));
    assert_eq!(models, "big>small");
    // The shadow really received the mirrored requests with its own model name.
    assert_eq!(shadow.requests().len(), 12);
    assert_eq!(shadow.last_request().unwrap().json()["model"], "small");

    let report = |extra: &[&str]| -> Value {
        let mut args = vec![
            "shadow",
            "report",
            "--config",
            gw.config_path.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = run_switchyard(&args, gw.dir.path(), &[]);
        assert_eq!(code, 0, "{out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["routes"][0].clone()
    };
    let r = report(&[]);
    assert_eq!(r["route"], "m");
    assert_eq!(r["pairs"], 12);
    assert_eq!(r["compared"], 12);
    assert_eq!(r["agreed"], 6);
    assert_eq!(r["agreement_rate"], 0.5);
    assert_eq!(r["not_compared_streams"], 0);
    assert!(r["primary_prompt_tokens"].as_u64().unwrap() > 0, "{r}");
    // Costs come from the config's `[[prices]]`, per backend and model, as in the ledger;
    // a `--price` for a model name overrides them.
    let priced = |r: &Value, side: &str, (i, o): (f64, f64)| {
        let t = |k: &str| r[format!("{side}_{k}_tokens")].as_f64().unwrap();
        let want = (t("prompt") * i + t("completion") * o) / 1e6;
        let got = r[format!("{side}_cost_usd")].as_f64().unwrap();
        assert!((got - want).abs() < 1e-12, "{side}: {got} != {want}: {r}");
    };
    priced(&r, "primary", (2.0, 8.0));
    priced(&r, "shadow", (0.1, 0.2));
    let r = report(&["--price", "small=1,1"]);
    priced(&r, "primary", (2.0, 8.0));
    priced(&r, "shadow", (1.0, 1.0));
    let (code, out, _) = run_switchyard(
        &[
            "shadow",
            "report",
            "--config",
            gw.config_path.to_str().unwrap(),
            "--route",
            "m",
            "--since",
            "1h",
        ],
        gw.dir.path(),
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.contains("agreement 50.0% (6 of 12)"), "{out}");
    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains("switchyard_shadow_recorded_total 12"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_need_an_allowed_team_and_overrides_follow_the_caller() {
    let old = MockUpstream::start().await;
    let new = MockUpstream::start().await;
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "old"
url = "{}"
forward_headers = ["x-mock"]

[[backends]]
name = "new"
url = "{}"
forward_headers = ["x-mock"]

[[routes]]
model = "m"
targets = [{{ backend = "old" }}]
pin_teams = ["sre"]
overrides = [{{ team = "beta", targets = [{{ backend = "new", model = "llama" }}] }}]
"#,
        old.url(),
        new.url()
    );
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let r = c.post_json(&url, &chat(false), &[]).await;
    assert_eq!(r.header("x-switchyard-backend"), Some("old"));
    let r = c
        .post_json(&url, &chat(false), &[("x-switchyard-team", "beta")])
        .await;
    assert_eq!(r.header("x-switchyard-backend"), Some("new"));
    assert_eq!(r.header("x-switchyard-model"), Some("llama"));
    let r = c
        .post_json(&url, &chat(false), &[("x-switchyard-target", "new")])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "pin_not_allowed");
    let r = c
        .post_json(
            &url,
            &chat(false),
            &[
                ("x-switchyard-target", "new:qwen"),
                ("x-switchyard-team", "sre"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-backend"), Some("new"));
    assert_eq!(new.last_request().unwrap().json()["model"], "qwen");
    // Control headers never travel upstream.
    assert!(
        new.last_request()
            .unwrap()
            .headers
            .get("x-switchyard-team")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_pool_answers_a_clear_503_and_total_failure_lists_every_attempt() {
    let slow = MockUpstream::start().await;
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "gpu"
url = "{}"
forward_headers = ["x-mock"]
pool = {{ max_in_flight = 2, queue = 1, queue_timeout_secs = 0.2 }}

[[routes]]
model = "m"
targets = [{{ backend = "gpu" }}]
"#,
        slow.url()
    );
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            c.post_json(&url, &chat(false), &[("x-mock", "first_byte_ms=2000")])
                .await
        }));
    }
    let mut ok = 0;
    let mut saturated = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                assert_eq!(
                    r.json()["error"]["code"],
                    "backend_saturated",
                    "{}",
                    r.text()
                );
                assert!(
                    r.header("x-switchyard-attempts")
                        .unwrap()
                        .ends_with("saturated")
                );
                saturated += 1;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    // Two in flight; the one queued times out after 0.2 s (the slots are held 2 s).
    assert_eq!((ok, saturated), (2, 4));
    assert!(slow.served() <= 2);

    // Every target failing: the last error, and the header lists each attempt.
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    primary.set_behaviour(Behaviour {
        status: Some(500),
        ..Default::default()
    });
    fallback.set_behaviour(Behaviour {
        status: Some(503),
        ..Default::default()
    });
    let gw = Gateway::start(&two_backend_config(&primary.url(), &fallback.url(), "", ""));
    let r = c
        .post_json(&gw.url("/v1/chat/completions"), &chat(false), &[])
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-switchyard-attempts").unwrap(),
        format!(
            "primary@{} http_500, fallback@{} http_503",
            primary.addr, fallback.addr
        )
    );
    assert_eq!(r.header("x-switchyard-backend"), Some("fallback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_a_url_out_and_passing_ones_bring_it_back() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "pool"
urls = ["{}", "{}"]
forward_headers = ["x-mock"]
pool = {{ health_path = "/healthz", health_interval_secs = 0.2 }}

[[routes]]
model = "m"
targets = [{{ backend = "pool" }}]
"#,
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let send = |n: usize| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            for _ in 0..n {
                let r = c.post_json(&url, &chat(false), &[]).await;
                assert_eq!(r.status, 200);
            }
        }
    };
    send(30).await;
    assert!(a.completions() > 0 && b.completions() > 0);
    // The checks really run, on the configured path.
    assert!(a.requests().iter().any(|r| r.path == "/healthz"));

    a.set_healthy(false);
    assert!(gw.wait_for_log("health check failed", Duration::from_secs(3)));
    let before = a.completions();
    send(30).await;
    assert_eq!(
        a.completions(),
        before,
        "an unhealthy URL still got traffic"
    );
    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains(&format!(
            "switchyard_upstream_healthy{{backend=\"pool\",url=\"{}\"}} 0",
            a.url()
        )),
        "{metrics}"
    );

    a.set_healthy(true);
    assert!(gw.wait_for_log("health check passed", Duration::from_secs(3)));
    send(30).await;
    assert!(
        a.completions() > before,
        "a recovered URL got no traffic back"
    );
}
