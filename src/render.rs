//! `credbridge render`: what `run` would do, every credential value redacted.

use std::io::{self, Write};

use crate::guestnotify::GuestNotifyPlan;
use crate::hypervisor::Target;
use crate::oem::OemString;
use crate::oem::{Form, Origin};
use crate::plan::Plan;

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

pub fn render(plan: &Plan, target: &Target, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "hypervisor:   {} ({})",
        plan.hypervisor_name(),
        plan.program.to_string_lossy()
    )?;
    let delivery = target.describe_delivery();
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
    target.render_launch(plan, out)?;
    for w in &plan.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
