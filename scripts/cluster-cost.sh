#!/usr/bin/env bash
# What one rate-limit decision costs the bench process and Redis, on the test Cluster or
# on one Redis: runs one filter of the rate_limit bench binary and divides the process's
# CPU (user + system, /usr/bin/time) and Redis's (`INFO cpu` of every node, replicas
# included) by the decisions Redis counted (`cmdstat_evalsha` over the masters, after a
# `CONFIG RESETSTAT`). The bench process's CPU includes criterion's own work.
#
#   cargo bench --bench rate_limit --no-run     # prints the binary's path
#   eval "$(bash scripts/services.sh)"          # TEST_REDIS_URL, TEST_REDIS_CLUSTER_NODES
#   bash scripts/cluster-cost.sh BINARY 'redis-64/tower-scale-store-cluster'
#   SINGLE=1 bash scripts/cluster-cost.sh BINARY 'redis-64/tower-scale-store$'
#
# Copy the binary aside to compare two builds, and run them in turn. Each node's CPU over
# the run, with its role, is printed too.
set -euo pipefail
bin=${1:?the rate_limit bench binary}
filter=${2:?a bench filter}
if [[ -n "${SINGLE:-}" ]]; then
  url=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
  nodes=${url#redis://}
else
  nodes=$(echo "${TEST_REDIS_CLUSTER_NODES:?set by scripts/services.sh}" | tr ',' ' ' | sed 's#redis://##g')
fi
nodes=$(echo "$nodes" | sed 's#/[0-9]*##g')
cli() { local n=$1; shift; redis-cli -h "${n%:*}" -p "${n#*:}" "$@"; }
node_cpu() {
  cli "$1" info cpu | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.3f", s }'
}
cpu() {
  local total=0
  for n in $nodes; do total=$(awk -v a="$total" -v b="$(node_cpu "$n")" 'BEGIN { print a + b }'); done
  echo "$total"
}
calls() {
  for n in $nodes; do cli "$n" info commandstats; done \
    | awk -F'[=,:]' '/^cmdstat_evalsha:/ { s += $3 } END { print s + 0 }'
}
for n in $nodes; do cli "$n" config resetstat >/dev/null; done
declare -A node_before
for n in $nodes; do node_before[$n]=$(node_cpu "$n"); done
before=$(cpu)
out=$({ /usr/bin/time -f "TIME %U %S" "$bin" --bench "$filter" 2>&1; } 2>&1)
after=$(cpu)
decisions=$(calls)
[[ "$decisions" -gt 0 ]] || { echo "no EVALSHA counted; is the filter right?" >&2; echo "$out" >&2; exit 1; }
median=$(echo "$out" | awk '/time:/ { print $4, $5; exit }')
client=$(echo "$out" | awk '/^TIME/ { print $2 + $3 }')
awk -v d="$decisions" -v m="$median" -v c="$client" -v r="$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')" \
  'BEGIN { printf "decisions %d, median %s per decision, bench process CPU %.2f µs/decision, Redis CPU %.2f µs/decision\n", d, m, c * 1e6 / d, r * 1e6 / d }'
for n in $nodes; do
  role=$(cli "$n" info replication | awk -F: '/^role:/ { sub(/\r/, "", $2); print $2 }')
  awk -v n="$n" -v r="$role" -v a="$(node_cpu "$n")" -v b="${node_before[$n]}" \
    'BEGIN { printf "  %s (%s): %.2f s of CPU\n", n, r, a - b }'
done
