//! How a cloud-hypervisor run is planned: its argv parsed and checked as cloud-hypervisor
//! would, the OEM strings' ceiling lowered by the argv's own SMBIOS strings, the delivery
//! (`vm.create` through the API, or `--platform oem_strings=` in argv), the vsock device and
//! notify port for `--ready guest`, and the command line the child gets.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde_json::Value;

use super::ChPlanError;
use super::cmdline::{self as ch, ChArgv, Mode, SocketArg};
use super::create::CreatePlan;
use crate::cli::{Delivery, HypervisorKind, Ready, RunArgs};
use crate::guestnotify::GuestNotifyPlan;
use crate::hostenv::HostEnv;
use crate::oem::{self, Limits, OemString, Origin};
use crate::plan::{ChildArgs, DEFAULT_NOTIFY_PORT, Plan, PlanError, is_guest_cid};

/// What only a cloud-hypervisor run needs, beside the neutral [`Plan`].
pub struct ChPlan {
    /// The hypervisor's argv as credbridge understood it.
    pub argv: ChArgv,
    pub delivery: Delivery,
    pub api_source: ApiSource,
    /// `--api-socket-group-access`.
    pub api_socket_group_access: bool,
    pub own_event_monitor: bool,
    pub create: Option<CreatePlan>,
    /// `--vsock-cid`: the vsock device credbridge adds (cid, socket path).
    pub add_vsock: Option<(u32, PathBuf)>,
}

/// Where the hypervisor's API socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// Bind the path the argv named.
    Path(PathBuf),
    /// Use an fd the argv named (inherited from our parent).
    Fd(RawFd),
    /// Socket activation if present, else a private socket.
    Default,
}

/// `fd=` placeholders for `render`, real numbers for `run`.
pub struct FdNames {
    pub api: String,
    pub events: Option<String>,
}

/// cloud-hypervisor writes SMBIOS only on x86_64 (cloud-hypervisor.md section 2).
fn check_ch_arch(arch: &'static str) -> Result<(), ChPlanError> {
    if arch == "x86_64" {
        Ok(())
    } else {
        Err(ChPlanError::NoSmbios(arch))
    }
}

/// The platform strings that share the SMBIOS table with the OEM strings and so lower the
/// ceiling (cloud-hypervisor.md section 2).
fn system_strings_len(config: Option<&Value>) -> usize {
    let Some(platform) = config.and_then(|c| c.get("platform")) else {
        return 0;
    };
    ch::SMBIOS_KEYS
        .iter()
        .filter_map(|k| platform.get(k).and_then(Value::as_str))
        .map(|s| s.len() + 1)
        .sum()
}

/// Removes `--opt X` and `--opt=X` from an argv, as clap would have parsed them.
fn strip_option(args: &[OsString], opt: &str) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_next = false;
    let eq = format!("{opt}=");
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if a == opt {
            skip_next = true;
            continue;
        }
        if a.as_bytes().starts_with(eq.as_bytes()) {
            continue;
        }
        out.push(a.clone());
    }
    out
}

