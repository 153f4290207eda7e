// complexity-router, in JavaScript: the same policy as plugins/complexity-router (Rust).
//
// Simple requests (short, no tools, no code, shallow conversation, no media) go to the
// local model; everything else, and everything while the local backend is unhealthy, goes
// to the premium one. Thresholds and targets come from [plugins.config.<file stem>].
//
// Build: npm install && npm run build

import { configGet, counterAdd } from "switchyard:plugin/host@0.1.0";

const CODE_MARKERS = ["fn ", "def ", "class ", "import ", "#include", "function ", "=> {",
  "};", "return ", "SELECT ", "public static", "console.log"];

const encoder = new TextEncoder();
// The Rust helpers count UTF-8 bytes; so do we, so both make the same decision.
const utf8Len = (s) => encoder.encode(s ?? "").length;

// The gateway fixes a plugin's config values for as long as that plugin version is loaded
// (new values reach a plugin only when it is loaded again, with fresh instances), so each
// instance reads them once instead of calling into the host for every key on every request.
const cached = new Map();
function configRaw(key) {
  if (!cached.has(key)) cached.set(key, configGet(key));
  return cached.get(key);
}

function config(key, fallback) {
  const v = configRaw(key);
  return v === undefined || v === null ? fallback : v;
}

function configInt(key, fallback) {
  const n = Number.parseInt(String(config(key, fallback)).trim(), 10);
  return Number.isNaN(n) ? fallback : n;
}

function configList(key) {
  const v = configRaw(key);
  if (v === undefined || v === null) return [];
  const t = v.trim();
  if (t.startsWith("[")) return JSON.parse(t).filter((s) => typeof s === "string");
  return t.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

const textOf = (m) =>
  m.content.filter((p) => p.tag === "text").map((p) => p.val).join("\n");

function estimateTokens(req) {
  let chars = 0;
  let framing = 0;
  for (const m of req.messages) {
    framing += 4;
    for (const p of m.content) {
      chars += p.tag === "image-url" ? 340 * 4 : utf8Len(p.val);
    }
    for (const c of m.toolCalls) chars += utf8Len(c.name) + utf8Len(c.arguments);
  }
  if (req.prompt !== undefined && req.prompt !== null) chars += utf8Len(req.prompt);
  for (const t of req.tools) {
    chars += utf8Len(t.name) + utf8Len(t.description) + utf8Len(t.parameters);
  }
  return Math.floor((chars + 3) / 4) + framing;
}

function looksLikeCode(text) {
  if (text.includes("```")) return true;
  const hits = CODE_MARKERS.filter((m) => text.includes(m)).length;
  const braces = text.split("{").length - 1 + (text.split(";").length - 1);
  return hits >= 2 || (hits >= 1 && braces >= 3);
}

function complexity(req, maxTokens, maxTurns) {
  if (req.tools.length > 0 || req.messages.some((m) => m.toolCalls.length > 0 || m.role === "tool")) {
    return "uses tools";
  }
  if (req.messages.some((m) => looksLikeCode(textOf(m))) ||
      (req.prompt !== undefined && req.prompt !== null && looksLikeCode(req.prompt))) {
    return "contains code";
  }
  if (req.messages.filter((m) => m.role === "user").length > maxTurns) return "deep conversation";
  if (estimateTokens(req) > maxTokens) return "long prompt";
  if (req.messages.some((m) => m.content.some((p) => p.tag !== "text"))) {
    return "has images or other media";
  }
  return null;
}

const decision = (backend, model, tag, reason) =>
  ({ route: undefined, target: { backend, model }, tags: [tag], reason });

export const classify = {
  classify(req, _who, backends) {
    const routes = configList("routes");
    if (routes.length > 0 && !routes.includes(req.model)) {
      return { route: undefined, target: undefined, tags: [], reason: undefined };
    }
    const local = config("local_backend", "local");
    const premium = config("premium_backend", "openai");
    const localModel = config("local_model", req.model);
    const premiumModel = config("premium_model", req.model);
    const why = complexity(req, configInt("max_tokens", 400), configInt("max_turns", 4));
    if (why !== null) {
      counterAdd("complex", 1n);
      return decision(premium, premiumModel, "complexity:complex", why);
    }
    if (backends.some((b) => b.name === local && b.health === "unhealthy")) {
      counterAdd("local_unhealthy", 1n);
      return decision(premium, premiumModel, "complexity:simple",
        "simple, but the local backend is unhealthy");
    }
    counterAdd("simple", 1n);
    return decision(local, localModel, "complexity:simple", "simple");
  },
};
