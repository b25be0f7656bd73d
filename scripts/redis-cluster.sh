#!/usr/bin/env bash
# A private Redis Cluster of three masters, each with REPLICAS replicas (default 1; 0 for
# masters alone), 1 s node timeout, under DIR, on free ports below the kernel's ephemeral range (a node also listens on its
# port + 10000, the Cluster bus). Used by scripts/services.sh (the tests' Cluster) and
# scripts/scale-out.sh (the rig's own).
#
#   bash scripts/redis-cluster.sh up DIR          # start, or reuse while healthy; prints the ports
#   bash scripts/redis-cluster.sh node-start DIR PORT   # start one node again (it rejoins)
#   bash scripts/redis-cluster.sh down DIR        # stop every node started under DIR
#
# AVOID_PORTS (space-separated): ports the caller binds after `up`, kept free of nodes and
# of their bus ports.
set -euo pipefail
REPLICAS=${REPLICAS:-1}
NODES=$((3 * (1 + REPLICAS)))
log() { printf 'redis-cluster: %s\n' "$*" >&2; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ok() { # ports...
  local p
  for p in "$@"; do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG || return 1; done
  redis-cli -p "$1" cluster info 2>/dev/null | grep -q 'cluster_state:ok'
}

node_start() { # dir port
  local d=$1 p=$2
  install -d -m 0755 "$d/node-$p"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --save "" --appendonly no \
    --cluster-enabled yes --cluster-config-file "$d/node-$p/nodes.conf" \
    --cluster-node-timeout 1000 --dir "$d/node-$p" --logfile "$d/node-$p/redis.log" \
    --pidfile "$d/node-$p/redis.pid" >&2
  # `--daemonize` returns before the node listens: wait until it answers.
  for _ in $(seq 1 50); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && return; sleep 0.1; done
  log "node $p did not answer; see $d/node-$p/redis.log"; return 1
}

down() { # dir
  local pidfile
  for pidfile in "$1"/node-*/redis.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -f "$1/ports"
}

up() { # dir
  local d=$1 ports=() p
  install -d -m 0755 "$d"
  if [ -f "$d/ports" ]; then
    read -r -a ports <"$d/ports"
    if [ ${#ports[@]} = "$NODES" ] && ok "${ports[@]}"; then echo "${ports[*]}"; return; fi
  fi
  # Stale, or never started: stop what is left and start afresh.
  down "$d"
  rm -rf "${d:?}"/node-*
  ports=()
  for _ in $(seq 1 "$NODES"); do
    p=$((10000 + RANDOM % 12000))
    # AVOID_PORTS: ports the caller will bind later (not in use yet), so neither a node
    # nor its bus may take them.
    while port_in_use "$p" || port_in_use $((p + 10000)) || [[ " ${ports[*]} " == *" $p "* ]] \
      || [[ " ${ports[*]} " == *" $((p + 10000)) "* ]] || [[ " ${ports[*]} " == *" $((p - 10000)) "* ]] \
      || [[ " ${AVOID_PORTS:-} " == *" $p "* ]] || [[ " ${AVOID_PORTS:-} " == *" $((p + 10000)) "* ]]; do
      p=$((10000 + RANDOM % 12000))
    done
    ports+=("$p")
  done
  log "starting a Redis Cluster on 127.0.0.1:${ports[*]}"
  for p in "${ports[@]}"; do node_start "$d" "$p"; done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas "$REPLICAS" \
    --cluster-yes >"$d/create.log" 2>&1 || { cat "$d/create.log" >&2; return 1; }
  for _ in $(seq 1 100); do ok "${ports[@]}" && break; sleep 0.1; done
  ok "${ports[@]}" || { log "the Cluster did not become healthy; see $d"; return 1; }
  echo "${ports[*]}" >"$d/ports"
  echo "${ports[*]}"
}

case "${1:-}" in
  up) up "$2" ;;
  node-start) node_start "$2" "$3" ;;
  down) down "$2" ;;
  *) echo "usage: $0 up|node-start|down DIR [PORT]" >&2; exit 2 ;;
esac
