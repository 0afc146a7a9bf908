#!/bin/bash
# Boot the cached e2e guest once and print its credential report.
#
#   tests/e2e/boot-guest.sh [--release bookworm|trixie] [--timeout SECONDS]
#                           [--log FILE] [--append-extra 'k=v ...'] [--full]
#                           [-- EXTRA QEMU ARGS...]
#
# Builds the guest first if the cache is missing or stale (build-guest.sh).
# Runs qemu-system-x86_64 (KVM only if a probe shows it works, else TCG) in the
# foreground under a timeout, with the serial console in a log file, then prints
# the report lines found between CREDBRIDGE-E2E-BEGIN and CREDBRIDGE-E2E-END
# (--full: the whole serial log instead).  Format of the report: tests/e2e/README.md.
# Exit: 0 report printed; 1 no report (serial tail on stderr); 124 timeout;
# 130 interrupted (QEMU is stopped first).
set -euo pipefail
E2E_PROG=boot-guest.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RELEASE=bookworm TIMEOUT=180 LOG="" EXTRA="" FULL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASE="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --log) LOG="$2"; shift 2 ;;
        --append-extra) EXTRA="$2"; shift 2 ;;
        --full) FULL=1; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1 (QEMU arguments go after --)" ;;
    esac
done
e2e_check_release "$RELEASE"
"$E2E_DIR/build-guest.sh" --release "$RELEASE"

OWN_LOG=0
if [ -z "$LOG" ]; then LOG="$(mktemp /tmp/credbridge-e2e-serial.XXXXXX)"; OWN_LOG=1; fi
if [ "$OWN_LOG" = 1 ]; then trap 'rm -f "$LOG"' EXIT; fi
trap 'exit 130' INT TERM HUP
: >"$LOG"

ACCEL="$(e2e_accel "$RELEASE")"
e2e_qemu_args "$RELEASE" "$ACCEL" "file:$LOG" "$EXTRA"

t0=$(date +%s.%N)
rc=0
# timeout kills QEMU (then SIGKILL) at the limit.  timeout puts itself in its own
# process group, so a signal to ours would miss it: forward INT/TERM/HUP, and
# wait for it, so that nothing is left running either way.
timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 "${E2E_ARGS[@]}" "$@" </dev/null &
QPID=$!
trap 'kill -TERM "$QPID" 2>/dev/null; wait "$QPID" 2>/dev/null; exit 130' INT TERM HUP
wait "$QPID" || rc=$?
trap 'exit 130' INT TERM HUP
secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

if [ "$FULL" = 1 ]; then tr -d '\r' <"$LOG"; fi
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "boot-guest: $RELEASE guest ($ACCEL) timed out after ${TIMEOUT}s; serial tail:" >&2
    tr -d '\r' <"$LOG" | tail -20 >&2
    exit 124
fi
if [ "$FULL" = 0 ] && e2e_report "$LOG"; then
    echo "boot-guest: $RELEASE guest ($ACCEL) reported after ${secs}s (qemu exit $rc)" >&2
    exit 0
fi
if [ "$FULL" = 1 ] && e2e_report "$LOG" >/dev/null; then exit 0; fi
echo "boot-guest: no report from the $RELEASE guest ($ACCEL, qemu exit $rc, ${secs}s); serial tail:" >&2
tr -d '\r' <"$LOG" | tail -20 >&2
exit 1
