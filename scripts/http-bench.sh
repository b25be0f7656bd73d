#!/usr/bin/env bash
# The end-to-end HTTP benchmark: the same handler bare, behind each of our layers alone,
# behind our stack and behind the peers' stack, over a real socket. The server is pinned
# to CPU 0 and wrk to CPU 1; the variants are interleaved within each round, ROUNDS
# rounds. Per run: req/s, p50, p99, the server's CPU time per request (utime + stime
# from /proc over the measured run, and each of the two) and how often wrk's core halted
# per request (below); then, per variant, the range over the rounds and the ratios to bare
# axum (and to the peers' stack), each computed within a round.
#
# wrk's halts: on loopback the server's write wakes wrk, and when wrk's core has gone idle
# (halted) that takes an interrupt across cores, paid in the server's system time; in a
# virtual machine each is an exit to the hypervisor. A slower stack leaves wrk idle more
# often, so it pays this more often. The count is the cpuidle states other than polling
# that CPU 1 entered during the run (/sys/devices/system/cpu/cpu1/cpuidle), per request;
# "-" where the kernel has no cpuidle driver.
#
#   bash scripts/http-bench.sh                        # the hello workload, every variant
#   VARIANTS="bare ours3 peers3" ROUNDS=5 bash scripts/http-bench.sh
#   WORKLOAD=products bash scripts/http-bench.sh      # the reference server's cached read
#
# Workloads:
#   hello     `GET /` answering "Hello, World!" (benches/http/server.rs, STACK=variant);
#             every request carries a session cookie, which the session stacks read one
#             value from. Variants: bare metrics rate-limit session timeout ours3
#             ours3-one-layer (the same three in one `Router::layer` call) ours
#             peer-metrics peer-rate-limit peer-session peers3 peers.
#   products  `GET /products/1` from the reference server on embedded defaults (a cache
#             hit after the first) beside `map`, bare axum answering the same JSON from a
#             map. Variants: map reference, and reference-old: the binary REFERENCE_OLD
#             names (an earlier build copied aside), for a before-and-after in one run:
#             VARIANTS="map reference-old reference" REFERENCE_OLD=/tmp/ref bash ...
#
# MODE=instructions counts instead, with callgrind, the user-space instructions the server
# executes per request (the kernel's share, about two thirds of a bare request's CPU here,
# is the same for every stack: two system calls per request in each, checked with `perf
# stat -e raw_syscalls:sys_enter`). Each variant runs twice under valgrind, answering
# REQUESTS_FEW (500) and REQUESTS_MANY (2500) requests on one keep-alive connection (curl);
# counting starts after 100 requests of warm-up, so one-time work (the clock's calibration,
# lazy statics) is left out. The difference over the 2,000 requests between is per
# request; two runs of one variant agreed within 20 instructions (2026-12-05; what can
# still move it: whether the worker parks between requests, and the metrics upkeep task
# every 5 s, which is counted too), where this VM's wall-clock figures move by up to 30 %
# between rounds. KEEP=DIR keeps each "many" profile for `callgrind_annotate`;
# `bash scripts/profile-diff.sh DIR/hello-bare.cg DIR/hello-session.cg` lists, function by
# function, what a variant runs beyond another per request.
#
# Settings: ROUNDS (3), DURATION (8s), WARMUP (2s), CONNECTIONS (32), PORT (18290),
# OUT (target/http-bench: results-WORKLOAD.tsv, one line per run; summary-WORKLOAD.md).
# Installs wrk from Debian when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/tower-scale-target}
workload=${WORKLOAD:-hello}
rounds=${ROUNDS:-3}
duration=${DURATION:-8s}
warmup=${WARMUP:-2s}
connections=${CONNECTIONS:-32}
port=${PORT:-18290}
out=${OUT:-target/http-bench}
case $workload in
  hello) variants=${VARIANTS:-bare metrics rate-limit session timeout ours3 ours3-one-layer ours peer-metrics peer-rate-limit peer-session peers3 peers} ;;
  products) variants=${VARIANTS:-map reference} ;;
  *) echo "WORKLOAD is hello or products" >&2; exit 2 ;;
esac
if ! command -v wrk >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
hz=$(getconf CLK_TCK)

echo "building (release)..." >&2
cargo build --release -q --example http_bench_server --features full
[ "$workload" = products ] && cargo build --release -q -p reference-server --bin reference-server
bin=$CARGO_TARGET_DIR/release
mkdir -p "$out"
results=$out/results-$workload.tsv

