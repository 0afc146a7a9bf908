#!/bin/bash
# End-to-end: `credbridge run --ready guest` with QEMU over the kernel's
# vhost-vsock, in nested QEMU, on a host that has no /dev/vhost-vsock.
#
#   tests/e2e/vhost-vsock-e2e.sh [--credbridge PATH] [--runner credbridge|plain]
#                                [--timeout SECONDS]
#
# L1 is a QEMU guest of this host (Debian bookworm's kernel, a busybox-static
# initramfs).  It loads the vhost_vsock and vsock_loopback modules from the
# kernel's .deb, so it has /dev/vhost-vsock, and runs credbridge, which runs
# QEMU (copied from this host) for L2: the same kernel with a tiny busybox
# initramfs.  L2's /init reads the SMBIOS type 11 strings, finds
# io.systemd.credential:vmm.notify_socket=vsock-stream:2:PORT and sends
# "STATUS=L2 says hello\nREADY=1" there the way systemd >= 256 does: connect,
# write, shut down the write side, wait for the host to close.
#
# Checks, all made inside L1 and reported on its serial console:
#   1  the guest's READY=1 reaches $NOTIFY_SOCKET as credbridge's READY=1,
#      with STATUS=guest: L2 says hello
#   2  a connection from L1 itself (vsock loopback, CID 1) that sends READY=1
#      while L2 still boots is ignored: no READY=1, credbridge logs it
#   3  a second credbridge with the same --vsock-cid exits 125 ("CID 3 is in
#      use") and starts no QEMU
#   4  L2 read the vsock port credbridge logged
#   5  after SIGTERM credbridge exits (its code is shown) and no QEMU is left
#   6  with the argv's own -device vhost-vsock-pci,guest-cid=3 (microvm.nix's
#      form; QEMU opens /dev/vhost-vsock itself) while the first VM holds CID 3:
#      credbridge listens for CID 3, QEMU is started once, the kernel refuses it
#      the CID, and credbridge exits with QEMU's status (1)
#
# --runner plain runs L2's QEMU without credbridge (-device vhost-vsock-pci,
# a hand-written notify_socket string, a socat VSOCK-LISTEN listener): checks
# 1 and 4 only, for telling nested-guest problems from credbridge problems.
#
# Needs root (debootstrap the first time).  Installs busybox-static, socat and
# cpio with apt-get if missing; the kernel comes from build-guest.sh's bookworm
# cache (run if missing).  The assembled initramfs parts are cached in
# .cache/vhost-vsock/ (key: this script + kernel + host package versions);
# credbridge is added fresh on every run.  One L1 boot: 1.5 to 3.5 minutes
# under TCG, most of it L2's kernel booting under nested TCG (55-130 s).
# Prints PASS/FAIL lines, then "N passed, N failed" and the wall time; exits 1
# on any failure.
set -uo pipefail
export E2E_PROG=vhost-vsock-e2e.sh
# shellcheck source=tests/e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
T_START=$(date +%s.%N)

CREDBRIDGE="" RUNNER=credbridge TIMEOUT=900
while [ $# -gt 0 ]; do
    case "$1" in
        --credbridge) CREDBRIDGE="$2"; shift 2 ;;
        --runner) RUNNER="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
        *) e2e_die "unknown argument: $1" ;;
    esac
done
case "$RUNNER" in credbridge|plain) ;; *) e2e_die "--runner credbridge|plain" ;; esac
case "$TIMEOUT" in ''|*[!0-9]*) e2e_die "--timeout takes whole seconds" ;; esac
# L2 alone needs ~2 minutes, and L1 keeps 240 s for the checks after it
[ "$TIMEOUT" -ge 300 ] || e2e_die "--timeout must be at least 300 seconds"
[ "$(id -u)" = 0 ] || e2e_die "must run as root (apt-get, and build-guest.sh's debootstrap)"

PASS=0 FAIL=0
pass() { echo "PASS: $*"; PASS=$((PASS + 1)); }
fail() { echo "FAIL: $*"; FAIL=$((FAIL + 1)); }
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
note() { echo "# $*"; }

ROOT_DIR="$(cd "$E2E_DIR/../.." && pwd)"
if [ "$RUNNER" = credbridge ]; then
    if [ -z "$CREDBRIDGE" ]; then
        (cd "$ROOT_DIR" && cargo build --quiet --bin credbridge) || e2e_die "cargo build failed"
        CREDBRIDGE="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/debug/credbridge"
    fi
    [ -x "$CREDBRIDGE" ] || e2e_die "no credbridge binary at $CREDBRIDGE"
