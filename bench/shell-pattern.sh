#!/usr/bin/env bash
# The pattern credbridge replaces, as units write it today: read each credential and put it on
# the hypervisor's command line, where every local user can read it in /proc/PID/cmdline.
# Used by benches/startup.rs as the baseline: shell-pattern.sh HYPERVISOR [ARGS...]
set -euo pipefail
strings=()
for f in "$CREDENTIALS_DIRECTORY"/*; do
  strings+=("io.systemd.credential:${f##*/}=$(cat "$f")")
done
IFS=,
exec "$@" --platform "oem_strings=[${strings[*]}]"
