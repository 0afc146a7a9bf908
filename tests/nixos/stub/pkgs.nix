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

    writeShellScript =
      name: text:
      mkDrv name {
        inherit text;
        executable = true;
      };
    runCommand =
      name: env: buildCommand:
      mkDrv name (env // { inherit buildCommand; });

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
