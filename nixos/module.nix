# services.credbridge: secrets for microvm.nix cloud-hypervisor VMs, handed to
# the guest as SMBIOS type 11 OEM strings (systemd system credentials).
#
# For every VM in services.credbridge.vms this module
#   - sets the guest's `microvm.cloud-hypervisor.package` to a wrapper
#     (./wrapper.nix) whose bin/cloud-hypervisor execs
#     `credbridge run ... -- <real cloud-hypervisor> "$@"`, through
#     `microvm.vms.<name>.extraModules`;
#   - adds to microvm.nix's per-VM drop-in of `microvm@<name>.service`:
#     `LoadCredential(Encrypted)=` for each credential, `Type=notify`,
#     `NotifyAccess=main`, `KillMode=mixed`, a reset `ExecStop=` and a
#     `TimeoutStopSec=` above credbridge's own stop sequence.
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

  # "/etc/x" -> ok; ./x (a path literal: Nix copies it to the store when the
  # unit text is built) or "/nix/store/..." -> not ok.
  outsideStore = p: !(builtins.isPath p) && !(lib.hasPrefix "${builtins.storeDir}/" (toString p));

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
  plainLines =
    vm: lib.mapAttrsToList loadCredentialValue (lib.filterAttrs (_: c: c.file != null) vm.credentials);

  # credbridge's options for one VM, placed before `--` by ./wrapper.nix.
  credbridgeFlags =
    vm:
    [
      "--delivery"
      vm.delivery
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
    ++ lib.concatMap (s: [ "--oem-string" s ]) vm.oemStrings
    ++ lib.optionals (vm.logLevel != null) [ "--log-level" vm.logLevel ]
    ++ vm.extraFlags;

  # The module added to the guest's configuration. It runs in the guest's
  # module system, so `config` here is the guest's.
  guestModule =
    name: vm:
    { config, pkgs, ... }:
    let
      hostPkgs = config.microvm.vmHostPackages or pkgs;
      # microvm.nix's own default for microvm.cloud-hypervisor.package.
      realPackage =
        if vm.hypervisorPackage != null then
          vm.hypervisorPackage
        else if config.microvm.graphics.enable or false then
          hostPkgs.cloud-hypervisor-graphics
        else
          hostPkgs.cloud-hypervisor;
    in
    {
      microvm.cloud-hypervisor.package = hostPkgs.callPackage ./wrapper.nix {
        credbridge = cfg.package;
        cloud-hypervisor = realPackage;
        vmName = name;
        flags = credbridgeFlags vm;
        prettyProcname = config.microvm.prettyProcnames or true;
      };
    };

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
        + "set microvm.cloud-hypervisor.package in the VM's own configuration with "
        + "nixos/wrapper.nix and the unit settings of units/microvm@.service.d/credbridge.conf "
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
          type = lib.types.nullOr lib.types.path;
          default = null;
          example = "/etc/credstore.encrypted/myvm.api-key";
          description = ''
            Absolute path of a credential encrypted with
            `systemd-creds encrypt --name=${name}`, outside the Nix store. Becomes
            `LoadCredentialEncrypted=${name}:PATH`: PID 1 decrypts it when the
            VM's unit starts.

            Give it as a string. A Nix path literal (`./x.cred`) would be copied
            into the world-readable Nix store, and is refused.
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
          type = lib.types.nullOr lib.types.path;
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
            `file`. Guests with systemd before 257 read at most 4 KiB of OEM
            strings in total (see `smbiosBudget`).
          '';
        };

        oemStrings = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ ];
          example = [ "io.systemd.credential:hostname=myvm" ];
          description = ''
            Extra static OEM strings (`credbridge --oem-string`). They are not
            secret: they end up in the Nix store. Counted against `smbiosBudget`.
          '';
        };

        delivery = lib.mkOption {
          type = lib.types.enum [ "api" "argv" ];
          default = "api";
          description = ''
            How credbridge gives cloud-hypervisor the VM and its OEM strings:
            `api` through cloud-hypervisor's REST API on the VM's API socket
            (the secrets never appear in any process's argv), `argv` by adding
            them to the command line (visible in `ps` to every local user).
          '';
        };

        ready = lib.mkOption {
          type = lib.types.enum [ "booted" "guest" ];
          default = "booted";
          description = ''
            When the unit reports READY=1: `booted` once the VM was created and
            booted; `guest` once the guest's own systemd (253 or later) sends
            READY=1 over vsock. `guest` needs `vsockCid`, with the VM's
            `microvm.vsock.cid` left unset.
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
            guest's READY=1 itself. Use it instead of the VM's
            `microvm.vsock.cid`: with that set, microvm.nix starts its own relay
            for the guest's notifications, which needs NotifyAccess=all.
          '';
        };

        smbiosBudget = lib.mkOption {
          type = lib.types.ints.between 1 65535;
          default = 4096;
          description = ''
            Bytes of OEM strings credbridge accepts before refusing to start the
            VM. Guests with systemd 252-256 read only the first 4096 bytes of the
            SMBIOS type 11 table and silently cut or drop the rest; raise this
            only for guests with systemd 257 or later.
          '';
        };

        stopTimeout = lib.mkOption {
          type = lib.types.ints.positive;
          default = 30;
          description = ''
            Seconds between the ACPI power button and SIGTERM to cloud-hypervisor
            when the unit stops (SIGKILL follows 10 s later). The unit's
            TimeoutStopSec= is set to this plus 15.
          '';
        };

        hypervisorPackage = lib.mkOption {
          type = lib.types.nullOr lib.types.package;
          default = null;
          example = lib.literalExpression "pkgs.cloud-hypervisor";
          description = ''
            The cloud-hypervisor package credbridge starts. Null: microvm.nix's
            default for the VM (cloud-hypervisor, or cloud-hypervisor-graphics
            with microvm.graphics.enable). Set it here, not in the VM's
            `microvm.cloud-hypervisor.package`, which this module sets to the
            credbridge wrapper.
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
      guest = guestOf name;
      hypervisor = guest.microvm.hypervisor;
      guestCid = guest.microvm.vsock.cid or null;
      extraArgs = guest.microvm.cloud-hypervisor.extraArgs or [ ];
    in
    [
      {
        assertion = hypervisor == "cloud-hypervisor";
        message =
          "${opt}.enable needs microvm.vms.${name}.config.microvm.hypervisor = "
          + "\"cloud-hypervisor\"; it is \"${hypervisor}\".";
      }
      {
        assertion = vm.ready != "guest" || vm.vsockCid != null;
        message =
          "${opt}.ready = \"guest\" needs ${opt}.vsockCid: credbridge adds the vsock "
          + "device and listens for the guest's READY=1 itself."
          + lib.optionalString (guestCid != null) (
            " Move the CID there from microvm.vms.${name}.config.microvm.vsock.cid "
            + "(${toString guestCid}) and set that to null."
          );
      }
      {
        assertion = vm.vsockCid == null || (guestCid == null && !(builtins.elem "--vsock" extraArgs));
        message =
          "${opt}.vsockCid and microvm.vms.${name}.config.microvm.vsock.cid (or --vsock in "
          + "microvm.vms.${name}.config.microvm.cloud-hypervisor.extraArgs) are both set. "
          + "Set only ${opt}.vsockCid: microvm.nix's vsock relay would take the guest's "
          + "READY=1 (it needs NotifyAccess=all, and this module sets main).";
      }
    ]
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
        ++ map (
          src:
          let
            p = cred.${src};
          in
          {
            assertion = p == null || (outsideStore p && lib.hasPrefix "/" (toString p));
            message =
              "${copt}.${src} = ${toString p}: "
              + (
                if p != null && builtins.isPath p then
                  "a Nix path literal is copied into the world-readable Nix store; "
                  + "write the absolute path as a string."
                else if p != null && !(outsideStore p) then
                  "the Nix store is world-readable; keep secrets outside it."
                else
                  "must be an absolute path."
              );
          }
        ) [ "encryptedFile" "file" ]
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
        cloud-hypervisor credbridge starts, handing the listed credentials to
        the guest as SMBIOS type 11 OEM strings. Each VM must be declared with
        `microvm.vms.<name>.config` and use `microvm.hypervisor =
        "cloud-hypervisor"`.
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
        in
        lib.optional (vm.delivery == "argv") (
          "services.credbridge.vms.${name}.delivery = \"argv\": the VM's secrets are "
          + "visible in cloud-hypervisor's command line to every local user."
        )
        ++ lib.optional ((guest.microvm.vsock.cid or null) != null) (
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
      lib.nameValuePair "microvm@${name}" {
        overrideStrategy = "asDropin";
        serviceConfig = {
          # microvm.nix sets Type=simple here unless microvm.vsock.cid is set.
          # credbridge always notifies (READY=1 once booted or once the guest
          # says so), so this wins over it.
          Type = lib.mkForce "notify";
          # The template's NotifyAccess=all exists for microvm.nix's relay;
          # credbridge is the main process (microvm-run and the wrapper exec
          # it) and owns readiness.
          NotifyAccess = "main";
          # SIGTERM to credbridge only: it presses the power button and stops
          # cloud-hypervisor itself. control-group (the default) would SIGTERM
          # the hypervisor at the same time.
          KillMode = "mixed";
          # Reset the template's ExecStop=microvm-shutdown (a power-button
          # press and an unbounded wait for the main PID): with it gone,
          # systemd's SIGTERM reaches credbridge, which does the same press
          # with a bounded fallback.
          ExecStop = [ "" ];
          # --stop-timeout + credbridge's 10 s SIGTERM grace + 5 s margin.
          TimeoutStopSec = "${toString (vm.stopTimeout + 15)}s";
        }
        // lib.optionalAttrs (vm.readyTimeout != null) {
          # Above --ready-timeout, so that credbridge reports the failure.
          TimeoutStartSec = "${toString (vm.readyTimeout + 30)}s";
        }
        // lib.optionalAttrs (encryptedLines vm != [ ]) { LoadCredentialEncrypted = encryptedLines vm; }
        // lib.optionalAttrs (plainLines vm != [ ]) { LoadCredential = plainLines vm; };
      }
    ) enabledVms;
  };
}
