//! The official `openai` Python SDK, pointed at the gateway, works unchanged.
//!
//! Skips (with a message) where Python or the `openai` package is missing, unless
//! `SWITCHYARD_CI=1`, where that is a failure.

use std::process::Command;

use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, config_with, skip_unless};

const SCRIPT: &str = r#"
import json, os, sys
from openai import OpenAI

client = OpenAI(base_url=os.environ["BASE_URL"], api_key="sk-anything", max_retries=0)

# Chat, not streamed.
r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], seed=7, user="u1")
assert r.choices[0].message.content == "w0 w1 w2 w3 w4 ", r
assert r.usage.completion_tokens == 5, r.usage

# Chat, streamed.
text = ""
chunks = 0
for c in client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True):
    chunks += 1
    if c.choices and c.choices[0].delta.content:
        text += c.choices[0].delta.content
assert text == "w0 w1 w2 w3 w4 ", text

# Streamed with usage asked for.
last = None
for c in client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}):
    last = c
assert last.usage is not None and last.usage.completion_tokens == 5, last

tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
# Tools, not streamed.
r = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "weather"}], tools=tools)
call = r.choices[0].message.tool_calls[0]
assert call.function.name == "get_weather"
assert json.loads(call.function.arguments)["location"] == "Paris, France"

# Tools, streamed.
args = ""
name = None
for c in client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "weather"}], tools=tools, stream=True):
    if c.choices and c.choices[0].delta.tool_calls:
        tc = c.choices[0].delta.tool_calls[0]
        if tc.function.name:
            name = tc.function.name
        if tc.function.arguments:
            args += tc.function.arguments
assert name == "get_weather"
assert json.loads(args)["unit"] == "celsius"

# Completions.
r = client.completions.create(model="gpt-4o", prompt="once", max_tokens=5)
assert r.choices[0].text == "w0 w1 w2 w3 w4 "

# Embeddings (the SDK asks for base64 and decodes it).
r = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
assert len(r.data) == 2 and len(r.data[0].embedding) == 8
assert abs(r.data[1].embedding[0] - 0.8) < 1e-6

# Models.
ids = [m.id for m in client.models.list()]
assert ids == ["gpt-4o", "text-embedding-3-small"], ids

# Errors surface as the SDK's own exception classes.
import openai
try:
    client.chat.completions.create(model="nope-model", messages=[])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
try:
    client.chat.completions.create(model="gpt-4o", messages=[], extra_headers={"x-mock": "status=429"})
    raise SystemExit("expected RateLimitError")
except openai.RateLimitError:
    pass
print("OK")
"#;

fn python_with_openai() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_works_unchanged() {
    if skip_unless(python_with_openai(), "python3 with the `openai` package") {
        return;
    }
    let mock = MockUpstream::start().await;
    let routes = r#"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "mock", model = "llama-3.1-8b" }]
[[routes]]
model = "text-embedding-3-small"
targets = [{ backend = "mock" }]
"#;
    let gw = Gateway::start(&config_with(&mock.url(), routes));
    let base = gw.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", SCRIPT])
            .env("BASE_URL", base)
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
}
