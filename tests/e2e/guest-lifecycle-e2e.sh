#!/bin/bash
# The guest's own word on its lifecycle (#14), with real Debian guests under QEMU over
# vhost-user-vsock:
#
#   tests/e2e/guest-lifecycle-e2e.sh [--credbridge PATH] [--timeout S]
#
# Debian 13 (systemd 257) with `credbridge --ready guest:multi-user.target --vsock-uds`:
# READY=1 after the target, `systemctl exit 3` makes credbridge exit 3, a `systemctl reboot`
# shows in STATUS and the VM comes back ready, a kernel crash (sysrq c, panic=-1) is reported
# as a crash and three of them fail the unit. Debian 12 (systemd 252, which sends nothing):
# `--ready guest:TARGET` ends at --ready-timeout with the reason, and with --ready booted a crash
# and a poweroff are treated as before.
#
# Needs vhost-device-vsock (rust-vmm; `cargo install vhost-device-vsock --locked`) on PATH or
# in $VHOST_DEVICE_VSOCK: the hybrid-vsock backend of QEMU's vhost-user-vsock-pci. It maps a
# guest connection to host CID 2 port P onto `<uds-path>_P`, where credbridge listens. The
# script installs socat, busybox-static, python3-minimal, cpio and xz-utils with apt-get if
# missing, builds the guests with build-guest.sh if their cache is missing, and derives from
# each cached guest an initramfs that stays up (multi-user.target instead of e2e.target), loads
# the vsock modules before systemd starts, and has a root shell on the serial console through
# which the script drives the guest. Prints PASS/FAIL lines, then `N passed, N failed`.
# Run it under `flock /tmp/qemu-guests.lock` where other guests may run.
set -euo pipefail
E2E_PROG=guest-lifecycle-e2e.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CREDBRIDGE="$E2E_DIR/../../target/debug/credbridge" TIMEOUT=900
while [ $# -gt 0 ]; do
    case "$1" in
        --credbridge) CREDBRIDGE="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
done
CREDBRIDGE="$(realpath "$CREDBRIDGE")"
[ -x "$CREDBRIDGE" ] || e2e_die "no credbridge at $CREDBRIDGE (cargo build first)"
VDV="${VHOST_DEVICE_VSOCK:-$(command -v vhost-device-vsock || true)}"
[ -n "$VDV" ] && [ -x "$VDV" ] || e2e_die "vhost-device-vsock is not installed; cargo install vhost-device-vsock --locked"

need_packages "$E2E_PROG" socat=socat busybox-static python3=python3-minimal cpio=cpio xz=xz-utils || exit
for r in trixie bookworm; do
    e2e_guest_ready "$r" || bash "$E2E_DIR/build-guest.sh" --release "$r" >&2
done

PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
START=$SECONDS
left() { echo $((TIMEOUT - (SECONDS - START))); }

OUT="$(mktemp -d /tmp/credbridge-lifecycle.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-}" = 1 ] || [ "$FAILED" -gt 0 ]; then
        echo "# logs kept in $OUT" >&2
    else
        rm -rf "$OUT"
    fi
}
trap cleanup EXIT

