{
  description = "credbridge: systemd credentials to cloud-hypervisor microVM guests as SMBIOS OEM strings";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
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

      # For VMs the host module cannot reach (flake-based microvm.vms):
      #   microvm.cloud-hypervisor.package = credbridge.lib.wrapCloudHypervisor pkgs {
      #     vmName = "myvm"; flags = [ "--ready" "booted" ];
      #   };
      lib.wrapCloudHypervisor =
        pkgs: args:
        pkgs.callPackage ./nixos/wrapper.nix (
          {
            credbridge = pkgs.callPackage ./nixos/package.nix { };
            inherit (pkgs) cloud-hypervisor;
          }
          // args
        );
    };
}
