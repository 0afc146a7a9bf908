# A drop-in replacement for the cloud-hypervisor package that runs it under
# credbridge. For microvm.nix's `microvm.cloud-hypervisor.package`:
#
#   microvm.cloud-hypervisor.package = pkgs.callPackage ./nixos/wrapper.nix {
#     credbridge = pkgs.callPackage ./nixos/package.nix { };
#     vmName = "myvm";
#     flags = [ "--ready" "booted" ];
#   };
#
# nixos/module.nix does this for every VM in services.credbridge.vms. By hand
# (e.g. for a flake-based VM, whose configuration the host module cannot
# reach), add the unit settings of units/microvm@.service.d/credbridge.conf.
#
# microvm.nix's runner needs three things of the package: `version` (it picks
# the command-line syntax by it), bin/cloud-hypervisor and bin/ch-remote.
{
  lib,
  runCommand,
  writeShellScript,
  credbridge,
  cloud-hypervisor,
  # The VM's name: argv[0] of the hypervisor becomes microvm@<vmName>.
  vmName,
  # credbridge options, placed before `--`.
  flags ? [ ],
  # microvm.nix's prettyProcnames: it runs the hypervisor as
  # `exec -a microvm@NAME`, but the -a reaches this script, not the hypervisor,
  # so credbridge is asked to do the same with --argv0.
  prettyProcname ? true,
}:

let
  args =
    [ "run" "--hypervisor" "cloud-hypervisor" ]
    ++ lib.optionals prettyProcname [ "--argv0" "microvm@${vmName}" ]
    ++ flags;

  # exec keeps the PID: microvm-run execs this script, this script execs
  # credbridge, so credbridge is the unit's main process (NotifyAccess=main).
  # "$@" is microvm.nix's complete generated argv, passed on unchanged.
  script = writeShellScript "cloud-hypervisor-credbridge-${vmName}" ''
    exec ${credbridge}/bin/credbridge ${lib.escapeShellArgs args} -- ${cloud-hypervisor}/bin/cloud-hypervisor "$@"
  '';
in
runCommand "cloud-hypervisor-credbridge-${vmName}-${cloud-hypervisor.version}"
  {
    inherit (cloud-hypervisor) version;
    passthru = {
      unwrapped = cloud-hypervisor;
      inherit script;
    };
    meta.mainProgram = "cloud-hypervisor";
  }
  ''
    mkdir -p $out/bin
    ln -s ${script} $out/bin/cloud-hypervisor
    # ch-remote talks to the API socket and needs no wrapping: microvm.nix's
    # balloon script and operators use it as is.
    ln -s ${cloud-hypervisor}/bin/ch-remote $out/bin/ch-remote
  ''
