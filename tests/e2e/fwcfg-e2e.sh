#!/bin/bash
# End-to-end (#15): credentials over fw_cfg.  Boots the cached Debian guests
# (systemd as PID 1) under QEMU through `credbridge run` and checks, inside the
# guest, that every credential equals the host's bytes (size + sha256, and the
# bytes themselves for small values).
#
#   tests/e2e/fwcfg-e2e.sh [--credbridge PATH]
#
# Boots:
#   microvm-bookworm, microvm-trixie   -M microvm (no SMBIOS): every credential
#           over fw_cfg (all 256 byte values, commas and newlines, a 28-byte
#           name, the longest fw_cfg allows)
#   mixed   bookworm (systemd 252) on -M pc: a 200 KiB credential (over fw_cfg,
#           past the SMBIOS budget) and small ones (over SMBIOS), one boot
#   max     bookworm on -M pc: the largest credential that reaches a guest,
#           1 MiB of name plus value (systemd's CREDENTIALS_TOTAL_SIZE_MAX); one
#           byte more is refused before start, as are non-credential OEM strings
#           on -M microvm
# Prints one PASS/FAIL line per check and the wall time; exits 1 on any failure.
# Boots QEMU guests: run it under `flock /tmp/qemu-guests.lock` on a shared host.
set -uo pipefail
export E2E_PROG=fwcfg-e2e.sh
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T_START=$(date +%s.%N)

CREDBRIDGE="" BOOT_TIMEOUT=240
while [ $# -gt 0 ]; do
    case "$1" in
        --credbridge) CREDBRIDGE="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
done
need_packages "$E2E_PROG" qemu-system-x86_64=qemu-system-x86 sha256sum=coreutils perl=perl-base || exit
ROOT_DIR="$(cd "$E2E_DIR/../.." && pwd)"
if [ -z "$CREDBRIDGE" ]; then
    (cd "$ROOT_DIR" && cargo build --quiet --bin credbridge) || e2e_die "cargo build failed"
    CREDBRIDGE="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/debug/credbridge"
fi
[ -x "$CREDBRIDGE" ] || e2e_die "no credbridge binary at $CREDBRIDGE"

PASS=0 FAIL=0
pass() { echo "PASS: $*"; PASS=$((PASS + 1)); }
fail() { echo "FAIL: $*"; FAIL=$((FAIL + 1)); }
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

W="$(mktemp -d /tmp/credbridge-fwcfg-e2e.XXXXXX)"
trap 'rm -rf "$W"' EXIT
trap 'exit 130' INT TERM

for r in bookworm trixie; do
    "$E2E_DIR/build-guest.sh" --release "$r" 2>"$W/build.err" || { tail -20 "$W/build.err" >&2; e2e_die "$r: guest build failed"; }
    grep -q '^fw_cfg_sysfs=[ym]$' "$E2E_CACHE/$r/info" || e2e_die "$r: the cached guest has no qemu_fw_cfg (info lacks fw_cfg_sysfs=y|m)"
done

# ---------------------------------------------------------------- credentials
# $W/creds/<set>/<name>: the credentials directory credbridge reads (as systemd
# leaves it for a unit); the same files are the expected bytes.
mkcred() { # set name: value on stdin
    mkdir -p "$W/creds/$1"; chmod 0700 "$W/creds/$1"
    cat >"$W/creds/$1/$2"; chmod 0400 "$W/creds/$1/$2"
}
NAME28=abcdefghijklmnopqrstuvwxyz12
printf 'Hello world: plain ASCII 0123456789 ~!@#$%%^&*()_+{}|;<>?' | mkcred micro ascii
perl -e 'print map { chr } 0 .. 255' | mkcred micro allbytes
printf 'a,b "double quoted" [bracket] [x]=y\nsecond line, with comma\n\n=last=line=\n' | mkcred micro special
printf 'a name at the 28-byte limit' | mkcred micro "$NAME28"
MICRO=(ascii allbytes special "$NAME28")

