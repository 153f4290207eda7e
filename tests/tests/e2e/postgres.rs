//! `[state] postgres`: replicas with separate working folders (no shared file) share keys,
//! the ledger and `spend` through one PostgreSQL server started by the test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::postgres::{PASSWORD, Postgres};
use switchyard_tests::{Gateway, config_with, run_switchyard};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const PW_ENV: &str = "SY_TEST_PG_PASSWORD";

fn env() -> [(&'static str, &'static str); 2] {
    [(PW_ENV, PASSWORD), ("SY_TEST_ADMIN", ADMIN_TOKEN)]
}

/// A gateway config on `pg`, the mock priced, the admin API on.
fn config(mock: &MockUpstream, pg: &Postgres, extra: &str) -> String {
    config_with(
        &mock.url(),
        &format!(
            r#"
[backends.breaker]
enabled = false

[admin]
token_env = "SY_TEST_ADMIN"

[state]
postgres = "{}"
postgres_password_env = "{PW_ENV}"

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
            pg.url()
        ),
    )
}

/// `switchyard <args> --config <gw's config>` in the gateway's own folder.
fn cli(gw: &Gateway, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--config", gw.config_path.to_str().unwrap()]);
    let (code, out, err) = run_switchyard(&all, gw.dir.path(), &env());
    assert_eq!(code, 0, "switchyard {args:?} failed: {err}");
    out
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn chat_status(c: &Client, gw: &Gateway, key: &str) -> u16 {
    let body = json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]});
    c.post_json(
        &gw.url("/v1/chat/completions"),
        &body,
        &[("authorization", &bearer(key))],
    )
    .await
    .status
}

