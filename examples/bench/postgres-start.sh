#!/usr/bin/env bash
# A PostgreSQL for the store bench (examples/bench/postgres.toml) on 127.0.0.1:15432, user
# switchyard, password benchpw (export PGPW=benchpw for the gateway), default durability.
# Port 15432 is below the ephemeral range, so no client can self-connect on it.
# Usage: postgres-start.sh [fresh]
set -euo pipefail
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
D=/tmp/pgbench
if [ "${1:-}" = fresh ] || [ ! -d $D/data ]; then
  [ -f $D/pid ] && kill "$(cat $D/pid)" 2>/dev/null && sleep 2 || true
  rm -rf $D; mkdir -p $D; echo benchpw > $D/pw; chown -R postgres $D
  setpriv --reuid=postgres --regid=postgres --clear-groups -- $BIN/initdb -D $D/data -U switchyard --auth=scram-sha-256 -E UTF8 --pwfile=$D/pw >/dev/null
fi
setpriv --reuid=postgres --regid=postgres --clear-groups -- $BIN/postgres -D $D/data -p 15432 -k $D -c listen_addresses=127.0.0.1 > $D/log 2>&1 &
echo $! > $D/pid
for _ in $(seq 50); do $BIN/pg_isready -h 127.0.0.1 -p 15432 -q && break; sleep 0.2; done
echo "postgres on 15432 (pid $(cat $D/pid))"
