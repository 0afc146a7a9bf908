//! `credbridge render`: what `run` would do, every credential value redacted.

use std::io::{self, Write};

use crate::cli::Delivery;
use crate::guestnotify::GuestNotifyPlan;
use crate::oem::OemString;
use crate::oem::{Form, Origin};
use crate::plan::{FdNames, Plan, Target};

/// A string as `render` shows it: redacted, and with the notify port the kernel picks at
/// start said in words rather than the widest port it is sized for.
fn shown(plan: &Plan, s: &OemString) -> String {
    let pending = matches!(
        plan.guest_notify,
        Some(GuestNotifyPlan::Vhost { port: None, .. })
    );
    if pending
        && s.origin == Origin::Credbridge
        && s.guest_name.as_deref() == Some("vmm.notify_socket")
    {
        "io.systemd.credential:vmm.notify_socket=vsock-stream:2:<port the kernel picks at start>"
            .to_owned()
    } else {
        s.redacted()
    }
}

/// (fw_cfg name, `{prefix}<fw_cfg-N>`) per fw_cfg credential: the memfds exist only in `run`.
fn fw_cfg_placeholders(plan: &Plan, prefix: &str) -> Vec<(String, String)> {
    plan.fw_cfg
        .iter()
        .enumerate()
        .map(|(i, item)| (item.name(), format!("{prefix}<fw_cfg-{}>", i + 1)))
        .collect()
}

fn shown_fw_cfg(plan: &Plan, item: &crate::fwcfg::FwCfgItem) -> String {
    let pending = matches!(
        plan.guest_notify,
        Some(GuestNotifyPlan::Vhost { port: None, .. })
    );
    if pending && item.public && item.guest_name == "vmm.notify_socket" {
        "vsock-stream:2:<port the kernel picks at start>".to_owned()
    } else {
        item.redacted()
    }
}

pub fn render(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let fds = FdNames {
        api: "<api>".into(),
        events: plan.own_event_monitor.then(|| "<events>".into()),
    };
    writeln!(
        out,
        "hypervisor:   {} ({})",
        plan.hypervisor_name(),
        plan.program.to_string_lossy()
    )?;
    let delivery = match (&plan.target, plan.delivery) {
        (Target::Qemu(_), _) => {
            "memfd (-smbios type=11,path=/dev/fd/N and -fw_cfg name=..,file=/dev/fd/N of sealed memfds; nothing secret in argv)"
        }
        (_, Delivery::Api) => {
            "api (PUT vm.create on the private API socket; nothing secret in argv)"
        }
        (_, Delivery::Argv) => "argv (--platform oem_strings=[...]; visible in the process list)",
    };
    writeln!(out, "delivery:     {delivery}")?;
    writeln!(out, "credentials:  {}", plan.credential_count)?;
    writeln!(
        out,
        "SMBIOS:       type 11 entry of {} bytes, budget {} (--smbios-budget); {} strings of at most 255",
        plan.entry_size(),
        plan.budget,
        plan.strings.len()
    )?;
    writeln!(out, "OEM strings:")?;
    writeln!(
        out,
        "  {:>3}  {:<10}  {:<24}  {:<6}  {:>6}  string",
        "#", "source", "guest name", "form", "bytes"
    )?;
    for (i, s) in plan.strings.iter().enumerate() {
        let (source, form) = match &s.origin {
            Origin::Argv => ("argv", "-"),
            Origin::ArgvFile(_) => ("argv file", "-"),
            Origin::Flag => ("flag", "-"),
            Origin::Credbridge => ("credbridge", "-"),
            Origin::Credential { form, .. } => (
                "credential",
                match form {
                    Form::Binary => "binary",
                    Form::Plain => "plain",
                },
            ),
        };
        writeln!(
            out,
            "  {:>3}  {:<10}  {:<24}  {:<6}  {:>6}  {}",
            i + 1,
            source,
            s.guest_name.as_deref().unwrap_or("-"),
            form,
            s.len(),
            shown(plan, s)
        )?;
    }
    if !plan.choices.is_empty() {
        writeln!(
            out,
            "channels (--channel; systemd imports at most {} bytes per credential and in all):",
            crate::fwcfg::SYSTEMD_TOTAL_MAX
        )?;
        for c in &plan.choices {
            writeln!(
                out,
                "  {:<28}  {:<6}  {}",
                c.guest_name, c.channel, c.reason
            )?;
        }
    }
    if !plan.fw_cfg.is_empty() {
        writeln!(out, "fw_cfg files:")?;
        for item in &plan.fw_cfg {
            writeln!(
                out,
                "  {:<55}  {:>7}  {}",
                item.name(),
                item.len(),
                shown_fw_cfg(plan, item)
            )?;
        }
    }
    let args = match &plan.target {
        Target::Ch(ch) => plan
            .redacted_child_args(ch, &fds)
            .map_err(|e| io::Error::other(e.to_string()))?,
        Target::Qemu(q) => {
            // Placeholders: the memfds and the QMP socket exist only in `run`.
            let added = plan.strings.iter().filter(|s| !s.is_from_argv()).count();
            let memfds: Vec<String> = (1..=added).map(|i| format!("<oem-{i}>")).collect();
            let vsock = plan
                .add_vhost_vsock
                .map(|cid| (cid, "<vhost-vsock>".to_owned()));
            let fw_cfg = fw_cfg_placeholders(plan, "");
            let args = crate::hypervisor::qemu::child_args(
                &plan.user_args,
                vsock,
                q.machine.as_deref(),
                &memfds,
                &fw_cfg,
                "<qmp>".to_owned(),
            );
            plan.redact_args(&args)
        }
    };
    writeln!(out, "argv:")?;
    writeln!(out, "  {} {}", plan.argv0.to_string_lossy(), args.join(" "))?;
    if let Some(create) = &plan.create {
        let fw_cfg = fw_cfg_placeholders(plan, "/proc/self/fd/");
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
    for w in &plan.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
