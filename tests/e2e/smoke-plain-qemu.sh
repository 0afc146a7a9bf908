#!/bin/bash
# Smoke test of the e2e guest with plain QEMU (no credbridge): pass credentials
# as SMBIOS type 11 strings and check that the guest's systemd imported
# exactly the host's bytes into /run/credentials/@system/.
#
#   tests/e2e/smoke-plain-qemu.sh [--release bookworm|trixie]... [--no-4k]
#
# Default release: bookworm.  Builds the guest if needed (build-guest.sh).
# Prints one PASS/FAIL line per check and "N passed, N failed" at the end;
# exits 1 if anything failed.
#
# Boot 1 (all in one type 11 entry, well under 4 KiB):
#   ascii.path   plain ASCII, -smbios type=11,path=FILE
#   ascii.value  plain ASCII, -smbios type=11,value=STR
#   comma.value  value= with doubled commas (QEMU's escaping) and '='
#   allbytes     every byte 0x00-0xff, binary form (base64), path=
#   special      , " [ ] = and newlines (incl. a trailing one), plain form, path=
#   <255 bytes>  a name at the 255-byte limit
#   <256 bytes>  a name one byte over: must NOT be imported
#   fd.file      path=/dev/fd/7, an inherited fd on a regular file
#   fd.pipe      path=/dev/fd/8, an inherited fd on a pipe
# Boot 2 (the 4 KiB demonstration): one entry whose strings total > 4096
# bytes: 'big' (5000-byte value) then 'after'.  systemd < 257 reads only the
# first 4096 bytes of the entry: 'big' arrives cut (or not at all) and 'after'
# is lost; systemd >= 257 imports both whole.  The check expects the behaviour
# of the guest's systemd version.
set -uo pipefail
E2E_PROG=smoke-plain-qemu.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RELEASES=() FOURK=1
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASES+=("$2"); shift 2 ;;
        --no-4k) FOURK=0; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
