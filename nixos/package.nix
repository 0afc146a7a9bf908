# credbridge as a Nix package: `pkgs.callPackage ./nixos/package.nix { }`.
#
# Only the `credbridge` workspace member is built and installed; the other
# member, tests/fake-ch (a fake cloud-hypervisor for the integration tests),
# is source the workspace needs to resolve, not something to ship.
{
  lib,
  rustPlatform,
}:

let
  root = ../.;
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "credbridge";
  inherit (cargoToml.package) version;

  # Exactly what cargo reads: the manifests, the lock file, the sources and the
  # test tree (the workspace lists tests/fake-ch as a member, so it must be
  # present even though it is not built). Nothing else, so that editing the
  # README, the units or this directory does not rebuild the package.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.difference
      (lib.fileset.unions [
        ../Cargo.toml
        ../Cargo.lock
        ../src
        ../tests
        (lib.fileset.maybeMissing ../build.rs)
        (lib.fileset.maybeMissing ../benches)
      ])
      (lib.fileset.unions [
        # Shell and Nix checks of this repository, not cargo's.
        (lib.fileset.maybeMissing ../tests/nixos)
        (lib.fileset.maybeMissing ../tests/units)
        # Downloaded guest images of the end-to-end tests (git-ignored).
        (lib.fileset.maybeMissing ../tests/e2e/.cache)
      ]);
  };

  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [ "-p" "credbridge" ];

  # Unit tests only (`--lib --bins`). The integration tests in tests/*.rs run
  # the real binary under systemd-socket-activate, encrypt credentials with
  # systemd-creds and read /proc of the processes they start (the fake
  # hypervisor, which is another workspace member and is not built here):
  # none of that exists in the build sandbox. .ci/run runs them instead.
  cargoTestFlags = [ "-p" "credbridge" "--lib" "--bins" ];
  # Unit tests that still need the host would be skipped here by name, e.g.
  #   checkFlags = [ "--skip=module::test_name" ];
  # None do at the time of writing.
  checkFlags = [ ];

  meta = {
    description = cargoToml.package.description;
    license = with lib.licenses; [ mit asl20 ];
    platforms = lib.platforms.linux;
    mainProgram = "credbridge";
  };
}
