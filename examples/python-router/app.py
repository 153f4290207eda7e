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


# The gateway fixes a plugin's config values for as long as that plugin version is loaded
# (new values reach a plugin only when it is loaded again, with fresh instances), so each
# instance reads them once instead of calling into the host for every key on every request.
_CONFIG = {}


def config(key: str, default: Optional[str]) -> Optional[str]:
    if key not in _CONFIG:
        _CONFIG[key] = host.config_get(key)
    v = _CONFIG[key]
    return default if v is None else v


def config_int(key: str, default: int) -> int:
    cached = _CONFIG.get(("int", key))
    if cached is None:
        try:
            cached = int(config(key, str(default)).strip())
        except ValueError:
            cached = default
        _CONFIG[("int", key)] = cached
    return cached


def config_list(key: str) -> List[str]:
    cached = _CONFIG.get(("list", key))
    if cached is None:
        v = (config(key, None) or "").strip()
        if v.startswith("["):
            cached = [s for s in json.loads(v) if isinstance(s, str)]
        else:
            cached = [s.strip() for s in v.split(",") if s.strip()]
        _CONFIG[("list", key)] = cached
    return cached


def utf8_len(s: str) -> int:
    # The Rust helpers count bytes; so do we, so both make the same decision.
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def looks_like_code(text: str) -> bool:
    if "```" in text:
        return True
    hits = 0
    for marker in CODE_MARKERS:
        if marker in text:
            hits += 1
            if hits >= 2:
                return True
    return hits == 1 and text.count("{") + text.count(";") >= 3


def complexity(req: types.Request, max_tokens: int, max_turns: int) -> Optional[str]:
    """Why a request is too hard for the local model, or None. The reasons are checked in
    the Rust policy's order; the messages are read in one pass (this runs on every request)."""
    messages = req.messages
    if req.tools or any(m.tool_calls or m.role == types.Role.TOOL for m in messages):
        return "uses tools"
    code = False
    users = 0
    chars = 0
    media = False
    for m in messages:
        if m.role == types.Role.USER:
            users += 1
        texts = []
        for p in m.content:
            if isinstance(p, types.ContentPart_Text):
                texts.append(p.value)
                chars += utf8_len(p.value)
            elif isinstance(p, types.ContentPart_ImageUrl):
                chars += 340 * 4
                media = True
            else:
                chars += utf8_len(p.value)
                media = True
        if not code and texts:
            code = looks_like_code(texts[0] if len(texts) == 1 else "\n".join(texts))
    if req.prompt is not None:
        code = code or looks_like_code(req.prompt)
        chars += utf8_len(req.prompt)
    if code:
        return "contains code"
    if users > max_turns:
        return "deep conversation"
    # Token estimate as the SDK's: 4 bytes a token plus 4 tokens of framing per message
    # (no tools or tool calls can be left here).
    if (chars + 3) // 4 + 4 * len(messages) > max_tokens:
        return "long prompt"
    if media:
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
