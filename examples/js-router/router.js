// complexity-router, in JavaScript: the same policy as plugins/complexity-router (Rust).
//
// Simple requests (short, no tools, no code, shallow conversation, no media) go to the
// local model; everything else, and everything while the local backend is unhealthy, goes
// to the premium one. Thresholds and targets come from [plugins.config.<file stem>].
//
// Build: npm install && npm run build
//
// This code runs in an interpreter (StarlingMonkey has no JIT inside Wasm), where every
// JavaScript operation costs tens of nanoseconds and native string methods are cheap by
// comparison. So it reads its config once, walks the messages with plain indexed loops,
// and lets one regular expression rule out code before counting markers.

import { configGet, counterAdd } from "switchyard:plugin/host@0.1.0";

const CODE_MARKERS = ["fn ", "def ", "class ", "import ", "#include", "function ", "=> {",
  "};", "return ", "SELECT ", "public static", "console.log"];
// Matches where a fence or any marker occurs: text it does not match is not code.
const ANY_CODE = /```|fn |def |class |import |#include|function |=> \{|\};|return |SELECT |public static|console\.log/;

const encoder = new TextEncoder();
// The Rust helpers count UTF-8 bytes; so do we, so both make the same decision. Encoding is
// one native call, measured a little cheaper than first testing for non-ASCII text.
const utf8Len = (s) => (s == null ? 0 : encoder.encode(s).length);

// The gateway fixes a plugin's config values for as long as that plugin version is loaded
// (new values reach a plugin only when it is loaded again, with fresh instances), so each
// instance reads and parses them once instead of on every request.
let settings = null;

function configInt(key, fallback) {
  const v = configGet(key);
  const n = Number.parseInt(String(v ?? fallback).trim(), 10);
  return Number.isNaN(n) ? fallback : n;
}

function configList(key) {
  const v = configGet(key);
  if (v === undefined || v === null) return [];
  const t = v.trim();
  if (t.startsWith("[")) return JSON.parse(t).filter((s) => typeof s === "string");
  return t.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

function loadSettings() {
  return {
    routes: configList("routes"),
    local: configGet("local_backend") ?? "local",
    premium: configGet("premium_backend") ?? "openai",
    // Unset: the model the client asked for.
    localModel: configGet("local_model") ?? null,
    premiumModel: configGet("premium_model") ?? null,
    maxTokens: configInt("max_tokens", 400),
    maxTurns: configInt("max_turns", 4),
  };
}

function looksLikeCode(text) {
  if (!ANY_CODE.test(text)) return false;
  if (text.includes("```")) return true;
  let hits = 0;
  for (let i = 0; i < CODE_MARKERS.length; i++) if (text.includes(CODE_MARKERS[i])) hits++;
  const braces = text.split("{").length - 1 + (text.split(";").length - 1);
  return hits >= 2 || (hits >= 1 && braces >= 3);
}

// A message's text parts joined by newlines, as the Rust SDK's `text_content`.
function textOf(content) {
  const texts = [];
  for (let i = 0; i < content.length; i++) if (content[i].tag === "text") texts.push(content[i].val);
  return texts.join("\n");
}

// Why the request needs the premium model, or null when it is simple. Checked in the Rust
// plugin's order, so both give the same reason.
function complexity(req, maxTokens, maxTurns) {
  const msgs = req.messages;
  const n = msgs.length;
  if (req.tools.length > 0) return "uses tools";
  for (let i = 0; i < n; i++) {
    const m = msgs[i];
    if (m.toolCalls.length > 0 || m.role === "tool") return "uses tools";
  }
  // One pass for the rest, each part read once: code (returned at once), user turns, size,
  // media. Every call costs in an interpreter, so the common path makes none of ours.
  let users = 0;
  let chars = 0;
  let media = false;
  for (let i = 0; i < n; i++) {
    const m = msgs[i];
    const content = m.content;
    let maybeCode = false;
    for (let j = 0; j < content.length; j++) {
      const p = content[j];
      const tag = p.tag;
      if (tag === "image-url") {
        chars += 340 * 4; // an image costs a model far more than its URL's length
        media = true;
        continue;
      }
      const v = p.val;
      chars += encoder.encode(v).length;
      if (tag !== "text") media = true;
      else if (ANY_CODE.test(v)) maybeCode = true;
    }
    // No marker contains a newline, so when no text part alone matches ANY_CODE, the
    // joined text cannot either.
    if (maybeCode && looksLikeCode(textOf(content))) return "contains code";
    if (m.role === "user") users++;
  }
  const prompt = req.prompt;
  if (prompt !== undefined && prompt !== null && looksLikeCode(prompt)) return "contains code";
  if (users > maxTurns) return "deep conversation";
  chars += utf8Len(prompt);
  const framing = 4 * n;
  if (Math.floor((chars + 3) / 4) + framing > maxTokens) return "long prompt";
  if (media) return "has images or other media";
  return null;
}

const decision = (backend, model, tag, reason) =>
  ({ route: undefined, target: { backend, model }, tags: [tag], reason });

export const classify = {
  classify(req, _who, backends) {
    const s = settings ?? (settings = loadSettings());
    if (s.routes.length > 0 && !s.routes.includes(req.model)) {
      return { route: undefined, target: undefined, tags: [], reason: undefined };
    }
    const premiumModel = s.premiumModel ?? req.model;
    const why = complexity(req, s.maxTokens, s.maxTurns);
    if (why !== null) {
      counterAdd("complex", 1n);
      return decision(s.premium, premiumModel, "complexity:complex", why);
    }
    for (let i = 0; i < backends.length; i++) {
      if (backends[i].name === s.local && backends[i].health === "unhealthy") {
        counterAdd("local_unhealthy", 1n);
        return decision(s.premium, premiumModel, "complexity:simple",
          "simple, but the local backend is unhealthy");
      }
    }
    counterAdd("simple", 1n);
    return decision(s.local, s.localModel ?? req.model, "complexity:simple", "simple");
  },
};
