# Evaluates nixos/module.nix with the real NixOS module system from a local
# copy of nixpkgs' lib/ (nothing is fetched here; check.sh uses this only when
# NIXPKGS_LIB names such a directory). Same interface as stub/eval.nix.
#
# Around the module it declares just the options it touches, with the types
# and merge rules of NixOS and microvm.nix (nixos-modules/host/options.nix:
# microvm.vms.<name>.config is a nullable type whose merge evaluates the guest
# from all its definitions plus extraModules), and defines what microvm.nix's
# host module defines for every VM (nixos-modules/host/default.nix: the per-VM
# drop-in with Type=, X-RestartIfChanged= and the guest's toplevel as restart
# trigger, its assertions). Packages are the stand-ins of stub/pkgs.nix.
{
  nixpkgsLib,
  host ? ./example-host.nix,
}:

let
  lib = import nixpkgsLib;
  pkgs = import ./stub/pkgs.nix { inherit lib; };
  inherit (lib) mkOption types;

  # NixOS' rule for serviceConfig values (systemd unitOption): lists from all
  # definitions concatenate, single values must agree after priorities.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (d: lib.isList d.value) defs' then
        lib.concatMap (d: lib.toList d.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  guestOptions =
    { name, ... }:
    {
      freeformType = types.attrsOf types.anything;
      options.system.build.toplevel = mkOption {
        type = types.package;
        default = pkgs.runCommand "nixos-system-${name}-25.05" { } "";
      };
      options.microvm = {
        cpu = mkOption {
          type = types.nullOr types.str;
          default = null;
        };
        credentialFiles = mkOption {
          type = types.attrsOf types.path;
          default = { };
        };
        hypervisor = mkOption {
          type = types.enum [ "qemu" "cloud-hypervisor" "firecracker" "crosvm" "kvmtool" "stratovirt" "alioth" "vfkit" ];
          default = "qemu";
        };
        vsock.cid = mkOption {
          type = types.nullOr (types.ints.between 3 4294967294);
          default = null;
        };
        socket = mkOption {
          type = types.nullOr types.str;
          default = "${name}.sock";
        };
        prettyProcnames = mkOption {
          type = types.bool;
          default = true;
        };
        graphics.enable = mkOption {
          type = types.bool;
          default = false;
        };
        vmHostPackages = mkOption {
          type = types.unspecified;
          default = pkgs;
        };
        vcpu = mkOption {
          type = types.ints.positive;
          default = 1;
        };
        mem = mkOption {
          type = types.ints.positive;
          default = 512;
        };
        shares = mkOption {
          type = types.listOf types.anything;
          default = [ ];
        };
        interfaces = mkOption {
          type = types.listOf types.anything;
          default = [ ];
        };
        cloud-hypervisor = {
          extraArgs = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
          platformOEMStrings = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
          package = mkOption {
            type = types.package;
            default = pkgs.cloud-hypervisor;
          };
        };
        qemu = {
          machine = mkOption {
            type = types.str;
            # x86_64-linux: lib.mkDefault "microvm".
            default = "microvm";
          };
          extraArgs = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
          package = mkOption {
            type = types.package;
            default = pkgs.qemu_kvm;
          };
        };
      };
    };

  hostOptions = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.services = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule {
            options = {
              serviceConfig = mkOption {
                type = types.attrsOf unitOption;
                default = { };
              };
              restartTriggers = mkOption {
                type = types.listOf types.unspecified;
                default = [ ];
              };
              overrideStrategy = mkOption {
                type = types.enum [ "asDropinIfExists" "asDropin" ];
                default = "asDropinIfExists";
              };
            };
          }
        );
      };
      microvm.vms = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule (
            { config, name, ... }:
            {
              options = {
                config = mkOption {
                  default = null;
                  type = types.nullOr (
                    lib.mkOptionType {
                      name = "Toplevel NixOS config";
                      merge =
                        loc: defs:
                        lib.evalModules {
                          modules = [
                            guestOptions
                            { _module.args = { inherit pkgs name; }; }
                          ] ++ map (d: d.value) defs ++ config.extraModules;
                        };
                    }
                  );
                };
                extraModules = mkOption {
                  type = types.listOf types.deferredModule;
                  default = [ ];
                };
                flake = mkOption {
                  type = types.nullOr types.unspecified;
                  default = null;
                };
              };
            }
          )
        );
      };
    };
  };

  # What microvm.nix's host module defines per VM.
  microvmHost =
    { config, ... }:
    {
      assertions = lib.concatMap (name: [
        {
          assertion = config.microvm.vms.${name}.config != null -> config.microvm.vms.${name}.flake == null;
          message = "vm ${name}: Fully-declarative VMs cannot also set a flake!";
        }
      ]) (builtins.attrNames config.microvm.vms);
      systemd.services = lib.mapAttrs' (
        name: vm:
        let
          guest = vm.config.config;
        in
        lib.nameValuePair "microvm@${name}" {
          overrideStrategy = "asDropin";
          restartTriggers = [ guest.system.build.toplevel ];
          serviceConfig = {
            X-RestartIfChanged = [ "" true ];
            # declaredRunner.supportsNotifySocket: only cloud-hypervisor's
            # runner relays the guest's notifications, and only with a CID.
            Type =
              if guest.microvm.hypervisor == "cloud-hypervisor" && guest.microvm.vsock.cid != null then
                "notify"
              else
                "simple";
          };
        }
      ) config.microvm.vms;
    };

  evaluated = lib.evalModules {
    modules = [
      hostOptions
      microvmHost
      ../../nixos/module.nix
      host
      { _module.args = { inherit pkgs; }; }
    ];
  };
in
{
  inherit (evaluated) config options;
  inherit pkgs lib;
}