impl ChPlan {
    /// The plans for `credbridge run|render .. -- cloud-hypervisor ARGV`. The checks run in
    /// this order, which decides which of several mistakes is reported.
    pub fn build(
        args: &RunArgs,
        env: &HostEnv,
        program: &OsString,
        user_args: &[OsString],
    ) -> Result<(Plan, ChPlan), ChPlanError> {
        check_ch_arch(std::env::consts::ARCH)?;
        // The argv is checked before the credentials are read, so a typo in the hypervisor's
        // command line is reported even when the secrets are fine.
        let parsed = parse_vm_argv(user_args)?;
        let delivery = args.delivery;
        let mut warnings = Vec::new();

        // The argv's own strings, as the parse above already read them.
        let mut strings: Vec<OemString> = parsed
            .vm_config
            .as_ref()
            .and_then(|c| c.pointer("/platform/oem_strings"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| OemString::public(s, Origin::Argv))
            .collect();
        strings.extend(Plan::flag_and_credential_strings(
            args,
            env,
            delivery == Delivery::Api,
        )?);

        if let Some(uds) = &args.vsock_uds {
            return Err(PlanError::VsockUds {
                path: uds.display().to_string(),
                why: "applies to QEMU's vhost-user-vsock only; cloud-hypervisor's hybrid socket is its own --vsock socket=",
            }
            .into());
        }
        let (guest_notify, add_vsock) = guest_notify(args, env, &parsed, &mut strings)?;
        if args.vsock_cid.is_some() && add_vsock.is_none() {
            warnings.push("--vsock-cid is ignored: the argv has its own --vsock".into());
        }

        let split = choose_channels(args, &parsed, strings)?;
        if delivery == Delivery::Argv {
            check_argv_delivery(&split.smbios, &parsed, &mut warnings)?;
        }
        let create = match delivery {
            Delivery::Api => Some(create_plan(&parsed, &add_vsock, &mut warnings)?),
            Delivery::Argv => None,
        };
        let api_source = api_source(&parsed)?;

        let plan = Plan::assemble(
            args,
            HypervisorKind::CloudHypervisor,
            program,
            user_args,
            split,
            guest_notify,
            warnings,
        );
        let ch = ChPlan {
            delivery,
            own_event_monitor: parsed.event_monitor.is_none(),
            argv: parsed,
            api_source,
            api_socket_group_access: args.api_socket_group_access,
            create,
            add_vsock,
        };
        Ok((plan, ch))
    }

    /// The hypervisor's arguments (after argv[0]).
    pub fn child_args(&self, plan: &Plan, fds: &FdNames) -> Result<ChildArgs, ChPlanError> {
        let ch = &self.argv;
        let mut args = match self.delivery {
            Delivery::Api => {
                // vmm_argv keeps one `-v` however many were given; the count is restored here.
                let mut a: Vec<OsString> = strip_option(&ch.vmm_argv, "--api-socket")
                    .into_iter()
                    .filter(|a| a != "-v")
                    .collect();
                a.extend((0..ch.verbosity).map(|_| OsString::from("-v")));
                a
            }
            Delivery::Argv => {
                let extra: Vec<&str> = plan
                    .strings
                    .iter()
                    .filter(|s| !s.is_from_argv())
                    // Argv-safe by construction: binary form, and --oem-string checked above.
                    .map(|s| std::str::from_utf8(s.expose()).unwrap_or(""))
                    .collect();
                let stripped = strip_option(&plan.user_args, "--api-socket");
                ch::rewrite_platform(&stripped, &extra)?
            }
        };
        if let (Delivery::Argv, Some((cid, path))) = (self.delivery, &self.add_vsock) {
            args.push("--vsock".into());
            let mut v = OsString::from(format!("cid={cid},socket="));
            v.push(path);
            args.push(v);
        }
        args.push("--api-socket".into());
        args.push(format!("fd={}", fds.api).into());
        if let Some(ev) = &fds.events {
            args.push("--event-monitor".into());
            args.push(format!("fd={ev}").into());
        }
        Ok(ChildArgs(args))
    }

    /// The same argv with every credential value replaced by its size, for `render` and logs.
    pub fn redacted_child_args(
        &self,
        plan: &Plan,
        fds: &FdNames,
    ) -> Result<Vec<String>, ChPlanError> {
        let args = self.child_args(plan, fds)?;
        Ok(plan.redact_args(&args.0))
    }

    /// How the strings travel, in a word, for the start status.
    pub fn delivery_word(&self) -> &'static str {
        match self.delivery {
            Delivery::Api => "api",
            Delivery::Argv => "argv",
        }
    }

    /// How the strings travel, for `render`.
    pub fn describe_delivery(&self) -> &'static str {
        match self.delivery {
            Delivery::Api => {
                "api (PUT vm.create on the private API socket; nothing secret in argv)"
            }
            Delivery::Argv => "argv (--platform oem_strings=[...]; visible in the process list)",
        }
    }

    /// `render`'s argv and API requests, with placeholders for the fds that exist only in `run`.
    pub fn render_launch(&self, plan: &Plan, out: &mut dyn Write) -> io::Result<()> {
        let fds = FdNames {
            api: "<api>".into(),
            events: self.own_event_monitor.then(|| "<events>".into()),
        };
        let args = self
            .redacted_child_args(plan, &fds)
            .map_err(|e| io::Error::other(e.to_string()))?;
        writeln!(out, "argv:")?;
        writeln!(out, "  {} {}", plan.argv0.to_string_lossy(), args.join(" "))?;
        if let Some(create) = &self.create {
            let fw_cfg = plan.fw_cfg_placeholders("/proc/self/fd/");
            if !fw_cfg.is_empty() {
                writeln!(
                    out,
                    "GET /api/v1/vmm.ping: the build's features must include fw_cfg, else nothing is sent"
                )?;
            }
            writeln!(out, "PUT /api/v1/vm.create:")?;
            for line in create.redacted_json(&plan.strings, &fw_cfg).lines() {
                writeln!(out, "  {line}")?;
            }
            for (net, fds) in &create.add_nets {
                writeln!(
                    out,
                    "PUT /api/v1/vm.add-net with fds {fds:?} as SCM_RIGHTS: {net}"
                )?;
            }
            for (dev, fd) in &create.add_devices {
                writeln!(
                    out,
                    "PUT /api/v1/vm.add-device with fd {fd} as SCM_RIGHTS: {dev}"
                )?;
            }
            writeln!(out, "PUT /api/v1/vm.boot")?;
        }
        Ok(())
    }

    /// Fds the child keeps at their numbers besides the ones credbridge creates.
    pub fn inherited_fds_for_child(&self) -> Vec<RawFd> {
        match self.delivery {
            // Through the API, fds travel as SCM_RIGHTS; the child needs none of them.
            Delivery::Api => Vec::new(),
            Delivery::Argv => self.argv.inherited_fds.clone(),
        }
    }
}

