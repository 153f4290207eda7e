//! Staged rollouts (`routes[].rollout`), sticky cohorts (`routes[].sticky`), request ids and
//! caller feedback (`POST /v1/feedback`), against two mock upstreams: `old` (the route's
//! incumbent target) and `new` (the candidate).
//!
//! Nothing here asserts on time: tests wait (with generous deadlines) for state transitions
//! and then assert on the transitions, their reasons and the request counts.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, run_switchyard};

const ADMIN_ENV: &str = "SY_ROLLOUT_ADMIN";
const ADMIN_TOKEN: &str = "rollout-admin-token-0123456789";

/// A config with backends `old` and `new`, the store in `dir`, the admin API on, and one
/// route `m` on `old` (falling back to `old`) with `route_extra` appended.
fn config(dir: &Path, old: &MockUpstream, new: &MockUpstream, route_extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[state]
path = "{db}"

[admin]
token_env = "{ADMIN_ENV}"

[[backends]]
name = "old"
url = "{old}"
first_byte_timeout_secs = 5
timeout_secs = 10

[[backends]]
name = "new"
url = "{new}"
first_byte_timeout_secs = 5
timeout_secs = 10

[[routes]]
model = "m"
targets = [{{ backend = "old" }}]
fallback = [{{ backend = "old" }}]
{route_extra}
"#,
        db = dir.join("state.db").display(),
        old = old.url(),
        new = new.url(),
    )
}

fn start(text: &str) -> Gateway {
    Gateway::start_with_env(text, &[(ADMIN_ENV, ADMIN_TOKEN)])
}

fn chat() -> Value {
    json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
}

