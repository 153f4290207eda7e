#!/usr/bin/env python3
"""Decode speed with and without a JSON schema on the same prompts, against a running worker.

usage: python3 inference-worker/scripts/structured_bench.py BASE_URL [--rounds 3] [--max-tokens 96]

For each of the 20 schemas of tests/structured_outputs.py, one greedy streamed request with
`response_format: json_schema` and one without (the same prompt, the same `max_tokens`); the
decode rate of a request is (completion tokens - 1) / (time from its first to its last
token). Requests run one at a time. Prints per-mode total tokens / total decode time and the
ratio (schema / free). Run the worker alone on the machine (other load moves the numbers).
"""
import argparse
import importlib.util
import json
import os
import time

import openai

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("so", os.path.join(here, "..", "tests", "structured_outputs.py"))
src = open(spec.origin).read()
# Only the schema list: everything before the first request.
ns = {}
exec(src[src.index("SCHEMAS ="):src.index("assert len(SCHEMAS)")], ns)
SCHEMAS = ns["SCHEMAS"]


def run(client, what, schema, max_tokens):
    kw = dict(model="smol", temperature=0, max_tokens=max_tokens, stream=True,
              stream_options={"include_usage": True},
              messages=[{"role": "user", "content": f"Give me {what} as JSON."}])
    if schema is not None:
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    first = last = None
    tokens = 0
    for ch in client.chat.completions.create(**kw):
        now = time.perf_counter()
        if ch.choices and (ch.choices[0].delta.content or ""):
            first = first or now
            last = now
        if ch.usage:
            tokens = ch.usage.completion_tokens
    return tokens - 1, (last - first) if first and last else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key="unused")
    tot = {"schema": [0, 0.0], "free": [0, 0.0]}
    for _ in range(a.rounds):
        for what, schema in SCHEMAS:
            for mode, s in (("schema", schema), ("free", None)):
                n, t = run(client, what, s, a.max_tokens)
                tot[mode][0] += n
                tot[mode][1] += t
    rates = {m: v[0] / v[1] for m, v in tot.items()}
    print(json.dumps({"schema_tok_s": round(rates["schema"], 1), "free_tok_s": round(rates["free"], 1),
                      "ratio": round(rates["schema"] / rates["free"], 3),
                      "tokens": {m: v[0] for m, v in tot.items()}}))


if __name__ == "__main__":
    main()
