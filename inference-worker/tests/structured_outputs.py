"""Structured outputs and tool calls through the official openai SDK against a running
switchyard-worker serving SmolLM2 (driven by tests/structured_outputs.rs).

usage: python3 structured_outputs.py BASE_URL

1. 20 JSON schemas (nested objects, arrays, enums, optional fields, $defs refs, unions):
   every answer under `response_format: json_schema` (strict) parses and validates with
   `jsonschema`, streamed or not; `json_object` gives an object.
2. A forced tool call (`tool_choice` naming the function), its result sent back as a `tool`
   message, then the answer: the call's arguments validate against the tool's schema; the
   streamed call (delta.tool_calls with incremental arguments) equals the whole one.
3. Unsupported schema keywords are a 400 naming them.
"""
import json
import sys

import jsonschema
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="unused")

SCHEMAS = SCHEMA_LIST = [
    ("a person", {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": False}),
    ("a city with its country and population", {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}}, "required": ["city", "country", "population"]}),
    ("a to-do list", {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5}}, "required": ["items"]}),
    ("the weather", {"type": "object", "properties": {"condition": {"enum": ["sunny", "cloudy", "rainy", "snowy"]}, "temperature": {"type": "number"}}, "required": ["condition", "temperature"]}),
    ("a book", {"type": "object", "properties": {"title": {"type": "string"}, "author": {"type": "object", "properties": {"first": {"type": "string"}, "last": {"type": "string"}}, "required": ["first", "last"]}, "year": {"type": "integer"}}, "required": ["title", "author"]}),
    ("a yes/no answer to: is the sky blue?", {"type": "object", "properties": {"answer": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 80}}, "required": ["answer"]}),
    ("a product with optional discount", {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}, "discount": {"type": ["number", "null"]}}, "required": ["name", "price", "discount"]}),
    ("three colors", {"type": "array", "items": {"enum": ["red", "green", "blue", "yellow"]}, "minItems": 3, "maxItems": 3}),
    ("a point in 3D", {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}, "z": {"type": "number"}}, "required": ["x", "y", "z"]}),
    ("an order with line items", {"type": "object", "properties": {"id": {"type": "string"}, "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}, "minItems": 1, "maxItems": 3}}, "required": ["id", "lines"], "$defs": {"line": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}, "required": ["sku", "qty"]}}}),
    ("a family tree", {"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}, "required": ["name"]}}}),
    ("a sentiment label", {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]}, "score": {"type": "number"}}, "required": ["label"]}),
    ("a user profile with optional fields", {"type": "object", "properties": {"username": {"type": "string"}, "email": {"type": "string"}, "bio": {"type": "string"}, "verified": {"type": "boolean"}}, "required": ["username"]}),
    ("a matrix of numbers", {"type": "object", "properties": {"rows": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}, "maxItems": 3}}, "required": ["rows"]}),
    ("an event", {"type": "object", "properties": {"title": {"type": "string"}, "day": {"enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}, "attendees": {"type": "array", "items": {"type": "string"}, "maxItems": 4}}, "required": ["title", "day", "attendees"]}),
    ("a status", {"anyOf": [{"type": "object", "properties": {"ok": {"const": True}, "value": {"type": "integer"}}, "required": ["ok", "value"]}, {"type": "object", "properties": {"ok": {"const": False}, "error": {"type": "string"}}, "required": ["ok", "error"]}]}),
    ("a recipe", {"type": "object", "properties": {"name": {"type": "string"}, "ingredients": {"type": "array", "items": {"type": "object", "properties": {"item": {"type": "string"}, "grams": {"type": "integer"}}, "required": ["item"]}, "maxItems": 4}, "vegan": {"type": "boolean"}}, "required": ["name", "ingredients", "vegan"]}),
    ("a nullable note", {"type": "object", "properties": {"note": {"type": ["string", "null"]}, "priority": {"type": "integer"}}, "required": ["note", "priority"]}),
    ("a company", {"type": "object", "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}, "offices": {"type": "array", "items": {"$ref": "#/$defs/address"}, "maxItems": 2}}, "required": ["name", "address"], "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string", "maxLength": 10}}, "required": ["street"]}}}),
    ("a list of numbers", {"type": "array", "items": {"type": "number"}, "maxItems": 6}),
]
assert len(SCHEMAS) == 20


def ask(what, schema, stream=False, max_tokens=200):
    kw = dict(model="smol", temperature=0, max_tokens=max_tokens,
              messages=[{"role": "user", "content": f"Give me {what} as JSON."}],
              response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}})
    if not stream:
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for ch in client.chat.completions.create(stream=True, **kw):
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
    return text, finish


for i, (what, schema) in enumerate(SCHEMAS):
    # A tight budget for a few: the answer must still close.
    budget = 24 if i % 5 == 4 else 200
    text, finish = ask(what, schema, max_tokens=budget)
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise AssertionError(f"schema {i} ({what}): not JSON: {text!r}") from e
    jsonschema.validate(doc, schema)
    assert finish == "stop", (i, finish, text)
    if i < 3:
        s, _ = ask(what, schema, stream=True, max_tokens=budget)
        assert s == text, (s, text)
    print(f"schema {i}: {text}")

r = client.chat.completions.create(model="smol", temperature=0, max_tokens=60, response_format={"type": "json_object"},
                                   messages=[{"role": "user", "content": "Describe a cat as JSON."}])
assert isinstance(json.loads(r.choices[0].message.content), dict), r

# Unsupported keywords: a 400 naming the keyword and where it is.
try:
    client.chat.completions.create(model="smol", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                   response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                                       "type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]+$"}}}}})
    raise AssertionError("expected a 400")
