//! A clap-like reading of cloud-hypervisor 54's command line (`cloud-hypervisor/src/main.rs`,
//! `get_cli_options_sorted` and `create_app`): which options take one value, 1..n values
//! (`Append`), an optional value (`--rtc`), none (flags, `-v` counted); once-only options; the
//! `vm-config` group requiring `--kernel`/`--firmware`; a value starting with `-` is taken for
//! the next option (clap's default). Every usage error exits 2, like clap.

use std::collections::HashMap;
use std::ffi::OsString;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `num_args(1)`, once.
    One,
    /// `num_args(1..)` + `ArgAction::Append`.
    Append,
    /// `num_args(0..=1)`, `default_missing_value("")` (`--rtc`).
    Optional,
    /// `ArgAction::SetTrue`, once.
    Flag,
    /// `ArgAction::Count` (`-v`).
    Count,
    Help,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    VmConfig,
    VmPayload,
    Other,
}

struct Spec {
    name: &'static str,
    long: Option<&'static str>,
    short: Option<char>,
    kind: Kind,
    group: Group,
}

const fn opt(name: &'static str, kind: Kind, group: Group) -> Spec {
    Spec {
        name,
        long: Some(name),
        short: None,
        kind,
        group,
    }
}

use Group::{Other, VmConfig, VmPayload};
use Kind::{Append, Count, Flag, Help, One, Optional};

/// The options of a default (`io_uring,kvm`) x86_64 build; feature-gated ones (`--gdb`,
/// `--igvm`, `--fw-cfg-config`, `--dbus-*`, ...) are absent, so unknown, as there.
const SPECS: &[Spec] = &[
    opt("api-socket", One, Other),
    opt("balloon", One, VmConfig),
    opt("cmdline", One, VmConfig),
    opt("console", One, VmConfig),
    opt("cpus", One, VmConfig),
    opt("debug-console", One, VmConfig),
    opt("device", Append, VmConfig),
    opt("disk", Append, VmConfig),
    opt("event-monitor", One, Other),
    opt("firmware", One, VmPayload),
    opt("fs", Append, VmConfig),
    opt("generic-vhost-user", Append, VmConfig),
    opt("initramfs", One, VmConfig),
    opt("kernel", One, VmPayload),
    opt("landlock", Flag, VmConfig),
    opt("landlock-rules", Append, VmConfig),
    opt("log-file", One, Other),
    opt("log-format", One, Other),
    opt("memory", One, VmConfig),
    opt("memory-zone", Append, VmConfig),
    opt("net", Append, VmConfig),
    opt("no-shutdown", Flag, Other),
    opt("numa", Append, VmConfig),
    opt("pci-segment", Append, VmConfig),
    opt("platform", One, VmConfig),
    opt("pmem", Append, VmConfig),
    opt("pvpanic", Flag, VmConfig),
    opt("rate-limit-group", Append, VmConfig),
    opt("restore", One, Other),
    opt("rng", One, VmConfig),
    opt("rtc", Optional, VmConfig),
    opt("seccomp", One, Other),
    opt("serial", One, VmConfig),
    opt("tpm", One, VmConfig),
    opt("user-device", Append, VmConfig),
    Spec {
        name: "v",
        long: None,
        short: Some('v'),
        kind: Count,
        group: Other,
    },
    opt("vdpa", Append, VmConfig),
    Spec {
        name: "version",
        long: Some("version"),
        short: Some('V'),
        kind: Flag,
        group: Other,
    },
    opt("vsock", One, VmConfig),
    opt("watchdog", Flag, VmConfig),
    Spec {
        name: "help",
        long: Some("help"),
        short: Some('h'),
        kind: Help,
        group: Other,
    },
];

/// What clap would make of argv.
#[derive(Debug, Default, Clone)]
pub struct Matches {
    /// Values of every occurrence, in order (an `Append` occurrence may add several).
    values: HashMap<&'static str, Vec<String>>,
    counts: HashMap<&'static str, usize>,
}

