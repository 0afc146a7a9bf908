#!/bin/bash
# credbridge demo: hand a systemd credential to a real Debian guest under QEMU
# and show what the guest's systemd received.
#
#   bash demo/run.sh [--release bookworm|trixie] [--value TEXT]
#
# On a fresh Debian 12 machine (as root, or it re-runs itself with sudo):
#  1. installs what it needs with apt (qemu-system-x86, debootstrap, systemd,
#     build tools) and Rust with rustup if cargo is missing or too old;
#  2. builds credbridge (cargo build --release);
#  3. builds a minimal Debian guest once (cached in tests/e2e/.cache/);
#  4. encrypts a sample credential with systemd-creds and decrypts it into a
#     private credentials directory, as systemd does for LoadCredentialEncrypted=;
#  5. boots the guest through `credbridge run -- qemu-system-x86_64 ...`; the
#     guest prints what landed in /run/credentials/@system/ and powers off;
#  6. prints the host's and the guest's name, size, sha256 and value.
# First run: a few minutes (build and guest); later runs: about 20 s.
set -euo pipefail

RELEASE=bookworm
VALUE='s3cret, with "quotes", [brackets] and = signs'
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASE="$2"; shift 2 ;;
        --value) VALUE="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "demo: unknown argument: $1" >&2; exit 2 ;;
    esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HERE"
if [ "$(id -u)" != 0 ]; then
    echo "demo: needs root (apt, debootstrap); re-running with sudo"
    exec sudo -E bash "$0" --release "$RELEASE" --value "$VALUE"
fi
step() { printf '== %s\n' "$*"; }
W="$(mktemp -d /tmp/credbridge-demo.XXXXXX)"
trap 'rm -rf "$W"' EXIT

# ---------------------------------------------------------------- 1. tools
export DEBIAN_FRONTEND=noninteractive
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-creds >/dev/null || need+=(systemd)
command -v cpio >/dev/null || need+=(cpio)
command -v python3 >/dev/null || need+=(python3)
command -v cc >/dev/null || need+=(build-essential)
command -v curl >/dev/null || need+=(curl ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
    step "installing ${need[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# credbridge needs Rust 1.85 (edition 2024); Debian 12's cargo is older.
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
rust_ok() {
    local v
    v="$(cargo --version 2>/dev/null | awk '{print $2}')" || return 1
    [ -n "$v" ] && [ "$(printf '%s\n1.85.0\n' "$v" | sort -V | head -1)" = 1.85.0 ]
}
if ! rust_ok; then
    step "installing Rust (rustup, minimal profile)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# ---------------------------------------------------------------- 2. credbridge
step "building credbridge (cargo build --release)"
cargo build --release --quiet --bin credbridge
CREDBRIDGE="${CARGO_TARGET_DIR:-$HERE/target}/release/credbridge"

# ---------------------------------------------------------------- 3. guest
step "guest: Debian $RELEASE (tests/e2e/build-guest.sh, cached)"
tests/e2e/build-guest.sh --release "$RELEASE" 2>"$W/build.log" || { tail -20 "$W/build.log" >&2; exit 1; }

# ---------------------------------------------------------------- 4. credential
NAME=demo-secret
printf '%s' "$VALUE" >"$W/value"
mkdir -m 0700 "$W/credentials"
export SYSTEMD_CREDENTIAL_SECRET="$W/host.key"   # a throwaway host key, not /var/lib/systemd's
systemd-creds encrypt --with-key=host --name="$NAME" "$W/value" "$W/$NAME.cred" 2>/dev/null
systemd-creds decrypt --name="$NAME" "$W/$NAME.cred" "$W/credentials/$NAME" 2>/dev/null
step "credential $NAME encrypted with systemd-creds, decrypted into a private credentials directory"

# ---------------------------------------------------------------- 5. boot
mapfile -t ARGS < <(tests/e2e/guest-args.sh --release "$RELEASE" --serial "file:$W/serial")
step "booting: credbridge run --ready booted -- qemu-system-x86_64 ${ARGS[*]:0:4} ..."
t0=$(date +%s.%N)
rc=0
CREDENTIALS_DIRECTORY="$W/credentials" timeout --kill-after=10 300 \
    "$CREDBRIDGE" run --ready booted -- qemu-system-x86_64 "${ARGS[@]}" \
    </dev/null >"$W/credbridge.log" 2>&1 || rc=$?
secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
REPORT="$(tr -d '\r' <"$W/serial" | sed -n '/^CREDBRIDGE-E2E-BEGIN$/,/^CREDBRIDGE-E2E-END$/p')"
if [ "$rc" != 0 ] || [ -z "$REPORT" ]; then
    echo "demo: the guest gave no report (credbridge exit $rc after ${secs}s)" >&2
    echo "-- credbridge:" >&2; tail -15 "$W/credbridge.log" >&2
    echo "-- guest console:" >&2; tr -d '\r' <"$W/serial" | tail -15 >&2
    exit 1
fi

# ---------------------------------------------------------------- 6. compare
line="$(printf '%s\n' "$REPORT" | awk -v n="$NAME" '$1 == "CRED" && $5 == n')"
g_size="$(echo "$line" | awk '{print $2}')"
g_sum="$(echo "$line" | awk '{print $3}')"
g_value="$(echo "$line" | awk '{print $4}' | base64 -d 2>/dev/null || true)"
h_size="$(stat -c %s "$W/value")"
h_sum="$(sha256sum <"$W/value" | cut -d' ' -f1)"
echo
echo "credbridge log:"
sed 's/^/  /' "$W/credbridge.log"
echo
printf '%s\n' "$REPORT" | sed -n 's/^SYSTEMD /guest:  /p; s/^KERNEL /        kernel /p'
printf '%-6s %-12s %6s  %-18s %s\n' "" name bytes sha256 value
printf '%-6s %-12s %6s  %-18s %s\n' host "$NAME" "$h_size" "${h_sum:0:16}.." "$VALUE"
printf '%-6s %-12s %6s  %-18s %s\n' guest "${line:+$NAME}" "${g_size:--}" "${g_sum:0:16}.." "${g_value:-(not imported)}"
echo
if [ "$g_size" = "$h_size" ] && [ "$g_sum" = "$h_sum" ]; then
    echo "identical: the guest's /run/credentials/@system/$NAME is the host's bytes (boot and report in ${secs}s)"
else
    echo "DIFFERENT: the guest did not receive the host's bytes" >&2
    exit 1
fi