/// The argv as cloud-hypervisor would parse and check it, refused unless it describes a VM.
fn parse_vm_argv(user_args: &[OsString]) -> Result<ChArgv, ChPlanError> {
    let parsed = ch::parse_argv(user_args)?;
    if parsed.mode != Mode::Vm {
        return Err(ChPlanError::NoVm);
    }
    if let Some(config) = &parsed.vm_config {
        ch::refused_at_create(config)?;
    }
    Ok(parsed)
}

/// SMBIOS or fw_cfg for each string, within cloud-hypervisor's limits: its ceiling is lowered
/// by the argv's own platform strings, which share the table.
fn choose_channels(
    args: &RunArgs,
    parsed: &ChArgv,
    strings: Vec<OemString>,
) -> Result<crate::fwcfg::Split, ChPlanError> {
    let ceiling =
        oem::CH_STRINGS_CEILING.saturating_sub(system_strings_len(parsed.vm_config.as_ref()));
    let limits = Limits {
        budget: args.smbios_budget,
        strings_ceiling: ceiling,
        hypervisor: "cloud-hypervisor",
    };
    Plan::check_limits(&[], &limits)?;
    // Whether this build has fw_cfg is known only from vmm.ping once it runs: the choice
    // assumes it, and the backend refuses to send any fw_cfg item to a build without it.
    let support = match args.delivery {
        Delivery::Api => crate::fwcfg::Support::Yes { max_items: None },
        Delivery::Argv => crate::fwcfg::Support::No(
            "credbridge sends fw_cfg items to cloud-hypervisor only through its API \
             (--delivery api)"
                .into(),
        ),
    };
    let split = crate::fwcfg::choose(strings, None, &support, args.channel, &limits)?;
    Plan::check_limits(&split.smbios, &limits)?;
    Ok(split)
}

/// `--delivery argv`: every `--oem-string` must survive `--platform oem_strings=[...]`'s
/// grammar, and every fd the argv names must be open, since the child inherits them.
fn check_argv_delivery(
    strings: &[OemString],
    parsed: &ChArgv,
    warnings: &mut Vec<String>,
) -> Result<(), ChPlanError> {
    for s in strings.iter().filter(|s| s.origin == Origin::Flag) {
        let b = s.expose();
        let what = if b.iter().any(|c| matches!(c, b',' | b'"' | b'[' | b']')) {
            Some("`,`, `\"`, `[` or `]`")
        } else if b.first().is_some_and(u8::is_ascii_whitespace)
            || b.last().is_some_and(u8::is_ascii_whitespace)
        {
            Some("leading or trailing whitespace")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(ChPlanError::NotArgvSafe {
                subject: s.subject(),
                what,
            });
        }
    }
    warnings.push(
        "--delivery argv: the credentials' values are on cloud-hypervisor's command line, \
         readable by every local user in /proc/PID/cmdline; use --delivery api to avoid it"
            .into(),
    );
    for &fd in &parsed.inherited_fds {
        if !crate::sys::fd_is_open(fd) {
            return Err(PlanError::FdNotOpen { fd, option: "fd=" }.into());
        }
    }
    Ok(())
}

