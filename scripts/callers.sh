#!/usr/bin/env bash
# Who calls a function, and how often per request, in a callgrind profile kept by
# `MODE=instructions KEEP=DIR bash scripts/http-bench.sh`: for allocations, the function is
# `__rustc::__rust_alloc` (its callers are where a request allocates); for copies,
# `__memcpy_avx_unaligned_erms`. Calls ÷ REQUESTS (2500, the "many" run), most first.
#
#   bash scripts/callers.sh DIR/products-reference.cg '__rustc::__rust_alloc'
#   TOP=40 bash scripts/callers.sh DIR/hello-ours3-one-layer.cg __memcpy_avx_unaligned_erms
set -euo pipefail
profile=${1:?profile (.cg)}
function=${2:?function name, as callgrind_annotate prints it}
command -v callgrind_annotate >/dev/null || { echo "callgrind_annotate is needed: apt-get install valgrind" >&2; exit 1; }
# In `--tree=caller` output each function's line (marked `*`) follows its callers' lines
# (marked `<`, each with its call count as `(Nx)`).
callgrind_annotate --inclusive=no --tree=caller "$profile" 2>/dev/null \
  | awk -v want="$function" -v requests="${REQUESTS:-2500}" '
      / < / { block[++n] = $0; next }
      / \* / {
        split($0, parts, " [*] ")
        name = parts[2]; sub(/ \[.*$/, "", name); sub(/^[^:]*:/, "", name)
        if (name == want) {
          for (i = 1; i <= n; i++) {
            line = block[i]
            if (match(line, /\(([0-9,]+)x\)/)) {
              calls = substr(line, RSTART + 1, RLENGTH - 3); gsub(",", "", calls)
              caller = line; sub(/^.* < [^:]*:/, "", caller); sub(/ \([0-9,]+x\).*$/, "", caller)
              printf "%.2f\t%s\n", calls / requests, caller
            }
          }
        }
        n = 0; next
      }
      { n = 0 }' \
  | sort -t "$(printf '\t')" -k1,1nr | head -n "${TOP:-30}"
