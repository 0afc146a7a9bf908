# Writes out what nixos/module.nix generates for a host, from an evaluated
# configuration (tests/nixos/stub/eval.nix or tests/nixos/real-eval.nix):
#
#   files."microvm@NAME.service.d/overrides.conf"   the per-VM drop-in NixOS
#       writes for microvm@NAME: the module's lines merged with microvm.nix's
#       (X-RestartIfChanged=, Type=), rendered the way NixOS renders
#       serviceConfig (one line per list element, keys in sorted order). NixOS
#       adds lines of its own that neither module sets (Environment=PATH=...);
#       they are left out;
#   files."NAME/cloud-hypervisor"   the wrapper script the guest's
#       microvm.cloud-hypervisor.package runs as bin/cloud-hypervisor;
#   files."NAME/package.txt"   the wrapper package's name, version and build
#       script;
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

  enabled = filter (n: config.services.credbridge.vms.${n}.enable) (
    attrNames config.services.credbridge.vms
  );

  filesFor =
    name:
    let
      unit = config.systemd.services."microvm@${name}";
      wrapper = config.microvm.vms.${name}.config.config.microvm.cloud-hypervisor.package;
    in
    [
      {
        name = "microvm@${name}.service.d/overrides.conf";
        value =
          "# Rendered by tests/nixos/check.sh from nixos/module.nix and microvm.nix's\n"
          + "# per-VM definitions for tests/nixos/example-host.nix: the [Service] lines\n"
          + "# of the drop-in NixOS writes as microvm@${name}.service.d/overrides.conf.\n"
          + "[Service]\n"
          + section unit.serviceConfig;
      }
      {
        name = "${name}/cloud-hypervisor";
        value = wrapper.passthru.script.text;
      }
      {
        name = "${name}/package.txt";
        value =
          "name: ${wrapper.name}\nversion: ${wrapper.version}\nbin/cloud-hypervisor -> ${wrapper.passthru.script}\n"
          + "build:\n${wrapper.buildCommand}";
      }
    ];
in
{
  files = listToAttrs (builtins.concatLists (map filesFor enabled));
  failedAssertions = map (a: a.message) (filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  overrideStrategy = map (n: config.systemd.services."microvm@${n}".overrideStrategy) enabled;
}
