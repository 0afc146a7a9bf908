# Evaluates nixos/module.nix for a host configuration without nixpkgs: a small
# stand-in for the NixOS module system, just enough for this module.
#
#   nix-instantiate --eval --strict -E '(import tests/nixos/stub/eval.nix { }).config.assertions'
#
# What it does, in the module system's terms:
#   - services.credbridge: the host's definitions checked against the
#     module's option declarations (types, unknown names), defaults filled in,
#     submodules evaluated with their `name` and `config`;
#   - the module's `config`: `mkIf` at its top is honoured; `mkForce` /
#     `mkDefault` on leaves are kept and stripped by render.nix. A nested
#     `mkIf` or `mkMerge` would be taken literally: the module uses none;
#   - what microvm.nix's host module defines per VM (the drop-in's Type= and
#     X-RestartIfChanged=, an assertion), merged with the module's definitions
#     of systemd.services by NixOS' rules (priority, lists concatenate, single
#     values must agree);
#   - microvm.vms.<name>: microvm.nix's merge of the host's `config` (highest
#     priority wins, as in the module system, so the module's `mkDefault`
#     fallback only counts when the host declares nothing), `flake` and
#     `extraModules`; `config.config` is the guest's configuration: the
#     guest modules merged over microvm.nix's defaults for the options the
#     module reads or sets. A guest definition under `mkIf` counts only when
#     its condition holds (read lazily, when the value is);
#   - restartTriggers of systemd.services concatenate (microvm.nix's first).
# Real nixpkgs lib: tests/nixos/real-eval.nix, same interface.
{
  host ? ../example-host.nix,
  lib ? import ./lib.nix,
}:

let
  pkgs = import ./pkgs.nix { inherit lib; };
  inherit (builtins)
    attrNames
    foldl'
    isAttrs
    isFunction
    isList
    listToAttrs
    map
    mapAttrs
    ;

  isDerivation = v: isAttrs v && (v.type or null) == "derivation";
  callModule = m: args: if isFunction m then m args else m;

  # Two definitions of the same place: attribute sets merge, lists
  # concatenate, anything else must not be defined twice. Lazy per attribute.
  isIf = v: isAttrs v && (v._type or null) == "if";
  mergeDefs =
    loc: a: b:
    a
    // mapAttrs (
      n: v:
      if !(a ? ${n}) then
        v
      else if isIf v then
        (if v.condition then (mergeDefs loc { ${n} = a.${n}; } { ${n} = v.content; }).${n} else a.${n})
      else if isIf a.${n} then
        (if a.${n}.condition then (mergeDefs loc { ${n} = a.${n}.content; } { ${n} = v; }).${n} else v)
      else if isAttrs v && isAttrs a.${n} && !(isDerivation v) && !(isDerivation a.${n}) then
        mergeDefs "${loc}.${n}" a.${n} v
      else if isList v && isList a.${n} then
        a.${n} ++ v
      else
        throw "stub eval: ${loc}.${n} is defined more than once"
    ) b;

  topLevel =
    c:
    if (c._type or null) == "if" then
      (if c.condition then c.content else { })
    else if (c._type or null) == "merge" then
      throw "stub eval: mkMerge at the top of config is not supported"
    else
      c;

  priority = d: if isAttrs d && (d._type or null) == "override" then d.priority else 100;

  # The guest's definitions over the defaults: a definition whose mkIf does
  # not hold leaves the default.
  withDefaults =
    d: m:
    d
    // mapAttrs (
      n: v:
      if isIf v then
        (if v.condition then withDefaults { ${n} = d.${n} or null; } { ${n} = v.content; } else d).${n}
      else if isAttrs v && isAttrs (d.${n} or null) && !(isDerivation v) && !(isDerivation d.${n}) then
        withDefaults d.${n} v
      else
        v
    ) m;

  # microvm.nix's defaults for the guest options the module touches
  # (nixos-modules/microvm/options.nix), and the guest's toplevel, which
  # microvm.nix's host module makes a restart trigger of microvm@NAME.
  guestDefaults = name: {
    system.build.toplevel = pkgs.runCommand "nixos-system-${name}-25.05" { } "";
    microvm = {
      hypervisor = "qemu";
      cpu = null;
      credentialFiles = { };
      vsock.cid = null;
      socket = "${name}.sock";
      prettyProcnames = true;
      graphics.enable = false;
      vmHostPackages = pkgs;
      cloud-hypervisor = {
        extraArgs = [ ];
        platformOEMStrings = [ ];
        package = pkgs.cloud-hypervisor;
      };
      qemu = {
        # x86_64-linux: lib.mkDefault "microvm".
        machine = "microvm";
        extraArgs = [ ];
        package = pkgs.qemu_kvm;
      };
    };
  };

  evalGuest =
    name: modules:
    let
      guest = withDefaults (guestDefaults name) (
        foldl' (mergeDefs "microvm.vms.${name}.config") { } (
          map (m: callModule m { inherit lib pkgs; config = guest; }) modules
        )
      );
    in
    { config = guest; };

  hostDefs = callModule (if builtins.isFunction host || isAttrs host then host else import host) {
    inherit config lib pkgs;
  };
  module = import ../../../nixos/module.nix { inherit config lib pkgs; };
  ours = topLevel module.config;

  cfg = lib.fillOptions [ "services" "credbridge" ] module.options.services.credbridge (
    (hostDefs.services or { }).credbridge or { }
  );

  hostVms = (hostDefs.microvm or { }).vms or { };
  ourVms = (ours.microvm or { }).vms or { };

  vms = listToAttrs (
    map (
      name:
      let
        h = hostVms.${name} or { };
        o = ourVms.${name} or { };
        configDefs = lib.optional (h ? config) h.config ++ lib.optional (o ? config) o.config;
        best = foldl' (p: d: if priority d < p then priority d else p) 1500 configDefs;
        winners = map lib.stripOverride (builtins.filter (d: priority d == best) configDefs);
        extraModules = (h.extraModules or [ ]) ++ (o.extraModules or [ ]);
      in
      {
        inherit name;
        value = {
          flake = h.flake or null;
          inherit extraModules;
          config = if winners == [ ] then null else evalGuest name (winners ++ extraModules);
        };
      }
    ) (attrNames (hostVms // ourVms))
  );

  # What microvm.nix's host module defines (nixos-modules/host/default.nix):
  # the per-VM drop-in of microvm@NAME, which forces the guest's evaluation,
  # and an assertion per VM.
  microvmServices = lib.mapAttrs' (
    name: vm:
    lib.nameValuePair "microvm@${name}" {
      overrideStrategy = "asDropin";
      restartTriggers = [ vm.config.config.system.build.toplevel ];
      serviceConfig = {
        X-RestartIfChanged = [ "" true ];
        # declaredRunner.supportsNotifySocket: only cloud-hypervisor's runner
        # relays the guest's notifications, and only with a vsock CID.
        Type =
          if vm.config.config.microvm.hypervisor == "cloud-hypervisor" && vm.config.config.microvm.vsock.cid != null then
            "notify"
          else
            "simple";
      };
    }
  ) vms;
  microvmAssertions = lib.mapAttrsToList (name: vm: {
    assertion = vm.config != null -> vm.flake == null;
    message = "vm ${name}: Fully-declarative VMs cannot also set a flake!";
  }) vms;

  # NixOS' merge of serviceConfig values, microvm.nix's definitions first
  # (module order): highest priority wins, lists concatenate, single values
  # must agree.
  mergeSetting =
    loc: defs:
    let
      best = foldl' (p: d: if priority d < p then priority d else p) 1500 defs;
      winners = map lib.stripOverride (builtins.filter (d: priority d == best) defs);
    in
    if lib.any isList winners then
      builtins.concatLists (map (v: if isList v then v else [ v ]) winners)
    else if lib.all (v: v == builtins.head winners) winners then
      builtins.head winners
    else
      throw "stub eval: ${loc} has conflicting definitions";
  mergeService =
    name: defs:
    {
      overrideStrategy = mergeSetting "${name}.overrideStrategy" (
        builtins.concatMap (d: lib.optional (d ? overrideStrategy) d.overrideStrategy) defs
      );
      restartTriggers = builtins.concatMap (d: d.restartTriggers or [ ]) defs;
      serviceConfig =
        let
          keys = attrNames (foldl' (acc: d: acc // (d.serviceConfig or { })) { } defs);
        in
        listToAttrs (
          map (k: {
            name = k;
            value = mergeSetting "systemd.services.${name}.serviceConfig.${k}" (
              builtins.concatMap (d: lib.optional ((d.serviceConfig or { }) ? ${k}) d.serviceConfig.${k}) defs
            );
          }) keys
        );
    };
  ourServices = ours.systemd.services or { };
  services = listToAttrs (
    map (name: {
      inherit name;
      value = mergeService name (
        lib.optional (microvmServices ? ${name}) microvmServices.${name}
        ++ lib.optional (ourServices ? ${name}) ourServices.${name}
      );
    }) (attrNames (microvmServices // ourServices))
  );

  config = {
    services.credbridge = cfg;
    microvm.vms = vms;
    systemd.services = services;
    assertions = microvmAssertions ++ (ours.assertions or [ ]);
    warnings = ours.warnings or [ ];
  };
in
{
  inherit config pkgs lib;
  options = module.options;
}
