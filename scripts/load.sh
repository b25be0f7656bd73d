#!/usr/bin/env bash
# HTTP load on the reference server with wrk: each URL answered from the response cache,
# and with `Cache-Control: no-store` (the cache bypassed, the handler reads the database),
# alternating, ROUNDS rounds each. Installs wrk from Debian when missing (as root).
#
#   bash scripts/load.sh                 # in-process stores
#   REDIS_URL=redis://127.0.0.1:6379 bash scripts/load.sh   # with a catalogue file of its own
#
# Settings: DURATION (default 8s), CONNECTIONS (32), THREADS (1), ROUNDS (2), PORT (18090).
# The rate limit is raised so that it admits everything; wrk runs on the same machine, so
# the figures are those of the pair.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/tower-scale-target}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18090}

if ! command -v wrk >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -p reference-server --example reference_server -q
server="$CARGO_TARGET_DIR/release/examples/reference_server"

# Shared Redis needs a shared catalogue: a file of this run's own unless one is given.
if [ -n "${REDIS_URL:-}" ] && [ -z "${DATABASE_URL:-}" ] && [ -z "${DATABASE_FILE:-}" ]; then
  export DATABASE_FILE=/tmp/tower-scale-load-$$.sqlite
fi
LISTEN="127.0.0.1:$PORT" RATE_LIMIT=1000000/1s "$server" >/tmp/tower-scale-load.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "${DATABASE_FILE:-/nonexistent}"*' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

run() { # label url header
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$3" "$2" \
    | awk -v l="$1" '/Requests\/sec/ {rps=$2} / 50%/ {p50=$2} / 99%/ {p99=$2}
        END {printf "%-40s %12s req/s  p50 %8s  p99 %8s\n", l, rps, p50, p99}'
}

printf 'wrk -t%s -c%s -d%s, %s rounds, redis=%s\n' "$THREADS" "$CONNECTIONS" "$DURATION" "$ROUNDS" "${REDIS_URL:-none}"
for url in "/products/1" "/products?limit=100"; do
  for round in $(seq 1 "$ROUNDS"); do
    run "$url cached (round $round)" "http://127.0.0.1:$PORT$url" "x-load: cached"
    run "$url bypassed (round $round)" "http://127.0.0.1:$PORT$url" "cache-control: no-store"
  done
done
