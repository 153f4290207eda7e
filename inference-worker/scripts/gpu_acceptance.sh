#!/usr/bin/env bash
# One-call GPU acceptance of the worker's CUDA backend (issue 34), for a lent GPU machine: CUDA
# 13.0 and nvcc, no Rust, no network. Run from the repository root with the release binaries
# built on the CPU machine and carried along (scripts/README.md says how):
#
#   inference-worker/scripts/gpu_acceptance.sh
#
# It prints the GPU, the memory-bandwidth probe, model parity (GPU vs the CPU backend) on
# random tiny models in every weight format, the GPU test binary (kernel parity GPU vs CPU
# twin, model parity in both KV cache types), compute-sanitizer memcheck (and racecheck) on a
# short run, Llama-2-7B-shape Q4_0 and Q8_0 decode at batch 1 and 64 and pp512, a server smoke
# test, and a summary table against the targets and llama.cpp's figures. Aim: about 4 minutes;
# with the llama.cpp build (scripts/llama_cpp_gpu.sh, ~280 s, started first in the background
# when its archive was carried) about 6. Exit status 0 only if every check passed and every
# target was met.
#
# Inputs (paths relative to the repository root; override with the variables):
#   BIN=target/release            switchyard-worker, examples/bench, examples/gen_gguf, cuda_gpu
#   LLAMA_SRC=target/llama.cpp-src.tar.xz   optional: the llama.cpp source (llama_cpp_gpu.sh pack)
#   WORK=/tmp/switchyard-gpu      models and logs (needs ~12 GB of disk)
#   QUICK=1                       skip the 7B models (parity, memcheck and smoke only)
set -u
cd "$(dirname "$0")/../.." || exit 2
BIN=${BIN:-target/release}
LLAMA_SRC=${LLAMA_SRC:-target/llama.cpp-src.tar.xz}
WORK=${WORK:-/tmp/switchyard-gpu}
QUICK=${QUICK:-0}
SCRIPTS=inference-worker/scripts
mkdir -p "$WORK"
RES="$WORK/results.jsonl"
: >"$RES"
START=$(date +%s)
FAILED=0

say() { printf '\n== %s (t=%ss)\n' "$*" "$(($(date +%s) - START))"; }
# record NAME STATUS [JSON]: one line of the summary's input.
record() { printf '{"check": "%s", "status": "%s", "data": %s}\n' "$1" "$2" "${3:-null}" >>"$RES"; }
fail() { FAILED=1; record "$1" fail "${2:-null}"; echo "FAILED: $1"; }

for f in switchyard-worker examples/bench examples/gen_gguf cuda_gpu; do
  if [ ! -x "$BIN/$f" ]; then
    echo "gpu_acceptance: $BIN/$f is missing (build and carry it: $SCRIPTS/README.md)" >&2
    exit 2
  fi
done

# --- background work first: the llama.cpp build (CPU) and the 7B models (CPU, disk) -------------
LLAMA_PID=""
if [ -f "$LLAMA_SRC" ] && [ "${LLAMA_CPP:-1}" != 0 ]; then
  say "building llama.cpp's CUDA backend in the background ($LLAMA_SRC)"
  LLAMA_SRC="$LLAMA_SRC" WORK="$WORK" "$SCRIPTS/llama_cpp_gpu.sh" build >"$WORK/llama_build.log" 2>&1 &
  LLAMA_PID=$!
fi
GEN_PID=""
if [ "$QUICK" != 1 ]; then
  (
    for t in q4_0 q8_0; do
      [ -s "$WORK/7b-$t.gguf" ] || "$BIN/examples/gen_gguf" --shape 7b --type "$t" --out "$WORK/7b-$t.gguf.part" &&
        mv -f "$WORK/7b-$t.gguf.part" "$WORK/7b-$t.gguf" 2>/dev/null
    done
  ) >"$WORK/gen_7b.log" 2>&1 &
  GEN_PID=$!
fi

# --- the machine ------------------------------------------------------------------------------------
say "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory,clocks.max.sm --format=csv 2>&1 | tee "$WORK/gpu.txt"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
if [ -n "$GPU_NAME" ]; then record gpu ok "{\"name\": \"$GPU_NAME\"}"; else fail gpu; fi
command -v nvcc >/dev/null && nvcc --version | tail -2

say "memory bandwidth (device-to-device copy of 1 GiB)"
if out=$("$BIN/examples/bench" --device cuda:0 bandwidth 2>"$WORK/bandwidth.err"); then
  echo "$out"
  record bandwidth ok "$(echo "$out" | tail -1)"
else
  cat "$WORK/bandwidth.err"
  fail bandwidth
fi

# --- correctness ------------------------------------------------------------------------------------
say "tiny models in every format"
FORMATS="q4_0 q4_1 q8_0 q4_k q5_k q6_k f16"
for t in $FORMATS; do
  "$BIN/examples/gen_gguf" --shape tiny --type "$t" --out "$WORK/tiny-$t.gguf" 2>/dev/null || fail "gen tiny $t"
