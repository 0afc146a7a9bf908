#!/usr/bin/env bash
# tests/nixos/check.sh [--update]
#
# Offline checks of nixos/, flake.nix and the examples in README.md and docs/,
# without nixpkgs:
#   1. `nix-instantiate --parse` on every .nix file of the repository.
#   2. Evaluates nixos/module.nix for tests/nixos/example-host.nix with a stub
#      of the NixOS module system and lib (tests/nixos/stub/), renders what it
#      generates (tests/nixos/render.nix) and compares the result with
#      tests/nixos/rendered/ (--update rewrites that directory instead).
#   3. Every case of tests/nixos/cases.nix: the assertion messages, warnings
#      and errors the module must produce.
#   4. `systemd-analyze verify` of the rendered drop-ins on top of a stub of
#      microvm.nix's microvm@.service template (tests/units/fixtures), failing
#      on any output line.
#   5. Runs the rendered wrappers (cloud-hypervisor; QEMU with microvm.nix's
#      argv for the `microvm` machine and for q35; QEMU with taken-over
#      microvm.credentialFiles) against a fake credbridge and checks the argv
#      credbridge would get, quoting included.
#   6. README.md shows example-readme.nix (a case of cases.nix) and docs/nixos.md
#      example-host.nix, verbatim; every nix block of README.md and docs/ parses.
#   7. nixos/package.nix's source filter, on the repository's files, and its
#      man page: credbridge-man built, run and credbridge(1) installed.
#   8. flake.nix's lib.wrapCloudHypervisor and lib.wrapQemu (for VMs built
#      from a flake), with the stub nixpkgs.
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

