"""The official openai SDK against a running switchyard-worker (driven by tests/openai_sdk.rs).

usage: python3 openai_sdk.py BASE_URL   (BASE_URL like http://127.0.0.1:PORT/v1)
The worker is started with --ctx-size 256 so the overflow case stays cheap.
"""
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="unused")
MSG = [{"role": "user", "content": "What is the capital of France?"}]

# Chat, non-streaming, greedy: usage adds up.
r = client.chat.completions.create(model="smol", messages=MSG, max_tokens=20, temperature=0)
text = r.choices[0].message.content
assert text, r
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
assert 1 <= r.usage.completion_tokens <= 20, r.usage

# Chat, streaming: same text; usage chunk with include_usage.
chunks = list(client.chat.completions.create(model="smol", messages=MSG, max_tokens=20, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1]
assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens

# Completions, both ways.
c = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=10, temperature=0)
assert c.usage.completion_tokens == 10 and c.choices[0].finish_reason == "length", c
s = "".join(ch.choices[0].text for ch in client.completions.create(
    model="smol", prompt="Once upon a time", max_tokens=10, temperature=0, stream=True) if ch.choices)
assert s == c.choices[0].text, (s, c.choices[0].text)

# Seed reproducible with sampling on.
a = client.completions.create(model="smol", prompt="My favourite food is", max_tokens=16, temperature=1, seed=42)
b = client.completions.create(model="smol", prompt="My favourite food is", max_tokens=16, temperature=1, seed=42)
assert a.choices[0].text == b.choices[0].text

# Stop strings honoured.
words = c.choices[0].text.split()
stop = words[2]
st = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=10, temperature=0, stop=[stop])
assert st.choices[0].text == c.choices[0].text[: c.choices[0].text.find(stop)], (st.choices[0].text, stop)
assert st.choices[0].finish_reason == "stop"

# Context overflow is a 400 the SDK raises as BadRequestError.
try:
    client.completions.create(model="smol", prompt="word " * 400, max_tokens=5)
    raise AssertionError("expected a 400")
except openai.BadRequestError as e:
    assert e.status_code == 400
    assert e.body["code"] == "context_length_exceeded", e.body

# A bad parameter is a 400 naming it.
try:
    client.chat.completions.create(model="smol", messages=MSG, top_p=3)
    raise AssertionError("expected a 400")
except openai.BadRequestError as e:
    assert e.body["param"] == "top_p", e.body

# Models list.
assert [m.id for m in client.models.list()] == ["smol"]
print("openai sdk: all checks passed")
