//! Requests passed through in their own protocol: the Responses API to a backend with
//! `api = "responses"`, Anthropic's Messages API to one with `api = "anthropic"` (the mock
//! answers both natively), with the ledger's tokens read from those formats, and the 400s
//! for requests a chosen target cannot take.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, skip_unless};

/// Backends `chat` (OpenAI-compatible, the default api), `openai` (`api = "responses"`)
/// and `claude` (`api = "anthropic"`, its key from `H30_CLAUDE_KEY`); a route to each, and
/// `mixed`: `chat` first, `claude` as its fallback.
fn config(chat: &str, openai: &str, claude: &str, db: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[state]
path = "{db}"

[[backends]]
name = "chat"
url = "{chat}"
forward_headers = ["x-mock"]

[[backends]]
name = "openai"
url = "{openai}"
api = "responses"
forward_headers = ["x-mock"]

[[backends]]
name = "claude"
url = "{claude}"
api = "anthropic"
api_key_env = "H30_CLAUDE_KEY"
pool = {{ health_checks = true, health_interval_secs = 0.2 }}

[[routes]]
model = "gpt-4o"
targets = [{{ backend = "openai", model = "gpt-4.1" }}]

[[routes]]
model = "local"
targets = [{{ backend = "chat", model = "llama-3.1-8b" }}]

[[routes]]
model = "claude-sonnet"
targets = [{{ backend = "claude", model = "claude-sonnet-4-5" }}]

[[routes]]
model = "mixed"
targets = [{{ backend = "chat" }}]
fallback = [{{ backend = "claude", model = "claude-haiku-4-5" }}]
"#,
        db = db.display()
    )
}

struct Setup {
    chat: MockUpstream,
    openai: MockUpstream,
    claude: MockUpstream,
    gw: Gateway,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let (chat, openai, claude) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gov.db");
    let gw = Gateway::start_with_env(
        &config(&chat.url(), &openai.url(), &claude.url(), &db),
        &[("H30_CLAUDE_KEY", "sk-ant-backend")],
    );
    Setup {
        chat,
        openai,
        claude,
        gw,
        db,
        _dir: dir,
    }
}

fn event_names(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_owned)
        .collect()
}

/// The last completion request a mock received (health checks are GETs).
fn last_post(mock: &MockUpstream) -> switchyard_tests::mock::Recorded {
    mock.requests()
        .into_iter()
        .rev()
        .find(|r| r.method == http::Method::POST)
        .unwrap()
}

/// The mock's prompt tokens for the last request it received (body bytes / 4).
fn prompt_tokens(mock: &MockUpstream) -> i64 {
    (last_post(mock).body.len() / 4).max(1) as i64
}

fn posts(mock: &MockUpstream) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.method == http::Method::POST)
        .count()
}

