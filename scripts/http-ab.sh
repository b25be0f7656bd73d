#!/usr/bin/env bash
# Two builds of the reference server, A and B, under the same HTTP load, alternating:
# the server pinned to CPU 0 and wrk to CPU 1, ROUNDS rounds each, a warm-up before every
# measured run. Prints req/s, p50, p99 and the server's CPU time per request (utime +
# stime from /proc over the run). Installs wrk from Debian when missing (as root).
#
#   cargo build --release -p reference-server --bin reference-server
#   cp "$CARGO_TARGET_DIR/release/reference-server" /tmp/a     # then change, rebuild:
#   cp "$CARGO_TARGET_DIR/release/reference-server" /tmp/b
#   bash scripts/http-ab.sh /tmp/a /tmp/b                       # cached GET /products/1
#   URL_PATH=/products?limit=100 ROUNDS=6 bash scripts/http-ab.sh /tmp/a /tmp/b
#
# Settings: URL_PATH (/products/1), ROUNDS (3), DURATION (8s), CONNECTIONS (32),
# PORT (18190). The rate limit is raised so that it admits everything.
set -euo pipefail
a=${1:?binary A}
b=${2:?binary B}
path=${URL_PATH:-/products/1}
rounds=${ROUNDS:-3}
duration=${DURATION:-8s}
connections=${CONNECTIONS:-32}
port=${PORT:-18190}
if ! command -v wrk >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
hz=$(getconf CLK_TCK)

run() { # label binary
  LISTEN="127.0.0.1:$port" RATE_LIMIT=1000000000/1h RUST_LOG=warn taskset -c 0 "$2" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$port$path" >/dev/null
  local t0 t1 out
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(taskset -c 1 wrk -t1 -c"$connections" -d"$duration" --latency "http://127.0.0.1:$port$path")
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$out" | awk -v l="$1" -v t0="$t0" -v t1="$t1" -v hz="$hz" '
    /requests in/ {n = $1} /Requests\/sec/ {rps = $2} / 50%/ {p50 = $2} / 99%/ {p99 = $2}
    END {printf "%-4s %12s req/s  p50 %9s  p99 %9s  server CPU %6.2f us/request\n", l, rps, p50, p99, (t1 - t0) / hz * 1e6 / n}'
}

for _ in $(seq 1 "$rounds"); do
  run A "$a"
  run B "$b"
done
