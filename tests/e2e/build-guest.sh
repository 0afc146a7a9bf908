#!/bin/bash
# Build (or reuse) a minimal Debian guest for credbridge's end-to-end tests.
#
#   tests/e2e/build-guest.sh [--release bookworm|trixie] [--force]
#
# Result, in tests/e2e/.cache/<release>/:
#   vmlinuz      the release's own Debian kernel (linux-image-amd64), bzImage
#   vmlinux      the same kernel as an uncompressed ELF with its PVH entry note;
#                QEMU boots it directly (-kernel), ~5 s faster under TCG
#   initrd.img   the whole root file system as an uncompressed initramfs cpio;
#                /init is the distribution's systemd, so systemd is PID 1 from the
#                first instruction of user space and there is no switch_root
#   info         key=value facts (kernel version, systemd version, dmi_sysfs and
#                qemu_fw_cfg modes, ...)
#   key          hash of this script + release: a different key means rebuild
#
# The guest boots to e2e.target, whose one service prints a report of
# /run/credentials/@system/ to the serial console (format: see tests/e2e/README.md) and
# powers the machine off.  Everything the guest needs is written by this
# script, so its hash is the cache key.  Downloaded .debs are kept in
# .cache/debs/<release>/ so that a rebuild after an edit needs no downloads.
#
# Needs root (debootstrap).  Installs its own tools with apt-get if missing.
set -euo pipefail

RELEASE=bookworm
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASE="$2"; shift 2 ;;
        --release=*) RELEASE="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build-guest.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$RELEASE" in
    bookworm|trixie) ;;
    *) echo "build-guest.sh: unsupported release '$RELEASE' (bookworm|trixie)" >&2; exit 2 ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="$HERE/.cache"
OUT="$CACHE_ROOT/$RELEASE"
SELF="$HERE/build-guest.sh"
KEY="$( (sha256sum <"$SELF"; echo "$RELEASE") | sha256sum | cut -c1-32)"

T0=$(date +%s)
log() { echo "build-guest[$RELEASE] +$(( $(date +%s) - T0 ))s: $*" >&2; }

if [ "$FORCE" = 0 ] && [ -f "$OUT/key" ] && [ "$(cat "$OUT/key")" = "$KEY" ] \
        && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/info" ]; then
    log "cached guest is up to date: $OUT"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "build-guest.sh: must run as root (debootstrap)" >&2
    exit 1
fi

# ---------------------------------------------------------------- host tools
export DEBIAN_FRONTEND=noninteractive
# shellcheck source=tests/host-tools.sh
. "$HERE/../host-tools.sh"
need_packages "build-guest[$RELEASE]" debootstrap=debootstrap qemu-system-x86_64=qemu-system-x86 \
    cpio=cpio dpkg-deb=dpkg /usr/sbin/depmod=kmod \
    /usr/share/keyrings/debian-archive-trixie-stable.gpg=debian-archive-keyring

# ---------------------------------------------------------------- mirror
# The Debian mirror this machine's apt already uses (deb822 or one-line form).
find_mirror() {
    local f u
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        while read -r u; do
            case "$u" in */debian|*/debian/) echo "${u%/}"; return ;; esac
        done < <(sed -n 's/^URIs:[[:space:]]*//Ip' "$f" | tr -s ' \t' '\n')
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        u=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^(http|https|file):/) {print $i; exit}}' "$f" \
            | grep -E '/debian/?$' | head -1 || true)
        [ -n "$u" ] && { echo "${u%/}"; return; }
    done
    echo "http://deb.debian.org/debian"
}
MIRROR="${CREDBRIDGE_E2E_MIRROR:-$(find_mirror)}"
log "mirror $MIRROR"

# ---------------------------------------------------------------- work dir
mkdir -p "$CACHE_ROOT" "$CACHE_ROOT/debs/$RELEASE"
# debootstrap mounts proc/sys inside the target; never leave them behind and
# never let rm cross into a mount.
remove_tree() {
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v w="$1" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r)
    rm -rf --one-file-system "$1"
}
# One build per release at a time; a second caller waits, then finds the cache.
exec 9>"$CACHE_ROOT/$RELEASE.lock"
flock 9
if [ "$FORCE" = 0 ] && [ -f "$OUT/key" ] && [ "$(cat "$OUT/key")" = "$KEY" ]; then
    log "cached guest was built meanwhile: $OUT"
    exit 0
fi
for stale in "$CACHE_ROOT/build-$RELEASE".*; do
    [ -e "$stale" ] && remove_tree "$stale"
done
WORK="$(mktemp -d "$CACHE_ROOT/build-$RELEASE.XXXXXX")"
trap 'remove_tree "$WORK"' EXIT
trap 'exit 130' INT TERM HUP
ROOT="$WORK/root"

