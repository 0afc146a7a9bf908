//! cloud-hypervisor's command line: its option grammar and the translation of a full argv into
//! the `vm.create` JSON (the `VmConfig` CH 54 itself would build), plus the VMM-level flags that
//! must stay on CH's own command line.
//!
//! Ground truth: `../shared/fixtures/cloud-hypervisor/` (CH 54, snapshot ae44c297, default
//! features, x86_64); `tests/ch_fixtures.rs` checks every case.

mod argv;
mod common;
mod devices;
mod grammar;
mod validate;
mod vmconfig;
mod vmm;

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use argv::{Parsed, ValueAt};
pub use grammar::GrammarError;
pub use validate::refused_at_create;
pub use vmconfig::SMBIOS_KEYS;
use vmconfig::{Platform, VmConfig};

/// Where CH listens (`--api-socket`) or reports (`--event-monitor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketArg {
    Path(PathBuf),
    Fd(RawFd),
}

/// What CH would do with this command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A payload is given: CH builds a VM config (and ignores `--restore`).
    Vm,
    /// `--restore` without a payload: the VM comes from a snapshot (`vm.restore`).
    Restore,
    /// Neither: CH only serves its API.
    VmmOnly,
    /// `-V`/`--version`: CH prints its version and exits 0.
    Version,
    /// `-h`/`--help`: CH prints help and exits 0.
    Help,
}

#[derive(Debug, Clone)]
pub struct ChArgv {
    pub mode: Mode,
    /// `Some` only for [`Mode::Vm`]: the JSON body for `PUT /api/v1/vm.create`.
    pub vm_config: Option<serde_json::Value>,
    /// The VMM-level tokens in their original order (`-v` appears once; see `verbosity`).
    pub vmm_argv: Vec<OsString>,
    pub api_socket: Option<SocketArg>,
    pub event_monitor: Option<SocketArg>,
    /// Fds named by the command line (api socket, event monitor, net/device/platform or
    /// restore fds) that must be open in CH.
    pub inherited_fds: Vec<RawFd>,
    /// How many `-v` were given.
    pub verbosity: u8,
    /// `--landlock` was given.
    pub landlock: bool,
    /// The `--restore` value, if any.
    pub restore: Option<String>,
}

impl ChArgv {
    fn empty(mode: Mode) -> Self {
        Self {
            mode,
            vm_config: None,
            vmm_argv: Vec::new(),
            api_socket: None,
            event_monitor: None,
            inherited_fds: Vec::new(),
            verbosity: 0,
            landlock: false,
            restore: None,
        }
    }
}

fn after_hint(after: &Option<String>) -> String {
    match after {
        Some(option) => format!(" (after {option}, which takes no further value)"),
        None => String::new(),
    }
}

/// A command line cloud-hypervisor would refuse (or that credbridge cannot rewrite). The message
/// names the option; option values are not echoed, since `--platform` may carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum ArgvError {
    #[error("no arguments: cloud-hypervisor needs --kernel or --firmware, or --api-socket")]
    NoArguments,
    #[error("unknown option `{0}`")]
    UnknownOption(String),
    #[error("unexpected argument `{arg}`{}", after_hint(.after))]
    UnexpectedArgument { arg: String, after: Option<String> },
    #[error("{option} given twice")]
    Repeated { option: String },
    #[error("{option} needs a value")]
    MissingValue { option: String },
    #[error("{option} takes no value")]
    UnexpectedValue { option: String },
    #[error("{option}: value is not valid UTF-8")]
    NotUtf8 { option: String },
    #[error("{option} needs a payload\nhint: add --kernel or --firmware")]
    MissingPayload { option: String },
    #[error("{option}: expected one of {expected}")]
    InvalidChoice {
        option: String,
        expected: &'static str,
    },
    #[error("{option}: {error}")]
    Value { option: String, error: GrammarError },
    #[error("{option}: {reason}")]
    Invalid { option: String, reason: String },
}

