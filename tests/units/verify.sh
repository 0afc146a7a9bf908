#!/usr/bin/env bash
# tests/units/verify.sh [CREDBRIDGE_BINARY]
#
# Runs `systemd-analyze verify` on every unit in units/, each in a throw-away
# root (--root=) that holds the units, the host's own system units (for
# sysinit.target & co.), credbridge at its ExecStart path and, for the
# microvm@ drop-in, a stub of microvm.nix's template (tests/units/fixtures).
# Template units are verified as instances (credbridge-example@demo.service).
#
# Fails on any line systemd-analyze prints, not only on its exit status:
# unknown keys, bad values and the like are warnings it exits 0 on.
#
# CREDBRIDGE_BINARY defaults to target/release/credbridge, then
# target/debug/credbridge, then /bin/true (systemd-analyze only checks that
# the ExecStart path is an executable file).
#
# Needs (Debian packages): systemd (systemd-analyze; written against 252),
# coreutils. Installs nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
fixtures=$here/fixtures

binary=${1:-}
if [[ -z $binary ]]; then
    for c in "$repo/target/release/credbridge" "$repo/target/debug/credbridge" /bin/true; do
        if [[ -x $c ]]; then binary=$c; break; fi
    done
fi
[[ -x $binary ]] || { echo "verify.sh: not an executable: $binary" >&2; exit 2; }

command -v systemd-analyze >/dev/null || {
    echo "verify.sh: systemd-analyze not found (Debian package: systemd)" >&2
    exit 2
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck source=root.sh
. "$here/root.sh"

failed=0
# check NAME ROOT UNIT...: verify, print everything, fail on any output.
check() {
    local name=$1 root=$2
    shift 2
    local out rc=0
    out=$(systemd-analyze verify --root="$root" "$@" 2>&1) || rc=$?
    echo "== $name: systemd-analyze verify $*"
    if [[ -n $out ]]; then
        printf '%s\n' "$out"
    else
        echo "(no output)"
    fi
    if [[ $rc -ne 0 || -n $out ]]; then
        echo "FAIL: $name (exit $rc, $(printf '%s' "$out" | grep -c '') line(s) of output)"
        failed=$((failed + 1))
    else
        echo "ok: $name"
    fi
}

# 1. The standalone pair. The socket is verified together with its service,
#    because Service= must name a unit that loads.
root=$work/example
new_root "$root"
cp "$repo/units/credbridge-example@.service" "$repo/units/credbridge-example@.socket" \
    "$root/etc/systemd/system/"
check credbridge-example "$root" credbridge-example@demo.service credbridge-example@demo.socket

# 2. The microvm@ drop-in, installed per VM as units/microvm@.service.d/ says,
#    on top of the stub template.
root=$work/microvm-instance
new_root "$root"
cp "$fixtures"/microvm*@.service "$root/etc/systemd/system/"
mkdir -p "$root/etc/systemd/system/microvm@demo.service.d"
cp "$repo/units/microvm@.service.d/credbridge.conf" "$root/etc/systemd/system/microvm@demo.service.d/"
check "microvm@.service.d/credbridge.conf (as microvm@demo.service.d)" "$root" microvm@demo.service

# 2b. Canary: the harness really reads the drop-in on top of the template.
#     Without its `ExecStart=` reset, systemd must refuse the unit (two
#     ExecStart= in a non-oneshot service); if it does not, the checks above
#     proved nothing.
root=$work/canary
new_root "$root"
cp "$fixtures"/microvm*@.service "$root/etc/systemd/system/"
mkdir -p "$root/etc/systemd/system/microvm@demo.service.d"
grep -v '^ExecStart=$' "$repo/units/microvm@.service.d/credbridge.conf" \
    >"$root/etc/systemd/system/microvm@demo.service.d/credbridge.conf"
echo "== canary: drop-in without its ExecStart= reset must be refused"
if canary=$(systemd-analyze verify --root="$root" microvm@demo.service 2>&1) ||
    ! grep -q 'more than one ExecStart=' <<<"$canary"; then
    printf '%s\n' "$canary"
    echo "FAIL: canary: systemd-analyze did not see the drop-in"
    failed=$((failed + 1))
else
    printf '%s\n' "$canary" | sed 's/^/  (expected) /'
    echo "ok: canary"
fi

# 3. The same file where it sits in the repository: for every instance.
root=$work/microvm-template
new_root "$root"
cp "$fixtures"/microvm*@.service "$root/etc/systemd/system/"
mkdir -p "$root/etc/systemd/system/microvm@.service.d"
cp "$repo/units/microvm@.service.d/credbridge.conf" "$root/etc/systemd/system/microvm@.service.d/"
check "microvm@.service.d/credbridge.conf (as microvm@.service.d)" "$root" microvm@demo.service

# 4. Every other unit file under units/ (added later): verified as an instance
#    named demo if it is a template, alone otherwise.
while IFS= read -r -d '' f; do
    base=${f##*/}
    case $base in
        credbridge-example@.service | credbridge-example@.socket) continue ;;
    esac
    root=$work/other-$base
    new_root "$root"
    cp "$f" "$root/etc/systemd/system/"
    unit=$base
    [[ $base == *@.* ]] && unit=${base/@./@demo.}
    check "$base" "$root" "$unit"
done < <(find "$repo/units" -maxdepth 1 -type f \( -name '*.service' -o -name '*.socket' \
    -o -name '*.target' -o -name '*.path' -o -name '*.timer' \) -print0)

if [[ $failed -ne 0 ]]; then
    echo "verify.sh: $failed unit check(s) failed"
    exit 1
fi
echo "verify.sh: all unit checks passed"