impl Matches {
    pub fn one(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
    pub fn flag(&self, name: &str) -> bool {
        self.count(name) > 0
    }
    pub fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }
    pub fn payload_present(&self) -> bool {
        self.flag("kernel") || self.flag("firmware")
    }
}

/// Outcome of the clap stage that ends the process.
#[derive(Debug, PartialEq, Eq)]
pub enum CliExit {
    /// Exit 2 with this text on stderr.
    Usage(String),
    /// `--help`: exit 0 with the help on stdout.
    Help,
}

fn display(spec: &Spec) -> String {
    match (spec.kind, spec.long) {
        (Flag | Help, Some(l)) => format!("--{l}"),
        (Count, _) => "-v...".into(),
        (Optional, Some(l)) => format!("--{l} [<{}>]", spec.name),
        (_, Some(l)) => format!("--{l} <{}>", spec.name),
        (_, None) => spec.name.into(),
    }
}

fn usage_error(msg: String, tip: &str) -> CliExit {
    CliExit::Usage(format!(
        "error: {msg}\n{tip}\nUsage: cloud-hypervisor [OPTIONS]\n\nFor more information, try '--help'.\n"
    ))
}

/// clap treats a token as a new argument (not a value) when it starts with `-` and is longer
/// than `-`.
fn looks_like_arg(tok: &str) -> bool {
    tok.starts_with('-') && tok.len() > 1
}

pub fn parse(args: &[OsString]) -> Result<Matches, CliExit> {
    if args.is_empty() {
        // `arg_required_else_help(true)`: the help, on stderr, exit 2.
        return Err(CliExit::Usage(help_text()));
    }
    let mut strs = Vec::with_capacity(args.len());
    for a in args {
        match a.to_str() {
            Some(s) => strs.push(s.to_owned()),
            None => {
                return Err(usage_error(
                    "invalid UTF-8 was detected in one or more arguments".into(),
                    "",
                ));
            }
        }
    }
    let mut m = Matches::default();
    let mut i = 0;
    let mut escaped = false;
    while i < strs.len() {
        let tok = strs[i].clone();
        i += 1;
        if escaped || !looks_like_arg(&tok) {
            return Err(usage_error(
                format!("unexpected argument '{tok}' found"),
                "",
            ));
        }
        if tok == "--" {
            escaped = true;
            continue;
        }
        let (spec, inline): (&Spec, Option<String>) = if let Some(long) = tok.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            match SPECS.iter().find(|s| s.long == Some(name)) {
                Some(s) => (s, inline),
                None => {
                    return Err(usage_error(
                        format!("unexpected argument '--{name}' found"),
                        "",
                    ));
                }
            }
        } else {
            // Short cluster: `-vv`, `-vV`; only flags can be clustered here.
            for c in tok[1..].chars() {
                match SPECS.iter().find(|s| s.short == Some(c)) {
                    Some(s) => record(&mut m, s, None)?,
                    None => {
                        return Err(usage_error(format!("unexpected argument '-{c}' found"), ""));
                    }
                }
            }
            continue;
        };
        match spec.kind {
            Kind::Flag | Kind::Count | Kind::Help => {
                if let Some(v) = inline {
                    return Err(usage_error(
                        format!(
                            "unexpected value '{v}' for '{}' found; no more were expected",
                            display(spec)
                        ),
                        "",
                    ));
                }
                record(&mut m, spec, None)?;
            }
            Kind::One => {
                let v = match inline {
                    Some(v) => v,
                    None => match strs.get(i) {
                        Some(next) if !looks_like_arg(next) => {
                            i += 1;
                            next.clone()
                        }
                        _ => {
                            return Err(usage_error(
                                format!(
                                    "a value is required for '{}' but none was supplied",
                                    display(spec)
                                ),
                                "",
                            ));
                        }
                    },
                };
                if spec.name == "seccomp" && !["true", "false", "log", "errno"].contains(&&*v) {
                    return Err(usage_error(
                        format!(
                            "invalid value '{v}' for '--seccomp <seccomp>'\n  [possible values: true, false, log, errno]"
                        ),
                        "",
                    ));
                }
                record(&mut m, spec, Some(vec![v]))?;
            }
            Kind::Optional => {
                let v = match inline {
                    Some(v) => v,
                    None => match strs.get(i) {
                        Some(next) if !looks_like_arg(next) => {
                            i += 1;
                            next.clone()
                        }
                        _ => String::new(),
                    },
                };
                record(&mut m, spec, Some(vec![v]))?;
            }
            Kind::Append => {
                let mut vals = Vec::new();
                if let Some(v) = inline {
                    vals.push(v);
                } else {
                    while let Some(next) = strs.get(i) {
                        if looks_like_arg(next) {
                            break;
                        }
                        vals.push(next.clone());
                        i += 1;
                    }
                    if vals.is_empty() {
                        return Err(usage_error(
                            format!(
                                "a value is required for '{}' but none was supplied",
                                display(spec)
                            ),
                            "",
                        ));
                    }
                }
                record(&mut m, spec, Some(vals))?;
            }
        }
    }
    if m.flag("help") {
        return Err(CliExit::Help);
    }
    // ArgGroup "vm-config" requires "vm-payload" (defaults do not count as present).
    let has_vm_config = SPECS
        .iter()
        .any(|s| s.group == Group::VmConfig && m.flag(s.name));
    if has_vm_config && !m.payload_present() {
        return Err(CliExit::Usage(
            "error: the following required arguments were not provided:\n  <--firmware <firmware>|--kernel <kernel>>\n\nUsage: cloud-hypervisor [OPTIONS]\n\nFor more information, try '--help'.\n".into(),
        ));
    }
    Ok(m)
}