fi

# ---------------------------------------------------------------- host tools
# busybox-static: L1 and L2 have no libc of their own for busybox.  socat: the
# notify receiver and the loopback client in L1, the vsock client in L2
# (bookworm's has VSOCK-CONNECT).  The rest is copied from this host as well.
need_packages "$E2E_PROG" busybox-static socat=socat cpio=cpio dpkg-deb=dpkg \
    qemu-system-x86_64=qemu-system-x86 ldd=libc-bin tar=tar sha256sum=coreutils || exit
QEMU_BIN="$(command -v qemu-system-x86_64)"
SOCAT_BIN="$(command -v socat)"
BUSYBOX=/bin/busybox
QEMU_MODDIR=/usr/lib/x86_64-linux-gnu/qemu
[ -f "$QEMU_MODDIR/accel-tcg-x86_64.so" ] || e2e_die "no $QEMU_MODDIR/accel-tcg-x86_64.so (QEMU's TCG module)"

# ---------------------------------------------------------------- kernel
# Only the bookworm kernel is needed from build-guest.sh's cache: its vmlinux
# (PVH, boots fast) and its .deb, for the modules that match it.
GUEST=bookworm
KDEB=""
find_kdeb() {
    local pkg
    pkg="$(sed -n 's/^kernel_package=//p' "$E2E_CACHE/$GUEST/info" 2>/dev/null)"
    KDEB="$E2E_CACHE/debs/$GUEST/$pkg"
    [ -n "$pkg" ] && [ -s "$KDEB" ]
}
if ! e2e_guest_ready "$GUEST" || ! find_kdeb; then
    force=()
    # a complete guest whose kernel .deb was removed: only a rebuild fetches it again
    if e2e_guest_ready "$GUEST"; then force=(--force); fi
    note "building the $GUEST guest for its kernel (build-guest.sh ${force[*]})"
    bash "$E2E_DIR/build-guest.sh" --release "$GUEST" "${force[@]}" || e2e_die "build-guest.sh failed"
    find_kdeb || e2e_die "no kernel .deb for $GUEST in $E2E_CACHE/debs/$GUEST after build-guest.sh"
fi
KERNEL="$(e2e_kernel "$GUEST")"
KVER="$(sed -n 's/^kernel=//p' "$E2E_CACHE/$GUEST/info")"

# ---------------------------------------------------------------- cache
# Everything in the initramfs parts except credbridge comes from this script,
# the kernel .deb and the host's packages, so they make the key.
OUT="$E2E_CACHE/vhost-vsock"
KEY="$( (cat "${BASH_SOURCE[0]}" "$E2E_DIR/lib.sh" | sha256sum; basename "$KDEB"; sha256sum <"$KERNEL"
         dpkg-query -W -f='${Package} ${Version}\n' qemu-system-x86 qemu-system-data seabios \
             socat busybox-static libc6 2>/dev/null) | sha256sum | cut -c1-32)"
mkdir -p "$OUT"

W="$(mktemp -d "${TMPDIR:-/tmp}/vhost-vsock-e2e.XXXXXX")"
L1_PID=""
cleanup() {
    if [ -n "$L1_PID" ]; then kill "$L1_PID" 2>/dev/null; wait "$L1_PID" 2>/dev/null; fi
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

new_root() {
    local r="$1"
    mkdir -p "$r"/{bin,dev,proc,sys,run,tmp,mod,etc,usr/bin,usr/lib,usr/lib64}
    ln -s usr/lib "$r/lib"
    ln -s usr/lib64 "$r/lib64"
    cp "$BUSYBOX" "$r/bin/busybox"
}

L1_MODULES="vhost_iotlb vhost vsock vmw_vsock_virtio_transport_common vhost_vsock vsock_loopback"
L2_MODULES="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"

# ---------------------------------------------------------------- L2 /init
write_l2_init() {
    cat >"$1" <<'EOF'
#!/bin/busybox sh
# PID 1 of L2: report the type 11 strings, send sd_notify to the VMM over
# vsock like systemd >= 256 (connect, write, SHUT_WR, wait for the close), idle.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
up() { cut -d' ' -f1 /proc/uptime; }
idle() { while :; do sleep 3600; done; }
echo "L2-INIT uptime $(up)s"
for m in $(cat /mod/order); do
    insmod "/mod/$m.ko" || echo "L2-ERROR insmod $m failed"
done
echo "L2-MODULES loaded, uptime $(up)s"
# entries/11-*/raw: the 5-byte formatted area (type, length, handle, count),
# then the NUL-terminated strings and one more NUL.
for f in /sys/firmware/dmi/entries/11-*/raw; do
    [ -f "$f" ] && tail -c +6 "$f" | tr '\0' '\n'
done | grep -v '^$' >/strings
echo "L2-STRINGS $(wc -l </strings)"
while IFS= read -r s; do echo "L2-STRING $(echo "$s" | cut -c1-120)"; done </strings
v="$(sed -n 's/^io\.systemd\.credential:vmm\.notify_socket=//p' /strings | head -1)"
echo "L2-NOTIFY-SOCKET ${v:-none}"
case "$v" in
    vsock-stream:*:*) ;;
    *) echo "L2-ERROR no vsock-stream vmm.notify_socket string"; idle ;;
