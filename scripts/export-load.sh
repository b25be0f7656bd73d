#!/usr/bin/env bash
# The reference server's POST /exports under load, with its export workers idle (0: nothing
# runs the exports) and busy (2: the queue grows faster than they drain it), in alternating
# rounds: wrk's p50/p99 and requests/s, and the exports finished meanwhile.
#
#   bash scripts/export-load.sh [ROUNDS] [paced|full]
#
# `paced`: 8 connections, 4 ms between a connection's requests (about 1,700 requests/s
# here); `full`: 8 connections as fast as the server answers. The server runs on core 0,
# wrk on core 1. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
MODE=${2:-paced}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p reference-server --examples
BIN=$TARGET/release/examples/reference_server
PORT=${PORT:-18080}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
{
  echo 'wrk.method = "POST"'
  echo 'wrk.body = ""'
  [ "$MODE" = paced ] && echo 'function delay() return 4 end'
} > "$DIR/post.lua"

round() {
  local workers=$1
  LISTEN=127.0.0.1:$PORT RATE_LIMIT=1000000000/1h EXPORT_RATE_LIMIT=1000000000/1h \
    EXPORT_WORKERS=$workers SESSION_COOKIE_SECURE=0 RUST_LOG=error \
    taskset -c 0 "$BIN" > "$DIR/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
    sleep 0.1
  done
  taskset -c 1 wrk -t1 -c8 -d2s -s "$DIR/post.lua" "http://127.0.0.1:$PORT/exports" > /dev/null
  taskset -c 1 wrk -t1 -c8 -d10s --latency -s "$DIR/post.lua" "http://127.0.0.1:$PORT/exports" \
    | grep -E "Requests/sec| 50%| 99%|Non-2xx"
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^tower_scale_jobs_succeeded' || echo "(no export finished)"
  kill "$pid"
  wait "$pid" 2> /dev/null || true
}

for r in $(seq "$ROUNDS"); do
  for w in 0 2; do
    echo "== round $r, $MODE, EXPORT_WORKERS=$w"
    round "$w"
  done
done
