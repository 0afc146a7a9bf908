//! The clap-level rules of cloud-hypervisor 54's command line: which options exist, how many
//! times and with how many values each may appear, `--opt=value`, the vm-config group's need for
//! a payload, and which tokens belong to VMM-level options.
//!
//! This mirrors clap 4's parser as CH configures it (`create_app` in CH's `main.rs`), not clap in
//! general: no positionals, no subcommands, no hyphen values.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::ArgvError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arity {
    /// `SetTrue`: no value, at most once.
    Flag,
    /// `Count` (`-v`): no value, any number of times.
    Count,
    /// `Set`: exactly one value, at most once.
    One,
    /// `Set` with `num_args(0..=1)`: a missing value reads as `""` (`--rtc`).
    ZeroOrOne,
    /// `Append` with `num_args(1..)`: one or more values per occurrence, any number of times.
    Many,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    /// Requires a payload (`--kernel`/`--firmware`); becomes part of the VmConfig.
    VmConfig,
    Payload,
    /// Stays on CH's command line when the VM goes through `vm.create`.
    Vmm,
}

pub(crate) struct Spec {
    pub long: Option<&'static str>,
    pub short: Option<char>,
    pub arity: Arity,
    pub group: Group,
}

impl Spec {
    /// How errors name this option.
    pub fn display(&self) -> String {
        match (self.long, self.short) {
            (Some(long), _) => format!("--{long}"),
            (None, Some(short)) => format!("-{short}"),
            (None, None) => String::new(),
        }
    }
}

const fn long(name: &'static str, arity: Arity, group: Group) -> Spec {
    Spec {
        long: Some(name),
        short: None,
        arity,
        group,
    }
}

use Arity::{Count, Flag, Many, One, ZeroOrOne};
use Group::{Payload, VmConfig, Vmm};

/// Every option of a default (`kvm,io_uring`) x86_64 build. Feature-gated ones (`--gpu`,
/// `--fw-cfg-config`, `--igvm`, `--gdb`, `--dbus-*`, ...) are absent, so they are unknown, as in
/// the nixpkgs binary. `--seccomp` is in no clap group; for us it is VMM-level like the rest.
pub(crate) const SPECS: &[Spec] = &[
    long("api-socket", One, Vmm),
    long("balloon", One, VmConfig),
    long("cmdline", One, VmConfig),
    long("console", One, VmConfig),
    long("cpus", One, VmConfig),
    long("debug-console", One, VmConfig),
    long("device", Many, VmConfig),
    long("disk", Many, VmConfig),
    long("event-monitor", One, Vmm),
    long("firmware", One, Payload),
    long("fs", Many, VmConfig),
    long("generic-vhost-user", Many, VmConfig),
    long("initramfs", One, VmConfig),
    long("kernel", One, Payload),
    long("landlock", Flag, VmConfig),
    long("landlock-rules", Many, VmConfig),
    long("log-file", One, Vmm),
    long("log-format", One, Vmm),
    long("memory", One, VmConfig),
    long("memory-zone", Many, VmConfig),
    long("net", Many, VmConfig),
    long("no-shutdown", Flag, Vmm),
    long("numa", Many, VmConfig),
    long("pci-segment", Many, VmConfig),
    long("platform", One, VmConfig),
    long("pmem", Many, VmConfig),
    long("pvpanic", Flag, VmConfig),
    long("rate-limit-group", Many, VmConfig),
    long("restore", One, Vmm),
    long("rng", One, VmConfig),
    long("rtc", ZeroOrOne, VmConfig),
    long("seccomp", One, Vmm),
    long("serial", One, VmConfig),
    long("tpm", One, VmConfig),
    long("user-device", Many, VmConfig),
    Spec {
        long: None,
        short: Some('v'),
        arity: Count,
        group: Vmm,
    },
    long("vdpa", Many, VmConfig),
    Spec {
        long: Some("version"),
        short: Some('V'),
        arity: Flag,
        group: Vmm,
    },
    long("vsock", One, VmConfig),
    long("watchdog", Flag, VmConfig),
];

fn find_long(name: &str) -> Option<usize> {
    SPECS.iter().position(|spec| spec.long == Some(name))
}

fn find_short(c: char) -> Option<usize> {
    SPECS.iter().position(|spec| spec.short == Some(c))
}

/// Where a value came from, so that `rewrite_platform` can replace it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueAt {
    /// The whole token at this index is the value (`--platform V`).
    Token(usize),
    /// The token at this index is `--name=V`.
    Attached(usize),
    /// No value was written (`--rtc` alone).
    Implied,
}

/// One value of one option.
#[derive(Clone, Debug)]
pub(crate) struct Value {
    pub text: String,
    pub at: ValueAt,
}

