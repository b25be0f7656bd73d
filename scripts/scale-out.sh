#!/usr/bin/env bash
# The reference server scaled out, on one machine, from Debian packages: a private Redis
# Cluster (3 masters, 3 replicas, 1 s node timeout), three reference-server instances on
# it and on the PostgreSQL primary and streaming replica of scripts/services.sh (a
# database of their own, `scaleout`), and nginx in front (passive health checks; a
# request that could not reach an instance is retried on another only when it is
# idempotent).
#
#   bash scripts/scale-out.sh up       # start (or reuse) everything; prints the address
#   bash scripts/scale-out.sh status   # what runs, and each instance's /readyz
#   bash scripts/scale-out.sh down     # stop what `up` started
#
# Settings: SCALE_OUT_DIR (default /var/tmp/tower-scale/scale-out), PORT (nginx, 18100;
# the instances listen on PORT+1..PORT+3, the Cluster on free ports), INSTANCES (3),
# REFERENCE_SERVER (a binary to run instead of building the release one), DRAIN (2s).
# `bash scripts/scale-out.sh start N` starts instance N again (after a test stopped it);
# `node-start PORT` the Cluster node on PORT.
# State, logs and pids are under SCALE_OUT_DIR: `instance-N.log`, `nginx/error.log`,
# `cluster/node-P/redis.log`; `env` holds the addresses as shell assignments.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/tower-scale-target}
DIR=${SCALE_OUT_DIR:-/var/tmp/tower-scale/scale-out}
PORT=${PORT:-18100}
INSTANCES=${INSTANCES:-3}
log() { printf 'scale-out: %s\n' "$*" >&2; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_packages() {
  # scripts/services.sh (run by `up`) installs Redis, PostgreSQL and nginx; curl is ours.
  command -v curl >/dev/null && return
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >&2
}

# --- the Redis Cluster (scripts/redis-cluster.sh) ---------------------------------------

cluster() { bash scripts/redis-cluster.sh "$@"; }  # (run from the repository root)

# --- the instances ----------------------------------------------------------------------

instance_up() { # n
  local n=$1 port=$((PORT + $1))
  # Running if its port answers (a pid may be a zombie nobody reaped).
  if port_in_use "$port"; then
    return
  fi
  # shellcheck disable=SC1091
  . "$DIR/env"
  LISTEN="127.0.0.1:$port" INSTANCE_ID="instance-$n" \
    REDIS_CLUSTER_NODES="$REDIS_CLUSTER_NODES" REDIS_PREFIX=scaleout \
    DATABASE_URL="$DATABASE_URL" DATABASE_REPLICA_URLS="$DATABASE_REPLICA_URLS" \
    TRUSTED_PROXIES=127.0.0.1/32 SESSION_COOKIE_SECURE=0 DRAIN="${DRAIN:-2s}" \
    RUST_LOG="${RUST_LOG:-warn}" \
    setsid "$DIR/reference_server" >>"$DIR/instance-$n.log" 2>&1 </dev/null &
  echo $! >"$DIR/instance-$n.pid"
}

wait_ready() { # port
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$1/readyz" && return 0
    sleep 0.1
  done
  log "nothing ready on port $1; see $DIR"; return 1
}

# --- nginx ------------------------------------------------------------------------------

nginx_up() {
  local d="$DIR/nginx" n servers=""
  install -d "$d" "$d/tmp"
  for n in $(seq 1 "$INSTANCES"); do
    servers+="    server 127.0.0.1:$((PORT + n)) max_fails=1 fail_timeout=5s;"$'\n'
  done
  cat >"$d/nginx.conf" <<EOF
# Written by scripts/scale-out.sh.
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  upstream reference {
$servers    keepalive 64;
  }
  server {
    listen 127.0.0.1:$PORT;
    location / {
      proxy_pass http://reference;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_connect_timeout 1s;
      proxy_read_timeout 30s;
      # Passive health checks: an instance that fails a connection is skipped for
      # fail_timeout. A request that could not be sent, or got no answer, goes to the
      # next instance, but only when it is idempotent (nginx never retries POST or PATCH
      # once sent).
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 3;
    }
  }
}
EOF
  if [ -f "$d/nginx.pid" ] && kill -0 "$(cat "$d/nginx.pid")" 2>/dev/null; then
    nginx -p "$d" -c "$d/nginx.conf" -s reload 2>>"$d/error.log"
  else
    nginx -p "$d" -c "$d/nginx.conf" 2>>"$d/error.log"
  fi
}

