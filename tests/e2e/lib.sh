# shellcheck shell=bash
# Shared helpers for the credbridge e2e scripts.  Source it; it defines
# functions and E2E_* variables only.

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_CACHE="$E2E_DIR/.cache"
E2E_APPEND_DEFAULT="console=ttyS0 panic=-1 quiet"
# need_packages: the host packages each script installs when missing.
# shellcheck source=tests/host-tools.sh
. "$E2E_DIR/../host-tools.sh"

e2e_die() { echo "${E2E_PROG:-e2e}: $*" >&2; exit 1; }

e2e_check_release() {
    case "$1" in
        bookworm|trixie) ;;
        *) e2e_die "unsupported release '$1' (bookworm|trixie)" ;;
    esac
}

# The cached guest of a release must exist (build-guest.sh makes it).
e2e_guest_ready() {
    local d="$E2E_CACHE/$1"
    [ -s "$d/key" ] && [ -s "$d/initrd.img" ] && [ -s "$d/vmlinuz" ] && [ -s "$d/info" ]
}

# Kernel file to boot: the PVH ELF when the build extracted one.
e2e_kernel() {
    local d="$E2E_CACHE/$1"
    if [ -s "$d/vmlinux" ]; then echo "$d/vmlinux"; else echo "$d/vmlinuz"; fi
}

# Accelerator: $CREDBRIDGE_E2E_ACCEL = kvm | tcg | auto (default).  auto uses KVM
# only if a short probe boots the guest kernel under KVM (on nested KVM it often
# hangs without printing anything); the answer is cached per host kernel and
# QEMU version in .cache/accel.
e2e_accel() {
    local release="$1" want="${CREDBRIDGE_E2E_ACCEL:-auto}"
    case "$want" in
        kvm|tcg) echo "$want"; return ;;
        auto) ;;
        *) e2e_die "CREDBRIDGE_E2E_ACCEL must be kvm, tcg or auto, not '$want'" ;;
    esac
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then echo tcg; return; fi
    local stamp qv cache="$E2E_CACHE/accel"
    qv="$(qemu-system-x86_64 --version 2>/dev/null | head -1)"
    stamp="$(uname -r) | $qv"
    if [ -f "$cache" ] && [ "$(sed -n 1p "$cache")" = "$stamp" ]; then
        sed -n 2p "$cache"; return
    fi
    local log result=tcg
    log="$(mktemp)"
    # The kernel alone, no initramfs: it panics at once ("unable to mount root")
    # and panic=-1 + -no-reboot makes QEMU exit.  Working KVM does this in ~1 s.
    if timeout --kill-after=2 10 qemu-system-x86_64 -machine pc -accel kvm -cpu host -m 256M \
            -nodefaults -display none -no-reboot -serial "file:$log" \
            -kernel "$(e2e_kernel "$release")" -append "console=ttyS0 panic=-1" \
            </dev/null >/dev/null 2>&1 && grep -q 'Kernel panic' "$log"; then
        result=kvm
    fi
    rm -f "$log"
    mkdir -p "$E2E_CACHE"
    printf '%s\n%s\n' "$stamp" "$result" >"$cache"
    echo "KVM probe: $result" >&2
    echo "$result"
}

# Fill the array E2E_ARGS with the QEMU arguments that boot the cached guest.
#   e2e_qemu_args RELEASE ACCEL SERIAL [EXTRA_APPEND]
# SERIAL is a QEMU chardev spec: stdio, file:PATH, ...
e2e_qemu_args() {
    local release="$1" accel="$2" serial="$3" extra="${4:-}" d="$E2E_CACHE/$1"
    local append="$E2E_APPEND_DEFAULT${extra:+ $extra}"
    E2E_ARGS=(-machine pc -accel "$accel")
    if [ "$accel" = kvm ]; then E2E_ARGS+=(-cpu host); fi
    E2E_ARGS+=(-m 512M -smp 1 -nodefaults -display none -no-reboot
               -kernel "$(e2e_kernel "$release")" -initrd "$d/initrd.img"
               -append "$append" -serial "$serial")
}

# Print the report lines (between the markers, without them) of a serial log.
e2e_report() {
    tr -d '\r' <"$1" | awk '
        /^CREDBRIDGE-E2E-BEGIN$/ { on = 1; seen = 1; next }
        /^CREDBRIDGE-E2E-END$/   { on = 0; done = 1; next }
        on { print }
        END { exit(done ? 0 : 1) }'
}

# The CRED line for credential WANT in report file REP (the guest's report format):
# sets C_SIZE C_SUM C_DATA, or returns 1.
find_cred() {
    local rep="$1" want="$2" tag size sum data name
    while read -r tag size sum data name; do
        if [ "$tag" = CRED ] && [ "$name" = "$want" ]; then
            C_SIZE="$size" C_SUM="$sum" C_DATA="$data"
            return 0
        fi
    done <"$rep"
    return 1
}

# The functions below report through pass and fail, which the sourcing script
# defines (each counts its own PASS and FAIL).