/// `--delivery api`: what `vm.create` cannot express is refused, and the VM config (with the
/// vsock device credbridge adds) becomes the request.
fn create_plan(
    parsed: &ChArgv,
    add_vsock: &Option<(u32, PathBuf)>,
    warnings: &mut Vec<String>,
) -> Result<CreatePlan, ChPlanError> {
    if parsed.landlock {
        return Err(ChPlanError::NotExpressible {
            what: "--landlock (thread sandboxing of the VMM's HTTP, signal and event threads)"
                .into(),
        });
    }
    if parsed.restore.is_some() {
        return Err(ChPlanError::NotExpressible {
            what: "--restore".into(),
        });
    }
    if parsed.verbosity > 0 {
        warnings.push(
            "the hypervisor argv has -v: at that level cloud-hypervisor logs the whole VM \
             config, OEM strings and therefore credentials included; remove -v"
                .into(),
        );
    }
    let mut config = parsed.vm_config.clone().ok_or(ChPlanError::NoVm)?;
    if let Some((cid, path)) = add_vsock {
        config["vsock"] = serde_json::json!({
            "pci_segment": 0,
            "cid": cid,
            "socket": path.to_string_lossy(),
        });
    }
    CreatePlan::split(config)
}

/// Where the API socket comes from: the argv's `--api-socket`, else activation or a private one.
fn api_source(parsed: &ChArgv) -> Result<ApiSource, ChPlanError> {
    Ok(match &parsed.api_socket {
        Some(SocketArg::Path(p)) => ApiSource::Path(p.clone()),
        Some(SocketArg::Fd(fd)) => {
            if !crate::sys::fd_is_open(*fd) {
                return Err(PlanError::FdNotOpen {
                    fd: *fd,
                    option: "--api-socket",
                }
                .into());
            }
            ApiSource::Fd(*fd)
        }
        None => ApiSource::Default,
    })
}

/// `--ready guest` and `--vsock-cid`: the vsock device, the notify port, and the
/// `vmm.notify_socket` string the guest needs (added when the argv has none).
#[allow(clippy::type_complexity)]
fn guest_notify(
    args: &RunArgs,
    env: &HostEnv,
    parsed: &ChArgv,
    strings: &mut Vec<OemString>,
) -> Result<(Option<GuestNotifyPlan>, Option<(u32, PathBuf)>), ChPlanError> {
    let argv_vsock = parsed
        .vm_config
        .as_ref()
        .and_then(|c| c.pointer("/vsock/socket"))
        .and_then(Value::as_str)
        .map(PathBuf::from);
    let add_vsock = match (&argv_vsock, args.vsock_cid) {
        (None, Some(cid)) => {
            if !is_guest_cid(cid.into()) {
                return Err(PlanError::BadCid(cid).into());
            }
            // Like microvm.nix's `notify.vsock` in the VM's directory, but in the unit's
            // runtime directory when it has one.
            let path = env
                .runtime_directory()
                .map(|d| d.join("notify.vsock"))
                .unwrap_or_else(|| PathBuf::from("notify.vsock"));
            if args.delivery == Delivery::Argv
                && path.to_string_lossy().contains([',', '"', '[', ']'])
            {
                return Err(ChPlanError::VsockPath(path.to_string_lossy().into_owned()));
            }
            Some((cid, path))
        }
        _ => None,
    };
    if args.ready.mode != Ready::Guest {
        return Ok((None, add_vsock));
    }
    let vsock_socket = argv_vsock
        .or_else(|| add_vsock.as_ref().map(|(_, p)| p.clone()))
        .ok_or(ChPlanError::NoVsock)?;
    let port =
        Plan::notify_port(args, strings, Some(DEFAULT_NOTIFY_PORT))?.unwrap_or(DEFAULT_NOTIFY_PORT);
    let mut listen = vsock_socket.into_os_string();
    listen.push(format!("_{port}"));
    Ok((
        Some(GuestNotifyPlan::Hybrid {
            listen_path: PathBuf::from(listen),
        }),
        add_vsock,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_hypervisor_needs_x86_64_for_smbios() {
        assert!(check_ch_arch("x86_64").is_ok());
        let e = check_ch_arch("aarch64").unwrap_err().to_string();
        assert!(e.contains("aarch64") && e.contains("no SMBIOS"), "{e}");
    }

    #[test]
    fn strip_option_handles_both_forms() {
        let a: Vec<OsString> = ["--x", "1", "--api-socket", "p", "--api-socket=q", "--y"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = strip_option(&a, "--api-socket");
        assert_eq!(out, vec!["--x", "1", "--y"]);
    }
}