impl ArgvError {
    /// The option (or stray argument) the error is about, as written on the command line.
    pub fn option(&self) -> Option<&str> {
        match self {
            Self::NoArguments => None,
            Self::UnknownOption(option) => Some(option),
            Self::UnexpectedArgument { arg, .. } => Some(arg),
            Self::Repeated { option }
            | Self::MissingValue { option }
            | Self::UnexpectedValue { option }
            | Self::NotUtf8 { option }
            | Self::MissingPayload { option }
            | Self::InvalidChoice { option, .. }
            | Self::Value { option, .. }
            | Self::Invalid { option, .. } => Some(option),
        }
    }
}

/// Reads a complete cloud-hypervisor command line (without argv[0]) the way CH 54 does, up to
/// the point where it would create the VM, and refuses what CH would refuse.
///
/// Checks run in CH's order: clap, `--api-socket`, `--log-format`, `--event-monitor`, then the
/// VM config (or `--restore`). Only `--landlock-rules path=` touches the file system.
pub fn parse_argv(args: &[OsString]) -> Result<ChArgv, ArgvError> {
    let m = match argv::parse(args)? {
        Parsed::Help => return Ok(ChArgv::empty(Mode::Help)),
        Parsed::Matches(m) => m,
    };
    let mut out = ChArgv::empty(Mode::VmmOnly);
    out.verbosity = m.verbosity();
    out.landlock = m.present("landlock");
    out.restore = m.one("restore").map(str::to_owned);
    if m.present("version") {
        out.mode = Mode::Version;
        out.vmm_argv = m.vmm_argv;
        return Ok(out);
    }

    out.api_socket = m.one("api-socket").map(vmm::api_socket).transpose()?;
    if let Some(format) = m.one("log-format") {
        vmm::check_log_format(format)?;
    }
    out.event_monitor = m.one("event-monitor").map(vmm::event_monitor).transpose()?;
    for socket in [&out.api_socket, &out.event_monitor] {
        if let Some(SocketArg::Fd(fd)) = socket {
            out.inherited_fds.push(*fd);
        }
    }

    if m.present("kernel") || m.present("firmware") {
        let config = VmConfig::from_matches(&m)?;
        out.inherited_fds.extend(config.inherited_fds());
        let json = serde_json::to_value(&config).map_err(|e| ArgvError::Invalid {
            option: "--kernel".into(),
            reason: format!("cannot serialize the VM config: {e}"),
        })?;
        out.vm_config = Some(json);
        out.mode = Mode::Vm;
    } else if let Some(restore) = m.one("restore") {
        out.inherited_fds.extend(vmm::restore_fds(restore)?);
        out.mode = Mode::Restore;
    }
    out.vmm_argv = m.vmm_argv;
    Ok(out)
}

/// The `oem_strings` of the argv's `--platform` as CH parses them (not dequoted, outer brackets
/// stripped); empty when there is no `--platform` or it has no `oem_strings`.
pub fn platform_oem_strings(args: &[OsString]) -> Result<Vec<String>, ArgvError> {
    let m = match argv::parse(args)? {
        Parsed::Help => return Ok(Vec::new()),
        Parsed::Matches(m) => m,
    };
    match m.one("platform") {
        None => Ok(Vec::new()),
        Some(value) => Ok(Platform::parse(value)?.oem_strings.unwrap_or_default()),
    }
}

/// The key of one `key=value` item of an option string.
fn item_key(item: &str) -> &str {
    item.split_once('=').map_or(item, |(key, _)| key)
}