esac
a="${v#vsock-stream:}"
t0=$(up)
# socat: stdin's EOF becomes shutdown(SHUT_WR); -t 60 then waits up to 60 s
# for the host to close its side, as PID 1 waits.
printf 'STATUS=L2 says hello\nREADY=1' | socat -t 60 - "VSOCK-CONNECT:${a%%:*}:${a#*:}" >/reply 2>/socat.err
rc=$?
echo "L2-SENT rc=$rc in $(awk -v a="$t0" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }')s (connect, send, host's close), $(wc -c </reply) bytes back, uptime $(up)s"
[ -s /socat.err ] && sed 's/^/L2-SOCAT /' /socat.err
echo "L2-DONE"
idle
EOF
    chmod 0755 "$1"
}

# ---------------------------------------------------------------- L1 /init
write_l1_init() {
    cat >"$1" <<'EOF'
#!/bin/busybox sh
# PID 1 of L1: load vhost_vsock + vsock_loopback, run credbridge -> QEMU -> L2,
# make the checks, print a report between markers on ttyS0, power off.
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/bin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run
# devtmpfs has no /dev/fd (udev or systemd make it on a real host); QEMU opens
# credbridge's memfds as /dev/fd/N.
ln -s /proc/self/fd /dev/fd
. /etc/vhost-vsock-e2e.conf

up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "L1 $(up)s: $*"; }
REP=/run/report
: >$REP
pass() { echo "PASS check $*" >>$REP; say "PASS check $*"; }
fail() { echo "FAIL check $*" >>$REP; say "FAIL check $*"; }
info() { echo "INFO $*" >>$REP; }
# alive PID: running, not a zombie waiting to be reaped
# (builtins only: every process started here takes L1's one vCPU from L2)
alive() {
    local st
    read -r st 2>/dev/null <"/proc/$1/stat" || return 1
    case "$st" in *") Z "*) return 1 ;; esac
}
# wait_until SECONDS PID COMMAND...: 0 when COMMAND succeeds, 1 on timeout,
# 2 if PID (may be empty) ends first
wait_until() {
    local tenths=$(($1 * 10)) p=$2 i=0
    shift 2
    while [ $tenths -gt 0 ]; do
        "$@" && return 0
        if [ -n "$p" ] && ! alive "$p"; then "$@" && return 0; return 2; fi
        # every 0.5 s for 10 s, then every 2 s, so that a long wait leaves
        # L1's vCPU to L2
        if [ $i -lt 20 ]; then sleep 0.5; tenths=$((tenths - 5)); else sleep 2; tenths=$((tenths - 20)); fi
        i=$((i + 1))
    done
    "$@" && return 0
    return 1
}
has() { grep -q -- "$2" "$1" 2>/dev/null; }
# L2's serial console, without the tty's \r
l2log() { tr -d '\r' 2>/dev/null </run/l2.serial; }
qemu_procs() {
    for d in /proc/[0-9]*; do
        case "$(cat "$d/comm" 2>/dev/null)" in
            qemu-system*) echo "${d#/proc/}:$(sed 's/^[0-9]* ([^)]*) \(.\).*/\1/' "$d/stat" 2>/dev/null)" ;;
        esac
    done | tr '\n' ' '
}

