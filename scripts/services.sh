#!/usr/bin/env bash
# Makes sure the services the tests talk to are running, and prints their addresses as
# `export` lines:
#
#   TEST_REDIS_URL            a Redis (the one on 127.0.0.1:6379 if it answers, else our own;
#                             TOWER_SCALE_OWN_REDIS=1 always starts our own)
#   TEST_DATABASE_URL         a PostgreSQL primary
#   TEST_DATABASE_REPLICA_URL a physical streaming replica of it
#   TEST_REDIS_CLUSTER_NODES  a Redis Cluster of our own (3 masters, 3 replicas), its
#                             nodes' URLs separated by commas
#
# On a fresh Debian machine it installs redis-server and postgresql first (as root). The
# primary/replica pair is our own, kept under $TOWER_SCALE_STATE (default
# /var/tmp/tower-scale) on free ports, and reused while it runs: the machine's own
# PostgreSQL is never touched, and nothing here stops a service it did not start.
#
# Usage: eval "$(scripts/services.sh)"      or      scripts/services.sh stop
set -euo pipefail

STATE=${TOWER_SCALE_STATE:-/var/tmp/tower-scale}
log() { printf 'services: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

install_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v psql >/dev/null || missing+=(postgresql-client)
  # promtool (checks /metrics and the alerting rules); the package's server is not used.
  command -v promtool >/dev/null || missing+=(prometheus)
  # nginx for the scale-out rig (scripts/scale-out.sh; its test starts its own nginx).
  command -v nginx >/dev/null || missing+=(nginx-light)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    # Keep Debian from starting the packages' own servers (nginx on port 80, say): we run
    # our own, on free ports. Only a policy we wrote is removed afterwards.
    local policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      as_root sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d' && policy=1
    fi
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    if [ -n "$policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Below the kernel's ephemeral range (32768 and up here), where outgoing connections
# could take a port between this check and the server's bind.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    if ! port_in_use "$p"; then echo "$p"; return 0; fi
  done
  log "no free port found"; return 1
}

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] || { log "PostgreSQL server binaries not found"; return 1; }
  echo "$dir"
}

# PostgreSQL refuses to run as root: run its programs as the postgres user when we are root,
# from a directory it can enter (its programs chdir back to the working directory).
as_pg() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