# ------------------------------------------------------------ the guest variant
# An initramfs appended to the cached guest's (the kernel unpacks concatenated archives in
# order): /e2e-lc/init loads the vsock modules from the guest kernel's .deb and execs systemd,
# which must be able to reach vmm.notify_socket from its first message; e2e-shell.service is
# a root shell on ttyS0. Cached in .cache/lifecycle, keyed by this script and the guest.
variant() { # release -> path of the initramfs
    local r="$1" d="$E2E_CACHE/$1" key kver kdeb b m f
    key="$(cat "$0" "$d/key" | sha256sum | cut -c1-16)"
    local img="$E2E_CACHE/lifecycle/$r-$key.img"
    if [ -s "$img" ]; then echo "$img"; return; fi
    b="$(mktemp -d "$OUT/variant.XXXXXX")"
    mkdir -p "$b/k" "$b/ov/e2e-lc/mod" "$b/ov/etc/systemd/system/multi-user.target.wants"
    kver="$(sed -n 's/^kernel=//p' "$d/info")"
    kdeb="$E2E_CACHE/debs/$r/$(sed -n 's/^kernel_package=//p' "$d/info")"
    # bookworm keeps modules in /lib, trixie in /usr/lib; bookworm also has virtio as modules.
    dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$b/k" --wildcards \
        "*/modules/$kver/kernel/net/vmw_vsock/*" "*/modules/$kver/kernel/drivers/virtio/*" 2>/dev/null || true
    : >"$b/ov/e2e-lc/mod/order"
    for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
             vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
        f="$(find "$b/k" -name "$m.ko*" -print -quit)"
        [ -n "$f" ] || continue # built in
        case "$f" in
            *.ko.xz) xz -dc "$f" >"$b/ov/e2e-lc/mod/$m.ko" ;;
            *.ko) cp "$f" "$b/ov/e2e-lc/mod/$m.ko" ;;
            *) e2e_die "unknown module format: $f" ;;
        esac
        echo "$m" >>"$b/ov/e2e-lc/mod/order"
    done
    grep -q vmw_vsock_virtio_transport "$b/ov/e2e-lc/mod/order" || e2e_die "no vsock modules in $kdeb"
    cp /bin/busybox "$b/ov/e2e-lc/busybox"
    cat >"$b/ov/e2e-lc/init" <<'EOF'
#!/e2e-lc/busybox sh
for m in $(/e2e-lc/busybox cat /e2e-lc/mod/order); do
    /e2e-lc/busybox insmod "/e2e-lc/mod/$m.ko" || echo "e2e-lc: insmod $m failed" >/dev/console
done
exec /lib/systemd/systemd "$@"
EOF
    chmod 755 "$b/ov/e2e-lc/init"
    # SIGKILL: an interactive shell ignores SIGTERM and would hold up every shutdown.
    cat >"$b/ov/etc/systemd/system/e2e-shell.service" <<'EOF'
[Unit]
Description=credbridge e2e: a root shell on the serial console
After=sysinit.target

[Service]
ExecStart=/e2e-lc/busybox sh
StandardInput=tty-force
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
KillSignal=SIGKILL
Restart=always
EOF
    ln -s ../e2e-shell.service "$b/ov/etc/systemd/system/multi-user.target.wants/e2e-shell.service"
    mkdir -p "$E2E_CACHE/lifecycle"
    rm -f "$E2E_CACHE/lifecycle/$r-"*.img
    (cd "$b/ov" && find . -mindepth 1 | sed 's|^\./||' | cpio -o -H newc --quiet) >"$b/ov.cpio"
    cat "$d/initrd.img" "$b/ov.cpio" >"$img.tmp"
    mv "$img.tmp" "$img"
    rm -rf "$b"
    echo "$img"
}

# ------------------------------------------------------------ one VM under credbridge
# start_vm NAME RELEASE CREDBRIDGE-FLAGS...: vhost-device-vsock, a notify receiver (one line
# per datagram, newlines as \n), and credbridge with QEMU in the background; $VM is its dir.
start_vm() {
    local name="$1" r="$2"; shift 2
    VM="$OUT/$name"
    mkdir -p "$VM/creds"
    printf 'lifecycle-e2e' >"$VM/creds/greeting"
    "$VDV" --vm "guest-cid=3,socket=$VM/vhost.sock,uds-path=$VM/vm.vsock" >"$VM/vdv.log" 2>&1 &
    PIDS+=($!)
    python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as f:
    while True:
        f.write(s.recv(65536).decode(errors="replace").replace("\n", "\\n") + "\n")
' "$VM/notify.sock" "$VM/notify.log" &
    PIDS+=($!)
    local i
    for i in $(seq 100); do [ -S "$VM/vhost.sock" ] && [ -S "$VM/notify.sock" ] && break; sleep 0.1; done
    [ -S "$VM/vhost.sock" ] || { fail "$name: vhost-device-vsock did not start: $(cat "$VM/vdv.log")"; return 1; }
    NOTIFY_SOCKET="$VM/notify.sock" "$CREDBRIDGE" run --credentials-dir "$VM/creds" \
        --vsock-uds "$VM/vm.vsock" --stop-timeout 10s "$@" -- \
        qemu-system-x86_64 -machine pc,memory-backend=mem -accel "$ACCEL" -m 512M -smp 1 \
        -nodefaults -display none \
        -object memory-backend-memfd,id=mem,size=512M,share=on \
        -kernel "$(e2e_kernel "$r")" -initrd "${IMG[$r]}" \
        -append "$E2E_APPEND_DEFAULT rdinit=/e2e-lc/init systemd.unit=multi-user.target" \
        -chardev "socket,id=ser,path=$VM/serial.sock,server=on,wait=off,logfile=$VM/serial.log" \
        -serial chardev:ser \
        -chardev "socket,id=vvs,path=$VM/vhost.sock" -device vhost-user-vsock-pci,chardev=vvs \
        >"$VM/cb.out" 2>"$VM/cb.err" &
    CB=$!
    PIDS+=("$CB")
    VM_START=$SECONDS
}

# wait_notify TEXT SECONDS [FROM-LINE]: a notify message containing TEXT (after line FROM).
wait_notify() {
    local t=$((SECONDS + $2)) from="${3:-0}"
    while [ "$SECONDS" -lt "$t" ]; do
        if tail -n +"$((from + 1))" "$VM/notify.log" 2>/dev/null | grep -qF -- "$1"; then return 0; fi
        kill -0 "$CB" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
# The line number of the first notify message containing TEXT, or 0.
line_of() { grep -nF -- "$1" "$VM/notify.log" | head -1 | cut -d: -f1 || true; }
lines() { wc -l <"$VM/notify.log"; }
guest() { printf '%s\n' "$1" | socat -t1 - "UNIX-CONNECT:$VM/serial.sock" >/dev/null 2>&1 || true; }
# wait_cb SECONDS: credbridge's exit status in $CB_RC, 255 when it did not exit in time.
wait_cb() {
    local t=$((SECONDS + $1)) late=0
    while kill -0 "$CB" 2>/dev/null && [ "$SECONDS" -lt "$t" ]; do sleep 0.5; done
    if kill -0 "$CB" 2>/dev/null; then
        late=1
        kill -TERM "$CB" 2>/dev/null || true
        sleep 15
        kill -KILL "$CB" 2>/dev/null || true
    fi
    CB_RC=0
    wait "$CB" || CB_RC=$?
    if [ "$late" = 1 ]; then CB_RC=255; fi
}
stop_helpers() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    PIDS=()
}
show() { # the log lines worth seeing on failure
    sed 's/^/#   cb: /' "$VM/cb.err" | grep -v "User job" | tail -15
    tail -n 12 "$VM/notify.log" | sed 's/^/#   notify: /'
}

ACCEL="$(e2e_accel trixie)"
declare -A IMG
for r in trixie bookworm; do IMG[$r]="$(variant "$r")"; done
echo "# accelerator: $ACCEL; vhost-device-vsock: $VDV"

# ------------------------------------------------------------ 1. target readiness and exit 3
echo "# trixie: --ready guest:multi-user.target, then systemctl exit 3"
start_vm exit trixie --ready guest:multi-user.target --ready-timeout 300s
if wait_notify "READY=1" "$(left)"; then
    host="$(sed -n 's/.*STATUS=guest \([^ :]*\): basic.target.*/\1/p' "$VM/notify.log" | head -1)"
    r="$(line_of READY=1)" b="$(line_of ": basic.target")" m="$(line_of ": multi-user.target")" g="$(line_of "STATUS=guest: Ready.")"
    echo "# READY=1 after $((SECONDS - VM_START)) s; guest hostname '$host'"
    if [ -n "$host" ] && [ "${b:-0}" -gt 0 ] && [ "${m:-0}" -gt "$b" ] && [ "$r" -gt "$m" ]; then
        pass "check 1: READY=1 after STATUS=guest $host: basic.target and ...: multi-user.target (lines $b, $m, $r; the guest's own READY=1 at line ${g:-none})"
    else
        fail "check 1: READY=1 at line $r, basic.target at ${b:-none}, multi-user.target at ${m:-none}"; show
    fi
    if grep -q "the guest's machine ID is [0-9a-f]\{32\}" "$VM/cb.err"; then
        pass "check 2: the guest's machine ID is logged ($(grep -c "machine ID" "$VM/cb.err") time)"
    else
        fail "check 2: no machine ID in the log"; show
    fi
    sleep 2
    guest "systemctl exit 3"
    wait_cb 180
    if [ "$CB_RC" = 3 ] && wait_notify "shutting down (poweroff, exit status 3)" 1; then
        pass "check 3: systemctl exit 3 in the guest: credbridge exits 3"
    else
        fail "check 3: systemctl exit 3: credbridge exited $CB_RC"; show
    fi
else
    fail "check 1: no READY=1 within the time"; show
    wait_cb 1
fi
stop_helpers

# ------------------------------------------------------------ 2. reboot, then a crash loop
echo "# trixie: systemctl reboot, then echo c > /proc/sysrq-trigger three times"
start_vm reboot trixie --ready guest:multi-user.target --ready-timeout 300s
if wait_notify "READY=1" "$(left)"; then
    sleep 2
    from="$(lines)"
    guest "systemctl reboot"
    if wait_notify ": rebooting" 120 "$from" && wait_notify "running again after reboot" "$(left)" "$from"; then
        pass "check 4: a guest reboot: STATUS says rebooting, then running again after reboot ($(grep -c '^READY=1' "$VM/notify.log") READY=1 in all)"
    else
        fail "check 4: no rebooting / running again in STATUS"; show
    fi
    crashed=0
    for n in 1 2 3; do
        sleep 2
        from="$(lines)"
        guest "echo c > /proc/sysrq-trigger"
        if [ "$n" -lt 3 ]; then
            if wait_notify "crashed and is restarting (crash $n of 3" 60 "$from" \
                    && wait_notify "running again after reboot" "$(left)" "$from"; then
                crashed=$n
            else
                break
            fi
        fi
    done
    if [ "$crashed" = 2 ]; then
        pass "check 5: a kernel crash is reported as one (STATUS crashed and is restarting), and the guest comes back, twice"
    else
        fail "check 5: crash $((crashed + 1)) not reported, or the guest did not come back"; show
    fi
    wait_cb 120
    if [ "$CB_RC" = 125 ] && grep -q "crashed 3 times within 5 min" "$VM/cb.err"; then
        pass "check 6: the third crash within 5 minutes stops the VM and fails (exit 125)"
    else
        fail "check 6: after the third crash credbridge exited $CB_RC"; show
    fi
else
    fail "check 4: no READY=1 within the time"; show
    wait_cb 1
fi
stop_helpers

# ------------------------------------------------------------ 3. systemd 252 says nothing
echo "# bookworm (systemd 252): --ready guest:multi-user.target --ready-timeout 60s"
start_vm old bookworm --ready guest:multi-user.target --ready-timeout 60s
wait_cb "$(left)"
if [ "$CB_RC" = 125 ] && ! grep -q '^READY=1' "$VM/notify.log" \
        && grep -q "the guest sent no notification at all (systemd before 253" "$VM/cb.err"; then
    pass "check 7: systemd 252: --ready guest:TARGET ends at --ready-timeout with the reason, exit 125, no READY=1"
else
    fail "check 7: systemd 252: credbridge exited $CB_RC"; show
fi
stop_helpers

# ------------------------------------------------------------ 4. systemd 252: the old rules
echo "# bookworm (systemd 252): --ready booted, a crash, then systemctl poweroff"
shells() { local n; n="$(grep -c "built-in shell" "$VM/serial.log" 2>/dev/null)" || true; echo "${n:-0}"; }
wait_shell() { # N SECONDS: the Nth shell prompt on the console
    local t=$((SECONDS + $2))
    while [ "$(shells)" -lt "$1" ] && [ "$SECONDS" -lt "$t" ] && kill -0 "$CB" 2>/dev/null; do sleep 0.5; done
    [ "$(shells)" -ge "$1" ]
}
start_vm old-rules bookworm --ready booted
if wait_shell 1 "$(left)"; then
    sleep 2
    guest "echo c > /proc/sysrq-trigger"
    if wait_shell 2 "$(left)" && grep -q "does not say which" "$VM/cb.err" \
            && ! grep -qE "crashed: |crashed and is restarting" "$VM/cb.err"; then
        pass "check 8: systemd 252: a crash is a reset like any other, not judged"
    else
        fail "check 8: systemd 252: the crash was not seen as a plain reset"; show
    fi
    sleep 2
    # systemd 252 refuses `systemctl exit N` outside containers ("ExitCode can only be set for
    # user service managers or in containers"); a poweroff it sends no word about.
    guest "systemctl poweroff"
    wait_cb 180
    if [ "$CB_RC" = 0 ] && ! grep -q "without the guest" "$VM/cb.err"; then
        pass "check 9: systemd 252: a poweroff the guest does not announce is QEMU's exit 0, as before"
    else
        fail "check 9: systemd 252: systemctl poweroff: credbridge exited $CB_RC"; show
    fi
else
    fail "check 8: systemd 252: no shell on the console"; show
    wait_cb 1
fi
stop_helpers

echo "$PASSED passed, $FAILED failed ($((SECONDS - START)) s)"
[ "$FAILED" = 0 ]
