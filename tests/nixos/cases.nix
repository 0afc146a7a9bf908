# Variations of example-host.nix and what the module must say about each.
# tests/nixos/check.sh evaluates every case (with the stub lib, and with the
# real one when NIXPKGS_LIB is set) and requires each `expect` string in the
# output: the rendered files, failed assertions and warnings as JSON, or the
# evaluation error.
let
  example = import ./example-host.nix;

  update =
    a: b:
    a
    // builtins.mapAttrs (
      n: v:
      if builtins.isAttrs v && builtins.isAttrs (a.${n} or null) && (v.type or null) != "derivation" then
        update a.${n} v
      else
        v
    ) b;

  # The example, with `host` merged over it and `guest` over its VM's config.
  variant =
    {
      host ? { },
      guest ? { },
    }:
    args:
    let
      base = example args;
    in
    update base (
      update host {
        microvm.vms.myvm.config = guestArgs@{ pkgs, ... }: update (base.microvm.vms.myvm.config guestArgs) guest;
      }
    );
  vm = settings: variant { host.services.credbridge.vms.myvm = settings; };
in
{
  example = {
    host = example;
    expect = [
      ''"failedAssertions":[]''
      "LoadCredentialEncrypted=api-key:myvm.api-key"
      "--credential 'tls-key=nginx.key'"
    ];
  };

  two-sources = {
    host = vm { credentials.api-key.file = "/run/secrets/api-key"; };
    expect = [
      "services.credbridge.vms.myvm.credentials.api-key: set exactly one of services.credbridge.vms.myvm.credentials.api-key.encryptedFile, services.credbridge.vms.myvm.credentials.api-key.credstore and services.credbridge.vms.myvm.credentials.api-key.file; found credstore and file."
    ];
  };

  no-source = {
    host = vm { credentials.empty = { }; };
    expect = [ "services.credbridge.vms.myvm.credentials.empty: set exactly one of" "none is set." ];
  };

  store-path = {
    host = vm { credentials.leaked.encryptedFile = "${builtins.storeDir}/0000-leaked.cred"; };
    expect = [
      "services.credbridge.vms.myvm.credentials.leaked.encryptedFile = ${builtins.storeDir}/0000-leaked.cred: the Nix store is world-readable"
    ];
  };

  path-literal = {
    host = vm { credentials.leaked.file = ./cases.nix; };
    expect = [
      "services.credbridge.vms.myvm.credentials.leaked.file = "
      "a Nix path literal is copied into the world-readable Nix store"
    ];
  };

  plain-file = {
    host = vm { credentials.legacy.file = "/run/secrets/vars/myvm/legacy"; };
    expect = [ "LoadCredential=legacy:/run/secrets/vars/myvm/legacy" "--credential legacy" ];
  };

  bad-name = {
    host = vm { credentials."a:b".credstore = "ab"; };
    expect = [ ''services.credbridge.vms.myvm.credentials.\"a:b\": \"a:b\" is not a valid credential name'' ];
  };

  # The guest would split a=b at the `=` and import credential "a".
  equals-in-name = {
    host = vm { credentials."a=b".credstore = "ab"; };
    expect = [ ''services.credbridge.vms.myvm.credentials.\"a=b\": \"a=b\" is not a valid credential name'' ];
  };

  bad-credstore = {
    host = vm { credentials.x.credstore = "/etc/credstore.encrypted/x"; };
    expect = [ "services.credbridge.vms.myvm.credentials.x.credstore: " "must be a bare name" ];
  };

  qemu = {
    host = variant { guest.microvm.hypervisor = "qemu"; };
    expect = [
      ''services.credbridge.vms.myvm.enable needs microvm.vms.myvm.config.microvm.hypervisor = \"cloud-hypervisor\"; it is \"qemu\".''
    ];
  };

  guest-ready-without-cid = {
    host = vm { vsockCid = null; };
    expect = [ ''services.credbridge.vms.myvm.ready = \"guest\" needs services.credbridge.vms.myvm.vsockCid'' ];
  };

  guest-cid-moved = {
    host = variant {
      host.services.credbridge.vms.myvm.vsockCid = null;
      guest.microvm.vsock.cid = 43;
    };
    expect = [ "Move the CID there from microvm.vms.myvm.config.microvm.vsock.cid (43)" ];
  };

  both-cids = {
    host = variant { guest.microvm.vsock.cid = 43; };
    expect = [
      "services.credbridge.vms.myvm.vsockCid and microvm.vms.myvm.config.microvm.vsock.cid (or --vsock in microvm.vms.myvm.config.microvm.cloud-hypervisor.extraArgs) are both set."
    ];
  };

  relay-warning = {
    host = variant {
      host.services.credbridge.vms.myvm = {
        ready = "booted";
        vsockCid = null;
      };
      guest.microvm.vsock.cid = 43;
    };
    expect = [
      ''"failedAssertions":[]''
      "microvm.vms.myvm.config.microvm.vsock.cid is set, so microvm.nix's vsock relay"
      "Type=notify"
      "NotifyAccess=main"
    ];
  };

  argv-warning = {
    host = vm { delivery = "argv"; };
    expect = [ ''services.credbridge.vms.myvm.delivery = \"argv\": the VM's secrets are visible'' ];
  };

  undeclared-vm = {
    host = variant { host.services.credbridge.vms.othervm.enable = true; };
    expect = [
      "services.credbridge.vms.othervm.enable: microvm.vms.othervm.config is not set, so there is no declarative MicroVM `othervm`"
      "or fix the name."
    ];
  };

  flake-vm = {
    host = variant {
      host.microvm.vms.flakevm.flake = "/srv/flakes/flakevm";
      host.services.credbridge.vms.flakevm.enable = true;
    };
    expect = [ "A VM built from microvm.vms.flakevm.flake does not take modules from the host" ];
  };

  package-set-twice = {
    host = variant { guest.microvm.cloud-hypervisor.package = { type = "derivation"; name = "x"; outPath = "/x"; version = "1"; }; };
    expect = [ "cloud-hypervisor.package" ];
  };

  disabled = {
    host = vm { enable = false; };
    # microvm.nix's own lines stay; none of the module's.
    expect = [ ''"files":{}'' ''"failedAssertions":[]'' ];
  };
}
