#!/usr/bin/env bash
# credbridge's performance figures in one command (issue #7): builds the release binaries and
# the release fake cloud-hypervisor, runs the criterion benches (benches/codec.rs), then the
# start-path benchmark (benches/startup.rs), which prints its tables, every ratio taken within
# this run. Progress goes to stderr, the tables to stdout.
#
# The guest notify relay's figures (#11) are measured for this build and for a baseline built
# from this repository's own history (BENCH_BASELINE_REV, default 68654e0, the commit before
# the relay's hardening), side by side in the same run. The baseline's source is exported with
# `git archive` into target/bench-baseline/ and built there once per revision.
#
#   bash bench/run.sh                  # 20 rounds, 10 s floods
#   BENCH_ROUNDS=50 bash bench/run.sh
#   BENCH_BASELINE_REV=none bash bench/run.sh   # this build only
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
rev=${BENCH_BASELINE_REV:-68654e0}
if [ "$rev" != none ]; then
  base=$PWD/target/bench-baseline
  full=$(git rev-parse --verify "$rev^{commit}")
  if [ "$(cat "$base/rev" 2>/dev/null)" != "$full" ]; then
    rm -rf "$base/src"
    mkdir -p "$base/src"
    git archive "$full" | tar -x -C "$base/src"
    echo "$full" >"$base/rev.building"
  fi
  # Its own target dir inside ours: the baseline never shares build output with this tree.
  step "building the baseline credbridge at $rev (a few minutes the first time)" \
    env CARGO_TARGET_DIR="$base/target" cargo build --release --manifest-path "$base/src/Cargo.toml" -p credbridge
  [ -f "$base/rev.building" ] && mv "$base/rev.building" "$base/rev"
  export BENCH_BASELINE="$base/target/release/credbridge" BENCH_BASELINE_REV="$rev"
fi
step "criterion benches (about a minute)" cargo bench --bench codec -- --noplot
echo "bench: start-path benchmark" >&2
cargo bench -q --bench startup
