# services.credbridge: secrets for microvm.nix VMs (cloud-hypervisor and QEMU),
# handed to the guest's systemd as system credentials (SMBIOS type 11 OEM
# strings or fw_cfg, as credbridge chooses).
#
# For every VM in services.credbridge.vms this module
#   - sets the guest's `microvm.cloud-hypervisor.package` or
#     `microvm.qemu.package` (by its microvm.hypervisor) to a wrapper
#     (./wrapper.nix) whose bin/cloud-hypervisor or bin/qemu-system-<arch> execs
#     `credbridge run ... -- <real hypervisor> "$@"`, through
#     `microvm.vms.<name>.extraModules`;
#   - adds to microvm.nix's per-VM drop-in of `microvm@<name>.service`:
#     `LoadCredential(Encrypted)=` for each credential, `Type=notify`,
#     `NotifyAccess=main`, `KillMode=mixed`, a reset `ExecStop=`, a
#     `TimeoutStopSec=` above credbridge's own stop sequence, and the wrapper
#     as a restart trigger.
# No new units: microvm.nix's template stays in charge of everything else.
#
# Importable alone (`imports = [ ./nixos/module.nix ];`) next to microvm.nix's
# host module, or as the flake output nixosModules.default.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.credbridge;
  enabledVms = lib.filterAttrs (_: vm: vm.enable) cfg.vms;

  # systemd's rule for credential names (credential_name_valid()): 1-255
  # bytes of printable ASCII, no "/", no ":" (the LoadCredential= separator),
  # not "." or "..". The guest's PID 1 applies the same rule on import.
  validCredentialName =
    s:
    builtins.match "[ -~]{1,255}" s != null
    # `=` too: the guest splits io.systemd.credential:NAME=VALUE at the first `=`.
    && builtins.match ".*[/:=].*" s == null
    && s != "."
    && s != "..";

  # An attribute name as it is written in an option path.
  attrPath = n: if builtins.match "[A-Za-z_][A-Za-z0-9_'-]*" n != null then n else "\"${n}\"";

  sources = cred: lib.filter (n: cred.${n} != null) [ "encryptedFile" "credstore" "file" ];

  # "/etc/x" -> yes. ./x (a path literal: Nix copies it into the store as soon
  # as it is used in a string), "/nix/store/..." (also "/nix//store", "/etc/../nix/store",
  # once normalised) and "x/y" -> no. nixpkgs' types.externalPath (lib 25.11 and
  # later) has the same rule; this one is used everywhere so that every lib
  # gives the same answer and the error names the reason.
  isExternalPath =
    p:
    builtins.isString p
    && lib.hasPrefix "/" p
    && !(lib.hasPrefix "${builtins.storeDir}/" (toString (/. + builtins.unsafeDiscardStringContext p)));
  externalPath = lib.mkOptionType {
    name = "externalPath";
    description =
      "absolute path outside the Nix store, given as a string "
      + "(the store is world-readable, and a path literal would be copied into it)";
    check = isExternalPath;
    merge = lib.mergeEqualOption;
  };

  # The `LoadCredential(Encrypted)=` value for one credential.
  # A bare name (credstore = the credential's own name) is the terse form: PID 1
  # looks for a system credential of that name first, then in
  # /etc/credstore.encrypted/, /run/credstore.encrypted/,
  # /usr/lib/credstore.encrypted/ (and the unencrypted credstore/ dirs).
  loadCredentialValue =
    credName: cred:
    if cred.encryptedFile != null then
      "${credName}:${toString cred.encryptedFile}"
    else if cred.credstore != null then
      (if cred.credstore == credName then credName else "${credName}:${cred.credstore}")
    else
      "${credName}:${toString cred.file}";

  encryptedLines =
    vm:
    lib.mapAttrsToList loadCredentialValue (
      lib.filterAttrs (_: c: c.encryptedFile != null || c.credstore != null) vm.credentials
    );
  # Plain files: the `file` credentials and the guest's taken-over
  # microvm.credentialFiles.
  plainLines =
    vm: takenOver:
    lib.mapAttrsToList loadCredentialValue (lib.filterAttrs (_: c: c.file != null) vm.credentials)
    ++ lib.mapAttrsToList (n: p: "${n}:${toString p}") takenOver;

  # The guest's own microvm.credentialFiles: NAME = PATH.
  credentialFilesOf = guest: guest.microvm.credentialFiles or { };

  # The hypervisors the module wraps; each is also the name of the guest's
  # option set that holds its package (microvm.<hypervisor>.package).
  supported = [ "cloud-hypervisor" "qemu" ];

  # credbridge's options for one VM, placed before `--` by ./wrapper.nix.
  credbridgeFlags =
    hypervisor: vm: takenOver:
    lib.optionals (hypervisor == "cloud-hypervisor") [ "--delivery" vm.delivery ]
    ++ [
      "--ready"
      vm.ready
      "--smbios-budget"
      (toString vm.smbiosBudget)
      "--stop-timeout"
      (toString vm.stopTimeout)
    ]
    ++ lib.optionals (vm.readyTimeout != null) [ "--ready-timeout" (toString vm.readyTimeout) ]
    ++ lib.optionals (vm.vsockCid != null) [ "--vsock-cid" (toString vm.vsockCid) ]
    # Select exactly the configured credentials (credbridge's default would be
    # every credential of the unit, including ones added by hand).
    ++ lib.concatLists (
      lib.mapAttrsToList (
        credName: cred:
        [
          "--credential"
          (if cred.guestName != null then "${credName}=${cred.guestName}" else credName)
        ]
      ) vm.credentials
    )
    ++ lib.concatMap (n: [ "--credential" n ]) (builtins.attrNames takenOver)
    ++ lib.concatMap (s: [ "--oem-string" s ]) vm.oemStrings
    ++ lib.optionals (vm.logLevel != null) [ "--log-level" vm.logLevel ]
    ++ vm.extraFlags;

  # ./wrapper.nix around `args.unwrapped`. microvm.nix's QEMU runner calls
  # `.override` (microvm.optimize.enable, on by default) and `.overrideAttrs`
  # (USB devices) on the package it is given, and reads its `configureFlags`:
  # these reach the real package, and the wrapper is built again around the
  # result. (callPackage's own `.override` would pass the arguments to
  # wrapper.nix, which has no use for them.)
  wrapHypervisor =
    hostPkgs: args:
    let
      wrapped =
        unwrapped:
        hostPkgs.callPackage ./wrapper.nix (args // { inherit unwrapped; })
        // {
          override = f: wrapped (unwrapped.override f);
          overrideAttrs = f: wrapped (unwrapped.overrideAttrs f);
        };
    in
    wrapped args.unwrapped;

  # The module added to the guest's configuration. It runs in the guest's
  # module system, so `config` and `pkgs` here are the guest's.
  guestModule =
    name: vm:
    { config, pkgs, ... }:
    let
      hostPkgs = config.microvm.vmHostPackages or pkgs;
      hypervisor = config.microvm.hypervisor;
      # microvm.nix's own defaults for microvm.cloud-hypervisor.package and
      # microvm.qemu.package (nixos-modules/microvm/options.nix).
      defaultPackage =
        if hypervisor == "qemu" then
          (
            if (config.microvm.cpu or null) == null && hostPkgs.stdenv.hostPlatform.isLinux then
              hostPkgs.qemu_kvm
            else
              hostPkgs.qemu
          )
        else if config.microvm.graphics.enable or false then
          hostPkgs.cloud-hypervisor-graphics
        else
          hostPkgs.cloud-hypervisor;
      wrapper = wrapHypervisor hostPkgs {
        credbridge = cfg.package;
        inherit hypervisor;
        unwrapped = if vm.hypervisorPackage != null then vm.hypervisorPackage else defaultPackage;
        # What microvm.nix's runners exec: lib/runners/qemu.nix runs
        # "${qemu}/bin/qemu-system-${arch}", arch from the guest's system.
        binary =
          if hypervisor == "qemu" then
            "qemu-system-${builtins.head (lib.splitString "-" pkgs.stdenv.hostPlatform.system)}"
          else
            "cloud-hypervisor";
        vmName = name;
        flags = credbridgeFlags hypervisor vm (takenOverOf hypervisor config);
        prettyProcname = config.microvm.prettyProcnames or true;
        takenOverCredentialFiles = takenOverOf hypervisor config;
      };
    in
    {
      # mkIf: only the package of the VM's hypervisor is replaced, so a guest
      # may still set the other one (a shared base configuration, say).
      microvm.cloud-hypervisor.package = lib.mkIf (hypervisor == "cloud-hypervisor") wrapper;
      microvm.qemu.package = lib.mkIf (hypervisor == "qemu") wrapper;
    };

  # microvm.credentialFiles taken over for a QEMU guest. For cloud-hypervisor
  # microvm.nix refuses credentialFiles itself, and an assertion says what to
  # use instead.
  takenOverOf = hypervisor: guest: if hypervisor == "qemu" then credentialFilesOf guest else { };

  # The VM's evaluated guest configuration. For a VM that microvm.vms does not
  # declare with `config`, evaluating it raises missingVm (see microvm.vms below).
  guestOf = name: config.microvm.vms.${name}.config.config;

  missingVm =
    name:
    let
      flake = config.microvm.vms.${name}.flake or null;
    in
    "services.credbridge.vms.${name}.enable: microvm.vms.${name}.config is not set, so "
    + "there is no declarative MicroVM `${name}` to give credentials to. "
    + (
      if flake != null then
        "A VM built from microvm.vms.${name}.flake does not take modules from the host: "
        + "set microvm.cloud-hypervisor.package or microvm.qemu.package in the VM's own "
        + "configuration with nixos/wrapper.nix and the unit settings of units/microvm@.service.d/credbridge.conf "
        + "instead, and disable services.credbridge.vms.${name}."
      else
        "Declare the VM with microvm.vms.${name}.config (a VM given as evaluatedConfig "
        + "does not take modules from the host either), or fix the name."
    );

  credentialOptions =
    { name, ... }:
    {
      options = {
        encryptedFile = lib.mkOption {
          type = lib.types.nullOr externalPath;
          default = null;
          example = "/etc/credstore.encrypted/myvm.api-key";
          description = ''
            Absolute path of a credential encrypted with
            `systemd-creds encrypt --name=${name}`, outside the Nix store. Becomes
            `LoadCredentialEncrypted=${name}:PATH`: PID 1 decrypts it when the
            VM's unit starts.

            Give it as a string. A Nix path literal (`./x.cred`) would be copied
            into the world-readable Nix store, and is refused by the type, as
            is a relative path or one in the store.
          '';
        };
        credstore = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          default = null;
          example = "myvm.api-key";
          description = ''
            Name of an encrypted credential in systemd's credential store, looked
            up by PID 1 as a system credential of that name first (one passed to
            the host itself), then as a file in `/etc/credstore.encrypted/`,
            `/run/credstore.encrypted/` and `/usr/lib/credstore.encrypted/`
            (and the unencrypted `credstore/` directories). Becomes
            `LoadCredentialEncrypted=${name}` if it equals the credential's
            name, else `LoadCredentialEncrypted=${name}:NAME`.

            systemd skips a credential given by name that it finds nowhere,
            silently; the VM then fails to start because credbridge is always
            told which credentials to expect (`--credential`).
          '';
        };
        file = lib.mkOption {
          type = lib.types.nullOr externalPath;
          default = null;
          example = "/run/secrets/myvm-api-key";
          description = ''
            Absolute path of an unencrypted secret, outside the Nix store:
            `LoadCredential=${name}:PATH`.

            For migration only (e.g. from a secret manager that leaves plain files
            under /run/secrets): the secret then sits unencrypted on the host.
            Prefer `encryptedFile` or `credstore`.
          '';
        };
        guestName = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          default = null;
          example = "api-token";
          description = ''
            Name of the credential in the guest (`systemd-creds --system cat NAME`,
            `LoadCredential=NAME` in guest units). Defaults to `${name}`.
          '';
        };
      };
    };

  vmOptions =
    { name, ... }:
    {
      options = {
        enable = lib.mkEnableOption "credbridge for the microVM `${name}` (microvm.vms.${name})";

        credentials = lib.mkOption {
          type = lib.types.attrsOf (lib.types.submodule credentialOptions);
          default = { };
          example = lib.literalExpression ''
            {
              api-key.credstore = "${name}.api-key";
              tls-key = {
                encryptedFile = "/etc/credstore.encrypted/${name}.tls-key";
                guestName = "nginx.key";
              };
            }
          '';
          description = ''
            Credentials handed to the guest, by the name the VM's unit loads them
            under. Each needs exactly one of `encryptedFile`, `credstore` or
            `file`. Over SMBIOS, guests with systemd before 257 read at most
            4 KiB of OEM strings in total (see `smbiosBudget`); QEMU VMs also
            have fw_cfg, which credbridge uses where the machine has no SMBIOS
            (QEMU's `microvm` machine, microvm.nix's default on x86_64) or a
            credential does not fit.

            For a QEMU VM the guest's own `microvm.credentialFiles` are taken
            over too: each becomes a `LoadCredential=` line of the unit and is
            handed over by credbridge, and QEMU no longer opens the file.
          '';
        };

        oemStrings = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ ];
          example = [ "io.systemd.credential:hostname=myvm" ];
          description = ''
            Extra static OEM strings (`credbridge --oem-string`). They are not
            secret: they end up in the Nix store. Counted against `smbiosBudget`.
            SMBIOS only: on QEMU's `microvm` machine, which has none, credbridge
            refuses to start a VM that has any.
          '';
        };

        delivery = lib.mkOption {
          type = lib.types.enum [ "api" "argv" ];
          default = "api";
          description = ''
            cloud-hypervisor only. How credbridge gives cloud-hypervisor the VM
            and its OEM strings: `api` through cloud-hypervisor's REST API on
            the VM's API socket (the secrets never appear in any process's
            argv), `argv` by adding them to the command line (visible in `ps`
            to every local user). QEMU always gets them through sealed memfds;
            `argv` is refused for QEMU VMs.
          '';
        };

        ready = lib.mkOption {
          type = lib.types.enum [ "booted" "guest" ];
          default = "booted";
          description = ''
            When the unit reports READY=1: `booted` once the VM was created and
            booted; `guest` once the guest's own systemd (253 or later) sends
            READY=1 over vsock. `guest` needs a vsock device: `vsockCid`, or
            for QEMU VMs also the VM's `microvm.vsock.cid`.
          '';
        };

        readyTimeout = lib.mkOption {
          type = lib.types.nullOr lib.types.ints.positive;
          default = null;
          example = 120;
          description = ''
            Seconds credbridge waits for readiness before it gives up and stops
            the VM. Null: no limit of credbridge's own (systemd's start timeout,
            microvm.host.startupTimeout, still applies).
          '';
        };

        vsockCid = lib.mkOption {
          type = lib.types.nullOr (lib.types.ints.between 3 4294967294);
          default = null;
          example = 42;
          description = ''
            AF_VSOCK context ID for the guest, given to credbridge
            (`--vsock-cid`), which adds the vsock device and listens for the
            guest's READY=1 itself. Not together with the VM's
            `microvm.vsock.cid`.

            cloud-hypervisor: use this, not `microvm.vsock.cid`: with that set,
            microvm.nix starts its own relay for the guest's notifications,
            which needs NotifyAccess=all (and microvm.nix warns when it is
            unset; see docs/nixos.md).

            QEMU: either works (microvm.nix starts no relay for QEMU). With
            this one credbridge claims the CID on /dev/vhost-vsock before QEMU
            starts and adds `-device vhost-vsock-pci`, which needs a PCI bus:
            on the `microvm` machine microvm.nix enables PCI only for shares,
            graphics or PCI devices, so without those set
            `microvm.vsock.cid` instead (microvm.nix then picks the device
            type).
          '';
        };

        smbiosBudget = lib.mkOption {
          type = lib.types.ints.between 1 65535;
          default = 4096;
          description = ''
            Bytes of SMBIOS type 11 OEM strings credbridge allows. Guests with
            systemd 252-256 read only the first 4096 bytes of the table and
            silently cut or drop the rest; raise this only for guests with
            systemd 257 or later. What does not fit goes over fw_cfg on QEMU
            VMs, and is refused on cloud-hypervisor VMs without it.
          '';
        };

        stopTimeout = lib.mkOption {
          type = lib.types.ints.positive;
          default = 30;
          description = ''
            Seconds the guest gets after the ACPI power button when the unit
            stops. Then cloud-hypervisor gets SIGTERM and 10 s later SIGKILL
            (TimeoutStopSec= is this plus 15); QEMU gets QMP `quit`, 5 s later
            SIGTERM and 10 s after that SIGKILL (TimeoutStopSec= is this plus
            20).
          '';
        };

        hypervisorPackage = lib.mkOption {
          type = lib.types.nullOr lib.types.package;
          default = null;
          example = lib.literalExpression "pkgs.qemu";
          description = ''
            The hypervisor package credbridge starts, for the VM's
            `microvm.hypervisor`. Null: microvm.nix's default for the VM
            (cloud-hypervisor, or cloud-hypervisor-graphics with
            microvm.graphics.enable; qemu_kvm, or qemu with microvm.cpu set).
            Set it here, not in the VM's `microvm.cloud-hypervisor.package` or
            `microvm.qemu.package`, which this module sets to the credbridge
            wrapper.
          '';
        };

        logLevel = lib.mkOption {
          type = lib.types.nullOr (lib.types.enum [ "error" "warn" "info" "debug" ]);
          default = null;
          description = "credbridge's `--log-level`; null keeps credbridge's default.";
        };

        extraFlags = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ ];
          example = [ "--log-level" "debug" ];
          description = "Further credbridge options, placed before `--`.";
        };
      };
    };

  assertionsFor =
    name: vm:
    let
      opt = "services.credbridge.vms.${attrPath name}";
      gopt = "microvm.vms.${attrPath name}.config.microvm";
      guest = guestOf name;
      hypervisor = guest.microvm.hypervisor;
      isQemu = hypervisor == "qemu";
      guestCid = guest.microvm.vsock.cid or null;
      extraArgs = guest.microvm.cloud-hypervisor.extraArgs or [ ];
      credentialFiles = credentialFilesOf guest;
      # lib/runners/qemu.nix's requirePci: without it the `microvm` machine
      # runs with pcie=off, and has no PCI bus.
      qemuMachine = guest.microvm.qemu.machine or "microvm";
      qemuHasPci =
        !(lib.hasPrefix "microvm" qemuMachine)
        || (guest.microvm.graphics.enable or false)
        || (guest.microvm.shares or [ ]) != [ ]
        || lib.any (d: (d.bus or null) == "pci") (guest.microvm.devices or [ ]);
      # The names the guest would see, from the module's credentials.
      guestNames = lib.mapAttrsToList (n: c: if c.guestName != null then c.guestName else n) vm.credentials;
    in
    [
      {
        assertion = builtins.elem hypervisor supported;
        message =
          "${opt}.enable needs ${gopt}.hypervisor = \"cloud-hypervisor\" or \"qemu\"; "
          + "it is \"${hypervisor}\".";
      }
      {
        assertion = !(isQemu && vm.delivery == "argv");
        message =
          "${opt}.delivery = \"argv\" is for cloud-hypervisor only, and ${gopt}.hypervisor is "
          + "\"qemu\": QEMU always gets the credentials through sealed memfds. Remove ${opt}.delivery.";
      }
      {
        assertion = vm.ready != "guest" || vm.vsockCid != null || (isQemu && guestCid != null);
        message =
          "${opt}.ready = \"guest\" needs ${opt}.vsockCid"
          + lib.optionalString isQemu " (or ${gopt}.vsock.cid)"
          + ": credbridge listens on the vsock device for the guest's READY=1."
          + lib.optionalString (guestCid != null) (
            " Move the CID there from ${gopt}.vsock.cid (${toString guestCid}) and set that to null."
          );
      }
      {
        assertion = vm.vsockCid == null || (guestCid == null && !(builtins.elem "--vsock" extraArgs));
        message =
          "${opt}.vsockCid and ${gopt}.vsock.cid"
          + lib.optionalString (!isQemu) " (or --vsock in ${gopt}.cloud-hypervisor.extraArgs)"
          + " are both set. Set only one"
          + (
            if isQemu then
              ": the VM would get two vsock devices."
            else
              ", ${opt}.vsockCid: microvm.nix's vsock relay would take the guest's READY=1 "
              + "(it needs NotifyAccess=all, and this module sets main)."
          );
      }
      {
        assertion = !(isQemu && vm.vsockCid != null && !qemuHasPci);
        message =
          "${opt}.vsockCid: credbridge adds -device vhost-vsock-pci, and this VM's QEMU has no PCI bus "
          + "(${gopt}.qemu.machine is \"${qemuMachine}\", which microvm.nix "
          + "starts with pcie=off unless the VM has shares, graphics or PCI devices). Set "
          + "${gopt}.vsock.cid instead (microvm.nix then adds vhost-vsock-device) and unset ${opt}.vsockCid.";
      }
      {
        # QEMU's microvm machine has no SMBIOS tables, and only credentials
        # can go over fw_cfg.
        assertion = !(isQemu && qemuMachine == "microvm" && vm.oemStrings != [ ]);
        message =
          "${opt}.oemStrings: ${gopt}.qemu.machine is \"microvm\", which has no SMBIOS, and OEM strings "
          + "have no other way into the guest. Give the values as credentials, or use machine \"q35\".";
      }
      {
        # microvm.nix refuses credentialFiles for cloud-hypervisor itself
        # ("cloud-hypervisor does not support credentialFiles"); this says
        # what to do instead.
        assertion = isQemu || credentialFiles == { };
        message =
          "${gopt}.credentialFiles (${lib.concatStringsSep ", " (builtins.attrNames credentialFiles)}) "
          + "is for QEMU VMs only. Move each to ${opt}.credentials.<name> "
          + "(encryptedFile, credstore, or file for a plain file).";
      }
    ]
    ++ lib.concatLists (
      lib.mapAttrsToList (
        credName: path:
        let
          copt = "${gopt}.credentialFiles.${attrPath credName}";
        in
        lib.optionals isQemu [
          {
            assertion = validCredentialName credName;
            message =
              "${copt}: \"${credName}\" is not a valid credential name "
              + "(1-255 printable ASCII characters, no \"/\", \":\" or \"=\", not \".\" or \"..\").";
          }
          {
            assertion = !(vm.credentials ? ${credName}) && !(builtins.elem credName guestNames);
            message =
              "${copt} and ${opt}.credentials both give the guest a credential \"${credName}\"; "
              + "keep one.";
          }
          {
            assertion = isExternalPath path;
            message =
              "${copt} = ${toString path}: this module hands it to credbridge with LoadCredential=, "
              + "which needs an absolute path outside the Nix store, given as a string "
              + "(the store is world-readable, and a path literal is copied into it).";
          }
        ]
      ) credentialFiles
    )
    ++ lib.concatLists (
      lib.mapAttrsToList (
        credName: cred:
        let
          copt = "${opt}.credentials.${attrPath credName}";
          found = sources cred;
        in
        [
          {
            assertion = validCredentialName credName;
            message =
              "${copt}: \"${credName}\" is not a valid credential name "
              + "(1-255 printable ASCII characters, no \"/\", \":\" or \"=\", not \".\" or \"..\").";
          }
          {
            assertion = builtins.length found == 1;
            message =
              "${copt}: set exactly one of ${copt}.encryptedFile, ${copt}.credstore and "
              + "${copt}.file; "
              + (if found == [ ] then "none is set." else "found ${lib.concatStringsSep " and " found}.");
          }
          {
            assertion = cred.guestName == null || validCredentialName cred.guestName;
            message = "${copt}.guestName: \"${toString cred.guestName}\" is not a valid credential name.";
          }
          {
            assertion = cred.credstore == null || validCredentialName cred.credstore;
            message =
              "${copt}.credstore: \"${toString cred.credstore}\" must be a bare name in "
              + "/etc/credstore.encrypted (no \"/\" or \":\"); use ${copt}.encryptedFile for a path.";
          }
        ]
      ) vm.credentials
    );