fn record(m: &mut Matches, spec: &'static Spec, vals: Option<Vec<String>>) -> Result<(), CliExit> {
    let n = m.counts.entry(spec.name).or_insert(0);
    if *n > 0 && !matches!(spec.kind, Kind::Append | Kind::Count | Kind::Help) {
        return Err(usage_error(
            format!(
                "the argument '{}' cannot be used multiple times",
                display(spec)
            ),
            "",
        ));
    }
    *n += 1;
    if let Some(v) = vals {
        m.values.entry(spec.name).or_default().extend(v);
    }
    Ok(())
}

pub fn help_text() -> String {
    let mut s = String::from(
        "Launch a cloud-hypervisor VMM.\n\nUsage: cloud-hypervisor [OPTIONS]\n\nOptions:\n",
    );
    for spec in SPECS {
        let shown = match (spec.short, spec.long) {
            (Some(c), Some(_)) => format!("  -{c}, {}", display(spec)),
            (Some(_), None) => format!("  {}", display(spec)),
            _ => format!("      {}", display(spec)),
        };
        s.push_str(&shown);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Matches, CliExit> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn shapes() {
        let m = p(&[
            "--kernel", "k", "--disk", "a", "b", "--disk=c", "-vv", "--rtc",
        ])
        .unwrap();
        assert_eq!(m.all("disk"), ["a", "b", "c"]);
        assert_eq!(m.count("v"), 2);
        assert_eq!(m.one("rtc"), Some(""));
        assert!(p(&["--platform", "x"]).is_err());
        assert!(p(&["--kernel", "k", "--platform", "a", "--platform", "b"]).is_err());
        assert!(p(&["--kernel", "k", "--landlock", "on"]).is_err());
        assert!(p(&["--kernel", "k", "--cmdline", "-v"]).is_err());
        assert!(p(&["--kernel", "k", "--gpu", "x"]).is_err());
        assert!(p(&["--kernel", "k", "--watchdog", "--watchdog"]).is_err());
        assert!(p(&["--api-socket", "x", "--no-shutdown"]).is_ok());
        assert!(p(&["--restore", "source_url=file:///s", "--cpus", "boot=2"]).is_err());
        assert_eq!(p(&["--help"]).unwrap_err(), CliExit::Help);
        assert!(p(&[]).is_err());
    }
}