/// Poll until `gw` answers `key` with `want`; how long it took.
async fn wait_status(c: &Client, gw: &Gateway, key: &str, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        let s = chat_status(c, gw, key).await;
        if s == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still {s} (want {want}) after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Create a key with the CLI from a folder of its own (no replica's); its secret.
fn create_key(text: &str, team: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = run_switchyard(
        &[
            "keys",
            "create",
            "--team",
            team,
            "--json",
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
        &env(),
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["key"].as_str().unwrap().to_string()
}

/// SIGTERM and wait for a clean exit (everything queued written), keeping its folder.
fn shut_down(gw: &mut Gateway) {
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "gateway did not exit cleanly: {}",
        gw.log()
    );
}

fn stop(mut gw: Gateway) {
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "gateway did not exit cleanly: {}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_or_revoked_on_one_replica_holds_on_the_other() {
    let Some(pg) = Postgres::start() else { return };
    let mock = MockUpstream::start().await;
    let text = config(&mock, &pg, "");
    // Client auth on from the start (a key exists), so B refuses a key it does not know.
    let first = create_key(&text, "first");
    let a = Gateway::start_with_env(&text, &env());
    let b = Gateway::start_with_env(&text, &env());
    assert_ne!(a.dir.path(), b.dir.path());
    let c = Client::new();
    assert_eq!(chat_status(&c, &b, &first).await, 200);
    assert_eq!(
        chat_status(&c, &b, &format!("sk-sy-{}", "0".repeat(48))).await,
        401
    );
    let admin = bearer(ADMIN_TOKEN);

    // A key created through A's admin API.
    let r = c
        .send(
            Method::POST,
            &a.url("/admin/keys"),
            r#"{"team":"shared"}"#,
            &[
                ("authorization", &admin),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(chat_status(&c, &a, &key).await, 200);
    let took = wait_status(&c, &b, &key, 200).await;
    eprintln!("key created on A answered on B after {took:?}");

    // Feedback given on B for a request A served: the ledger row is shared.
    let r = c
        .post_json(
            &a.url("/v1/chat/completions"),
            &json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"rate me"}]}),
            &[("authorization", &bearer(&key))],
        )
        .await;
    assert_eq!(r.status, 200);
    let request_id = r.header("x-switchyard-request-id").unwrap().to_string();
    let start = Instant::now();
    loop {
        let r = c
            .post_json(
                &b.url("/v1/feedback"),
                &json!({"request_id": request_id, "thumbs": "up"}),
                &[("authorization", &bearer(&key))],
            )
            .await;
        if r.status == 200 {
            break;
        }
        // A's writer may not have written the row yet.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Revoked through B's admin API: A refuses it.
    let r = c
        .send(
            Method::DELETE,
            &b.url(&format!("/admin/keys/{id}")),
            "",
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat_status(&c, &b, &key).await, 401);
    let took = wait_status(&c, &a, &key, 401).await;
    eprintln!("key revoked on B refused on A after {took:?}");

    // The CLI, from either replica's folder, sees the same keys.
    let listed: Value = serde_json::from_str(&cli(&b, &["keys", "list", "--json"])).unwrap();
    assert_eq!(
        pg.psql("SELECT COUNT(*) FROM feedback WHERE score = 1"),
        "1"
    );
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(listed[1]["revoked_ms"].is_i64(), "{listed}");
    assert!(listed[0]["revoked_ms"].is_null(), "{listed}");
    stop(a);
    stop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_on_either_replica_sums_the_upstream_usage_of_both() {
    let Some(pg) = Postgres::start() else { return };
    let mock = MockUpstream::start().await;
    let text = config(&mock, &pg, "");
    // Keys made before the replicas start, from a third folder: every request below is one
    // the test counts.
    let admin_dir = tempfile::tempdir().unwrap();
    let admin_cfg = admin_dir.path().join("switchyard.toml");
    std::fs::write(&admin_cfg, &text).unwrap();
    let keys: Vec<String> = ["t1", "t2"]
        .iter()
        .map(|team| {
            let (code, out, err) = run_switchyard(
                &[
                    "keys",
                    "create",
                    "--team",
                    team,
                    "--json",
                    "--config",
                    admin_cfg.to_str().unwrap(),
                ],
                admin_dir.path(),
                &env(),
            );
            assert_eq!(code, 0, "{err}");
            let v: Value = serde_json::from_str(&out).unwrap();
            v["key"].as_str().unwrap().to_string()
        })
        .collect();
    let a = Gateway::start_with_env(&text, &env());
    let b = Gateway::start_with_env(&text, &env());
    let c = Client::new();
    let urls = [a.url(""), b.url("")];
    const N: usize = 1000;
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (c, sem) = (c.clone(), sem.clone());
        let base = urls[i % 2].clone();
        let auth = bearer(&keys[(i / 2) % 2]);
        tasks.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let msgs = json!([{"role":"user","content":"x".repeat(i % 40)}]);
            let chunks = format!("chunks={}", 2 + i % 5);
            let h = [("authorization", auth.as_str()), ("x-mock", chunks.as_str())];
            let chat = format!("{base}/v1/chat/completions");
            match i % 4 {
                0 => {
                    let r = c.post_json(&chat, &json!({"model":"m","messages":msgs}), &h).await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    let u = &r.json()["usage"];
                    (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap())
                }
                1 => {
                    let body = json!({"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":msgs});
                    let r = c.post_stream(&chat, &body, &h).await;
                    assert_eq!(r.status, 200);
                    let ev = r.json_events();
                    let u = &ev.last().unwrap()["usage"];
                    (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap())
                }
                2 => {
                    let r = c
                        .post_json(&format!("{base}/v1/completions"), &json!({"model":"m","prompt":"say"}), &h)
                        .await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    let u = &r.json()["usage"];
                    (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap())
                }
                _ => {
                    let h = [("authorization", auth.as_str()), ("x-mock", "status=503")];
                    let r = c.post_json(&chat, &json!({"model":"m","messages":msgs}), &h).await;
                    assert_eq!(r.status, 503);
                    (0, 0)
                }
            }
        });
    }
    let (mut tin, mut tout) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (i, o) = r.unwrap();
        tin += i;
        tout += o;
    }
    let (mut a, mut b) = (a, b);
    let (a_dir, a_cfg) = (a.dir.path().to_path_buf(), a.config_path.clone());
    let (b_dir, b_cfg) = (b.dir.path().to_path_buf(), b.config_path.clone());
    // A clean shutdown writes everything still queued.
    shut_down(&mut a);
    shut_down(&mut b);
    let expect_cost = (tin as f64 * 1.0 + tout as f64 * 2.0) / 1e6;
    for (dir, cfg) in [(a_dir, a_cfg), (b_dir, b_cfg)] {
        let (code, out, err) = run_switchyard(
            &["spend", "--json", "--config", cfg.to_str().unwrap()],
            &dir,
            &env(),
        );
        assert_eq!(code, 0, "{err}");
        let rep: Value = serde_json::from_str(&out).unwrap();
        let total = &rep["total"];
        assert_eq!(total["requests"], N as u64, "{rep}");
        assert_eq!(total["errors"], N as u64 / 4, "{rep}");
        assert_eq!(total["tokens_in"], tin, "{rep}");
        assert_eq!(total["tokens_out"], tout, "{rep}");
        let cost = total["cost_usd"].as_f64().unwrap();
        assert!((cost - expect_cost).abs() < 1e-9, "{cost} vs {expect_cost}");
        let (code, out, err) = run_switchyard(
            &[
                "spend",
                "--by",
                "team",
                "--json",
                "--config",
                cfg.to_str().unwrap(),
            ],
            &dir,
            &env(),
        );
        assert_eq!(code, 0, "{err}");
        let rep: Value = serde_json::from_str(&out).unwrap();
        for team in ["t1", "t2"] {
            let n: u64 = rep["lines"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["group"] == team)
                .map(|l| l["requests"].as_u64().unwrap())
                .sum();
            assert_eq!(n, N as u64 / 2, "{team}: {rep}");
        }
    }
    assert_eq!(pg.psql("SELECT COUNT(*) FROM ledger"), N.to_string());
}