/// What clap would hand to CH's `main`: per option, whether it was given and its values.
#[derive(Debug, Default)]
pub(crate) struct Matches {
    /// Indexed like `SPECS`; `Some` when given (flags get an empty list).
    given: Vec<Option<Vec<Value>>>,
    /// Spec indices in order of first appearance.
    order: Vec<usize>,
    verbosity: u8,
    /// The VMM-level tokens, in argv order, for CH's command line when the VM config goes
    /// through the API instead.
    pub vmm_argv: Vec<OsString>,
    /// Index of a top-level `--`, which ends option parsing.
    pub escape_at: Option<usize>,
}

impl Matches {
    fn index(name: &str) -> Option<usize> {
        SPECS.iter().position(|spec| {
            spec.long == Some(name) || spec.short.is_some_and(|c| name == c.to_string())
        })
    }

    fn values(&self, name: &str) -> Option<&[Value]> {
        let idx = Self::index(name)?;
        self.given.get(idx)?.as_deref()
    }

    pub fn present(&self, name: &str) -> bool {
        self.values(name).is_some()
    }

    pub fn one(&self, name: &str) -> Option<&str> {
        self.values(name)?.first().map(|v| v.text.as_str())
    }

    pub fn one_at(&self, name: &str) -> Option<(&str, ValueAt)> {
        self.values(name)?.first().map(|v| (v.text.as_str(), v.at))
    }

    pub fn many(&self, name: &str) -> Option<Vec<&str>> {
        self.values(name)
            .map(|values| values.iter().map(|v| v.text.as_str()).collect())
    }

    pub fn verbosity(&self) -> u8 {
        self.verbosity
    }

    fn first_vm_config_option(&self) -> Option<&'static Spec> {
        self.order
            .iter()
            .filter_map(|&idx| SPECS.get(idx))
            .find(|spec| spec.group == Group::VmConfig)
    }
}

pub(crate) enum Parsed {
    /// `-h`/`--help` was reached before any error: CH prints help and exits 0.
    Help,
    Matches(Matches),
}

struct Parser {
    m: Matches,
    /// The option still collecting space-separated values, and how many it has so far.
    pending: Option<(usize, usize)>,
    /// The option written most recently, for the hint on a stray argument.
    last: Option<usize>,
}

impl Parser {
    fn mark(&mut self, idx: usize) -> Result<(), ArgvError> {
        let spec = SPECS
            .get(idx)
            .ok_or_else(|| ArgvError::UnknownOption(String::new()))?;
        let slot = self
            .m
            .given
            .get_mut(idx)
            .ok_or_else(|| ArgvError::UnknownOption(spec.display()))?;
        match slot {
            Some(_) if matches!(spec.arity, Flag | One | ZeroOrOne) => {
                return Err(ArgvError::Repeated {
                    option: spec.display(),
                });
            }
            Some(_) => {}
            None => {
                *slot = Some(Vec::new());
                self.m.order.push(idx);
            }
        }
        self.last = Some(idx);
        Ok(())
    }

    fn push_value(&mut self, idx: usize, text: String, at: ValueAt) {
        if let Some(Some(values)) = self.m.given.get_mut(idx) {
            values.push(Value { text, at });
        }
    }

    /// Called before any new option and at the end, where clap checks the value count of the
    /// option before it.
    fn resolve_pending(&mut self) -> Result<(), ArgvError> {
        if let Some((idx, count)) = self.pending.take() {
            if count == 0 {
                let spec = SPECS
                    .get(idx)
                    .ok_or_else(|| ArgvError::UnknownOption(String::new()))?;
                if spec.arity != ZeroOrOne {
                    return Err(ArgvError::MissingValue {
                        option: spec.display(),
                    });
                }
                // `--rtc` alone means `--rtc ""` (clap's default_missing_value).
                self.push_value(idx, String::new(), ValueAt::Implied);
            }
        }
        Ok(())
    }

    fn is_vmm(idx: usize) -> bool {
        SPECS.get(idx).is_some_and(|spec| spec.group == Vmm)
    }

    fn long(&mut self, i: usize, token: &OsStr, rest: &[u8]) -> Result<bool, ArgvError> {
        let (name, attached) = match rest.iter().position(|&b| b == b'=') {
            Some(eq) => (&rest[..eq], rest.get(eq + 1..)),
            None => (rest, None),
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return Err(ArgvError::UnknownOption(format!(
                "--{}",
                String::from_utf8_lossy(name)
            )));
        };
        if name == "help" {
            if attached.is_some() {
                return Err(ArgvError::UnexpectedValue {
                    option: "--help".into(),
                });
            }
            return Ok(true);
        }
        let idx = find_long(name).ok_or_else(|| ArgvError::UnknownOption(format!("--{name}")))?;
        let spec = SPECS
            .get(idx)
            .ok_or_else(|| ArgvError::UnknownOption(format!("--{name}")))?;
        if Self::is_vmm(idx) {
            self.m.vmm_argv.push(token.to_owned());
        }
        match (spec.arity, attached) {
            (Flag | Count, Some(_)) => Err(ArgvError::UnexpectedValue {
                option: spec.display(),
            }),
            (Flag | Count, None) => self.mark(idx).map(|()| false),
            (_, Some(value)) => {
                self.mark(idx)?;
                let text = utf8(value, spec)?;
                self.push_value(idx, text, ValueAt::Attached(i));
                Ok(false)
            }
            (_, None) => {
                self.mark(idx)?;
                self.pending = Some((idx, 0));
                Ok(false)
            }
        }
    }