# ---------------------------------------------------------------- rootfs
# minbase + systemd as init.  No udev, no dbus, no getty: nothing the report
# needs, and every unit costs seconds under TCG.  libkmod2: systemd >= 256
# dlopen()s it (only a Recommends in trixie) for PID 1's early module loading.
log "debootstrap (minbase + systemd)"
for attempt in 1 2; do
    if debootstrap --variant=minbase --include=systemd,systemd-sysv,libkmod2 \
            --cache-dir="$CACHE_ROOT/debs/$RELEASE" \
            "$RELEASE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        break
    fi
    tail -30 "$WORK/debootstrap.log" >&2
    if [ -f "$ROOT/debootstrap/debootstrap.log" ]; then tail -30 "$ROOT/debootstrap/debootstrap.log" >&2; fi
    remove_tree "$ROOT"
    if [ "$attempt" = 2 ]; then echo "build-guest.sh: debootstrap failed twice" >&2; exit 1; fi
    log "debootstrap failed; retrying once"
    sleep 5
done

# ---------------------------------------------------------------- kernel
# The release's own kernel, fetched with the host's apt but private state dirs,
# so the host's apt configuration is not touched.
log "kernel"
A="$WORK/apt"
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/etc/parts" "$A/etc/prefs" "$A/deb"
: >"$A/status"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $RELEASE main" >"$A/etc/sources.list"
APTO=(-o Dir::Etc::SourceList="$A/etc/sources.list" -o Dir::Etc::SourceParts="$A/etc/parts"
      -o Dir::Etc::Preferences="$A/etc/prefs/none" -o Dir::Etc::PreferencesParts="$A/etc/prefs"
      -o Dir::State::Lists="$A/lists" -o Dir::State::Status="$A/status"
      -o Dir::Cache="$A/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root
      -o Acquire::Languages=none)
apt-get "${APTO[@]}" -qq update
KPKG="$(apt-cache "${APTO[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
[ -n "$KPKG" ] || { echo "build-guest.sh: cannot resolve linux-image-amd64 in $RELEASE" >&2; exit 1; }
KVERSION="$(apt-cache "${APTO[@]}" show --no-all-versions "$KPKG" | awk '/^Version:/{print $2; exit}')"
KDEB="$CACHE_ROOT/debs/$RELEASE/${KPKG}_${KVERSION//:/%3a}_amd64.deb"
if [ ! -s "$KDEB" ]; then
    (cd "$A/deb" && apt-get "${APTO[@]}" -qq download "$KPKG")
    mv "$A/deb/${KPKG}_"*.deb "$KDEB"
fi
# keep only the newest kernel .deb in the download cache
for old in "$CACHE_ROOT/debs/$RELEASE/"linux-image-*.deb; do
    [ "$old" = "$KDEB" ] || rm -f "$old"
done
# Only boot/ is needed (vmlinuz, config); the modules (~400 MB unpacked) only
# if dmi_sysfs turns out to be one.
mkdir -p "$WORK/k"
dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$WORK/k" --wildcards './boot/*'
KCONFIG="$(find "$WORK/k/boot" -name 'config-*' -print -quit)"
[ -n "$KCONFIG" ] || { echo "build-guest.sh: no boot/config-* in $KDEB" >&2; exit 1; }
KVER="${KCONFIG##*/config-}"
cp "$WORK/k/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

# Under TCG the bzImage's own xz decompression costs ~5 s.  The kernel is also
# an ELF with a PVH entry note (CONFIG_PVH=y), which QEMU loads directly with
# -kernel: extract it once here.  Falls back to the bzImage if that fails.
extract_vmlinux() {
    local img="$1" out="$2" magic tool off pair
    for pair in 'fd377a585a00:xz -dc --single-stream' '28b52ffd:zstd -dcq' '1f8b0800:gzip -dc'; do
        magic="${pair%%:*}"; tool="${pair#*:}"
        off="$(perl -0777 -e '$m = pack("H*", shift); $_ = <STDIN>; print index($_, $m)' "$magic" <"$img" 2>/dev/null || echo -1)"
        [ "$off" -ge 0 ] 2>/dev/null || continue
        tail -c +$((off + 1)) "$img" | $tool >"$out" 2>/dev/null || true
        if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = "7f454c46" ]; then
            # XEN_ELFNOTE_PHYS32_ENTRY (18) is the PVH entry point
            if ! command -v readelf >/dev/null || readelf -n "$out" 2>/dev/null | grep -q '(0x00000012)'; then
                return 0
            fi
        fi
    done
    rm -f "$out"
    return 1
}
if extract_vmlinux "$WORK/vmlinuz" "$WORK/vmlinux"; then
    KERNEL_BOOT=pvh
else
    log "no PVH vmlinux could be extracted; guests will boot the bzImage (slower)"
    KERNEL_BOOT=bzimage
fi

# dmi_sysfs: systemd reads /sys/firmware/dmi/entries/11-*/raw when PID 1 imports
# credentials, long before udev runs.  Debian builds it in (CONFIG_DMI_SYSFS=y
# in bookworm's 6.1 and trixie's 6.12).
# qemu_fw_cfg: the fw_cfg credentials (/sys/firmware/qemu_fw_cfg/by_name/...) need
# it, and Debian builds it as a module (CONFIG_FW_CFG_SYSFS=m in both).
# A module goes into the guest with a modules.dep: PID 1's kmod_setup() loads
# "dmi-sysfs" and, when it detects KVM or QEMU, "qemu_fw_cfg" itself, before it
# imports credentials (src/core/kmod-setup.c; both entries are in 252's and
# 257's kmod_table).  Only drivers/firmware/ is unpacked, not ~400 MB of modules.
kconfig() { local v; v="$(awk -F= -v k="$1" '$1==k{print $2}' "$KCONFIG")"; echo "${v:-n}"; }
DMI_SYSFS="$(kconfig CONFIG_DMI_SYSFS)"
FW_CFG_SYSFS="$(kconfig CONFIG_FW_CFG_SYSFS)"
SHIP=()
for pair in "dmi-sysfs:$DMI_SYSFS" "qemu_fw_cfg:$FW_CFG_SYSFS"; do
    case "${pair#*:}" in
        y) ;;
        m) SHIP+=("${pair%%:*}") ;;
        *) echo "build-guest.sh: kernel $KVER has no ${pair%%:*} (${pair#*:})" >&2; exit 1 ;;
    esac
