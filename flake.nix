{
  description = "credbridge: systemd credentials to cloud-hypervisor and QEMU microVM guests, without files or argv";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # nixos/wrapper.nix, with `override` and `overrideAttrs` passed to the
      # real hypervisor package and the wrapper built again around the result:
      # microvm.nix's QEMU runner calls both (nixos/module.nix does the same).
      wrap =
        pkgs: args:
        let
          wrapped =
            unwrapped:
            pkgs.callPackage ./nixos/wrapper.nix (
              { credbridge = pkgs.callPackage ./nixos/package.nix { }; } // args // { inherit unwrapped; }
            )
            // {
              override = f: wrapped (unwrapped.override f);
              overrideAttrs = f: wrapped (unwrapped.overrideAttrs f);
            };
        in
        wrapped args.unwrapped;
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nixos/package.nix { };
        credbridge = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      });

      overlays.default = final: _prev: { credbridge = final.callPackage ./nixos/package.nix { }; };

      # The host module. It builds credbridge with the host's own nixpkgs
      # (services.credbridge.package defaults to callPackage ./nixos/package.nix),
      # so it does not tie the host to this flake's nixpkgs input.
      nixosModules.default = ./nixos/module.nix;
      nixosModules.credbridge = self.nixosModules.default;

      # For VMs the host module cannot reach (flake-based microvm.vms), in the
      # VM's own configuration:
      #   microvm.cloud-hypervisor.package = credbridge.lib.wrapCloudHypervisor pkgs {
      #     vmName = "myvm"; flags = [ "--ready" "booted" ];
      #   };
      #   microvm.qemu.package = credbridge.lib.wrapQemu pkgs {
      #     vmName = "myvm"; flags = [ "--ready" "booted" ];
      #   };
      lib.wrapCloudHypervisor = pkgs: args: wrap pkgs ({ unwrapped = pkgs.cloud-hypervisor; } // args);
      # binary: microvm.nix runs bin/qemu-system-<arch of the guest>.
      lib.wrapQemu =
        pkgs: args:
        wrap pkgs (
          {
            hypervisor = "qemu";
            unwrapped = pkgs.qemu_kvm;
            binary = "qemu-system-${pkgs.stdenv.hostPlatform.qemuArch}";
          }
          // args
        );
    };
}
