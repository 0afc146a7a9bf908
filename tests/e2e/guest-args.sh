#!/bin/bash
# Print the QEMU arguments that boot the cached e2e guest, one per line.
#
#   tests/e2e/guest-args.sh --release bookworm|trixie [--serial CHARDEV]
#                           [--append-extra 'k=v ...'] [--accel kvm|tcg|auto]
#                           [--format lines|shell|nul]
#
# Covers machine, accelerator, memory, kernel, initrd, kernel command line,
# serial and -no-reboot; the caller adds the -smbios type=11 options (or lets
# credbridge add them) and reads the report from the serial output.
# --serial defaults to stdio; e.g. --serial file:/tmp/serial.log.
# --format lines (default): one argument per line.  The -append value contains
# spaces, so read the lines into an array, not with $(...) word splitting:
#   mapfile -t ARGS < <(tests/e2e/guest-args.sh --release bookworm)
#   qemu-system-x86_64 "${ARGS[@]}" -smbios type=11,path=cred.txt
# --format shell: one line of shell-quoted words, for eval "set -- $(...)".
# --format nul: NUL-terminated arguments (xargs -0, split on \0).
# The guest must already be built (tests/e2e/build-guest.sh).
set -euo pipefail
E2E_PROG=guest-args.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RELEASE=bookworm SERIAL=stdio EXTRA="" ACCEL="${CREDBRIDGE_E2E_ACCEL:-auto}" FORMAT=lines
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASE="$2"; shift 2 ;;
        --serial) SERIAL="$2"; shift 2 ;;
        --append-extra) EXTRA="$2"; shift 2 ;;
        --accel) ACCEL="$2"; shift 2 ;;
        --format) FORMAT="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
done
e2e_check_release "$RELEASE"
e2e_guest_ready "$RELEASE" || e2e_die "no cached $RELEASE guest; run tests/e2e/build-guest.sh --release $RELEASE"
ACCEL="$(CREDBRIDGE_E2E_ACCEL="$ACCEL" e2e_accel "$RELEASE")"
e2e_qemu_args "$RELEASE" "$ACCEL" "$SERIAL" "$EXTRA"
case "$FORMAT" in
    lines) printf '%s\n' "${E2E_ARGS[@]}" ;;
    shell) printf '%q ' "${E2E_ARGS[@]}"; echo ;;
    nul) printf '%s\0' "${E2E_ARGS[@]}" ;;
    *) e2e_die "--format must be lines, shell or nul" ;;
esac
