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

  # The example, with `host` merged over it, `guest` over the config of its
  # cloud-hypervisor VM myvm and `qguest` over that of its QEMU VM qvm.
  variant =
    {
      host ? { },
      guest ? { },
      qguest ? { },
    }:
    args:
    let
      base = example args;
    in
    update base (
      update host {
        microvm.vms.myvm.config = guestArgs@{ pkgs, ... }: update (base.microvm.vms.myvm.config guestArgs) guest;
        microvm.vms.qvm.config = update base.microvm.vms.qvm.config qguest;
      }
    );
  vm = settings: variant { host.services.credbridge.vms.myvm = settings; };
  qvm = settings: variant { host.services.credbridge.vms.qvm = settings; };
  typeError = "absolute path outside the Nix store, given as a string (the store is world-readable, and a path literal would be copied into it)";
in
{
  example = {
    host = example;
    expect = [
      ''"failedAssertions":[]''
      ''"touchedUnits":["myvm","qvm"]''
      "LoadCredentialEncrypted=api-key:myvm.api-key"
      "--credential 'tls-key=nginx.key'"
      "LoadCredentialEncrypted=db-password:qvm.db-password"
      "run --hypervisor qemu --argv0 microvm@qvm --ready booted"
    ];
  };

  # The short example of README.md (check.sh step 6 checks the README shows
  # this file verbatim).
  readme-example = {
    host = import ./example-readme.nix;
    expect = [
      ''"failedAssertions":[]''
      ''"touchedUnits":["myvm"]''
      ''"warnings":[]''
      "LoadCredentialEncrypted=api-key:myvm.api-key"
      "--ready booted --smbios-budget 4096 --stop-timeout 30 --credential api-key --"
    ];
  };

  # The module leaves the machine to microvm.nix: credbridge reads -M from the
  # argv. So q35 renders exactly as the default `microvm` machine (check.sh
  # runs the wrapper with microvm.nix's argv for both).
  qemu-q35 = {
    host = variant { qguest.microvm.qemu.machine = "q35"; };
    expect = [
      ''"failedAssertions":[]''
      ''"qvm/qemu-system-x86_64":"exec ''
      "-- ${builtins.storeDir}/00000000000000000000000000000000-qemu-host-cpu-only-10.1.0/bin/qemu-system-x86_64 \\\"$@\\\""
    ];
  };

  # microvm.cpu set: microvm.nix's default package is then qemu, not qemu_kvm.
  qemu-cpu = {
    host = variant { qguest.microvm.cpu = "max"; };
    expect = [ "-- ${builtins.storeDir}/00000000000000000000000000000000-qemu-10.1.0/bin/qemu-system-x86_64" ];
  };

  # hypervisorPackage wins over microvm.nix's default, for QEMU too.
  qemu-package = {
    host = qvm { hypervisorPackage = (import ./stub/pkgs.nix { lib = import ./stub/lib.nix; }).qemu; };
    expect = [ "-- ${builtins.storeDir}/00000000000000000000000000000000-qemu-10.1.0/bin/qemu-system-x86_64" ];
  };

  # Only the package of the VM's own hypervisor is replaced: a QEMU guest may
  # set microvm.cloud-hypervisor.package (and the reverse).
  qemu-other-package = {
    host = variant {
      qguest.microvm.cloud-hypervisor.package = {
        type = "derivation";
        name = "x";
        outPath = "/x";
        version = "1";
      };
    };
    expect = [
      ''"failedAssertions":[]''
      ''"qvm/qemu-system-x86_64":''
      ''"qvm":"x"''
    ];
  };

  qemu-argv-delivery = {
    host = qvm { delivery = "argv"; };
    expect = [
      ''services.credbridge.vms.qvm.delivery = \"argv\" is for cloud-hypervisor only, and microvm.vms.qvm.config.microvm.hypervisor is \"qemu\"''
    ];
  };

  # For QEMU the guest's own vsock CID is a vsock device credbridge can use.
  qemu-ready-guest-cid = {
    host = variant {
      host.services.credbridge.vms.qvm.ready = "guest";
      qguest.microvm.vsock.cid = 43;
    };
    expect = [
      ''"failedAssertions":[]''
      ''"warnings":[]''
      "--ready guest"
    ];
  };

  qemu-ready-guest-without-cid = {
    host = qvm { ready = "guest"; };
    expect = [
      ''services.credbridge.vms.qvm.ready = \"guest\" needs services.credbridge.vms.qvm.vsockCid (or microvm.vms.qvm.config.microvm.vsock.cid)''
    ];
  };

  qemu-both-cids = {
    host = variant {
      host.services.credbridge.vms.qvm.vsockCid = 44;
      qguest.microvm.vsock.cid = 43;
    };
    expect = [
      "services.credbridge.vms.qvm.vsockCid and microvm.vms.qvm.config.microvm.vsock.cid are both set. Set only one: the VM would get two vsock devices."
    ];
  };

  # The `microvm` machine without shares runs with pcie=off.
  qemu-cid-without-pci = {
    host = qvm { vsockCid = 44; };
    expect = [
      "services.credbridge.vms.qvm.vsockCid: credbridge adds -device vhost-vsock-pci, and this VM's QEMU has no PCI bus"
    ];
  };

  qemu-cid-with-pci = {
    host = variant {
      host.services.credbridge.vms.qvm.vsockCid = 44;
      qguest.microvm.qemu.machine = "q35";
    };
    expect = [
      ''"failedAssertions":[]''
      "--vsock-cid 44"
    ];
  };

  qemu-oem-strings-microvm = {
    host = qvm { oemStrings = [ "io.systemd.credential:hostname=qvm" ]; };
    expect = [
      ''services.credbridge.vms.qvm.oemStrings: microvm.vms.qvm.config.microvm.qemu.machine is \"microvm\", which has no SMBIOS''
    ];
  };

  qemu-oem-strings-q35 = {
    host = variant {
      host.services.credbridge.vms.qvm.oemStrings = [ "io.systemd.credential:hostname=qvm" ];
      qguest.microvm.qemu.machine = "q35";
    };
    expect = [
      ''"failedAssertions":[]''
      "--oem-string 'io.systemd.credential:hostname=qvm'"
    ];
  };

  # QEMU's stop sequence is 5 s longer than cloud-hypervisor's.
  qemu-stop-timeout = {
    host = qvm { stopTimeout = 10; };
    expect = [ "--stop-timeout 10" "TimeoutStopSec=30s" ];
  };

  # microvm.nix's credentialFiles on a QEMU VM: taken over (LoadCredential=,
  # --credential, and the wrapper drops QEMU's -fw_cfg ...,file= pair).
  qemu-credential-files = {
    host = variant { qguest.microvm.credentialFiles.token = "/run/secrets/qvm-token"; };
    expect = [
      ''"failedAssertions":[]''
      "LoadCredential=token:/run/secrets/qvm-token"
      "--credential token"
      "name=opt/io.systemd.credentials/token,file=/run/secrets/qvm-token"
    ];
  };

  qemu-credential-files-clash = {
    host = variant { qguest.microvm.credentialFiles.db-password = "/run/secrets/db"; };
    expect = [
      ''microvm.vms.qvm.config.microvm.credentialFiles.db-password and services.credbridge.vms.qvm.credentials both give the guest a credential \"db-password\"''
    ];
  };

  # A guestName counts as the name the guest sees.
  qemu-credential-files-clash-guest-name = {
    host = variant {
      host.services.credbridge.vms.qvm.credentials.db-password.guestName = "token";
      qguest.microvm.credentialFiles.token = "/run/secrets/token";
    };
    expect = [ ''both give the guest a credential \"token\"'' ];
  };

  qemu-credential-files-store = {
    host = variant { qguest.microvm.credentialFiles.token = "${builtins.storeDir}/0000-token"; };
    expect = [
      "microvm.vms.qvm.config.microvm.credentialFiles.token = ${builtins.storeDir}/0000-token: this module hands it to credbridge with LoadCredential="
    ];
  };

  qemu-credential-files-bad-name = {
    host = variant { qguest.microvm.credentialFiles."a:b" = "/run/secrets/ab"; };
    expect = [ ''microvm.vms.qvm.config.microvm.credentialFiles.\"a:b\": \"a:b\" is not a valid credential name'' ];
  };

  ch-credential-files = {
    host = variant { guest.microvm.credentialFiles.token = "/run/secrets/token"; };
    expect = [
      "microvm.vms.myvm.config.microvm.credentialFiles (token) is for QEMU VMs only. Move each to services.credbridge.vms.myvm.credentials.<name>"
    ];
  };

  # Every option that only changes credbridge's flags changes the wrapper,
  # and the wrapper is a restart trigger of microvm@NAME.
  restart-trigger = {
    host = qvm { logLevel = "debug"; };
    expect = [
      "X-Restart-Triggers=${builtins.storeDir}/00000000000000000000000000000000-nixos-system-qvm-25.05 ${builtins.storeDir}/00000000000000000000000000000000-qemu-system-x86_64-credbridge-qvm-10.1.0"
      "--log-level debug"
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

  # The option type refuses these three, and says why.
  store-path = {
    host = vm { credentials.leaked.encryptedFile = "${builtins.storeDir}/0000-leaked.cred"; };
    expect = [ "services.credbridge.vms.myvm.credentials.leaked.encryptedFile" typeError ];
  };

  store-path-dotdot = {
    host = vm { credentials.leaked.encryptedFile = "/etc/..${builtins.storeDir}/0000-leaked.cred"; };
    expect = [ "services.credbridge.vms.myvm.credentials.leaked.encryptedFile" typeError ];
  };

  # A file that does not exist: were the literal turned into a string (and so
  # copied into the store) before the type refuses it, the evaluation would
  # fail on the missing file instead.
  path-literal = {
    host = vm { credentials.leaked.file = ./no-such-secret.cred; };
    expect = [ "services.credbridge.vms.myvm.credentials.leaked.file" typeError ];
  };

  relative-path = {
    host = vm { credentials.leaked.file = "run/secrets/x"; };
    expect = [ "services.credbridge.vms.myvm.credentials.leaked.file" typeError ];
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

  bad-guest-name = {
    host = vm { credentials.api-key.guestName = "x/y"; };
    expect = [ ''services.credbridge.vms.myvm.credentials.api-key.guestName: \"x/y\" is not a valid credential name.'' ];
  };

  bad-credstore = {
    host = vm { credentials.x.credstore = "/etc/credstore.encrypted/x"; };
    expect = [ "services.credbridge.vms.myvm.credentials.x.credstore: " "must be a bare name" ];
  };

  other-hypervisor = {
    host = variant { guest.microvm.hypervisor = "firecracker"; };
    expect = [
      ''services.credbridge.vms.myvm.enable needs microvm.vms.myvm.config.microvm.hypervisor = \"cloud-hypervisor\" or \"qemu\"; it is \"firecracker\".''
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
    host = variant {
      host.services.credbridge.vms = {
        myvm.enable = false;
        qvm.enable = false;
      };
    };
    # microvm.nix's own lines stay; none of the module's.
    expect = [
      ''"files":{}''
      ''"failedAssertions":[]''
      ''"touchedUnits":[]''
    ];
  };
}