fn ledger(db: &Path) -> Vec<(String, i64, i64, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT backend, tokens_in, tokens_out, outcome FROM ledger ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_requests_pass_through_to_a_responses_backend_with_their_state() {
    let Setup {
        chat,
        openai,
        mut gw,
        db,
        _dir,
        ..
    } = setup().await;
    let url = gw.url("/v1/responses");
    let c = Client::new();

    // Stored state goes to the backend that keeps it, the body as the client sent it.
    let req = json!({"model": "gpt-4o", "input": "and then?", "previous_response_id": "resp_prev",
                     "store": true, "include": ["reasoning.encrypted_content"]});
    let r = c.post_json(&url, &req, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_post(&openai);
    assert_eq!(sent.path, "/v1/responses");
    let mut expected = req.clone();
    expected["model"] = json!("gpt-4.1");
    assert_eq!(sent.json(), expected);
    let complete_in = prompt_tokens(&openai);
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["previous_response_id"], "resp_prev");
    assert_eq!(v["usage"]["input_tokens"], complete_in);
    assert_eq!(r.header("x-switchyard-backend"), Some("openai"));

    // Streamed: the upstream's events, relayed as they are.
    let s = c
        .post_stream(
            &url,
            &json!({"model": "gpt-4o", "input": "hi", "stream": true, "previous_response_id": "resp_prev"}),
            &[],
        )
        .await;
    assert_eq!(s.status, 200);
    let body = s.body();
    assert_eq!(
        last_post(&openai).json()["previous_response_id"],
        "resp_prev"
    );
    let stream_in = prompt_tokens(&openai);
    let names = event_names(&body);
    assert_eq!(names.first().map(String::as_str), Some("response.created"));
    assert_eq!(names.last().map(String::as_str), Some("response.completed"));
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "response.output_text.delta")
            .count(),
        5
    );
    assert!(!body.contains("[DONE]"), "{body}");

    // A stream the backend cuts short ends with an error event in the Responses format.
    let s = c
        .post_stream(
            &url,
            &json!({"model": "gpt-4o", "input": "hi", "stream": true}),
            &[("x-mock", "end_after=4")],
        )
        .await;
    assert_eq!(s.status, 200);
    let body = s.body();
    let names = event_names(&body);
    assert_eq!(names.last().map(String::as_str), Some("error"), "{body}");
    assert!(!names.iter().any(|n| n == "response.completed"), "{body}");
    let last: serde_json::Value =
        serde_json::from_str(body.trim_end().rsplit("data: ").next().unwrap()).unwrap();
    assert_eq!(last["type"], "error");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("response.completed"),
        "{last}"
    );

    // The same state for a target that needs translation: a 400 naming the member and the
    // backend, before any upstream call.
    let r = c
        .post_json(
            &url,
            &json!({"model": "local", "input": "hi", "previous_response_id": "resp_prev"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["param"], "previous_response_id");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("backend 'chat'"), "{msg}");
    assert_eq!(posts(&chat), 0);

    // Without state, the chat backend still answers through translation.
    let r = c
        .post_json(&url, &json!({"model": "local", "input": "hi"}), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_post(&chat).path, "/v1/chat/completions");
    assert_eq!(r.json()["object"], "response");

    // A chat request to the Responses backend stays chat (OpenAI serves both).
    let r = c
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_post(&openai).path, "/v1/chat/completions");

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let rows: Vec<_> = ledger(&db)
        .into_iter()
        .filter(|r| r.0 == "openai")
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0], ("openai".into(), complete_in, 5, "ok".into()));
    assert_eq!(rows[1], ("openai".into(), stream_in, 5, "ok".into()));
    assert_eq!(rows[2].3, "stream_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_pass_through_to_an_anthropic_backend() {
    let Setup {
        chat,
        openai,
        claude,
        mut gw,
        db,
        _dir,
        ..
    } = setup().await;
    let url = gw.url("/v1/messages");
    let c = Client::new();

    let req = json!({"model": "claude-sonnet", "max_tokens": 64, "system": "terse",
                     "messages": [{"role": "user", "content": "hi"}],
                     "thinking": {"type": "enabled", "budget_tokens": 32}});
    let r = c
        .post_json(
            &url,
            &req,
            &[
                ("x-api-key", "caller-key"),
                ("anthropic-beta", "tools-2024"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_post(&claude);
    assert_eq!(sent.path, "/v1/messages");
    let mut expected = req.clone();
    expected["model"] = json!("claude-sonnet-4-5");
    assert_eq!(sent.json(), expected);
    // Anthropic's key header with the backend's key; the caller's key stays here.
    let h = |n: &str| sent.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("x-api-key").as_deref(), Some("sk-ant-backend"));
    assert_eq!(h("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(h("anthropic-beta").as_deref(), Some("tools-2024"));
    assert_eq!(h("authorization"), None);
    let complete_in = prompt_tokens(&claude);
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["usage"]["input_tokens"], complete_in);

    // Streamed: Anthropic's events as the backend sent them; usage from message_start and
    // message_delta.
    let s = c
        .post_stream(
            &url,
            &json!({"model": "claude-sonnet", "max_tokens": 64, "stream": true,
                    "messages": [{"role": "user", "content": "hello"}]}),
            &[],
        )
        .await;
    assert_eq!(s.status, 200);
    let body = s.body();
    let stream_in = prompt_tokens(&claude);
    let names = event_names(&body);
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert_eq!(
        names.iter().filter(|n| *n == "content_block_delta").count(),
        5
    );

    // Chat and Responses clients cannot be answered by an Anthropic-only backend: a 400
    // naming the route and backend, and no upstream call.
    let before = posts(&claude);
    let r = c
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "claude-sonnet", "messages": [{"role": "user", "content": "hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("route 'claude-sonnet'") && msg.contains("backend 'claude'"),
        "{msg}"
    );
    let r = c
        .post_json(
            &gw.url("/v1/responses"),
            &json!({"model": "claude-sonnet", "input": "hi"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(posts(&claude), before);

    // As a fallback: skipped for a chat client, passed through for a Messages client (whose
    // first target, a chat backend, got the request translated and failed).
    let r = c
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "mixed", "messages": [{"role": "user", "content": "hi"}]}),
            &[("x-mock", "status=500")],
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(posts(&claude), before);
    let r = c
        .post_json(
            &url,
            &json!({"model": "mixed", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
            &[("x-mock", "status=500")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_post(&chat).path, "/v1/chat/completions");
    assert_eq!(last_post(&claude).json()["model"], "claude-haiku-4-5");
    assert_eq!(r.json()["type"], "message");
    assert_eq!(r.header("x-switchyard-backend"), Some("claude"));
    let fallback_in = prompt_tokens(&claude);
    assert_eq!(posts(&openai), 0);
    // Its health checks carry the key as Anthropic's API reads it.
    let checks: Vec<_> = claude
        .requests()
        .into_iter()
        .filter(|r| r.method == http::Method::GET)
        .collect();
    assert!(!checks.is_empty());
    for r in checks {
        assert_eq!(r.headers["x-api-key"], "sk-ant-backend");
        assert!(r.headers.get("authorization").is_none());
    }

    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some());
    let rows: Vec<_> = ledger(&db)
        .into_iter()
        .filter(|r| r.0 == "claude" && r.3 == "ok")
        .collect();
    assert_eq!(
        rows,
        [
            ("claude".into(), complete_in, 5, "ok".into()),
            ("claude".into(), stream_in, 5, "ok".into()),
            ("claude".into(), fallback_in, 5, "ok".into()),
        ]
    );
}

#[test]
fn an_unknown_api_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchyard.toml");
    std::fs::write(
        &cfg,
        "[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:1/v1\"\napi = \"messages\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{ backend = \"b\" }]\n",
    )
    .unwrap();
    let (code, out, err) = switchyard_tests::run_switchyard(
        &["check", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("backends[0].api"), "{err}{out}");
    assert!(err.contains("\"messages\""), "{err}{out}");
}

const OPENAI_SCRIPT: &str = r#"
import os
from openai import OpenAI
client = OpenAI(base_url=os.environ["BASE_URL"], api_key="sk-anything", max_retries=0)
r = client.responses.create(model="gpt-4o", input="more", previous_response_id="resp_prev", store=True)
assert r.output_text == "w0 w1 w2 w3 w4 ", r
assert r.previous_response_id == "resp_prev", r
assert r.usage.output_tokens == 5, r.usage
with client.responses.stream(model="gpt-4o", input="more", previous_response_id="resp_prev") as s:
    text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
    final = s.get_final_response()
assert text == "w0 w1 w2 w3 w4 ", text
assert final.usage.output_tokens == 5, final.usage
print("OK")
"#;

const ANTHROPIC_SCRIPT: &str = r#"
import os
import anthropic
client = anthropic.Anthropic(base_url=os.environ["BASE_URL"], api_key="caller", max_retries=0)
m = client.messages.create(model="claude-sonnet", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
assert m.content[0].text == "w0 w1 w2 w3 w4 ", m
assert m.usage.output_tokens == 5, m.usage
with client.messages.stream(model="claude-sonnet", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
assert text == "w0 w1 w2 w3 w4 ", text
assert final.usage.output_tokens == 5 and final.stop_reason == "end_turn", final
print("OK")
"#;

fn python_with(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn run_script(script: &'static str, base: String) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", script])
            .env("BASE_URL", base)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.success() && stdout.contains("OK"),
        format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdks_work_through_passthrough() {
    if skip_unless(
        python_with("openai") && python_with("anthropic"),
        "python3 with the `openai` and `anthropic` packages",
    ) {
        return;
    }
    let s = setup().await;
    let (ok, out) = run_script(OPENAI_SCRIPT, s.gw.url("/v1")).await;
    assert!(ok, "{out}\ngateway log:\n{}", s.gw.log());
    // The Anthropic SDK appends /v1/messages to its base URL.
    let (ok, out) = run_script(ANTHROPIC_SCRIPT, s.gw.url("")).await;
    assert!(ok, "{out}\ngateway log:\n{}", s.gw.log());
    let paths: Vec<String> = s
        .openai
        .requests()
        .iter()
        .chain(s.claude.requests().iter())
        .filter(|r| r.method == http::Method::POST)
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/responses",
            "/v1/responses",
            "/v1/messages",
            "/v1/messages"
        ]
    );
    assert_eq!(posts(&s.chat), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapt_plugins_rewrite_is_never_bypassed_by_passing_the_clients_body_through() {
    use switchyard_tests::{plugins, workspace_root};
    let (openai, claude) = (MockUpstream::start().await, MockUpstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    plugins::install(&plugins::first_party("pii-mask"), &plugin_dir, "pii-mask");
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"

[plugins]
dir = "{plugins}"
cache_dir = "{cache}"
timeout_ms = 5000

[plugins.config.pii-mask]
external_backends = ["openai", "claude"]

[plugins.overrides.pii-mask]
on_error = "reject"

[[backends]]
name = "openai"
url = "{openai}"
api = "responses"

[[backends]]
name = "claude"
url = "{claude}"
api = "anthropic"

[[routes]]
model = "gpt-4o"
targets = [{{ backend = "openai" }}]

[[routes]]
model = "claude-sonnet"
targets = [{{ backend = "claude" }}]
"#,
        plugins = plugin_dir.display(),
        cache = workspace_root().join("target/plugin-cache").display(),
        openai = openai.url(),
        claude = claude.url(),
    );
    let gw = Gateway::start(&cfg);
    let c = Client::new();
    let email = "jo.anna69@corp.example.net";
    let text = format!("reach me at {email}");

    // Masked for the Responses backend: sent as the rewritten chat request (OpenAI takes
    // chat too), answered in the Responses format.
    let r = c
        .post_json(
            &gw.url("/v1/responses"),
            &json!({"model": "gpt-4o", "input": text}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "response");
    let sent = last_post(&openai);
    assert_eq!(sent.path, "/v1/chat/completions");
    let body = String::from_utf8_lossy(&sent.body).into_owned();
    assert!(!body.contains(email), "{body}");
    // Nothing to mask: passed through as sent.
    let r = c
        .post_json(
            &gw.url("/v1/responses"),
            &json!({"model": "gpt-4o", "input": "nothing personal"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_post(&openai).path, "/v1/responses");

    // An Anthropic-only backend can only be sent the client's body: refused, not leaked.
    let r = c
        .post_json(
            &gw.url("/v1/messages"),
            &json!({"model": "claude-sonnet", "max_tokens": 8,
                    "messages": [{"role": "user", "content": text}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("adapt plugin"), "{msg}");
    assert_eq!(posts(&claude), 0);
}