up() {
  install_packages
  install -d "$DIR"
  eval "$(bash scripts/services.sh)"
  local ports
  # nginx and the instances bind their ports after the Cluster starts: keep its nodes and
  # their bus ports (port + 10000) off them.
  ports=$(AVOID_PORTS="$(seq -s ' ' "$PORT" $((PORT + INSTANCES)))" cluster up "$DIR/cluster")
  local nodes
  nodes=$(printf 'redis://127.0.0.1:%s,' $ports | sed 's/,$//')
  local primary=${TEST_DATABASE_URL%/*}/scaleout replica=${TEST_DATABASE_REPLICA_URL%/*}/scaleout
  psql -q "$TEST_DATABASE_URL" -c 'CREATE DATABASE scaleout' 2>/dev/null || true
  # The test pair trades durability for speed (synchronous_commit off delays WAL, and so
  # replication, by up to a few hundred ms); this database commits as production would.
  psql -q "$TEST_DATABASE_URL" -c 'ALTER DATABASE scaleout SET synchronous_commit = on' >/dev/null
  cat >"$DIR/env" <<EOF
REDIS_CLUSTER_NODES='$nodes'
CLUSTER_PORTS='$ports'
DATABASE_URL='$primary'
DATABASE_REPLICA_URLS='$replica'
NGINX='http://127.0.0.1:$PORT'
EOF
  local bin=${REFERENCE_SERVER:-}
  if [ -z "$bin" ]; then
    log "building the reference server (release)"
    cargo build --release -q -p reference-server --bin reference-server
    bin=$CARGO_TARGET_DIR/release/reference-server
  fi
  cp "$bin" "$DIR/reference_server.new"
  mv "$DIR/reference_server.new" "$DIR/reference_server"
  local n
  for n in $(seq 1 "$INSTANCES"); do instance_up "$n"; done
  for n in $(seq 1 "$INSTANCES"); do wait_ready $((PORT + n)); done
  nginx_up
  wait_ready "$PORT"
  log "up: http://127.0.0.1:$PORT (instances on $((PORT + 1))..$((PORT + INSTANCES)), Redis Cluster on $ports)"
  echo "http://127.0.0.1:$PORT"
}

status() {
  [ -f "$DIR/env" ] || { echo "not up"; return 1; }
  # shellcheck disable=SC1091
  . "$DIR/env"
  local n
  for n in $(seq 1 "$INSTANCES"); do
    printf 'instance-%s (:%s): %s\n' "$n" $((PORT + n)) \
      "$(curl -s -m 1 "http://127.0.0.1:$((PORT + n))/readyz" || echo down)"
  done
  printf 'nginx (:%s): %s\n' "$PORT" "$(curl -s -m 1 "http://127.0.0.1:$PORT/healthz" || echo down)"
  printf 'cluster: %s\n' "$(redis-cli -p "${CLUSTER_PORTS%% *}" cluster info 2>/dev/null | grep cluster_state || echo down)"
}

down() {
  local n p
  if [ -f "$DIR/nginx/nginx.pid" ]; then
    nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -s quit 2>/dev/null || true
  fi
  for n in $(seq 1 "$INSTANCES"); do
    if [ -f "$DIR/instance-$n.pid" ]; then
      kill "$(cat "$DIR/instance-$n.pid")" 2>/dev/null || true
      rm -f "$DIR/instance-$n.pid"
    fi
  done
  # Every node started, even of a Cluster whose creation failed.
  cluster down "$DIR/cluster"
  log "down"
}

case "${1:-}" in
  up) up ;;
  start) instance_up "$2"; wait_ready $((PORT + $2)) ;;
  node-start) cluster node-start "$DIR/cluster" "$2" ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
