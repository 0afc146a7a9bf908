#!/bin/bash
# End-to-end: boot a real Debian guest (systemd as PID 1) under QEMU through
# `credbridge run` and check, inside the guest, that every credential in
# /run/credentials/@system/ equals the host's bytes (size + sha256, and the
# bytes themselves for small values).
#
#   tests/e2e/credbridge-e2e.sh [--release bookworm|trixie]... [--credbridge PATH]
#                               [--runner credbridge|plain]
#
# Default: both releases (Debian 12 / systemd 252 and Debian 13 / systemd 257).
# Builds or reuses the cached guests (build-guest.sh; needs root the first time).
# Credentials are made the way a unit gets them: `systemd-creds encrypt`, then
# `systemd-creds decrypt` into a credentials directory (with a throwaway host
# key through SYSTEMD_CREDENTIAL_SECRET), handed to credbridge as
# $CREDENTIALS_DIRECTORY.  credbridge runs with `--ready booted` and a
# NOTIFY_SOCKET this script owns; the guest reports on its serial console.
#
# Boots per release:
#   cases   ascii, allbytes (0x00-0xff), special (, " [ ] = newlines), and a
#           255-byte name, all in one boot
#   budget  one credential whose type 11 entry is exactly the 4096-byte default
#           budget (arrives whole); one byte more is refused before start
#   4k      --smbios-budget 8192, 'big' (5000 bytes) then 'tail': systemd >= 257
#           imports both whole, systemd < 257 reads 4096 bytes of the entry, so
#           'big' is cut or missing and 'tail' is missing
#
# --runner plain passes the same strings to QEMU directly (-smbios
# type=11,path=) without credbridge: for telling guest problems from
# credbridge problems.
# Prints one PASS/FAIL line per check and the wall time; exits 1 on any failure.
set -uo pipefail
export E2E_PROG=credbridge-e2e.sh
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T_START=$(date +%s.%N)

RELEASES=() CREDBRIDGE="" RUNNER=credbridge BOOT_TIMEOUT=240
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASES+=("$2"); shift 2 ;;
        --credbridge) CREDBRIDGE="$2"; shift 2 ;;
        --runner) RUNNER="$2"; shift 2 ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
done
[ ${#RELEASES[@]} -gt 0 ] || RELEASES=(bookworm trixie)
for r in "${RELEASES[@]}"; do e2e_check_release "$r"; done
case "$RUNNER" in credbridge|plain) ;; *) e2e_die "--runner credbridge|plain" ;; esac
need_packages "$E2E_PROG" qemu-system-x86_64=qemu-system-x86 systemd-creds=systemd \
    python3=python3-minimal sha256sum=coreutils perl=perl-base || exit

ROOT_DIR="$(cd "$E2E_DIR/../.." && pwd)"
if [ "$RUNNER" = credbridge ] && [ -z "$CREDBRIDGE" ]; then
    (cd "$ROOT_DIR" && cargo build --quiet --bin credbridge) || e2e_die "cargo build failed"
    CREDBRIDGE="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/debug/credbridge"
fi
if [ "$RUNNER" = credbridge ]; then
    [ -x "$CREDBRIDGE" ] || e2e_die "no credbridge binary at $CREDBRIDGE"
fi

PASS=0 FAIL=0
pass() { echo "PASS: $*"; PASS=$((PASS + 1)); }
fail() { echo "FAIL: $*"; FAIL=$((FAIL + 1)); }
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

W="$(mktemp -d /tmp/credbridge-e2e.XXXXXX)"
NOTIFY_PID=""
cleanup() {
    if [ -n "$NOTIFY_PID" ]; then kill "$NOTIFY_PID" 2>/dev/null; wait "$NOTIFY_PID" 2>/dev/null; fi
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- notify socket
# A datagram listener standing in for systemd: one line per message.
NOTIFY_SOCKET_PATH="$W/notify.sock"
NOTIFY_LOG="$W/notify.log"
: >"$NOTIFY_LOG"
python3 - "$NOTIFY_SOCKET_PATH" "$NOTIFY_LOG" <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "ab", buffering=0) as f:
    while True:
        f.write(s.recv(65536).replace(b"\n", b" ") + b"\n")