# A credential name as a label: long names shortened.
e2e_short() { local n="$1"; if [ ${#n} -gt 40 ]; then echo "${n:0:16}...(${#n}-byte name)"; else echo "$n"; fi; }

# Compare credential NAME of report REP with the bytes of file EXP: size,
# sha256, and the bytes themselves when the guest sent them (small values).
#   e2e_check_cred RELEASE REP NAME EXP
e2e_check_cred() {
    local r="$1" rep="$2" name="$3" exp="$4" label esize esum
    label="$r: $(e2e_short "$name")"
    if ! find_cred "$rep" "$name"; then fail "$label: not imported"; return; fi
    esize="$(stat -c %s "$exp")"
    esum="$(sha256sum <"$exp" | cut -d' ' -f1)"
    if [ "$C_SIZE" = "$esize" ] && [ "$C_SUM" = "$esum" ] \
            && { [ "$C_DATA" = - ] || printf '%s' "$C_DATA" | base64 -d 2>/dev/null | cmp -s - "$exp"; }; then
        pass "$label: $esize bytes identical (sha256 ${esum:0:16}...)"
    else
        fail "$label: guest has $C_SIZE bytes sha256 $C_SUM, host $esize bytes sha256 $esum"
    fi
}

# The 4 KiB difference: a 5000-byte credential BIG followed by a short one
# AFTER, both in one type 11 entry.  systemd >= 257 imports both whole; an older
# one reads only 4096 bytes of the entry, so BIG is cut or missing and AFTER
# missing.  The expected bytes are EXPDIR/BIG and EXPDIR/AFTER.
#   e2e_judge_4k RELEASE REP BIG AFTER EXPDIR [MORE-SUMMARY]
e2e_judge_4k() {
    local r="$1" rep="$2" big="$3" after="$4" exp="$5" more="${6:-}" ver bigsize=missing aftersize=missing summary
    ver="$(sed -n 's/^SYSTEMD systemd \([0-9]*\).*/\1/p' "$rep")"
    if find_cred "$rep" "$big"; then bigsize="$C_SIZE"; fi
    if find_cred "$rep" "$after"; then aftersize="$C_SIZE"; fi
    summary="$big: $bigsize of $(stat -c %s "$exp/$big") bytes, $after: $aftersize${more:+; $more}"
    if [ -z "$ver" ]; then
        fail "$r: 4 KiB: no systemd version in the report"
    elif [ "$ver" -lt 257 ]; then
        if [ "$bigsize" != "$(stat -c %s "$exp/$big")" ] && [ "$aftersize" = missing ]; then
            pass "$r: 4 KiB: systemd $ver reads only 4096 bytes of the entry ($summary)"
        else
            fail "$r: 4 KiB: systemd $ver, expected a cut ($summary)"
        fi
    else
        e2e_check_cred "$r" "$rep" "$big" "$exp/$big"
        e2e_check_cred "$r" "$rep" "$after" "$exp/$after"
        echo "# $r: 4 KiB: systemd $ver ($summary)"
    fi
}

# Initramfs building, shared by vhost-vsock-e2e.sh and tests/systemd/rig.sh.
# /lib, /lib64, /bin, /sbin map to /usr/...: the trees built are merged-usr
# (lib -> usr/lib), like the host they are copied from.
e2e_usr_path() { case "$1" in /lib/*|/lib64/*|/bin/*|/sbin/*) echo "/usr$1" ;; *) echo "$1" ;; esac; }

# e2e_copy_elf ROOT FILE [DEST [HAVE]]: FILE into ROOT (as DEST) with every
# library ldd names for it, except those HAVE lists (paths without the leading
# "/", one a line: what the guest's own initramfs already holds, by real path
# or by the path ldd names).
e2e_copy_elf() {
    local root="$1" src="$2" dest="${3:-$2}" have="${4:-}" lib libs p
    install -D -m 0755 "$src" "$root$(e2e_usr_path "$dest")" || return 1
    libs="$(ldd "$src" 2>&1)"
    if grep -q 'not found' <<<"$libs"; then echo "$libs" >&2; return 1; fi
    while read -r lib; do
        if [ -n "$have" ]; then
            p="$(e2e_usr_path "$(readlink -f "$lib")")"
            grep -qxF "${p#/}" "$have" && continue
        fi
        p="$(e2e_usr_path "$lib")"
        if [ -n "$have" ]; then grep -qxF "${p#/}" "$have" && continue; fi
        [ -e "$root$p" ] || install -D -m 0755 "$lib" "$root$p" || return 1
    done < <(awk '/=> \// { print $3 } /^[[:space:]]+\// { print $1 }' <<<"$libs")
}

# e2e_make_cpio DIR OUT: an uncompressed newc cpio of DIR, owned by root, names
# without "./", in a stable order.
e2e_make_cpio() { (cd "$1" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$2"; }

# e2e_child_cmdline PID OUT: the command line (one argument a line) of PID's
# grandchild (timeout -> credbridge -> hypervisor) as every local user sees it
# in /proc, polled for up to 10 s or until PID exits. OUT stays empty when the
# grandchild never appeared.
e2e_child_cmdline() {
    local tpid="$1" out="$2" cb="" q=""
    : >"$out"
    for _ in $(seq 200); do
        [ -n "$cb" ] || cb="$(ps -o pid= --ppid "$tpid" | head -1 | tr -d ' ')"
        [ -n "$cb" ] && q="$(ps -o pid= --ppid "$cb" | head -1 | tr -d ' ')"
        if [ -n "$q" ] && tr '\0' '\n' <"/proc/$q/cmdline" >"$out" 2>/dev/null && [ -s "$out" ]; then
            return 0
        fi
        kill -0 "$tpid" 2>/dev/null || return 0
        sleep 0.05
    done
}
