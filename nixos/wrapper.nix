# A drop-in replacement for the hypervisor package of a microvm.nix VM that
# runs the hypervisor under credbridge: for `microvm.cloud-hypervisor.package`
# or `microvm.qemu.package`.
#
#   microvm.cloud-hypervisor.package = pkgs.callPackage ./nixos/wrapper.nix {
#     credbridge = pkgs.callPackage ./nixos/package.nix { };
#     unwrapped = pkgs.cloud-hypervisor;
#     vmName = "myvm";
#     flags = [ "--ready" "booted" ];
#   };
#
#   microvm.qemu.package = pkgs.callPackage ./nixos/wrapper.nix {
#     credbridge = pkgs.callPackage ./nixos/package.nix { };
#     hypervisor = "qemu";
#     unwrapped = pkgs.qemu_kvm;
#     binary = "qemu-system-x86_64";
#     vmName = "myvm";
#   };
#
# For QEMU the result also needs `override` and `overrideAttrs` that reach the
# real QEMU (microvm.nix's runner calls both, see the flake's lib.wrapQemu);
# nixos/module.nix adds them. By hand (e.g. for a flake-based VM, whose
# configuration the host module cannot reach), add the unit settings of
# units/microvm@.service.d/credbridge.conf too.
#
# What microvm.nix's runners need of the package:
#   cloud-hypervisor: `version` (it picks the command-line syntax by it),
#     bin/cloud-hypervisor and bin/ch-remote;
#   qemu: bin/qemu-system-<arch> (the guest's arch), `configureFlags` (it adds
#     `-sandbox on` only when they contain --enable-seccomp).
{
  lib,
  runCommand,
  writeShellScript,
  credbridge,
  # The real hypervisor package.
  unwrapped,
  # "cloud-hypervisor" or "qemu": credbridge's --hypervisor.
  hypervisor ? "cloud-hypervisor",
  # The file in bin/ that microvm.nix's runner execs.
  binary ? (if hypervisor == "qemu" then "qemu-system-x86_64" else "cloud-hypervisor"),
  # The VM's name: argv[0] of the hypervisor becomes microvm@<vmName>.
  vmName,
  # credbridge options, placed before `--`.
  flags ? [ ],
  # microvm.nix's prettyProcnames: it runs the hypervisor as
  # `exec -a microvm@NAME`, but the -a reaches this script, not the hypervisor,
  # so credbridge is asked to do the same with --argv0.
  prettyProcname ? true,
  # QEMU only: the guest's microvm.credentialFiles (NAME = PATH) that the unit
  # now loads with LoadCredential= and credbridge hands over. microvm.nix's
  # runner still puts `-fw_cfg name=opt/io.systemd.credentials/NAME,file=PATH`
  # into the argv (lib/runners/qemu.nix); the script drops exactly those pairs,
  # so that QEMU never opens the plain file, and fails if one is missing (a
  # changed microvm.nix must not leave the same credential on two channels).
  takenOverCredentialFiles ? { },
}:

let
  args =
    [ "run" "--hypervisor" hypervisor ]
    ++ lib.optionals prettyProcname [ "--argv0" "microvm@${vmName}" ]
    ++ flags;

  names = builtins.attrNames takenOverCredentialFiles;
  fwCfgArg = name: "name=opt/io.systemd.credentials/${name},file=${toString takenOverCredentialFiles.${name}}";

  exec = argv: "exec ${credbridge}/bin/credbridge ${lib.escapeShellArgs args} -- ${unwrapped}/bin/${binary} ${argv}";

  # exec keeps the PID: microvm-run execs this script, this script execs
  # credbridge, so credbridge is the unit's main process (NotifyAccess=main).
  # "$@" is microvm.nix's complete generated argv, passed on unchanged (but
  # for the taken-over -fw_cfg pairs).
  script = writeShellScript "${binary}-credbridge-${vmName}" (
    if names == [ ] then
      exec ''"$@"'' + "\n"
    else
      ''
        names=(${lib.escapeShellArgs names})
        want=(${lib.escapeShellArgs (map fwCfgArg names)})
        found=()
        argv=()
        while (($#)); do
            if [[ $1 == -fw_cfg && $# -ge 2 ]]; then
                for i in "''${!want[@]}"; do
                    if [[ $2 == "''${want[i]}" ]]; then
                        found[i]=1
                        shift 2
                        continue 2
                    fi
                done
            fi
            argv+=("$1")
            shift
        done
        for i in "''${!want[@]}"; do
            if [[ -z ''${found[i]-} ]]; then
                echo "credbridge wrapper: microvm.credentialFiles.''${names[i]}: the QEMU argv lacks -fw_cfg ''${want[i]}; refusing to start (nixos/wrapper.nix expects microvm.nix's form)" >&2
                exit 1
            fi
        done
        ${exec ''"''${argv[@]}"''}
      ''
  );
in
runCommand "${binary}-credbridge-${vmName}-${unwrapped.version or "0"}"
  {
    passthru =
      {
        inherit unwrapped script;
      }
      // lib.optionalAttrs (unwrapped ? version) { inherit (unwrapped) version; }
      // lib.optionalAttrs (hypervisor == "qemu") { configureFlags = unwrapped.configureFlags or [ ]; };
    meta.mainProgram = binary;
  }
  (
    if hypervisor == "qemu" then
      ''
        mkdir -p $out/bin
        # Every other program of the package (qemu-img, qemu-system-* of other
        # architectures, ...) as it is.
        for f in ${unwrapped}/bin/*; do
            [ "''${f##*/}" = ${binary} ] || ln -s "$f" $out/bin/
        done
        ln -s ${script} $out/bin/${binary}
      ''
    else
      ''
        mkdir -p $out/bin
        ln -s ${script} $out/bin/${binary}
        # ch-remote talks to the API socket and needs no wrapping: microvm.nix's
        # balloon script and operators use it as is.
        ln -s ${unwrapped}/bin/ch-remote $out/bin/ch-remote
      ''
  )
