#!/usr/bin/env bash
# Where a stack's time goes natively (no valgrind: the CPU's SHA extensions, its clock and
# its caches as in production): `perf record` samples the bench server (benches/http/
# server.rs) under wrk load, for two stacks in turn, and prints, symbol by symbol, the
# time per request the second spends beyond the first (self time, ns per request, B - A).
#
#   bash scripts/http-perf.sh bare ours3-one-layer           # top 40
#   TOP=60 SECONDS_RECORDED=8 bash scripts/http-perf.sh bare session
#   bash scripts/http-perf.sh map reference                  # the reference server's cached
#                                                            # read beside the map handler
#   CALLERS_OF=_raw_spin_unlock_irqrestore bash scripts/http-perf.sh map reference
#       # records call graphs too, and prints, for each stack, the symbol's share of the
#       # samples and the call chains it was reached by (who pays for it)
#
# The server is pinned to CPU 0 and wrk (-t1 -c32, with the session cookie) to CPU 1;
# perf samples the server's CPU clock at 2,999 Hz for SECONDS_RECORDED (8) seconds of a
# 10 s run. A symbol's time per request is its share of the samples times the server's
# time per request (1 / req/s: the server's core is saturated). Sampling itself slows the
# server (bare axum ran at about 150k req/s under perf and 165-185k without), and the
# kernel's lines move with it, so read the user-space symbols. Needs perf (Debian:
# linux-perf) and wrk; installs both when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/tower-scale-target}
a=${1:?baseline stack (e.g. bare)}
b=${2:?stack to compare (e.g. ours3-one-layer)}
top=${TOP:-40}
secs=${SECONDS_RECORDED:-8}
callers_of=${CALLERS_OF:-}
port=${PORT:-18391}
out=${OUT:-target/http-perf}
for tool in perf:linux-perf wrk:wrk; do
  command -v "${tool%%:*}" >/dev/null || {
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
  }
done
cargo build --release -q --example http_bench_server --features full
case " $a $b " in *" reference "*) cargo build --release -q -p reference-server --bin reference-server ;; esac
bin=$CARGO_TARGET_DIR/release/examples/http_bench_server
mkdir -p "$out"

record() { # stack -> $out/STACK.data and $out/STACK.rps
  local path=/ hdr=()
  case $1 in
    reference)
      LISTEN="127.0.0.1:$port" RATE_LIMIT=1000000000/1h RUST_LOG=warn \
        taskset -c 0 "$CARGO_TARGET_DIR/release/reference-server" >/dev/null 2>&1 &
      path=/products/1 ;;
    *)
      STACK=$1 LISTEN="127.0.0.1:$port" taskset -c 0 "$bin" >/dev/null 2>&1 &
      [ "$1" = map ] && path=/products/1 ;;
  esac
  pid=$!
  # Whatever fails below, the pinned server and wrk do not outlive the script.
  trap 'kill ${pid:-} ${w:-} 2>/dev/null || true' EXIT
  for _ in $(seq 1 200); do curl -fs -o /dev/null "http://127.0.0.1:$port$path" && break; sleep 0.05; done
  if [ "$path" = / ]; then
    local cookie
    cookie=$(curl -s -D - -o /dev/null -X POST "http://127.0.0.1:$port/login" \
      | awk -F': ' 'tolower($1) == "set-cookie" {split($2, a, ";"); sub(/\r$/, "", a[1]); print a[1]; exit}')
    [ -n "$cookie" ] || cookie="id=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    hdr=(-H "Cookie: $cookie")
  fi
  taskset -c 1 wrk -t1 -c32 -d2s "${hdr[@]}" "http://127.0.0.1:$port$path" >/dev/null
  taskset -c 1 wrk -t1 -c32 -d$((secs + 2))s "${hdr[@]}" "http://127.0.0.1:$port$path" >"$out/$1.wrk" &
  w=$!
  sleep 1
  local graph=()
  [ -n "$callers_of" ] && graph=(-g)
  perf record -q "${graph[@]}" -F 2999 -p "$pid" -o "$out/$1.data" -- sleep "$secs" >/dev/null 2>&1
  wait "$w"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid="" w=""
  # wrk's rate covers its whole run, perf only the middle of it: close enough, as the
  # server's core is saturated throughout.
  awk '/Requests\/sec/ {print $2}' "$out/$1.wrk" >"$out/$1.rps"
  echo "$1: $(cat "$out/$1.rps") req/s under perf" >&2
}

per_symbol() { # stack -> "ns per request<TAB>symbol" lines
  perf report -i "$out/$1.data" --no-children --sort symbol --stdio -g none -F overhead,sym 2>/dev/null \
    | grep -v '^#' | grep -v '^$' \
    | awk -v rps="$(cat "$out/$1.rps")" '{ p = $1; sub("%", "", p); $1 = ""; $2 = ""; sub(/^ +/, "")
        printf "%f\t%s\n", p / 100 * 1e9 / rps, $0 }'
}

record "$a"
record "$b"
echo "ns per request, $b minus $a (self time by symbol):"
{ per_symbol "$a" | sed 's/^/A\t/'; per_symbol "$b" | sed 's/^/B\t/'; } \
  | awk -F '\t' '{ v[$3] += ($1 == "B" ? $2 : -$2) } END { for (f in v) printf "%.1f\t%s\n", v[f], f }' \
  | sort -t "$(printf '\t')" -k1,1nr \
  | awk -F '\t' -v top="$top" 'NR <= top { printf "%8s  %s\n", $1, substr($2, 1, 140) }'
if [ -n "$callers_of" ]; then
  for stack in "$a" "$b"; do
    echo "$stack: $callers_of, share of the samples and the call chains reaching it:"
    perf report -i "$out/$stack.data" --no-children --sort sym --stdio -g caller,0.5,callee \
      --symbol-filter="$callers_of" 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
  done
fi
