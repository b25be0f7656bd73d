#!/usr/bin/env bash
# Instructions per request added by each layer, counted by callgrind: repeatable where
# wall-clock timings on a shared 2-core VM are not. For each bench function it runs the
# bench binary under `valgrind --tool=callgrind --profile-time`, divides the instructions
# of the benchmark loop (`run`) by the requests it made (`request` calls), and subtracts the
# group's baseline.
#
#   bash scripts/bench-instructions.sh rate_limit 'rate_limit/(global|peer-ip|x-forwarded-for)'
#   bash scripts/bench-instructions.sh metrics 'metrics/service'
#
# KEEP=DIR keeps each profile as DIR/<group>_<bench>.cg, for a per-function view:
#   callgrind_annotate DIR/resilience_retry_tower-scale.cg   (counts for all requests)
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:?bench name, e.g. rate_limit}
filter=${2:?criterion filter regex}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/tower-scale-target}
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }

bin=$(cargo bench --bench "$bench" --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "bench binary not found" >&2; exit 1; }

ids=$("$bin" --bench --list 2>/dev/null | sed -n 's/: benchmark$//p' | grep -E "$filter" || true)
[ -n "$ids" ] || { echo "no bench matches $filter" >&2; exit 1; }

out=$(mktemp -d)
declare -A per
for id in $ids; do
  f="$out/$(echo "$id" | tr '/' '_').cg"
  valgrind --tool=callgrind --callgrind-out-file="$f" "$bin" --bench --profile-time 2 "^${id}\$" >/dev/null 2>&1
  tree=$(callgrind_annotate --tree=calling --inclusive=yes "$f" 2>/dev/null)
  loop=$(echo "$tree" | grep -E '^ *[0-9,]+ .*\* +[^ ]*:[a-z_]+::run ' | head -n 1 | awk '{gsub(",","",$1); print $1}')
  reqs=$(echo "$tree" | grep -E '> +[^ ]*:[a-z_]+::request ' | head -n 1 | sed -n 's/.*(\([0-9,]*\)x).*/\1/p' | tr -d ,)
  if [ -z "$loop" ] || [ -z "$reqs" ] || [ "$reqs" = 0 ]; then
    echo "$id: could not read the profile ($f)" >&2; continue
  fi
  per[$id]=$((loop / reqs))
done

printf '%-48s %14s %12s\n' bench "instr/request" "added"
for id in $ids; do
  [ -n "${per[$id]:-}" ] || continue
  base="${id%/*}/baseline"
  added=""
  [ -n "${per[$base]:-}" ] && added=$(( per[$id] - per[$base] ))
  printf '%-48s %14s %12s\n' "$id" "${per[$id]}" "$added"
done
if [ -n "${KEEP:-}" ]; then
  mkdir -p "$KEEP" && cp "$out"/*.cg "$KEEP"/ && echo "profiles kept in $KEEP"
fi
rm -rf "$out"