redis_url() {
  if [ -n "${TEST_REDIS_URL:-}" ]; then echo "$TEST_REDIS_URL"; return; fi
  # TOWER_SCALE_OWN_REDIS=1 skips the machine's Redis (to exercise the start path).
  if [ -z "${TOWER_SCALE_OWN_REDIS:-}" ] && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    echo "redis://127.0.0.1:6379"; return
  fi
  install -d -m 0755 "$STATE/redis"
  local port
  if [ -f "$STATE/redis/port" ] && redis-cli -p "$(cat "$STATE/redis/port")" ping 2>/dev/null | grep -q PONG; then
    port=$(cat "$STATE/redis/port")
  else
    port=$(free_port)
    log "starting redis-server on 127.0.0.1:$port"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --dir "$STATE/redis" --logfile "$STATE/redis/redis.log" --pidfile "$STATE/redis/redis.pid" >&2
    echo "$port" >"$STATE/redis/port"
    for _ in $(seq 1 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG || {
      log "redis-server did not start; see $STATE/redis/redis.log"; rm -f "$STATE/redis/port"; return 1; }
  fi
  echo "redis://127.0.0.1:$port"
}

# A Redis Cluster of our own (scripts/redis-cluster.sh) under $STATE/redis-cluster, reused
# while healthy. Prints the nodes' URLs, comma-separated.
redis_cluster_nodes() {
  local ports
  ports=$(bash "$(dirname "$0")/redis-cluster.sh" up "$STATE/redis-cluster") || return 1
  printf 'redis://127.0.0.1:%s,' $ports | sed 's/,$//'
}

pg_running() { as_pg "$(pg_bin)/pg_ctl" status -D "$1" >/dev/null 2>&1; }

pg_wait() {
  for _ in $(seq 1 100); do
    "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$1" && return 0
    sleep 0.1
  done
  log "PostgreSQL on port $1 did not become ready; see $2"; return 1
}

start_pg_pair() {
  local bin pdir rdir pport rport
  bin=$(pg_bin)
  pdir="$STATE/pg/primary"; rdir="$STATE/pg/replica"
  install -d -m 0755 "$STATE/pg"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$STATE/pg"; fi

  if [ -f "$STATE/pg/ports" ] && pg_running "$pdir" && pg_running "$rdir"; then
    read -r pport rport <"$STATE/pg/ports"
    pg_wait "$pport" "$pdir/log" && pg_wait "$rport" "$rdir/log" || return 1
    # A test run killed while it had replay paused would leave the replica stuck.
    "$bin/psql" -q -h 127.0.0.1 -p "$rport" -U postgres -d postgres -c 'SELECT pg_wal_replay_resume()' >/dev/null 2>&1 || true
    echo "$pport $rport"; return
  fi

  # Whatever is left of an earlier pair is stale: stop it and start afresh.
  pg_running "$rdir" && as_pg "$bin/pg_ctl" stop -D "$rdir" -m immediate >&2 || true
  pg_running "$pdir" && as_pg "$bin/pg_ctl" stop -D "$pdir" -m immediate >&2 || true
  as_root rm -rf "$pdir" "$rdir"

  pport=$(free_port)
  log "starting PostgreSQL primary on 127.0.0.1:$pport"
  as_pg "$bin/initdb" -D "$pdir" -U postgres -A trust --no-sync -E UTF8 >"$STATE/pg/initdb.log" 2>&1 \
    || { cat "$STATE/pg/initdb.log" >&2; return 1; }
  cat >>"$pdir/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pport
unix_socket_directories = '$STATE/pg'
wal_level = replica
max_wal_senders = 10
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  as_pg "$bin/pg_ctl" start -D "$pdir" -l "$pdir/log" -w >&2
  pg_wait "$pport" "$pdir/log"

  rport=$(free_port)
  while [ "$rport" = "$pport" ]; do rport=$(free_port); done
  log "starting streaming replica on 127.0.0.1:$rport"
  as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -D "$rdir" -R -X stream >&2
  cat >>"$rdir/postgresql.conf" <<EOF
port = $rport
hot_standby = on
wal_receiver_status_interval = 1s
EOF
  as_pg "$bin/pg_ctl" start -D "$rdir" -l "$rdir/log" -w >&2
  pg_wait "$rport" "$rdir/log"
  echo "$pport $rport" >"$STATE/pg/ports"
  echo "$pport $rport"
}

stop_all() {
  local bin
  if bin=$(pg_bin); then
    for d in "$STATE/pg/replica" "$STATE/pg/primary"; do
      if pg_running "$d"; then as_pg "$bin/pg_ctl" stop -D "$d" -m fast >&2 || true; fi
    done
  fi
  if [ -f "$STATE/redis/port" ]; then redis-cli -p "$(cat "$STATE/redis/port")" shutdown nosave 2>/dev/null || true; fi
  bash "$(dirname "$0")/redis-cluster.sh" down "$STATE/redis-cluster" 2>/dev/null || true
  log "stopped"
}

if [ "${1:-}" = stop ]; then stop_all; exit 0; fi

install_packages
install -d -m 0755 "$STATE"
REDIS=$(redis_url) || { log "could not start Redis"; exit 1; }
CLUSTER=$(redis_cluster_nodes) || { log "could not start the Redis Cluster"; exit 1; }
PG=$(start_pg_pair) || { log "could not start PostgreSQL; logs under $STATE/pg"; exit 1; }
read -r PPORT RPORT <<<"$PG"
[ -n "${PPORT:-}" ] && [ -n "${RPORT:-}" ] || { log "could not start PostgreSQL; logs under $STATE/pg"; exit 1; }
echo "export TEST_REDIS_URL='$REDIS'"
echo "export TEST_DATABASE_URL='postgres://postgres@127.0.0.1:$PPORT/postgres'"
echo "export TEST_DATABASE_REPLICA_URL='postgres://postgres@127.0.0.1:$RPORT/postgres'"
echo "export TEST_REDIS_CLUSTER_NODES='$CLUSTER'"
log "redis $REDIS; redis cluster $CLUSTER; postgres primary :$PPORT, replica :$RPORT"
