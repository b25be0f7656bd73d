#!/usr/bin/env bash
# Summarises criterion results as "ns per request added over the baseline" and the ratio
# of each peer's added cost to ours. Run after `cargo bench`:
#
#   bash scripts/bench-report.sh [GROUP_PREFIX]      e.g. bash scripts/bench-report.sh metrics
#
# In each group the baseline is `passthrough-layer` if present, else `baseline`; medians.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CARGO_TARGET_DIR:-/var/tmp/tower-scale-target}/criterion
prefix=${1:-}
[ -d "$dir" ] || { echo "no criterion results under $dir: run cargo bench first" >&2; exit 1; }

median() { sed -E 's/.*"median":\{[^}]*\}[^}]*"point_estimate":([0-9.eE+-]+).*/\1/' "$1/new/estimates.json"; }

for group in "$dir"/"$prefix"*/; do
  group=${group%/}
  g=$(basename "$group")
  [ -f "$group/baseline/new/estimates.json" ] || [ -f "$group/passthrough-layer/new/estimates.json" ] || {
    echo "## $g"; for b in "$group"/*/; do b=${b%/}; [ -f "$b/new/estimates.json" ] && printf '%-28s %10.1f ns\n' "$(basename "$b")" "$(median "$b")"; done; echo; continue; }
  base=baseline; [ -f "$group/passthrough-layer/new/estimates.json" ] && base=passthrough-layer
  b0=$(median "$group/$base")
  ours=""; [ -f "$group/tower-scale/new/estimates.json" ] && ours=$(median "$group/tower-scale")
  echo "## $g (added over $base)"
  printf '%-28s %10s %10s %14s\n' bench "median ns" "added ns" "added / ours"
  for b in "$group"/*/; do
    b=${b%/}; name=$(basename "$b")
    [ -f "$b/new/estimates.json" ] || continue
    m=$(median "$b")
    awk -v n="$name" -v m="$m" -v b0="$b0" -v o="$ours" 'BEGIN {
      added = m - b0; ratio = "";
      if (o != "" && o - b0 > 0 && n != "tower-scale") ratio = sprintf("%.1fx", added / (o - b0));
      printf "%-28s %10.1f %10.1f %14s\n", n, m, added, ratio }'
  done
  echo
done

# The rate-limit bench records memory after a million keys beside criterion's results.
if [ -f "$dir/rate_limit_memory.txt" ] && [[ "rate_limit" == "$prefix"* ]]; then
  echo "## memory"
  cat "$dir/rate_limit_memory.txt"
fi
