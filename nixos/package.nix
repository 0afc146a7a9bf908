# credbridge as a Nix package: `pkgs.callPackage ./nixos/package.nix { }`.
#
# Only the `credbridge` workspace member is built and installed; the other
# member, tests/fake-ch (a fake cloud-hypervisor for the integration tests),
# is source the workspace needs to resolve, not something to ship.
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;

  # Exactly what cargo reads: the manifests, the lock file, the sources, the
  # man page's generator (man/) and the test tree (the workspace lists
  # tests/fake-ch as a member, so it must be present even though it is not
  # built). Nothing else, so that editing the README, docs/, the units or this
  # directory does not rebuild the package.
  #
  # A filter rather than lib.fileset: lib.fileset needs builtins.readFileType
  # (Nix 2.14), and this file is meant to evaluate on Debian 12's Nix 2.8 too
  # (tests/nixos/check.sh evaluates the filter there). `rel` is the path
  # relative to the repository root.
  included =
    rel:
    let
      under = dir: rel == dir || lib.hasPrefix "${dir}/" rel;
    in
    builtins.elem rel [ "Cargo.toml" "Cargo.lock" "build.rs" ]
    || ((under "src" || under "man" || under "tests" || under "benches")
      # Shell and Nix checks of this repository, not cargo's.
      && !(under "tests/nixos" || under "tests/units")
      # Downloaded guest images of the end-to-end tests (git-ignored).
      && !(under "tests/e2e/.cache"));
in
rustPlatform.buildRustPackage {
  pname = "credbridge";
  inherit (cargoToml.package) version;

  src = lib.cleanSourceWith {
    name = "credbridge-source";
    src = ../.;
    filter = path: _type: included (lib.removePrefix "${toString ../.}/" (toString path));
  };

  cargoLock.lockFile = ../Cargo.lock;

  # credbridge-man (man/) prints credbridge(1) from the same clap definitions
  # as `credbridge --help`; it is built beside credbridge, run once below and
  # not installed.
  cargoBuildFlags = [ "-p" "credbridge" "-p" "credbridge-man" ];

  nativeBuildInputs = [ installShellFiles ];

  postInstall =
    lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
      $out/bin/credbridge-man > credbridge.1
      installManPage credbridge.1
    ''
    + ''
      rm $out/bin/credbridge-man
    '';

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

  # For tests/nixos/check.sh, which checks the filter against the tracked files.
  passthru = { inherit included; };

  meta = {
    description = cargoToml.package.description;
    license = with lib.licenses; [ mit asl20 ];
    platforms = lib.platforms.linux;
    mainProgram = "credbridge";
  };
}
