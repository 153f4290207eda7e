#!/usr/bin/env bash
# The README's rollout walk-through: two mock upstreams (`openai` healthy, `local` the
# candidate), a gateway with a staged rollout, four clients in a loop, then
# `switchyard rollout status`. FAIL=30 makes the candidate fail 30 % of its requests.
# Run from the repository root after `cargo build -p switchyard -p switchyard-tests`.
set -euo pipefail
B=${B:-target/debug}
FAIL=${FAIL:-0}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
"$B/mock-openai" --listen 127.0.0.1:18101 --record >/dev/null &
"$B/mock-openai" --listen 127.0.0.1:18102 --record --behaviour "fail_percent=$FAIL" >/dev/null &
cat >"$dir/switchyard.toml" <<TOML
[server]
listen = "127.0.0.1:18100"
[state]
path = "$dir/state.db"
[admin]
token_env = "SWITCHYARD_ADMIN_TOKEN"
[[backends]]
name = "openai"
url = "http://127.0.0.1:18101/v1"
[[backends]]
name = "local"
url = "http://127.0.0.1:18102/v1"
[[routes]]
model = "gpt-4o"
targets = [{ backend = "openai", model = "gpt-4o" }]
fallback = [{ backend = "openai", model = "gpt-4o" }]
rollout = { candidate = { backend = "local", model = "llama-3.1-8b" },
            steps = [1, 5, 20, 50, 100], step_secs = 3, min_requests = 20,
            guard = { max_error_rate = 0.005, max_p99_increase_ms = 200 } }
TOML
export SWITCHYARD_ADMIN_TOKEN=demo-admin-token-0123456789
"$B/switchyard" serve --config "$dir/switchyard.toml" >/dev/null 2>"$dir/gateway.log" &
sleep 3
python3 "$(dirname "$0")/load.py" 4 "${SECS:-8}"
"$B/switchyard" rollout status --config "$dir/switchyard.toml"
