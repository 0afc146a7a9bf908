#!/usr/bin/env bash
# tests/run.sh [--dry-run] [NEXTEST ARGS...]
#
# The test command: `cargo nextest run --workspace` plus what it needs on a
# fresh Debian 12 machine that has only a Rust toolchain.
#   - Debian packages the tests run: systemd (systemd-creds,
#     systemd-socket-activate), qemu-system-x86 (tests/qemu*.rs), util-linux
#     (setpriv, unshare), groff-base (man/tests: credbridge(1) renders
#     cleanly). As root, missing ones are installed with apt-get;
#     otherwise the script names them and the apt-get line, and exits 2
#     before running anything (never half a run that looks like a pass).
#   - cargo-nextest: installed with `cargo install cargo-nextest --locked`
#     (into ~/.cargo/bin, no root needed) when `cargo nextest` is missing.
# --dry-run prints what would be installed and the command, and runs nothing.
# Further arguments go to nextest (e.g. -E 'test(ready)'). .ci/run calls this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry=0
if [ "${1:-}" = --dry-run ]; then dry=1; shift; fi

# shellcheck source=tests/host-tools.sh
. tests/host-tools.sh
NEED_DRY_RUN=$dry need_packages tests/run.sh systemd-creds=systemd systemd-socket-activate=systemd \
    qemu-system-x86_64=qemu-system-x86 setpriv=util-linux unshare=util-linux groff=groff-base || exit

if ! cargo nextest --version >/dev/null 2>&1; then
    if [ "$dry" = 1 ]; then
        echo "tests/run.sh: would install: cargo-nextest (cargo install cargo-nextest --locked)"
    else
        echo "tests/run.sh: installing cargo-nextest (cargo install cargo-nextest --locked)" >&2
        cargo install cargo-nextest --locked
    fi
fi

if [ "$dry" = 1 ]; then
    echo "tests/run.sh: would run: cargo nextest run --workspace $*"
    exit 0
fi
exec cargo nextest run --workspace "$@"
