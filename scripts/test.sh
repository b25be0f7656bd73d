#!/usr/bin/env bash
# Runs every check tower-scale has, on a fresh Debian machine with only Rust installed:
# installs and starts Redis and a PostgreSQL primary + streaming replica when missing
# (scripts/services.sh), then formatting, clippy, the benchmark charts against their
# tables, all tests (unit, integration, doc; the examples and the getting-started guide),
# builds examples and benches, and checks each feature alone.
set -euo pipefail
cd "$(dirname "$0")/.."

# One target directory shared by every clone and run on this machine: builds are the slow part.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/tower-scale-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*"; }

# One run at a time on a machine: the rig test pauses the shared replica's replay. The
# lock is held by `flock` itself (`-o`: this script and what it starts do not inherit it),
# so a server a test leaves behind cannot keep the next run waiting for ever.
state=${TOWER_SCALE_STATE:-/var/tmp/tower-scale}
install -d -m 0755 "$state"
if [ -z "${TOWER_SCALE_LOCKED:-}" ]; then
  exec env TOWER_SCALE_LOCKED=1 flock -o "$state/test.lock" bash "$PWD/scripts/test.sh" "$@"
fi

step "services"
services=$(bash scripts/services.sh) || { echo "services could not be started" >&2; exit 1; }
eval "$services"
echo "redis: $TEST_REDIS_URL"
echo "postgres primary: $TEST_DATABASE_URL"
echo "postgres replica: $TEST_DATABASE_REPLICA_URL"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo doc (broken or redundant links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features -p tower-scale

step "promtool: the reference server's scrape config and alerting rules, checked and unit-tested"
(cd examples/reference-server/ops && promtool check config prometheus.yml && promtool check rules alerts.yml \
  && promtool test rules alerts.test.yml)

step "the benchmark charts are what their data draws, and their figures are in the tables"
bash scripts/charts.sh --check

step "cargo test --workspace --all-features (unit, integration, doc; the reference server in process and as processes)"
cargo test --workspace --all-features --no-fail-fast

step "build the reference server (as the README starts it) and the benches"
cargo build --release -p reference-server --examples
cargo bench --no-run --all-features -p tower-scale

step "each feature alone, warnings denied"
# `cargo rustc` passes -D warnings to this crate alone (RUSTFLAGS would rebuild every
# dependency): code a feature does not use is cfg-gated, never allowed as dead.
for feature in "" metrics rate-limit redis axum circuit-breaker retry session cache db-route sqlx-postgres jobs "jobs redis" full; do
  echo "-- ${feature:-(none)}"
  cargo rustc --profile check -p tower-scale --lib --no-default-features ${feature:+--features "$feature"} -- -D warnings
done

step "all checks passed"
