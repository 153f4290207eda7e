// Builds router.js into router.wasm with componentize-js, with faster argument passing.
//
//   node build.mjs [--aot --weval-bin /path/to/weval] [--plain-bindings] [-o router.wasm]
//
// componentize-js generates JavaScript "bindings" that turn each call's arguments (the
// request record, the caller, the backends) from linear memory into JavaScript objects,
// and the policy's answer back. That code runs in StarlingMonkey's interpreter (no JIT
// inside Wasm), where every property lookup, call and allocation costs, and as generated it
// spends most of a call's time. This script rewrites the generated bindings before
// componentize-js snapshots them. Figures are the JavaScript router's time per `classify`
// call, each change against the build before it, measured side by side with
// `cargo bench -p switchyard --bench plugins -- --compare A.wasm B.wasm`:
//
// 1. `dataView(memory)` keeps the last ArrayBuffer it saw and asks for the buffer once, not
//    twice, per use (every use: exports, imports, results).
// 2. An export reads its arguments through typed arrays taken once per ArrayBuffer
//    (`argU32[(base + 4) >>> 2]`, one interpreter operation), not a DataView method per
//    field (`dataView($memory).getUint32(base + 4, true)`, a lookup and a native call).
//    This is safe: the arguments were written before the call began, inside the memory the
//    views cover; the canonical ABI puts every field at its natural alignment (the
//    generated code checks list pointers) and Wasm is little-endian, as those reads were.
//    The decoder, `Uint8Array` and `$dealloc` are read into locals once per call; a global
//    name is a lookup through the scope chain each time. (-7 % and -4 %.)
// 3. The result is written through typed arrays too, taken again after each allocation:
//    memory only grows and never moves, so views taken after an allocation cover every
//    address allocated so far. (-5 % with one DataView, then -2 %.)
// 4. A string up to 1 KiB passed out (a result, or an argument to a host function) gets
//    room for its worst case, 3 bytes per UTF-16 unit, and `encodeInto` says how many
//    bytes it wrote: one native call. The generated code counts the bytes first in a
//    JavaScript loop, character by character. Longer strings are measured first, by one
//    regular-expression test when ASCII. One result object serves every call, since the
//    caller reads it at once. A `u64` that is already a BigInt in range is passed as is.
//    (-5 % with the rest of 4; the ASCII test alone was worth 21 µs a call.)
// 5. Exports are plain functions, not `async` ones. The embedding wants a promise back from
//    every export, but an `async` function suspends at its `await` even for a plain value
//    and is resumed from the event loop. Now a policy that returns a plain value has its
//    answer written at once and an already-resolved promise returned; a promise (an
//    `async` policy) is written when it settles, as before. (-7 %.)
// 6. The `_debugLog(...)` calls go. They print only when `process.env.JCO_DEBUG` is set,
//    which cannot happen inside the sandbox (no `process`, no stdio), but built their
//    arguments on every call. (-6 %.)
//
// Together with router.js written for an interpreter, a call went from 161 to ~48 µs.
// Every rewrite is checked: where componentize-js's output does not have the shape it
// expects (another version), the script leaves that part as generated, or warns and builds
// the bindings unchanged. `--plain-bindings` builds without any of it, to compare.

import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const value = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};

const GENERATED_TO_U64 = "function toUint64(val) {\n";
const FASTER_TO_U64 =
  "function toUint64(val) {\n" +
  "  if (typeof val === 'bigint' && val >= 0n && val <= 18446744073709551615n) return val;\n";
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
// The caller reads `ptr` and `len` at once, so one result object serves every call.
const ENCODED_DECL = "const ENCODED = { ptr: 0, len: 0 };\n";
const ENCODE_FAST =
  "  const enc = ENCODED;\n" +
  "  if (s.length <= 1024) {\n" +
  "    const cap = s.length * 3, ptr = realloc(0, 0, 1, cap);\n" +
  "    enc.len = TEXT_ENCODER_UTF8.encodeInto(s, new Uint8Array(memory.buffer, ptr, cap)).written;\n" +
  "    enc.ptr = ptr;\n" +
  "    return enc;\n" +
  "  }\n" +
  "  if (!NON_ASCII_TEXT.test(s)) {\n" +
  "    const ptr = realloc(0, 0, 1, s.length);\n" +
  "    TEXT_ENCODER_UTF8.encodeInto(s, new Uint8Array(memory.buffer, ptr, s.length));\n" +
  "    enc.ptr = ptr;\n" +
  "    enc.len = s.length;\n" +
  "    return enc;\n" +
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

