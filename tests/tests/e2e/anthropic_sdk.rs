//! The official `anthropic` Python SDK, pointed at the gateway, served by an
//! OpenAI-compatible upstream.
//!
//! Skips (with a message) where Python or the `anthropic` package is missing, unless
//! `SWITCHYARD_CI=1`, where that is a failure.

use std::process::Command;

use serde_json::Value;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, config_with, run_switchyard, skip_unless};

const SCRIPT: &str = r#"
import json, os
import anthropic

client = anthropic.Anthropic(base_url=os.environ["BASE_URL"], api_key=os.environ["KEY"], max_retries=0)

# Plain.
m = client.messages.create(model="gpt-4o", max_tokens=16, system="terse",
    messages=[{"role": "user", "content": "hi"}])
assert m.content[0].type == "text" and m.content[0].text == "w0 w1 w2 w3 w4 ", m
assert m.stop_reason == "end_turn" and m.usage.output_tokens == 5 and m.usage.input_tokens > 0, m
usage = [(m.usage.input_tokens, m.usage.output_tokens)]

# Streamed, through the SDK's stream helper (it accumulates the events into a message).
with client.messages.stream(model="gpt-4o", max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
assert text == "w0 w1 w2 w3 w4 ", text
assert final.usage.output_tokens == 5 and final.usage.input_tokens > 0, final.usage
usage.append((final.usage.input_tokens, final.usage.output_tokens))

# A tool call round trip.
tools = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]
msgs = [{"role": "user", "content": "weather in Paris?"}]
m = client.messages.create(model="gpt-4o", max_tokens=16, tools=tools, messages=msgs)
assert m.stop_reason == "tool_use", m
tu = [b for b in m.content if b.type == "tool_use"][0]
assert tu.name == "get_weather" and tu.input["location"] == "Paris, France", tu
usage.append((m.usage.input_tokens, m.usage.output_tokens))
msgs += [{"role": "assistant", "content": m.content},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tu.id, "content": "sunny"}]}]
m = client.messages.create(model="gpt-4o", max_tokens=16, tools=tools, messages=msgs)
usage.append((m.usage.input_tokens, m.usage.output_tokens))

# A streamed tool call: the helper assembles the input from the JSON deltas.
with client.messages.stream(model="gpt-4o", max_tokens=16, tools=tools, messages=msgs[:1]) as s:
    final = s.get_final_message()
tu = [b for b in final.content if b.type == "tool_use"][0]
assert tu.input["unit"] == "celsius", final
usage.append((final.usage.input_tokens, final.usage.output_tokens))

# count_tokens.
n = client.messages.count_tokens(model="gpt-4o", messages=[{"role": "user", "content": "hello there"}])
assert n.input_tokens > 0, n

# Errors are the SDK's own exception classes.
try:
    client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except anthropic.NotFoundError as e:
    assert e.body["error"]["type"] == "not_found_error", e.body
bad = anthropic.Anthropic(base_url=os.environ["BASE_URL"], api_key="sk-sy-" + "ab" * 24, max_retries=0)
try:
    bad.messages.create(model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected AuthenticationError")
except anthropic.AuthenticationError:
    pass
print("USAGE " + json.dumps(usage))
print("OK")
"#;

fn python_with_anthropic() -> bool {
    Command::new("python3")
        .args(["-c", "import anthropic"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_anthropic_python_sdk_over_an_openai_upstream() {
    if skip_unless(
        python_with_anthropic(),
        "python3 with the `anthropic` package",
    ) {
        return;
    }
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gov.db");
    let cfg = dir.path().join("switchyard.toml");
    let text = config_with(
        &mock.url(),
        &format!(
            "[state]\npath = \"{}\"\n[[routes]]\nmodel = \"gpt-4o\"\ntargets = [{{ backend = \"mock\", model = \"llama-3.1-8b\" }}]\n",
            db.display()
        ),
    );
    std::fs::write(&cfg, &text).unwrap();
    let (code, out, err) = run_switchyard(
        &[
            "keys",
            "create",
            "--json",
            "--team",
            "t",
            "--config",
            cfg.to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let key: Value = serde_json::from_str(out.trim()).unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let mut gw = Gateway::start(&text);
    // The SDK appends `/v1/messages` to its base URL.
    let base = gw.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", SCRIPT])
            .env("BASE_URL", base)
            .env("KEY", key)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "stdout:\n{stdout}\nstderr:\n{stderr}\ngateway log:\n{}",
        gw.log()
    );
    // The ledger's tokens are the usage the SDK saw (the upstream's), call for call.
    let sdk: Vec<(i64, i64)> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("USAGE "))
        .map(|u| serde_json::from_str(u).unwrap())
        .unwrap();
    gw.terminate();
    assert!(gw.wait_exit(std::time::Duration::from_secs(20)).is_some());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("SELECT tokens_in, tokens_out FROM ledger WHERE status = 200 ORDER BY id")
        .unwrap();
    let rows: Vec<(i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, sdk);
}