except openai.BadRequestError as e:
    assert "pattern" in str(e) and "#/properties/zip/pattern" in str(e), e

# A forced tool call, the tool's result, the answer.
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city", "unit"]}}}
msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
choice = {"type": "function", "function": {"name": "get_weather"}}
r = client.chat.completions.create(model="smol", temperature=0, max_tokens=80, messages=msgs, tools=[WEATHER], tool_choice=choice)
m = r.choices[0].message
assert r.choices[0].finish_reason == "tool_calls", r
assert len(m.tool_calls) == 1 and m.tool_calls[0].function.name == "get_weather", m
args = json.loads(m.tool_calls[0].function.arguments)
jsonschema.validate(args, WEATHER["function"]["parameters"])
print("tool call:", m.tool_calls[0].function.arguments)

# Streamed: the same call, arguments in several pieces.
calls, pieces, finish = {}, 0, None
for ch in client.chat.completions.create(model="smol", temperature=0, max_tokens=80, messages=msgs, tools=[WEATHER],
                                         tool_choice=choice, stream=True):
    if not ch.choices:
        continue
    finish = ch.choices[0].finish_reason or finish
    for tc in ch.choices[0].delta.tool_calls or []:
        c = calls.setdefault(tc.index, {"name": "", "arguments": ""})
        if tc.function.name:
            c["name"] = tc.function.name
        if tc.function.arguments:
            c["arguments"] += tc.function.arguments
            pieces += 1
assert finish == "tool_calls", finish
assert calls == {0: {"name": "get_weather", "arguments": m.tool_calls[0].function.arguments}}, calls
assert pieces > 1, pieces

# `required` with two tools: one of them is called, with valid arguments.
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
r = client.chat.completions.create(model="smol", temperature=0, max_tokens=80, messages=msgs, tools=[WEATHER, TIME], tool_choice="required")
tc = r.choices[0].message.tool_calls[0]
tool = {"get_weather": WEATHER, "get_time": TIME}[tc.function.name]
jsonschema.validate(json.loads(tc.function.arguments), tool["function"]["parameters"])

# The round trip: the call and its result go back through the chat template.
msgs += [m.model_dump(exclude_none=True),
         {"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": json.dumps({"temp": 18, "unit": "celsius"})}]
r = client.chat.completions.create(model="smol", temperature=0, max_tokens=30, messages=msgs, tools=[WEATHER], tool_choice="none")
assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r
print("answer:", r.choices[0].message.content)
print("ok")