EOF
NOTIFY_PID=$!
for _ in $(seq 50); do [ -S "$NOTIFY_SOCKET_PATH" ] && break; sleep 0.1; done
[ -S "$NOTIFY_SOCKET_PATH" ] || e2e_die "notify listener did not start"

# ---------------------------------------------------------------- credentials
# $W/exp/<set>/<name>: the bytes the guest must end up with.
# $W/creds/<set>/<name>: the decrypted credential, as systemd hands it to a unit.
export SYSTEMD_CREDENTIAL_SECRET="$W/host.secret"
mkcred() { # set name file-with-value
    local set="$1" name="$2" src="$3"
    mkdir -p "$W/exp/$set" "$W/creds/$set" "$W/enc"
    chmod 0700 "$W/creds/$set"
    cp "$src" "$W/exp/$set/$name"
    if ! systemd-creds encrypt --with-key=host --name="$name" "$src" "$W/enc/$set.cred" >/dev/null 2>"$W/creds.err" \
            || ! systemd-creds decrypt --name="$name" "$W/enc/$set.cred" "$W/creds/$set/$name" 2>>"$W/creds.err"; then
        cat "$W/creds.err" >&2
        e2e_die "systemd-creds failed for $set/$name"
    fi
    rm -f "$W/enc/$set.cred"
}
V="$W/values"; mkdir -p "$V"

