//! Turns the command line, the environment and the credentials into a checked plan. Nothing is
//! started, bound or created here: bad input must be refused before anything exists.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use crate::cli::{Delivery, HypervisorKind, Ready, RunArgs};
use crate::credentials::{self, CredentialError, SecretBytes};
use crate::guestnotify::GuestNotifyPlan;
use crate::hostenv::HostEnv;
use crate::hypervisor::cloud_hypervisor::cmdline::{self as ch, ChArgv, Mode, SocketArg};
use crate::oem::{self, Limits, OemError, OemString, Origin};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Oem(#[from] OemError),
    #[error(transparent)]
    Channel(#[from] crate::fwcfg::ChannelError),
    #[error(
        "hypervisor argv: {0}\nhint: credbridge refuses what cloud-hypervisor would refuse, before starting it"
    )]
    Argv(#[from] ch::ArgvError),
    #[error(
        "cannot tell which hypervisor {0:?} is from its file name\nhint: pass --hypervisor cloud-hypervisor or --hypervisor qemu"
    )]
    UnknownHypervisor(String),
    #[error(
        "cloud-hypervisor on {0} has no SMBIOS: it parses oem_strings and drops them, so the guest would get no credentials\nhint: credbridge needs an x86_64 host for cloud-hypervisor"
    )]
    NoSmbios(&'static str),
    #[error("QEMU argv: {0}")]
    QemuArgv(#[from] crate::hypervisor::qemu::ArgvError),
    #[error(
        "{flag} applies to cloud-hypervisor only; QEMU always gets the OEM strings through sealed memfds (-smbios type=11,path=/dev/fd/N), never in argv\nhint: drop {flag}"
    )]
    NotForQemu { flag: &'static str },
    #[error(
        "--ready guest needs a vsock device for the guest's notifications, and the QEMU argv has no vhost-vsock device{user}\nhint: pass --vsock-cid CID (credbridge adds -device vhost-vsock-pci and reserves the CID), or add -device vhost-vsock-pci,guest-cid=CID to the argv",
        user = if *.vhost_user { " but a vhost-user-vsock device, whose host side is a user-space backend's Unix socket\nhint: pass --vsock-uds with that backend's hybrid-vsock socket (vhost-device-vsock's uds-path)" } else { "" }
    )]
    QemuNoVsock { vhost_user: bool },
    #[error("--vsock-uds {path}: {why}")]
    VsockUds { path: String, why: &'static str },
    #[error(
        "-device {driver}: {what}; QEMU needs a guest-cid of 3 to 4294967294, and credbridge needs it to tell the guest's connections from other VMs'\nhint: add guest-cid=CID, unique on this host (microvm.nix: microvm.vsock.cid)",
        what = match .cid { None => "no numeric guest-cid".to_owned(), Some(c) => format!("guest-cid={c} is not a guest CID") }
    )]
    QemuVsockCid { driver: String, cid: Option<u64> },
    #[error(
        "--ready guest needs a vsock device for the guest's notifications, and the argv has no --vsock\nhint: pass --vsock-cid CID (credbridge adds the device), or add --vsock cid=CID,socket=PATH to the argv"
    )]
    NoVsock,
    #[error(
        "{subject} says {value}; credbridge relays only vsock-stream:2:PORT, a stream connection to the host (cloud-hypervisor's vsock is stream only; credbridge's vhost-vsock listener is a stream socket)\nhint: use io.systemd.credential:vmm.notify_socket=vsock-stream:2:PORT, or drop it and let credbridge add it (--notify-port)"
    )]
    NotifySocketForm { subject: String, value: String },
    #[error(
        "--vsock-cid {0} is reserved (0, 1, 2 and 4294967295 are not guest CIDs)\nhint: use a CID of 3 or more, unique on this host"
    )]
    BadCid(u32),
    #[error(
        "the vsock socket path {0:?} contains characters the argv grammar cannot carry\nhint: set RUNTIME_DIRECTORY= to a plain path, or use --delivery api"
    )]
    VsockPath(String),
    #[error(
        "the hypervisor argv has no --kernel or --firmware, so there is no VM to give the credentials to\nhint: pass the complete cloud-hypervisor command line after `--`"
    )]
    NoVm,
    #[error(
        "{what} cannot be expressed through cloud-hypervisor's API (vm.create)\nhint: use --delivery argv for this VM, accepting that the OEM strings are visible in the process list"
    )]
    NotExpressible { what: String },
    #[error(
        "{subject} contains {what}, which the --platform oem_strings=[...] grammar cannot carry\nhint: use --delivery api (the default), which passes any bytes"
    )]
    NotArgvSafe { subject: String, what: &'static str },
    #[error(
        "--smbios-budget {budget} is above what {hypervisor} can hold ({max} bytes for the type 11 entry)\nhint: use at most {max}"
    )]
    BudgetTooLarge {
        budget: usize,
        max: usize,
        hypervisor: &'static str,
    },
    #[error(
        "the hypervisor argv names fd {fd} ({option}), but credbridge did not inherit fd {fd}\nhint: open it before exec, as microvm.nix's runner does for macvtap"
    )]
    FdNotOpen { fd: RawFd, option: &'static str },
}

