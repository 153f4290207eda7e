//! The console (`/ui`) in a real browser: headless Chromium over WebDriver against the real
//! gateway and the in-repo mock upstream. Screenshots of every page land in
//! `target/console-screenshots/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use switchyard_tests::browser::Browser;
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, workspace_root};

const TOKEN: &str = "console-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

fn screenshots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("console-screenshots")
}

/// Two backends on two mocks (`openai` can be made to fail), a route split 80/20 between
/// them with a judged shadow, prices and a baseline so spend shows savings, and a route
/// with a staged rollout.
fn config(primary: &str, other: &str, db: &str, rubric: &str, weights: (u32, u32)) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
token_env = "SY_ADMIN"
watch = false

[state]
path = "{db}"

[[backends]]
name = "openai"
url = "{primary}"
breaker = {{ error_rate = 0.25, window_secs = 60, min_requests = 5, cooldown_secs = 600 }}

[[backends]]
name = "local"
url = "{other}"

[[prices]]
backend = "openai"
model = "*"
input_per_1m = 2.5
output_per_1m = 10.0

[[prices]]
backend = "local"
model = "*"
input_per_1m = 0.2
output_per_1m = 0.4

[[routes]]
model = "gpt-4o"
targets = [{{ backend = "openai", weight = {a} }}, {{ backend = "local", model = "llama-3.1-8b", weight = {b} }}]
fallback = [{{ backend = "local", model = "llama-3.1-8b" }}]
baseline = {{ input_per_1m = 2.5, output_per_1m = 10.0 }}
shadow = {{ backend = "local", model = "qwen-2.5-7b", sample = 0.5, judge = {{ backend = "local", model = "judge", sample = 1.0, rubric = "{rubric}" }} }}

[[routes]]
model = "gpt-4o-mini"
targets = [{{ backend = "openai" }}]
rollout = {{ candidate = {{ backend = "local", model = "llama-3.1-8b" }}, steps = [5, 25, 50, 100], step_secs = 3600, min_requests = 20, guard = {{ max_error_rate = 0.05 }} }}
"#,
        a = weights.0,
        b = weights.1
    )
}

/// The shadow's answers: most agree with the served one, every fifth does not. Every third
/// request goes to the route with the rollout.
fn chat(i: u64) -> Value {
    let served = format!("The capital of France is Paris. ({i})");
    let shadow = if i.is_multiple_of(5) {
        format!("I am not sure; it may be Lyon. ({i})")
    } else {
        served.clone()
    };
    let model = if i % 3 == 2 { "gpt-4o-mini" } else { "gpt-4o" };
    json!({"model": model, "max_tokens": 20,
           "messages": [{"role": "user", "content": format!("What is the capital of France? ({i})")}],
           "mock_answers": {"gpt-4o": served, "gpt-4o-mini": served, "llama-3.1-8b": served, "qwen-2.5-7b": shadow}})
}

/// Requests in the background until `stop`, alternating two teams' keys.
fn traffic(gw: &Gateway, keys: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let url = gw.url("/v1/chat/completions");
    tokio::spawn(async move {
        let c = Client::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let auth = format!("Bearer {}", keys[(i % keys.len() as u64) as usize]);
            let _ = c
                .post_json(&url, &chat(i), &[("authorization", &auth)])
                .await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    })
}

async fn admin(c: &Client, gw: &Gateway, method: Method, path: &str, body: Option<Value>) -> Value {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = c
        .send(
            method,
            &gw.url(path),
            body,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert!(r.status < 300, "{path}: {} {}", r.status, r.text());
    r.json()
}

/// Open a page of the console and wait until it has drawn its data.
async fn open(b: &Browser, page: &str) {
    b.execute(
        "document.getElementById('page').dataset.loaded = ''; location.hash = '#/' + arguments[0];",
        json!([page]),
    )
    .await;
    b.wait_for(
        &format!("the {page} page"),
        &format!("return document.getElementById('page').dataset.loaded === '{page}'"),
        WAIT,
    )
    .await;
}

/// No console error, failed load or CSP violation so far, and no request left the origin.
async fn assert_clean(b: &Browser, gw: &Gateway, page: &str) {
    let severe: Vec<_> = b
        .logs()
        .await
        .into_iter()
        .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
        .collect();
    assert!(severe.is_empty(), "{page}: browser log: {severe:?}");
    let origin = gw.url("");
    let names = b
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            json!([]),
        )
        .await;
    for n in names.as_array().unwrap() {
        let n = n.as_str().unwrap();
        assert!(
            n.starts_with(&origin),
            "{page}: a request left {origin}: {n}"
        );
    }
}

