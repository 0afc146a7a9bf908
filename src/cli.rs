//! The command line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::credentials::Selection;

#[derive(Debug, Parser)]
#[command(
    name = "credbridge",
    version,
    about = "Hands systemd service credentials to a microVM guest as SMBIOS OEM strings, \
             supervising the hypervisor for systemd",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the hypervisor with the credentials and supervise it (the unit's ExecStart).
    Run(RunArgs),
    /// Validate and show what `run` would do, with every value redacted; starts nothing.
    Render(RunArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HypervisorKind {
    #[value(name = "cloud-hypervisor")]
    CloudHypervisor,
    Qemu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Delivery {
    /// The VM config and strings go through the private REST API: nothing secret in argv.
    Api,
    /// The strings go into `--platform oem_strings=[...]`: visible in the process list.
    Argv,
}

/// Which channel carries the credentials into the guest (`--channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Channel {
    /// Per credential: SMBIOS where the machine has SMBIOS and it fits the budget, else fw_cfg.
    Auto,
    /// Every credential as an SMBIOS type 11 OEM string.
    Smbios,
    /// Every credential as a fw_cfg file `opt/io.systemd.credentials/NAME`.
    #[value(name = "fw-cfg")]
    FwCfg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// READY=1 right after the hypervisor is spawned.
    Spawn,
    /// READY=1 once the hypervisor reports the VM booted (vCPUs started).
    Booted,
    /// READY=1 once the guest's own systemd sends READY=1 over vsock (or, with a target,
    /// reports that target active).
    Guest,
}

/// `--ready`: the mode, and for `guest:TARGET` the guest's target unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyArg {
    pub mode: Ready,
    pub target: Option<String>,
}

/// `spawn`, `booted`, `guest` or `guest:TARGET`. Only target units are reported by the guest
/// (`X_SYSTEMD_UNIT_ACTIVE=`, systemd >= 256), so TARGET must be a valid `.target` name.
pub fn parse_ready(s: &str) -> Result<ReadyArg, String> {
    let (mode, target) = match s.split_once(':') {
        Some(("guest", t)) => {
            if !t.ends_with(".target") || !crate::guestnotify::unit_name_is_valid(t) {
                return Err(format!(
                    "{t:?} is not a target unit name; the guest reports only targets (e.g. guest:multi-user.target)"
                ));
            }
            (Ready::Guest, Some(t.to_owned()))
        }
        Some(_) => {
            return Err(format!(
                "only guest takes a target (guest:TARGET), not {s:?}"
            ));
        }
        None => match s {
            "spawn" => (Ready::Spawn, None),
            "booted" => (Ready::Booted, None),
            "guest" => (Ready::Guest, None),
            _ => {
                return Err(format!(
                    "unknown mode {s:?} (use spawn, booted, guest or guest:TARGET)"
                ));
            }
        },
    };
    Ok(ReadyArg { mode, target })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Directory holding the decrypted credentials [default: $CREDENTIALS_DIRECTORY].
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,

    /// Pass only this credential, optionally under another name in the guest (repeatable).
    /// Without it, every credential in the directory is passed.
    #[arg(long = "credential", value_name = "NAME[=GUEST_NAME]")]
    pub credentials: Vec<Selection>,

    /// An extra, non-secret OEM string (repeatable).
    #[arg(long = "oem-string", value_name = "STR")]
    pub oem_strings: Vec<String>,

    /// Largest SMBIOS type 11 entry allowed, in bytes. Guests with systemd < 257 read only the
    /// first 4096 bytes and silently cut the rest; raise it only for newer guests.
    #[arg(long, value_name = "BYTES", default_value_t = crate::oem::DEFAULT_BUDGET)]
    pub smbios_budget: usize,

    /// Which channel carries the credentials: `auto` picks per credential (SMBIOS where the
    /// machine has SMBIOS and the credential fits --smbios-budget, else fw_cfg); `smbios` or
    /// `fw-cfg` forces one channel for all. Non-credential OEM strings are always SMBIOS.
    #[arg(long, value_enum, default_value = "auto")]
    pub channel: Channel,

    /// Which hypervisor HYPERVISOR is [default: from its file name].
    #[arg(long, value_enum)]
    pub hypervisor: Option<HypervisorKind>,

    /// How the strings reach cloud-hypervisor.
    #[arg(long, value_enum, default_value = "api")]
    pub delivery: Delivery,

    /// When to tell systemd the service is ready: spawn, booted, guest (the guest's READY=1),
    /// or guest:TARGET (the guest reports TARGET active; systemd >= 256 in the guest).
    #[arg(long, value_name = "WHEN", value_parser = parse_ready, default_value = "booted")]
    pub ready: ReadyArg,

    /// Stop the VM and fail if it is not ready in time (e.g. 90, 90s, 2min; at most one day)
    /// [default: none, systemd's TimeoutStartSec= applies].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ready_timeout: Option<Duration>,

    /// How long the guest gets to power off after the ACPI power button before SIGTERM (at
    /// most one day).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub stop_timeout: Duration,

    /// vsock port the guest's systemd sends its notifications to (with --ready guest)
    /// [default: 8888 for cloud-hypervisor, whose ports are per VM; for QEMU a free port the
    /// kernel picks, since host ports are shared by all VMs].
    #[arg(long, value_name = "PORT")]
    pub notify_port: Option<u32>,

    /// Give the VM a vsock device with this guest CID when the argv has none:
    /// `--vsock cid=CID,socket=...` for cloud-hypervisor, `-device vhost-vsock-pci,guest-cid=CID`
    /// for QEMU (CID reserved on /dev/vhost-vsock before QEMU starts).
    #[arg(long, value_name = "CID")]
    pub vsock_cid: Option<u32>,

    /// QEMU with a `-device vhost-user-vsock-*`: the hybrid-vsock Unix socket of its backend
    /// (vhost-device-vsock's `uds-path`); with --ready guest credbridge listens on PATH_PORT,
    /// where the backend delivers the guest's connections to host CID 2, port PORT. The backend
    /// is not started by credbridge and must run before QEMU starts.
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,

    /// argv[0] for the hypervisor [default: HYPERVISOR as given]; microvm.nix uses microvm@NAME.
    #[arg(long, value_name = "NAME")]
    pub argv0: Option<OsString>,

    /// Accept a socket-activated (or inherited) API socket that members of its group can
    /// connect to. Without it credbridge refuses any API socket that users other than its
    /// owner can reach, since the API hands out every secret.
    #[arg(long)]
    pub api_socket_group_access: bool,

    #[arg(long, value_enum, default_value = "info")]
    pub log_level: LogLevel,

    /// The hypervisor and its arguments, after `--`.
    #[arg(
        required = true,
        last = true,
        num_args = 1..,
        value_name = "HYPERVISOR [ARGS]",
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

/// The longest `--ready-timeout` and `--stop-timeout` accepted: one day. Far above any real
/// boot or shutdown, and far below what would overflow a deadline (`Instant + Duration` panics
/// past the clock's range; 2^64 s did, issue #11).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Seconds as systemd writes them: `30`, `30s`, `500ms`, `2min`; at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 30, 30s, 500ms, 2min)"))?;
    let d = match unit.trim() {
        "" | "s" | "sec" => Duration::from_secs(n),
        "ms" | "msec" => Duration::from_millis(n),
        "min" | "m" => Duration::from_secs(n.saturating_mul(60)),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s or min)"
            ));
        }
    };
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than the limit of {}s (one day)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ready_modes() {
        let r = |s| parse_ready(s);
        assert_eq!(r("booted").unwrap().mode, Ready::Booted);
        assert_eq!(
            r("guest").unwrap(),
            ReadyArg {
                mode: Ready::Guest,
                target: None
            }
        );
        assert_eq!(
            r("guest:multi-user.target").unwrap().target.as_deref(),
            Some("multi-user.target")
        );
        assert!(
            r("guest:multi-user")
                .unwrap_err()
                .contains("not a target unit name")
        );
        assert!(r("guest:sshd.service").is_err());
        assert!(r("guest:").is_err());
        assert!(
            r("booted:x.target")
                .unwrap_err()
                .contains("only guest takes a target")
        );
        assert!(r("later").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn durations_are_bounded_at_one_day() {
        // Regression (#11): 2^64-1 s parsed, then `Instant::now() + d` panicked mid-run.
        assert_eq!(parse_duration("86400"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("1440min"), Ok(MAX_DURATION));
        assert_eq!(
            parse_duration("86399999ms"),
            Ok(MAX_DURATION - Duration::from_millis(1))
        );
        for over in ["86401", "86400001ms", "1441min", "18446744073709551615"] {
            let e = parse_duration(over).unwrap_err();
            assert!(e.contains("86400s") && e.contains(over), "{e}");
        }
        let e = Cli::try_parse_from([
            "credbridge",
            "run",
            "--stop-timeout",
            "18446744073709551615",
            "--",
            "cloud-hypervisor",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 2, "a usage error");
    }

    #[test]
    fn hypervisor_argv_comes_after_double_dash_untouched() {
        let cli = Cli::try_parse_from([
            "credbridge",
            "run",
            "--credential",
            "a=b",
            "--",
            "/bin/cloud-hypervisor",
            "--kernel",
            "k",
            "--credential",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.credentials[0].guest_name, "b");
        assert_eq!(args.command.len(), 4);
        assert_eq!(args.command[3], "--credential");
    }
}