/** The bindings rewritten as the header says; `null` if not recognised. */
export function fasterBindings(js) {
  if (!js.includes(GENERATED_DATAVIEW) || !js.includes(ENCODE_HEAD)) return null;
  let out = js
    .replace(GENERATED_TO_U64, FASTER_TO_U64)
    .replace(GENERATED_DATAVIEW, FASTER_DATAVIEW)
    .replace(ENCODE_HEAD, NON_ASCII_DECL + ENCODED_DECL + ENCODE_HEAD + ENCODE_FAST);
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
      .replaceAll("$memory.buffer", "argBuffer")
      .replaceAll("TEXT_DECODER_UTF8.decode(new Uint8Array(", "argDecoder.decode(new ArgBytes(")
      .replaceAll("$dealloc(", "argDealloc(");
    const typed = typedReads(reads);
    out =
      out.slice(0, bodyStart) +
      (typed === null
        ? "  const argView = dataView($memory), argBuffer = lastBuffer;\n"
        : "  const argBuffer = $memory.buffer;\n") +
      "  const argDecoder = TEXT_DECODER_UTF8, ArgBytes = Uint8Array, argDealloc = $dealloc;\n" +
      (typed ?? reads) +
      out.slice(mark);
  }
  out = TYPED_VIEWS_DECL + out;
  out = syncExports(out) ?? out;
  return withoutDebugLogs(out) ?? out;
}

// Reading a field: `argView.getUint32(base + 4, true)` looks up a DataView method and makes
// a native call; indexing a typed array (`argU32[(base + 4) >>> 2]`) is one interpreter
// operation. The canonical ABI lays out every field at its natural alignment (the generated
// code checks list pointers), and Wasm is little-endian like the DataView reads, so the two
// read the same value. One set of views is kept per ArrayBuffer. `null` if a read has
// another shape.
const TYPED_VIEWS = {
  getUint8: ["argU8", "tvU8", "Uint8Array", 0],
  getInt8: ["argI8", "tvI8", "Int8Array", 0],
  getUint16: ["argU16", "tvU16", "Uint16Array", 1],
  getInt16: ["argI16", "tvI16", "Int16Array", 1],
  getUint32: ["argU32", "tvU32", "Uint32Array", 2],
  getInt32: ["argI32", "tvI32", "Int32Array", 2],
  getFloat32: ["argF32", "tvF32", "Float32Array", 2],
  getFloat64: ["argF64", "tvF64", "Float64Array", 3],
  getBigInt64: ["argI64", "tvI64", "BigInt64Array", 3],
  getBigUint64: ["argU64", "tvU64", "BigUint64Array", 3],
};
const TYPED_VIEWS_DECL =
  "let tvBuffer = null, " + Object.values(TYPED_VIEWS).map((v) => v[1]).join(", ") + ";\n" +
  "function typedViews(b) {\n" +
  "  tvBuffer = b;\n" +
  Object.values(TYPED_VIEWS)
    .map(([, g, ctor, shift]) => `  ${g} = new ${ctor}(b, 0, b.byteLength >>> ${shift});\n`)
    .join("") +
  "}\n";
function typedReads(reads) {
  const read = /argView\.(get[A-Za-z0-9]+)\(([^()]*), true\)/g;
  if (reads.split("argView.").length - 1 !== [...reads.matchAll(read)].length) return null;
  const used = new Set();
  let bad = false;
  const out = reads.replace(read, (_, method, at) => {
    const v = TYPED_VIEWS[method];
    if (!v) {
      bad = true;
      return _;
    }
    used.add(method);
    return v[3] === 0 ? `${v[0]}[${at}]` : `${v[0]}[(${at}) >>> ${v[3]}]`;
  });
  if (bad) return null;
  const locals = [...used].map((m) => `${TYPED_VIEWS[m][0]} = ${TYPED_VIEWS[m][1]}`);
  if (locals.length === 0) return out;
  return "  if (argBuffer !== tvBuffer) typedViews(argBuffer);\n  const " + locals.join(", ") + ";\n" + out;
}