/// The vm.create request and the devices that must follow it with fds attached.
pub struct CreatePlan {
    /// The VM config with `platform.oem_strings` left for [`CreatePlan::body`] to fill.
    config: Value,
    /// `--net fd=[...]`: vm.create drops fds, so these go through vm.add-net with SCM_RIGHTS.
    pub add_nets: Vec<(Value, Vec<RawFd>)>,
    /// `--device fd=N`: likewise through vm.add-device.
    pub add_devices: Vec<(Value, RawFd)>,
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

pub struct Plan {
    pub kind: HypervisorKind,
    pub delivery: Delivery,
    pub program: OsString,
    pub argv0: OsString,
    pub user_args: Vec<OsString>,
    /// The hypervisor's argv as credbridge understood it. The fields below that name
    /// cloud-hypervisor's API and event monitor are unused for QEMU.
    pub target: Target,
    /// Every OEM string in SMBIOS order: the argv's own, `--oem-string`, then credentials.
    pub strings: Vec<OemString>,
    /// The credentials that go as fw_cfg files instead (#15), and where each went and why.
    pub fw_cfg: Vec<crate::fwcfg::FwCfgItem>,
    pub choices: Vec<crate::fwcfg::Choice>,
    pub credential_count: usize,
    pub budget: usize,
    pub api_source: ApiSource,
    /// `--api-socket-group-access`.
    pub api_socket_group_access: bool,
    pub own_event_monitor: bool,
    pub create: Option<CreatePlan>,
    pub ready: Ready,
    /// `--ready guest:TARGET`'s target.
    pub ready_target: Option<String>,
    /// `--ready guest`: where the guest's notifications arrive.
    pub guest_notify: Option<GuestNotifyPlan>,
    /// `--vsock-cid` with cloud-hypervisor: the vsock device credbridge adds (cid, socket path).
    pub add_vsock: Option<(u32, PathBuf)>,
    /// `--vsock-cid` with QEMU: the guest CID of the vhost-vsock device credbridge adds.
    pub add_vhost_vsock: Option<u32>,
    pub ready_timeout: Option<Duration>,
    pub stop_timeout: Duration,
    pub warnings: Vec<String>,
}

pub enum Target {
    Ch(ChArgv),
    Qemu(crate::hypervisor::qemu::QemuArgv),
}

/// cloud-hypervisor's notify port when neither the argv nor `--notify-port` names one, as in
/// microvm.nix. Ports of its hybrid vsock are per VM, so every VM can use the same one.
pub const DEFAULT_NOTIFY_PORT: u32 = 8888;

/// The longest port, for sizing credbridge's `vmm.notify_socket` string before the kernel
/// has picked the real one (VMADDR_PORT_ANY, u32::MAX, is never picked).
const WIDEST_PORT: u32 = u32::MAX - 1;

fn notify_socket_string(port: u32) -> String {
    format!("io.systemd.credential:vmm.notify_socket=vsock-stream:2:{port}")
}

/// A guest CID QEMU and the kernel accept: 0, 1 and 2 are the hypervisor, local and host.
fn is_guest_cid(cid: u64) -> bool {
    (3..u64::from(u32::MAX)).contains(&cid)
}

/// `fd=` placeholders for `render`, real numbers for `run`.
pub struct FdNames {
    pub api: String,
    pub events: Option<String>,
}

/// Child argv that may hold secrets (argv delivery): zeroed on drop.
pub struct ChildArgs(pub Vec<OsString>);

impl Drop for ChildArgs {
    fn drop(&mut self) {
        for a in self.0.drain(..) {
            let mut bytes = std::os::unix::ffi::OsStringExt::into_vec(a);
            bytes.zeroize();
        }
    }
}

fn detect(program: &OsStr, forced: Option<HypervisorKind>) -> Result<HypervisorKind, PlanError> {
    if let Some(k) = forced {
        return Ok(k);
    }
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("cloud-hypervisor") {
        Ok(HypervisorKind::CloudHypervisor)
    } else if name.starts_with("qemu-system-") || name == "qemu-kvm" {
        Ok(HypervisorKind::Qemu)
    } else {
        Err(PlanError::UnknownHypervisor(
            program.to_string_lossy().into_owned(),
        ))
    }
}

/// cloud-hypervisor writes SMBIOS only on x86_64 (cloud-hypervisor.md section 2).
fn check_ch_arch(arch: &'static str) -> Result<(), PlanError> {
    if arch == "x86_64" {
        Ok(())
    } else {
        Err(PlanError::NoSmbios(arch))
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

impl Plan {
    pub fn build(args: &RunArgs, env: &HostEnv) -> Result<Plan, PlanError> {
        let (program, user_args) = args
            .command
            .split_first()
            .expect("clap requires HYPERVISOR");
        let kind = detect(program, args.hypervisor)?;
        if kind == HypervisorKind::Qemu {
            return Self::build_qemu(args, env, program, user_args);
        }
        check_ch_arch(std::env::consts::ARCH)?;
        // The argv is checked before the credentials are read, so a typo in the hypervisor's
        // command line is reported even when the secrets are fine.
        let parsed = ch::parse_argv(user_args)?;
        if parsed.mode != Mode::Vm {
            return Err(PlanError::NoVm);
        }
        if let Some(config) = &parsed.vm_config {
            ch::refused_at_create(config)?;
        }
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
        strings.extend(Self::flag_and_credential_strings(
            args,
            env,
            delivery == Delivery::Api,
        )?);

        if let Some(uds) = &args.vsock_uds {
            return Err(PlanError::VsockUds {
                path: uds.display().to_string(),
                why: "applies to QEMU's vhost-user-vsock only; cloud-hypervisor's hybrid socket is its own --vsock socket=",
            });
        }
        let (guest_notify, add_vsock) = Self::guest_notify(args, env, &parsed, &mut strings)?;
        if args.vsock_cid.is_some() && add_vsock.is_none() {
            warnings.push("--vsock-cid is ignored: the argv has its own --vsock".into());
        }

        let ceiling =
            oem::CH_STRINGS_CEILING.saturating_sub(system_strings_len(parsed.vm_config.as_ref()));
        let limits = Limits {
            budget: args.smbios_budget,
            strings_ceiling: ceiling,
            hypervisor: "cloud-hypervisor",
        };
        Self::check_limits(&[], &limits)?;
        // Whether this build has fw_cfg is known only from vmm.ping once it runs: the choice
        // assumes it, and the backend refuses to send any fw_cfg item to a build without it.
        let support = match delivery {
            Delivery::Api => crate::fwcfg::Support::Yes { max_items: None },
            Delivery::Argv => crate::fwcfg::Support::No(
                "credbridge sends fw_cfg items to cloud-hypervisor only through its API \
                 (--delivery api)"
                    .into(),
            ),
        };
        let split = crate::fwcfg::choose(strings, None, &support, args.channel, &limits)?;
        Self::check_limits(&split.smbios, &limits)?;
        let crate::fwcfg::Split {
            smbios: strings,
            fw_cfg,
            choices,
        } = split;

        if delivery == Delivery::Argv {
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
                    return Err(PlanError::NotArgvSafe {
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
                    return Err(PlanError::FdNotOpen { fd, option: "fd=" });
                }
            }
        }

        let create = if delivery == Delivery::Api {
            if parsed.landlock {
                return Err(PlanError::NotExpressible {
                    what:
                        "--landlock (thread sandboxing of the VMM's HTTP, signal and event threads)"
                            .into(),
                });
            }
            if parsed.restore.is_some() {
                return Err(PlanError::NotExpressible {
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
            let mut config = parsed.vm_config.clone().ok_or(PlanError::NoVm)?;
            if let Some((cid, path)) = &add_vsock {
                config["vsock"] = serde_json::json!({
                    "pci_segment": 0,
                    "cid": cid,
                    "socket": path.to_string_lossy(),
                });
            }
            Some(CreatePlan::split(config)?)
        } else {
            None
        };

        let api_source = match &parsed.api_socket {
            Some(SocketArg::Path(p)) => ApiSource::Path(p.clone()),
            Some(SocketArg::Fd(fd)) => {
                if !crate::sys::fd_is_open(*fd) {
                    return Err(PlanError::FdNotOpen {
                        fd: *fd,
                        option: "--api-socket",
                    });
                }
                ApiSource::Fd(*fd)
            }
            None => ApiSource::Default,
        };

        Ok(Plan {
            kind,
            delivery,
            program: program.clone(),
            argv0: args.argv0.clone().unwrap_or_else(|| program.clone()),
            own_event_monitor: parsed.event_monitor.is_none(),
            user_args: user_args.to_vec(),
            target: Target::Ch(parsed),
            credential_count: strings.iter().filter(|s| s.is_secret()).count()
                + fw_cfg.iter().filter(|i| !i.public).count(),
            strings,
            fw_cfg,
            choices,
            budget: args.smbios_budget,
            api_source,
            api_socket_group_access: args.api_socket_group_access,
            create,
            ready: args.ready.mode,
            ready_target: args.ready.target.clone(),
            guest_notify,
            add_vsock,
            add_vhost_vsock: None,
            ready_timeout: args.ready_timeout,
            stop_timeout: args.stop_timeout,
            warnings,
        })
    }

    /// `--oem-string`s, then the credentials, encoded for the channel.
    fn flag_and_credential_strings(
        args: &RunArgs,
        env: &HostEnv,
        plain_ok: bool,
    ) -> Result<Vec<OemString>, PlanError> {
        let dir = args
            .credentials_dir
            .clone()
            .or_else(|| env.credentials_directory())
            .ok_or(CredentialError::NoDirectory)?;
        let creds = credentials::load(&dir, &args.credentials)?;
        let mut strings: Vec<OemString> = args
            .oem_strings
            .iter()
            .map(|s| OemString::public(s, Origin::Flag))
            .collect();
        strings.extend(
            creds
                .iter()
                .map(|c| OemString::from_credential(c, plain_ok)),
        );
        Ok(strings)
    }

    fn check_limits(strings: &[OemString], limits: &Limits) -> Result<(), PlanError> {
        if limits.budget > limits.max_budget() {
            return Err(PlanError::BudgetTooLarge {
                budget: limits.budget,
                max: limits.max_budget(),
                hypervisor: limits.hypervisor,
            });
        }
        Ok(oem::validate(strings, limits)?)
    }

    /// QEMU: every string credbridge adds goes in a sealed memfd, `-smbios type=11,path=`;
    /// readiness and stop go through a private QMP monitor.
    fn build_qemu(
        args: &RunArgs,
        env: &HostEnv,
        program: &OsString,
        user_args: &[OsString],
    ) -> Result<Plan, PlanError> {
        if args.delivery == Delivery::Argv {
            return Err(PlanError::NotForQemu {
                flag: "--delivery argv",
            });
        }
        let mut parsed = crate::hypervisor::qemu::parse_argv(user_args)?;
        // QEMU's microvm machine has no SMBIOS tables (QEMU 7.2 accepts -smbios for it and
        // drops it; the guest kernel logs "DMI not present"), but it has fw_cfg.
        let no_smbios = match (
            &parsed.machine,
            crate::hypervisor::qemu::args::default_machine(program),
        ) {
            (Some(m), _) if m == "microvm" => Some(format!("-machine {m}")),
            (None, Some(m)) => {
                parsed.machine = Some(m.to_owned());
                Some(format!(
                    "{m} (the default of {})",
                    Path::new(program).display()
                ))
            }
            _ => None,
        };
        for &fd in &parsed.inherited_fds {
            if !crate::sys::fd_is_open(fd) {
                return Err(PlanError::FdNotOpen { fd, option: "fd=" });
            }
        }
        // The argv's own strings come first in QEMU's single type 11 entry.
        let mut strings = parsed.argv_oem_strings();
        // A memfd carries any byte but NUL, so UTF-8 values go in the shorter plain form.
        strings.extend(Self::flag_and_credential_strings(args, env, true)?);
        let mut warnings = Vec::new();
        let add_vhost_vsock = match (&parsed.vsock, args.vsock_cid) {
            (Some(_), Some(_)) => {
                warnings
                    .push("--vsock-cid is ignored: the argv has its own vhost-vsock device".into());
                None
            }
            (None, Some(cid)) if !is_guest_cid(cid.into()) => return Err(PlanError::BadCid(cid)),
            (_, cid) => cid,
        };
        if let Some(uds) = &args.vsock_uds {
            let why = if !parsed.vhost_user_vsock {
                Some(
                    "the QEMU argv has no -device vhost-user-vsock-pci (or -device) whose backend it belongs to",
                )
            } else if parsed.vsock.is_some() || add_vhost_vsock.is_some() {
                Some(
                    "the VM has a kernel vhost-vsock device too; a guest uses one vsock device, so give it only one",
                )
            } else {
                None
            };
            if let Some(why) = why {
                return Err(PlanError::VsockUds {
                    path: uds.display().to_string(),
                    why,
                });
            }
        }
        if args.vsock_uds.is_some() && args.ready.mode != Ready::Guest {
            warnings.push("--vsock-uds is ignored: only --ready guest listens on it".into());
        }
        let guest_notify = if let Some(uds) = args
            .vsock_uds
            .as_ref()
            .filter(|_| args.ready.mode == Ready::Guest)
        {
            // A hybrid vsock like cloud-hypervisor's: the backend's socket is this VM's own,
            // so ports are per VM and the default port serves.
            let port = Self::notify_port(args, &mut strings, Some(DEFAULT_NOTIFY_PORT))?
                .unwrap_or(DEFAULT_NOTIFY_PORT);
            let mut listen = uds.clone().into_os_string();
            listen.push(format!("_{port}"));
            Some(GuestNotifyPlan::Hybrid {
                listen_path: listen.into(),
            })
        } else if args.ready.mode == Ready::Guest {
            let cid = match (&parsed.vsock, add_vhost_vsock) {
                (Some(v), _) => match v.guest_cid {
                    Some(c) if is_guest_cid(c) => c as u32,
                    cid => {
                        return Err(PlanError::QemuVsockCid {
                            driver: v.driver.clone(),
                            cid,
                        });
                    }
                },
                (None, Some(cid)) => cid,
                (None, None) => {
                    return Err(PlanError::QemuNoVsock {
                        vhost_user: parsed.vhost_user_vsock,
                    });
                }
            };
            // Host ports are one namespace for all VMs: by default the kernel picks a free one.
            let port = Self::notify_port(args, &mut strings, None)?;
            Some(GuestNotifyPlan::Vhost { cid, port })
        } else {
            None
        };
        let limits = crate::hypervisor::qemu::limits(args.smbios_budget);
        Self::check_limits(&[], &limits)?;
        // The argv's own -fw_cfg files take slots, and QEMU refuses a name given twice.
        for name in &parsed.fw_cfg_names {
            let Some(guest) = name.strip_prefix(crate::fwcfg::NAME_PREFIX) else {
                continue;
            };
            if let Some(s) = strings
                .iter()
                .find(|s| s.guest_name.as_deref() == Some(guest))
            {
                return Err(OemError::Duplicate {
                    name: guest.to_owned(),
                    first: format!("the argv's -fw_cfg name={name}"),
                    second: s.subject(),
                }
                .into());
            }
        }
        let split = crate::fwcfg::choose(
            strings,
            no_smbios.as_deref(),
            &crate::fwcfg::Support::Yes {
                max_items: Some(
                    crate::fwcfg::QEMU_ITEMS_MAX.saturating_sub(parsed.fw_cfg_names.len()),
                ),
            },
            args.channel,
            &limits,
        )?;
        Self::check_limits(&split.smbios, &limits)?;
        Ok(Plan {
            kind: HypervisorKind::Qemu,
            delivery: Delivery::Api,
            program: program.clone(),
            argv0: args.argv0.clone().unwrap_or_else(|| program.clone()),
            credential_count: split.smbios.iter().filter(|s| s.is_secret()).count()
                + split.fw_cfg.iter().filter(|i| !i.public).count(),
            user_args: user_args.to_vec(),
            target: Target::Qemu(parsed),
            strings: split.smbios,
            fw_cfg: split.fw_cfg,
            choices: split.choices,
            budget: args.smbios_budget,
            api_source: ApiSource::Default,
            api_socket_group_access: args.api_socket_group_access,
            own_event_monitor: false,
            create: None,
            ready: args.ready.mode,
            ready_target: args.ready.target.clone(),
            guest_notify,
            add_vsock: None,
            add_vhost_vsock,
            ready_timeout: args.ready_timeout,
            stop_timeout: args.stop_timeout,
            warnings,
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
    ) -> Result<(Option<GuestNotifyPlan>, Option<(u32, PathBuf)>), PlanError> {
        let argv_vsock = parsed
            .vm_config
            .as_ref()
            .and_then(|c| c.pointer("/vsock/socket"))
            .and_then(Value::as_str)
            .map(PathBuf::from);
        let add_vsock = match (&argv_vsock, args.vsock_cid) {
            (None, Some(cid)) => {
                if !is_guest_cid(cid.into()) {
                    return Err(PlanError::BadCid(cid));
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
                    return Err(PlanError::VsockPath(path.to_string_lossy().into_owned()));
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
            .ok_or(PlanError::NoVsock)?;
        let port = Self::notify_port(args, strings, Some(DEFAULT_NOTIFY_PORT))?
            .unwrap_or(DEFAULT_NOTIFY_PORT);
        let mut listen = vsock_socket.into_os_string();
        listen.push(format!("_{port}"));
        Ok((
            Some(GuestNotifyPlan::Hybrid {
                listen_path: PathBuf::from(listen),
            }),
            add_vsock,
        ))
    }

    /// The guest's notify port: from a `vmm.notify_socket` string the argv or the credentials
    /// already have, else `--notify-port`, else `default`. When credbridge adds the string, it
    /// goes before the credentials, so that it lands in the first 4 KiB old guests read; with
    /// no port known yet (`None`, the kernel picks at start) it is sized for the widest port.
    fn notify_port(
        args: &RunArgs,
        strings: &mut Vec<OemString>,
        default: Option<u32>,
    ) -> Result<Option<u32>, PlanError> {
        let existing = strings
            .iter()
            .find(|s| s.guest_name.as_deref() == Some("vmm.notify_socket"));
        if let Some(s) = existing {
            // It may be a credential: the copy is zeroized.
            let text = Zeroizing::new(String::from_utf8_lossy(s.expose()).into_owned());
            let value = text.split_once('=').map(|(_, v)| v).unwrap_or("");
            // A binary-form string would need decoding; the plain form is what microvm.nix
            // and credbridge write.
            let port =
                crate::guestnotify::port_of(value).ok_or_else(|| PlanError::NotifySocketForm {
                    subject: s.subject(),
                    // A vmm.notify_socket from the credentials directory is still a credential.
                    value: if s.is_confidential() {
                        "<redacted>".to_owned()
                    } else {
                        format!("{value:?}")
                    },
                })?;
            return Ok(Some(port));
        }
        let port = args.notify_port.or(default);
        let at = strings
            .iter()
            .position(|s| s.is_secret())
            .unwrap_or(strings.len());
        strings.insert(
            at,
            OemString::public(
                &notify_socket_string(port.unwrap_or(WIDEST_PORT)),
                Origin::Credbridge,
            ),
        );
        Ok(port)
    }

    /// Writes the port the kernel picked into credbridge's `vmm.notify_socket` string (QEMU,
    /// no port given). The string was sized for the widest port, so the checked limits hold.
    pub fn set_notify_port(&mut self, port: u32) {
        let Some(GuestNotifyPlan::Vhost { port: p @ None, .. }) = &mut self.guest_notify else {
            return;
        };
        *p = Some(port);
        if let Some(s) = self.strings.iter_mut().find(|s| {
            s.origin == Origin::Credbridge && s.guest_name.as_deref() == Some("vmm.notify_socket")
        }) {
            *s = OemString::public(&notify_socket_string(port), Origin::Credbridge);
        }
        if let Some(item) = self
            .fw_cfg
            .iter_mut()
            .find(|i| i.public && i.guest_name == "vmm.notify_socket")
        {
            *item = crate::fwcfg::FwCfgItem::public(
                "vmm.notify_socket",
                &format!("vsock-stream:2:{port}"),
            );
        }
    }

    /// The hypervisor as messages name it.
    pub fn hypervisor_name(&self) -> &'static str {
        match self.kind {
            HypervisorKind::CloudHypervisor => "cloud-hypervisor",
            HypervisorKind::Qemu => "QEMU",
        }
    }

    pub fn entry_size(&self) -> usize {
        oem::entry_size(&self.strings)
    }

    /// The hypervisor's arguments (after argv[0]).
    pub fn child_args(&self, ch: &ChArgv, fds: &FdNames) -> Result<ChildArgs, PlanError> {
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
                let extra: Vec<&str> = self
                    .strings
                    .iter()
                    .filter(|s| !s.is_from_argv())
                    // Argv-safe by construction: binary form, and --oem-string checked above.
                    .map(|s| std::str::from_utf8(s.expose()).unwrap_or(""))
                    .collect();
                let stripped = strip_option(&self.user_args, "--api-socket");
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
        ch: &ChArgv,
        fds: &FdNames,
    ) -> Result<Vec<String>, PlanError> {
        let args = self.child_args(ch, fds)?;
        Ok(self.redact_args(&args.0))
    }

    /// Any argv with every credential value replaced by its size. Every intermediate string
    /// may hold a value, so each is zeroized and built without reallocation (#11).
    pub fn redact_args(&self, args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| {
                let mut s = Zeroizing::new(a.to_string_lossy().into_owned());
                for o in self.strings.iter().filter(|o| o.is_confidential()) {
                    let secret = Zeroizing::new(String::from_utf8_lossy(o.expose()).into_owned());
                    s = replace_exact(&s, &secret, &o.redacted());
                }
                // Every value is replaced: what is returned holds none.
                String::clone(&s)
            })
            .collect()
    }

    /// Fds the child keeps at their numbers besides the ones credbridge creates.
    pub fn inherited_fds_for_child(&self, ch: &ChArgv) -> Vec<RawFd> {
        match self.delivery {
            // Through the API, fds travel as SCM_RIGHTS; the child needs none of them.
            Delivery::Api => Vec::new(),
            Delivery::Argv => ch.inherited_fds.clone(),
        }
    }

    /// Replaces every secret's value in `text` (an error from the hypervisor, say) in any of
    /// its forms (`crate::scrub`) by its size. Needs the secrets: call before `forget_secrets`.
    pub fn scrub(&self, text: &str) -> String {
        let needles: Vec<_> = self
            .strings
            .iter()
            .filter(|o| o.is_confidential())
            .flat_map(crate::scrub::needles_of)
            .chain(
                self.fw_cfg
                    .iter()
                    .filter(|i| !i.public)
                    .flat_map(crate::fwcfg::FwCfgItem::needles),
            )
            .collect();
        crate::scrub::scrub(text, &needles)
    }

    /// Drops the secrets once they have been handed over.
    pub fn forget_secrets(&mut self) {
        self.strings.retain(|s| !s.is_confidential());
        self.fw_cfg.retain(|i| i.public);
    }
}

impl CreatePlan {
    fn split(mut config: Value) -> Result<CreatePlan, PlanError> {
        if config
            .pointer("/platform/iommufd_fd")
            .is_some_and(|v| !v.is_null())
        {
            return Err(PlanError::NotExpressible {
                what: "--platform iommufd_fd".into(),
            });
        }
        let mut add_nets = Vec::new();
        if let Some(Value::Array(nets)) = config.get_mut("net") {
            let mut kept = Vec::new();
            for mut net in nets.drain(..) {
                match net.as_object_mut().and_then(|o| o.remove("fds")) {
                    Some(Value::Array(fds)) => {
                        let fds: Vec<RawFd> = fds
                            .iter()
                            .filter_map(|v| v.as_i64())
                            .map(|v| v as RawFd)
                            .collect();
                        for &fd in &fds {
                            if !crate::sys::fd_is_open(fd) {
                                return Err(PlanError::FdNotOpen {
                                    fd,
                                    option: "--net fd=",
                                });
                            }
                        }
                        add_nets.push((net, fds));
                    }
                    Some(Value::Null) | None => kept.push(net),
                    Some(other) => {
                        net["fds"] = other;
                        kept.push(net)
                    }
                }
            }
            *nets = kept;
        }
        if config
            .get("net")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            config.as_object_mut().map(|o| o.remove("net"));
        }
        let mut add_devices = Vec::new();
        if let Some(Value::Array(devices)) = config.get_mut("devices") {
            let mut kept = Vec::new();
            for mut dev in devices.drain(..) {
                match dev
                    .as_object_mut()
                    .and_then(|o| o.remove("fd"))
                    .and_then(|v| v.as_i64())
                {
                    Some(fd) => {
                        let fd = fd as RawFd;
                        if !crate::sys::fd_is_open(fd) {
                            return Err(PlanError::FdNotOpen {
                                fd,
                                option: "--device fd=",
                            });
                        }
                        add_devices.push((dev, fd))
                    }
                    None => kept.push(dev),
                }
            }
            *devices = kept;
        }
        if config
            .get("devices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            config.as_object_mut().map(|o| o.remove("devices"));
        }
        Ok(CreatePlan {
            config,
            add_nets,
            add_devices,
        })
    }

    /// Fills `platform.oem_strings` with placeholders; `fill` replaces each by its string.
    fn skeleton(&self, count: usize, fw_cfg: &[(String, String)]) -> (String, Vec<String>) {
        let mut config = self.config.clone();
        if !fw_cfg.is_empty() {
            config["payload"]["fw_cfg_config"] = fw_cfg_config(&config["payload"], fw_cfg);
        }
        let marks: Vec<String> = (0..count)
            .map(|i| format!("\u{0}credbridge-oem-{i}\u{0}"))
            .collect();
        if !config.get("platform").is_some_and(Value::is_object) {
            // cloud-hypervisor's own defaults for a --platform without other keys.
            config["platform"] = serde_json::json!({
                "num_pci_segments": 1,
                "iommu_address_width_bits": 64,
                "iommufd": false,
                "vfio_p2p_dma": true,
            });
        }
        config["platform"]["oem_strings"] =
            Value::Array(marks.iter().cloned().map(Value::String).collect());
        let text = serde_json::to_string(&config).expect("a Value always serializes");
        let encoded_marks = marks
            .iter()
            .map(|m| serde_json::to_string(m).expect("string"))
            .collect();
        (text, encoded_marks)
    }

    /// The vm.create body, built directly into a zeroizing buffer sized up front.
    ///
    /// The secrets never pass through a `serde_json::Value` (whose strings are freed without
    /// zeroing): the config is serialized with placeholders, and each string is escaped into
    /// the final buffer in place of its placeholder.
    pub fn body(&self, strings: &[OemString], fw_cfg: &[(String, String)]) -> SecretBytes {
        let (text, marks) = self.skeleton(strings.len(), fw_cfg);
        // JSON escaping at most sextuples a byte (\u00XX) plus the two quotes.
        let cap = text.len() + strings.iter().map(|s| s.len() * 6 + 2).sum::<usize>();
        let mut out = SecretBytes::with_capacity(cap);
        let mut rest = text.as_str();
        for (mark, s) in marks.iter().zip(strings) {
            let Some(at) = rest.find(mark.as_str()) else {
                continue;
            };
            out.extend_from_slice(&rest.as_bytes()[..at]);
            write_json_string(&mut out, s.expose());
            rest = &rest[at + mark.len()..];
        }
        out.extend_from_slice(rest.as_bytes());
        out
    }

    /// The vm.create body as `render` shows it: every credential redacted.
    pub fn redacted_json(&self, strings: &[OemString], fw_cfg: &[(String, String)]) -> String {
        let (text, marks) = self.skeleton(strings.len(), fw_cfg);
        let mut out = text;
        for (mark, s) in marks.iter().zip(strings) {
            let shown = serde_json::to_string(&s.redacted()).expect("string");
            out = out.replacen(mark.as_str(), &shown, 1);
        }
        let v: Value = serde_json::from_str(&out).expect("valid JSON");
        serde_json::to_string_pretty(&v).expect("a Value always serializes")
    }
}

/// `hay` with every `from` replaced by `to`, in one allocation of the exact size, zeroed on
/// drop: `hay` may hold a secret, and a String that grows leaves copies of what it held in
/// freed memory (`str::replace` grows).
fn replace_exact(hay: &str, from: &str, to: &str) -> Zeroizing<String> {
    if from.is_empty() {
        return Zeroizing::new(hay.to_owned());
    }
    let n = hay.matches(from).count();
    let mut out = Zeroizing::new(String::with_capacity(
        hay.len() - n * from.len() + n * to.len(),
    ));
    let mut last = 0;
    for (at, _) in hay.match_indices(from) {
        out.push_str(&hay[last..at]);
        out.push_str(to);
        last = at + from.len();
    }
    out.push_str(&hay[last..]);
    debug_assert_eq!(out.len(), out.capacity());
    out
}

/// `payload.fw_cfg_config` for (fw_cfg name, file path) items (cloud-hypervisor.md section 7):
/// `items` is an object holding `item_list`, and each of the toggles `kernel`, `cmdline` and
/// `initramfs` (default true) makes vm.boot fail unless the payload has that part, so the
/// absent ones are set false. The files hold the values; no secret is in this JSON.
fn fw_cfg_config(payload: &Value, items: &[(String, String)]) -> Value {
    let mut cfg = serde_json::json!({
        "items": {
            "item_list": items
                .iter()
                .map(|(name, file)| serde_json::json!({"name": name, "file": file}))
                .collect::<Vec<_>>(),
        },
    });
    for part in ["kernel", "cmdline", "initramfs"] {
        if payload.get(part).is_none_or(Value::is_null) {
            cfg[part] = Value::Bool(false);
        }
    }
    cfg
}

/// JSON string escaping into a buffer that must not reallocate. OEM strings are UTF-8 here:
/// argv and flag strings are Rust strings, binary-form credentials are base64, and plain-form
/// ones were chosen only for valid UTF-8.
fn write_json_string(out: &mut SecretBytes, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
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

    #[test]
    fn replace_exact_builds_the_result_in_one_exact_allocation() {
        for (hay, from, to, want) in [
            (
                "a=SECRET,b=SECRET",
                "SECRET",
                "<redacted 6 bytes>",
                "a=<redacted 6 bytes>,b=<redacted 6 bytes>",
            ),
            ("SECRET", "SECRET", "", ""),
            ("none here", "SECRET", "x", "none here"),
            ("aaa", "aa", "b", "ba"),
            ("abc", "", "x", "abc"),
        ] {
            let out = replace_exact(hay, from, to);
            assert_eq!(out.as_str(), want);
            assert_eq!(
                out.capacity(),
                out.len(),
                "{hay:?}: no spare room, so no regrowth"
            );
        }
    }

    #[test]
    fn json_escaping_round_trips_every_byte_of_utf8() {
        let s = "a,\"[]\\\n\t\r\u{1}\u{7f}é😀";
        let mut out = SecretBytes::with_capacity(s.len() * 6 + 2);
        write_json_string(&mut out, s.as_bytes());
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn create_body_holds_strings_exactly_and_moves_fd_nets_out() {
        let config = serde_json::json!({
            "payload": {"kernel": "/k"},
            "net": [{"tap": "t0"}, {"fds": [0, 1], "mac": "02:00:00:00:00:01"}],
        });
        let plan = CreatePlan::split(config).unwrap();
        assert_eq!(plan.add_nets.len(), 1);
        assert_eq!(plan.add_nets[0].1, vec![0, 1]);
        assert!(plan.add_nets[0].0.get("fds").is_none());
        let strings = vec![
            OemString::public(
                "io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888",
                Origin::Argv,
            ),
            OemString::public("x,\"[]\n\ty", Origin::Flag),
        ];
        let body = plan.body(&strings, &[]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["net"], serde_json::json!([{"tap": "t0"}]));
        assert_eq!(
            v["platform"]["oem_strings"],
            serde_json::json!([
                "io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888",
                "x,\"[]\n\ty"
            ])
        );
        assert_eq!(v["platform"]["num_pci_segments"], 1);
    }

    /// `credbridge run FLAGS -- qemu-system-x86_64 ARGV` with credentials `creds` in a
    /// temporary directory.
    fn qemu_plan(
        flags: &[&str],
        argv: &[&str],
        creds: &[(&str, &[u8])],
    ) -> Result<Plan, PlanError> {
        qemu_plan_of("qemu-system-x86_64", flags, argv, creds)
    }

    fn qemu_plan_of(
        program: &str,
        flags: &[&str],
        argv: &[&str],
        creds: &[(&str, &[u8])],
    ) -> Result<Plan, PlanError> {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in creds {
            std::fs::write(dir.path().join(name), value).unwrap();
        }
        let mut line = vec!["credbridge", "run", "--credentials-dir"];
        let d = dir.path().to_str().unwrap().to_owned();
        line.push(&d);
        line.extend(flags);
        line.push("--");
        line.push(program);
        line.extend(argv);
        let cli = crate::cli::Cli::try_parse_from(line).unwrap();
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("run")
        };
        Plan::build(&args, &HostEnv::default())
    }

    fn texts(plan: &Plan) -> Vec<String> {
        plan.strings
            .iter()
            .map(|s| String::from_utf8_lossy(s.expose()).into_owned())
            .collect()
    }

    #[test]
    fn qemu_ready_guest_with_vsock_cid_lets_the_kernel_pick_the_port() {
        let mut plan = qemu_plan(
            &["--ready", "guest", "--vsock-cid", "7"],
            &["-smbios", "type=11,value=io.systemd.credential:own=1"],
            &[("k", b"secret")],
        )
        .unwrap();
        assert_eq!(plan.add_vhost_vsock, Some(7));
        assert!(matches!(
            plan.guest_notify,
            Some(GuestNotifyPlan::Vhost { cid: 7, port: None })
        ));
        // After the argv's own string, before the credentials, sized for the widest port.
        let t = texts(&plan);
        assert_eq!(t[0], "io.systemd.credential:own=1");
        assert_eq!(
            t[1],
            "io.systemd.credential:vmm.notify_socket=vsock-stream:2:4294967294"
        );
        assert!(plan.strings[2].is_secret());
        let before = plan.entry_size();
        plan.set_notify_port(1234);
        assert_eq!(
            texts(&plan)[1],
            "io.systemd.credential:vmm.notify_socket=vsock-stream:2:1234"
        );
        assert!(plan.entry_size() < before);
        assert!(matches!(
            plan.guest_notify,
            Some(GuestNotifyPlan::Vhost {
                cid: 7,
                port: Some(1234)
            })
        ));
        // Only once: a port already known is not replaced.
        plan.set_notify_port(99);
        assert!(texts(&plan)[1].ends_with(":1234"));
    }

    /// #14: QEMU's vhost-user-vsock with a hybrid backend (vhost-device-vsock) is relayed like
    /// cloud-hypervisor's vsock, on `<uds-path>_PORT`.
    #[test]
    fn qemu_ready_guest_over_vhost_user_vsock_listens_on_the_backends_socket() {
        let dev = [
            "-chardev",
            "socket,id=c0,path=/run/vm/vhost.sock",
            "-device",
            "vhost-user-vsock-pci,chardev=c0",
        ];
        let plan = qemu_plan(
            &["--ready", "guest", "--vsock-uds", "/run/vm/vm.vsock"],
            &dev,
            &[],
        )
        .unwrap();
        assert!(matches!(
            &plan.guest_notify,
            Some(GuestNotifyPlan::Hybrid { listen_path }) if listen_path == Path::new("/run/vm/vm.vsock_8888")
        ));
        assert_eq!(plan.add_vhost_vsock, None);
        assert!(
            texts(&plan).contains(
                &"io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888".to_owned()
            )
        );
        // Without --vsock-uds the device's backend is unknown: refused with the fix.
        let e = qemu_plan(&["--ready", "guest"], &dev, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("vhost-user-vsock") && e.contains("--vsock-uds"),
            "{e}"
        );
        // --vsock-uds without such a device, or beside a kernel vhost-vsock device, is refused.
        let e = qemu_plan(&["--ready", "guest", "--vsock-uds", "/x"], &[], &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no -device vhost-user-vsock-pci"), "{e}");
        let mut both = dev.to_vec();
        both.extend(["-device", "vhost-vsock-pci,guest-cid=4"]);
        let e = qemu_plan(&["--ready", "guest", "--vsock-uds", "/x"], &both, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("kernel vhost-vsock device too"), "{e}");
        let plan = qemu_plan(&["--vsock-uds", "/run/vm/vm.vsock"], &dev, &[]).unwrap();
        assert!(
            plan.guest_notify.is_none()
                && plan
                    .warnings
                    .iter()
                    .any(|w| w.contains("--vsock-uds is ignored"))
        );
    }

    #[test]
    fn qemu_ready_guest_takes_the_argv_device_and_a_given_port() {
        let plan = qemu_plan(
            &[
                "--ready",
                "guest",
                "--vsock-cid",
                "9",
                "--notify-port",
                "5000",
            ],
            &["-device", "vhost-vsock-pci,guest-cid=4"],
            &[],
        )
        .unwrap();
        // The argv's device wins; --vsock-cid is ignored with a warning.
        assert_eq!(plan.add_vhost_vsock, None);
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("--vsock-cid is ignored"))
        );
        assert!(matches!(
            plan.guest_notify,
            Some(GuestNotifyPlan::Vhost {
                cid: 4,
                port: Some(5000)
            })
        ));
        assert!(
            texts(&plan).contains(
                &"io.systemd.credential:vmm.notify_socket=vsock-stream:2:5000".to_owned()
            )
        );
        // A vmm.notify_socket the credentials already carry names the port; none is added.
        let plan = qemu_plan(
            &["--ready", "guest"],
            &["-device", "vhost-vsock-pci,guest-cid=4"],
            &[("vmm.notify_socket", b"vsock-stream:2:6000")],
        )
        .unwrap();
        assert!(matches!(
            plan.guest_notify,
            Some(GuestNotifyPlan::Vhost {
                cid: 4,
                port: Some(6000)
            })
        ));
        assert_eq!(plan.strings.len(), 1);
        let e = qemu_plan(
            &["--ready", "guest"],
            &["-device", "vhost-vsock-pci,guest-cid=4"],
            &[("vmm.notify_socket", b"vsock:2:6000")],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("vsock-stream:2:PORT") && e.contains("<redacted>"),
            "{e}"
        );
    }

    #[test]
    fn qemu_vsock_mistakes_are_refused_with_the_fix() {
        let err = |flags: &[&str], argv: &[&str]| {
            qemu_plan(flags, argv, &[])
                .err()
                .expect("refused")
                .to_string()
        };
        // (argv, what the error must say)
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &["no vhost-vsock device", "--vsock-cid"]),
            (
                &["-device", "vhost-user-vsock-pci,chardev=c"],
                &["vhost-user-vsock"],
            ),
            (
                &["-device", "vhost-vsock-pci"],
                &["no numeric guest-cid", "guest-cid=CID"],
            ),
            (
                &["-device", "vhost-vsock-pci,guest-cid=2"],
                &["guest-cid=2 is not a guest CID"],
            ),
            (
                &["-device", "vhost-vsock-pci,guest-cid=4294967295"],
                &["is not a guest CID"],
            ),
        ];
        for (argv, wants) in cases {
            let e = err(&["--ready", "guest"], argv);
            for w in *wants {
                assert!(e.contains(w), "{argv:?}: {e}");
            }
        }
        for cid in ["0", "1", "2", "4294967295"] {
            let e = err(&["--vsock-cid", cid], &[]);
            assert!(e.contains("reserved"), "{cid}: {e}");
        }
        // Without --ready guest the argv's device is QEMU's business, even without a CID.
        assert!(qemu_plan(&[], &["-device", "vhost-vsock-pci"], &[]).is_ok());
        // --vsock-cid alone adds the device, with no notify string.
        let p = qemu_plan(&["--vsock-cid", "3"], &[], &[]).unwrap();
        assert_eq!(p.add_vhost_vsock, Some(3));
        assert!(p.guest_notify.is_none() && p.strings.is_empty());
    }

    #[test]
    fn microvm_machines_get_credentials_over_fw_cfg() {
        // #15: both the microvm build's default machine and -M microvm.
        let micro = "/usr/bin/qemu-system-x86_64-microvm";
        let creds: &[(&str, &[u8])] = &[("k", b"secret"), ("bin", b"\0\x01")];
        for (program, argv) in [
            (micro, &[][..]),
            ("qemu-system-x86_64", &["-M", "microvm"][..]),
        ] {
            let p = qemu_plan_of(program, &[], argv, creds).unwrap();
            assert!(p.strings.is_empty(), "{program}");
            let names: Vec<String> = p.fw_cfg.iter().map(|i| i.name()).collect();
            assert_eq!(
                names,
                [
                    "opt/io.systemd.credentials/bin",
                    "opt/io.systemd.credentials/k"
                ]
            );
            assert_eq!(p.fw_cfg[0].expose(), b"\0\x01", "raw bytes, not base64");
            // A fw_cfg value is scrubbed from the hypervisor's text like an OEM string's.
            let t = p.scrub("said: secret, c2VjcmV0");
            assert!(!t.contains("secret") && !t.contains("c2VjcmV0"), "{t}");
            assert_eq!(p.credential_count, 2);
        }
        // What only SMBIOS carries is refused there, naming the machine.
        let e = qemu_plan_of(micro, &["--oem-string", "a=b"], &[], creds)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("microvm (the default of /usr/bin/qemu-system-x86_64-microvm)")
                && e.contains("no SMBIOS")
                && e.contains("-machine q35"),
            "{e}"
        );
        assert!(
            qemu_plan_of(micro, &[], &["-machine", "q35"], creds)
                .unwrap()
                .fw_cfg
                .is_empty()
        );
        // --ready guest on microvm: credbridge's notify string goes over fw_cfg too, and the
        // port the kernel picks reaches it.
        let mut p =
            qemu_plan_of(micro, &["--ready", "guest", "--vsock-cid", "5"], &[], creds).unwrap();
        let notify = p.fw_cfg.iter().find(|i| i.public).unwrap();
        assert_eq!(notify.expose(), b"vsock-stream:2:4294967294");
        p.set_notify_port(77);
        let notify = p.fw_cfg.iter().find(|i| i.public).unwrap();
        assert_eq!(notify.expose(), b"vsock-stream:2:77");
        p.forget_secrets();
        assert_eq!(p.fw_cfg.len(), 1, "only the public notify item is kept");
        // The argv's own -fw_cfg credential (microvm.nix's credentialFiles) with a name
        // credbridge also delivers: the guest would get one of them; refused.
        let e = qemu_plan_of(
            micro,
            &[],
            &[
                "-fw_cfg",
                "name=opt/io.systemd.credentials/k,file=/etc/hostname",
            ],
            creds,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("\"k\"") && e.contains("the argv's -fw_cfg"),
            "{e}"
        );
        // Its files count toward QEMU's slots: 16 - 15 leaves one for two credentials.
        let mut argv = Vec::new();
        for i in 0..15 {
            argv.push("-fw_cfg".to_owned());
            argv.push(format!("opt/x{i},string=y"));
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let e = qemu_plan_of(micro, &[], &argv, creds).err().unwrap();
        assert!(
            matches!(
                e,
                PlanError::Channel(crate::fwcfg::ChannelError::TooManyItems { max: 1, .. })
            ),
            "{e}"
        );
    }
}