in
{
  options.services.credbridge = {
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nixos/package.nix { }";
      description = "The credbridge package.";
    };

    vms = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule vmOptions);
      default = { };
      example = lib.literalExpression ''
        {
          myvm = {
            enable = true;
            credentials.api-key.credstore = "myvm.api-key";
          };
        }
      '';
      description = ''
        microVMs of microvm.nix (by their name in `microvm.vms`) whose
        hypervisor credbridge starts, handing the listed credentials to the
        guest's systemd. Each VM must be declared with
        `microvm.vms.<name>.config` and use `microvm.hypervisor =
        "cloud-hypervisor"` or `"qemu"`. Options that apply to one hypervisor
        only say so.
      '';
    };
  };

  config = lib.mkIf (enabledVms != { }) {
    assertions = lib.concatLists (lib.mapAttrsToList assertionsFor enabledVms);

    warnings = lib.concatLists (
      lib.mapAttrsToList (
        name: vm:
        let
          guest = guestOf name;
          isCh = guest.microvm.hypervisor == "cloud-hypervisor";
        in
        lib.optional (isCh && vm.delivery == "argv") (
          "services.credbridge.vms.${name}.delivery = \"argv\": the VM's secrets are "
          + "visible in cloud-hypervisor's command line to every local user."
        )
        ++ lib.optional (isCh && (guest.microvm.vsock.cid or null) != null) (
          "services.credbridge.vms.${name}: microvm.vms.${name}.config.microvm.vsock.cid is "
          + "set, so microvm.nix's vsock relay forwards the guest's notifications; with "
          + "NotifyAccess=main systemd drops them and logs a line for each. Use "
          + "services.credbridge.vms.${name}.vsockCid instead if you need vsock."
        )
      ) enabledVms
    );

    microvm.vms = lib.mapAttrs (name: vm: {
      # The guest side goes in through extraModules, which microvm.nix adds to
      # the VM's own `config` modules. Setting `config` itself would merge the
      # same way, but see below.
      extraModules = [ (guestModule name vm) ];
      # Defining anything under microvm.vms.<name> creates the VM entry, and
      # microvm.nix then evaluates its `config` while it builds the units,
      # before any assertion is looked at: a misspelt or flake-based VM would
      # fail with "value is null while a set was expected". This fallback is
      # overridden by any real definition of `config` (priority 1000 against
      # 100) and only evaluated when there is none, failing with a message that
      # names the VM and the options.
      config = lib.mkDefault (throw (missingVm name));
    }) enabledVms;

    # Goes into the per-VM drop-in microvm.nix already writes
    # (microvm@<name>.service.d/overrides.conf), on top of its template.
    systemd.services = lib.mapAttrs' (
      name: vm:
      let
        guest = guestOf name;
        hypervisor = guest.microvm.hypervisor;
        isQemu = hypervisor == "qemu";
        encrypted = encryptedLines vm;
        plain = plainLines vm (takenOverOf hypervisor guest);
      in
      lib.nameValuePair "microvm@${name}" {
        overrideStrategy = "asDropin";
        # microvm.nix restarts microvm@NAME on a switch only when the guest's
        # toplevel changes (its own restartTriggers). credbridge's options
        # live in the wrapper, which is part of the runner, not of the
        # toplevel: without this, a changed flag, credential name, CID or
        # credbridge package would wait for the VM's next restart. The
        # credential lines are named too, so that a credential moved to
        # another file restarts the VM whether or not switch-to-configuration
        # compares this drop-in.
        restartTriggers =
          lib.optional (builtins.elem hypervisor supported) guest.microvm.${hypervisor}.package
          ++ encrypted
          ++ plain;
        serviceConfig = {
          # microvm.nix sets Type=simple here unless its runner relays the
          # guest's notifications (cloud-hypervisor with microvm.vsock.cid).
          # credbridge always notifies (READY=1 once booted or once the guest
          # says so), so this wins over it.
          Type = lib.mkForce "notify";
          # The template's NotifyAccess=all exists for microvm.nix's relay;
          # credbridge is the main process (microvm-run and the wrapper exec
          # it) and owns readiness.
          NotifyAccess = "main";
          # SIGTERM to credbridge only: it presses the power button and stops
          # the hypervisor itself. control-group (the default) would SIGTERM
          # the hypervisor at the same time.
          KillMode = "mixed";
          # Reset the template's ExecStop=microvm-shutdown (a power-button
          # press or Ctrl-Alt-Del and an unbounded wait for the main PID): with
          # it gone, systemd's SIGTERM reaches credbridge, which does the same
          # press with a bounded fallback.
          ExecStop = [ "" ];
          # --stop-timeout + credbridge's own fallback (cloud-hypervisor:
          # SIGKILL 10 s after SIGTERM; QEMU: SIGTERM 5 s after quit, SIGKILL
          # 10 s after that) + 5 s margin.
          TimeoutStopSec = "${toString (vm.stopTimeout + (if isQemu then 20 else 15))}s";
          # The template's Restart=always would retry a refused start (usage
          # error 2, or 125: a credential over a limit, one missing) every 5 s
          # forever; nothing changes between tries, so stop and show the error.
          # Found by the real-systemd rig (#13); units/ ship the same line.
          RestartPreventExitStatus = "2 125";
        }
        // lib.optionalAttrs (vm.readyTimeout != null) {
          # Above --ready-timeout, so that credbridge reports the failure.
          TimeoutStartSec = "${toString (vm.readyTimeout + 30)}s";
        }
        // lib.optionalAttrs (encrypted != [ ]) { LoadCredentialEncrypted = encrypted; }
        // lib.optionalAttrs (plain != [ ]) { LoadCredential = plain; };
      }
    ) enabledVms;
  };
}