done

say "model parity: GPU vs the CPU backend (logits and 16 greedy tokens)"
for t in $FORMATS; do
  for kv in f16 q8_0; do
    if out=$("$BIN/examples/bench" --model "$WORK/tiny-$t.gguf" --device cuda:0 --parity --gen 16 --kv-cache-type "$kv" 2>"$WORK/parity-$t.err"); then
      echo "$t KV $kv: $out"
      record "parity $t kv $kv" ok "$(echo "$out" | tail -1)"
    else
      echo "$t KV $kv: $out"
      tail -3 "$WORK/parity-$t.err"
      fail "parity $t kv $kv" "$(echo "$out" | tail -1 | grep '^{' || echo null)"
    fi
  done
done

say "GPU tests: kernels vs the CPU twin, model parity, device sampling vs the CPU sampler (SWITCHYARD_GPU=1 cuda_gpu)"
if SWITCHYARD_GPU=1 "$BIN/cuda_gpu" --nocapture --test-threads 1 >"$WORK/cuda_gpu.log" 2>&1; then
  grep -E "bit-equal|test result" "$WORK/cuda_gpu.log"
  record "gpu tests" ok
else
  tail -30 "$WORK/cuda_gpu.log"
  fail "gpu tests"
fi

if command -v compute-sanitizer >/dev/null; then
  say "compute-sanitizer memcheck and racecheck (tiny Q4_K: GEMM and GEMV paths, graphs on)"
  for tool in memcheck racecheck; do
    if compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
      "$BIN/examples/bench" --model "$WORK/tiny-q4_k.gguf" --device cuda:0 --parity --prompt-tokens 20 --gen 4 \
      >"$WORK/$tool.log" 2>&1; then
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$WORK/$tool.log" | tail -1
      record "$tool" ok
    else
      tail -30 "$WORK/$tool.log"
      fail "$tool"
    fi
  done
else
  echo "compute-sanitizer not found"
  fail memcheck
fi

say "server smoke test (tiny Q8_0 on cuda:0)"
PORT=18931
"$BIN/switchyard-worker" --model "$WORK/tiny-q8_0.gguf" --device cuda:0 --port $PORT --kv-cache-mb 256 >"$WORK/server.log" 2>&1 &
SERVER=$!
ok=0
for _ in $(seq 1 60); do
  if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.5
done
if [ $ok = 1 ] &&
  curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model":"x","messages":[{"role":"user","content":"hello"}],"max_tokens":8,"temperature":0}' >"$WORK/smoke.json" &&
  grep -q '"choices"' "$WORK/smoke.json" &&
  curl -sfN "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model":"x","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"stream":true,"temperature":0.8,"top_p":0.9}' | grep -q '\[DONE\]'; then
  echo "200 OK: $(head -c 300 "$WORK/smoke.json")"
  record "server smoke" ok
else
  tail -20 "$WORK/server.log"
  fail "server smoke"
fi
kill "$SERVER" 2>/dev/null
wait "$SERVER" 2>/dev/null

# --- speed --------------------------------------------------------------------------------------------
if [ "$QUICK" != 1 ]; then
  say "waiting for the 7B models"
  wait "$GEN_PID"
  cat "$WORK/gen_7b.log" | tr '\r' '\n' | grep -v '^$' | tail -2
  for t in q4_0 q8_0; do
    say "Llama-2-7B shape $t: pp512, decode at batch 1 and 64"
    if out=$("$BIN/examples/bench" --model "$WORK/7b-$t.gguf" --device cuda:0 --prompt-tokens 512 --gen 128 --batch 1,64 --runs 3 --json 2>"$WORK/bench-$t.err"); then
      echo "$out"
      echo "$out" | grep '^{' | while read -r line; do record "speed $t" ok "$line"; done
    else
      echo "$out"
      tail -5 "$WORK/bench-$t.err"
      fail "speed $t"
    fi
  done
fi

if [ -n "$LLAMA_PID" ]; then
  say "llama.cpp on the same GPU and files"
  if wait "$LLAMA_PID"; then
    for t in q4_0 q8_0; do
      [ -s "$WORK/7b-$t.gguf" ] || continue
      WORK="$WORK" "$SCRIPTS/llama_cpp_gpu.sh" bench "$WORK/7b-$t.gguf" "$t" >>"$RES" 2>"$WORK/llama_bench-$t.err" ||
        tail -5 "$WORK/llama_bench-$t.err"
    done
  else
    tail -20 "$WORK/llama_build.log"
    echo "llama.cpp build failed: the summary uses the figures of the issue"
  fi
fi

say "summary"
if [ "$QUICK" = 1 ]; then SPEED=--no-speed; else SPEED=; fi
python3 "$SCRIPTS/gpu_summary.py" "$RES" $SPEED || FAILED=1
echo "total $(($(date +%s) - START)) s; results in $RES"
exit $FAILED
