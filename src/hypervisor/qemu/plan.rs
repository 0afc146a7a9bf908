//! How a QEMU run is planned: its argv parsed, every string credbridge adds bound for a sealed
//! memfd (`-smbios type=11,path=`) or a fw_cfg file, the machine's SMBIOS checked (microvm has
//! none), and the vsock device and notify port for `--ready guest`.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;

use crate::cli::{Delivery, HypervisorKind, Ready, RunArgs};
use crate::guestnotify::GuestNotifyPlan;
use crate::hostenv::HostEnv;
use crate::oem::{OemError, OemString};
use crate::plan::{DEFAULT_NOTIFY_PORT, Plan, PlanError, is_guest_cid};

use super::{QemuArgv, QemuPlanError};

/// What only a QEMU run needs, beside the neutral [`Plan`].
pub struct QemuPlan {
    /// The hypervisor's argv as credbridge understood it.
    pub argv: QemuArgv,
    /// `--vsock-cid`: the guest CID of the vhost-vsock device credbridge adds.
    pub add_vhost_vsock: Option<u32>,
}

impl QemuPlan {
    /// The plans for `credbridge run|render .. -- qemu-system-ARCH ARGV`. Every string
    /// credbridge adds goes in a sealed memfd, `-smbios type=11,path=`; readiness and stop go
    /// through a private QMP monitor.
    pub fn build(
        args: &RunArgs,
        env: &HostEnv,
        program: &OsString,
        user_args: &[OsString],
    ) -> Result<(Plan, QemuPlan), QemuPlanError> {
        if args.delivery == Delivery::Argv {
            return Err(QemuPlanError::NotForQemu {
                flag: "--delivery argv",
            });
        }
        let mut parsed = super::parse_argv(user_args)?;
        let no_smbios = machine_without_smbios(&mut parsed, program);
        for &fd in &parsed.inherited_fds {
            if !crate::sys::fd_is_open(fd) {
                return Err(PlanError::FdNotOpen { fd, option: "fd=" }.into());
            }
        }
        // The argv's own strings come first in QEMU's single type 11 entry.
        let mut strings = parsed.argv_oem_strings();
        // A memfd carries any byte but NUL, so UTF-8 values go in the shorter plain form.
        strings.extend(Plan::flag_and_credential_strings(args, env, true)?);
        let mut warnings = Vec::new();
        let add_vhost_vsock = added_vhost_vsock(args, &parsed, &mut warnings)?;
        check_vsock_uds(args, &parsed, add_vhost_vsock)?;
        if args.vsock_uds.is_some() && args.ready.mode != Ready::Guest {
            warnings.push("--vsock-uds is ignored: only --ready guest listens on it".into());
        }
        let guest_notify = guest_notify(args, &parsed, add_vhost_vsock, &mut strings)?;
        let split = choose_channels(args, &parsed, no_smbios, strings)?;
        let plan = Plan::assemble(
            args,
            HypervisorKind::Qemu,
            program,
            user_args,
            split,
            guest_notify,
            warnings,
        );
        Ok((
            plan,
            QemuPlan {
                argv: parsed,
                add_vhost_vsock,
            },
        ))
    }
}

/// QEMU's microvm machine has no SMBIOS tables (QEMU 7.2 accepts -smbios for it and drops
/// it; the guest kernel logs "DMI not present"), but it has fw_cfg. `Some(how it was chosen)`
/// for such a machine; a build's default machine is written into the parsed argv.
fn machine_without_smbios(parsed: &mut QemuArgv, program: &OsString) -> Option<String> {
    match (&parsed.machine, super::args::default_machine(program)) {
        (Some(m), _) if m == "microvm" => Some(format!("-machine {m}")),
        (None, Some(m)) => {
            parsed.machine = Some(m.to_owned());
            Some(format!(
                "{m} (the default of {})",
                Path::new(program).display()
            ))
        }
        _ => None,
    }
}

/// `--vsock-cid`: the vhost-vsock device credbridge adds, unless the argv has its own.
fn added_vhost_vsock(
    args: &RunArgs,
    parsed: &QemuArgv,
    warnings: &mut Vec<String>,
) -> Result<Option<u32>, QemuPlanError> {
    Ok(match (&parsed.vsock, args.vsock_cid) {
        (Some(_), Some(_)) => {
            warnings.push("--vsock-cid is ignored: the argv has its own vhost-vsock device".into());
            None
        }
        (None, Some(cid)) if !is_guest_cid(cid.into()) => {
            return Err(PlanError::BadCid(cid).into());
        }
        (_, cid) => cid,
    })
}

/// `--vsock-uds` names the hybrid socket of the argv's vhost-user-vsock backend, and only
/// makes sense when that is the VM's one vsock device.
fn check_vsock_uds(
    args: &RunArgs,
    parsed: &QemuArgv,
    add_vhost_vsock: Option<u32>,
) -> Result<(), QemuPlanError> {
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
            }
            .into());
        }
    }
    Ok(())
}