done
if [ ${#SHIP[@]} -gt 0 ]; then
    dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$WORK/k" --wildcards \
        '*/kernel/drivers/firmware/*' '*/modules.order' '*/modules.builtin*'
    KMODS="$(find "$WORK/k/usr/lib/modules" "$WORK/k/lib/modules" -maxdepth 1 -name "$KVER" -print -quit 2>/dev/null || true)"
    [ -n "$KMODS" ] || { echo "build-guest.sh: no modules for $KVER in $KDEB" >&2; exit 1; }
    queue=("${SHIP[@]}") got=()
    while [ ${#queue[@]} -gt 0 ]; do
        m="${queue[0]}"; queue=("${queue[@]:1}")
        case " ${got[*]} " in *" $m "*) continue ;; esac
        f="$(find "$KMODS/kernel" \( -name "$m.ko*" -o -name "${m//-/_}.ko*" \) -print -quit)"
        [ -n "$f" ] || { echo "build-guest.sh: module $m not found under drivers/firmware" >&2; exit 1; }
        rel="${f#"$KMODS/"}"
        mkdir -p "$ROOT/usr/lib/modules/$KVER/$(dirname "$rel")"
        cp "$f" "$ROOT/usr/lib/modules/$KVER/$rel"
        got+=("$m")
        read -ra deps < <(/sbin/modinfo -F depends "$f" | tr ',' ' ') || true
        queue+=("${deps[@]}")
    done
    cp "$KMODS"/modules.order "$KMODS"/modules.builtin* "$ROOT/usr/lib/modules/$KVER/" 2>/dev/null || true
    # usrmerge: /lib is a symlink to usr/lib in both releases
    chroot "$ROOT" /sbin/depmod "$KVER" 2>/dev/null || /sbin/depmod -b "$ROOT/usr" "$KVER" || /sbin/depmod -b "$ROOT" "$KVER"
    log "shipped modules: ${got[*]}"
fi

# ---------------------------------------------------------------- guest config
log "configuring guest"
# PID 1: the kernel runs /init from the initramfs, and /init IS systemd, so the
# distribution's systemd is PID 1 from the first instruction of user space and
# imports the credentials exactly as on a real machine.  (dmi_sysfs: see above.)
ln -sfn /lib/systemd/systemd "$ROOT/init"

# Not a first boot (no machine-id generation, no preset-all), fixed id.
echo "c0ffee00c0ffee00c0ffee00c0ffee00" >"$ROOT/etc/machine-id"
echo "credbridge-e2e" >"$ROOT/etc/hostname"
: >"$ROOT/etc/fstab"

cat >"$ROOT/usr/local/sbin/credbridge-e2e-report" <<'EOF'
#!/bin/bash
# Report every credential PID 1 imported, between markers, on the serial console.
# Line format (one credential per line, name last so it may contain spaces):
#   CRED <size> <sha256> <base64 of content, or - if larger than 16384> <name>
shopt -s nullglob dotglob
D=/run/credentials/@system
echo
echo "CREDBRIDGE-E2E-BEGIN"
echo "SYSTEMD $(systemctl --version | head -1)"
echo "KERNEL $(uname -r)"
echo "OS $(. /etc/os-release; echo "$PRETTY_NAME")"
echo "UPTIME $(cut -d' ' -f1 /proc/uptime)"
for e in /sys/firmware/dmi/entries/11-*; do
    echo "DMI11 ${e##*/} length=$(cat "$e/length") raw=$(stat -c %s "$e/raw" 2>/dev/null || echo ?) rawbytes=$(wc -c <"$e/raw")"
done
# Which fw_cfg credentials the firmware offered (qemu_fw_cfg loaded), names only.
if [ -d /sys/firmware/qemu_fw_cfg ]; then
    echo "FWCFG $(ls /sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials 2>/dev/null | tr '\n' ' ')"
else
    echo "FWCFG absent"
fi
n=0
if [ -d "$D" ]; then
    for f in "$D"/*; do
        [ -f "$f" ] || continue
        name="${f##*/}"
        size=$(stat -c %s "$f")
        sum=$(sha256sum <"$f" | cut -d' ' -f1)
        if [ "$size" -le 16384 ]; then data=$(base64 -w0 <"$f"); [ -n "$data" ] || data="="; else data=-; fi
        echo "CRED $size $sum $data $name"
        n=$((n+1))
    done
    echo "CREDDIR $(stat -c '%a %U %F' "$D")"
else
    echo "CREDDIR missing"
fi
echo "COUNT $n"
echo "CREDBRIDGE-E2E-END"
EOF
chmod 0755 "$ROOT/usr/local/sbin/credbridge-e2e-report"

# The report runs as soon as PID 1 has set itself up: credentials are imported
# by PID 1 before it starts any unit, so waiting for sysinit.target (journald,
# tmpfiles, sysctl, ... : ~4 s under TCG) would test nothing more.
cat >"$ROOT/etc/systemd/system/credbridge-e2e-report.service" <<'EOF'
[Unit]
Description=credbridge e2e: report imported credentials, then power off
DefaultDependencies=no
SuccessAction=poweroff-immediate
FailureAction=poweroff-immediate

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/credbridge-e2e-report
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no
EOF

cat >"$ROOT/etc/systemd/system/e2e.target" <<'EOF'
[Unit]
Description=credbridge e2e
DefaultDependencies=no
Wants=credbridge-e2e-report.service
AllowIsolate=yes
EOF
ln -sfn e2e.target "$ROOT/etc/systemd/system/default.target"

# Generators cost a fork+exec each under TCG and produce nothing this guest
# uses (no fstab, no gettys, no disks).
rm -f "$ROOT"/usr/lib/systemd/system-generators/* "$ROOT"/lib/systemd/system-generators/* 2>/dev/null || true

# Quiet PID 1: no status lines on the console unless something fails.
mkdir -p "$ROOT/etc/systemd/system.conf.d"
cat >"$ROOT/etc/systemd/system.conf.d/e2e.conf" <<'EOF'
[Manager]
ShowStatus=error
DefaultTimeoutStartSec=60s
EOF

# ---------------------------------------------------------------- trim
# Nothing here is used at boot; a smaller cpio unpacks faster.
rm -rf "$ROOT"/usr/share/{doc,man,info,locale,i18n,lintian,bug} \
       "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log \
       "$ROOT"/debootstrap
mkdir -p "$ROOT/usr/share/locale"

# ---------------------------------------------------------------- initramfs
log "packing initramfs"
# shellcheck disable=SC2016 # ${Version} is dpkg-query's, not ours
SYSTEMD_VER="$(chroot "$ROOT" dpkg-query -W -f='${Version}' systemd)"
(cd "$ROOT" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
    | cpio --null --create --format=newc --quiet) >"$WORK/initrd.img"

{
    echo "release=$RELEASE"
    echo "kernel=$KVER"
    echo "kernel_package=$(basename "$KDEB")"
    echo "systemd=$SYSTEMD_VER"
    echo "dmi_sysfs=$DMI_SYSFS"
    echo "fw_cfg_sysfs=$FW_CFG_SYSFS"
    echo "kernel_boot=$KERNEL_BOOT"
    echo "initrd_bytes=$(stat -c %s "$WORK/initrd.img")"
    echo "mirror=$MIRROR"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$(( $(date +%s) - T0 ))"
} >"$WORK/info"
echo "$KEY" >"$WORK/key"

mkdir -p "$OUT"
rm -f "$OUT/key"   # invalid while files are being replaced
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
rm -f "$OUT/vmlinux"
if [ "$KERNEL_BOOT" = pvh ]; then mv -f "$WORK/vmlinux" "$OUT/vmlinux"; fi
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
mv -f "$WORK/info" "$OUT/info"
mv -f "$WORK/key" "$OUT/key"
log "built in $(( $(date +%s) - T0 ))s: $OUT"
cat "$OUT/info" >&2