# expect_eval WHAT EXPR WANT: EXPR evaluates to the JSON WANT (key order aside).
expect_eval() {
    local got
    if ! got=$(nix_eval "$2" 2>"$work/eval.err"); then
        cat "$work/eval.err"
        fail "evaluate $1"
    elif diff <(jq -S . <<<"$3") <(jq -S . <<<"$got"); then
        echo "ok: $1"
    else
        fail "$1"
    fi
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

echo "== 4. systemd-analyze verify of the rendered drop-ins"
# shellcheck source=../units/root.sh
binary=/bin/true
. "$repo/tests/units/root.sh"
for vm_cred in myvm:api-key:myvm.api-key qvm:db-password:qvm.db-password; do
    vm=${vm_cred%%:*}
    if [[ ! -f $work/rendered/microvm@$vm.service.d/overrides.conf ]]; then
        fail "no rendered drop-in for $vm to verify"
        continue
    fi
    root=$work/root-$vm
    new_root "$root"
    # new_root prepares microvm.nix's state directory for myvm; qvm's is the same.
    [[ -d $root/var/lib/microvms/$vm ]] || cp -a "$root/var/lib/microvms/myvm" "$root/var/lib/microvms/$vm"
    cp "$repo"/tests/units/fixtures/microvm*@.service "$root/etc/systemd/system/"
    mkdir -p "$root/etc/systemd/system/microvm@$vm.service.d"
    cp "$work/rendered/microvm@$vm.service.d/overrides.conf" "$root/etc/systemd/system/microvm@$vm.service.d/"
    out=$(systemd-analyze verify --root="$root" "microvm@$vm.service" 2>&1) && rc=0 || rc=$?
    echo "systemd-analyze verify microvm@$vm.service:"
    if [[ -n $out ]]; then printf '%s\n' "$out"; else echo "(no output)"; fi
    if [[ $rc -ne 0 || -n $out ]]; then fail "systemd-analyze verify $vm (exit $rc)"; else echo "ok: verify $vm"; fi
    # The drop-in must really take effect: the merged unit, as systemd sees it.
    merged=$(cat "$root/etc/systemd/system/microvm@.service" "$root/etc/systemd/system/microvm@$vm.service.d/overrides.conf")
    for want in 'Type=notify' 'NotifyAccess=main' 'KillMode=mixed' "LoadCredentialEncrypted=${vm_cred#*:}"; do
        grep -qx -- "$want" <<<"$merged" || fail "merged unit of $vm lacks $want"
    done
done

echo "== 5. the wrappers' argv"
store=$(nix_eval 'builtins.storeDir' | jq -r .)
fake=$work/fake
mkdir -p "$fake"
# shellcheck disable=SC2016 # the fake's own $@ and $a
printf '#!/bin/sh\nfor a in "$@"; do printf "%%s\\n" "$a"; done\n' >"$fake/credbridge"
chmod +x "$fake/credbridge"
# runnable WRAPPER_FILE: the rendered script as an executable, its credbridge
# pointed at the fake; everything else as it is.
runnable() {
    local out=$work/wrapper-${1//\//-}
    { echo '#!/bin/bash'; sed -E "s#$store/[^ ]*-credbridge-[^/ ]*/bin/credbridge#$fake/credbridge#" "$1"; } >"$out"
    chmod +x "$out"
    echo "$out"
}
# expect_argv NAME WRAPPER EXPECTED_LINES -- ARGV...
expect_argv() {
    local name=$1 wrapper=$2 expected=$3 got
    shift 4
    got=$("$wrapper" "$@" 2>&1) || true
    if [[ $got == "$expected" ]]; then
        echo "ok: $name"
    else
        diff <(printf '%s\n' "$expected") <(printf '%s\n' "$got") || true
        fail "$name"
    fi
}

if [[ -f $work/rendered/myvm/cloud-hypervisor ]]; then
    w=$(runnable "$work/rendered/myvm/cloud-hypervisor")
    expect_argv "cloud-hypervisor wrapper passes credbridge the expected argv" "$w" "$(printf '%s\n' \
        run --hypervisor cloud-hypervisor --argv0 microvm@myvm --delivery api \
        --ready guest --smbios-budget 4096 --stop-timeout 30 --ready-timeout 120 --vsock-cid 42 \
        --credential api-key --credential tls-key=nginx.key -- \
        "$store/00000000000000000000000000000000-cloud-hypervisor-48.0/bin/cloud-hypervisor" \
        --cpus boot=2 --cmdline 'console=ttyS0 reboot=t' --platform 'oem_strings=[a,b]' "it's")" -- \
        --cpus boot=2 --cmdline 'console=ttyS0 reboot=t' --platform 'oem_strings=[a,b]' "it's"
else
    fail "no rendered cloud-hypervisor wrapper"
fi

# The head of microvm.nix's QEMU argv (lib/runners/qemu.nix) for x86_64, on
# its default machine and on q35: the wrapper passes it on as it is, -M
# included, so credbridge sees the machine microvm.nix chose.
qemu_microvm=(-name qvm -M 'microvm,accel=kvm:tcg,acpi=on,mem-merge=on,pcie=off,pic=off,pit=off,rtc=on,usb=off'
    -m 512M -smp 1 -nodefaults -no-user-config -no-reboot -kernel /k -initrd /i
    -chardev 'stdio,id=stdio,signal=off' -device virtio-rng-device -serial chardev:stdio -enable-kvm
    -cpu 'host,+x2apic,-sgx' -device i8042 -append 'earlyprintk=ttyS0 console=ttyS0 reboot=t panic=-1 '
    -sandbox on -qmp 'unix:qvm.sock,server,nowait')
qemu_q35=(-name qvm -M 'q35,accel=kvm:tcg,acpi=on,mem-merge=on' -m 512M -smp 1 -nodefaults -no-user-config
    -no-reboot -kernel /k -initrd /i -device virtio-rng-pci -enable-kvm -qmp 'unix:qvm.sock,server,nowait')
qemu_head=(run --hypervisor qemu --argv0 microvm@qvm --ready booted --smbios-budget 4096 --stop-timeout 30)
qemu_bin=$store/00000000000000000000000000000000-qemu-host-cpu-only-10.1.0/bin/qemu-system-x86_64
if [[ -f $work/rendered/qvm/qemu-system-x86_64 ]]; then
    w=$(runnable "$work/rendered/qvm/qemu-system-x86_64")
    expect_argv "QEMU wrapper, machine microvm" "$w" \
        "$(printf '%s\n' "${qemu_head[@]}" --credential db-password -- "$qemu_bin" "${qemu_microvm[@]}")" -- "${qemu_microvm[@]}"
    expect_argv "QEMU wrapper, machine q35" "$w" \
        "$(printf '%s\n' "${qemu_head[@]}" --credential db-password -- "$qemu_bin" "${qemu_q35[@]}")" -- "${qemu_q35[@]}"
else
    fail "no rendered QEMU wrapper"
fi

# microvm.credentialFiles taken over: the wrapper of cases.nix's
# qemu-credential-files case drops exactly microvm.nix's -fw_cfg pair.
if nix_eval "(import ./tests/nixos/render.nix { evaluated = $(evaluated_expr stub "(import ./tests/nixos/cases.nix).qemu-credential-files.host"); }).files.\"qvm/qemu-system-x86_64\"" |
    jq -j . >"$work/takeover.sh"; then
    w=$(runnable "$work/takeover.sh")
    pair=(-fw_cfg 'name=opt/io.systemd.credentials/token,file=/run/secrets/qvm-token')
    other=(-fw_cfg 'name=opt/io.systemd.credentials/other,string=public')
    expect_argv "QEMU wrapper drops the taken-over -fw_cfg pair" "$w" \
        "$(printf '%s\n' "${qemu_head[@]}" --credential db-password --credential token -- "$qemu_bin" \
            "${qemu_microvm[@]:0:4}" "${other[@]}" "${qemu_microvm[@]:4}")" -- \
        "${qemu_microvm[@]:0:4}" "${pair[@]}" "${other[@]}" "${qemu_microvm[@]:4}"
    # The same name with another file is not microvm.nix's pair: refused.
    expect_argv "QEMU wrapper refuses an argv without the pair" "$w" \
        "credbridge wrapper: microvm.credentialFiles.token: the QEMU argv lacks -fw_cfg name=opt/io.systemd.credentials/token,file=/run/secrets/qvm-token; refusing to start (nixos/wrapper.nix expects microvm.nix's form)" -- \
        "${qemu_microvm[@]}" -fw_cfg 'name=opt/io.systemd.credentials/token,file=/tmp/other'
else
    fail "render the qemu-credential-files case"
fi

echo "== 6. the docs show the examples verbatim, and their nix blocks parse"
# A line `<!-- begin: FILE -->` in README.md or docs/*.md names the file that
# the next ```nix fence must show, verbatim. Both examples must be shown.
docs=("$repo/README.md" "$repo"/docs/*.md)
shown=()
for doc in "${docs[@]}"; do
    while IFS= read -r file; do
        shown+=("$file")
        block=$(awk -v m="<!-- begin: $file -->" '$0 == m {on=1; next}
                     on && /^```nix$/ {inblock=1; next}
                     inblock && /^```$/ {exit}
                     inblock {print}' "$doc")
        if [[ -n $block ]] && diff <(printf '%s\n' "$block") "$repo/$file"; then
            echo "ok: ${doc#"$repo"/} shows $file"
        else
            fail "${doc#"$repo"/}'s example differs from $file (or is missing)"
        fi
    done < <(sed -n 's/^<!-- begin: \(.*\) -->$/\1/p' "$doc")
done
for want in tests/nixos/example-readme.nix tests/nixos/example-host.nix; do
    [[ " ${shown[*]} " == *" $want "* ]] || fail "no document shows $want (<!-- begin: $want -->)"
done
grep -qxF '<!-- begin: tests/nixos/example-readme.nix -->' "$repo/README.md" ||
    fail "README.md does not show tests/nixos/example-readme.nix"

# Every other nix block of the docs must at least parse.
for doc in "${docs[@]}"; do
    n=0
    while IFS= read -r -d '' snippet; do
        n=$((n + 1))
        if ! out=$(nix-instantiate --parse - <<<"$snippet" 2>&1 >/dev/null); then
            printf '%s\n%s\n' "$snippet" "$out"
            fail "${doc#"$repo"/} nix block $n does not parse"
        fi
    done < <(awk '/^ *```nix$/ {on=1; buf=""; next}
                 on && /^ *```$/ {on=0; printf "%s%c", buf, 0; next}
                 on {buf = buf $0 "\n"}' "$doc")
    [[ $n -eq 0 ]] || echo "ok: $n nix blocks in ${doc#"$repo"/} parse"
done

echo "== 7. nixos/package.nix's source filter"
# The files cargo needs are in, the repository's other files are out.
git -C "$repo" ls-files -co --exclude-standard | jq -R . | jq -s . >"$work/files.json"
if included=$(nix_eval "let p = import ./nixos/package.nix { lib = import ./tests/nixos/stub/lib.nix; inherit (import ./tests/nixos/stub/pkgs.nix { lib = import ./tests/nixos/stub/lib.nix; }) stdenv installShellFiles; rustPlatform.buildRustPackage = a: a; }; in builtins.filter p.passthru.included (builtins.fromJSON (builtins.readFile $work/files.json))"); then
    bad=$(jq -r '.[] | select(test("^(Cargo\\.(toml|lock)|build\\.rs|(src|man|tests|benches)/.*)$") | not)' <<<"$included")
    bad+=$(jq -r '.[] | select(test("^tests/(nixos|units)/|^tests/e2e/\\.cache/"))' <<<"$included")
    missing=$(jq -r --argjson in "$included" '.[] | select(test("^(Cargo\\.(toml|lock)|src/.*|man/.*|tests/fake-ch/.*)$")) | select(. as $f | $in | index($f) | not)' "$work/files.json")
    if [[ -z $bad && -z $missing ]]; then
        echo "ok: source filter keeps $(jq length <<<"$included") of $(jq length "$work/files.json") files"
    else
        [[ -n $bad ]] && printf 'included but should not be: %s\n' $bad
        [[ -n $missing ]] && printf 'needed but left out: %s\n' $missing
        fail "nixos/package.nix source filter"
    fi
else
    fail "evaluate nixos/package.nix's filter"
fi
# The whole package.nix with each lib, the source included: with
# --readonly-mode Nix hashes the filtered tree without writing the store.
for ev in "${evaluators[@]}"; do
    case $ev in
        stub) lib_expr='import ./tests/nixos/stub/lib.nix' ;;
        real) lib_expr="import $(realpath "$NIXPKGS_LIB")" ;;
    esac
    if src=$(nix_eval "let p = import ./nixos/package.nix { lib = $lib_expr; inherit (import ./tests/nixos/stub/pkgs.nix { lib = import ./tests/nixos/stub/lib.nix; }) stdenv installShellFiles; rustPlatform.buildRustPackage = a: a; }; in \"\${p.src}\"" 2>"$work/package.err"); then
        echo "ok: nixos/package.nix evaluates ($ev lib, Nix $(nix-instantiate --version | awk '{print $NF}')): src $src"
    else
        cat "$work/package.err"
        fail "nixos/package.nix does not evaluate ($ev lib)"
    fi
done

# The man page: credbridge-man is built beside credbridge, run, and only its
# output installed (installManPage); on a cross build nothing is run.
man_expr='let
  lib = import ./tests/nixos/stub/lib.nix;
  pkgs = import ./tests/nixos/stub/pkgs.nix { inherit lib; };
  p = pkgs.callPackage ./nixos/package.nix { };
  cross = pkgs.callPackage ./nixos/package.nix {
    stdenv = pkgs.stdenv // { hostPlatform = pkgs.stdenv.hostPlatform // { system = "aarch64-linux"; }; };
  };
in {
  inherit (p.args) cargoBuildFlags postInstall;
  nativeBuildInputs = map (d: d.name) p.args.nativeBuildInputs;
  crossPostInstall = cross.args.postInstall;
}'
man_want=$(jq -n '{
        cargoBuildFlags: ["-p", "credbridge", "-p", "credbridge-man"],
        nativeBuildInputs: ["install-shell-files"],
        postInstall: "$out/bin/credbridge-man > credbridge.1\ninstallManPage credbridge.1\nrm $out/bin/credbridge-man\n",
        crossPostInstall: "rm $out/bin/credbridge-man\n"
    }')
expect_eval "nixos/package.nix installs credbridge(1) from credbridge-man" "$man_expr" "$man_want"

echo "== 8. flake.nix's lib.wrapCloudHypervisor and lib.wrapQemu"
flake_expr='let
  lib = import ./tests/nixos/stub/lib.nix;
  pkgs = import ./tests/nixos/stub/pkgs.nix { inherit lib; };
  flake = (import ./flake.nix).outputs { self = flake; nixpkgs = { inherit lib; }; };
  q = flake.lib.wrapQemu pkgs { vmName = "v"; flags = [ "--ready" "booted" ]; };
  c = flake.lib.wrapCloudHypervisor pkgs { vmName = "c"; };
  aarch64 = pkgs // { stdenv.hostPlatform = pkgs.stdenv.hostPlatform // { qemuArch = "aarch64"; }; };
in {
  qemuBinaryAarch64 = (flake.lib.wrapQemu aarch64 { vmName = "a"; }).meta.mainProgram;
  qemu = q.passthru.script.text;
  qemuBinary = q.meta.mainProgram;
  configureFlags = q.configureFlags;
  afterOverride = (q.override (oa: { nixosTestRunner = true; })).passthru.unwrapped.name;
  afterOverrideAttrs = (q.overrideAttrs (oa: { })).passthru.unwrapped.name;
  cloudHypervisor = c.passthru.script.text;
}'
flake_want=$(jq -n --arg s "$store/00000000000000000000000000000000" '{
        qemu: "exec \($s)-credbridge-0.1.0/bin/credbridge run --hypervisor qemu --argv0 microvm@v --ready booted -- \($s)-qemu-host-cpu-only-10.1.0/bin/qemu-system-x86_64 \"$@\"\n",
        qemuBinary: "qemu-system-x86_64",
        qemuBinaryAarch64: "qemu-system-aarch64",
        configureFlags: ["--enable-seccomp"],
        afterOverride: "qemu-host-cpu-only-10.1.0-nixosTestRunner=true",
        afterOverrideAttrs: "qemu-host-cpu-only-10.1.0-overrideAttrs=true",
        cloudHypervisor: "exec \($s)-credbridge-0.1.0/bin/credbridge run --hypervisor cloud-hypervisor --argv0 microvm@c -- \($s)-cloud-hypervisor-48.0/bin/cloud-hypervisor \"$@\"\n"
    }')
expect_eval "flake.nix's lib.wrapCloudHypervisor and lib.wrapQemu" "$flake_expr" "$flake_want"

if [[ $failed -ne 0 ]]; then
    echo "check.sh: $failed check(s) failed"
    exit 1
fi
echo "check.sh: all checks passed (evaluators: ${evaluators[*]})"
