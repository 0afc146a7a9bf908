#!/usr/bin/env bash
# credbridge's performance figures in one command (issue #7): builds the release binaries and
# the release fake cloud-hypervisor, runs the criterion benches (benches/codec.rs), then the
# start-path benchmark (benches/startup.rs), which prints ONE table, every ratio taken within
# this run. Progress goes to stderr, the table to stdout.
#
#   bash bench/run.sh                  # 20 rounds
#   BENCH_ROUNDS=50 bash bench/run.sh
#
# Figures depend on the machine; compare ratios, not milliseconds, across machines.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() {
  echo "bench: $1" >&2
  shift
  if ! "$@" >>"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
}
step "building release binaries" cargo build --release -p credbridge -p fake-cloud-hypervisor
step "criterion benches (about a minute)" cargo bench --bench codec -- --noplot
echo "bench: start-path benchmark" >&2
cargo bench -q --bench startup