start_server() { # variant -> sets pid, path, cookie
  case $1 in
    reference|reference-old)
      local exe=$bin/reference-server
      [ "$1" = reference-old ] && exe=${REFERENCE_OLD:?REFERENCE_OLD: the older reference-server binary}
      LISTEN="127.0.0.1:$port" RATE_LIMIT=1000000000/1h RUST_LOG=warn \
        taskset -c 0 "$exe" >/dev/null 2>&1 &
      pid=$!; path=/products/1 ;;
    map)
      STACK=map LISTEN="127.0.0.1:$port" taskset -c 0 "$bin/examples/http_bench_server" >/dev/null 2>&1 &
      pid=$!; path=/products/1 ;;
    *)
      STACK=$1 LISTEN="127.0.0.1:$port" taskset -c 0 "$bin/examples/http_bench_server" >/dev/null 2>&1 &
      pid=$!; path=/ ;;
  esac
  for _ in $(seq 1 200); do
    curl -fs -o /dev/null "http://127.0.0.1:$port$path" 2>/dev/null && break
    sleep 0.05
  done
  cookie=""
  if [ "$workload" = hello ]; then
    # The session cookie, from whichever session layer the stack has (none: no cookie,
    # and a made-up one is sent so that every stack parses the same header).
    cookie=$(curl -s -D - -o /dev/null -X POST "http://127.0.0.1:$port/login" \
      | awk -F': ' 'tolower($1) == "set-cookie" {split($2, a, ";"); sub(/\r$/, "", a[1]); print a[1]; exit}')
    [ -n "$cookie" ] || cookie="id=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
  fi
}

halts() { # times CPU 1 entered an idle state other than polling; -1 without cpuidle
  local n=-1 state
  for state in /sys/devices/system/cpu/cpu1/cpuidle/state*; do
    [ -r "$state/usage" ] || continue
    [ "$(cat "$state/name")" = POLL ] && continue
    n=$((n < 0 ? $(cat "$state/usage") : n + $(cat "$state/usage")))
  done
  echo "$n"
}

measure() { # variant round
  local pid path cookie t0 t1 h0 h1 wrk_out
  start_server "$1"
  local hdr=()
  [ -n "$cookie" ] && hdr=(-H "Cookie: $cookie")
  taskset -c 1 wrk -t1 -c"$connections" -d"$warmup" "${hdr[@]}" "http://127.0.0.1:$port$path" >/dev/null
  t0=$(awk '{print $14 " " $15}' "/proc/$pid/stat")
  h0=$(halts)
  wrk_out=$(taskset -c 1 wrk -t1 -c"$connections" -d"$duration" --latency "${hdr[@]}" "http://127.0.0.1:$port$path")
  t1=$(awk '{print $14 " " $15}' "/proc/$pid/stat")
  h1=$(halts)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$wrk_out" | awk -v v="$1" -v r="$2" -v t0="$t0" -v t1="$t1" -v h0="$h0" -v h1="$h1" -v hz="$hz" '
    function us(x) { if (x ~ /us$/) return x + 0; if (x ~ /ms$/) return x * 1000; if (x ~ /s$/) return x * 1e6; return x }
    /requests in/ {n = $1} /Requests\/sec/ {rps = $2} / 50%/ {p50 = us($2)} / 99%/ {p99 = us($2)}
    /Non-2xx/ {bad = $NF}
    END {
      if (bad > 0) { printf "%s: %d responses were not 2xx\n", v, bad > "/dev/stderr"; exit 1 }
      split(t0, a, " "); split(t1, b, " ")
      user = (b[1] - a[1]) / hz * 1e6 / n; sys = (b[2] - a[2]) / hz * 1e6 / n
      halts = h0 < 0 ? "-" : sprintf("%.3f", (h1 - h0) / n)
      printf "%s\t%s\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%.2f\t%s\n", r, v, rps, p50, p99, user + sys, user, sys, halts
    }' >>"$results"
  tail -1 "$results" | awk -F'\t' '{printf "round %s  %-16s %9s req/s  p50 %6s us  p99 %6s us  server CPU %5s us/request (user %s, system %s)  wrk halts %s/request\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}' >&2
}

instructions() { # variant requests -> the total the server executed
  local f=$out/callgrind.$1.$2
  local vars exe
  case $1 in
    reference) vars=(LISTEN="127.0.0.1:$port" RATE_LIMIT=1000000000/1h RUST_LOG=warn); exe=$bin/reference-server; path=/products/1 ;;
    *) vars=(STACK="$1" LISTEN="127.0.0.1:$port"); exe=$bin/examples/http_bench_server; path=/ ;;
  esac
  [ "$1" = map ] && path=/products/1
  # Counting starts after a warm-up (below): one-time work on the first requests (lazy
  # statics, the clock's calibration, whose length under valgrind varies) stays out.
  env "${vars[@]}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$f" "$exe" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do curl -fs -o /dev/null "http://127.0.0.1:$port$path" 2>/dev/null && break; sleep 0.1; done
  local cookie hdr=()
  if [ "$workload" = hello ]; then
    cookie=$(curl -s -D - -o /dev/null -X POST "http://127.0.0.1:$port/login" \
      | awk -F': ' 'tolower($1) == "set-cookie" {split($2, a, ";"); sub(/\r$/, "", a[1]); print a[1]; exit}')
    [ -n "$cookie" ] || cookie="id=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    hdr=(-H "Cookie: $cookie")
  fi
  # Exactly $2 requests, one after another on one keep-alive connection.
  local i
  for i in $(seq 1 "$2"); do
    printf 'url = "http://127.0.0.1:%s%s"\noutput = "/dev/null"\n' "$port" "$path"
  done >"$out/requests.curl"
  # Warm-up: the first 100 requests of the list (two lines each), not counted.
  head -n 200 "$out/requests.curl" | curl -s -K - "${hdr[@]}"
  # Inside `$(...)` `set -e` does not hold: a failure here must end the run, not count 0.
  callgrind_control -i on "$pid" >/dev/null || { kill "$pid"; echo "http-bench: callgrind_control failed" >&2; return 1; }
  curl -s -K "$out/requests.curl" "${hdr[@]}"
  kill -TERM "$pid"
  # The reference server drains for DRAIN (2 s) before it exits.
  wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$f"
  if [ -n "${KEEP:-}" ] && [ "$2" = "${REQUESTS_MANY:-2500}" ]; then
    mkdir -p "$KEEP" && cp "$f" "$KEEP/$workload-$1.cg"
  fi
  rm -f "$f"
}

