#!/usr/bin/env bash
# tests/nixos/check.sh [--update]
#
# Offline checks of nixos/, flake.nix and the example in README.md,
# without nixpkgs:
#   1. `nix-instantiate --parse` on every .nix file of the repository.
#   2. Evaluates nixos/module.nix for tests/nixos/example-host.nix with a stub
#      of the NixOS module system and lib (tests/nixos/stub/), renders what it
#      generates (tests/nixos/render.nix) and compares the result with
#      tests/nixos/rendered/ (--update rewrites that directory instead).
#   3. Every case of tests/nixos/cases.nix: the assertion messages, warnings
#      and errors the module must produce.
#   4. `systemd-analyze verify` of the rendered drop-in on top of a stub of
#      microvm.nix's microvm@.service template (tests/units/fixtures), failing
#      on any output line.
#   5. Runs the rendered cloud-hypervisor wrapper against a fake credbridge and
#      checks the argv credbridge would get, quoting included.
#   6. The example block in README.md is example-host.nix, verbatim,
#      and every nix block there parses.
# With NIXPKGS_LIB=/path/to/nixpkgs/lib (a local copy; nothing is fetched),
# steps 2 and 3 run again with the real module system (tests/nixos/real-eval.nix)
# and must give the same output as the stub.
#
# Evaluation runs with --readonly-mode: anything that would copy a file into
# the Nix store (a secret given as a path literal, say) fails the check.
#
# Needs (Debian packages): nix-bin (nix-instantiate; written against 2.8),
# systemd (systemd-analyze, 252), jq, coreutils, diffutils. Installs nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
update=no
[[ ${1:-} == --update ]] && update=yes

for tool in nix-instantiate systemd-analyze jq diff; do
    command -v "$tool" >/dev/null || {
        echo "check.sh: $tool not found (Debian packages: nix-bin, systemd, jq, diffutils)" >&2
        exit 2
    }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export NIX_PATH=
failed=0
fail() {
    echo "FAIL: $*"
    failed=$((failed + 1))
}

# nix_eval EXPR: strict JSON evaluation inside the repository.
nix_eval() {
    (cd "$repo" && nix-instantiate --readonly-mode --eval --strict --json -E "$1")
}

echo "== 1. nix-instantiate --parse"
while IFS= read -r -d '' f; do
    if out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
        echo "ok: ${f#"$repo"/}"
    else
        printf '%s\n' "$out"
        fail "parse ${f#"$repo"/}"
    fi
done < <(
    # Tracked and new files, not git-ignored ones (target/, tests/e2e/.cache
    # with its guest root trees).
    if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$repo" ls-files -z -co --exclude-standard --full-name -- '*.nix' |
            while IFS= read -r -d '' f; do [[ -f $repo/$f ]] && printf '%s\0' "$repo/$f"; done
    else
        find "$repo" \( -path "$repo/target" -o -path "$repo/.git" -o -path "$repo/tests/e2e/.cache" \) -prune \
            -o -name '*.nix' -type f -print0
    fi | sort -z
)

evaluators=(stub)
if [[ -n ${NIXPKGS_LIB:-} ]]; then
    [[ -f $NIXPKGS_LIB/default.nix ]] || { echo "check.sh: NIXPKGS_LIB=$NIXPKGS_LIB has no default.nix" >&2; exit 2; }
    evaluators+=(real)
fi

# evaluated_expr EVALUATOR HOST_EXPR
evaluated_expr() {
    case $1 in
        stub) echo "import ./tests/nixos/stub/eval.nix { host = $2; }" ;;
        real) echo "import ./tests/nixos/real-eval.nix { host = $2; nixpkgsLib = $(realpath "$NIXPKGS_LIB"); }" ;;
    esac
}

echo "== 2. render the example host"
for ev in "${evaluators[@]}"; do
    if ! nix_eval "import ./tests/nixos/render.nix { evaluated = $(evaluated_expr "$ev" ./tests/nixos/example-host.nix); }" \
        >"$work/render-$ev.json" 2>"$work/render-$ev.err"; then
        cat "$work/render-$ev.err"
        fail "evaluate example-host.nix ($ev)"
    fi
done
if [[ -s $work/render-stub.json ]]; then
    jq . "$work/render-stub.json"
    if [[ $(jq -c '.failedAssertions' "$work/render-stub.json") != "[]" ]]; then
        fail "example-host.nix fails assertions"
    fi
    mkdir -p "$work/rendered"
    while IFS= read -r path; do
        mkdir -p "$work/rendered/$(dirname "$path")"
        jq -j --arg p "$path" '.files[$p]' "$work/render-stub.json" >"$work/rendered/$path"
    done < <(jq -r '.files | keys[]' "$work/render-stub.json")
    if [[ $update == yes ]]; then
        rm -rf "$here/rendered"
        cp -r "$work/rendered" "$here/rendered"
        echo "updated tests/nixos/rendered/"
    elif diff -ru "$here/rendered" "$work/rendered"; then
        echo "ok: tests/nixos/rendered/ is what the module generates"
    else
        fail "tests/nixos/rendered/ is stale (run tests/nixos/check.sh --update and review the diff)"
    fi
fi
if [[ -n ${NIXPKGS_LIB:-} && -s $work/render-real.json ]]; then
    if diff <(jq -S . "$work/render-stub.json") <(jq -S . "$work/render-real.json"); then
        echo "ok: the real module system renders the same"
    else
        fail "stub and real module system disagree"
    fi
fi