/// `--ready guest`: where the guest's notifications arrive, and its notify port.
fn guest_notify(
    args: &RunArgs,
    parsed: &QemuArgv,
    add_vhost_vsock: Option<u32>,
    strings: &mut Vec<OemString>,
) -> Result<Option<GuestNotifyPlan>, QemuPlanError> {
    if args.ready.mode != Ready::Guest {
        return Ok(None);
    }
    if let Some(uds) = &args.vsock_uds {
        // A hybrid vsock like cloud-hypervisor's: the backend's socket is this VM's own, so
        // ports are per VM and the default port serves.
        let port = Plan::notify_port(args, strings, Some(DEFAULT_NOTIFY_PORT))?
            .unwrap_or(DEFAULT_NOTIFY_PORT);
        let mut listen = uds.clone().into_os_string();
        listen.push(format!("_{port}"));
        return Ok(Some(GuestNotifyPlan::Hybrid {
            listen_path: listen.into(),
        }));
    }
    let cid = match (&parsed.vsock, add_vhost_vsock) {
        (Some(v), _) => match v.guest_cid {
            Some(c) if is_guest_cid(c) => c as u32,
            cid => {
                return Err(QemuPlanError::QemuVsockCid {
                    driver: v.driver.clone(),
                    cid,
                });
            }
        },
        (None, Some(cid)) => cid,
        (None, None) => {
            return Err(QemuPlanError::QemuNoVsock {
                vhost_user: parsed.vhost_user_vsock,
            });
        }
    };
    // Host ports are one namespace for all VMs: by default the kernel picks a free one.
    let port = Plan::notify_port(args, strings, None)?;
    Ok(Some(GuestNotifyPlan::Vhost { cid, port }))
}

/// SMBIOS or fw_cfg for each string, within QEMU's limits and fw_cfg slots.
fn choose_channels(
    args: &RunArgs,
    parsed: &QemuArgv,
    no_smbios: Option<String>,
    strings: Vec<OemString>,
) -> Result<crate::fwcfg::Split, QemuPlanError> {
    let limits = super::limits(args.smbios_budget);
    Plan::check_limits(&[], &limits)?;
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
            max_items: Some(crate::fwcfg::QEMU_ITEMS_MAX.saturating_sub(parsed.fw_cfg_names.len())),
        },
        args.channel,
        &limits,
    )?;
    Plan::check_limits(&split.smbios, &limits)?;
    Ok(split)
}

impl QemuPlan {
    /// `render`'s argv, with placeholders for the memfds, the vhost-vsock fd and the QMP
    /// socket, which exist only in `run`.
    pub fn render_launch(&self, plan: &Plan, out: &mut dyn Write) -> io::Result<()> {
        let added = plan.strings.iter().filter(|s| !s.is_from_argv()).count();
        let memfds: Vec<String> = (1..=added).map(|i| format!("<oem-{i}>")).collect();
        let vsock = self
            .add_vhost_vsock
            .map(|cid| (cid, "<vhost-vsock>".to_owned()));
        let fw_cfg = plan.fw_cfg_placeholders("");
        let args = super::child_args(
            &plan.user_args,
            vsock,
            self.argv.machine.as_deref(),
            &memfds,
            &fw_cfg,
            "<qmp>".to_owned(),
        );
        let args = plan.redact_args(&args);
        writeln!(out, "argv:")?;
        writeln!(out, "  {} {}", plan.argv0.to_string_lossy(), args.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::hypervisor::{HypervisorError, Target};

    /// Both plans; reads as the neutral one.
    struct Planned {
        plan: Plan,
        q: QemuPlan,
    }

    impl std::ops::Deref for Planned {
        type Target = Plan;
        fn deref(&self) -> &Plan {
            &self.plan
        }
    }

    impl std::ops::DerefMut for Planned {
        fn deref_mut(&mut self) -> &mut Plan {
            &mut self.plan
        }
    }

    /// `credbridge run FLAGS -- qemu-system-x86_64 ARGV` with credentials `creds` in a
    /// temporary directory.
    fn qemu_plan(
        flags: &[&str],
        argv: &[&str],
        creds: &[(&str, &[u8])],
    ) -> Result<Planned, QemuPlanError> {
        qemu_plan_of("qemu-system-x86_64", flags, argv, creds)
    }

    fn qemu_plan_of(
        program: &str,
        flags: &[&str],
        argv: &[&str],
        creds: &[(&str, &[u8])],
    ) -> Result<Planned, QemuPlanError> {
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
        match crate::hypervisor::plan(&args, &HostEnv::default()) {
            Ok((plan, Target::Qemu(q))) => Ok(Planned { plan, q }),
            Ok(_) => panic!("not QEMU"),
            Err(HypervisorError::Qemu(e)) => Err(e),
            Err(e) => panic!("{e}"),
        }
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
        assert_eq!(plan.q.add_vhost_vsock, Some(7));
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
        assert_eq!(plan.q.add_vhost_vsock, None);
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
        assert_eq!(plan.q.add_vhost_vsock, None);
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
        assert_eq!(p.q.add_vhost_vsock, Some(3));
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
                QemuPlanError::Plan(PlanError::Channel(
                    crate::fwcfg::ChannelError::TooManyItems { max: 1, .. }
                ))
            ),
            "{e}"
        );
    }
}
