# Stand-ins for the packages and builders the module and the wrapper use.
# Derivations are records with a fixed store path and the inputs they were
# given (a script's text, a runCommand's build script), so that
# tests/nixos/render.nix can write out what Nix would have built.
{ lib }:
let
  mkDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
    }
    // extra;

  qemuPackage =
    name: args:
    let
      suffix = builtins.concatStringsSep "" (
        map (n: "-${n}=${builtins.toJSON args.${n}}") (builtins.attrNames args)
      );
    in
    mkDrv "${name}${suffix}" {
      pname = "qemu";
      version = "10.1.0";
      configureFlags = [ "--enable-seccomp" ];
      override = f: qemuPackage name (args // (if builtins.isFunction f then f args else f));
      overrideAttrs = f: qemuPackage name (args // { overrideAttrs = true; });
    };

  self = {
    inherit lib;
    cloud-hypervisor = mkDrv "cloud-hypervisor-48.0" {
      pname = "cloud-hypervisor";
      version = "48.0";
    };
    cloud-hypervisor-graphics = mkDrv "cloud-hypervisor-graphics-48.0" {
      pname = "cloud-hypervisor-graphics";
      version = "48.0";
    };
    coreutils = mkDrv "coreutils-9.7" { };
    # The QEMU packages of microvm.nix's default for microvm.qemu.package, with
    # what its runner uses of them: configureFlags (`-sandbox on` needs
    # --enable-seccomp there), `override` (microvm.optimize.enable, on by
    # default, sets nixosTestRunner) and `overrideAttrs` (USB devices). The
    # overrides are recorded in the name, so a rendered wrapper shows which
    # QEMU it runs.
    qemu_kvm = qemuPackage "qemu-host-cpu-only-10.1.0" { };
    qemu = qemuPackage "qemu-10.1.0" { };

    stdenv.hostPlatform = {
      system = "x86_64-linux";
      qemuArch = "x86_64";
      isLinux = true;
    };
    # A native build: nixos/package.nix runs the man page's generator it built.
    stdenv.buildPlatform = {
      system = "x86_64-linux";
      canExecute = platform: platform.system == "x86_64-linux";
    };
    installShellFiles = mkDrv "install-shell-files" { };

    writeShellScript =
      name: text:
      mkDrv name {
        inherit text;
        executable = true;
      };
    # As mkDerivation, passthru's attributes are also the result's.
    runCommand =
      name: env: buildCommand:
      mkDrv name (env // (env.passthru or { }) // { inherit buildCommand; });

    rustPlatform.buildRustPackage = args: mkDrv "${args.pname}-${args.version}" { inherit args; inherit (args) version; };

    callPackage =
      fn: args:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) self // args);
  };
in
self