    fn short(&mut self, rest: &[u8]) -> Result<bool, ArgvError> {
        let cluster = std::str::from_utf8(rest)
            .map_err(|_| ArgvError::UnknownOption(format!("-{}", String::from_utf8_lossy(rest))))?;
        for c in cluster.chars() {
            if c == 'h' {
                return Ok(true);
            }
            let idx = find_short(c).ok_or_else(|| ArgvError::UnknownOption(format!("-{c}")))?;
            let spec = SPECS
                .get(idx)
                .ok_or_else(|| ArgvError::UnknownOption(format!("-{c}")))?;
            match spec.arity {
                Count => {
                    // The fixture's vmm_argv carries `-v` once however often it is given;
                    // the count itself travels in `ChArgv::verbosity`.
                    if self.m.verbosity == 0 {
                        self.m.vmm_argv.push("-v".into());
                    }
                    self.m.verbosity = self.m.verbosity.saturating_add(1);
                    self.mark(idx)?;
                }
                _ => {
                    self.mark(idx)?;
                    if Self::is_vmm(idx) {
                        self.m.vmm_argv.push(spec.display().into());
                    }
                }
            }
        }
        Ok(false)
    }
}

fn utf8(value: &[u8], spec: &Spec) -> Result<String, ArgvError> {
    String::from_utf8(value.to_vec()).map_err(|_| ArgvError::NotUtf8 {
        option: spec.display(),
    })
}