#[test]
fn a_database_down_at_start_is_a_clear_error_and_a_failed_exit() {
    // A free port with nothing listening: no PostgreSQL needed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"

[[backends]]
name = "mock"
url = "http://127.0.0.1:9"

[state]
postgres = "postgres://switchyard@127.0.0.1:{port}/postgres"

[[routes]]
model = "*"
targets = [{{ backend = "mock" }}]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, &text).unwrap();
    let (code, _, err) = run_switchyard(
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("postgres://switchyard@127.0.0.1:{port}/postgres"))
            && err.contains("cannot connect"),
        "{err}"
    );
    // And a password inside the URL is refused before anything is tried.
    std::fs::write(
        &cfg,
        text.replace("switchyard@127", "switchyard:hunter2@127"),
    )
    .unwrap();
    let (code, _, err) = run_switchyard(
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("state.postgres") && err.contains("postgres_password_env"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// `GET /admin/rollouts` on `gw`: route `m`'s rollout, if this replica has it.
async fn rollout(c: &Client, gw: &Gateway) -> Option<Value> {
    let r = c
        .get_with(
            &gw.url("/admin/rollouts"),
            &[("authorization", &bearer(ADMIN_TOKEN))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["rollouts"]
        .as_array()?
        .iter()
        .find(|x| x["route"] == "m")
        .cloned()
}

/// Wait (up to `deadline`) until `gw`'s view of `m`'s rollout satisfies `done`.
async fn wait_rollout(
    c: &Client,
    gw: &Gateway,
    deadline: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let s = rollout(c, gw).await;
        if let Some(s) = &s
            && done(s)
        {
            return s.clone();
        }
        assert!(
            start.elapsed() < deadline,
            "rollout never got there; last: {s:#?}\nlog:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests in a loop on every URL until stopped: (answered 200, anything else).
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, u64)>>,
}

impl Load {
    fn start(urls: &[String], key: Option<&str>, workers: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|w| {
                let url = urls[w % urls.len()].clone();
                let auth = key.map(bearer);
                let stop = stop.clone();
                tokio::spawn(async move {
                    let c = Client::new();
                    let (mut ok, mut bad) = (0, 0);
                    let body = json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]});
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let h: Vec<(&str, &str)> =
                            auth.iter().map(|a| ("authorization", a.as_str())).collect();
                        let r = c.post_json(&url, &body, &h).await;
                        if r.status == 200 {
                            ok += 1;
                        } else {
                            bad += 1;
                            eprintln!("load: {} {}", r.status, r.text());
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut bad) = (0, 0);
        for t in self.tasks {
            let (o, b) = t.await.unwrap();
            ok += o;
            bad += b;
        }
        (ok, bad)
    }
}

fn transitions(s: &Value) -> Vec<(String, String)> {
    s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["from"].as_str().unwrap().to_string(),
                h["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const DECIDES: &str = "this replica holds the lease and decides";

/// Two backends for a rollout of route `m` from `old` to `new`.
fn rollout_config(pg: &Postgres, old: &MockUpstream, new: &MockUpstream, rollout: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
token_env = "SY_TEST_ADMIN"

[state]
postgres = "{}"
postgres_password_env = "{PW_ENV}"

[[backends]]
name = "old"
url = "{}"

[[backends]]
name = "new"
url = "{}"

[[routes]]
model = "m"
targets = [{{ backend = "old" }}]
rollout = {rollout}
"#,
        pg.url(),
        old.url(),
        new.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_run_one_rollout_and_report_the_same_transitions() {
    let Some(pg) = Postgres::start() else { return };
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let text = rollout_config(
        &pg,
        &old,
        &new,
        r#"{ candidate = { backend = "new" }, steps = [10, 50, 100], step_secs = 1, min_requests = 10, guard = { max_error_rate = 0.05 } }"#,
    );
    let a = Gateway::start_with_env(&text, &env());
    let b = Gateway::start_with_env(&text, &env());
    let c = Client::new();
    let load = Load::start(
        &[a.url("/v1/chat/completions"), b.url("/v1/chat/completions")],
        None,
        6,
    );
    let sa = wait_rollout(&c, &a, Duration::from_secs(120), |s| {
        s["state"] == "complete"
    })
    .await;
    let sb = wait_rollout(&c, &b, Duration::from_secs(30), |s| {
        s["state"] == "complete"
    })
    .await;
    let (_, bad) = load.stop().await;
    assert_eq!(bad, 0);
    let path = transitions(&sa);
    assert_eq!(
        path,
        [
            ("new", "10%"),
            ("10%", "50%"),
            ("50%", "100%"),
            ("100%", "complete")
        ]
        .map(|(f, t)| (f.to_string(), t.to_string())),
        "{sa:#}"
    );
    // One sequence, stored once, seen alike by both replicas.
    assert_eq!(sa["history"], sb["history"]);
    assert_eq!(sb["weight"], 100.0);
    let deciders = [&a, &b]
        .iter()
        .filter(|g| g.log().contains(DECIDES))
        .count();
    assert_eq!(deciders, 1, "A:\n{}\nB:\n{}", a.log(), b.log());
    let logged: usize = [&a, &b]
        .iter()
        .map(|g| g.log().matches("rollout transition").count())
        .sum();
    assert_eq!(logged, 4, "each transition decided once");
    assert_eq!(
        pg.psql("SELECT COUNT(*) FROM rollout_history WHERE route = 'm'"),
        "4"
    );
    // Both replicas sent the candidate its share once the weight reached it.
    assert!(new.completions() > 0 && old.completions() > 0);
    // The CLI reads the same rows.
    let out = cli(&b, &["rollout", "status", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rollouts"][0]["history"], sa["history"], "{v}");
    stop(a);
    stop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_deciding_replica_hands_the_rollout_to_the_other() {
    let Some(pg) = Postgres::start() else { return };
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let text = rollout_config(
        &pg,
        &old,
        &new,
        r#"{ candidate = { backend = "new" }, steps = [10, 100], step_secs = 3600, min_requests = 1 }"#,
    );
    let a = Gateway::start_with_env(&text, &env());
    assert!(
        a.wait_for_log(DECIDES, Duration::from_secs(30)),
        "{}",
        a.log()
    );
    let b = Gateway::start_with_env(&text, &env());
    let c = Client::new();
    wait_rollout(&c, &b, Duration::from_secs(30), |s| s["weight"] == 10.0).await;
    // B follows: it refuses an operator's action, naming who decides.
    let r = c
        .send(
            Method::POST,
            &b.url("/admin/rollouts/promote"),
            r#"{"route":"m"}"#,
            &[("authorization", &bearer(ADMIN_TOKEN))],
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("lease"), "{}", r.text());

    // A dies without a word (no lease released); B takes over once the lease expires.
    let killed = Instant::now();
    drop(a);
    assert!(
        b.wait_for_log(DECIDES, Duration::from_secs(10)),
        "B did not take the decision within 10 s:\n{}",
        b.log()
    );
    eprintln!("handed over after {:?}", killed.elapsed());
    // B decides now: it resumed the stored step and acts on it.
    let r = c
        .send(
            Method::POST,
            &b.url("/admin/rollouts/promote"),
            r#"{"route":"m"}"#,
            &[("authorization", &bearer(ADMIN_TOKEN))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = wait_rollout(&c, &b, Duration::from_secs(10), |s| {
        s["state"] == "complete"
    })
    .await;
    assert_eq!(
        transitions(&s),
        [("new", "10%"), ("10%", "complete")].map(|(f, t)| (f.to_string(), t.to_string()))
    );
    stop(b);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_under_load_fails_no_request_and_writing_resumes() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let text = config(&mock, &pg, "");
    let admin_dir = tempfile::tempdir().unwrap();
    let admin_cfg = admin_dir.path().join("switchyard.toml");
    std::fs::write(&admin_cfg, &text).unwrap();
    let (code, out, err) = run_switchyard(
        &[
            "keys",
            "create",
            "--team",
            "t",
            "--json",
            "--config",
            admin_cfg.to_str().unwrap(),
        ],
        admin_dir.path(),
        &env(),
    );
    assert_eq!(code, 0, "{err}");
    let key = serde_json::from_str::<Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let gw = Gateway::start_with_env(&text, &env());
    let c = Client::new();
    let load = Load::start(&[gw.url("/v1/chat/completions")], Some(&key), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;

    pg.stop();
    let start = Instant::now();
    // The writer notices (its next batch fails) and says so.
    loop {
        let m = c.get(&gw.url("/metrics")).await.text();
        if metric(&m, "switchyard_store_up") == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "store never reported down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Down for 10 s under load: the cached key keeps answering.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(start.elapsed())).await;
    pg.resume();
    let resumed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let start = Instant::now();
    loop {
        let m = c.get(&gw.url("/metrics")).await.text();
        if metric(&m, "switchyard_store_up") == 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "store never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, bad) = load.stop().await;
    assert_eq!(bad, 0, "requests failed while PostgreSQL was down");
    assert!(ok > 0);
    let m = c.get(&gw.url("/metrics")).await.text();
    let dropped = metric(&m, "switchyard_store_dropped_total") as u64;
    stop(gw);
    // Every request's row was written or counted as dropped, none lost silently; and rows
    // made after the database came back were written.
    let written: u64 = pg.psql("SELECT COUNT(*) FROM ledger").parse().unwrap();
    assert_eq!(
        written + dropped,
        ok,
        "written {written} + dropped {dropped} != {ok}"
    );
    let after: u64 = pg
        .psql(&format!(
            "SELECT COUNT(*) FROM ledger WHERE ts_ms > {resumed_ms}"
        ))
        .parse()
        .unwrap();
    assert!(after > 0, "nothing written after PostgreSQL came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_migrate_copies_a_sqlite_store_into_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite_text = config_with(
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
shadow = {{ backend = "mock", model = "cand", sample = 1.0 }}
"#,
            dir.path().join("one.db").display()
        ),
    );
    let sqlite_cfg = dir.path().join("sqlite.toml");
    std::fs::write(&sqlite_cfg, &sqlite_text).unwrap();
    let sq = sqlite_cfg.to_str().unwrap();
    let (code, out, err) = run_switchyard(
        &["keys", "create", "--team", "t", "--json", "--config", sq],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let key = serde_json::from_str::<Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let gw = Gateway::start(&sqlite_text);
    let c = Client::new();
    for _ in 0..20 {
        assert_eq!(chat_status(&c, &gw, &key).await, 200);
    }
    let pairs = |cfg: &str, dir: &std::path::Path| {
        // Fails until the first pair makes the table.
        let (code, out, _) = run_switchyard(
            &["shadow", "report", "--json", "--config", cfg],
            dir,
            &env(),
        );
        (code == 0)
            .then(|| serde_json::from_str::<Value>(&out).unwrap()["routes"][0]["pairs"].clone())
    };
    let start = Instant::now();
    while pairs(sq, dir.path()) != Some(json!(20)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pairs not written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(gw);
    let (code, before, err) = run_switchyard(&["spend", "--json", "--config", sq], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = run_switchyard(
        &[
            "state",
            "migrate",
            "--config",
            sq,
            "--to",
            &pg.url(),
            "--password-env",
            PW_ENV,
        ],
        dir.path(),
        &env(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        // 20 served and 20 mirrored calls.
        out.contains("ledger: 40 rows") && out.contains("keys: 1 rows"),
        "{out}"
    );
    // The mirrored pairs and the gateway's start in the config history came along.
    assert!(
        out.contains("shadow_pairs: 20 rows") && out.contains("config_history: 1 rows"),
        "{out}"
    );
    // Twice would double the spend: refused.
    let (code, _, err) = run_switchyard(
        &[
            "state",
            "migrate",
            "--config",
            sq,
            "--to",
            &pg.url(),
            "--password-env",
            PW_ENV,
        ],
        dir.path(),
        &env(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("already holds"), "{err}");

    // A gateway on PostgreSQL knows the key and reports the same spend.
    let gw = Gateway::start_with_env(&config(&mock, &pg, ""), &env());
    assert_eq!(chat_status(&c, &gw, "sk-sy-not-a-key").await, 401);
    let (pg_dir, pg_cfg) = (gw.dir.path().to_path_buf(), gw.config_path.clone());
    let (code, after, err) = run_switchyard(
        &["spend", "--json", "--config", pg_cfg.to_str().unwrap()],
        &pg_dir,
        &env(),
    );
    assert_eq!(code, 0, "{err}");
    let (b, a): (Value, Value) = (
        serde_json::from_str(&before).unwrap(),
        serde_json::from_str(&after).unwrap(),
    );
    for k in ["requests", "tokens_in", "tokens_out"] {
        assert_eq!(a["total"][k], b["total"][k], "{k}");
    }
    let cost = |v: &Value| v["total"]["cost_usd"].as_f64().unwrap();
    assert!(cost(&a) > 0.0 && (cost(&a) - cost(&b)).abs() < 1e-12);
    assert_eq!(chat_status(&c, &gw, &key).await, 200);
    assert_eq!(pairs(pg_cfg.to_str().unwrap(), &pg_dir), Some(json!(20)));
    stop(gw);
}

/// Two backends, route `m` served by `old` and mirrored to `new` (model `cand`), every
/// request captured; `rollout` (a TOML inline table) or none.
fn shadow_config(pg: &Postgres, old: &MockUpstream, new: &MockUpstream, rollout: &str) -> String {
    let rollout = if rollout.is_empty() {
        String::new()
    } else {
        format!("rollout = {rollout}\n")
    };
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
token_env = "SY_TEST_ADMIN"

[telemetry]
capture_content = true

[state]
postgres = "{}"
postgres_password_env = "{PW_ENV}"

[[backends]]
name = "old"
url = "{}"

[[backends]]
name = "new"
url = "{}"

[[routes]]
model = "m"
targets = [{{ backend = "old" }}]
shadow = {{ backend = "new", model = "cand", sample = 1.0 }}
capture = {{ sample = 1.0 }}
{rollout}"#,
        pg.url(),
        old.url(),
        new.url()
    )
}

/// Poll `sql` (one number) until it reaches `want`.
async fn wait_count(pg: &Postgres, sql: &str, want: u64) {
    let start = Instant::now();
    loop {
        let n: u64 = pg.psql(sql).parse().unwrap();
        if n >= want {
            assert_eq!(n, want, "{sql}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{sql}: {n} of {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_get(c: &Client, gw: &Gateway, path: &str) -> Value {
    let r = c
        .get_with(&gw.url(path), &[("authorization", &bearer(ADMIN_TOKEN))])
        .await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_pairs_and_captures_from_both_replicas_are_read_on_either() {
    let Some(pg) = Postgres::start() else { return };
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let text = shadow_config(&pg, &old, &new, "");
    let a = Gateway::start_with_env(&text, &env());
    let b = Gateway::start_with_env(&text, &env());
    let c = Client::new();
    let body = |i: usize| json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":format!("question {i}")}]});
    for i in 0..3 {
        let r = c
            .post_json(&a.url("/v1/chat/completions"), &body(i), &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A stops at once: what it mirrored and captured is written before it exits.
    assert!(!a.dir.path().join("switchyard.db").exists());
    stop(a);
    assert_eq!(pg.psql("SELECT COUNT(*) FROM shadow_pairs"), "3");
    assert_eq!(pg.psql("SELECT COUNT(*) FROM captures"), "3");
    for i in 3..5 {
        let r = c
            .post_json(&b.url("/v1/chat/completions"), &body(i), &[])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_count(&pg, "SELECT COUNT(*) FROM shadow_pairs", 5).await;
    wait_count(&pg, "SELECT COUNT(*) FROM captures", 5).await;

    // `shadow report` (from B's folder, or any other with the same config) counts the
    // pairs of both.
    let elsewhere = tempfile::tempdir().unwrap();
    for dir in [b.dir.path(), elsewhere.path()] {
        let cfg = b.config_path.to_str().unwrap();
        let (code, out, err) = run_switchyard(
            &["shadow", "report", "--json", "--config", cfg],
            dir,
            &env(),
        );
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let routes = v["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 1, "{v}");
        assert_eq!(routes[0]["pairs"], 5, "{v}");
        assert_eq!(routes[0]["shadow"], "new/cand", "{v}");
    }
    // The console's shadow page on B: A's pairs too.
    let v = admin_get(&c, &b, "/admin/shadow?since=1h").await;
    let pairs: i64 = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pairs"].as_i64().unwrap())
        .sum();
    assert_eq!(pairs, 5, "{v}");
    // Captures made on A export from B, one dataset line each, in order.
    let out = cli(&b, &["capture", "export"]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{out}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            l["messages"][0]["content"],
            format!("question {i}"),
            "{out}"
        );
    }
    // Neither replica made a store file of its own.
    assert!(!b.dir.path().join("switchyard.db").exists());
    stop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_on_one_replica_is_in_the_config_history_of_the_other() {
    let Some(pg) = Postgres::start() else { return };
    let mock = MockUpstream::start().await;
    let text = config(&mock, &pg, "");
    let a = Gateway::start_with_env(&text, &env());
    let b = Gateway::start_with_env(&text, &env());
    let c = Client::new();
    wait_count(&pg, "SELECT COUNT(*) FROM config_history", 2).await;
    // A's file changes and A reloads it; B keeps its own file and version.
    std::fs::write(&a.config_path, format!("{text}\n# reloaded on A\n")).unwrap();
    let r = c
        .send(
            Method::POST,
            &a.url("/admin/reload"),
            "",
            &[("authorization", &bearer(ADMIN_TOKEN))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reloaded"], true, "{}", r.text());
    wait_count(&pg, "SELECT COUNT(*) FROM config_history", 3).await;

    let va = admin_get(&c, &a, "/admin/config").await;
    let vb = admin_get(&c, &b, "/admin/config").await;
    assert_eq!(vb["current"], 1, "B's own version is untouched: {vb}");
    assert_eq!(va["current"], 2, "{va}");
    let history = vb["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{vb}");
    // Newest first: A's reload, named by A's replica, then both starts.
    let newest = &history[0];
    assert_eq!(newest["origin"], "admin", "{vb}");
    assert_eq!(newest["replica"], va["replica"], "{vb}");
    assert_ne!(newest["replica"], vb["replica"], "{vb}");
    assert_eq!(newest["version"], 2);
    let starts: Vec<&Value> = history[1..].iter().map(|h| &h["replica"]).collect();
    assert!(starts.contains(&&va["replica"]) && starts.contains(&&vb["replica"]));
    // The same file's text hashes alike on both replicas; the reloaded one differs.
    assert_eq!(history[1]["hash"], history[2]["hash"]);
    assert_ne!(newest["hash"], history[1]["hash"]);
    // B serves the text A reloaded.
    let id = newest["id"].as_i64().unwrap();
    let one = admin_get(&c, &b, &format!("/admin/config/history/{id}")).await;
    assert!(
        one["text"].as_str().unwrap().contains("# reloaded on A"),
        "{one}"
    );
    stop(a);
    stop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deciding_replica_guards_on_pairs_and_feedback_the_other_served() {
    let Some(pg) = Postgres::start() else { return };
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    // The candidate is the shadow's backend and model: its mirrored pairs are its agreement.
    // At 100 % from the first step every request is the candidate's, so each feedback
    // counts; 1000 requests a step keeps it there while the test looks.
    let text = shadow_config(
        &pg,
        &old,
        &new,
        r#"{ candidate = { backend = "new", model = "cand" }, steps = [100], step_secs = 3600, min_requests = 1000, guard = { min_agreement = 0.5, min_feedback = 0.5 } }"#,
    );
    let a = Gateway::start_with_env(&text, &env());
    assert!(
        a.wait_for_log(DECIDES, Duration::from_secs(30)),
        "{}",
        a.log()
    );
    let b = Gateway::start_with_env(&text, &env());
    let c = Client::new();
    wait_rollout(&c, &b, Duration::from_secs(30), |s| s["weight"] == 100.0).await;
    // Traffic and feedback only through B, the follower: A's guards see them only through
    // the database.
    for i in 0..6 {
        let r = c
            .post_json(
                &b.url("/v1/chat/completions"),
                &json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":format!("q{i}")}]}),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.header("x-switchyard-request-id").unwrap().to_string();
        let start = Instant::now();
        loop {
            let f = c
                .post_json(
                    &b.url("/v1/feedback"),
                    &json!({"request_id": id, "thumbs": "up"}),
                    &[],
                )
                .await;
            if f.status == 200 {
                break;
            }
            // The request's ledger row may not be written yet.
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} {}",
                f.status,
                f.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wait_count(&pg, "SELECT COUNT(*) FROM shadow_pairs", 6).await;
    wait_count(&pg, "SELECT COUNT(*) FROM feedback", 6).await;
    let guard = |s: &Value, name: &str| -> Value {
        s["guards"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let s = wait_rollout(&c, &a, Duration::from_secs(60), |s| {
        guard(s, "min_agreement")["detail"] == "mean of 6 mirrored pairs"
            && guard(s, "min_feedback")["detail"] == "mean of 6 feedback scores"
    })
    .await;
    assert!(guard(&s, "min_agreement")["value"].is_number(), "{s:#}");
    assert_eq!(guard(&s, "min_feedback")["value"], 1.0, "{s:#}");
    assert_eq!(guard(&s, "min_feedback")["ok"], true, "{s:#}");
    assert_eq!(s["state"], "running", "{s:#}");
    stop(a);
    stop(b);
}

/// PostgreSQL connections of the gateways (application `switchyard`): (over TLS, plain).
fn switchyard_connections(pg: &Postgres) -> (u64, u64) {
    let count = |ssl: bool| -> u64 {
        pg.psql(&format!(
            "SELECT COUNT(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'switchyard' AND s.ssl = {ssl}"
        ))
        .parse()
        .unwrap()
    };
    (count(true), count(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_checks_the_server_against_the_named_ca() {
    let server =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let Some(pg) =
        Postgres::start_with_tls(&server.cert.pem(), &server.signing_key.serialize_pem())
    else {
        return;
    };
    let mock = MockUpstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let ca = certs.path().join("ca.pem");
    std::fs::write(&ca, server.cert.pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let wrong_ca = certs.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, other.cert.pem()).unwrap();
    let with_params =
        |params: &str| config(&mock, &pg, "").replace(&pg.url(), &format!("{}?{params}", pg.url()));

    // verify-full with the CA: the chain and the name (127.0.0.1) check out.
    let text = with_params(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let gw = Gateway::start_with_env(&text, &env());
    let key = create_key(&text, "tls");
    let c = Client::new();
    assert_eq!(chat_status(&c, &gw, &key).await, 200);
    let (tls, plain) = switchyard_connections(&pg);
    assert!(tls > 0 && plain == 0, "tls {tls}, plain {plain}");
    stop(gw);

    // require without a CA: encrypted, the certificate not checked (libpq's meaning).
    let gw = Gateway::start_with_env(&with_params("sslmode=require"), &env());
    assert_eq!(chat_status(&c, &gw, &key).await, 200);
    let (tls, plain) = switchyard_connections(&pg);
    assert!(tls > 0 && plain == 0, "tls {tls}, plain {plain}");
    stop(gw);

    // A CA that did not sign the server's certificate: refused at start, saying why.
    for mode in ["require", "verify-ca", "verify-full"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("switchyard.toml");
        std::fs::write(
            &cfg,
            with_params(&format!(
                "sslmode={mode}&sslrootcert={}",
                wrong_ca.display()
            )),
        )
        .unwrap();
        let (code, _, err) = run_switchyard(
            &["serve", "--config", cfg.to_str().unwrap()],
            dir.path(),
            &env(),
        );
        assert_ne!(code, 0, "{mode}");
        assert!(
            err.contains("cannot connect") && err.contains("certificate"),
            "{mode}: {err}"
        );
    }
    // A CA file that is not there: a config error naming the key and the file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        with_params("sslmode=verify-full&sslrootcert=/no/such/ca.pem"),
    )
    .unwrap();
    let (code, _, err) = run_switchyard(
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &env(),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("state.postgres") && err.contains("/no/such/ca.pem"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_and_captures_made_while_postgres_is_down_are_written_when_it_is_back() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = Gateway::start_with_env(&shadow_config(&pg, &old, &new, ""), &env());
    let c = Client::new();
    let ask = |i: usize| {
        let (c, url) = (c.clone(), gw.url("/v1/chat/completions"));
        async move {
            let body = json!({"model":"m","max_tokens":5,"messages":[{"role":"user","content":format!("q{i}")}]});
            c.post_json(&url, &body, &[]).await.status
        }
    };
    assert_eq!(ask(0).await, 200);
    wait_count(&pg, "SELECT COUNT(*) FROM shadow_pairs", 1).await;
    pg.stop();
    // Served while the database is down; their pairs wait in the store's queue.
    for i in 1..5 {
        assert_eq!(ask(i).await, 200);
    }
    let start = Instant::now();
    loop {
        let m = c.get(&gw.url("/metrics")).await.text();
        if metric(&m, "switchyard_store_up") == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "store never reported down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.resume();
    wait_count(&pg, "SELECT COUNT(*) FROM shadow_pairs", 5).await;
    wait_count(&pg, "SELECT COUNT(*) FROM captures", 5).await;
    let m = c.get(&gw.url("/metrics")).await.text();
    assert_eq!(metric(&m, "switchyard_store_failed_total"), 0.0, "{m}");
    stop(gw);
}
