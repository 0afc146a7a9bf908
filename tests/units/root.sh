# shellcheck shell=bash
# Sourced by tests/units/verify.sh and tests/nixos/check.sh: builds a root
# tree for `systemd-analyze verify --root=`. Expects $binary (the file to
# install as /usr/local/bin/credbridge).

# new_root DIR: an empty root with the host's system units and the stand-ins
# for every executable the units and the microvm.nix stub name.
new_root() {
    local root=$1
    mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin" \
        "$root/usr/bin"
    # Targets and services the units order against (sysinit.target,
    # network.target, systemd-networkd.service ...). /lib is /usr/lib on Debian.
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    # shellcheck disable=SC2154 # set by the sourcing script
    install -m 0755 "$binary" "$root/usr/local/bin/credbridge"
    install -m 0755 /bin/true "$root/usr/bin/cloud-hypervisor"
    local vm
    for vm in demo myvm; do
        mkdir -p "$root/var/lib/microvms/$vm/current/bin" "$root/var/lib/microvms/$vm/booted/bin"
        for f in microvm-run tap-up macvtap-up pci-setup virtiofsd-run; do
            install -m 0755 /bin/true "$root/var/lib/microvms/$vm/current/bin/$f"
        done
        install -m 0755 /bin/true "$root/var/lib/microvms/$vm/booted/bin/microvm-shutdown"
    done
    for s in microvm-pre-start microvm-post-stop; do
        mkdir -p "$root/nix/store/stub-unit-script-$s/bin"
        install -m 0755 /bin/true "$root/nix/store/stub-unit-script-$s/bin/$s"
    done
}