finish() {
    echo CREDBRIDGE-E2E-BEGIN
    cat $REP
    [ -f /run/l2.serial ] && tr -d '\r' </run/l2.serial | grep -v '^$' | sed 's/^/L2 /'
    [ -f /run/cb.err ] && sed 's/^/CB /' /run/cb.err
    [ -f /run/clash.err ] && sed 's/^/CLASH /' /run/clash.err
    [ -f /run/own.err ] && sed 's/^/OWN /' /run/own.err
    [ -f /run/notify.raw ] && notify_lines | sed 's/^/NOTIFY /'
    if grep -q '^FAIL' $REP; then dmesg | tail -15 | sed 's/^/DMESG /'; fi
    echo CREDBRIDGE-E2E-END
    sync
    poweroff -f
}

say "init; runner $RUNNER"
for m in $(cat /mod/order); do
    insmod "/mod/$m.ko" 2>/run/insmod.err || { fail "setup: insmod $m: $(cat /run/insmod.err)"; finish; }
done
[ -c /dev/vhost-vsock ] || { fail "setup: no /dev/vhost-vsock after insmod"; finish; }
info "modules loaded: $(cat /mod/order)"

# L2's QEMU; its serial console goes to a file
L2_ARGS="-machine pc -accel tcg -m 192M -nodefaults -display none -no-reboot -serial file:/run/l2.serial -kernel /l2/vmlinux -initrd /l2/initrd"
L2_APPEND="console=ttyS0 panic=-1 quiet"

if [ "$RUNNER" = plain ]; then
    # the stand-in: QEMU opens /dev/vhost-vsock itself, socat listens on the port
    socat -u "VSOCK-LISTEN:$PLAIN_PORT" OPEN:/run/plain.msg,creat >/run/plain.err 2>&1 &
    # shellcheck disable=SC2086
    qemu-system-x86_64 $L2_ARGS -append "$L2_APPEND" -device vhost-vsock-pci,guest-cid=$CID \
        -smbios type=11,value=io.systemd.credential:vmm.notify_socket=vsock-stream:2:$PLAIN_PORT \
        -smbios "type=11,value=io.systemd.credential:greeting=hello from L1" \
        </dev/null >/run/qemu.out 2>/run/cb.err &
    Q=$!
    say "QEMU started (pid $Q); waiting for L2's message on vsock port $PLAIN_PORT"
    if wait_until "$READY_WAIT" "$Q" has /run/plain.msg READY=1; then
        wait_until 30 "$Q" has /run/l2.serial L2-SENT
        if has /run/plain.msg 'STATUS=L2 says hello'; then
            pass "1: L2's message arrived at the stand-in listener: $(tr '\n' ' ' </run/plain.msg)"
        else
            fail "1: READY=1 arrived without the STATUS: $(tr '\n' ' ' </run/plain.msg)"
        fi
    else
        fail "1: no READY=1 from L2 at the stand-in listener within ${READY_WAIT}s (QEMU alive: $(alive $Q && echo yes || echo no))"
    fi
    seen="$(l2log | sed -n 's/^L2-NOTIFY-SOCKET //p' | head -1)"
    if [ "$seen" = "vsock-stream:2:$PLAIN_PORT" ]; then
        pass "4: L2 read vmm.notify_socket=$seen"
    else
        fail "4: L2 read vmm.notify_socket=${seen:-nothing}, want vsock-stream:2:$PLAIN_PORT"
    fi
    kill $Q 2>/dev/null
    finish
fi

# ------------------------------------------------ credbridge
# A datagram receiver standing in for systemd.  socat -v prints a header line
# before each datagram, so messages stay apart in notify.raw.
socat -u -v UNIX-RECV:/run/notify.sock OPEN:/dev/null 2>/run/notify.raw &
wait_until 10 "" test -S /run/notify.sock || { fail "setup: the notify receiver did not start"; finish; }
# one message per block, blocks separated by "--"
notify_msgs() { { cat /run/notify.raw; echo; } | sed 's#> [0-9/]* [0-9:.]*  length=[0-9]* from=[0-9]* to=[0-9]*$#\n--#'; }
# one message per line, its newlines as \n
notify_lines() {
    notify_msgs | awk '/^--$/ { if (m != "") print m; m = ""; next }
                       { m = (m == "" ? $0 : m "\\n" $0) } END { if (m != "") print m }'
}
# each message starts a line in notify.raw, and so does each of its fields
notify_ready() { grep -q '^READY=1' /run/notify.raw; }
# msg_no REGEX: number of the first message with a line matching REGEX
msg_no() { notify_msgs | awk -v re="$1" '/^--$/ { n++; next } $0 ~ re { print n; exit }'; }

