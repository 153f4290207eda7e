#!/usr/bin/env bash
# Instructions the gateway spends per plain request, counted by callgrind: a figure that does
# not move with the machine's load (the benchmark's CPU times do). Runs the release gateway
# under valgrind in front of the mock, sends N keep-alive requests at concurrency 1, and
# prints the total. Run it twice (e.g. N=1200 and N=2200) and divide the difference by the
# difference in N to drop the start-up cost:
#   tests/scripts/callgrind-request.sh 1200; tests/scripts/callgrind-request.sh 2200
# The callgrind file it names can be read with callgrind_annotate. With plugins in the extra
# TOML, set SWITCHYARD_PLUGIN_POOL_SLOTS=8 (valgrind cannot map the default pool).
set -euo pipefail
N=${1:?usage: callgrind-request.sh N [EXTRA_TOML]}
EXTRA=${2:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}
MOCK=${MOCK_BIN:-$ROOT/target/release/mock-openai}
D=$(mktemp -d)
EXTRA=${EXTRA:+$(cd "$(dirname "$EXTRA")" && pwd)/$(basename "$EXTRA")}
cd "$D"
"$MOCK" --threads 1 > mock.log 2>&1 &
MP=$!
trap 'kill $MP 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "listening on" mock.log && break; sleep 0.1; done
MADDR=$(grep -o "listening on http://[0-9.:]*" mock.log | sed "s#.*http://##")
PORT=$((20000 + RANDOM % 20000))
printf '[server]\nlisten = "127.0.0.1:%s"\n\n[[backends]]\nname = "mock"\nurl = "http://%s/v1"\n\n[[routes]]\nmodel = "bench"\ntargets = [{ backend = "mock", model = "bench-model" }]\n' "$PORT" "$MADDR" > gw.toml
# `{workspace}` in the extra TOML names this checkout, as for `bench --b-extra`.
if [ -n "$EXTRA" ]; then sed "s#{workspace}#$ROOT#g" "$EXTRA" >> gw.toml; fi
SWITCHYARD_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$D/cg.out" "$BIN" serve --config gw.toml > gw.log 2>&1 &
GP=$!
for _ in $(seq 600); do grep -q "listening on\|error" gw.log && break; sleep 0.2; done
python3 - "$PORT" "$N" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
body = b'{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France? Answer in one word."}],"temperature":0.2,"max_tokens":16}'
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
PY
kill -INT $GP; wait $GP 2>/dev/null || true
echo "requests: $N  gateway instructions: $(grep -h '^summary' "$D/cg.out" | awk '{print $2}')  (callgrind file: $D/cg.out)"