echo "== 3. cases (tests/nixos/cases.nix)"
mapfile -t cases < <(nix_eval 'builtins.attrNames (import ./tests/nixos/cases.nix)' | jq -r '.[]')
for ev in "${evaluators[@]}"; do
    for c in "${cases[@]}"; do
        out=$(nix_eval "import ./tests/nixos/render.nix { evaluated = $(evaluated_expr "$ev" "(import ./tests/nixos/cases.nix).\"$c\".host"); }" 2>&1 || true)
        missing=0
        while IFS= read -r want; do
            if ! grep -qF -- "$want" <<<"$out"; then
                [[ $missing -eq 0 ]] && printf '%s\n' "$out" | head -c 3000 && echo
                echo "   missing: $want"
                missing=1
            fi
        done < <(nix_eval "(import ./tests/nixos/cases.nix).\"$c\".expect" | jq -r '.[]')
        if [[ $missing -eq 0 ]]; then echo "ok: $c ($ev)"; else fail "case $c ($ev)"; fi
    done
done

echo "== 4. systemd-analyze verify of the rendered drop-in"
if [[ -f $work/rendered/microvm@myvm.service.d/overrides.conf ]]; then
    # shellcheck source=../units/root.sh
    binary=/bin/true
    . "$repo/tests/units/root.sh"
    root=$work/root
    new_root "$root"
    cp "$repo"/tests/units/fixtures/microvm*@.service "$root/etc/systemd/system/"
    mkdir -p "$root/etc/systemd/system/microvm@myvm.service.d"
    cp "$work/rendered/microvm@myvm.service.d/overrides.conf" "$root/etc/systemd/system/microvm@myvm.service.d/"
    out=$(systemd-analyze verify --root="$root" microvm@myvm.service 2>&1) && rc=0 || rc=$?
    echo "systemd-analyze verify microvm@myvm.service:"
    if [[ -n $out ]]; then printf '%s\n' "$out"; else echo "(no output)"; fi
    if [[ $rc -ne 0 || -n $out ]]; then fail "systemd-analyze verify (exit $rc)"; else echo "ok: verify"; fi
    # The drop-in must really take effect: the merged unit, as systemd sees it.
    merged=$(cat "$root/etc/systemd/system/microvm@.service" "$root/etc/systemd/system/microvm@myvm.service.d/overrides.conf")
    for want in 'Type=notify' 'NotifyAccess=main' 'KillMode=mixed' 'LoadCredentialEncrypted=api-key:myvm.api-key'; do
        grep -qx -- "$want" <<<"$merged" || fail "merged unit lacks $want"
    done
else
    fail "no rendered drop-in to verify"
fi

echo "== 5. the wrapper's argv"
if [[ -f $work/rendered/myvm/cloud-hypervisor ]]; then
    fake=$work/fake
    mkdir -p "$fake"
    # shellcheck disable=SC2016 # the fake's own $@ and $a
    printf '#!/bin/sh\nfor a in "$@"; do printf "%%s\\n" "$a"; done\n' >"$fake/credbridge"
    chmod +x "$fake/credbridge"
    store=$(nix_eval 'builtins.storeDir' | jq -r .)
    # Point the wrapper's credbridge at the fake; leave everything else as is.
    { echo '#!/bin/bash'; sed -E "s#$store/[^ ]*-credbridge-[^/ ]*/bin/credbridge#$fake/credbridge#" \
        "$work/rendered/myvm/cloud-hypervisor"; } >"$work/wrapper"
    chmod +x "$work/wrapper"
    got=$("$work/wrapper" --cpus boot=2 --cmdline 'console=ttyS0 reboot=t' --platform 'oem_strings=[a,b]' "it's")
    expected=$(printf '%s\n' run --hypervisor cloud-hypervisor --argv0 microvm@myvm --delivery api \
        --ready guest --smbios-budget 4096 --stop-timeout 30 --ready-timeout 120 --vsock-cid 42 \
        --credential api-key --credential tls-key=nginx.key -- \
        "$store/00000000000000000000000000000000-cloud-hypervisor-48.0/bin/cloud-hypervisor" \
        --cpus boot=2 --cmdline 'console=ttyS0 reboot=t' --platform 'oem_strings=[a,b]' "it's")
    if [[ $got == "$expected" ]]; then
        echo "ok: wrapper passes credbridge the expected argv"
    else
        diff <(printf '%s\n' "$expected") <(printf '%s\n' "$got") || true
        fail "wrapper argv"
    fi
else
    fail "no rendered wrapper"
fi

echo "== 6. README.md shows example-host.nix verbatim"
# The block is the ```nix fence right after the line naming the file.
block=$(awk '/<!-- begin: tests\/nixos\/example-host.nix -->/{on=1; next}
             on && /^```nix$/ {inblock=1; next}
             inblock && /^```$/ {exit}
             inblock {print}' "$repo/README.md")
if [[ -n $block ]] && diff <(printf '%s\n' "$block") "$here/example-host.nix"; then
    echo "ok: README example is tests/nixos/example-host.nix"
else
    fail "README.md's example differs from tests/nixos/example-host.nix (or is missing)"
fi

# Every other nix block of the README must at least parse.
n=0
while IFS= read -r -d '' snippet; do
    n=$((n + 1))
    if ! out=$(nix-instantiate --parse - <<<"$snippet" 2>&1 >/dev/null); then
        printf '%s\n%s\n' "$snippet" "$out"
        fail "README.md nix block $n does not parse"
    fi
done < <(awk '/^ *```nix$/ {on=1; buf=""; next}
             on && /^ *```$/ {on=0; printf "%s%c", buf, 0; next}
             on {buf = buf $0 "\n"}' "$repo/README.md")
echo "ok: $n nix blocks in README.md parse"

if [[ $failed -ne 0 ]]; then
    echo "check.sh: $failed check(s) failed"
    exit 1
fi
echo "check.sh: all checks passed (evaluators: ${evaluators[*]})"