mkdir -m 0700 /run/creds
printf 'hello from L1' >/run/creds/greeting
chmod 0400 /run/creds/greeting

say "starting credbridge (--ready guest --vsock-cid $CID)"
# shellcheck disable=SC2086
NOTIFY_SOCKET=/run/notify.sock credbridge run --ready guest --vsock-cid $CID --ready-timeout 900s \
    --stop-timeout 5s --credentials-dir /run/creds -- \
    /usr/bin/qemu-system-x86_64 $L2_ARGS -append "$L2_APPEND" \
    </dev/null >/run/cb.out 2>/run/cb.err &
CB=$!
LISTEN="listening for the guest's notifications on vsock port"
wait_until 120 $CB has /run/cb.err "$LISTEN"
PORT="$(sed -n "s/.*$LISTEN \([0-9]*\).*/\1/p" /run/cb.err | head -1)"
if [ -z "$PORT" ]; then
    fail "setup: credbridge logged no \"$LISTEN PORT\" within 120 s (alive: $(alive $CB && echo yes || echo no))"
    kill $CB 2>/dev/null
    finish
fi
say "credbridge listens on vsock port $PORT; QEMU: $(qemu_procs)"

# ------------------------------------------------ 2: loopback from L1 itself
# While L2's kernel still boots (~75 s under nested TCG): a READY=1 from CID 1.
printf 'READY=1' | socat -t 5 - "VSOCK-CONNECT:1:$PORT" >/dev/null 2>/run/lo.err
lo_rc=$?
IGN='ignored a notification connection from vsock CID 1'
wait_until 30 $CB has /run/cb.err "$IGN"
logged=$?
sleep 3
if ! alive $CB; then
    fail "2: credbridge exited before the loopback test could be judged (socat rc $lo_rc: $(head -1 /run/lo.err))"
elif has /run/l2.serial L2-SENT; then
    fail "2: inconclusive: L2 had already sent its READY=1 when the loopback test ran"
elif notify_ready; then
    fail "2: READY=1 on the notify socket after a loopback connection from CID 1 (socat rc $lo_rc)"
elif [ $logged != 0 ]; then
    fail "2: no READY=1, but credbridge did not log \"$IGN\" (socat rc $lo_rc: $(head -1 /run/lo.err))"
else
    pass "2: READY=1 from L1 over vsock loopback (CID 1) ignored, logged: $(grep -m1 "$IGN" /run/cb.err | cut -c1-160)"
fi

# ------------------------------------------------ 3: the CID is taken
# The second credbridge runs QEMU through a wrapper that records each call.
mkdir -p /run/clash
printf '#!/bin/sh\necho "$*" >>/run/clash.calls\nexec /usr/bin/qemu-system-x86_64 "$@"\n' >/run/clash/qemu-system-x86_64
chmod 0755 /run/clash/qemu-system-x86_64
# shellcheck disable=SC2086
timeout 60 credbridge run --ready guest --vsock-cid $CID --ready-timeout 60s --stop-timeout 5s \
    --credentials-dir /run/creds -- /run/clash/qemu-system-x86_64 \
    -machine pc -accel tcg -m 64M -nodefaults -display none -no-reboot -serial file:/run/clash.serial \
    -kernel /l2/vmlinux -initrd /l2/initrd -append "$L2_APPEND" </dev/null >/dev/null 2>/run/clash.err
crc=$?
vm_calls=$(grep -c -- '-kernel' /run/clash.calls 2>/dev/null)
if [ $crc = 125 ] && has /run/clash.err "CID $CID is in use" && [ "${vm_calls:-0}" = 0 ] && alive $CB; then
    pass "3: second credbridge with --vsock-cid $CID: exit 125, no QEMU started, first still runs: $(grep -m1 "CID $CID is in use" /run/clash.err | cut -c1-160)"
else
    fail "3: second credbridge: exit $crc (want 125), QEMU started ${vm_calls:-0} times (want 0), first alive: $(alive $CB && echo yes || echo no); stderr: $(tail -2 /run/clash.err | tr '\n' ' ' | cut -c1-200)"
fi