/// `GET /admin/rollouts`: the rollout of route `m`, if the controller has started it.
async fn rollout(c: &Client, gw: &Gateway) -> Option<Value> {
    let r = c
        .get_with(
            &gw.url("/admin/rollouts"),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["rollouts"]
        .as_array()?
        .iter()
        .find(|x| x["route"] == "m")
        .cloned()
}

/// Wait (up to `deadline`) until `m`'s rollout satisfies `done`; its status then.
async fn wait_for(
    c: &Client,
    gw: &Gateway,
    deadline: Duration,
    what: &str,
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
            "rollout never reached: {what}; last status: {s:#?}\nlog:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Steady load: `workers` clients in a loop until stopped; every status is counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, url) =
                    (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let c = Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = c.post_json(&url, &chat(), &[]).await;
                        if r.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stop; (answered 200, anything else).
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn history(s: &Value) -> Vec<(String, String, String)> {
    s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["from"].as_str().unwrap().to_string(),
                h["to"].as_str().unwrap().to_string(),
                h["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn guard<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["guards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no guard {name} in {s:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_candidate_moves_through_every_step_to_complete() {
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&config(
        dir.path(),
        &old,
        &new,
        r#"rollout = { candidate = { backend = "new" }, steps = [10, 50, 100], step_secs = 2, min_requests = 20, guard = { max_error_rate = 0.005, max_p99_increase_ms = 1000 } }"#,
    ));
    let c = Client::new();
    let load = Load::start(gw.url("/v1/chat/completions"), 6);
    let s = wait_for(&c, &gw, Duration::from_secs(120), "complete", |s| {
        s["state"] == "complete"
    })
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "clients saw errors");
    assert!(ok > 0);
    assert_eq!(s["weight"], 100.0);
    let h = history(&s);
    let path: Vec<(&str, &str)> = h.iter().map(|(f, t, _)| (f.as_str(), t.as_str())).collect();
    assert_eq!(
        path,
        [
            ("new", "10%"),
            ("10%", "50%"),
            ("50%", "100%"),
            ("100%", "complete")
        ],
        "{s:#}"
    );
    // Each step's share of candidate traffic is within 5 points of its weight.
    for (entry, weight) in s["history"].as_array().unwrap()[1..]
        .iter()
        .zip([10.0, 50.0, 100.0])
    {
        let cand = entry["candidate_requests"].as_f64().unwrap();
        let inc = entry["incumbent_requests"].as_f64().unwrap();
        assert!(
            cand >= 20.0,
            "step at {weight}% ended with {cand} candidate requests"
        );
        let share = 100.0 * cand / (cand + inc);
        assert!(
            (share - weight).abs() <= 5.0,
            "step at {weight}%: candidate share {share:.1}% ({cand} of {})",
            cand + inc
        );
        assert!(
            entry["reason"]
                .as_str()
                .unwrap()
                .contains("every guard held")
        );
    }
    // The upstreams saw the split too: the candidate answered traffic, so did the incumbent.
    assert!(new.completions() > 0 && old.completions() > 0);
    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains("switchyard_rollout_weight{route=\"m\"} 100"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_rollout_transitions_total{route=\"m\",to=\"complete\"} 1")
    );
    assert!(metrics.contains("switchyard_rollout_transitions_total{route=\"m\",to=\"running\"} 3"));
    assert_eq!(
        gw.log().matches("rollout transition").count(),
        4,
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_failing_30_percent_rolls_back_in_its_first_step_and_no_client_sees_it() {
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    new.set_behaviour(Behaviour {
        fail_percent: Some(30),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        dir.path(),
        &old,
        &new,
        r#"rollout = { candidate = { backend = "new" }, steps = [10, 50, 100], step_secs = 3600, min_requests = 20, guard = { max_error_rate = 0.005 } }"#,
    );
    let gw = start(&text);
    let c = Client::new();
    let load = Load::start(gw.url("/v1/chat/completions"), 6);
    let s = wait_for(&c, &gw, Duration::from_secs(120), "rolled_back", |s| {
        s["state"] == "rolled_back"
    })
    .await;
    let (ok, failed) = load.stop().await;
    // The incumbent, as the fallback, answered every request the candidate failed.
    assert_eq!(failed, 0, "clients saw errors");
    assert!(ok >= 20);
    assert_eq!(s["weight"], 0.0);
    let h = history(&s);
    assert_eq!(h.len(), 2, "{s:#}");
    assert_eq!((h[1].0.as_str(), h[1].1.as_str()), ("10%", "rolled_back"));
    assert!(h[1].2.contains("max_error_rate"), "{}", h[1].2);
    let g = guard(&s, "max_error_rate");
    assert_eq!(g["ok"], false);
    assert!(g["value"].as_f64().unwrap() > 0.1, "{g}");
    // Once rolled back, no request reaches the candidate.
    let before = new.completions();
    for _ in 0..20 {
        assert_eq!(
            c.post_json(&gw.url("/v1/chat/completions"), &chat(), &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(new.completions(), before);
    let metrics = c.get(&gw.url("/metrics")).await.text();
    assert!(
        metrics.contains("switchyard_rollout_weight{route=\"m\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_rollout_transitions_total{route=\"m\",to=\"rolled_back\"} 1")
    );
    // `switchyard rollout status` reads the same from the store.
    let (code, out, err) = run_switchyard(
        &[
            "rollout",
            "status",
            "--route",
            "m",
            "--config",
            gw.config_path.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rolled_back"), "{out}");
    assert!(out.contains("max_error_rate"), "{out}");
    assert!(out.contains("BREACHED"), "{out}");
    let (code, out, err) = run_switchyard(
        &[
            "rollout",
            "status",
            "--json",
            "--config",
            gw.config_path.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let r = &v["rollouts"][0];
    assert_eq!(r["route"], "m");
    assert_eq!(r["state"], "rolled_back");
    assert_eq!(r["step"], 1);
    assert_eq!(r["weight"], 0.0);
    for g in r["guards"].as_array().unwrap() {
        for k in ["name", "value", "limit", "ok"] {
            assert!(g.get(k).is_some(), "guard without {k}: {g}");
        }
    }
    for h in r["history"].as_array().unwrap() {
        for k in ["at", "from", "to", "reason"] {
            assert!(h.get(k).is_some(), "history entry without {k}: {h}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_300ms_slower_rolls_back_on_the_p99_guard() {
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    new.set_behaviour(Behaviour {
        first_byte_delay: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&config(
        dir.path(),
        &old,
        &new,
        r#"rollout = { candidate = { backend = "new" }, steps = [10, 50, 100], step_secs = 3600, min_requests = 20, guard = { max_error_rate = 0.005, max_p99_increase_ms = 200 } }"#,
    ));
    let c = Client::new();
    let load = Load::start(gw.url("/v1/chat/completions"), 8);
    let s = wait_for(&c, &gw, Duration::from_secs(120), "rolled_back", |s| {
        s["state"] == "rolled_back"
    })
    .await;
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let h = history(&s);
    assert_eq!(h.last().unwrap().1, "rolled_back");
    assert!(h.last().unwrap().2.contains("max_p99_increase_ms"), "{h:?}");
    let g = guard(&s, "max_p99_increase_ms");
    assert_eq!(g["ok"], false);
    assert!(g["value"].as_f64().unwrap() > 200.0, "{g}");
    // The error guard was not the reason: the candidate answered everything.
    assert_eq!(guard(&s, "max_error_rate")["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_same_step_and_a_reload_keeps_it_until_the_rollout_is_edited() {
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    // `min_requests` far above what the load sends between entering step 2 and stopping
    // (a status poll runs the CLI: tens of milliseconds on a loaded machine), so step 2
    // cannot end by itself, before the restart or after it.
    let rollout_line = r#"rollout = { candidate = { backend = "new" }, steps = [10, 50, 100], step_secs = 1, min_requests = 400 }"#;
    let text = config(dir.path(), &old, &new, rollout_line);
    let c = Client::new();
    let mut gw = start(&text);
    // Drive it into its second step, then stop the traffic: without candidate requests the
    // step cannot end.
    let load = Load::start(gw.url("/v1/chat/completions"), 2);
    wait_for(&c, &gw, Duration::from_secs(120), "step 2", |s| {
        s["step"] == 2
    })
    .await;
    load.stop().await;
    // A few requests into the step (fewer than it needs to end).
    for _ in 0..16 {
        let r = c
            .post_json(&gw.url("/v1/chat/completions"), &chat(), &[])
            .await;
        assert_eq!(r.status, 200);
    }
    let before = wait_for(&c, &gw, Duration::from_secs(30), "counts in step 2", |s| {
        s["window"]["candidate"]["requests"].as_u64().unwrap_or(0) > 0
            && s["window"]["incumbent"]["requests"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(before["step"], 2);
    assert!(
        before["window"]["candidate"]["requests"].as_u64().unwrap() < 400,
        "the load ran on too long into step 2 for this test: {before:#}"
    );
    assert_eq!(before["state"], "running");
    assert_eq!(before["weight"], 50.0);
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).is_some());
    drop(gw);

    let gw = start(&text);
    let after = wait_for(&c, &gw, Duration::from_secs(30), "resumed", |_| true).await;
    assert_eq!(after["state"], "running");
    assert_eq!(after["step"], 2, "{after:#}");
    assert_eq!(after["weight"], 50.0);
    assert_eq!(after["fingerprint"], before["fingerprint"]);
    assert_eq!(after["step_started"], before["step_started"]);
    // The step's counts came along (saved at shutdown), so the window goes on.
    let counted = |s: &Value| s["window"]["candidate"]["requests"].as_u64().unwrap();
    assert!(counted(&before) > 0, "{before:#}");
    assert!(counted(&after) >= counted(&before), "{before:#}\n{after:#}");
    assert_eq!(history(&after), history(&before));
    assert!(
        gw.log().contains("rollout resumed from the store"),
        "{}",
        gw.log()
    );

    // A reload that leaves the rollout alone keeps its progress.
    let admin = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
    let admin: Vec<(&str, &str)> = admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
    std::fs::write(
        &gw.config_path,
        format!("{text}\n[[routes]]\nmodel = \"other\"\ntargets = [{{ backend = \"old\" }}]\n"),
    )
    .unwrap();
    let r = c
        .send(Method::POST, &gw.url("/admin/reload"), "", &admin)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let kept = rollout(&c, &gw).await.unwrap();
    assert_eq!(kept["step"], 2);
    assert_eq!(kept["fingerprint"], before["fingerprint"]);
    assert_eq!(history(&kept), history(&before));

    // Editing the rollout starts a new one at its first step.
    std::fs::write(
        &gw.config_path,
        text.replace("steps = [10, 50, 100]", "steps = [20, 100]"),
    )
    .unwrap();
    let r = c
        .send(Method::POST, &gw.url("/admin/reload"), "", &admin)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let fresh = wait_for(&c, &gw, Duration::from_secs(30), "a new rollout", |s| {
        s["fingerprint"] != before["fingerprint"]
    })
    .await;
    assert_eq!(fresh["step"], 1);
    assert_eq!(fresh["weight"], 20.0);
    let h = history(&fresh);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].0, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_callers_keep_their_target_and_only_move_to_the_candidate_as_the_weight_grows() {
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&config(
        dir.path(),
        &old,
        &new,
        r#"sticky = "header:x-user"
rollout = { candidate = { backend = "new" }, steps = [20, 50, 100], step_secs = 1, min_requests = 1 }"#,
    ));
    let c = Client::new();
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let act = |action: &'static str| {
        let (c, url, admin) = (
            c.clone(),
            gw.url(&format!("/admin/rollouts/{action}")),
            admin.clone(),
        );
        async move {
            let r = c
                .post_json(&url, &json!({"route": "m"}), &[("authorization", &admin)])
                .await;
            assert_eq!(r.status, 200, "{action}: {}", r.text());
            r.json()
        }
    };
    wait_for(&c, &gw, Duration::from_secs(30), "started", |s| {
        s["weight"] == 20.0
    })
    .await;
    // Held at 20 % while the callers are sampled.
    assert_eq!(act("pause").await["state"], "paused");
    let url = gw.url("/v1/chat/completions");
    let round = |weight: f64| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut on: HashMap<String, HashSet<String>> = HashMap::new();
            for caller in 0..200 {
                let user = format!("user-{caller}");
                for _ in 0..5 {
                    let r = c.post_json(&url, &chat(), &[("x-user", &user)]).await;
                    assert_eq!(r.status, 200);
                    let backend = r.header("x-switchyard-backend").unwrap().to_string();
                    on.entry(user.clone()).or_default().insert(backend);
                }
            }
            for (user, targets) in &on {
                assert_eq!(
                    targets.len(),
                    1,
                    "{user} moved between {targets:?} at {weight}%"
                );
            }
            on.into_iter()
                .filter(|(_, t)| t.contains("new"))
                .map(|(u, _)| u)
                .collect::<HashSet<String>>()
        }
    };
    let at_20 = round(20.0).await;
    // Resume: the step advances to 50 % once it held a second with a candidate request.
    act("resume").await;
    let trickle = Load::start(url.clone(), 1);
    wait_for(&c, &gw, Duration::from_secs(60), "50%", |s| {
        s["weight"] == 50.0
    })
    .await;
    trickle.stop().await;
    act("pause").await;
    let at_50 = round(50.0).await;
    assert!(
        at_20.is_subset(&at_50),
        "callers moved from the candidate back to the incumbent: {:?}",
        at_20.difference(&at_50).collect::<Vec<_>>()
    );
    // Roughly the weights' share of the callers (the hash spreads them).
    assert!(
        (20..=60).contains(&at_20.len()),
        "{} callers at 20%",
        at_20.len()
    );
    assert!(
        (70..=130).contains(&at_50.len()),
        "{} callers at 50%",
        at_50.len()
    );
    // An operator's actions are refused where the state does not allow them.
    let r = c
        .post_json(
            &gw.url("/admin/rollouts/pause"),
            &json!({"route": "m"}),
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = c
        .post_json(
            &gw.url("/admin/rollouts/abort"),
            &json!({"route": "nope"}),
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rollout_not_found");
    // `switchyard rollout promote` (the admin API's client) completes at once.
    let cli = |action: &str| {
        run_switchyard(
            &[
                "rollout",
                action,
                "m",
                "--config",
                gw.config_path.to_str().unwrap(),
                "--url",
                &gw.url(""),
            ],
            dir.path(),
            &[(ADMIN_ENV, ADMIN_TOKEN)],
        )
    };
    let (code, out, err) = cli("promote");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("complete at 100"), "{out}");
    let done = rollout(&c, &gw).await.unwrap();
    assert_eq!(done["state"], "complete");
    assert_eq!(done["weight"], 100.0);
    assert_eq!(history(&done).last().unwrap().2, "promoted by operator");
    // A finished rollout cannot be aborted: the CLI says why and fails.
    let (code, _, err) = cli("abort");
    assert_eq!(code, 1);
    assert!(err.contains("is complete: cannot abort"), "{err}");
}

/// Create a key with the CLI; (secret, id).
fn create_key(cfg: &Path, team: &str) -> (String, String) {
    let (code, out, err) = run_switchyard(
        &[
            "keys",
            "create",
            "--json",
            "--team",
            team,
            "--config",
            cfg.to_str().unwrap(),
        ],
        cfg.parent().unwrap(),
        &[],
    );
    assert_eq!(code, 0, "keys create failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    (
        v["key"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_taken_only_for_the_callers_own_requests_and_reaches_spend_by_target() {
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), &old, &new, "");
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(&cfg, &text).unwrap();
    let (alice, _) = create_key(&cfg, "a");
    let (bob, _) = create_key(&cfg, "b");
    let gw = start(&text);
    let c = Client::new();
    let auth = |k: &str| format!("Bearer {k}");
    let r = c
        .post_json(
            &gw.url("/v1/chat/completions"),
            &chat(),
            &[("authorization", &auth(&alice))],
        )
        .await;
    assert_eq!(r.status, 200);
    let id = r.header("x-switchyard-request-id").unwrap().to_string();
    assert!(id.starts_with("req_"), "{id}");
    // Every proxied response carries an id, errors too, and each is new.
    let r2 = c
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "nope", "messages": []}),
            &[("authorization", &auth(&alice))],
        )
        .await;
    assert_eq!(r2.status, 404);
    let id2 = r2.header("x-switchyard-request-id").unwrap();
    assert_ne!(id2, id);
    let fb = gw.url("/v1/feedback");
    // Bob may not rate Alice's answer: the same 404 as an id that does not exist.
    for (key, rid) in [
        (&bob, id.as_str()),
        (&alice, "req_00000000000000000000000000ff"),
    ] {
        let r = c
            .post_json(
                &fb,
                &json!({"request_id": rid, "thumbs": "up"}),
                &[("authorization", &auth(key))],
            )
            .await;
        assert_eq!(r.status, 404, "{}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["code"], "request_not_found", "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["param"], "request_id");
    }
    // Unauthenticated: 401 like /v1/*.
    let r = c
        .post_json(&fb, &json!({"request_id": id, "score": 1}), &[])
        .await;
    assert_eq!(r.status, 401);
    // Out of range: 400 naming the field.
    let r = c
        .post_json(
            &fb,
            &json!({"request_id": id, "score": 3}),
            &[("authorization", &auth(&alice))],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "score");
    let r = c
        .post_json(
            &fb,
            &json!({"request_id": id, "score": 0.25, "comment": "too short"}),
            &[("authorization", &auth(&alice))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["backend"], "old");
    // The mean reaches `switchyard spend --by target`.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = run_switchyard(
            &[
                "spend",
                "--by",
                "target",
                "--json",
                "--config",
                cfg.to_str().unwrap(),
            ],
            dir.path(),
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let line = v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["group"] == "old/m")
            .cloned();
        if let Some(l) = line
            && l["feedback_mean"] == 0.25
        {
            assert_eq!(l["feedback_count"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "no feedback in spend: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, _) = run_switchyard(
        &["spend", "--by", "target", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("feedback") && out.contains("0.25 (1)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feedback_guard_has_no_data_until_callers_rate_then_rolls_back_on_thumbs_down() {
    let (old, new) = (MockUpstream::start().await, MockUpstream::start().await);
    let hook = MockUpstream::start().await;
    hook.set_behaviour(Behaviour {
        status: Some(500),
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&config(
        dir.path(),
        &old,
        &new,
        &format!(
            r#"rollout = {{ candidate = {{ backend = "new" }}, steps = [50, 100], step_secs = 1, min_requests = 10, guard = {{ min_feedback = 0.7 }}, webhook = "{}/hook" }}"#,
            hook.url()
        ),
    ));
    let c = Client::new();
    let url = gw.url("/v1/chat/completions");
    let mut on_candidate = Vec::new();
    while on_candidate.len() < 15 {
        let r = c.post_json(&url, &chat(), &[]).await;
        assert_eq!(r.status, 200);
        if r.header("x-switchyard-backend") == Some("new") {
            on_candidate.push(r.header("x-switchyard-request-id").unwrap().to_string());
        }
    }
    // Enough candidate requests and longer than a step, but no feedback: no data, and the
    // step does not advance.
    let s = wait_for(&c, &gw, Duration::from_secs(30), "a full window", |s| {
        s["window"]["candidate"]["requests"].as_u64().unwrap_or(0) >= 15
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = rollout(&c, &gw).await.unwrap_or(s);
    assert_eq!(s["state"], "running");
    assert_eq!(s["step"], 1);
    let g = guard(&s, "min_feedback");
    assert_eq!(g["ok"], Value::Null, "{g}");
    assert_eq!(g["value"], Value::Null);
    // Thumbs down on the candidate's answers: rolled back, with the reason.
    for id in &on_candidate {
        let r = c
            .post_json(
                &gw.url("/v1/feedback"),
                &json!({"request_id": id, "thumbs": "down"}),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let s = wait_for(&c, &gw, Duration::from_secs(30), "rolled_back", |s| {
        s["state"] == "rolled_back"
    })
    .await;
    assert!(
        history(&s).last().unwrap().2.contains("min_feedback"),
        "{s:#}"
    );
    assert_eq!(guard(&s, "min_feedback")["ok"], false);
    // Each transition was POSTed to the webhook, and the failing hook was retried.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let posts: Vec<Value> = hook
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/hook")
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        let rolled_back = posts.iter().filter(|p| p["to"] == "rolled_back").count();
        let started = posts.iter().filter(|p| p["from"] == "new").count();
        if rolled_back >= 2 && started >= 2 {
            assert_eq!(posts[0]["route"], "m");
            break;
        }
        assert!(Instant::now() < deadline, "webhook posts: {posts:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