done
[ ${#RELEASES[@]} -gt 0 ] || RELEASES=(bookworm)
for r in "${RELEASES[@]}"; do e2e_check_release "$r"; done

PASS=0 FAIL=0
pass() { echo "PASS: $*"; PASS=$((PASS + 1)); }
fail() { echo "FAIL: $*"; FAIL=$((FAIL + 1)); }

W="$(mktemp -d /tmp/credbridge-e2e-smoke.XXXXXX)"
trap 'rm -rf "$W"' EXIT
trap 'exit 130' INT TERM HUP

# ---------------------------------------------------------------- inputs
# $W/exp/<name> holds the bytes the guest must end up with.
mkdir -p "$W/exp" "$W/in"
expect() { printf '%s' "$2" >"$W/exp/$1"; }

expect ascii.path 'Hello world: plain ASCII 0123456789 ~!@#$%^&*()_+{}|;<>?'
printf 'io.systemd.credential:ascii.path=%s' "$(cat "$W/exp/ascii.path")" >"$W/in/ascii.path"

expect ascii.value 'plain ASCII via value= with spaces'
expect comma.value 'a,b,c=d'

perl -e 'print map { chr } 0 .. 255' >"$W/exp/allbytes"
printf 'io.systemd.credential.binary:allbytes=%s' "$(base64 -w0 <"$W/exp/allbytes")" >"$W/in/allbytes"

printf 'a,b "double quoted" [bracket] [x]=y\nsecond line, with comma\n\n=last=line=\n' >"$W/exp/special"
{ printf 'io.systemd.credential:special='; cat "$W/exp/special"; } >"$W/in/special"

NAME255="$(printf 'N%.0s' $(seq 1 127))$(printf 'x.%.0s' $(seq 1 63))$(printf '_-%.0s' $(seq 1 32))"
NAME255="${NAME255:0:255}"
NAME256="${NAME255}Z"
if [ ${#NAME255} != 255 ] || [ ${#NAME256} != 256 ]; then e2e_die "bad name lengths"; fi
expect "$NAME255" 'name at the 255-byte limit'
printf 'io.systemd.credential:%s=%s' "$NAME255" 'name at the 255-byte limit' >"$W/in/name255"
printf 'io.systemd.credential:%s=%s' "$NAME256" 'must not be imported' >"$W/in/name256"

for f in "$W"/in/*; do
    if [ "$(tr -d '\000' <"$f" | wc -c)" != "$(wc -c <"$f")" ]; then e2e_die "$f contains NUL (QEMU refuses that)"; fi
done

# credbridge's QEMU backend passes each string as path=/dev/fd/N: an inherited
# fd on a regular file (fd 7) and on a pipe (fd 8).
expect fd.file 'via path=/dev/fd/7, a regular file'
printf 'io.systemd.credential:fd.file=%s' "$(cat "$W/exp/fd.file")" >"$W/in/fd.file"
expect fd.pipe 'via path=/dev/fd/8, a pipe'
printf 'io.systemd.credential:fd.pipe=%s' "$(cat "$W/exp/fd.pipe")" >"$W/in/fd.pipe"
open_fds() { # fresh per boot: a pipe is drained by the first reader
    exec 7<"$W/in/fd.file"
    exec 8< <(cat "$W/in/fd.pipe")
}

BOOT1=(-smbios "type=11,path=$W/in/ascii.path"
       -smbios "type=11,value=io.systemd.credential:ascii.value=$(cat "$W/exp/ascii.value")"
       -smbios "type=11,value=io.systemd.credential:comma.value=a,,b,,c=d"
       -smbios "type=11,path=$W/in/allbytes"
       -smbios "type=11,path=$W/in/special"
       -smbios "type=11,path=$W/in/name255"
       -smbios "type=11,path=$W/in/name256"
       -smbios "type=11,path=/dev/fd/7"
       -smbios "type=11,path=/dev/fd/8")
BOOT1_NAMES=(ascii.path ascii.value comma.value allbytes special "$NAME255" fd.file fd.pipe)

# 4 KiB demonstration
mkdir -p "$W/exp4"
perl -e 'my $s = ""; $s .= sprintf("%04d:0123456789abcdef|", $_) for 0 .. 500; print substr($s, 0, 4997), "END"' >"$W/exp4/big"
printf 'io.systemd.credential:big=' >"$W/in/big"; cat "$W/exp4/big" >>"$W/in/big"
printf 'still-here' >"$W/exp4/after"
BOOT2=(-smbios "type=11,path=$W/in/big" -smbios "type=11,value=io.systemd.credential:after=still-here")

# ---------------------------------------------------------------- helpers

boot() { # release report-file qemu-args...
    local r="$1" rep="$2"; shift 2
    local t0 t1
    t0=$(date +%s.%N)
    "$E2E_DIR/boot-guest.sh" --release "$r" --log "$W/serial-$r.log" -- "$@" >"$rep" 2>"$W/boot.err"
    local rc=$?
    t1=$(date +%s.%N)
    BOOT_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    grep -v '^build-guest' "$W/boot.err" >&2 || true
    return $rc
}

# ---------------------------------------------------------------- run
for r in "${RELEASES[@]}"; do
    tb=$(date +%s.%N)
    if ! "$E2E_DIR/build-guest.sh" --release "$r"; then
        fail "$r: guest build"
        continue
    fi
    echo "# $r: guest ready after $(awk -v a="$tb" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s ($(tr '\n' ' ' <"$E2E_CACHE/$r/info" | sed 's/mirror=[^ ]* //'))"

    rep="$W/report-$r-1"
    open_fds
    if ! boot "$r" "$rep" "${BOOT1[@]}"; then
        fail "$r: boot 1 gave no report"
        continue
    fi
    pass "$r: boot 1 reported in ${BOOT_SECS}s ($(sed -n 's/^SYSTEMD //p' "$rep"), $(sed -n 's/^KERNEL //p' "$rep"))"
    for n in "${BOOT1_NAMES[@]}"; do e2e_check_cred "$r" "$rep" "$n" "$W/exp/$n"; done
    if find_cred "$rep" "$NAME256"; then
        fail "$r: 256-byte name was imported"
    else
        pass "$r: 256-byte name rejected"
    fi
    count="$(sed -n 's/^COUNT //p' "$rep")"
    if [ "$count" = "${#BOOT1_NAMES[@]}" ]; then
        pass "$r: exactly ${#BOOT1_NAMES[@]} credentials imported"
    else
        fail "$r: $count credentials imported, want ${#BOOT1_NAMES[@]}"
        grep '^CRED' "$rep" | cut -c1-200 >&2
    fi

    [ "$FOURK" = 1 ] || continue
    rep="$W/report-$r-2"
    if ! boot "$r" "$rep" "${BOOT2[@]}"; then
        fail "$r: boot 2 (4 KiB) gave no report"
        continue
    fi
    entries="$(grep '^DMI11 ' "$rep" | cut -d' ' -f2- | tr '\n' ';')"
    e2e_judge_4k "$r" "$rep" big after "$W/exp4" "entries: $entries"
done

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