# ------------------------------------------------ 6: the argv's own device
# microvm.nix's form, -device vhost-vsock-pci,guest-cid=N: credbridge takes the
# CID from the argv and QEMU opens /dev/vhost-vsock itself.  With CID 3 held by
# the first VM, the kernel refuses it to QEMU, and credbridge must pass QEMU's
# exit status on (1, not its own 125).
: >/run/clash.calls
# shellcheck disable=SC2086
timeout 120 credbridge run --ready guest --ready-timeout 60s --stop-timeout 5s \
    --credentials-dir /run/creds -- /run/clash/qemu-system-x86_64 \
    -machine pc -accel tcg -m 64M -nodefaults -display none -no-reboot -serial file:/run/own.serial \
    -kernel /l2/vmlinux -initrd /l2/initrd -append "$L2_APPEND" \
    -device vhost-vsock-pci,guest-cid=$CID </dev/null >/dev/null 2>/run/own.err
orc=$?
own_calls=$(grep -c -- "guest-cid=$CID" /run/clash.calls 2>/dev/null)
if [ $orc = 1 ] && [ "${own_calls:-0}" = 1 ] && has /run/own.err "from guest CID $CID only" \
        && has /run/own.err 'unable to set guest cid' && alive $CB; then
    pass "6: the argv's own -device vhost-vsock-pci,guest-cid=$CID: credbridge listened for CID $CID, QEMU started once and was refused the CID by the kernel, exit 1 passed on: $(grep -m1 'unable to set guest cid' /run/own.err | cut -c1-160)"
else
    fail "6: the argv's own device: exit $orc (want QEMU's 1), QEMU started ${own_calls:-0} times (want 1), first alive: $(alive $CB && echo yes || echo no); stderr: $(tail -3 /run/own.err | tr '\n' ' ' | cut -c1-300)"
fi

# ------------------------------------------------ 1: the guest's READY=1
say "waiting up to ${READY_WAIT}s for the guest's READY=1"
wait_until "$READY_WAIT" $CB notify_ready
rrc=$?
t_ready=$(up)
# L2's own account of the exchange, printed once the host closed
[ $rrc = 0 ] && wait_until 30 "" has /run/l2.serial L2-SENT
status="$(notify_msgs | grep '^STATUS=guest: ' | head -1)"
nready=$(notify_msgs | grep -cx 'READY=1')
# message numbers: the guest's STATUS must come before credbridge's READY=1
n_status=$(msg_no '^STATUS=guest: ')
n_ready=$(msg_no '^READY=1$')
if [ $rrc = 0 ] && [ "$nready" = 1 ] && [ "$status" = "STATUS=guest: L2 says hello" ] \
        && [ "${n_status:-0}" -lt "${n_ready:-0}" ]; then
    pass "1: the guest's READY=1 reached NOTIFY_SOCKET from credbridge at L1 uptime ${t_ready}s, with $status"
elif [ $rrc = 0 ]; then
    fail "1: READY=1 arrived ($nready times, want 1, as message ${n_ready:-?}), guest status: ${status:-none} (want STATUS=guest: L2 says hello, before READY=1: message ${n_status:-?})"
else
    fail "1: no READY=1 within ${READY_WAIT}s (credbridge alive: $(alive $CB && echo yes || echo no)); L2 said: $(l2log | grep -m1 L2-SENT)"
fi
info "L2: $(l2log | grep -m1 L2-SENT)"

# ------------------------------------------------ 4: the port L2 saw
seen="$(l2log | sed -n 's/^L2-NOTIFY-SOCKET //p' | head -1)"
if [ "$seen" = "vsock-stream:2:$PORT" ]; then
    pass "4: L2 read vmm.notify_socket=$seen, the port credbridge logged"
else
    fail "4: L2 read vmm.notify_socket=${seen:-nothing}, credbridge logged port $PORT"
fi

# ------------------------------------------------ 5: SIGTERM
before="$(qemu_procs)"
t0=$(up)
if ! alive $CB; then
    wait $CB
    fail "5: credbridge had already exited (code $?) before SIGTERM; QEMU: $(qemu_procs)"
    finish
fi
kill -TERM $CB
stopped() { ! alive $CB; }
wait_until 60 "" stopped
if alive $CB; then
    fail "5: credbridge still runs 60 s after SIGTERM; QEMU: $(qemu_procs)"
    kill -KILL $CB
else
    wait $CB
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }')
    sleep 1
    left="$(qemu_procs)"
    stopping=no
    notify_msgs | grep -qx 'STOPPING=1' && stopping=yes
    if [ -z "$left" ]; then
        pass "5: SIGTERM: credbridge exited with code $rc after ${secs}s, no QEMU left (before: $before), STOPPING=1 sent: $stopping"
    else
        fail "5: credbridge exited with code $rc after ${secs}s but QEMU is left: $left"
    fi
