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

# command -> Debian package
need_apt=()
want() { command -v "$1" >/dev/null 2>&1 || case " ${need_apt[*]} " in *" $2 "*) ;; *) need_apt+=("$2") ;; esac; }
want systemd-creds systemd
want systemd-socket-activate systemd
want qemu-system-x86_64 qemu-system-x86
want setpriv util-linux
want unshare util-linux
want groff groff-base

if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$dry" = 1 ]; then
        echo "tests/run.sh: would install: ${need_apt[*]} (apt-get)"
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tests/run.sh: installing ${need_apt[*]} (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "tests/run.sh: the tests need these Debian packages: ${need_apt[*]}" >&2
        echo "  install them as root:  apt-get install --no-install-recommends ${need_apt[*]}" >&2
        echo "  (or run this script as root, which installs them)" >&2
        exit 2
    fi
fi

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