printf 'Hello world: plain ASCII 0123456789 ~!@#$%%^&*()_+{}|;<>?' >"$V/ascii"
mkcred cases ascii "$V/ascii"
perl -e 'print map { chr } 0 .. 255' >"$V/allbytes"
mkcred cases allbytes "$V/allbytes"
printf 'a,b "double quoted" [bracket] [x]=y\nsecond line, with comma\n\n=last=line=\n' >"$V/special"
mkcred cases special "$V/special"
NAME255="$(printf 'n%.0s' $(seq 1 100))$(printf 'x.%.0s' $(seq 1 60))$(printf '_-%.0s' $(seq 1 40))"
NAME255="${NAME255:0:255}"
[ ${#NAME255} = 255 ] || e2e_die "bad name length"
printf 'a name at the 255-byte limit' >"$V/name255"
mkcred cases "$NAME255" "$V/name255"
CASES=(ascii allbytes special "$NAME255")

# Plain form: 'io.systemd.credential:' (22) + name + '=' + value; the entry is
# 5 (header) + string + NUL + NUL.  'nearbudget' (10): value 4056 -> entry 4096.
BUDGET_NAME=nearbudget
near_value() { perl -e 'my $n = shift; my $s = ""; $s .= sprintf("%05d-budget|", $_) for 0 .. $n / 13 + 1; print substr($s, 0, $n)' "$1"; }
near_value 4056 >"$V/near"
mkcred budget "$BUDGET_NAME" "$V/near"
near_value 4057 >"$V/over"
mkcred over "$BUDGET_NAME" "$V/over"

perl -e 'my $s = ""; $s .= sprintf("%04d:0123456789abcdef|", $_) for 0 .. 500; print substr($s, 0, 4997), "END"' >"$V/big"
mkcred 4k big "$V/big"
printf 'still-here' >"$V/after"
mkcred 4k tail "$V/after"

# ---------------------------------------------------------------- runners
# Plain runner: the strings credbridge would make, as path= files.
plain_smbios_args() { # creds-dir -> fills SMBIOS_ARGS
    local dir="$1" f name out
    SMBIOS_ARGS=()
    mkdir -p "$W/plain"
    while IFS= read -r -d '' f; do
        name="${f##*/}"
        out="$W/plain/$(printf '%s' "$name" | sha256sum | cut -c1-16)"
        python3 - "$f" "$name" "$out" <<'EOF'
import base64, sys
v = open(sys.argv[1], "rb").read()
name = sys.argv[2]
try:
    plain = b"\0" not in v and v.decode("utf-8") is not None
except UnicodeDecodeError:
    plain = False
s = (b"io.systemd.credential:" + name.encode() + b"=" + v) if plain else \
    (b"io.systemd.credential.binary:" + name.encode() + b"=" + base64.b64encode(v))
open(sys.argv[3], "wb").write(s)
EOF
        SMBIOS_ARGS+=(-smbios "type=11,path=$out")
    done < <(find "$dir" -mindepth 1 -maxdepth 1 -type f -print0 | LC_ALL=C sort -z)
}

# boot RELEASE SET LABEL [credbridge flags...]: runs the guest, sets REPORT (file),
# RC (exit status of credbridge or QEMU), BOOT_SECS; the serial log is $W/serial.
boot() {
    local r="$1" set="$2" label="$3"; shift 3
    local t0 serial="$W/serial-$r-$label" args
    REPORT="$W/report-$r-$label"
    : >"$serial"; : >"$REPORT"; : >"$NOTIFY_LOG"
    mapfile -t args < <("$E2E_DIR/guest-args.sh" --release "$r" --serial "file:$serial")
    [ ${#args[@]} -gt 0 ] || { RC=99; return; }
    t0=$(date +%s.%N)
    if [ "$RUNNER" = credbridge ]; then
        CREDENTIALS_DIRECTORY="$W/creds/$set" NOTIFY_SOCKET="$NOTIFY_SOCKET_PATH" \
            timeout --kill-after=10 "$BOOT_TIMEOUT" \
            "$CREDBRIDGE" run --ready booted "$@" -- qemu-system-x86_64 "${args[@]}" \
            </dev/null >"$W/run.out" 2>"$W/run.err" &
        local tpid=$!
        # QEMU's command line as every local user sees it (timeout -> credbridge -> QEMU).
        CMDLINE="$W/cmdline-$r-$label"
        e2e_child_cmdline "$tpid" "$CMDLINE"
        wait "$tpid"
        RC=$?
    else
        plain_smbios_args "$W/creds/$set"
        timeout --kill-after=10 "$BOOT_TIMEOUT" qemu-system-x86_64 "${args[@]}" "${SMBIOS_ARGS[@]}" \
            </dev/null >"$W/run.out" 2>"$W/run.err"
        RC=$?
    fi
    BOOT_SECS=$(secs_since "$t0")
    e2e_report "$serial" >"$REPORT" || true
    if [ ! -s "$REPORT" ]; then
        echo "# $r/$label: no report (exit $RC); serial tail:" >&2
        tr -d '\r' <"$serial" | tail -15 >&2
        echo "# runner stderr:" >&2
        tail -15 "$W/run.err" >&2
    fi
}

check_run() { # release label: credbridge's exit status and READY=1
    local r="$1" label="$2"
    if [ "$RC" = 0 ]; then
        pass "$r/$label: guest reported in ${BOOT_SECS}s, $RUNNER exited 0"
    else
        fail "$r/$label: $RUNNER exited $RC after ${BOOT_SECS}s"
        tail -5 "$W/run.err" >&2
    fi
    if [ "$RUNNER" = credbridge ]; then
        if grep -Eq '(^| )READY=1( |$)' "$NOTIFY_LOG"; then
            pass "$r/$label: READY=1 sent ($(grep -E '(^| )READY=1( |$)' "$NOTIFY_LOG" | grep -o 'STATUS=.*' | head -1 | cut -c1-60))"
        else
            fail "$r/$label: no READY=1 on the notify socket"
        fi
    fi
}

# ---------------------------------------------------------------- run
for r in "${RELEASES[@]}"; do
    tr0=$(date +%s.%N)
    if ! "$E2E_DIR/build-guest.sh" --release "$r" 2>"$W/build.err"; then
        tail -20 "$W/build.err" >&2
        fail "$r: guest build"
        continue
    fi
    echo "# $r: guest ready after $(secs_since "$tr0")s ($(grep -E '^(systemd|kernel)=' "$E2E_CACHE/$r/info" | tr '\n' ' '))"

    # 1. every kind of byte and name
    boot "$r" cases cases
    check_run "$r" cases
    ver="$(sed -n 's/^SYSTEMD systemd \([0-9]*\).*/\1/p' "$REPORT")"
    echo "# $r: guest systemd ${ver:-?}, $(grep '^DMI11 ' "$REPORT" | cut -d' ' -f2- | tr '\n' ';')"
    for n in "${CASES[@]}"; do e2e_check_cred "$r" "$REPORT" "$n" "$W/exp/cases/$n"; done
    if [ "$RUNNER" = credbridge ]; then
        if ! grep -q 'path=/dev/fd/' "$CMDLINE"; then
            fail "$r: QEMU's command line was not seen or has no path=/dev/fd/ ($(wc -l <"$CMDLINE") arguments)"
        elif grep -qF -e 'plain ASCII 0123456789' -e 'double quoted' -e "$(base64 -w0 <"$V/allbytes" | cut -c1-40)" \
                -e 'io.systemd.credential' "$CMDLINE"; then
            fail "$r: a credential value is on QEMU's command line"
        else
            pass "$r: QEMU's command line has $(grep -c 'path=/dev/fd/' "$CMDLINE") path=/dev/fd/N strings and no value"
        fi
    fi
    count="$(sed -n 's/^COUNT //p' "$REPORT")"
    if [ "$count" = "${#CASES[@]}" ]; then
        pass "$r: exactly ${#CASES[@]} credentials imported"
    else
        fail "$r: ${count:-no} credentials imported, want ${#CASES[@]}"
    fi

    # 2. the default budget, at and one byte above (pinned to SMBIOS: under --channel auto a
    #    credential over the budget goes over fw_cfg instead, which fwcfg-e2e.sh checks)
    boot "$r" budget budget
    check_run "$r" budget
    e2e_check_cred "$r" "$REPORT" "$BUDGET_NAME" "$W/exp/budget/$BUDGET_NAME"
    entry="$(sed -n 's/^DMI11 11-0 .*rawbytes=\([0-9]*\).*/\1/p' "$REPORT")"
    if [ "$entry" = 4096 ]; then pass "$r: the type 11 entry is exactly 4096 bytes"; else fail "$r: type 11 entry is ${entry:-?} bytes, want 4096"; fi
    if [ "$RUNNER" = credbridge ]; then
        CREDENTIALS_DIRECTORY="$W/creds/over" NOTIFY_SOCKET="$NOTIFY_SOCKET_PATH" timeout 30 \
            "$CREDBRIDGE" run --channel smbios -- qemu-system-x86_64 -machine none </dev/null >/dev/null 2>"$W/over.err"
        orc=$?
        if [ "$orc" = 125 ] && grep -q 'smbios-budget' "$W/over.err"; then
            pass "$r: one byte over the budget is refused before start (exit 125)"
        else
            fail "$r: one byte over the budget: exit $orc, $(head -1 "$W/over.err")"
        fi
    fi

    # 3. the 4 KiB difference between systemd < 257 and >= 257
    boot "$r" 4k 4k --smbios-budget 8192
    check_run "$r" 4k
    e2e_judge_4k "$r" "$REPORT" big tail "$W/exp/4k"
    echo "# $r: done in $(secs_since "$tr0")s"
done

echo "$PASS passed, $FAIL failed; wall time $(secs_since "$T_START")s (runner: $RUNNER)"
[ "$FAIL" = 0 ]
