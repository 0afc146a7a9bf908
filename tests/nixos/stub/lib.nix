# The part of nixpkgs' `lib` that nixos/module.nix, nixos/wrapper.nix,
# nixos/package.nix and tests/nixos/example-host.nix use, written for the
# offline check in tests/nixos/check.sh (no nixpkgs here). Same behaviour as
# nixpkgs for the values these files pass; check.sh compares the results
# against the real lib when NIXPKGS_LIB points at one.
#
# Options and types are records that tests/nixos/stub/eval.nix interprets:
# a type has `fill loc value`, which checks a definition and, for submodules,
# fills in the defaults.
let
  inherit (builtins)
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    genList
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    map
    mapAttrs
    match
    replaceStrings
    substring
    stringLength
    toJSON
    ;

  showLoc = loc: concatStringsSep "." loc;

  mkType = name: check: {
    _type = "option-type";
    inherit name;
    fill =
      loc: v:
      if check v then v else throw "stub lib: ${showLoc loc}: ${toJSON (toString v)} is not ${name}";
  };

  isDerivation = v: isAttrs v && (v.type or null) == "derivation";

  # The submodule's own options, filled from one definition. `config` of the
  # submodule is the result itself (a fixed point, as in the module system).
  fillOptions =
    loc: decls: defs:
    let
      unknown = filter (n: !(decls ? ${n})) (attrNames defs);
    in
    if unknown != [ ] then
      throw "stub lib: ${showLoc loc}: no such option: ${concatStringsSep ", " unknown}"
    else
      mapAttrs (
        n: d:
        if isAttrs d && (d._type or null) == "option" then
          (
            if defs ? ${n} then
              d.type.fill (loc ++ [ n ]) (lib.stripOverride defs.${n})
            else if d ? default then
              d.default
            else
              throw "stub lib: ${showLoc (loc ++ [ n ])} is used but not defined"
          )
        else
          fillOptions (loc ++ [ n ]) d (defs.${n} or { })
      ) decls;

  lib = rec {
    # --- module system surface
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption =
      what:
      mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = "Whether to enable ${what}.";
      };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;
    stripOverride = v: if isAttrs v && (v._type or null) == "override" then stripOverride v.content else v;
    inherit fillOptions;
    # As nixpkgs, the error names the option and the type's description.
    mkOptionType =
      {
        name,
        description ? name,
        check ? (_: true),
        ...
      }:
      mkType description check;
    # Only referenced here (types built with mkOptionType take their merge
    # from eval.nix's rules).
    mergeEqualOption = loc: defs: throw "stub lib: mergeEqualOption is not modelled";

    types = rec {
      str = mkType "a string" isString;
      bool = mkType "a boolean" isBool;
      # As nixpkgs: a path literal or a string that starts with "/".
      path = mkType "a path" (v: isPath v || (isString v && substring 0 1 v == "/"));
      package = mkType "a package" (v: isDerivation v || (isAttrs v && v ? outPath));
      enum = values: mkType "one of ${toJSON values}" (v: elem v values);
      ints = {
        positive = mkType "a positive integer" (v: isInt v && v > 0);
        between = lo: hi: mkType "an integer between ${toString lo} and ${toString hi}" (v: isInt v && v >= lo && v <= hi);
      };
      nullOr = t: {
        _type = "option-type";
        name = "null or ${t.name}";
        fill = loc: v: if v == null then null else t.fill loc v;
      };
      listOf = t: {
        _type = "option-type";
        name = "list of ${t.name}";
        fill =
          loc: v:
          if isList v then
            genList (i: t.fill (loc ++ [ "[${toString i}]" ]) (elemAt v i)) (length v)
          else
            throw "stub lib: ${showLoc loc}: not a list";
      };
      attrsOf = t: {
        _type = "option-type";
        name = "attribute set of ${t.name}";
        fill =
          loc: v:
          if isAttrs v then
            mapAttrs (n: x: t.fill (loc ++ [ n ]) (stripOverride x)) v
          else
            throw "stub lib: ${showLoc loc}: not an attribute set";
      };
      submodule = m: {
        _type = "option-type";
        name = "submodule";
        fill =
          loc: v:
          let
            name = lib.last loc;
            self = fillOptions loc ((if isFunction m then m { inherit name lib; config = self; } else m).options) v;
          in
          self;
      };
    };

    # --- attrsets
    filterAttrs = pred: set: listToAttrs (concatMap (n: if pred n set.${n} then [ (nameValuePair n set.${n}) ] else [ ]) (attrNames set));
    mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
    mapAttrs' = f: set: listToAttrs (mapAttrsToList f set);
    nameValuePair = name: value: { inherit name value; };
    optionalAttrs = cond: set: if cond then set else { };
    inherit mapAttrs attrNames;
    recursiveUpdate =
      a: b:
      a
      // mapAttrs (n: v: if isAttrs v && a ? ${n} && isAttrs a.${n} && !(isDerivation v) then recursiveUpdate a.${n} v else v) b;

    # --- lists
    inherit filter concatLists elem length foldl';
    concatMap = f: list: concatLists (map f list);
    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    last = list: elemAt list (length list - 1);
    any = builtins.any;
    all = builtins.all;

    # --- strings
    inherit concatStringsSep;
    optionalString = cond: s: if cond then s else "";
    hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
    removePrefix =
      prefix: s:
      if hasPrefix prefix s then substring (stringLength prefix) (stringLength s - stringLength prefix) s else s;
    # As nixpkgs for the separators used here (one character, no regex
    # metacharacters).
    splitString = sep: s: filter isString (builtins.split sep s);
    # As nixpkgs: leave words of safe characters bare, single-quote the rest.
    escapeShellArg =
      arg:
      let
        s = toString arg;
      in
      if match "[[:alnum:],._+:@%/-]+" s == null then "'${replaceStrings [ "'" ] [ "'\\''" ] s}'" else s;
    escapeShellArgs = args: concatStringsSep " " (map escapeShellArg args);

    # --- what nixos/package.nix uses. cleanSourceWith as nixpkgs: builtins.path
    # with the filter (check.sh evaluates it with --readonly-mode, which
    # computes the store path without writing the store).
    importTOML = file: builtins.fromTOML (builtins.readFile file);
    cleanSourceWith =
      {
        src,
        filter,
        name ? "source",
      }:
      builtins.path {
        path = src;
        inherit name filter;
      };
    licenses = {
      mit = "MIT";
      asl20 = "Apache-2.0";
    };
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };

  elemAt = builtins.elemAt;
in
lib
