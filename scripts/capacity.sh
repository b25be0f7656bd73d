#!/usr/bin/env bash
# What one request of each route costs, for docs/scaling.md: the reference server (release
# build, pinned to core 0) on one Redis and on a Redis Cluster, under wrk (pinned to core
# 1), each route for DURATION; from /proc and Redis's INFO: server CPU µs per request,
# Redis round trips (the server's /metrics), commands, bytes received and CPU (of the
# masters; replicas are not counted) per request.
#
#   bash scripts/capacity.sh            # both deployments, ROUNDS rounds each
#
# Settings: DURATION (default 5s), CONNECTIONS (16), ROUNDS (3), PORT (18300). Needs the
# services of scripts/services.sh (it starts them) and wrk (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/tower-scale-target}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-16}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18300}
command -v wrk >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
eval "$(bash scripts/services.sh 2>/dev/null)"
cargo build --release -q -p reference-server --bin reference-server
BIN=$CARGO_TARGET_DIR/release/reference-server
WORK=$(mktemp -d)
trap 'kill $(cat "$WORK"/pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT

TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# CPU ticks of the redis-server processes on the given ports (user + system).
redis_ticks() {
  local t=0 p pid
  for p in "$@"; do
    pid=$(redis-cli -p "$p" info server | tr -d '\r' | awk -F: '/^process_id/ {print $2}')
    t=$((t + $(cpu_ticks "$pid")))
  done
  echo "$t"
}

# Round trips to Redis this server made, from its own /metrics (every call of the
# backend, answered or failed).
round_trips() {
  curl -s "http://127.0.0.1:$PORT/metrics" | awk '
    /^tower_scale_redis_command_duration_seconds_count/ {n += $NF}
    /^tower_scale_redis_command_errors_total/ {n += $NF}
    END {printf "%d\n", n}'
}

# Redis totals over every node given: commands processed (scripts' own calls included),
# bytes in and out.
redis_totals() {
  local cmds=0 inb=0 outb=0 p c i o
  for p in "$@"; do
    c=$(redis-cli -p "$p" info stats | awk -F: '/^total_commands_processed/ {print $2+0}')
    i=$(redis-cli -p "$p" info stats | awk -F: '/^total_net_input_bytes/ {print $2+0}')
    o=$(redis-cli -p "$p" info stats | awk -F: '/^total_net_output_bytes/ {print $2+0}')
    cmds=$((cmds + c)); inb=$((inb + i)); outb=$((outb + o))
  done
  echo "$cmds $inb $outb"
}

start() { # env assignments...
  env "$@" LISTEN=127.0.0.1:$PORT RATE_LIMIT=1000000/1s LOGIN_RATE_LIMIT=1000000/1s \
    SESSION_COOKIE_SECURE=0 RUST_LOG=error EXPORT_WORKERS=0 DRAIN=0s \
    taskset -c 0 "$BIN" >"$WORK/server.log" 2>&1 &
  echo $! >"$WORK/pid"
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/readyz" && return; sleep 0.1; done
  echo "server did not start: $(cat "$WORK/server.log")" >&2; exit 1
}

stop() { kill "$(cat "$WORK/pid")"; wait "$(cat "$WORK/pid")" 2>/dev/null || true; }

# wrk scripts: a logged-in client's /me, an uncached write.
login_cookie() {
  curl -s -i -H 'content-type: application/json' -d '{"user":"capacity"}' "http://127.0.0.1:$PORT/login" \
    | awk -F'[ ;]' 'tolower($1) == "set-cookie:" {print $2}'
}

measure() { # deployment label path [wrk args...]
  local dep=$1 label=$2 path=$3; shift 3
  local pid; pid=$(cat "$WORK/pid")
  local t0 r0 t1 r1 out
  local rt0 rt1
  rt0=$(round_trips)
  local rc0 rc1
  rc0=$(redis_ticks $REDIS_PORTS)
  t0=$(cpu_ticks "$pid"); r0=$(redis_totals $REDIS_PORTS)
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$@" "http://127.0.0.1:$PORT$path")
  t1=$(cpu_ticks "$pid"); r1=$(redis_totals $REDIS_PORTS)
  rc1=$(redis_ticks $REDIS_PORTS)
  rt1=$(round_trips)
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local bad; bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  read -r c0 i0 o0 <<<"$r0"; read -r c1 i1 o1 <<<"$r1"
  awk -v d="$dep" -v l="$label" -v n="$reqs" -v rps="$rps" -v ticks=$((t1 - t0)) -v hz="$TICKS" \
      -v c=$((c1 - c0)) -v i=$((i1 - i0)) -v o=$((o1 - o0)) -v bad="${bad:-0}" -v rt=$((rt1 - rt0)) -v rc=$((rc1 - rc0)) \
    'BEGIN { printf "%-8s %-24s %7.0f req/s  cpu %6.1f µs/req  round trips %5.2f/req  redis cmds %5.2f/req  redis cpu %5.1f µs/req  %5.0f B in /req  non-2xx %s\n",
             d, l, rps, ticks / hz * 1e6 / n, rt / n, c / n, rc / hz * 1e6 / n, i / n, bad }'
}

cat >"$WORK/put.lua" <<'EOF'
counter = 0
request = function()
  counter = counter + 1
  local id = 500 + (counter % 100)
  return wrk.format("PUT", "/products/" .. id, {["Content-Type"] = "application/json", ["Cookie"] = cookie},
    '{"name":"capacity ' .. counter .. '","price_cents":' .. counter .. '}')
end
EOF

# The Cluster's masters only: a replica counts again every write it applies.
cluster_ports=$(for p in $(echo "$TEST_REDIS_CLUSTER_NODES" | tr ',' '\n' | sed 's/.*://'); do
  if redis-cli -p "$p" role | head -1 | grep -q master; then echo "$p"; fi; done | tr '\n' ' ')
single_port=${TEST_REDIS_URL##*:}
for round in $(seq 1 "$ROUNDS"); do
  for dep in redis cluster; do
    rm -f "$WORK"/catalog.sqlite*
    prefix="capacity$round$dep$$"
    if [ "$dep" = redis ]; then
      REDIS_PORTS=$single_port
      start REDIS_URL="$TEST_REDIS_URL" REDIS_PREFIX="$prefix" DATABASE_FILE="$WORK/catalog.sqlite"
    else
      REDIS_PORTS=$cluster_ports
      start REDIS_CLUSTER_NODES="$TEST_REDIS_CLUSTER_NODES" REDIS_PREFIX="$prefix" DATABASE_FILE="$WORK/catalog.sqlite"
    fi
    cookie=$(login_cookie)
    printf 'cookie = "%s"\n' "$cookie" | cat - "$WORK/put.lua" >"$WORK/put-cookie.lua"
    measure "$dep" "GET /products/1 (hit)" /products/1
    measure "$dep" "GET /products/1 (bypass)" /products/1 -H 'cache-control: no-store'
    measure "$dep" "GET /me" /me -H "cookie: $cookie"
    measure "$dep" "PUT /products/{id}" / -s "$WORK/put-cookie.lua"
    measure "$dep" "GET /healthz" /healthz
    stop
  done
done
