#!/usr/bin/env bash
# llama.cpp's CUDA backend beside ours, on the GPU machine (no network there): built from the
# llama.cpp source vendored in the llama-cpp-python source package, carried as a trimmed
# archive. The package itself is 76.6 MB (llama-cpp-python 0.3.36: a .git pack, vocabulary
# files and docs), more than the 64 MiB a GPU call may carry; `pack` keeps what the build
# needs (CMake files, ggml, src, include, common, tools, vendor): 8.2 MB as .tar.xz.
#
#   On the CPU machine (network to PyPI):
#     pip download llama-cpp-python==0.3.36 --no-deps --no-binary llama-cpp-python -d /tmp/lcp
#     inference-worker/scripts/llama_cpp_gpu.sh pack /tmp/lcp/llama_cpp_python-0.3.36.tar.gz target/llama.cpp-src.tar.xz
#   On the GPU machine (needs cmake, a C++ compiler and nvcc; gpu_acceptance.sh calls these):
#     inference-worker/scripts/llama_cpp_gpu.sh build          # ~280 s on 16 cores
#     inference-worker/scripts/llama_cpp_gpu.sh bench MODEL.gguf NAME
#
# `bench` prints JSON lines for gpu_summary.py: llama-bench pp512 and tg128 at batch 1
# (flash attention off, all layers on the GPU) and llama-batched-bench's decode throughput
# over 64 sequences (128-token prompts, 128 tokens each).
set -eu
cmd=${1:-}
WORK=${WORK:-/tmp/switchyard-gpu}
LLAMA_SRC=${LLAMA_SRC:-target/llama.cpp-src.tar.xz}
BUILD="$WORK/llama.cpp/build"

case "$cmd" in
pack)
  sdist=$2
  out=$3
  tmp=$(mktemp -d)
  tar xzf "$sdist" -C "$tmp"
  src=$(echo "$tmp"/llama_cpp_python-*/vendor)
  tar cJf "$out" -C "$src" \
    --exclude=llama.cpp/.git --exclude=llama.cpp/models --exclude=llama.cpp/docs \
    --exclude=llama.cpp/examples --exclude=llama.cpp/tests --exclude=llama.cpp/media \
    --exclude=llama.cpp/gguf-py --exclude=llama.cpp/tools/server/public \
    --exclude=llama.cpp/tools/server/webui llama.cpp
  rm -rf "$tmp"
  ls -la "$out"
  ;;
build)
  command -v cmake >/dev/null || { echo "llama_cpp_gpu: cmake not found" >&2; exit 2; }
  mkdir -p "$WORK"
  rm -rf "$WORK/llama.cpp"
  tar xJf "$LLAMA_SRC" -C "$WORK"
  cmake -S "$WORK/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=native \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
  cmake --build "$BUILD" --target llama-bench llama-batched-bench -j "$(nproc)"
  ;;
bench)
  model=$2
  name=$3
  bin="$BUILD/bin"
  out=$("$bin/llama-bench" -m "$model" -ngl 99 -fa 0 -p 512 -n 128 -r 3 -o jsonl)
  echo "$out" >&2
  echo "$out" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    kind = "pp512" if r.get("n_prompt", 0) > 0 else "tg128"
    print(json.dumps({"check": "llama.cpp " + name, "status": "ok",
                      "data": {"test": kind, "tok_s": r.get("avg_ts")}}))
' "$name"
  bb=$("$bin/llama-batched-bench" -m "$model" -ngl 99 -fa off -c 20480 -b 2048 -ub 512 \
    -npp 128 -ntg 128 -npl 64 2>/dev/null || true)
  echo "$bb" >&2
  # The table's row for 64 sequences: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | ...
  echo "$bb" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 8 and cells[2] == "64":
        print(json.dumps({"check": "llama.cpp " + name, "status": "ok",
                          "data": {"test": "tg_b64", "tok_s": float(cells[7])}}))
' "$name"
  ;;
*)
  echo "usage: llama_cpp_gpu.sh pack SDIST OUT | build | bench MODEL NAME" >&2
  exit 2
  ;;
esac
