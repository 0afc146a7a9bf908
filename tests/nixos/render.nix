# Writes out what nixos/module.nix generates for a host, from an evaluated
# configuration (tests/nixos/stub/eval.nix or tests/nixos/real-eval.nix):
#
#   files."microvm@NAME.service.d/overrides.conf"   the per-VM drop-in NixOS
#       writes for microvm@NAME: the module's lines merged with microvm.nix's
#       (X-RestartIfChanged=, Type=, restartTriggers), rendered the way
#       NixOS renders serviceConfig (one line per list element, keys in sorted
#       order). The one line NixOS adds here from something else than
#       serviceConfig is `[Unit] X-Restart-Triggers=`, from restartTriggers
#       (microvm.nix's `path = mkForce [ ]` leaves no Environment=PATH=). It
#       is shown as older NixOS wrote it, with the triggers themselves;
#       current NixOS writes them into a file X-Restart-Triggers-microvm@NAME
#       and puts that file's path on the line, so the line changes exactly
#       when they do;
#   files."NAME/<program>"   the wrapper script that the guest's
#       microvm.cloud-hypervisor.package or microvm.qemu.package runs as
#       bin/cloud-hypervisor or bin/qemu-system-<arch>;
#   files."NAME/package.txt"   the wrapper package's name, version and build
#       script, and for QEMU what microvm.nix's runner reads of it
#       (configureFlags, and the QEMU inside after its .override);
#   otherPackages."NAME": the name of the guest's package of the other
#       hypervisor (microvm.runner has a runner for each, so it can be built);
#   touchedUnits: the VMs whose microvm@NAME carries the module's settings
#       (NotifyAccess=), whether or not services.credbridge enables them;
#   failedAssertions, warnings.
# Builtins only, so both evaluators share it unchanged.
{ evaluated }:

let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    isAttrs
    isBool
    isList
    listToAttrs
    map
    ;
  config = evaluated.config;

  strip = v: if isAttrs v && (v._type or null) == "override" then strip v.content else v;
  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;
  section =
    attrs:
    concatStringsSep "" (
      map (
        n:
        let
          v = strip attrs.${n};
        in
        concatStringsSep "" (map (x: "${n}=${toOption x}\n") (if isList v then v else [ v ]))
      ) (attrNames attrs)
    );

  guestOf = name: config.microvm.vms.${name}.config.config;
  # VMs with a hypervisor the module wraps; for others only the assertion
  # speaks.
  enabled = filter (
    n:
    config.services.credbridge.vms.${n}.enable
    && builtins.elem (guestOf n).microvm.hypervisor [ "cloud-hypervisor" "qemu" ]
  ) (attrNames config.services.credbridge.vms);

  filesFor =
    name:
    let
      unit = config.systemd.services."microvm@${name}";
      guest = guestOf name;
      hypervisor = guest.microvm.hypervisor;
      wrapper = guest.microvm.${hypervisor}.package;
      # What microvm.nix's QEMU runner does with the package when
      # microvm.optimize.enable is on (its default), lib/runners/qemu.nix.
      optimized = wrapper.override (oa: {
        nixosTestRunner = true;
      });
    in
    [
      {
        name = "microvm@${name}.service.d/overrides.conf";
        value =
          "# Rendered by tests/nixos/check.sh from nixos/module.nix and microvm.nix's\n"
          + "# per-VM definitions for tests/nixos/example-host.nix: the [Unit] and\n"
          + "# [Service] lines of the drop-in NixOS writes as\n"
          + "# microvm@${name}.service.d/overrides.conf.\n"
          + "[Unit]\n"
          + "X-Restart-Triggers=${toString unit.restartTriggers}\n"
          + "\n"
          + "[Service]\n"
          + section unit.serviceConfig;
      }
      {
        name = "${name}/${wrapper.meta.mainProgram}";
        value = wrapper.passthru.script.text;
      }
      {
        name = "${name}/package.txt";
        value =
          "name: ${wrapper.name}\nversion: ${wrapper.version}\n"
          + "bin/${wrapper.meta.mainProgram} -> ${wrapper.passthru.script}\n"
          + (
            if hypervisor == "qemu" then
              "configureFlags: ${toString wrapper.configureFlags}\n"
              + "after .override (microvm.optimize.enable): ${optimized.name}, runs ${optimized.passthru.unwrapped.name}\n"
            else
              ""
          )
          + "build:\n${wrapper.buildCommand}";
      }
    ];
in
{
  files = listToAttrs (builtins.concatLists (map filesFor enabled));
  otherPackages = listToAttrs (
    map (name: {
      inherit name;
      value =
        (guestOf name).microvm.${
          if (guestOf name).microvm.hypervisor == "qemu" then "cloud-hypervisor" else "qemu"
        }.package.name;
    }) enabled
  );
  touchedUnits = filter (
    n:
    config.systemd.services ? "microvm@${n}"
    && config.systemd.services."microvm@${n}".serviceConfig ? NotifyAccess
  ) (attrNames config.microvm.vms);
  failedAssertions = map (a: a.message) (filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  overrideStrategy = map (n: config.systemd.services."microvm@${n}".overrideStrategy) enabled;
}
