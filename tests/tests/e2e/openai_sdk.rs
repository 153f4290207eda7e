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

const RESPONSES_SCRIPT: &str = r#"
import json, os
from openai import OpenAI
from pydantic import BaseModel

client = OpenAI(base_url=os.environ["BASE_URL"], api_key="sk-anything", max_retries=0)

# Plain.
r = client.responses.create(model="gpt-4o", input="hi", instructions="be brief")
assert r.output_text == "w0 w1 w2 w3 w4 ", r
assert r.usage.output_tokens == 5 and r.usage.input_tokens > 0, r.usage

# Streamed, through the SDK's stream helper (it checks the event sequence as it goes).
with client.responses.stream(model="gpt-4o", input="hi") as stream:
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    final = stream.get_final_response()
assert "".join(deltas) == "w0 w1 w2 w3 w4 ", deltas
assert final.output_text == "w0 w1 w2 w3 w4 " and final.usage.output_tokens == 5, final

# Streamed without the helper.
events = [e.type for e in client.responses.create(model="gpt-4o", input="hi", stream=True)]
assert events[0] == "response.created" and events[-1] == "response.completed", events

# A function tool, whole and streamed.
tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]
r = client.responses.create(model="gpt-4o", input="weather", tools=tools)
call = [o for o in r.output if o.type == "function_call"][0]
assert call.name == "get_weather" and json.loads(call.arguments)["location"] == "Paris, France", r
with client.responses.stream(model="gpt-4o", input="weather", tools=tools) as stream:
    args = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
    final = stream.get_final_response()
assert json.loads(args)["unit"] == "celsius", args
assert final.output[0].arguments == args, final

# A JSON schema format, parsed by the SDK.
class Answer(BaseModel):
    city: str
    temp: int
r = client.responses.parse(model="gpt-4o", input="json", text_format=Answer,
    extra_body={"mock_content": '{"city": "Paris", "temp": 21}'})
assert r.output_parsed == Answer(city="Paris", temp=21), r

# Stored state is refused with a 400 the SDK raises as BadRequestError.
import openai
try:
    client.responses.create(model="gpt-4o", input="hi", previous_response_id="resp_123")
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as e:
    assert "previous_response_id" in str(e), e
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_responses_api_over_a_chat_only_upstream() {
    if skip_unless(python_with_openai(), "python3 with the `openai` package") {
        return;
    }
    let mock = MockUpstream::start().await;
    let routes = r#"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "mock", model = "llama-3.1-8b" }]
"#;
    let gw = Gateway::start(&config_with(&mock.url(), routes));
    let base = gw.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", RESPONSES_SCRIPT])
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
    // Every call reached the upstream as chat/completions.
    assert!(
        mock.requests()
            .iter()
            .filter(|r| r.method == http::Method::POST)
            .all(|r| r.path == "/v1/chat/completions")
    );
}