// Writing the result: the generated code calls `dataView($memory)` (an interpreted call)
// for every field it stores. Here one set of views (typed arrays, see `typedWrites`, or one
// DataView where a write has another shape) serves until the next allocation. Memory only
// grows and never moves, so views taken after an allocation cover every address allocated
// so far: the result area (allocated before the call) and each list `$realloc` returned.
// So they are taken again right after each `var x = $realloc(...);`. Unchanged if
// `$realloc` is used any other way.
function fasterLowering(lower) {
  const alloc = /^(\s*var [A-Za-z0-9_$]+ = \$realloc\([^;\n]*\);)$/gm;
  const uses = lower.split("$realloc").length - 1;
  const passed = lower.split("_utf8AllocateAndEncode(").length - 1;
  if (uses !== [...lower.matchAll(alloc)].length + passed) return lower;
  const viewed = lower.replaceAll("dataView($memory)", "lowView");
  const typed = typedWrites(viewed, alloc);
  if (typed !== null) return typed;
  return "  let lowView = dataView($memory);\n" + viewed.replace(alloc, "$1 lowView = dataView($memory);");
}

// The writes of a result through typed arrays, as `typedReads` does for arguments: one
// interpreter operation per field instead of a method lookup and a native call. The views
// are taken again after each `$realloc`, like the DataView. `null` if a write has another
// shape.
function typedWrites(lower, alloc) {
  const write = /lowView\.(set[A-Za-z0-9]+)\(([^(),]*), ((?:[^(),]|\([^()]*\))*), true\);/g;
  if (lower.split("lowView").length - 1 !== [...lower.matchAll(write)].length) return null;
  const used = new Set();
  let bad = false;
  const out = lower.replace(write, (all, method, at, value) => {
    const v = TYPED_VIEWS["g" + method.slice(1)];
    if (!v) {
      bad = true;
      return all;
    }
    used.add(v);
    const local = "low" + v[0].slice(3);
    return v[3] === 0 ? `${local}[${at}] = ${value};` : `${local}[(${at}) >>> ${v[3]}] = ${value};`;
  });
  if (bad) return null;
  if (used.size === 0) return out;
  const assign = [...used].map((v) => `low${v[0].slice(3)} = ${v[1]}`).join(", ");
  const refresh = "{ const b = $memory.buffer; if (b !== tvBuffer) typedViews(b); }";
  return `  ${refresh}\n  let ${assign};\n` + out.replace(alloc, `$1 ${refresh} ${assign};`);
}

// `async function export_x(...) { LIFT; let ret; ret = await f(...); LOWER; return; }`, as
// generated, becomes a plain function that calls `f` and, when `f` returned a plain value
// (a policy written without `async`), lowers it at once and returns an already-resolved
// promise; a promise from an `async` policy is lowered when it settles, as before. The
// embedding needs a promise back from every export, but an `async` function suspends at
// the `await` even for a plain value and is resumed from the event loop, which the
// interpreter pays for on every call. `null` if an export has another shape.
function syncExports(js) {
  const head = /^async function (export_[A-Za-z0-9_$]+)\(([^)]*)\) \{\n/gm;
  const matches = [...js.matchAll(head)];
  if (matches.length === 0) return null;
  let out = js;
  for (const m of matches.reverse()) {
    const start = m.index;
    const end = out.indexOf("\n}\n", start);
    const callAt = out.indexOf("ret = await ", start);
    if (end < 0 || callAt < 0 || callAt > end) return null;
    const body = out.slice(start + m[0].length, end + 1);
    const callEnd = body.indexOf(");\n", callAt - start - m[0].length);
    const bodyCall = callAt - start - m[0].length;
    if (callEnd < 0) return null;
    const lift = body.slice(0, bodyCall);
    const call = body.slice(bodyCall + "ret = await ".length, callEnd + 2);
    // The call's arguments are names and literals; a `);` inside them would end it early.
    if (call.split("(").length !== call.split(")").length) return null;
    let lower = body.slice(callEnd + 3);
    // The lowering must end in its only `return;`, so it can run in either place.
    if (!lower.trimEnd().endsWith("return;") || lower.split("return;").length !== 2) return null;
    lower = fasterLowering(lower);
    const lowerSync = lower.slice(0, lower.lastIndexOf("return;")) + "return RESOLVED_CALL;\n";
    const fn =
      `function ${m[1]}(${m[2]}) {\n` +
      lift +
      `ret = ${call}\n` +
      "  if (ret !== null && typeof ret === 'object' && typeof ret.then === 'function') {\n" +
      `    return ret.then((ret) => {\n${lower}    });\n` +
      "  }\n" +
      lowerSync;
    out = out.slice(0, start) + fn + out.slice(end + 1);
  }
  return "const RESOLVED_CALL = Promise.resolve();\n" + out;
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
