#!/bin/bash
# Print the QEMU arguments that boot the cached e2e guest, one per line.
#
#   tests/e2e/guest-args.sh --release bookworm|trixie [--serial CHARDEV]
#                           [--append-extra 'k=v ...'] [--accel kvm|tcg|auto]
#
# Covers machine, accelerator, memory, kernel, initrd, kernel command line,
# serial and -no-reboot; the caller adds the -smbios type=11 options (or lets
# credbridge add them) and reads the report from the serial output.
# --serial defaults to stdio; e.g. --serial file:/tmp/serial.log.
# One argument per line, and the -append value contains spaces, so read them
# into an array, not with word splitting:
#   mapfile -t ARGS < <(tests/e2e/guest-args.sh --release bookworm)
#   qemu-system-x86_64 "${ARGS[@]}" -smbios type=11,path=cred.txt
# The guest must already be built (tests/e2e/build-guest.sh).
set -euo pipefail
E2E_PROG=guest-args.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RELEASE=bookworm SERIAL=stdio EXTRA="" ACCEL="${CREDBRIDGE_E2E_ACCEL:-auto}"
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASE="$2"; shift 2 ;;
        --serial) SERIAL="$2"; shift 2 ;;
        --append-extra) EXTRA="$2"; shift 2 ;;
        --accel) ACCEL="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
done
e2e_check_release "$RELEASE"
e2e_guest_ready "$RELEASE" || e2e_die "no cached $RELEASE guest; run tests/e2e/build-guest.sh --release $RELEASE"
ACCEL="$(CREDBRIDGE_E2E_ACCEL="$ACCEL" e2e_accel "$RELEASE")"
e2e_qemu_args "$RELEASE" "$ACCEL" "$SERIAL" "$EXTRA"
printf '%s\n' "${E2E_ARGS[@]}"