if [ "${MODE:-time}" = instructions ]; then
  command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
  few=${REQUESTS_FEW:-500}; many=${REQUESTS_MANY:-2500}
  results=$out/instructions-$workload.tsv
  : >"$results"
  for v in $variants; do
    a=$(instructions "$v" "$few"); b=$(instructions "$v" "$many")
    if [ "${a:-0}" -le 0 ] || [ "${b:-0}" -le 0 ]; then
      echo "http-bench: no instruction count for $v (did the server start under valgrind?)" >&2; exit 1
    fi
    printf '%s\t%d\n' "$v" $(( (b - a) / (many - few) )) | tee -a "$results" >&2
  done
  base=bare; peer=peers3
  [ "$workload" = products ] && { base=map; peer=""; }
  {
    echo "workload $workload, user-space instructions per request (callgrind, $few and $many requests on one connection), $(date -u +%Y-%m-%d)"
    awk -F'\t' -v base="$base" -v peer="$peer" '
      { n++; v[n] = $1; ir[$1] = $2 }
      END {
        printf "| variant | instructions per request | added over %s | %s ÷ variant |\n", base, base
        print "|---|---|---|---|"
        for (i = 1; i <= n; i++)
          if (ir[base] == "") printf "| %s | %d | - | - |\n", v[i], ir[v[i]]
          else printf "| %s | %d | %+d | %.2f |\n", v[i], ir[v[i]], ir[v[i]] - ir[base], ir[base] / ir[v[i]]
      }' "$results"
  } | tee "$out/instructions-$workload.md"
  exit 0
fi

: >"$results"
for r in $(seq 1 "$rounds"); do
  for v in $variants; do measure "$v" "$r"; done
done

# The summary: per variant, ranges over the rounds, and ratios within each round.
base=bare; peer=peers3
[ "$workload" = products ] && { base=map; peer=""; }
{
  echo "workload $workload, $rounds rounds, wrk -c$connections -d$duration, server on CPU 0, wrk on CPU 1, $(date -u +%Y-%m-%d)"
  awk -F'\t' -v base="$base" -v peer="$peer" '
    { rps[$2, $1] = $3; p50[$2, $1] = $4; p99[$2, $1] = $5; cpu[$2, $1] = $6; usr[$2, $1] = $7; sys[$2, $1] = $8; hlt[$2, $1] = $9
      if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } rounds[$1] = 1 }
    function range(a, v,   r, lo, hi, x, first) {
      first = 1
      for (r in rounds) { x = a[v, r]; if (first || x < lo) lo = x; if (first || x > hi) hi = x; first = 0 }
      return lo == hi ? lo : lo "-" hi
    }
    # The range of the per-round ratios and, with more than two rounds, their median: on a
    # noisy machine many short rounds and the median say more than a few long ones.
    function ratio(v, w,   r, x, k, i, m, s, s0) {
      if (w == "" || !((w, 1) in rps)) return "-"
      k = 0
      for (r in rounds) {
        x = rps[v, r] / rps[w, r]
        for (i = ++k; i > 1 && s[i - 1] > x; i--) s[i] = s[i - 1]
        s[i] = x
      }
      s0 = sprintf("%.2f-%.2f", s[1], s[k])
      if (k < 3) return s0
      m = k % 2 ? s[(k + 1) / 2] : (s[k / 2] + s[k / 2 + 1]) / 2
      return sprintf("%s (median %.2f)", s0, m)
    }
    function added(v,   r, lo, hi, x, first) {
      first = 1
      for (r in rounds) { x = cpu[v, r] - cpu[base, r]; if (first || x < lo) lo = x; if (first || x > hi) hi = x; first = 0 }
      return sprintf("%+.2f..%+.2f", lo, hi)
    }
    END {
      printf "| variant | req/s | p50 us | p99 us | server CPU us/req | user | system | wrk halts/req | added over %s | x %s | x %s |\n", base, base, (peer == "" ? "-" : peer)
      print "|---|---|---|---|---|---|---|---|---|---|---|"
      for (i = 1; i <= n; i++) {
        v = order[i]
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", v, range(rps, v), range(p50, v), range(p99, v), range(cpu, v), range(usr, v), range(sys, v), range(hlt, v), added(v), ratio(v, base), ratio(v, peer)
      }
    }' "$results"
} | tee "$out/summary-$workload.md"
