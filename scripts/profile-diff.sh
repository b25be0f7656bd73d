#!/usr/bin/env bash
# Where a variant's instructions go beyond a baseline's, function by function: the
# exclusive counts of two callgrind profiles (as `MODE=instructions KEEP=DIR bash
# scripts/http-bench.sh` keeps them), B minus A, divided by the requests each answered;
# first, each profile's allocations per request (calls to the allocator ÷ REQUESTS).
#
#   bash scripts/profile-diff.sh DIR/hello-bare.cg DIR/hello-session.cg          # top 30
#   TOP=50 REQUESTS=2500 bash scripts/profile-diff.sh A.cg B.cg
set -euo pipefail
a=${1:?baseline profile (.cg)}
b=${2:?variant profile (.cg)}
top=${TOP:-30}
requests=${REQUESTS:-2500}
command -v callgrind_annotate >/dev/null || { echo "callgrind_annotate is needed: apt-get install valgrind" >&2; exit 1; }
flat() { # profile -> "count<TAB>function" lines, exclusive counts, one per function
  callgrind_annotate "$1" 2>/dev/null | awk '
    /file:function/ { on = 1; next }
    on && match($0, /^ *[0-9,]+ +\( *[0-9.]+%\) +/) {
      n = $1; gsub(",", "", n)
      f = substr($0, RLENGTH + 1); sub(/ \[.*\]$/, "", f)
      sum[f] += n
    }
    END { for (f in sum) printf "%d\t%s\n", sum[f], f }'
}
allocations() { # profile -> calls to the allocator per request
  callgrind_annotate --tree=caller "$1" 2>/dev/null \
    | sed -n 's/.*< .*__rust_alloc (\([0-9,]*\)x).*/\1/p' | head -n 1 | tr -d , \
    | awk -v r="$requests" '{ printf "%.1f", $1 / r }'
}
echo "allocations per request: $(allocations "$a") in $(basename "$a"), $(allocations "$b") in $(basename "$b")"
{ flat "$a" | sed 's/^/A\t/'; flat "$b" | sed 's/^/B\t/'; } | awk -F '\t' -v r="$requests" -v top="$top" '
  { v[$3] += ($1 == "B" ? $2 : -$2) }
  END {
    for (f in v) printf "%.0f\t%s\n", v[f] / r, f
  }' | sort -t "$(printf '\t')" -k1,1nr | head -n "$top" | awk -F '\t' '{ printf "%9s  %s\n", $1, substr($2, 1, 140) }'