/// `value` (a `--platform` string) with `extra` appended to its `oem_strings`, all other keys
/// kept as written.
fn platform_with_extra(value: &str, extra: &[&str]) -> Result<String, ArgvError> {
    let existing = Platform::parse(value)?.oem_strings.unwrap_or_default();
    let items = if value.trim().is_empty() {
        Vec::new()
    } else {
        grammar::split_commas(value).ok_or_else(|| ArgvError::Value {
            option: "--platform".into(),
            error: GrammarError::Syntax,
        })?
    };
    // Every `oem_strings` item goes (only the last one counted); one new item replaces them.
    let mut kept: Vec<String> = items
        .into_iter()
        .filter(|item| item_key(item) != "oem_strings")
        .collect();
    let list: Vec<&str> = existing
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    kept.push(format!("oem_strings=[{}]", list.join(",")));
    Ok(kept.join(","))
}

/// A new argv whose single `--platform` carries `extra` at the end of its `oem_strings`
/// (`--platform V` and `--platform=V` keep their form), or with `--platform oem_strings=[...]`
/// added at the end when there is none. The existing value must parse.
///
/// The caller guarantees that `extra` holds no `,` `"` `[` `]`; the result is re-parsed anyway
/// and refused unless CH would read back exactly the old strings followed by `extra`.
pub fn rewrite_platform(args: &[OsString], extra: &[&str]) -> Result<Vec<OsString>, ArgvError> {
    let m = match argv::parse(args)? {
        Parsed::Help => return Ok(args.to_vec()),
        Parsed::Matches(m) => m,
    };
    let mut out = args.to_vec();
    let before = match m.one_at("platform") {
        Some((value, at)) => {
            let existing = Platform::parse(value)?.oem_strings.unwrap_or_default();
            if extra.is_empty() {
                return Ok(out);
            }
            let new_value = platform_with_extra(value, extra)?;
            let (index, token) = match at {
                ValueAt::Token(i) => (i, OsString::from(new_value)),
                ValueAt::Attached(i) => (i, OsString::from(format!("--platform={new_value}"))),
                ValueAt::Implied => {
                    return Err(ArgvError::MissingValue {
                        option: "--platform".into(),
                    });
                }
            };
            let slot = out.get_mut(index).ok_or_else(|| ArgvError::MissingValue {
                option: "--platform".into(),
            })?;
            *slot = token;
            existing
        }
        None => {
            if extra.is_empty() {
                return Ok(out);
            }
            if !m.present("kernel") && !m.present("firmware") {
                return Err(ArgvError::MissingPayload {
                    option: "--platform".into(),
                });
            }
            // Before a top-level `--`, after which CH takes no options.
            let at = m.escape_at.unwrap_or(out.len()).min(out.len());
            let value = format!("oem_strings=[{}]", extra.join(","));
            out.splice(
                at..at,
                [OsString::from("--platform"), OsString::from(value)],
            );
            Vec::new()
        }
    };
    let want: Vec<String> = before
        .into_iter()
        .chain(extra.iter().map(|s| (*s).to_owned()))
        .collect();
    if platform_oem_strings(&out)? != want {
        return Err(ArgvError::Invalid {
            option: "--platform".into(),
            reason: "the added OEM strings would not read back unchanged (`,` `\"` `[` `]`?)"
                .into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "/nix/store/k/vmlinux";

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn rewrite_platform_cases() {
        let table: &[(&[&str], &[&str])] = &[
            // Other keys and existing strings kept, in order.
            (
                &[
                    "--kernel",
                    K,
                    "--platform",
                    "system_uuid=u,oem_strings=[a,b],num_pci_segments=2",
                ],
                &[
                    "--kernel",
                    K,
                    "--platform",
                    "system_uuid=u,num_pci_segments=2,oem_strings=[a,b,X,Y]",
                ],
            ),
            // `--platform=` form stays one token.
            (
                &["--platform=oem_strings=[a]", "--kernel", K],
                &["--platform=oem_strings=[a,X,Y]", "--kernel", K],
            ),
            // Absent: added at the end.
            (
                &["--kernel", K, "--disk", "path=/a"],
                &[
                    "--kernel",
                    K,
                    "--disk",
                    "path=/a",
                    "--platform",
                    "oem_strings=[X,Y]",
                ],
            ),
            // Empty value, as microvm.nix can produce.
            (
                &["--kernel", K, "--platform", ""],
                &["--kernel", K, "--platform", "oem_strings=[X,Y]"],
            ),
            // `oem_strings=` means none; a repeated key counts only the last time.
            (
                &[
                    "--kernel",
                    K,
                    "--platform",
                    "oem_strings=[a],serial_number=s,oem_strings=[b]",
                ],
                &[
                    "--kernel",
                    K,
                    "--platform",
                    "serial_number=s,oem_strings=[b,X,Y]",
                ],
            ),
            (
                &["--kernel", K, "--platform", "oem_strings="],
                &["--kernel", K, "--platform", "oem_strings=[X,Y]"],
            ),
            // Quoted and bracketed strings survive as CH reads them.
            (
                &["--kernel", K, "--platform", "oem_strings=[\"a,b\",[c,d],e]"],
                &[
                    "--kernel",
                    K,
                    "--platform",
                    "oem_strings=[\"a,b\",[c,d],e,X,Y]",
                ],
            ),
            // Before a trailing `--`.
            (
                &["--kernel", K, "--"],
                &["--kernel", K, "--platform", "oem_strings=[X,Y]", "--"],
            ),
        ];
        for (input, want) in table {
            let got = rewrite_platform(&args(input), &["X", "Y"]);
            assert_eq!(got.ok(), Some(args(want)), "{input:?}");
        }
    }

    #[test]
    fn rewrite_platform_refusals() {
        let table: &[&[&str]] = &[
            &["--kernel", K, "--platform", "oem_strings=[a"],
            &["--kernel", K, "--platform", "bogus=1"],
            &["--kernel", K, "--platform", "num_pci_segments=x"],
            &["--kernel", K, "--platform", "a", "--platform", "b"],
            &["--api-socket", "fd=3"],
        ];
        for input in table {
            let err = rewrite_platform(&args(input), &["X"]).err();
            assert_eq!(
                err.as_ref().and_then(ArgvError::option),
                Some("--platform"),
                "{input:?}"
            );
        }
        let bad_extra = rewrite_platform(&args(&["--kernel", K]), &["a,b"]);
        assert!(bad_extra.is_err());
    }

    #[test]
    fn rewrite_round_trips_through_parse() {
        let input = args(&["--kernel", K, "--platform", "oem_strings=[ a , b ]"]);
        let out = rewrite_platform(&input, &["X"]).unwrap();
        assert_eq!(platform_oem_strings(&out).unwrap(), vec!["a ", " b", "X"]);
        let parsed = parse_argv(&out).unwrap();
        let oem = &parsed.vm_config.unwrap()["platform"]["oem_strings"];
        assert_eq!(oem, &serde_json::json!(["a ", " b", "X"]));
    }

    #[test]
    fn oem_strings_as_ch_reads_them() {
        let table: &[(&[&str], Option<&[&str]>)] = &[
            (&["--kernel", K], Some(&[])),
            (
                &["--kernel", K, "--platform", "oem_strings=[\"a,b\",c]"],
                Some(&["\"a,b\"", "c"]),
            ),
            (
                &["--kernel", K, "--platform", "oem_strings=[]"],
                Some(&[""]),
            ),
            (&["--kernel", K, "--platform", "oem_strings=[[x],y]"], None),
        ];
        for (input, want) in table {
            let got = platform_oem_strings(&args(input)).ok();
            let got: Option<Vec<&str>> =
                got.as_ref().map(|v| v.iter().map(String::as_str).collect());
            assert_eq!(got.as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn error_messages_name_the_option() {
        let err = parse_argv(&args(&[
            "--kernel",
            K,
            "--platform",
            "oem_strings=[a],foo=1",
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "--platform: unknown key `foo`");
        let err = parse_argv(&args(&[
            "--kernel",
            K,
            "--platform",
            "a",
            "--platform",
            "b",
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "--platform given twice");
    }
}
