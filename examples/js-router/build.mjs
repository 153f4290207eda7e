// Builds router.js into router.wasm with componentize-js, with faster argument passing.
//
//   node build.mjs [--aot --weval-bin /path/to/weval] [--plain-bindings] [-o router.wasm]
//
// componentize-js generates JavaScript "bindings" that turn each call's arguments (the
// request record, the caller, the backends) from linear memory into JavaScript objects.
// That code runs in StarlingMonkey's interpreter, and as generated it asks the engine for
// the memory's ArrayBuffer twice per field it reads (`dataView($memory)` calls two native
// getters). For our `classify` arguments that was 33 of the 70 µs an empty policy cost per
// call. This script rewrites the generated bindings before componentize-js snapshots them:
//
// 1. `dataView(memory)` keeps the last ArrayBuffer it saw and asks for the buffer once, not
//    twice (every use: exports, imports, results);
// 2. while an export reads its arguments, it reads them through one DataView taken when the
//    call starts. This is safe because the arguments were written before the call began, so
//    they lie inside the memory the view covers; growth during the read only adds memory
//    past them. Results are still written through a fresh view, as generated.
// 3. a string passed out (a result, or an argument to a host function) is measured by one
//    regular-expression test when it is ASCII, where the generated code counts its UTF-8
//    bytes in a JavaScript loop, character by character. Other strings take that loop.
//    Returning a decision's four short strings cost 21 µs a call before this.
// 4. the `_debugLog(...)` calls go. They print only when `process.env.JCO_DEBUG` is set,
//    which cannot happen inside the sandbox (no `process`, no stdio), but built their
//    arguments on every call: 6 % of this router's time.
//
// The rewrite is checked: if componentize-js's output does not have the shape it expects
// (a different version), the script says so and builds with the bindings unchanged.
// `--plain-bindings` builds without it, to compare.

import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const value = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};

const GENERATED_DATAVIEW =
  "const dataView = mem => dv.buffer === mem.buffer ? dv : dv = new DataView(mem.buffer);";
const FASTER_DATAVIEW =
  "let lastBuffer = null;\n" +
  "const dataView = mem => { const b = mem.buffer; if (b !== lastBuffer) { lastBuffer = b; dv = new DataView(b); } return dv; };";
const ENCODE_HEAD =
  "function _utf8AllocateAndEncode(s, realloc, memory) {\n" +
  "  if (typeof s !== 'string') {\n" +
  "    throw new TypeError('expected a string, received [' + typeof s + ']');\n" +
  "  }\n" +
  "  if (s.length === 0) { return { ptr: 1, len: 0 }; }\n";
// Declared once, before the function: a regular-expression literal inside it would make a
// new RegExp object on every call.
const NON_ASCII_DECL = "const NON_ASCII_TEXT = /[^\\x00-\\x7f]/;\n";
const ENCODE_ASCII =
  "  if (!NON_ASCII_TEXT.test(s)) {\n" +
  "    const ptr = realloc(0, 0, 1, s.length);\n" +
  "    TEXT_ENCODER_UTF8.encodeInto(s, new Uint8Array(memory.buffer, ptr, s.length));\n" +
  "    return { ptr, len: s.length, codepoints: s.length };\n" +
  "  }\n";
const EXPORT_HEAD = /^(async )?function export_[A-Za-z0-9_$]+\([^)]*\) \{\n/gm;
const CALL_MARK = "_debugLog(' [Instruction::CallInterface]";

// `_debugLog(...)` statements, with their arguments (strings and object literals).
function withoutDebugLogs(js) {
  const call = "_debugLog(";
  let out = "";
  let at = 0;
  for (;;) {
    const start = js.indexOf(call, at);
    if (start < 0) return out + js.slice(at);
    // Find the matching ")", skipping quoted strings.
    let depth = 0;
    let i = start + call.length - 1;
    let quote = null;
    for (; i < js.length; i++) {
      const c = js[i];
      if (quote) {
        if (c === "\\") i++;
        else if (c === quote) quote = null;
      } else if (c === "'" || c === '"' || c === "`") quote = c;
      else if (c === "(") depth++;
      else if (c === ")" && --depth === 0) break;
    }
    if (i >= js.length || js[i + 1] !== ";") return null;
    out += js.slice(at, start);
    at = i + 2;
  }
}

/** The bindings with arguments read through one view per call; `null` if not recognised. */
export function fasterBindings(js) {
  if (!js.includes(GENERATED_DATAVIEW) || !js.includes(ENCODE_HEAD)) return null;
  let out = js
    .replace(GENERATED_DATAVIEW, FASTER_DATAVIEW)
    .replace(ENCODE_HEAD, NON_ASCII_DECL + ENCODE_HEAD + ENCODE_ASCII);
  const heads = [...out.matchAll(EXPORT_HEAD)];
  if (heads.length === 0) return null;
  // Rewrite from the last export back, so earlier offsets stay valid.
  for (const head of heads.reverse()) {
    const bodyStart = head.index + head[0].length;
    const mark = out.indexOf(CALL_MARK, bodyStart);
    const nextHead = out.slice(bodyStart).search(EXPORT_HEAD);
    if (mark < 0 || (nextHead >= 0 && bodyStart + nextHead < mark)) return null;
    const reads = out
      .slice(bodyStart, mark)
      .replaceAll("dataView($memory)", "argView")
      .replaceAll("$memory.buffer", "argBuffer");
    out =
      out.slice(0, bodyStart) +
      "  const argView = dataView($memory), argBuffer = lastBuffer;\n" +
      reads +
      out.slice(mark);
  }
  return withoutDebugLogs(out) ?? out;
}

// componentize-js takes its bindings from the splicer's `spliceBindings`; the splicer is a
// plain exported object, so wrapping that one method is enough (no files are patched).
async function wrapSplicer() {
  const main = import.meta.resolve("@bytecodealliance/componentize-js");
  const { splicer } = await import(new URL("../lib/spidermonkey-embedding-splicer.js", main));
  const splice = splicer.spliceBindings;
  splicer.spliceBindings = (...a) => {
    const out = splice(...a);
    const faster = fasterBindings(out.jsBindings);
    if (faster === null) {
      console.warn("build.mjs: unexpected componentize-js bindings; building them unchanged");
    } else {
      out.jsBindings = faster;
      console.log("build.mjs: argument passing rewritten (see the header of build.mjs)");
    }
    return out;
  };
}

async function main() {
  if (!flag("--plain-bindings")) await wrapSplicer();
  const output = value("-o", "router.wasm");
  const { component } = await componentize({
    sourcePath: value("--source", "router.js"),
    witPath: value("--wit", "../../wit"),
    worldName: value("--world-name", "classifier"),
    // A policy needs none of these WASI features; leaving them out keeps the component small.
    disableFeatures: ["stdio", "random", "clocks", "http", "fetch-event"],
    enableAot: flag("--aot"),
    wevalBin: value("--weval-bin", undefined),
  });
  await writeFile(output, component);
  console.log(`build.mjs: wrote ${output} (${component.length} bytes)`);
}

// Run as a script (`node build.mjs`); imported, it only provides `fasterBindings`.
if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) await main();
