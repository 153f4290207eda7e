"""complexity-router, in Python: the same policy as plugins/complexity-router (Rust).

Simple requests (short, no tools, no code, shallow conversation, no media) go to the local
model; everything else, and everything while the local backend is unhealthy, goes to the
premium one. Thresholds and targets come from [plugins.config.<file stem>].

Build:  componentize-py -d ../../wit -w classifier componentize app -o router.wasm
"""

import json
from typing import List, Optional

from wit_world import exports
from wit_world.imports import host, types

CODE_MARKERS = ["fn ", "def ", "class ", "import ", "#include", "function ", "=> {", "};",
                "return ", "SELECT ", "public static", "console.log"]


def config(key: str, default: Optional[str]) -> Optional[str]:
    v = host.config_get(key)
    return default if v is None else v


def config_int(key: str, default: int) -> int:
    try:
        return int(config(key, str(default)).strip())
    except ValueError:
        return default


def config_list(key: str) -> List[str]:
    v = host.config_get(key)
    if v is None:
        return []
    v = v.strip()
    if v.startswith("["):
        return [s for s in json.loads(v) if isinstance(s, str)]
    return [s.strip() for s in v.split(",") if s.strip()]


def text_of(m: types.Message) -> str:
    return "\n".join(p.value for p in m.content if isinstance(p, types.ContentPart_Text))


def utf8_len(s: str) -> int:
    # The Rust helpers count bytes; so do we, so both make the same decision.
    return len(s.encode("utf-8"))


def estimate_tokens(req: types.Request) -> int:
    chars = 0
    framing = 0
    for m in req.messages:
        framing += 4
        for p in m.content:
            if isinstance(p, types.ContentPart_Text):
                chars += utf8_len(p.value)
            elif isinstance(p, types.ContentPart_ImageUrl):
                chars += 340 * 4
            else:
                chars += utf8_len(p.value)
        for c in m.tool_calls:
            chars += utf8_len(c.name) + utf8_len(c.arguments)
    if req.prompt is not None:
        chars += utf8_len(req.prompt)
    for t in req.tools:
        chars += utf8_len(t.name) + utf8_len(t.description or "") + utf8_len(t.parameters or "")
    return (chars + 3) // 4 + framing


def looks_like_code(text: str) -> bool:
    if "```" in text:
        return True
    hits = sum(1 for m in CODE_MARKERS if m in text)
    braces = text.count("{") + text.count(";")
    return hits >= 2 or (hits >= 1 and braces >= 3)


def complexity(req: types.Request, max_tokens: int, max_turns: int) -> Optional[str]:
    if req.tools or any(m.tool_calls or m.role == types.Role.TOOL for m in req.messages):
        return "uses tools"
    if any(looks_like_code(text_of(m)) for m in req.messages) or \
            (req.prompt is not None and looks_like_code(req.prompt)):
        return "contains code"
    if sum(1 for m in req.messages if m.role == types.Role.USER) > max_turns:
        return "deep conversation"
    if estimate_tokens(req) > max_tokens:
        return "long prompt"
    if any(not isinstance(p, types.ContentPart_Text) for m in req.messages for p in m.content):
        return "has images or other media"
    return None


def decision(backend: str, model: str, tag: str, reason: str) -> types.Decision:
    return types.Decision(route=None, target=types.Target(backend=backend, model=model),
                          tags=[tag], reason=reason)


class Classify(exports.Classify):
    def classify(self, req: types.Request, who: types.Caller,
                 backends: List[types.BackendStatus]) -> types.Decision:
        routes = config_list("routes")
        if routes and req.model not in routes:
            return types.Decision(route=None, target=None, tags=[], reason=None)
        local = config("local_backend", "local")
        premium = config("premium_backend", "openai")
        local_model = config("local_model", req.model)
        premium_model = config("premium_model", req.model)
        why = complexity(req, config_int("max_tokens", 400), config_int("max_turns", 4))
        if why is not None:
            host.counter_add("complex", 1)
            return decision(premium, premium_model, "complexity:complex", why)
        if any(b.name == local and b.health == types.Health.UNHEALTHY for b in backends):
            host.counter_add("local_unhealthy", 1)
            return decision(premium, premium_model, "complexity:simple",
                            "simple, but the local backend is unhealthy")
        host.counter_add("simple", 1)
        return decision(local, local_model, "complexity:simple", "simple")