fi
finish
EOF
    chmod 0755 "$1"
}

# ---------------------------------------------------------------- build the cached parts
build_parts() {
    local b k m f l1 l2
    b="$(mktemp -d "$OUT/build.XXXXXX")" || return 1
    k="$b/kernel" l1="$b/l1" l2="$b/l2"
    mkdir -p "$k"
    # the three module directories only (the whole tree is ~400 MB unpacked)
    dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$k" --wildcards \
        "./lib/modules/$KVER/kernel/drivers/vhost/*" "./lib/modules/$KVER/kernel/drivers/virtio/*" \
        "./lib/modules/$KVER/kernel/net/vmw_vsock/*" || { echo "cannot unpack modules from $KDEB" >&2; return 1; }
    put_module() { # root name
        f="$(find "$k" -name "$2.ko*" -print -quit)"
        [ -n "$f" ] || { echo "no module $2 in $KDEB" >&2; return 1; }
        case "$f" in
            *.ko) cp "$f" "$1/mod/$2.ko" ;;
            *.ko.xz) xz -dc "$f" >"$1/mod/$2.ko" ;;
            *.ko.zst) zstd -dcq "$f" >"$1/mod/$2.ko" ;;
            *) echo "unknown module format: $f" >&2; return 1 ;;
        esac
    }

    new_root "$l2"
    for m in $L2_MODULES; do put_module "$l2" "$m" || return 1; done
    echo "$L2_MODULES" >"$l2/mod/order"
    e2e_copy_elf "$l2" "$SOCAT_BIN" || return 1
    write_l2_init "$l2/init"
    e2e_make_cpio "$l2" "$b/l2-initrd.cpio" || return 1

    new_root "$l1"
    for m in $L1_MODULES; do put_module "$l1" "$m" || return 1; done
    echo "$L1_MODULES" >"$l1/mod/order"
    e2e_copy_elf "$l1" "$SOCAT_BIN" || return 1
    e2e_copy_elf "$l1" "$QEMU_BIN" /usr/bin/qemu-system-x86_64 || return 1
    e2e_copy_elf "$l1" "$QEMU_MODDIR/accel-tcg-x86_64.so" || return 1
    # QEMU looks for firmware in /usr/share/qemu; Debian keeps SeaBIOS elsewhere
    mkdir -p "$l1/usr/share/qemu" "$l1/l2"
    for f in /usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin \
             /usr/share/qemu/kvmvapic.bin /usr/share/qemu/pvh.bin; do
        [ -f "$f" ] || f="/usr/share/qemu/${f##*/}"
        cp -L "$f" "$l1/usr/share/qemu/" || return 1
    done
    cp "$KERNEL" "$l1/l2/vmlinux"
    cp "$b/l2-initrd.cpio" "$l1/l2/initrd"
    write_l1_init "$l1/init"
    e2e_make_cpio "$l1" "$b/l1-static.cpio" || return 1

    mv "$b/l1-static.cpio" "$b/l2-initrd.cpio" "$OUT/"
    echo "$KEY" >"$OUT/key"
    rm -rf "$b"
}

exec 9>"$OUT.lock"
flock 9
if [ -f "$OUT/key" ] && [ "$(cat "$OUT/key")" = "$KEY" ] && [ -s "$OUT/l1-static.cpio" ]; then
    note "cached L1/L2 parts are up to date ($OUT)"
else
    t0=$(date +%s.%N)
    rm -rf "$OUT"/build.* "$OUT/key"
    build_parts || e2e_die "assembling L1/L2 failed"
    note "assembled L1 ($(( $(stat -c %s "$OUT/l1-static.cpio") / 1048576 )) MiB) and L2 ($(( $(stat -c %s "$OUT/l2-initrd.cpio") / 1024 )) KiB) initramfs in $(secs_since "$t0")s"
fi
flock -u 9
exec 9>&-

# ---------------------------------------------------------------- this run's part
# credbridge (with its libraries) and the settings, appended as a second cpio:
# the kernel unpacks concatenated archives in order.
R="$W/run"
mkdir -p "$R/etc"
if [ "$RUNNER" = credbridge ]; then
    e2e_copy_elf "$R" "$CREDBRIDGE" /usr/local/bin/credbridge || e2e_die "cannot copy $CREDBRIDGE and its libraries"
    # a debug build is ~45 MB of which ~40 MB debug info, all unpacked into L1's RAM
    if command -v strip >/dev/null; then strip --strip-debug "$R/usr/local/bin/credbridge"; fi