# 200 KiB of varied bytes (not compressible into a pass by accident), and two
# small ones that stay in SMBIOS.
perl -e 'srand(15); print map { chr(int(rand(256))) } 1 .. 204800' | mkcred mixed big200k
printf 'small one' | mkcred mixed small1
printf 'small two, with comma' | mkcred mixed small2

# The largest credential that reaches a guest: systemd loads a unit's credentials
# up to 1 MiB of name plus value (CREDENTIALS_TOTAL_SIZE_MAX, exec-credential.c),
# and the guest's PID 1 imports up to 1 MiB of values (import-creds.c): a 1-byte
# name leaves 1048575 bytes.  One byte more is refused before start.
perl -e 'my $s = ""; $s .= sprintf("%07d:0123456789abcdef|", $_) for 0 .. 43690; print substr($s, 0, 1048575)' | mkcred max m
perl -e 'print "x" x 1048576' | mkcred over o

# The host's TSC rate in kHz, where it is constant (see boot()).
TSC_KHZ=""
if grep -qw constant_tsc /proc/cpuinfo; then
    TSC_KHZ="$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)"
fi

# ---------------------------------------------------------------- boot
# boot RELEASE MACHINE SET LABEL: runs the guest through credbridge; sets REPORT,
# RC, BOOT_SECS and CMDLINE (QEMU's command line as every local user sees it).
boot() {
    local r="$1" machine="$2" set="$3" label="$4" t0 serial="$W/serial-$label" args=() a
    REPORT="$W/report-$label" CMDLINE="$W/cmdline-$label"
    : >"$serial"; : >"$REPORT"
    while IFS= read -r a; do args+=("$a"); done < <("$E2E_DIR/guest-args.sh" --release "$r" --serial "file:$serial")
    [ ${#args[@]} -gt 0 ] || { RC=99; return; }
    # guest-args.sh boots -machine pc; the same guest boots on microvm (PVH
    # kernel, initramfs root, ISA serial, ACPI for the fw_cfg device).  microvm
    # has no HPET and no ACPI PM timer: under TCG on a loaded host bookworm's
    # 6.1 kernel can fail its PIT-only TSC calibration ("could not calculate TSC
    # khz") and hang.  Under TCG the guest's TSC is the host's, so tell it the
    # rate (tsc_early_khz skips the calibration).
    for i in "${!args[@]}"; do
        if [ "${args[$i]}" = -machine ]; then args[i+1]="$machine"; fi
        if [ "$machine" = microvm ] && [ "${args[$i]}" = -append ] && [ -n "$TSC_KHZ" ] \
                && [[ " ${args[*]} " = *" -accel tcg "* ]]; then
            args[i+1]="${args[i+1]} tsc_early_khz=$TSC_KHZ"
        fi
    done
    t0=$(date +%s.%N)
    CREDENTIALS_DIRECTORY="$W/creds/$set" timeout --kill-after=10 "$BOOT_TIMEOUT" \
        "$CREDBRIDGE" run --ready spawn -- qemu-system-x86_64 "${args[@]}" \
        </dev/null >"$W/run.out" 2>"$W/run.err" &
    local tpid=$!
    e2e_child_cmdline "$tpid" "$CMDLINE"
    wait "$tpid"
    RC=$?
    BOOT_SECS=$(secs_since "$t0")
    e2e_report "$serial" >"$REPORT" || true
    if [ "$RC" = 0 ] && [ -s "$REPORT" ]; then
        pass "$label: guest reported in ${BOOT_SECS}s, credbridge exited 0"
    else
        fail "$label: credbridge exited $RC after ${BOOT_SECS}s"
        tr -d '\r' <"$serial" | tail -15 >&2
        tail -5 "$W/run.err" >&2
    fi
}

# The command line names every fw_cfg file by /dev/fd/N and holds no value.
check_cmdline() { # label want-fw_cfg-count
    local label="$1" want="$2" n
    n="$(grep -c '^name=opt/io.systemd.credentials/.*,file=/dev/fd/[0-9]*$' "$CMDLINE")"
    if [ "$n" != "$want" ]; then
        fail "$label: QEMU's command line has $n -fw_cfg file=/dev/fd/N, want $want"
    elif grep -qF -e 'plain ASCII' -e 'double quoted' -e 'small one' -e 'small two' "$CMDLINE"; then
        fail "$label: a credential value is on QEMU's command line"
    else
        pass "$label: QEMU's command line has $n -fw_cfg name=..,file=/dev/fd/N and no value"
    fi
}

check_count() { # label want
    local count
    count="$(sed -n 's/^COUNT //p' "$REPORT")"
    if [ "$count" = "$2" ]; then pass "$1: exactly $2 credentials imported"; else fail "$1: ${count:-no} credentials imported, want $2"; fi
}

# Which channel the guest saw each credential on: fw_cfg names from the report's
# FWCFG line, SMBIOS from the type 11 entry's presence.
check_fwcfg_names() { # label want...
    local label="$1" got want; shift
    got="$(sed -n 's/^FWCFG //p' "$REPORT" | tr ' ' '\n' | sed '/^$/d' | LC_ALL=C sort | tr '\n' ' ')"
    want="$(printf '%s\n' "$@" | LC_ALL=C sort | tr '\n' ' ')"
    if [ "$got" = "$want" ]; then pass "$label: fw_cfg offered exactly: ${got:-nothing}"; else fail "$label: fw_cfg offered '${got:-nothing}', want '$want'"; fi
}

for r in bookworm trixie; do
    label="microvm-$r"
    boot "$r" microvm micro "$label"
    ver="$(sed -n 's/^SYSTEMD systemd \([0-9]*\).*/\1/p' "$REPORT")"
    echo "# $label: systemd ${ver:-?}, DMI type 11 entries: $(grep -c '^DMI11 ' "$REPORT")"
    for n in "${MICRO[@]}"; do e2e_check_cred "$label" "$REPORT" "$n" "$W/creds/micro/$n"; done
    check_count "$label" "${#MICRO[@]}"
    check_fwcfg_names "$label" "${MICRO[@]}"
    check_cmdline "$label" "${#MICRO[@]}"
done

boot bookworm pc mixed mixed
for n in big200k small1 small2; do e2e_check_cred mixed "$REPORT" "$n" "$W/creds/mixed/$n"; done
check_count mixed 3
check_fwcfg_names mixed big200k
check_cmdline mixed 1
if grep -q 'type=11,path=/dev/fd/' "$CMDLINE" && grep -q '^DMI11 ' "$REPORT"; then
    pass "mixed: the small ones went over SMBIOS (type 11 entry in the guest)"
else
    fail "mixed: no SMBIOS type 11 strings seen"
fi

boot bookworm pc max max
e2e_check_cred max "$REPORT" m "$W/creds/max/m"
check_count max 1

# Refused before start (exit 125), no guest needed.
refused() { # label set want-in-error machine-args...
    local label="$1" set="$2" want="$3" rc; shift 3
    CREDENTIALS_DIRECTORY="$W/creds/$set" timeout 30 "$CREDBRIDGE" run "$@" </dev/null >/dev/null 2>"$W/refused.err"
    rc=$?
    if [ "$rc" = 125 ] && grep -qF "$want" "$W/refused.err"; then
        pass "$label: refused before start (exit 125): $(head -1 "$W/refused.err" | cut -c1-110)"
    else
        fail "$label: exit $rc, $(head -1 "$W/refused.err")"
    fi
}
refused "1 MiB + 1 byte" over "the limit is 1048576 bytes" -- qemu-system-x86_64 -machine pc
refused "--oem-string on microvm" micro "has no SMBIOS tables" --oem-string a=b -- qemu-system-x86_64 -machine microvm

echo "$PASS passed, $FAIL failed; wall time $(secs_since "$T_START")s"
[ "$FAIL" = 0 ]
