#!/usr/bin/env bash
# Bounded fuzzing for CI (issue #7): builds every cargo-fuzz target under fuzz/, seeds its
# corpus, runs each for FUZZ_SECONDS (default 25) and fails on the first crash, leak or
# timeout. Prints one line per target: executions, corpus size, crashes.
#
#   bash .ci/fuzz.sh                 # all targets, 25 s each
#   FUZZ_SECONDS=300 bash .ci/fuzz.sh events
#
# The machine has only a stable toolchain; RUSTC_BOOTSTRAP=1 lets it take the -Z flags
# (-Zsanitizer=address) that cargo-fuzz passes. A crash leaves its input in
# fuzz/artifacts/<target>/; reproduce with `cargo fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never
seconds=${FUZZ_SECONDS:-25}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
command -v python3 >/dev/null || {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 >/dev/null
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
target_dir=()
[ -n "${FUZZ_TARGET_DIR:-}" ] && target_dir=(--target-dir "$FUZZ_TARGET_DIR")

echo "== fuzz: building ${targets[*]}"
build_log=$(mktemp)
if ! cargo fuzz build --fuzz-dir fuzz -O -a "${target_dir[@]}" >"$build_log" 2>&1; then
  cat "$build_log"
  exit 1
fi
rm -f "$build_log"

# Seeds: the committed ones, plus every cloud-hypervisor fixture argv (NUL-separated tokens).
fixtures=../shared/fixtures/cloud-hypervisor/argv-to-vmconfig.jsonl
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  if [ -d "fuzz/seeds/$t" ]; then cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/"; fi
done
if [[ " ${targets[*]} " == *" ch_argv "* ]] && [ -f "$fixtures" ]; then
  python3 - "$fixtures" fuzz/corpus/ch_argv <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[2])
for line in open(sys.argv[1]):
    if line.strip():
        case = json.loads(line)
        (out / f"fixture-{case['name']}").write_bytes("\0".join(case["argv"]).encode())
PY
fi

status=0
summary=()
for t in "${targets[@]}"; do
  log=$(mktemp)
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=fuzz/dict/$t.dict")
  echo "== fuzz: $t for ${seconds}s"
  if cargo fuzz run --fuzz-dir fuzz -O -a "${target_dir[@]}" "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      "${dict[@]}" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    grep -E "panicked|ERROR: |SUMMARY|Test unit written|^thread" "$log" | head -20 || true
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
  summary+=("$(printf '%-12s %-6s executions %-10s corpus %-6s crash files %s' \
    "$t" "$result" "${execs:-?}" "$corpus" "$crashes")")
  rm -f "$log"
done
echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit $status