fi
# READY_WAIT: L1's wait for the guest's READY=1, leaving time for the report
# before --timeout ends L1.
cat >"$R/etc/vhost-vsock-e2e.conf" <<EOF
RUNNER=$RUNNER
CID=3
PLAIN_PORT=9999
READY_WAIT=$((TIMEOUT - 240))
EOF
e2e_make_cpio "$R" "$W/run.cpio" || e2e_die "cpio failed"
cat "$OUT/l1-static.cpio" "$W/run.cpio" >"$W/l1.initrd"

# ---------------------------------------------------------------- boot L1
ACCEL="$(e2e_accel "$GUEST")"
L1_ARGS=(-machine pc -accel "$ACCEL")
if [ "$ACCEL" = kvm ]; then L1_ARGS+=(-cpu host); fi
# 1 GiB: the ~130 MB initramfs is unpacked into RAM, L2 gets 192 MiB.  One
# vCPU: a second one made the run no faster (L2's vCPU is one thread) and
# kept both host cores busy.
L1_ARGS+=(-m 1024M -smp 1 -nodefaults -display none -no-reboot -serial "file:$W/l1.serial"
          -kernel "$KERNEL" -initrd "$W/l1.initrd" -append "$E2E_APPEND_DEFAULT")
note "booting L1 ($ACCEL, runner $RUNNER, timeout ${TIMEOUT}s); L2's kernel alone takes 55-130 s under nested TCG"
T_BOOT=$(date +%s.%N)
# In the background with its pid known, so that an interrupted run stops it
# (timeout runs in its own process group, out of reach of the terminal's ^C).
: >"$W/l1.serial"
timeout --kill-after=10 "$TIMEOUT" "$QEMU_BIN" "${L1_ARGS[@]}" </dev/null >/dev/null 2>"$W/l1.err" &
L1_PID=$!
# L1's progress lines (outside the report) are shown as they come: a read
# loop, since tr, sed and mawk would hold them back in their buffers.
follow_l1() {
    local line on=0
    while IFS= read -r line; do
        line="${line%$'\r'}"
        case "$line" in
            CREDBRIDGE-E2E-BEGIN) on=1 ;;
            CREDBRIDGE-E2E-END) on=0 ;;
            "") ;;
            *) [ "$on" = 1 ] || echo "# L1| $line" ;;
        esac
    done
}
tail -n +1 -f --pid="$L1_PID" "$W/l1.serial" | follow_l1 &
FOLLOW_PID=$!
wait "$L1_PID"
L1_RC=$?
L1_PID=""
wait "$FOLLOW_PID"
note "L1 ran $(secs_since "$T_BOOT")s (QEMU exit $L1_RC)"

# ---------------------------------------------------------------- report
REPORT="$W/report"
if ! e2e_report "$W/l1.serial" >"$REPORT"; then
    fail "L1 printed no complete report (QEMU exit $L1_RC$([ "$L1_RC" = 124 ] && echo ": timed out after ${TIMEOUT}s"))"
    tail -5 "$W/l1.err" >&2
    # the checks L1 had decided before it stopped, from its progress lines
    tr -d '\r' <"$W/l1.serial" | sed -n 's/^L1 [0-9.]*s: \(\(PASS\|FAIL\) check .*\)$/\1/p' >"$REPORT"
fi
seen_checks=" "
while IFS= read -r line; do
    case "$line" in
        "PASS check "*)
            line="${line#PASS check }"
            seen_checks+="${line%%:*} "
            pass "$line" ;;
        "FAIL check "*)
            line="${line#FAIL check }"
            seen_checks+="${line%%:*} "
            fail "$line" ;;
        "FAIL "*) fail "${line#FAIL }" ;;
        *) note "$line" ;;
    esac
done <"$REPORT"
if [ "$RUNNER" = credbridge ]; then want_checks="1 2 3 4 5 6"; else want_checks="1 4"; fi
for c in $want_checks; do
    case "$seen_checks" in *" $c "*) ;; *) fail "$c: not reached" ;; esac
done

echo "$PASS passed, $FAIL failed; wall time $(secs_since "$T_START")s (runner: $RUNNER)"
[ "$FAIL" = 0 ]