/// Applies clap's rules to `args` (argv without argv[0]).
pub(crate) fn parse(args: &[OsString]) -> Result<Parsed, ArgvError> {
    if args.is_empty() {
        // `arg_required_else_help`: CH prints help and exits 2.
        return Err(ArgvError::NoArguments);
    }
    let mut p = Parser {
        m: Matches {
            given: SPECS.iter().map(|_| None).collect(),
            ..Matches::default()
        },
        pending: None,
        last: None,
    };
    for (i, token) in args.iter().enumerate() {
        let bytes = token.as_bytes();
        if p.m.escape_at.is_some() {
            return Err(ArgvError::UnexpectedArgument {
                arg: token.to_string_lossy().into_owned(),
                after: None,
            });
        }
        if bytes == b"--" {
            p.m.escape_at = Some(i);
            continue;
        }
        let help = if let Some(rest) = bytes.strip_prefix(b"--") {
            p.resolve_pending()?;
            p.long(i, token, rest)?
        } else if let Some(rest) = bytes.strip_prefix(b"-").filter(|rest| !rest.is_empty()) {
            p.resolve_pending()?;
            p.short(rest)?
        } else {
            let Some((idx, count)) = p.pending else {
                return Err(ArgvError::UnexpectedArgument {
                    arg: token.to_string_lossy().into_owned(),
                    after: p.last.and_then(|idx| SPECS.get(idx)).map(Spec::display),
                });
            };
            let spec = SPECS
                .get(idx)
                .ok_or_else(|| ArgvError::UnknownOption(String::new()))?;
            let text = utf8(bytes, spec)?;
            p.push_value(idx, text, ValueAt::Token(i));
            if Parser::is_vmm(idx) {
                p.m.vmm_argv.push(token.clone());
            }
            p.pending = match spec.arity {
                Many => Some((idx, count.saturating_add(1))),
                _ => None,
            };
            false
        };
        if help {
            return Ok(Parsed::Help);
        }
    }
    p.resolve_pending()?;
    let m = p.m;

    if let Some(value) = m.one("seccomp") {
        if !["true", "false", "log", "errno"].contains(&value) {
            return Err(ArgvError::InvalidChoice {
                option: "--seccomp".into(),
                expected: "true, false, log or errno",
            });
        }
    }
    if !m.present("kernel") && !m.present("firmware") {
        if let Some(spec) = m.first_vm_config_option() {
            return Err(ArgvError::MissingPayload {
                option: spec.display(),
            });
        }
    }
    Ok(Parsed::Matches(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn matches(list: &[&str]) -> Matches {
        match parse(&args(list)) {
            Ok(Parsed::Matches(m)) => m,
            Ok(Parsed::Help) => panic!("{list:?}: help"),
            Err(e) => panic!("{list:?}: {e}"),
        }
    }

    fn error_option(list: &[&str]) -> Option<String> {
        match parse(&args(list)) {
            Err(e) => e.option().map(str::to_owned),
            Ok(_) => panic!("{list:?} accepted"),
        }
    }

    #[test]
    fn append_options_take_many_values() {
        let m = matches(&[
            "--kernel",
            "k",
            "--disk",
            "a",
            "b",
            "--disk",
            "c",
            "--watchdog",
        ]);
        assert_eq!(m.many("disk"), Some(vec!["a", "b", "c"]));
        assert!(m.present("watchdog"));
    }

    #[test]
    fn equals_form() {
        let m = matches(&[
            "--kernel=k",
            "--cmdline=-v init=/bin/sh",
            "--memory=size=1G",
        ]);
        assert_eq!(m.one("kernel"), Some("k"));
        assert_eq!(m.one("cmdline"), Some("-v init=/bin/sh"));
        assert_eq!(m.one("memory"), Some("size=1G"));
        assert_eq!(
            m.one_at("memory").map(|(_, at)| at),
            Some(ValueAt::Attached(2))
        );
    }

    #[test]
    fn rtc_value_is_optional() {
        assert_eq!(matches(&["--kernel", "k", "--rtc"]).one("rtc"), Some(""));
        assert_eq!(
            matches(&["--kernel", "k", "--rtc", "--watchdog"]).one("rtc"),
            Some("")
        );
        assert_eq!(
            matches(&["--kernel", "k", "--rtc", "id=r"]).one("rtc"),
            Some("id=r")
        );
        assert_eq!(
            error_option(&["--kernel", "k", "--rtc", "id=r", "x"]).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn clap_errors_name_the_option() {
        let table: &[(&[&str], Option<&str>)] = &[
            (&["--kernel", "k", "--kernel", "k"], Some("--kernel")),
            (&["--kernel", "k", "--cmdline", "-v"], Some("--cmdline")),
            (&["--kernel", "k", "--cmdline"], Some("--cmdline")),
            (&["--cpus", "boot=2"], Some("--cpus")),
            (&["--kernel", "k", "--gpu", "x"], Some("--gpu")),
            (&["--kernel", "k", "--landlock", "on"], Some("on")),
            (&["--kernel", "k", "--landlock=on"], Some("--landlock")),
            (&["--kernel", "k", "--disk=a", "b"], Some("b")),
            (
                &["--kernel", "k", "--watchdog", "--watchdog"],
                Some("--watchdog"),
            ),
            (&["--kernel", "k", "-x"], Some("-x")),
            (&["--kernel", "k", "--seccomp", "maybe"], Some("--seccomp")),
            (&["--kernel", "k", "--", "x"], Some("x")),
            (&["--kernel", "k", "--disk", "--"], Some("--disk")),
            (&["--restore", "r", "--cpus", "boot=2"], Some("--cpus")),
            (&[], None),
        ];
        for (list, want) in table {
            assert_eq!(error_option(list).as_deref(), *want, "{list:?}");
        }
    }

    #[test]
    fn stray_argument_hint_names_the_option_before_it() {
        let err = parse(&args(&[
            "--kernel",
            "k",
            "--watchdog",
            "--cpus",
            "boot=1",
            "x",
        ]))
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unexpected argument `x` (after --cpus, which takes no further value)")
        );
    }

    #[test]
    fn non_utf8_is_refused() {
        let bad = OsStr::from_bytes(b"\xff").to_owned();
        let list = vec!["--kernel".into(), "k".into(), "--platform".into(), bad];
        let err = parse(&list).err().map(|e| e.option().map(str::to_owned));
        assert_eq!(err, Some(Some("--platform".into())));
    }

    #[test]
    fn help_wins_where_it_is_reached() {
        assert!(matches!(
            parse(&args(&["--kernel", "k", "--help", "--bogus"])),
            Ok(Parsed::Help)
        ));
        assert!(matches!(parse(&args(&["-vh"])), Ok(Parsed::Help)));
        assert!(parse(&args(&["--bogus", "--help"])).is_err());
    }

    #[test]
    fn vmm_argv_keeps_vmm_tokens_in_order() {
        let m = matches(&[
            "--seccomp",
            "true",
            "--kernel",
            "k",
            "-vv",
            "--api-socket=fd=3",
            "-V",
            "-v",
        ]);
        let want: Vec<OsString> =
            args(&["--seccomp", "true", "-v", "--api-socket=fd=3", "--version"]);
        assert_eq!(m.vmm_argv, want);
        assert_eq!(m.verbosity(), 3);
    }
}
