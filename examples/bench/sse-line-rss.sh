#!/bin/bash
# Peak resident memory of the gateway while an upstream sends one 200 MiB SSE line without a
# newline (issue: one such line once took the gateway from 37 to 716 MB).
#
#   cargo build --release -p switchyard -p switchyard-tests
#   examples/bench/sse-line-rss.sh [target/release] ['[server] keys, e.g. max_event_bytes = 1048576']
#
# Prints the gateway's RSS before, what the client got, the peak (VmHWM) after, and the end of
# the client's stream (the error event). Needs curl.
set -u
T=${1:-target/release}
EXTRA=${2:-}
D=$(mktemp -d)
$T/mock-openai --behaviour huge_line_mb=200 > $D/mock.out 2>&1 &
MOCK=$!
for i in $(seq 50); do grep -q listening $D/mock.out && break; sleep 0.1; done
MADDR=$(sed -n 's/mock-openai listening on http:\/\///p' $D/mock.out)
cat > $D/sy.toml <<CFG
[server]
listen = "127.0.0.1:0"
$EXTRA
[[backends]]
name = "mock"
url = "http://$MADDR/v1"
[[routes]]
model = "*"
targets = [{ backend = "mock" }]
CFG
SWITCHYARD_LOG_FORMAT=text $T/switchyard serve --config $D/sy.toml > $D/gw.out 2> $D/gw.err &
GW=$!
for i in $(seq 100); do grep -q listening $D/gw.out && break; sleep 0.1; done
GADDR=$(sed -n 's/switchyard listening on http:\/\///p' $D/gw.out)
grep VmRSS /proc/$GW/status
curl -sN -o $D/client.bin -w 'client got %{size_download} bytes in %{time_total}s\n' \
  -H 'content-type: application/json' \
  -d '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}' \
  http://$GADDR/v1/chat/completions
grep -E 'VmHWM|VmRSS' /proc/$GW/status
tail -c 300 $D/client.bin; echo
kill $GW $MOCK
rm -rf $D