async fn shoot(b: &Browser, name: &str) {
    // Charts are drawn at the page's width: let a resize settle first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.screenshot(&screenshots().join(format!("console-{name}.png")))
        .await;
}

/// A day of earlier traffic written straight into the store, so that the screenshots'
/// day-long spend and shadow charts have a shape (the migration moving traffic to the
/// cheaper backend as agreement rises). Every assertion is on live traffic, made before.
fn backfill_a_day(db: &str) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let tx = conn.transaction().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for h in 1..24i64 {
        let t = now - h * 3_600_000;
        // 10 % on the candidate a day ago, 70 % now.
        let local_share = 0.1 + 0.6 * (24 - h) as f64 / 23.0;
        for (team, n) in [("search", 24), ("support", 14)] {
            for i in 0..n {
                let local = (i as f64) < local_share * n as f64;
                let (backend, model, pin, pout) = if local {
                    ("local", "llama-3.1-8b", 0.2, 0.4)
                } else {
                    ("openai", "gpt-4o", 2.5, 10.0)
                };
                let (tin, tout) = (600 + 40 * (i % 7), 180 + 25 * (i % 5));
                let cost = (tin as f64 * pin + tout as f64 * pout) / 1e6;
                let base = (tin as f64 * 2.5 + tout as f64 * 10.0) / 1e6;
                tx.execute(
                    "INSERT INTO ledger (ts_ms, team, route, backend, model, tokens_in, tokens_out, cost_usd, baseline_usd, status)
                     VALUES (?1, ?2, 'gpt-4o', ?3, ?4, ?5, ?6, ?7, ?8, 200)",
                    rusqlite::params![t + i * 60_000, team, backend, model, tin, tout, cost, base],
                )
                .unwrap();
            }
        }
        let agree_share = 0.62 + 0.3 * (24 - h) as f64 / 23.0;
        for i in 0..12 {
            let agree = (i as f64) < agree_share * 12.0;
            tx.execute(
                "INSERT INTO shadow_pairs (ts_ms, route, endpoint, stream, primary_backend, primary_model,
                   shadow_backend, shadow_model, primary_latency_ms, agree, similarity, judge_score)
                 VALUES (?1, 'gpt-4o', 'chat', 0, 'openai', 'gpt-4o', 'local', 'qwen-2.5-7b', 420.0, ?2, ?3, ?4)",
                rusqlite::params![
                    t + i * 120_000,
                    agree as i64,
                    if agree { 0.93 } else { 0.41 },
                    if agree { 8.5 } else { 5.0 }
                ],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let primary = MockUpstream::start().await;
    let other = MockUpstream::start().await;
    // The judge scores the shadow's answer 9 when it matches the served one, else 3.
    other.set_script(|req| {
        if req["model"] != "judge" {
            return None;
        }
        let p = req["messages"][0]["content"].as_str().unwrap_or("");
        let field = |tag: &str| {
            let start = p.find(&format!("<{tag}>"))? + tag.len() + 2;
            let end = p.find(&format!("</{tag}>"))?;
            Some(p[start..end].to_string())
        };
        let score = if field("ref")? == field("ans")? { 9 } else { 3 };
        Some(format!(
            "{{\"score\": {score}, \"reason\": \"{}\"}}",
            if score > 5 {
                "same answer"
            } else {
                "names the wrong city"
            }
        ))
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db").display().to_string();
    let rubric = dir.path().join("rubric.txt");
    std::fs::write(
        &rubric,
        "{question}\n<ref>{reference}</ref>\n<ans>{answer}</ans>",
    )
    .unwrap();
    let rubric = rubric.display().to_string();
    let gw = Gateway::start_with_env(
        &config(&primary.url(), &other.url(), &db, &rubric, (80, 20)),
        &[("SY_ADMIN", TOKEN)],
    );
    let c = Client::new();
    let mut keys = Vec::new();
    for team in ["search", "support"] {
        let v = admin(
            &c,
            &gw,
            Method::POST,
            "/admin/keys",
            Some(json!({"team": team})),
        )
        .await;
        keys.push(v["key"].as_str().unwrap().to_string());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&gw, keys, stop.clone());

    // Log in: the form, then the routes page; the cookie is out of the page's reach.
    b.viewport(1280, 900).await;
    b.goto(&gw.url("/ui")).await;
    b.wait_for(
        "the login form",
        "return !document.getElementById('login').hidden",
        WAIT,
    )
    .await;
    shoot(&b, "login").await;
    b.type_into("#token", TOKEN).await;
    b.click("#login-form button").await;
    b.wait_for(
        "the routes page",
        "return document.getElementById('page').dataset.loaded === 'routes'",
        WAIT,
    )
    .await;
    let cookie = b.execute("return document.cookie", json!([])).await;
    assert!(
        !cookie.as_str().unwrap().contains("switchyard_admin"),
        "{cookie}"
    );
    assert_clean(&b, &gw, "login").await;

    // Routes: the configured weights and shares.
    let route = b
        .execute(
            "return document.querySelector('[data-route=\"gpt-4o\"]').innerText",
            json!([]),
        )
        .await;
    let route = route.as_str().unwrap();
    for want in ["openai", "local", "llama-3.1-8b", "80", "20", "80%", "20%"] {
        assert!(route.contains(want), "routes page lacks {want}: {route}");
    }

    // The rollout's block, and its Pause button acting through the admin API.
    b.wait_for(
        "the rollout running",
        "const r = document.querySelector('[data-route=\"gpt-4o-mini\"]'); return r && r.innerText.includes('running')",
        WAIT,
    )
    .await;
    b.click("button[data-rollout=\"pause\"][data-route=\"gpt-4o-mini\"]")
        .await;
    b.wait_for(
        "the rollout shown paused",
        "const r = document.querySelector('section[data-route=\"gpt-4o-mini\"]'); return r && r.innerText.includes('paused')",
        WAIT,
    )
    .await;
    let v = admin(&c, &gw, Method::GET, "/admin/rollouts", None).await;
    assert_eq!(v["rollouts"][0]["state"], "paused", "{v}");

    // Keys: create one (its secret shown once, and it works), then revoke it.
    open(&b, "keys").await;
    b.type_into("#k-team", "console-team").await;
    b.type_into("#k-rpm", "120").await;
    b.click("#key-form button").await;
    let secret = b
        .wait_for(
            "the new key's secret",
            "const e = document.getElementById('new-secret'); return e && e.innerText",
            WAIT,
        )
        .await;
    let secret = secret.as_str().unwrap().trim().to_string();
    let auth = format!("Bearer {secret}");
    let r = c
        .post_json(
            &gw.url("/v1/chat/completions"),
            &chat(1),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 200, "the console's new key: {}", r.text());
    let listed = admin(&c, &gw, Method::GET, "/admin/keys", None).await;
    let id = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["team"] == "console-team")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    shoot(&b, "keys").await;
    let revoke = format!("tr[data-key=\"{id}\"] button.revoke");
    b.click(&revoke).await;
    b.click(&revoke).await;
    b.wait_for(
        "the key shown revoked",
        &format!("const r = document.querySelector('tr[data-key=\"{id}\"]'); return r && r.innerText.includes('revoked')"),
        WAIT,
    )
    .await;
    let r = c
        .post_json(
            &gw.url("/v1/chat/completions"),
            &chat(2),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 401, "a revoked key still works: {}", r.text());
    assert_clean(&b, &gw, "keys").await;

    // Config: reload a changed file, see the diff, roll back.
    std::fs::write(
        &gw.config_path,
        config(&primary.url(), &other.url(), &db, &rubric, (50, 50)),
    )
    .unwrap();
    open(&b, "config").await;
    b.click("#reload").await;
    b.wait_for(
        "version 2 in force",
        "return document.getElementById('current-version').innerText === 'version 2'",
        WAIT,
    )
    .await;
    b.wait_for(
        "the diff of versions 1 and 2",
        "const d = document.querySelector('#diff .diff'); return d && d.innerText.includes('weight = 50')",
        WAIT,
    )
    .await;
    shoot(&b, "config").await;
    b.click("#rollback").await;
    b.click("#rollback").await;
    b.wait_for(
        "version 1 back in force",
        "return document.getElementById('current-version').innerText === 'version 1'",
        WAIT,
    )
    .await;
    let v = admin(&c, &gw, Method::GET, "/admin/config", None).await;
    assert_eq!(v["current"], 1, "{v}");
    assert_clean(&b, &gw, "config").await;

    // Spend: the CSV download.
    open(&b, "spend").await;
    b.click("#spend-csv").await;
    let csv_path = b.downloads.path().join("switchyard-spend.csv");
    let start = Instant::now();
    while !csv_path.exists() {
        assert!(
            start.elapsed() < WAIT,
            "no CSV downloaded to {}",
            csv_path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert!(
        csv.starts_with(
            "group,route,requests,errors,tokens_in,tokens_out,cost_usd,baseline_usd,savings_usd\n"
        ),
        "{csv}"
    );
    for team in ["search", "support"] {
        assert!(
            csv.contains(&format!("\n{team},gpt-4o,")),
            "{team} missing: {csv}"
        );
    }
    assert_clean(&b, &gw, "spend").await;

    // Backends: faults open `openai`'s breaker, and the page shows it.
    primary.set_behaviour(Behaviour {
        status: Some(500),
        ..Default::default()
    });
    open(&b, "backends").await;
    let url = primary.url();
    b.wait_for(
        "openai's breaker shown open",
        &format!("const r = document.querySelector('tr[data-url=\"{url}\"] .breaker'); return r && r.innerText.includes('open')"),
        // The window still holds the successes from before the faults.
        2 * WAIT,
    )
    .await;
    assert_clean(&b, &gw, "backends").await;

    // A few samples of history, so every chart has a line; then a screenshot of each page.
    let start = Instant::now();
    loop {
        let s = admin(&c, &gw, Method::GET, "/admin/series/backends", None).await;
        if s["t"].as_array().unwrap().len() >= 4 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no history: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    backfill_a_day(&db);
    for page in [
        "routes", "backends", "shadow", "spend", "keys", "config", "evals",
    ] {
        open(&b, page).await;
        assert_clean(&b, &gw, page).await;
        shoot(&b, page).await;
        if page == "shadow" {
            // The worst pair, its judge's reason and both answers side by side.
            let text = b
                .execute(
                    "return document.querySelector('.pairs').innerText",
                    json!([]),
                )
                .await;
            let text = text.as_str().unwrap();
            for want in ["names the wrong city", "Lyon", "Paris", "judge 3/10"] {
                assert!(text.contains(want), "shadow page lacks {want}: {text}");
            }
        }
    }

    // A phone's width, and the dark theme.
    b.viewport(375, 812).await;
    open(&b, "routes").await;
    let overflow = b
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            json!([]),
        )
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is wider than 375 px by {overflow}"
    );
    shoot(&b, "routes-375px").await;
    b.viewport(1280, 900).await;
    b.click("#theme").await;
    let bg = b
        .execute(
            "return getComputedStyle(document.body).backgroundColor",
            json!([]),
        )
        .await;
    let dark = bg.as_str().unwrap().to_string();
    let sum: u32 = dark
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .map(|x| x.trim().parse::<u32>().unwrap_or(255))
        .sum();
    assert!(sum < 150, "the dark theme's background is {dark}");
    open(&b, "backends").await;
    shoot(&b, "backends-dark").await;
    assert_clean(&b, &gw, "dark").await;

    // The page's weight over the wire: a fresh load, document and its files.
    b.goto(&gw.url("/ui")).await;
    b.wait_for(
        "the routes page after a reload",
        "return document.getElementById('page').dataset.loaded === 'routes'",
        WAIT,
    )
    .await;
    let bytes = b
        .execute(
            "const n = performance.getEntriesByType('navigation')[0].transferSize; \
             return n + performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname.startsWith('/ui/')).reduce((a, e) => a + e.transferSize, 0)",
            json!([]),
        )
        .await;
    let bytes = bytes.as_u64().unwrap();
    eprintln!("console page weight over the wire: {bytes} bytes");
    assert!(bytes > 5_000, "implausible page weight {bytes}");
    assert!(
        bytes <= 200 * 1024,
        "the console weighs {bytes} bytes (200 KB at most)"
    );
    assert_clean(&b, &gw, "reload").await;
}

/// The token rules without a browser: cookie flags, bearer for scripts, the console header
/// on cookie writes, and the console off with the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_login_cookie_and_bearer_rules() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[admin]\ntoken_env = \"SY_ADMIN\"\n\n[state]\npath = \"{}\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"mock\" }}]\n",
        switchyard_tests::config_with(&mock.url(), ""),
        dir.path().join("s.db").display()
    );
    let gw = Gateway::start_with_env(&text, &[("SY_ADMIN", TOKEN)]);
    let c = Client::new();
    let r = c.get(&gw.url("/ui")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    let r = c.get(&gw.url("/ui/session")).await;
    assert_eq!(r.json()["signed_in"], false);
    let plain = c.get(&gw.url("/ui/app.js")).await;
    assert_eq!(plain.header("content-encoding"), None);
    let gz = c
        .get_with(&gw.url("/ui/app.js"), &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(
        gz.body.len() * 2 < plain.body.len(),
        "{} vs {}",
        gz.body.len(),
        plain.body.len()
    );

    let r = c
        .post_json(
            &gw.url("/ui/login"),
            &json!({"token": "wrong-token-0123456789"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("set-cookie").is_none());
    let r = c
        .post_json(&gw.url("/ui/login"), &json!({"token": TOKEN}), &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let set = r.header("set-cookie").unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_string();

    // The cookie reads; it writes only with the console's header (a cross-site form has none).
    let r = c
        .get_with(&gw.url("/admin/config"), &[("cookie", &cookie)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .get_with(&gw.url("/ui/session"), &[("cookie", &cookie)])
        .await;
    assert_eq!(r.json()["signed_in"], true);
    let r = c
        .post(
            &gw.url("/admin/keys"),
            r#"{"team":"t"}"#,
            &[("cookie", &cookie)],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = c
        .post(
            &gw.url("/admin/keys"),
            r#"{"team":"t"}"#,
            &[("cookie", &cookie), ("x-switchyard-console", "1")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Scripts use the bearer header on the same endpoints, the console's new ones too.
    let auth = format!("Bearer {TOKEN}");
    for path in [
        "/admin/routes",
        "/admin/series/backends",
        "/admin/shadow",
        "/admin/spend/series?by=team&since=1h&step=5m",
        "/admin/config/versions/1",
    ] {
        let r = c.get_with(&gw.url(path), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let r = c.get(&gw.url(path)).await;
        assert_eq!(r.status, 401, "{path} without a token: {}", r.text());
    }
    let r = c
        .get_with(
            &gw.url("/admin/spend?format=csv&by=team"),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    let r = c
        .get_with(
            &gw.url("/admin/spend/series?step=soon"),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("step"), "{}", r.text());
    let r = c.post(&gw.url("/ui/logout"), "", &[]).await;
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));

    // Without [admin] the console is off, like the API.
    let off = Gateway::start(&switchyard_tests::config_with(
        &mock.url(),
        "[[routes]]\nmodel = \"*\"\ntargets = [{ backend = \"mock\" }]\n",
    ));
    let r = c.get(&off.url("/ui")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("[admin]"), "{}", r.text());
}

/// On a TLS listener the login's cookie is also marked Secure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_cookie_is_secure_over_tls() {
    let mock = MockUpstream::start().await;
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n[admin]\ntoken_env = \"SY_ADMIN\"\n\n[[backends]]\nname = \"mock\"\nurl = \"{}\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"mock\" }}]\n",
        cert.display(),
        key.display(),
        mock.url()
    );
    let gw = Gateway::start_with_env(&text, &[("SY_ADMIN", TOKEN)]);
    assert_eq!(gw.scheme, "https");
    let c = Client::with_roots(std::slice::from_ref(ck.cert.der()));
    let r = c
        .post_json(&gw.url("/ui/login"), &json!({"token": TOKEN}), &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let set = r.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(set.contains(flag), "{set}");
    }
}
